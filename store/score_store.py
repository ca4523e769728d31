"""``ScoreStore``: per-example scores in Parquet, keyed by ``example_id``, queryable with SQL."""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from winnow.store import manifest as mf
from winnow.store import vectors as vec
from winnow.store.dense import read_dense
from winnow.store.errors import StoreWarning, UnknownMetricError, UnknownRunError
from winnow.store.files import SCORES_SCHEMA, TRACE_SCHEMA, count_rows, read_checked, write_parquet
from winnow.store.layout import StoreFS, check_name, check_nonnegative_int, shard_filename
from winnow.store.query import SqlEngine
from winnow.store.remove import remove_run
from winnow.store.steps import STEP_KINDS, count_step_rows
from winnow.store.trace import TraceWriter
from winnow.store.validation import check_ids, check_same_length, check_values

__all__ = ["ScoreStore"]

_DATA_KINDS = ("scores", "trace", "vectors", *STEP_KINDS)


class ScoreStore:
    """A directory of Parquet score files, trace files and run manifests.

    Args:
        root: local path, pyarrow filesystem URI (``file:///...``, ``s3://...``) or
            ``(pyarrow.fs.FileSystem, path)``. Created on first write.

    Scores are long-format ``(example_id int64, value float32)`` rows per (run, metric), one file
    per writer shard. Higher or lower scores mean nothing to the store; the metric's producer
    defines the direction. Every write is atomic, and rewriting a shard replaces it, so many
    processes may write different shards of one run at the same time and retries never
    duplicate rows.
    """

    def __init__(self, root: str | os.PathLike | tuple[pafs.FileSystem, str]) -> None:
        self._sfs = StoreFS(root)
        self._engine: SqlEngine | None = None

    @property
    def root(self) -> str:
        """The store's root path inside its filesystem."""
        return self._sfs.root

    def close(self) -> None:
        """Close the DuckDB connection (a later ``sql`` call opens a new one)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScoreStore({self._sfs.root!r}, fs={type(self._sfs.fs).__name__})"

    # ----------------------------------------------------------------------------- paths

    def _partition(self, kind: str, run: str, key: str | None = None, value: str = "") -> str:
        parts = [kind, f"run={check_name(run, 'run')}"]
        if key is not None:
            parts.append(f"{key}={value}")
        return self._sfs.path(*parts)

    def _manifest_path(self, run: str) -> str:
        return self._sfs.path("runs", f"{check_name(run, 'run')}.json")

    # ----------------------------------------------------------------------------- writes

    def write(
        self,
        run: str,
        metric: str,
        ids: object,
        values: object,
        *,
        shard: int = 0,
        allow_nan: bool = False,
    ) -> int:
        """Store one shard of one metric: ``values[i]`` is the score of example ``ids[i]``.

        Args:
            ids: [n] unique non-negative integer example ids (numpy, list, tensor, Arrow).
            values: [n] real scores, stored as float32.
            shard: writer shard number; writing the same shard again replaces it.
            allow_nan: store NaN/inf values instead of rejecting them.

        Returns:
            n, the number of rows written.
        """
        check_name(run, "run")
        check_name(metric, "metric")
        shard = check_nonnegative_int(shard, "shard")
        ids_arr = check_ids(ids)
        values_arr = check_values(values, f"values of metric {metric!r}", allow_nan=allow_nan)
        check_same_length(ids=ids_arr, values=values_arr)
        table = pa.Table.from_arrays(
            [pa.array(ids_arr), pa.array(values_arr)], schema=SCORES_SCHEMA
        )
        path = f"{self._partition('scores', run, 'metric', metric)}/{shard_filename(shard)}"
        write_parquet(self._sfs, path, table)
        return len(ids_arr)

    def write_table(
        self,
        run: str,
        table: pa.Table | Mapping[str, object],
        *,
        shard: int = 0,
        allow_nan: bool = False,
    ) -> dict[str, int]:
        """Store several metrics of one shard: ``table`` has ``example_id`` plus metric columns.

        ``table`` is an Arrow table or a mapping of column name to array-like (numpy, list,
        tensor). Every column is validated before any file is written; then one file per metric.

        Returns:
            ``{metric: rows written}``.
        """
        if not isinstance(table, Mapping):
            if not isinstance(table, pa.Table):
                table = pa.table(table)
            table = {name: table.column(name) for name in table.column_names}
        if "example_id" not in table:
            raise ValueError(f"table needs an 'example_id' column, got {list(table)}")
        metrics = [name for name in table if name != "example_id"]
        if not metrics:
            raise ValueError("table needs at least one metric column besides 'example_id'")
        check_name(run, "run")
        shard = check_nonnegative_int(shard, "shard")
        ids = check_ids(table["example_id"])
        columns = {}
        for metric in metrics:
            check_name(metric, "metric")
            columns[metric] = check_values(
                table[metric], f"values of metric {metric!r}", allow_nan=allow_nan
            )
        check_same_length(example_id=ids, **columns)
        ids_array = pa.array(ids)
        for metric, values in columns.items():
            data = pa.Table.from_arrays([ids_array, pa.array(values)], schema=SCORES_SCHEMA)
            path = f"{self._partition('scores', run, 'metric', metric)}/{shard_filename(shard)}"
            write_parquet(self._sfs, path, data)
        return {metric: len(ids) for metric in metrics}

    def write_vectors(
        self, run: str, name: str, ids: object, vectors: object, *, shard: int = 0
    ) -> int:
        """Store per-example vectors (e.g. embeddings) as float16 ``[n, d]``; returns n.

        Every shard of one (run, name) has the same width ``d``: a write whose width differs from
        the other shards' raises ValueError and leaves the store as it was.
        """
        check_name(run, "run")
        check_name(name, "vector")
        shard = check_nonnegative_int(shard, "shard")
        table = vec.vectors_table(check_ids(ids), vectors)
        directory = self._partition("vectors", run, "name", name)
        width = table.schema.field("vector").type.list_size
        label = f"vector {name!r} of run {run!r}"
        vec.check_width(self._sfs, self._sfs.shard_files(directory), shard, width, label)
        write_parquet(self._sfs, f"{directory}/{shard_filename(shard)}", table)
        return table.num_rows

    def remove_temporary_files(self, *, older_than_s: float = 3600.0) -> list[str]:
        """Delete temporary files that killed writers left behind; return their paths.

        Readers never see these files, so this only reclaims space. Only files untouched for
        ``older_than_s`` seconds are removed, so writes in progress are not disturbed.
        """
        if not older_than_s >= 0:
            raise ValueError(f"older_than_s must be >= 0 seconds, got {older_than_s!r}")
        removed = []
        for info in self._sfs.temporary_files(older_than_s):
            self._sfs.fs.delete_file(info.path)
            removed.append(info.path)
        return removed

    def trace_writer(
        self,
        run: str,
        *,
        shard: int = 0,
        flush_steps: int = 1000,
        flush_bytes: int = 64 << 20,
    ) -> TraceWriter:
        """A writer for samplers, selectors and the noise-scale monitor (docs/traces.md).

        Epoch samplers call ``write(epoch, example_id, kept, weight, loss)``; per-step writers
        buffer their records and hand them over every ``flush_steps`` recorded steps or
        ``flush_bytes`` bytes, at checkpoints and at ``close``. Shard 0 begins the run's
        manifest with its first write and finishes it at ``close()`` (or leaving a ``with``).
        """
        return TraceWriter(
            self._sfs,
            run,
            shard=shard,
            flush_steps=flush_steps,
            flush_bytes=flush_bytes,
            lifecycle=_TraceLifecycle(self),
        )

    # ----------------------------------------------------------------------------- reads

    def _shard_files(self, kind: str, run: str, key: str, value: str, what: str) -> list[str]:
        check_name(value, what)
        files = self._sfs.shard_files(self._partition(kind, run, key, value))
        if files:
            return list(files.values())
        known = self._require_run(run)
        if what == "metric" and value in known.get("metrics", ()):
            return []
        present = self._sfs.partitions(self._partition(kind, run), key)
        raise UnknownMetricError(f"run {run!r} has no {what} {value!r}; it has {present}")

    def read(
        self, run: str, metric: str, *, num_examples: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One metric as a dense array indexed by ``example_id``.

        Args:
            num_examples: N; default the manifest's ``num_examples``, else max stored id + 1.

        Returns:
            ``(values, present)``: float32 [N] with NaN where no score is stored, and bool [N],
            True where a score is stored.

        Raises:
            UnknownRunError / UnknownMetricError: nothing stored under these names.
            CorruptFileError: a shard file is unreadable or foreign (the message names it).
            ValueError: a stored id >= num_examples, or the same id stored by two shards.
        """
        files = self._shard_files("scores", run, "metric", metric, "metric")
        if num_examples is None:
            num_examples = self._manifest_or_empty(run).get("num_examples")
        if num_examples is not None:
            num_examples = check_nonnegative_int(num_examples, "num_examples")
        return read_dense(self._sfs, files, num_examples, f"run {run!r} metric {metric!r}")

    def read_table(self, run: str, metric: str | None = None) -> pa.Table:
        """Stored scores as Arrow ``(metric string, example_id int64, value float32)``.

        Rows are in shard order (not sorted by id). ``metric=None`` returns every metric.
        """
        metrics = [metric] if metric is not None else self.metrics(run)
        parts = []
        for name in metrics:
            for path in self._shard_files("scores", run, "metric", name, "metric"):
                table = read_checked(self._sfs, path, SCORES_SCHEMA)
                column = pa.repeat(pa.scalar(name, pa.string()), table.num_rows)
                parts.append(table.add_column(0, "metric", column))
        schema = pa.schema([pa.field("metric", pa.string()), *SCORES_SCHEMA])
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def read_trace(self, run: str) -> pa.Table:
        """A run's trace as Arrow ``(epoch int32, example_id, loss, kept, weight)``."""
        self._require_run(run)
        parts = []
        epochs = self._sfs.partitions(self._partition("trace", run), "epoch")
        for epoch in sorted(epochs, key=int):
            files = self._sfs.shard_files(self._partition("trace", run, "epoch", epoch))
            for path in files.values():
                table = read_checked(self._sfs, path, TRACE_SCHEMA)
                column = pa.repeat(pa.scalar(int(epoch), pa.int32()), table.num_rows)
                parts.append(table.add_column(0, "epoch", column))
        schema = pa.schema([pa.field("epoch", pa.int32()), *TRACE_SCHEMA])
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def read_vectors(self, run: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [n] ascending, vectors float16 [n, d])`` of one vector name."""
        files = self._shard_files("vectors", run, "name", name, "vector")
        return vec.read_vectors(self._sfs, files)

    def completed_shards(self, run: str, metric: str) -> set[int]:
        """Shards whose file for ``metric`` is committed (empty for a run never written)."""
        check_name(metric, "metric")
        return set(self._sfs.shard_files(self._partition("scores", run, "metric", metric)))

    def metrics(self, run: str) -> list[str]:
        """Metric names with committed files, plus those the manifest declares, sorted."""
        known = self._require_run(run)
        found = self._sfs.partitions(self._partition("scores", run), "metric")
        return sorted(set(found) | set(known.get("metrics", ())))

    def sql(self, query: str) -> pa.Table:
        """Run a read-only SQL query over the views ``scores(run, metric, example_id, value)``,
        ``trace(run, epoch, example_id, loss, kept, weight, step, score)``, ``mixture(run, step,
        domain, pi, drawn)``, ``noise_scale(run, step, b_simple, grad_sq, trace_cov, batch_size,
        estimator)``, ``vectors(run, name, example_id, vector)`` and ``runs`` (one row per run);
        returns Arrow. See ``store.query``.

        A data file that cannot be read is skipped with a ``StoreWarning`` naming it."""
        return self._sql_engine().sql(query)

    def sql_reader(
        self, query: str, *, batch_rows: int = 16384
    ) -> contextlib.AbstractContextManager[pa.RecordBatchReader]:
        """``sql`` as a stream: ``with store.sql_reader(q) as reader: for batch in reader: ...``.

        Rows are computed as the batches (at most ``batch_rows`` rows each) are read, so memory
        stays bounded whatever the result's size; leaving the block stops the query. Other
        queries on this store wait until then (from the same thread they raise RuntimeError).
        """
        batch_rows = check_nonnegative_int(batch_rows, "batch_rows")
        if batch_rows == 0:
            raise ValueError("batch_rows must be >= 1, got 0")
        return self._sql_engine().stream(query, batch_rows=batch_rows)

    def _sql_engine(self) -> SqlEngine:
        if self._engine is None:
            self._engine = SqlEngine(self._sfs, self._runs_table)
        return self._engine

    def require_root(self) -> None:
        """Raise unless the root is an existing directory.

        Reads and SQL see a missing root as an empty store (a store is created by its first
        write); a command that only reads calls this first, so that a mistyped path is an error
        rather than an empty answer.

        Raises:
            FileNotFoundError: nothing exists at the root.
            NotADirectoryError: the root is a file.
        """
        found = self._sfs.fs.get_file_info(self._sfs.root).type
        if found == pafs.FileType.NotFound:
            raise FileNotFoundError(
                errno.ENOENT, f"score store root {self._sfs.root} does not exist"
            )
        if found != pafs.FileType.Directory:
            raise NotADirectoryError(
                errno.ENOTDIR, f"score store root {self._sfs.root} is not a directory"
            )

    # ----------------------------------------------------------------------------- runs

    def _manifest_or_empty(self, run: str) -> dict[str, Any]:
        path = self._manifest_path(run)
        if not self._sfs.exists(path):
            return {}
        return mf.loads(self._sfs.read_bytes(path), path)

    def _has_data(self, run: str) -> bool:
        return any(self._sfs.is_dir(self._partition(kind, run)) for kind in _DATA_KINDS)

    def _require_run(self, run: str) -> dict[str, Any]:
        """The run's manifest ({} if it only has data); UnknownRunError if it has neither."""
        known = self._manifest_or_empty(run)
        if known or self._has_data(run):
            return known
        names = [r["name"] for r in self.runs()]
        shown = names[:20] + (["..."] if len(names) > 20 else [])
        raise UnknownRunError(f"unknown run {run!r} in store {self.root}; runs: {shown}")

    def manifest(self, run: str) -> dict[str, Any]:
        """The run's manifest dict; UnknownRunError if it has none."""
        known = self._manifest_or_empty(run)
        if not known:
            detail = " (it has data but no manifest)" if self._has_data(run) else ""
            raise UnknownRunError(f"run {run!r} has no manifest in store {self.root}{detail}")
        return known

    def begin_run(
        self,
        run: str,
        *,
        kind: str = "scores",
        config: dict[str, Any] | None = None,
        model: Any = None,
        num_examples: int | None = None,
        metrics: tuple[str, ...] | list[str] = (),
    ) -> dict[str, Any]:
        """Write the run's manifest with status ``running``; a resumed run keeps ``created``."""
        metrics = tuple(check_name(m, "metric") for m in metrics)
        new = mf.new_manifest(
            check_name(run, "run"),
            kind=kind,
            config=config,
            model=model,
            num_examples=num_examples,
            metrics=metrics,
        )
        old = self._manifest_or_empty(run)
        if old:
            new["created"] = old.get("created", new["created"])
            new["resumed"] = int(old.get("resumed", 0)) + 1
        self._sfs.write_bytes_atomic(self._manifest_path(run), mf.dumps(new))
        return new

    def finish_run(
        self, run: str, *, status: str = "complete", extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Recount rows from the committed files and rewrite the manifest (written last)."""
        if status not in mf.RUN_STATUSES:
            raise ValueError(f"status must be one of {mf.RUN_STATUSES}, got {status!r}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
        manifest = self._require_run(run) or mf.new_manifest(
            run, kind="scores", config=None, model=None, num_examples=None, metrics=()
        )
        manifest.update(self.row_counts(run))
        manifest["metrics"] = sorted(set(manifest["metrics"]) | set(manifest["row_counts"]))
        manifest["status"] = status
        manifest["updated"] = manifest["finished"] = mf.now_iso()
        manifest["extra"] = {**manifest.get("extra", {}), **(extra or {})}
        self._sfs.write_bytes_atomic(self._manifest_path(run), mf.dumps(manifest))
        return manifest

    def row_counts(self, run: str) -> dict[str, Any]:
        """Rows in committed files now: ``row_counts`` and ``shards`` per metric,
        ``trace_rows`` (per-epoch and per-step), ``trace_epochs``, ``vector_rows`` per name,
        ``mixture_rows`` and ``noise_scale_rows`` (from Parquet footers)."""
        counts: dict[str, Any] = {"row_counts": {}, "shards": {}, "vector_rows": {}}
        for metric in self._sfs.partitions(self._partition("scores", run), "metric"):
            files = self._sfs.shard_files(self._partition("scores", run, "metric", metric))
            counts["row_counts"][metric] = sum(count_rows(self._sfs, p) for p in files.values())
            counts["shards"][metric] = len(files)
        epochs = self._sfs.partitions(self._partition("trace", run), "epoch")
        counts["trace_epochs"] = len(epochs)
        counts["trace_rows"] = sum(
            count_rows(self._sfs, p)
            for e in epochs
            for p in self._sfs.shard_files(self._partition("trace", run, "epoch", e)).values()
        ) + count_step_rows(self._sfs, "steps", run)
        counts["mixture_rows"] = count_step_rows(self._sfs, "mixture", run)
        counts["noise_scale_rows"] = count_step_rows(self._sfs, "noise_scale", run)
        for name in self._sfs.partitions(self._partition("vectors", run), "name"):
            files = self._sfs.shard_files(self._partition("vectors", run, "name", name))
            counts["vector_rows"][name] = sum(count_rows(self._sfs, p) for p in files.values())
        return counts

    def remove_run(self, run: str) -> dict[str, Any]:
        """Delete run ``run``: its manifest first, then its scores, vectors and trace, each
        renamed to a hidden name before it is deleted, so readers see the run whole or not at
        all (``store.remove``). Returns what it held; ``UnknownRunError`` if nothing."""
        return remove_run(self._sfs, run)

    def runs(self) -> list[dict[str, Any]]:
        """Every run's manifest, sorted by name; runs with data but no manifest appear as
        ``{"name": run, "status": "unknown"}``. A manifest that cannot be read or is not a valid
        manifest is skipped with a ``StoreWarning`` naming it (its run, if it has data, is then
        listed as ``unknown``)."""
        manifests = {}
        for info in self._sfs.list_dir(self._sfs.path("runs")):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                if info.base_name.startswith("."):
                    continue
                try:
                    manifest = mf.loads(self._sfs.read_bytes(info.path), info.path)
                except (OSError, ValueError) as exc:  # one bad manifest must not hide the others
                    warnings.warn(
                        f"skipping run manifest {info.path}: {exc}", StoreWarning, stacklevel=2
                    )
                    continue
                manifests[info.base_name[:-5]] = manifest
        for kind in _DATA_KINDS:
            for run in self._sfs.partitions(self._sfs.path(kind), "run"):
                manifests.setdefault(run, {"name": run, "status": "unknown"})
        return [manifests[name] for name in sorted(manifests)]

    def _runs_table(self) -> pa.Table:
        return mf.manifests_table(self.runs())


class _TraceLifecycle:
    """The manifest side of a ``TraceWriter``: begin a trace run, finish it at ``close``."""

    def __init__(self, store: ScoreStore) -> None:
        self._store = store

    def trace_begun(self, run: str) -> None:
        """A new run gets a ``trace`` manifest; a finished one is marked ``running`` again
        (counted as resumed); a running one (begun by whoever owns the run) is left as it is."""
        store = self._store
        old = store._manifest_or_empty(run)
        if not old:
            store.begin_run(run, kind="trace")
            return
        if old.get("status") == "running":
            return
        now = mf.now_iso()
        old.update(status="running", updated=now, finished=None)
        old["resumed"] = int(old.get("resumed", 0)) + 1
        store._sfs.write_bytes_atomic(store._manifest_path(run), mf.dumps(old))

    def trace_finished(self, run: str, status: str) -> dict[str, Any]:
        return self._store.finish_run(run, status=status)
