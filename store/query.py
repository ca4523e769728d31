"""DuckDB over the store's Parquet files: views ``scores``, ``trace``, ``vectors``, ``runs``.

The connection is in-memory and read-only toward the files, by two independent mechanisms:

1. every statement is parsed first (``extract_statements``) and anything that is not a plain
   query (``COPY``, ``CREATE``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET``, ``PRAGMA``,
   ``EXPORT``, ``EXPLAIN``, ``CALL``, ...) is refused before it runs;
2. on a local store DuckDB's file access is limited to the store's directory
   (``allowed_directories``), external access is switched off and the configuration is locked,
   so even a query cannot read other files or load extensions.

Views read the files at query time through explicit globs that match only committed shard files
(``shard-*.parquet``), so files written after the store was opened are visible and temporary
files never are. A kind of data with no files yet is an empty view with the right columns.
On a non-local pyarrow filesystem the views go through Arrow datasets instead of DuckDB's reader.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from winnow.store.errors import ReadOnlyQueryError
from winnow.store.files import SCORES_SCHEMA, TRACE_SCHEMA
from winnow.store.layout import SHARD_GLOB, StoreFS

__all__ = ["SqlEngine"]


class _View:
    def __init__(self, name: str, partitions: dict[str, str], columns: dict[str, str]) -> None:
        self.name = name
        self.partitions = partitions  # hive key -> DuckDB type
        self.columns = columns  # file column -> DuckDB type

    @property
    def all_columns(self) -> dict[str, str]:
        return {**self.partitions, **self.columns}


_VIEWS = (
    _View(
        "scores",
        {"run": "VARCHAR", "metric": "VARCHAR"},
        {"example_id": "BIGINT", "value": "FLOAT"},
    ),
    _View(
        "trace",
        {"run": "VARCHAR", "epoch": "INTEGER"},
        {"example_id": "BIGINT", "loss": "FLOAT", "kept": "BOOLEAN", "weight": "FLOAT"},
    ),
    _View(
        "vectors",
        {"run": "VARCHAR", "name": "VARCHAR"},
        {"example_id": "BIGINT", "vector": "FLOAT[]"},
    ),
)
_ARROW_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32()}
_FILE_SCHEMAS = {"scores": SCORES_SCHEMA, "trace": TRACE_SCHEMA}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class SqlEngine:
    """Owns one in-memory DuckDB connection with the store's views.

    Args:
        sfs: the store's filesystem and root.
        runs_table: returns the current ``runs`` table (one row per manifest); called per query.
    """

    def __init__(self, sfs: StoreFS, runs_table: Callable[[], pa.Table]) -> None:
        self._sfs = sfs
        self._runs_table = runs_table
        self._lock = threading.Lock()
        self._has_files: dict[str, bool] = {}
        self._con = duckdb.connect(":memory:")
        # DuckDB adds its temp directory (default ``<cwd>/.tmp``) to allowed_directories by itself,
        # which would make that directory readable and listable: run without one (queries that
        # outgrow DuckDB's memory limit fail instead of spilling). It must be set before external
        # access is switched off, which freezes it.
        self._con.execute("SET temp_directory = ''")
        allowed = [sfs.root + "/"] if sfs.is_local else []
        self._con.execute("SET allowed_directories = ?", [allowed])
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")

    def sql(self, query: str) -> pa.Table:
        """Run one or more ``;``-separated queries; return the last one's result as Arrow.

        Raises:
            TypeError: ``query`` is not a str.
            ReadOnlyQueryError: a statement is not a plain query (nothing has run).
            duckdb.Error: DuckDB's own errors (syntax, unknown column, unreadable file, ...).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        with self._lock:
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
            self._refresh()
            result = None
            for statement in statements:
                result = self._con.sql(statement.query).to_arrow_table()
            return result

    def _refresh(self) -> None:
        self._con.register("_runs_table", self._runs_table())
        self._con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs_table")
        for view in _VIEWS:
            if self._sfs.is_local:
                self._refresh_local(view)
            else:
                self._refresh_dataset(view)

    def _refresh_local(self, view: _View) -> None:
        # A glob view stays valid as files come and go; only an empty view needs re-checking.
        if self._has_files.get(view.name):
            return
        base = self._sfs.path(view.name)
        if self._sfs.has_any_file(base):
            depth = "/".join(f"{key}=*" for key in view.partitions)
            hive_types = ", ".join(f"{_literal(k)}: {t}" for k, t in view.partitions.items())
            source = (
                f"read_parquet({_literal(f'{base}/{depth}/{SHARD_GLOB}')}, "
                f"hive_partitioning = true, hive_types = {{{hive_types}}})"
            )
            self._create(view, source)
            self._has_files[view.name] = True
        else:
            self._create_empty(view)

    def _refresh_dataset(self, view: _View) -> None:
        base = self._sfs.path(view.name)
        if not self._sfs.has_any_file(base):
            self._create_empty(view)
            return
        keys = pa.schema([(k, _ARROW_TYPES[t]) for k, t in view.partitions.items()])
        file_schema = _FILE_SCHEMAS.get(view.name)  # vectors: inferred, the width varies
        dataset = ds.dataset(
            base,
            filesystem=self._sfs.fs,
            format="parquet",
            schema=None if file_schema is None else pa.unify_schemas([file_schema, keys]),
            partitioning=ds.partitioning(keys, flavor="hive"),
        )
        table_name = f"_{view.name}_dataset"
        self._con.register(table_name, dataset)
        self._create(view, table_name)

    def _create(self, view: _View, source: str) -> None:
        columns = ", ".join(
            f'CAST("{c}" AS {t}) AS "{c}"' if c == "vector" else f'"{c}"'
            for c, t in view.all_columns.items()
        )
        self._con.execute(f"CREATE OR REPLACE VIEW {view.name} AS SELECT {columns} FROM {source}")

    def _create_empty(self, view: _View) -> None:
        columns = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in view.all_columns.items())
        self._con.execute(f"CREATE OR REPLACE VIEW {view.name} AS SELECT {columns} WHERE false")

    def close(self) -> None:
        self._con.close()
