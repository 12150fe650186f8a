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
    from fastconv.kernels._threads import max_threads

    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(
            f"expected an int from 1 to {max_threads()} (4x this machine's logical cores, at least 64), got {text!r}"
        )
    return value
