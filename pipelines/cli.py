"""The `winnow` command.

Each group of subcommands lives in its own module, which exposes ``register(subparsers)``:
it adds its parsers and sets ``func`` on each (a callable taking the parsed namespace and
returning an exit code). Modules are imported here, but heavy libraries (Ray, torch) are
imported only inside the ``func`` that needs them, so ``winnow sql`` starts fast.

Exit codes: 0 success; 2 a usage error (argparse's own: unknown option, missing argument, a value
that does not parse); 1 a bad input or a failed job, reported as one line
``winnow <cmd>: error: ...``. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["USER_ERRORS", "main", "build_parser"]

# What bad input raises (the project's convention: ValueError/TypeError naming the value; OSError
# for a missing or unreadable file or an unreachable cluster). The store's lookup errors are
# ValueErrors too. Anything else is not caught: a bug should show its traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, OSError)

# Modules that contribute subcommands. A module listed here that does not exist yet is skipped,
# so the CLI keeps working while the project grows.
_COMMAND_MODULES = (
    "winnow.pipelines.cli_store",
    "winnow.pipelines.cli_score",
    "winnow.pipelines.cli_report",
    "winnow.pipelines.cli_rm",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="winnow",
        description="Score training examples, inspect the scores with SQL, train on what matters.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())  # one line, even for a multi-line message
        print(f"winnow {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
