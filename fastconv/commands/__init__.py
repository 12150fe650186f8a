"""Sub-commands of the ``fastconv`` CLI, one module each.

A command module defines ``NAME``, ``HELP`` (one line for ``fastconv --help``),
``add_arguments(parser)`` and ``run(args) -> int``. :mod:`fastconv.cli` lists them in
``COMMANDS``; a module that is absent is simply not offered.
"""

import argparse


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts and sizes that must be >= 1 (batch sizes, repeats, image sizes).

    Rejected at parse time, so ``--batch-size -3`` stops with "argument --batch-size: expected a
    positive integer, got '-3'" instead of silently predicting nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def thread_count(text: str) -> int:
    """argparse ``type=`` for ``--threads``: 1 to :func:`fastconv.kernels._threads.max_threads`,
    so that ``--threads 100`` is refused naming the flag, not as an internal ``n``."""
    from fastconv.kernels._threads import _checked

    value = positive_int(text)
    try:
        return _checked(value, "threads")  # the limit and its wording live in one place
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
