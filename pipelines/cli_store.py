"""``winnow sql``, ``winnow runs`` and ``winnow shell``: look into a score store from a terminal.

The store is ``--store ROOT``, else ``$WINNOW_STORE``, else ``./winnow-store``. Queries see the
views ``scores(run, metric, example_id, value)``, ``trace(run, epoch, example_id, loss, kept,
weight)``, ``vectors(run, name, example_id, vector)`` and ``runs``; they cannot write files.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from typing import IO, Any

import pyarrow as pa

__all__ = ["default_store_root", "format_table", "register", "write_result"]

FORMATS = ("table", "csv", "json", "parquet")
_MAX_CELL = 48


def default_store_root() -> str:
    return os.environ.get("WINNOW_STORE") or "./winnow-store"


def register(subparsers: argparse._SubParsersAction) -> None:
    store_help = "store root (path or URI); default $WINNOW_STORE, else ./winnow-store"

    sql = subparsers.add_parser("sql", help="run a read-only SQL query over the score store")
    sql.add_argument("query", help='e.g. "SELECT * FROM scores ORDER BY value DESC LIMIT 10"')
    sql.add_argument("--store", default=None, help=store_help)
    sql.add_argument("--format", choices=FORMATS, default="table", help="output format")
    sql.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    sql.add_argument("--max-rows", type=int, default=1000, help="rows printed by --format table")
    sql.set_defaults(func=_cmd_sql)

    runs = subparsers.add_parser("runs", help="list runs with their status and row counts")
    runs.add_argument("--store", default=None, help=store_help)
    runs.add_argument("--format", choices=FORMATS[:3], default="table", help="output format")
    runs.set_defaults(func=_cmd_runs)

    shell = subparsers.add_parser("shell", help="interactive SQL over the score store")
    shell.add_argument("--store", default=None, help=store_help)
    shell.set_defaults(func=_cmd_shell)


def _open_store(args: argparse.Namespace):
    from winnow.store import ScoreStore

    return ScoreStore(args.store or default_store_root())


def _cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    try:
        result = _open_store(args).sql(args.query)
    except duckdb.Error as exc:
        print(f"winnow sql: error: {exc}", file=sys.stderr)
        return 1
    if args.format == "parquet" and args.output is None and sys.stdout.isatty():
        raise ValueError("refusing to write binary Parquet to a terminal; use --output FILE")
    if args.output is None:
        write_result(result, args.format, sys.stdout, max_rows=args.max_rows)
    else:
        mode = "wb" if args.format == "parquet" else "w"
        with open(args.output, mode) as out:
            write_result(result, args.format, out, max_rows=args.max_rows)
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from winnow.store import CorruptFileError

    store = _open_store(args)
    rows = []
    for manifest in store.runs():
        try:  # the manifest's counts are stale while a run is running: count the files now
            live = store.row_counts(manifest["name"])
        except CorruptFileError as exc:  # report it, and still list the other runs
            print(f"winnow runs: error: {exc}", file=sys.stderr)
            live = {"row_counts": None, "trace_rows": None}
        counts = live["row_counts"]
        rows.append(
            {
                "run": manifest["name"],
                "kind": manifest.get("kind"),
                "status": manifest.get("status"),
                "created": manifest.get("created"),
                "num_examples": manifest.get("num_examples"),
                "rows": None if counts is None else sum(counts.values()),
                "metrics": "?"
                if counts is None
                else ",".join(f"{m}:{n}" for m, n in counts.items()),
                "trace_rows": live["trace_rows"],
            }
        )
    if not rows and args.format == "table":
        print(f"no runs in {store.root}")
        return 0
    write_result(pa.Table.from_pylist(rows), args.format, sys.stdout, max_rows=None)
    return 0


def write_result(table: pa.Table, fmt: str, out: IO, *, max_rows: int | None) -> None:
    """Write ``table`` to ``out`` as ``table`` (aligned text), ``csv``, ``json`` (one object
    per line) or ``parquet`` (``out`` must then be binary, or a text stream with ``.buffer``)."""
    if fmt == "table":
        out.write(format_table(table, max_rows=max_rows) + "\n")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        buffer = io.BytesIO()
        pacsv.write_csv(_flatten_nested(table), buffer)
        out.write(buffer.getvalue().decode())
    elif fmt == "json":
        for batch in table.to_batches():
            for row in batch.to_pylist(maps_as_pydicts="lossy"):
                out.write(json.dumps(_jsonable(row), default=str) + "\n")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        getattr(out, "buffer", out).write(buffer.getvalue())
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _flatten_nested(table: pa.Table) -> pa.Table:
    """CSV cannot hold lists, maps or structs: write those columns as JSON text."""
    columns = []
    for column in table.columns:
        if pa.types.is_nested(column.type):
            values = column.to_pylist(maps_as_pydicts="lossy")
            text = [None if v is None else json.dumps(_jsonable(v)) for v in values]
            column = pa.array(text, pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value) if not isinstance(value, list | dict) else json.dumps(_jsonable(value))
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."


def format_table(table: pa.Table, *, max_rows: int | None = 1000) -> str:
    """Aligned text: a header, a rule, one line per row (numbers right-aligned), a row count."""
    shown = table if max_rows is None else table.slice(0, max_rows)
    cells = [
        [_cell(v) for v in column.to_pylist(maps_as_pydicts="lossy")] for column in shown.columns
    ]
    lines = []
    widths = [
        max([len(name), *map(len, column)])
        for name, column in zip(table.column_names, cells, strict=True)
    ]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    lines.append(
        "  ".join(n.ljust(w) for n, w in zip(table.column_names, widths, strict=True)).rstrip()
    )
    lines.append("  ".join("-" * w for w in widths))
    for r in range(shown.num_rows):
        parts = [
            col[r].rjust(w) if num else col[r].ljust(w)
            for col, w, num in zip(cells, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    footer = f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}"
    if shown.num_rows < table.num_rows:
        footer += f", first {shown.num_rows} shown"
    lines.append(footer + ")")
    return "\n".join(lines)


_SHELL_HELP = """Enter SQL ending with ';' (views: scores, trace, vectors, runs). Commands:
  .tables            list the views and their columns
  .runs              list runs (like `winnow runs`)
  .format FMT        output format: table, csv or json
  .help              this text
  .quit / .exit      leave (or Ctrl-D)"""


def _cmd_shell(args: argparse.Namespace) -> int:
    import duckdb

    store = _open_store(args)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        print(f"winnow shell on {store.root}; .help for help, .quit to leave")
    fmt, pending = "table", []
    while True:
        try:
            line = input(("...> " if pending else "winnow> ") if interactive else "")
        except EOFError:
            line = ";" if pending else ".quit"  # run an unterminated last statement
        stripped = line.strip()
        if not pending and stripped.startswith("."):
            command, _, rest = stripped.partition(" ")
            if command in (".quit", ".exit"):
                return 0
            if command == ".help":
                print(_SHELL_HELP)
            elif command == ".tables":
                query = (
                    "SELECT table_name AS view, string_agg(column_name, ', ') AS columns "
                    "FROM information_schema.columns WHERE table_name NOT LIKE '\\_%' ESCAPE '\\' "
                    "GROUP BY ALL ORDER BY view"
                )
                write_result(store.sql(query), "table", sys.stdout, max_rows=None)
            elif command == ".runs":
                _cmd_runs(argparse.Namespace(store=args.store, format="table"))
            elif command == ".format" and rest.strip() in FORMATS[:3]:
                fmt = rest.strip()
            else:
                print(f"Error: unknown command {stripped!r}; try .help", file=sys.stderr)
            continue
        if stripped:
            pending.append(line)
        if not pending or not stripped.endswith(";"):
            continue
        query, pending = "\n".join(pending), []
        try:
            write_result(store.sql(query), fmt, sys.stdout, max_rows=1000)
        except (duckdb.Error, ValueError, TypeError, KeyError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
