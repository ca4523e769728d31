"""DuckDB over the store's Parquet files: views ``scores``, ``trace``, ``vectors``, ``mixture``,
``noise_scale``, ``runs`` (docs/store.md, "SQL"). ``trace`` is the union of two internal views,
``_trace_epochs`` (epoch samplers) and ``_trace_steps`` (per-step records; docs/traces.md).

The connection is in-memory and read-only toward the files, by two independent mechanisms:

1. every statement is parsed first (``extract_statements``) and anything that is not a plain
   query (``COPY``, ``CREATE``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET``, ``PRAGMA``,
   ``EXPORT``, ``EXPLAIN``, ``CALL``, ...) is refused before it runs;
2. DuckDB's own file access is limited to the store's directory (``allowed_directories``; no
   directory at all where DuckDB does not read the files itself), it has no temp directory,
   external access is switched off and the configuration is locked, so even a query cannot read
   or list other files or load extensions.

Views see only committed shard files (``kind/run=R/key=V/shard-N.parquet``; never temporary
files), and each query sees the files as they are when it starts, whoever wrote or removed them:

- DuckDB reads the files itself when the store is local and its path is plain (letters, digits,
  ``/ _ . , : + @ % ~ -`` and spaces). A view is then a glob over the shards, which finds new
  and removed files by itself; a view with no files is an empty view with the right columns,
  re-checked at each query; one whose files all vanished is rebuilt empty.
- Any other root goes through Arrow datasets over the listed files, listed again at each query
  (a view is rebuilt when its list changed): another pyarrow filesystem (S3, ...), and a local
  path with glob characters (``[ * ? { } \\``) or ``=``. DuckDB's globs would read those as
  patterns (``a[1]`` reads a sibling ``a1``; a backslash is a path separator to them), its hive
  parser would take a ``run=x`` part of the root for the run, and ``allowed_directories``
  compares the pattern, not the files it matches, so DuckDB gets no file access at all there.
  Arrow datasets read vectors as ``list<float32>``: DuckDB's Arrow scan has no float16.
- The ``runs`` view is rebuilt when a manifest or run directory changed (a manifest changed
  under two seconds ago is read again at the next query too: some filesystems keep coarser
  timestamps).

A file DuckDB cannot read (truncated, foreign schema, unreadable) would otherwise fail every
query over its view. When a query fails, the suspect files are checked (``SqlEngine._recover``);
the bad ones are left out with a ``StoreWarning`` naming them, their view then names its other
files explicitly, and the query runs again. A skipped file that is rewritten is read again.
Nothing is checked while queries succeed, so a healthy local store pays nothing for this. Arrow
datasets read a foreign file's missing columns as NULL rather than failing, so off the native
path every file's footer is checked once, when it first appears in a view (one request per new
file on a remote filesystem).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from winnow.store.errors import ReadOnlyQueryError, StoreWarning
from winnow.store.files import (
    MIXTURE_SCHEMA,
    NOISE_SCALE_SCHEMA,
    SCORES_SCHEMA,
    STEPS_SCHEMA,
    TRACE_SCHEMA,
    check_schema,
    vectors_schema,
)
from winnow.store.layout import SHARD_GLOB, StoreFS

__all__ = ["SqlEngine"]

_T = TypeVar("_T")
_GLOB = "glob"  # a native view reading every committed shard through DuckDB's glob


class _View:
    """A view over one kind of file: ``name`` in DuckDB, files under ``directory``.

    ``partitions`` are the hive keys of the path (the last one names the partition directory);
    ``hidden`` ones are not columns of the view (a step file's ``start``).
    """

    def __init__(
        self,
        name: str,
        partitions: dict[str, str],
        columns: dict[str, str],
        *,
        directory: str | None = None,
        hidden: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.directory = directory or name
        self.partitions = partitions  # hive key -> DuckDB type
        self.columns = columns  # file column -> DuckDB type
        self.hidden = hidden

    @property
    def key(self) -> str:
        return list(self.partitions)[-1]

    @property
    def all_columns(self) -> dict[str, str]:
        shown = {k: t for k, t in self.partitions.items() if k not in self.hidden}
        return {**shown, **self.columns}


_STEP_KEYS = {"run": "VARCHAR", "start": "BIGINT"}
_VIEWS = (
    _View(
        "scores",
        {"run": "VARCHAR", "metric": "VARCHAR"},
        {"example_id": "BIGINT", "value": "FLOAT"},
    ),
    _View(
        "_trace_epochs",
        {"run": "VARCHAR", "epoch": "INTEGER"},
        {"example_id": "BIGINT", "loss": "FLOAT", "kept": "BOOLEAN", "weight": "FLOAT"},
        directory="trace",
    ),
    _View(
        "_trace_steps",
        _STEP_KEYS,
        {
            "step": "BIGINT",
            "epoch": "INTEGER",
            "example_id": "BIGINT",
            "score": "FLOAT",
            "loss": "FLOAT",
            "kept": "BOOLEAN",
            "weight": "FLOAT",
        },
        directory="steps",
        hidden=("start",),
    ),
    _View(
        "vectors",
        {"run": "VARCHAR", "name": "VARCHAR"},
        {"example_id": "BIGINT", "vector": "FLOAT[]"},
    ),
    _View(
        "mixture",
        _STEP_KEYS,
        {"step": "BIGINT", "domain": "INTEGER", "pi": "DOUBLE", "drawn": "BOOLEAN"},
        hidden=("start",),
    ),
    _View(
        "noise_scale",
        _STEP_KEYS,
        {
            "step": "BIGINT",
            "b_simple": "DOUBLE",
            "grad_sq": "DOUBLE",
            "trace_cov": "DOUBLE",
            "batch_size": "BIGINT",
            "estimator": "VARCHAR",
        },
        hidden=("start",),
    ),
)
# One trace view over both shapes of decisions: an epoch sampler's rows have no step and their
# score is the loss column (the score its plan used); the epoch columns come first, as before.
_TRACE_COLUMNS = "run, epoch, example_id, loss, kept, weight"
_TRACE_VIEW = f"""CREATE OR REPLACE VIEW trace AS
    SELECT {_TRACE_COLUMNS}, CAST(NULL AS BIGINT) AS step, loss AS score FROM _trace_epochs
    UNION ALL
    SELECT {_TRACE_COLUMNS}, step, score FROM _trace_steps"""
_ARROW_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64()}
# What each view's files must hold (vectors: any width), and what the Arrow datasets read them
# as: a list<float32> holds every width, and DuckDB's Arrow scan cannot take float16.
_FILE_SCHEMAS = {
    "scores": SCORES_SCHEMA,
    "_trace_epochs": TRACE_SCHEMA,
    "_trace_steps": STEPS_SCHEMA,
    "vectors": vectors_schema(1),
    "mixture": MIXTURE_SCHEMA,
    "noise_scale": NOISE_SCALE_SCHEMA,
}
_DATASET_SCHEMAS = {
    **_FILE_SCHEMAS,
    "vectors": pa.schema([("example_id", pa.int64()), ("vector", pa.list_(pa.float32()))]),
}
# Paths DuckDB reads literally: no glob characters ([ * ? { } \), no '=' for its hive parser.
_PLAIN_PATH = re.compile(r"[\w/.,:+@%~ -]*")
# A manifest changed within this many seconds of the listing may change again within the
# filesystem's timestamp granularity unseen: such a runs table is rebuilt at the next query.
_RACY_S = 2.0
# Errors about the query's own SQL, not about a file: no full check of the files for these.
_QUERY_ERRORS = (
    duckdb.ParserException,
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.SyntaxException,
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class SqlEngine:
    """Owns one in-memory DuckDB connection with the store's views.

    Args:
        sfs: the store's filesystem and root.
        runs_table: returns the current ``runs`` table (one row per manifest); called when the
            manifests changed.
    """

    def __init__(self, sfs: StoreFS, runs_table: Callable[[], pa.Table]) -> None:
        self._sfs = sfs
        self._runs_table = runs_table
        self._lock = threading.RLock()
        self._streaming = False
        self._native = sfs.is_local and bool(_PLAIN_PATH.fullmatch(sfs.root))
        # Per view: the files of the last listing, and what the standing view reads: _GLOB,
        # the files it names, or None (no view yet, or one to rebuild).
        self._listed: dict[str, tuple[str, ...]] = {view.name: () for view in _VIEWS}
        self._built: dict[str, object] = {view.name: None for view in _VIEWS}
        self._runs_signature: tuple | None = None
        self._trace_view = False
        self._checked: dict[str, tuple | None] = {}  # path -> version found readable
        self._skipped: dict[str, tuple | None] = {}  # path -> version found unreadable
        self._con = duckdb.connect(":memory:")
        # DuckDB adds its temp directory (default ``<cwd>/.tmp``) to allowed_directories by itself,
        # which would make that directory readable and listable: run without one (queries that
        # outgrow DuckDB's memory limit fail instead of spilling). It must be set before external
        # access is switched off, which freezes it.
        self._con.execute("SET temp_directory = ''")
        allowed = [sfs.root + "/"] if self._native else []
        self._con.execute("SET allowed_directories = ?", [allowed])
        # DuckDB draws its progress bar on stdout even when that is a pipe or a file, where it
        # would land inside `winnow sql` output of a slow query.
        self._con.execute("SET enable_progress_bar = false")
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")

    # ------------------------------------------------------------------------------ queries

    def sql(self, query: str) -> pa.Table:
        """Run one or more ``;``-separated queries; return the last one's result as Arrow.

        Raises:
            TypeError: ``query`` is not a str.
            ReadOnlyQueryError: a statement is not a plain query (nothing has run).
            duckdb.Error: DuckDB's own errors (syntax, unknown column, ...).
        """
        statements = self._statements(query)
        with self._lock:
            return self._recovering(lambda: self._run(statements).to_arrow_table())

    @contextlib.contextmanager
    def stream(self, query: str, *, batch_rows: int) -> Iterator[pa.RecordBatchReader]:
        """Like ``sql``, but the last result comes as a reader of record batches of at most
        ``batch_rows`` rows, computed as they are read; leaving the block stops the query. The
        connection is held until then: another query from this thread raises RuntimeError."""
        statements = self._statements(query)
        with self._lock:

            def start() -> tuple[pa.RecordBatchReader, list[pa.RecordBatch]]:
                reader = self._run(statements).to_arrow_reader(batch_rows)
                try:  # the first batch starts the scan: errors about files surface here
                    return reader, [reader.read_next_batch()]
                except StopIteration:
                    return reader, []

            reader, first = self._recovering(start)
            self._streaming = True
            try:
                yield pa.RecordBatchReader.from_batches(
                    reader.schema, itertools.chain(first, reader)
                )
            finally:
                self._streaming = False
                # Closing alone can run the rest of the query first (measured: 5e7 rows read
                # 3 at a time, ~400 MB and 3 s on close); interrupting stops it. An interrupt
                # with nothing running is a no-op.
                self._con.interrupt()
                reader.close()

    def close(self) -> None:
        self._con.close()

    def _statements(self, query: str) -> list:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        with self._lock:
            self._check_not_streaming()
            statements = self._con.extract_statements(query)
        if not statements:
            raise ValueError("empty SQL query")
        for statement in statements:
            if statement.type != duckdb.StatementType.SELECT:
                raise ReadOnlyQueryError(
                    f"only queries (SELECT, FROM, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE) "
                    f"are allowed on the score store; refused a {statement.type.name} "
                    f"statement: {statement.query.strip()[:200]!r}"
                )
        return statements

    def _check_not_streaming(self) -> None:
        if self._streaming:
            raise RuntimeError("finish reading the open SQL result stream before another query")

    def _run(self, statements: list) -> duckdb.DuckDBPyRelation:
        """Refresh the views, run every statement, return the last one's relation."""
        self._refresh()
        for statement in statements[:-1]:
            with contextlib.closing(self._con.sql(statement.query).to_arrow_reader()) as reader:
                for _ in reader:  # run it for its errors; its rows are not kept
                    pass
        return self._con.sql(statements[-1].query)

    def _recovering(self, attempt: Callable[[], _T]) -> _T:
        """``attempt()``; when it fails on a store file, skip the file(s) and try again."""
        while True:
            try:
                return attempt()
            except (duckdb.Error, pa.ArrowException) as exc:
                if not self._recover(exc):
                    raise

    # ------------------------------------------------------------------------------ files

    def _recover(self, error: Exception) -> bool:
        """After a failed query: rebuild what ``error`` shows to be stale, skip unreadable files.
        True if anything changed, so that the query is worth running again.

        A glob view whose files were all removed fails ("No files found"): it becomes empty.
        Then the suspects, in order, until one is bad: the files DuckDB's message names (it may
        also name a good one, e.g. the file a mismatching schema came from); the first file of
        each view (DuckDB takes a view's schema from it); then, unless the error is about the
        query's own SQL, every file not checked yet. A file DuckDB alone named but whose footer
        is fine (a damaged page) is skipped on DuckDB's word.
        """
        for view in _VIEWS:
            self._listed[view.name] = self._readable(view)
        vanished = [v for v, files in self._listed.items() if self._built[v] == _GLOB and not files]
        for name in vanished:
            self._built[name] = None
        if vanished:
            return True
        message = str(error)
        included = {path: view for view, files in self._listed.items() for path in files}
        named = [path for path in included if path in message]
        suspects = [*named, *(files[0] for files in self._listed.values() if files)]
        if not isinstance(error, _QUERY_ERRORS):
            suspects += [path for path in included if path not in self._checked]
        found = []
        for path in dict.fromkeys(suspects):
            if found and path not in named:
                break
            reason = self._check_file(path, included[path])
            if reason is not None:
                found.append((path, reason))
        if not found and len(named) == 1:
            found.append((named[0], message.splitlines()[0]))
        for path, reason in found:
            self._skip(path, reason)
            self._built[included[path]] = None
        return bool(found)

    def _check_file(self, path: str, view: str) -> str | None:
        """Why DuckDB cannot read ``path`` as a file of ``view``, or None if its footer is fine."""
        version = self._sfs.version(path)
        try:
            with self._sfs.fs.open_input_file(path) as source:
                found = pq.ParquetFile(source).schema_arrow
            check_schema(path, found, _FILE_SCHEMAS[view], exact=view != "vectors")
        except (OSError, ValueError, pa.ArrowException) as exc:
            return f"{type(exc).__name__}: {exc}"
        self._checked[path] = version
        return None

    def _skip(self, path: str, reason: str) -> None:
        self._skipped[path] = self._sfs.version(path)
        self._checked.pop(path, None)
        warnings.warn(f"skipping unreadable file {path}: {reason}", StoreWarning, stacklevel=2)

    def _readable(self, view: _View) -> tuple[str, ...]:
        """The view's committed files without the skipped ones (unless rewritten since)."""
        paths = self._sfs.committed_shards(view.directory, view.key)
        listed = set(paths)
        for path in [p for p in self._skipped if p in listed]:
            if self._sfs.version(path) != self._skipped[path]:
                del self._skipped[path]
        return tuple(p for p in paths if p not in self._skipped)

    # ------------------------------------------------------------------------------ views

    def _refresh(self) -> None:
        """Bring the views up to date with the files (see the module's docstring)."""
        self._refresh_runs()
        for view in _VIEWS:
            if self._built[view.name] == _GLOB:
                continue  # DuckDB's glob finds new and removed files by itself
            files = self._readable(view)
            self._listed[view.name] = files
            complete = not any(self._under(view, path) for path in self._skipped)
            if self._native and files and complete:
                self._built[view.name] = None  # until the new view stands
                self._create_native(view, self._glob(view))
                self._built[view.name] = _GLOB
                continue
            if files == self._built[view.name]:
                continue
            self._built[view.name] = None
            if not files:
                self._create_empty(view)
            elif self._native:
                self._create_native(view, "[" + ", ".join(map(_literal, files)) + "]")
            else:
                files = self._footers_checked(view, files)
                self._create_dataset(view, files)
            self._built[view.name] = files
        if not self._trace_view:  # binds by name: it follows its two parts as they are rebuilt
            self._con.execute(_TRACE_VIEW)
            self._trace_view = True

    def _footers_checked(self, view: _View, files: tuple[str, ...]) -> tuple[str, ...]:
        """``files`` without those whose footer does not fit ``view`` (skipped with a warning).

        Off the native path only: Arrow datasets read a foreign file's missing columns as NULL
        instead of failing, so no query error would ever point at it. Each path's footer is read
        once (one request per new file on a remote filesystem), then remembered.
        """
        kept = []
        for path in files:
            if path not in self._checked:
                reason = self._check_file(path, view.name)
                if reason is not None:
                    self._skip(path, reason)
                    continue
            kept.append(path)
        return tuple(kept)

    def _under(self, view: _View, path: str) -> bool:
        return path.startswith(self._sfs.path(view.directory) + "/")

    def _glob(self, view: _View) -> str:
        """A glob of the view's committed shards; only for a plain root (no glob characters)."""
        depth = "/".join(f"{key}=*" for key in view.partitions)
        return _literal(f"{self._sfs.path(view.directory)}/{depth}/{SHARD_GLOB}")

    def _refresh_runs(self) -> None:
        infos = self._sfs.list_dir(self._sfs.path("runs"))
        manifests = tuple((i.base_name, i.size, i.mtime_ns) for i in infos)
        data_runs = tuple(
            tuple(self._sfs.partitions(self._sfs.path(view.directory), "run")) for view in _VIEWS
        )
        signature = (manifests, data_runs)
        if signature == self._runs_signature:
            return
        self._con.register("_runs_table", self._runs_table())
        self._con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs_table")
        newest = max((m[2] or 0 for m in manifests), default=0) / 1e9
        racy = newest > time.time() - _RACY_S or any(m[2] is None for m in manifests)
        self._runs_signature = None if racy else signature

    def _create_native(self, view: _View, files: str) -> None:
        """A view DuckDB reads itself; ``files`` is a glob or a list literal of paths."""
        hive_types = ", ".join(f"{_literal(k)}: {t}" for k, t in view.partitions.items())
        self._create(
            view,
            f"read_parquet({files}, hive_partitioning = true, hive_types = {{{hive_types}}})",
        )

    def _create_dataset(self, view: _View, files: tuple[str, ...]) -> None:
        keys = pa.schema([(k, _ARROW_TYPES[t]) for k, t in view.partitions.items()])
        dataset = ds.dataset(
            list(files),
            filesystem=self._sfs.fs,
            format="parquet",
            schema=pa.unify_schemas([_DATASET_SCHEMAS[view.name], keys]),
            partitioning=ds.partitioning(keys, flavor="hive"),
            partition_base_dir=self._sfs.path(view.directory),
        )
        table_name = f"_{view.name}_dataset"
        self._con.register(table_name, dataset)
        self._create(view, table_name)

    def _create(self, view: _View, source: str) -> None:
        # Every column cast to its declared type: DuckDB takes a view's types from its first file.
        columns = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in view.all_columns.items())
        self._con.execute(f"CREATE OR REPLACE VIEW {view.name} AS SELECT {columns} FROM {source}")

    def _create_empty(self, view: _View) -> None:
        columns = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in view.all_columns.items())
        self._con.execute(f"CREATE OR REPLACE VIEW {view.name} AS SELECT {columns} WHERE false")
