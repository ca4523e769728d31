"""``winnow sql``, ``winnow runs`` and ``winnow shell``: look into a score store from a terminal.

The store is ``--store ROOT``, else ``$WINNOW_STORE``, else ``./winnow-store``; it must exist.
Queries see the views ``scores(run, metric, example_id, value)``, ``trace(run, epoch,
example_id, loss, kept, weight, step, score)``, ``mixture``, ``noise_scale``, ``vectors(run, name,
example_id, vector)`` and ``runs``; they cannot write files. Results are streamed: ``--format
table`` fetches only the rows it shows, and the other formats write batch by batch. Errors,
warnings and a closed pipe follow ``pipelines._store_cli``. See docs/store.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa

from winnow.pipelines._store_cli import describe_os_error, open_store, store_command

__all__ = ["default_store_root", "format_table", "register", "write_result", "write_stream"]

FORMATS = ("table", "csv", "json", "parquet")
_MAX_CELL = 48
_BATCH_ROWS = 16384


def default_store_root() -> str:
    return os.environ.get("WINNOW_STORE") or "./winnow-store"


def register(subparsers: argparse._SubParsersAction) -> None:
    store_help = "store root (path or URI); default $WINNOW_STORE, else ./winnow-store"

    sql = subparsers.add_parser("sql", help="run a read-only SQL query over the score store")
    sql.add_argument("query", help='e.g. "SELECT * FROM scores ORDER BY value DESC LIMIT 10"')
    sql.add_argument("--store", default=None, help=store_help)
    sql.add_argument("--format", choices=FORMATS, default="table", help="output format")
    sql.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    sql.add_argument(
        "--max-rows", type=_row_count, default=1000, help="rows printed by --format table"
    )
    sql.set_defaults(func=_cmd_sql)

    runs = subparsers.add_parser("runs", help="list runs with their status and row counts")
    runs.add_argument("--store", default=None, help=store_help)
    runs.add_argument("--format", choices=FORMATS[:3], default="table", help="output format")
    runs.set_defaults(func=_cmd_runs)

    shell = subparsers.add_parser("shell", help="interactive SQL over the score store")
    shell.add_argument("--store", default=None, help=store_help)
    shell.set_defaults(func=_cmd_shell)


def _row_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _open_store(args: argparse.Namespace):
    try:
        return open_store(args.store or default_store_root())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            exc.errno, f"{exc.strerror}; pass --store ROOT or set $WINNOW_STORE"
        ) from None


@contextlib.contextmanager
def _output(path: str | None, binary: bool) -> Iterator[IO]:
    """stdout, or a file at ``path`` that appears only once it is complete (atomic rename)."""
    if path is None:
        yield sys.stdout
        return
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w") as out:
            yield out
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; an output file is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@store_command("sql")
def _cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    store = _open_store(args)
    if args.format == "parquet" and args.output is None and sys.stdout.isatty():
        raise ValueError("refusing to write binary Parquet to a terminal; use --output FILE")
    # The table format shows max_rows rows and needs one more to know whether there are more.
    batch_rows = min(args.max_rows + 1, _BATCH_ROWS) if args.format == "table" else _BATCH_ROWS
    try:
        with store.sql_reader(args.query, batch_rows=batch_rows) as reader:
            with _output(args.output, binary=args.format == "parquet") as out:
                write_stream(reader, args.format, out, max_rows=args.max_rows)
    except duckdb.Error as exc:
        print(f"winnow sql: error: {exc}", file=sys.stderr)
        return 1
    return 0


@store_command("runs")
def _cmd_runs(args: argparse.Namespace) -> int:
    _print_runs(_open_store(args), args.format, "winnow runs")
    return 0


def _print_runs(store: Any, fmt: str, prog: str) -> None:
    """The runs with their status and the row counts of their committed files now."""
    from winnow.store import CorruptFileError

    rows = []
    for manifest in store.runs():
        try:  # the manifest's counts are stale while a run is running: count the files now
            live = store.row_counts(manifest["name"])
        except (CorruptFileError, OSError) as exc:  # report it, and still list the other runs
            text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            print(f"{prog}: error: {text}", file=sys.stderr)
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
    if not rows and fmt == "table":
        print(f"no runs in {store.root}")
        return
    write_result(pa.Table.from_pylist(rows), fmt, sys.stdout, max_rows=None)


def write_result(table: pa.Table, fmt: str, out: IO, *, max_rows: int | None) -> None:
    """Write ``table`` to ``out`` as ``table`` (aligned text), ``csv``, ``json`` (one object
    per line) or ``parquet`` (``out`` must then be binary, or a text stream with ``.buffer``)."""
    write_stream(table.to_reader(), fmt, out, max_rows=max_rows)


def write_stream(batches: pa.RecordBatchReader, fmt: str, out: IO, *, max_rows: int | None) -> None:
    """``write_result`` for a stream of record batches, written as they come.

    ``table`` reads only the first ``max_rows`` rows (and one more to know whether there are
    more); the other formats write every batch and keep none.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "table":
        shown, more = _head(batches, max_rows)
        out.write(format_table(shown, max_rows=None, more_rows=more) + "\n")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        for index, batch in enumerate(_non_empty(batches)):
            buffer = io.BytesIO()
            options = pacsv.WriteOptions(include_header=index == 0)
            pacsv.write_csv(_flatten_nested(pa.Table.from_batches([batch])), buffer, options)
            out.write(buffer.getvalue().decode())
    elif fmt == "json":
        for batch in batches:
            for row in batch.to_pylist(maps_as_pydicts="lossy"):
                out.write(json.dumps(_jsonable(row), default=str) + "\n")
    else:
        import pyarrow.parquet as pq

        sink = getattr(out, "buffer", out)
        with pq.ParquetWriter(sink, batches.schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch)
    out.flush()


def _non_empty(batches: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The batches with rows, or one empty batch (so that CSV still gets its header)."""
    empty = True
    for batch in batches:
        if batch.num_rows:
            empty = False
            yield batch
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=batches.schema)


def _head(batches: pa.RecordBatchReader, max_rows: int | None) -> tuple[pa.Table, bool]:
    """The first ``max_rows`` rows as a table, and whether the stream had more."""
    kept, count = [], 0
    for batch in batches:
        if max_rows is not None and count >= max_rows and batch.num_rows:
            return pa.Table.from_batches(kept, schema=batches.schema), True
        take = batch.num_rows if max_rows is None else min(batch.num_rows, max_rows - count)
        kept.append(batch.slice(0, take))
        count += take
        if take < batch.num_rows:
            return pa.Table.from_batches(kept, schema=batches.schema), True
    return pa.Table.from_batches(kept, schema=batches.schema), False


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


def format_table(table: pa.Table, *, max_rows: int | None = 1000, more_rows: bool = False) -> str:
    """Aligned text: a header, a rule, one line per row (numbers right-aligned), a row count.

    ``more_rows`` says that ``table`` is only the head of a longer result (of unknown length).
    """
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
    if more_rows:
        footer = f"(more than {shown.num_rows} rows, first {shown.num_rows} shown"
    else:
        footer = f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}"
        if shown.num_rows < table.num_rows:
            footer += f", first {shown.num_rows} shown"
    lines.append(footer + ")")
    return "\n".join(lines)


_SHELL_HELP = """Enter SQL ending with ';' (views: scores, trace, mixture, noise_scale, vectors,
runs). Commands:
  .tables            list the views and their columns
  .runs              list runs (like `winnow runs`)
  .format FMT        output format: table, csv or json
  .help              this text
  .quit / .exit      leave (or Ctrl-D)"""


@store_command("shell")
def _cmd_shell(args: argparse.Namespace) -> int:
    import duckdb

    # An error in one command or statement is printed and the shell goes on.
    recoverable = (duckdb.Error, OSError, ValueError, TypeError, KeyError, RuntimeError)
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
            if stripped.split()[0] in (".quit", ".exit"):
                return 0
            try:
                fmt = _dot_command(store, stripped, fmt)
            except BrokenPipeError:
                raise
            except recoverable as exc:
                _shell_error(exc)
            continue
        if stripped:
            pending.append(line)
        if not pending or not stripped.endswith(";"):
            continue
        query, pending = "\n".join(pending), []
        try:
            with store.sql_reader(query, batch_rows=1001) as reader:
                write_stream(reader, fmt, sys.stdout, max_rows=1000)
        except BrokenPipeError:
            raise
        except recoverable as exc:
            _shell_error(exc)


def _dot_command(store: Any, line: str, fmt: str) -> str:
    """Run one dot-command line; return the output format from now on."""
    command, _, rest = line.partition(" ")
    rest = rest.strip()
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
        _print_runs(store, "table", "winnow shell")
    elif command == ".format" and rest in FORMATS[:3]:
        return rest
    else:
        print(f"Error: unknown command {line!r}; try .help", file=sys.stderr)
    return fmt


def _shell_error(exc: Exception) -> None:
    text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
    print(f"Error: {text}", file=sys.stderr)
