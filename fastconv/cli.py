"""The ``fastconv`` command line: ``fastconv <command> [options]``; ``fastconv <command> --help``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order shown in --help. Each name is a module in fastconv.commands.
COMMANDS: tuple[str, ...] = ("demo", "train", "evaluate", "predict", "bench", "pictures", "info")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to the help of each option that takes a value, except where the
    default is None or empty: such an option's default is computed at run time (the bundled
    model, the fastest backend, all cores...) and its help text says what it is, which
    "(default: None)" would contradict. On/off flags (store_true) say nothing: "(default:
    False)" only restates that a flag is off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or (action.nargs == 0 and action.default is False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastconv",
        description=(
            "fastconv: a CNN engine with conv/pool kernels written four ways (python loops, numpy, "
            "numba, cython/OpenMP) and a cat / not-cat classifier. Run 'fastconv demo' to see it work."
        ),
        formatter_class=_DefaultsFormatter,
    )
    from fastconv import __version__

    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fastconv.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fastconv.commands.{name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=_DefaultsFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastconv`` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        # User-facing errors (bad paths, bad data, bad options) print one clear line, no traceback.
        print(f"fastconv: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
