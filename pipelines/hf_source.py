"""A Hugging Face ``datasets.Dataset`` as a scoring source: a ``save_to_disk`` directory, or a
``Dataset`` object passed from Python.

Columns are named as for Parquet (``feature_columns``, ``label_column``, ``id_column``; without
an id column the ids are the row positions ``0..N-1``, in the dataset's own row order).

- A directory written by ``Dataset.save_to_disk`` is read with pyarrow alone, memory-mapped: its
  ``state.json`` lists the Arrow stream files in row order (``save_to_disk`` writes the rows in
  the dataset's order, after any ``select``/``shuffle``). Neither the driver nor the actors
  import ``datasets`` (about 4 s per process on a small machine).
- A ``Dataset`` object travels to the actors pickled (a memory-mapped dataset as its file paths,
  an in-memory one with its data) and is read with ``ds.with_format("arrow")[lo:hi]``, so
  ``select``, ``shuffle`` and ``filter`` views are honoured. Needs ``pip install winnow[hf]``.

See docs/scoring-job.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from winnow.pipelines.columns import (
    ROW_POSITIONS,
    TableColumns,
    domain_names,
    to_batch,
    token_range,
)
from winnow.pipelines.fingerprint import file_entry
from winnow.pipelines.source_base import Batch, SourcePlan, describe_table_source

__all__ = ["HFDatasetSource", "check_hf_object", "hf_saved_kind", "is_hf_dataset"]

_STATE = "state.json"
_DICT = "dataset_dict.json"


def hf_saved_kind(path: str) -> str | None:
    """``"dataset"`` / ``"dataset_dict"`` for a directory written by ``save_to_disk``, else None."""
    if os.path.isfile(os.path.join(path, _STATE)):
        return "dataset"
    if os.path.isfile(os.path.join(path, _DICT)):
        return "dataset_dict"
    return None


def is_hf_dataset(obj: Any) -> bool:
    """True for a ``datasets.Dataset`` (checked without importing ``datasets``)."""
    import sys

    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(obj, datasets.Dataset)


def check_hf_object(obj: Any) -> None:
    """Refuse a ``DatasetDict`` or an ``IterableDataset`` with a message saying what to pass."""
    import sys

    datasets = sys.modules.get("datasets")
    if datasets is None:
        return
    if isinstance(obj, datasets.DatasetDict):
        splits = list(obj)
        raise TypeError(f"data is a DatasetDict with splits {splits}; pass one, e.g. ds['train']")
    if isinstance(obj, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise TypeError(
            "data is an IterableDataset; the scoring job needs random access to rows (a "
            "map-style Dataset: load it without streaming=True, or save_to_disk first)"
        )


def _split_dirs(path: str) -> list[str]:
    with open(os.path.join(path, _DICT), encoding="utf-8") as fh:
        return list(json.load(fh).get("splits", []))


@dataclass(frozen=True)
class HFDatasetSource:
    """A ``save_to_disk`` directory (``path``) or a ``datasets.Dataset`` (``dataset``).

    ``tokens``: the one feature column is a ``list<int>`` token column (e.g. ``input_ids``);
    ``domain_column``: each row's domain.
    """

    feature_columns: tuple[str, ...]
    path: str | None = None
    dataset: Any = field(default=None, compare=False, repr=False)
    id_column: str | None = None
    label_column: str | None = "label"
    tokens: bool = False
    domain_column: str | None = None
    dataset_fingerprint: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.feature_columns, str):
            object.__setattr__(self, "feature_columns", (self.feature_columns,))
        if not self.feature_columns:
            raise ValueError("a Hugging Face dataset source needs at least one feature column")
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of path (a save_to_disk directory) and dataset")
        if self.dataset is not None:
            check_hf_object(self.dataset)
            if not is_hf_dataset(self.dataset):
                raise TypeError(f"dataset must be a datasets.Dataset, got {type(self.dataset)}")
            object.__setattr__(self, "dataset_fingerprint", self.dataset._fingerprint)
            return
        path = os.path.abspath(os.fspath(self.path))
        kind = hf_saved_kind(path)
        if kind == "dataset_dict":
            raise ValueError(
                f"{self.path!r} is a DatasetDict saved with save_to_disk; pass one split's "
                f"directory, e.g. {os.path.join(self.path, 'train')!r} "
                f"(splits: {_split_dirs(path)})"
            )
        if kind is None:
            raise ValueError(f"{self.path!r} is not a directory written by Dataset.save_to_disk")
        object.__setattr__(self, "path", path)

    @property
    def columns(self) -> TableColumns:
        return TableColumns(
            self.feature_columns, self.label_column, self.id_column, self.tokens, self.domain_column
        )

    def describe(self) -> dict[str, Any]:
        return describe_table_source(self, "hf_dataset")

    def _where(self) -> str:
        return f"dataset {self.path!r}" if self.path else "the Dataset"

    def _data_files(self) -> tuple[list[str], str | None]:
        with open(os.path.join(self.path, _STATE), encoding="utf-8") as fh:
            state = json.load(fh)
        files = [os.path.join(self.path, f["filename"]) for f in state.get("_data_files", [])]
        return files, state.get("_fingerprint")

    def _table(self, columns: list[str] | None = None) -> tuple[Any, list[dict[str, Any]]]:
        """A saved dataset's rows as one memory-mapped Arrow table, and its files' entries."""
        import pyarrow as pa
        import pyarrow.fs as pafs

        files, _ = self._data_files()
        if not files:
            raise ValueError(f"{self._where()} lists no data files in {_STATE}")
        tables, entries = [], []
        infos = pafs.LocalFileSystem().get_file_info(files)
        for path, info in zip(files, infos, strict=True):
            if info.type != pafs.FileType.File:
                raise FileNotFoundError(f"{self._where()}: data file {path!r} is missing")
            table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
            if columns is not None:
                table = table.select(columns)
            tables.append(table)
            entries.append(file_entry(info, os.path.basename(path), table.num_rows))
        return pa.concat_tables(tables), entries

    def _arrow_view(self, columns: list[str]) -> Any:
        return self.dataset.select_columns(columns).with_format("arrow")

    def plan(self) -> SourcePlan:
        """Check the columns and types (and ids); count rows; fingerprint the data."""
        if self.path is not None:
            table, entries = self._table()
            id_column = self.columns.resolve(table.schema, self._where())
            ids = table.column(id_column) if id_column is not None else None
            extra = {"dataset_fingerprint": self._data_files()[1], "files": entries}
        else:
            schema = self.dataset.with_format("arrow")[0:0].schema
            id_column = self.columns.resolve(schema, self._where())
            ids = self._arrow_view([id_column])[:][id_column] if id_column is not None else None
            extra = {
                "dataset_fingerprint": self.dataset_fingerprint,
                "files": _cache_file_entries(self.dataset),
            }
        wanted = [c for c in (self.domain_column,) if c is not None]
        if self.tokens:
            wanted.append(self.feature_columns[0])
        if wanted:
            rows = table.select(wanted) if self.path is not None else self._arrow_view(wanted)[:]
        num_rows = table.num_rows if self.path is not None else len(self.dataset)
        if num_rows == 0:
            raise ValueError(f"{self._where()} has no rows")
        num_examples = num_rows
        if ids is not None:
            from winnow.pipelines.parquet_source import _check_ids

            if ids.null_count:
                raise ValueError(f"id column {id_column!r} in {self._where()} has nulls")
            num_examples = _check_ids([ids.to_numpy().astype(np.int64)], id_column)
        fingerprint = {
            "kind": "hf_dataset",
            "ids": id_column or ROW_POSITIONS,
            "rows": num_rows,
            **extra,
        }
        names = tokens = None
        if self.domain_column is not None:
            names = domain_names([rows[self.domain_column]], self.domain_column, self._where())
        if self.tokens:
            tokens = token_range([rows[self.feature_columns[0]]])
        return SourcePlan(
            num_rows,
            num_examples,
            self.label_column is not None,
            fingerprint,
            token_range=tokens,
            domain_names=names,
        )

    def open(self) -> _HFReader:
        return _HFReader(self)


def _cache_file_entries(dataset: Any) -> list[dict[str, Any]]:
    """Entries of the Arrow files behind a memory-mapped ``Dataset`` (none if in memory)."""
    import pyarrow.fs as pafs

    paths = [f["filename"] for f in dataset.cache_files]
    infos = pafs.LocalFileSystem().get_file_info(paths) if paths else []
    return [file_entry(info, path, None) for path, info in zip(paths, infos, strict=True)]


class _HFReader:
    def __init__(self, source: HFDatasetSource):
        self._source = source
        columns = source.columns
        if source.path is not None:
            table, _ = source._table()
            self._id_column = columns.resolve(table.schema, source._where())
            self._table = table.select(columns.to_read(self._id_column))
            self._view = None
        else:
            schema = source.dataset.with_format("arrow")[0:0].schema
            self._id_column = columns.resolve(schema, source._where())
            self._view = source._arrow_view(columns.to_read(self._id_column))

    def iter_batches(self, start: int, stop: int, batch_size: int) -> Iterator[Batch]:
        columns = self._source.columns
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            if self._view is None:
                rows = self._table.slice(lo, hi - lo)
            else:
                rows = self._view[lo:hi]
            yield to_batch(rows, columns, self._id_column, lo)
