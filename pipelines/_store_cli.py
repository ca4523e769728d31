"""How the store's commands (``sql``, ``runs``, ``shell``, ``report``) fail, warn and stop
(docs/store.md).

- An ``OSError`` (permission denied, a directory given as ``--output``, a missing or non-directory
  store root) is one line, ``winnow <command>: error: <what>: <path>``, and exit status 1.
- A ``StoreWarning`` (a skipped manifest or data file) is one line,
  ``winnow <command>: warning: ...``, printed once, and the command goes on.
- A reader that closes the pipe (``winnow sql ... | head``) ends the command quietly with the
  status of a process killed by SIGPIPE (141), as ``cat`` does.

Other exceptions are left to ``winnow``'s own handling (``pipelines/cli.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator

__all__ = ["describe_os_error", "open_store", "store_command"]

_SIGPIPE_STATUS = 128 + getattr(signal, "SIGPIPE", 13)

Command = Callable[[argparse.Namespace], int]


def describe_os_error(exc: OSError) -> str:
    """One line naming what failed and the path: ``Permission denied: /store/scores``."""
    if exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2}"
    else:  # pyarrow's messages name the path themselves
        text = exc.strerror or str(exc)
    return " ".join(text.splitlines())


def open_store(root: str):
    """The ``ScoreStore`` at ``root``, which must be an existing directory (OSError if not)."""
    from winnow.store import ScoreStore

    store = ScoreStore(root)
    store.require_root()
    return store


@contextlib.contextmanager
def _warnings_as_lines(prog: str) -> Iterator[None]:
    from winnow.store import StoreWarning

    shown = set()  # a manifest is read again at later queries: say it once

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).splitlines())
        if text not in shown:
            shown.add(text)
            print(f"{prog}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", StoreWarning)
        warnings.showwarning = show
        yield


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so flushing it at exit does not fail a second time."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def store_command(name: str) -> Callable[[Command], Command]:
    """Decorate a command's function with the error, warning and pipe rules above."""

    def decorate(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            prog = f"winnow {name}"
            with _warnings_as_lines(prog):
                try:
                    return func(args)
                except BrokenPipeError:
                    _stdout_to_devnull()
                    return _SIGPIPE_STATUS
                except OSError as exc:
                    print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
                    return 1

        return run

    return decorate
