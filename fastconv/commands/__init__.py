"""Sub-commands of the ``fastconv`` CLI, one module each.

A command module defines ``NAME``, ``HELP`` (one line for ``fastconv --help``),
``add_arguments(parser)`` and ``run(args) -> int``. :mod:`fastconv.cli` lists them in
``COMMANDS``; a module that is absent is simply not offered.
"""
