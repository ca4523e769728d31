"""Where the scoring job's examples come from: Parquet, a Hugging Face dataset, or a torch Dataset.

A source is a small picklable description. On the driver, ``plan()`` checks the data and counts
rows; inside an actor, ``open()`` returns a reader whose ``iter_batches(start, stop, size)``
yields ``Batch(ids, x, y)`` for the rows at positions ``[start, stop)``. Row positions are
deterministic (Parquet files in sorted path order, a dataset's row order, dataset indices),
which is what makes the job's shards of rows reproducible across a crash and a ``--resume``.

- ``ParquetSource`` (``pipelines.parquet_source``) and ``HFDatasetSource``
  (``pipelines.hf_source``): features from one (nested) list column, or from several numeric
  scalar columns stacked in the order given; optional ``label_column``; ids from
  ``id_column``, by default ``example_id`` if present, else the row positions.
- ``DatasetSource``: ``"module:factory"`` returning a map-style ``torch.utils.data.Dataset``
  whose items are ``(x, y)`` (or ``x`` alone); ids are the indices ``0..len-1``.

A Parquet or Hugging Face source may instead hold token documents: ``token_column`` names a
``list<int>`` column (one ragged document per row), read as int64 tokens padded to the longest
document of each batch, with their lengths. Either may carry a ``domain_column``.

See docs/scoring-job.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from winnow.pipelines.hf_source import (
    HFDatasetSource,
    check_hf_object,
    hf_saved_kind,
    is_hf_dataset,
)
from winnow.pipelines.models import import_object
from winnow.pipelines.parquet_source import ParquetSource
from winnow.pipelines.source_base import Batch, ItemError, SourcePlan

__all__ = [
    "Batch",
    "SourcePlan",
    "ParquetSource",
    "HFDatasetSource",
    "DatasetSource",
    "ItemError",
    "SOURCE_TYPES",
    "make_source",
]


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
        # Only the length can be checked on resume: the items themselves are the factory's.
        fingerprint = {"kind": "dataset", "rows": n}
        return SourcePlan(n, n, has_labels, fingerprint)

    def open(self) -> _DatasetReader:
        return _DatasetReader(self._build())


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


SOURCE_TYPES = (ParquetSource, HFDatasetSource, DatasetSource)


def make_source(
    data: Any,
    *,
    id_column: str | None = None,
    feature_columns: Sequence[str] | str | None = None,
    label_column: str | None = "label",
    kwargs: Mapping[str, Any] | None = None,
    token_column: str | None = None,
    domain_column: str | None = None,
) -> ParquetSource | HFDatasetSource | DatasetSource:
    """A source from what the user gave: a source; a ``datasets.Dataset``; a directory written
    by ``save_to_disk``; a Parquet file or directory; or ``"module:factory"``.

    ``token_column`` (instead of ``feature_columns``): a ``list<int>`` column of token documents;
    ``domain_column``: each row's domain. Both need a Parquet or Hugging Face source.
    """
    if isinstance(data, SOURCE_TYPES):
        return data
    if token_column is not None:
        if feature_columns is not None:
            raise ValueError(
                f"give feature_columns {feature_columns!r} or token_column {token_column!r}, "
                "not both"
            )
        feature_columns = (token_column,)
    table_options = {
        "id_column": id_column,
        "label_column": label_column,
        "tokens": token_column is not None,
        "domain_column": domain_column,
    }
    check_hf_object(data)
    if is_hf_dataset(data) or type(data).__module__.split(".")[0] == "datasets":
        return HFDatasetSource(
            _feature_columns(feature_columns, "the Dataset"), dataset=data, **table_options
        )
    if not isinstance(data, str | os.PathLike):
        raise TypeError(
            "data must be a path, 'module:factory', a datasets.Dataset or a source, "
            f"got {type(data)}"
        )
    data = os.fspath(data)
    if "://" not in data and os.path.isdir(data) and hf_saved_kind(data):
        columns = _feature_columns(feature_columns, f"dataset {data!r}")
        return HFDatasetSource(columns, path=data, **table_options)
    looks_like_path = data.endswith(".parquet") or os.path.exists(data) or "://" in data
    if not looks_like_path and ":" in data:
        if token_column is not None or domain_column is not None:
            option = "token_column" if token_column is not None else "domain_column"
            raise ValueError(
                f"{option} needs a Parquet or Hugging Face source, got the dataset factory {data!r}"
            )
        return DatasetSource(data, dict(kwargs or {}))
    columns = _feature_columns(feature_columns, f"Parquet source {data!r}")
    return ParquetSource(data, columns, **table_options)


def _feature_columns(columns: Sequence[str] | str | None, where: str) -> tuple[str, ...]:
    if columns is None:
        raise ValueError(f"{where} needs feature columns (--feature-columns x or a,b,c)")
    if isinstance(columns, str):
        columns = [c for c in columns.split(",") if c]
    return tuple(columns)
