"""Where the scoring job's examples come from: a Parquet dataset or a map-style torch Dataset.

A source is a small picklable description. On the driver, ``plan()`` counts rows and checks
the ids; inside an actor, ``open()`` returns a reader whose ``iter_batches(start, stop, size)``
yields ``Batch(ids, x, y)`` for the rows at positions ``[start, stop)``. Row positions are
deterministic (Parquet files in sorted path order, dataset indices), which is what makes the
job's shards of rows reproducible across a crash and a ``--resume``.

- ``ParquetSource``: ids from ``id_column``; features from one fixed-size-list / list column, or
  from several numeric scalar columns stacked in the order given; optional ``label_column``.
- ``DatasetSource``: ``"module:factory"`` returning a map-style ``torch.utils.data.Dataset``
  whose items are ``(x, y)`` (or ``x`` alone); ids are the indices ``0..len-1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from winnow.pipelines.models import import_object

__all__ = ["Batch", "SourcePlan", "ParquetSource", "DatasetSource", "ItemError", "make_source"]


@dataclass
class Batch:
    """One mini-batch: ids int64 numpy ``[B]``, x tensor ``[B, ...]``, y ``[B]`` or None."""

    ids: np.ndarray
    x: Any
    y: Any | None


@dataclass(frozen=True)
class SourcePlan:
    """What the driver knows before scoring: rows, ``num_examples`` (max id + 1), labels."""

    num_rows: int
    num_examples: int
    has_labels: bool


@dataclass(frozen=True)
class ParquetSource:
    """A Parquet file or directory of files (read in sorted path order)."""

    path: str
    feature_columns: tuple[str, ...]
    id_column: str = "example_id"
    label_column: str | None = "label"

    def __post_init__(self) -> None:
        if isinstance(self.feature_columns, str):
            object.__setattr__(self, "feature_columns", (self.feature_columns,))
        if not self.feature_columns:
            raise ValueError("ParquetSource needs at least one feature column")
        path = os.fspath(self.path)
        if "://" not in path:
            # Actors may run in another working directory: keep local paths absolute.
            path = os.path.abspath(path)
            if not os.path.exists(path):
                raise FileNotFoundError(f"Parquet source {self.path!r} does not exist")
        object.__setattr__(self, "path", path)

    def _files(self) -> tuple[Any, list[str]]:
        import pyarrow.dataset as pads

        dataset = pads.dataset(self.path, format="parquet")
        return dataset.filesystem, sorted(dataset.files)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "parquet",
            "path": self.path,
            "id_column": self.id_column,
            "feature_columns": list(self.feature_columns),
            "label_column": self.label_column,
        }

    def plan(self) -> SourcePlan:
        """Check the schema and the ids (integers >= 0, unique); count rows.

        Reads the id column of every file on the driver: 8 bytes per row (0.8 GB at 10^8
        rows) plus a sort, a small cost next to scoring them.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        fs, files = self._files()
        if not files:
            raise ValueError(f"Parquet source {self.path!r} holds no .parquet files")
        wanted = [self.id_column, *self.feature_columns]
        if self.label_column is not None:
            wanted.append(self.label_column)
        chunks = []
        for path in files:
            with fs.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                missing = [c for c in wanted if c not in pf.schema_arrow.names]
                if missing:
                    raise ValueError(
                        f"Parquet file {path!r} lacks column(s) {missing}; "
                        f"it has {pf.schema_arrow.names}"
                    )
                ids = pf.read(columns=[self.id_column]).column(0)
            if not pa.types.is_integer(ids.type):
                raise TypeError(f"id column {self.id_column!r} must be integer, got {ids.type}")
            if ids.null_count:
                raise ValueError(f"id column {self.id_column!r} in {path!r} has nulls")
            chunks.append(ids.to_numpy().astype(np.int64, copy=False))
        all_ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        if all_ids.size == 0:
            raise ValueError(f"Parquet source {self.path!r} has no rows")
        if all_ids.min() < 0:
            raise ValueError(f"ids must be >= 0, found {int(all_ids.min())}")
        uniq = np.unique(all_ids)
        if uniq.size != all_ids.size:
            dup = uniq[np.flatnonzero(np.bincount(np.searchsorted(uniq, all_ids)) > 1)[0]]
            raise ValueError(f"id column {self.id_column!r} is not unique: id {int(dup)} repeats")
        return SourcePlan(
            num_rows=int(all_ids.size),
            num_examples=int(uniq[-1]) + 1,
            has_labels=self.label_column is not None,
        )

    def open(self) -> _ParquetReader:
        return _ParquetReader(self)


class _ParquetReader:
    """Reads row ranges of a ParquetSource, touching only the row groups that overlap."""

    def __init__(self, source: ParquetSource):
        import pyarrow.parquet as pq

        self._source = source
        self._fs, files = source._files()
        self._files: list[tuple[str, list[int]]] = []
        for path in files:
            with self._fs.open_input_file(path) as fh:
                meta = pq.ParquetFile(fh).metadata
            self._files.append(
                (path, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            )
        self._columns = [source.id_column, *source.feature_columns]
        if source.label_column is not None:
            self._columns.append(source.label_column)

    def _row_group_slices(self, start: int, stop: int) -> Iterator[tuple[str, int, int, int]]:
        """``(file, row_group, first_row, last_row)`` pieces covering global rows [start, stop)."""
        offset = 0
        for path, groups in self._files:
            for index, count in enumerate(groups):
                lo, hi = max(start, offset), min(stop, offset + count)
                if lo < hi:
                    yield path, index, lo - offset, hi - offset
                offset += count
                if offset >= stop:
                    return

    def iter_batches(self, start: int, stop: int, batch_size: int) -> Iterator[Batch]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pending: list[pa.Table] = []
        pending_rows = 0
        for path, group, lo, hi in self._row_group_slices(start, stop):
            with self._fs.open_input_file(path) as fh:
                table = pq.ParquetFile(fh).read_row_group(group, columns=self._columns)
            pending.append(table.slice(lo, hi - lo))
            pending_rows += hi - lo
            while pending_rows >= batch_size:
                merged = pa.concat_tables(pending)
                yield self._to_batch(merged.slice(0, batch_size))
                rest = merged.slice(batch_size)
                pending, pending_rows = [rest], rest.num_rows
        if pending_rows:
            yield self._to_batch(pa.concat_tables(pending))

    def _to_batch(self, table: Any) -> Batch:
        import torch

        src = self._source
        ids = np.array(table.column(src.id_column).to_numpy(), dtype=np.int64)
        x = _features(table, src.feature_columns)
        y = None
        if src.label_column is not None:
            labels = table.column(src.label_column).to_numpy()
            y = torch.from_numpy(
                labels.astype(np.int64 if labels.dtype.kind in "iub" else np.float32)
            )
        return Batch(ids=ids, x=torch.from_numpy(x), y=y)


def _is_list(arrow_type: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _features(table: Any, columns: Sequence[str]) -> np.ndarray:
    """float32 ``[B, ...]`` from one (nested) list column or several scalar columns."""
    if len(columns) == 1:
        col = table.column(columns[0]).combine_chunks()
        if _is_list(col.type):
            shape = [len(col)]
            while _is_list(col.type):
                if col.null_count:
                    raise ValueError(f"feature column {columns[0]!r} has null rows")
                values = col.flatten()
                if len(col) and len(values) % len(col):
                    raise ValueError(f"feature column {columns[0]!r} has rows of unequal length")
                shape.append(len(values) // max(len(col), 1))
                col = values
            # np.array copies: Arrow buffers are read-only and torch wants writable memory.
            return np.array(col.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(shape)
    arrays = [np.array(table.column(c).to_numpy(), dtype=np.float32) for c in columns]
    return np.stack(arrays, axis=1)


@dataclass(frozen=True)
class DatasetSource:
    """A map-style torch Dataset built by ``factory`` ("module:attr"); ids are its indices."""

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": "dataset", "factory": self.factory, "kwargs": dict(self.kwargs)}

    def _build(self) -> Any:
        factory = import_object(self.factory, "dataset factory")
        dataset = factory(**dict(self.kwargs))
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"dataset factory {self.factory!r} returned {type(dataset).__name__}; "
                "expected a map-style Dataset (with __len__ and __getitem__)"
            )
        return dataset

    def plan(self) -> SourcePlan:
        dataset = self._build()
        n = len(dataset)
        if n <= 0:
            raise ValueError(f"dataset from {self.factory!r} is empty")
        first = dataset[0]
        has_labels = isinstance(first, (tuple, list)) and len(first) >= 2
        return SourcePlan(num_rows=n, num_examples=n, has_labels=has_labels)

    def open(self) -> _DatasetReader:
        return _DatasetReader(self._build())


class ItemError(RuntimeError):
    """Reading an example failed; ``example_id`` names the first failing one (None if unknown)."""

    def __init__(self, example_id: int | None, cause: BaseException):
        self.example_id = example_id
        super().__init__(f"{type(cause).__name__}: {cause}")


class _DatasetReader:
    def __init__(self, dataset: Any):
        self._dataset = dataset

    def _first_failing(self, indices: Sequence[int]) -> int | None:
        for index in indices:
            try:
                self._dataset[index]
            except Exception:  # we only need to know which item fails
                return index
        return None

    def iter_batches(self, start: int, stop: int, batch_size: int) -> Iterator[Batch]:
        from torch.utils.data import default_collate

        getitems = getattr(self._dataset, "__getitems__", None)
        for lo in range(start, stop, batch_size):
            indices = list(range(lo, min(lo + batch_size, stop)))
            try:
                items = getitems(indices) if getitems else [self._dataset[i] for i in indices]
            except Exception as exc:  # the user's dataset failed: find which item
                raise ItemError(self._first_failing(indices), exc) from exc
            ids = np.arange(indices[0], indices[-1] + 1, dtype=np.int64)
            if isinstance(items[0], (tuple, list)):
                collated = default_collate(items)
                x, y = collated[0], collated[1] if len(collated) > 1 else None
            else:
                x, y = default_collate(items), None
            yield Batch(ids=ids, x=x.float() if x.is_floating_point() else x, y=y)


def make_source(
    data: str | ParquetSource | DatasetSource,
    *,
    id_column: str = "example_id",
    feature_columns: Sequence[str] | str | None = None,
    label_column: str | None = "label",
    kwargs: Mapping[str, Any] | None = None,
) -> ParquetSource | DatasetSource:
    """A source from a CLI-style string: a Parquet path, or ``"module:factory"``."""
    if isinstance(data, (ParquetSource, DatasetSource)):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be a path, 'module:factory' or a source, got {type(data)}")
    data = os.fspath(data)
    looks_like_path = data.endswith(".parquet") or os.path.exists(data) or "://" in data
    if not looks_like_path and ":" in data:
        return DatasetSource(data, dict(kwargs or {}))
    if feature_columns is None:
        raise ValueError(
            f"Parquet source {data!r} needs feature columns (--feature-columns x or a,b,c)"
        )
    if isinstance(feature_columns, str):
        feature_columns = tuple(c for c in feature_columns.split(",") if c)
    return ParquetSource(
        data, tuple(feature_columns), id_column=id_column, label_column=label_column
    )
