"""``winnow report`` and ``winnow bench`` subcommands.

``report`` renders the store's runs into one HTML page (see ``pipelines.report``); its errors,
warnings and exit statuses follow the store commands' (``pipelines._store_cli``).
``bench`` runs the time-to-accuracy benchmark (``winnow.pipelines.bench``). Its arguments are
handed to the benchmark's own parser unchanged, so ``winnow bench --help`` shows the benchmark's
options.
"""

from __future__ import annotations

import argparse

from winnow.pipelines._store_cli import open_store, store_command

__all__ = ["register"]


@store_command("report")
def _run_report(args: argparse.Namespace) -> int:
    from winnow.pipelines.report import write_report

    open_store(args.store)  # a missing root is an error, not an empty report
    out = write_report(args.store, args.out, args.run or None, top_k=args.top_k)
    print(f"wrote {out}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from winnow.pipelines.bench import main

    return int(main(args.bench_args) or 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of the store's scores and training traces",
    )
    report.add_argument("--store", required=True, help="score store root directory")
    report.add_argument(
        "--run",
        action="append",
        metavar="NAME",
        help="run to include (repeatable; default: every run with scores or a trace)",
    )
    report.add_argument("--out", required=True, help="output HTML file")
    report.add_argument("--top-k", type=int, default=10, help="examples listed per metric end")
    report.set_defaults(func=_run_report)

    # '+' as the only prefix makes every token (--quick, --out DIR, --help) a plain value here,
    # so the benchmark's own parser sees exactly what the user typed.
    bench = subparsers.add_parser(
        "bench",
        help="time-to-accuracy benchmark of every method (see `winnow bench --help`)",
        prefix_chars="+",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_run_bench)
