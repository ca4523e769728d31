"""``winnow rm RUN...``: remove runs from a score store (manifest, scores, vectors, trace).

Each run's manifest goes first, then each kind of its data, each renamed to a hidden name
before it is deleted, so a reader sees a run whole or not at all (docs/store.md).
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rm",
        help="remove runs from the store (manifest, scores, vectors, trace)",
        description="Remove runs from the score store. Do not remove a run while a job is "
        "writing it.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run name")
    p.add_argument(
        "--store",
        default=None,
        help="store root (path or URI); default $WINNOW_STORE, else ./winnow-store",
    )
    p.set_defaults(func=_cmd_rm)


def _cmd_rm(args: argparse.Namespace) -> int:
    from winnow.pipelines.cli_store import default_store_root
    from winnow.store import ScoreStore

    store = ScoreStore(args.store or default_store_root())
    for run in args.runs:
        removed = store.remove_run(run)
        status = removed["status"] or "no manifest"
        parts = [f"{removed['rows']} score rows"]
        parts += [f"{removed[k]} {k.replace('_', ' ')}" for k in ("vector_rows", "trace_rows")
                  if removed[k]]  # fmt: skip
        print(f"removed run {run!r} (status {status}, {', '.join(parts)})")
    return 0
