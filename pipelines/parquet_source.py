"""A Parquet file or directory of files as a scoring source.

Files are read in sorted path order; a row's position is its place in that order, then in its
file. Features come from one (nested) list column or several numeric scalar columns, labels from
``label_column``, ids from ``id_column`` (default: ``example_id`` if present, else the row
position). See docs/scoring-job.md.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from winnow.pipelines.columns import (
    ROW_POSITIONS,
    TableColumns,
    domain_names,
    to_batch,
    token_range,
)
from winnow.pipelines.fingerprint import file_entry, parquet_footer_sha256
from winnow.pipelines.source_base import Batch, SourcePlan, describe_table_source

__all__ = ["ParquetSource"]


@dataclass(frozen=True)
class ParquetSource:
    """A Parquet file or directory of files (read in sorted path order).

    ``id_column=None``: ``example_id`` if the files have it, else row positions. ``tokens``:
    the one feature column is a ``list<int>`` token column; ``domain_column``: each row's domain.
    """

    path: str
    feature_columns: tuple[str, ...]
    id_column: str | None = None
    label_column: str | None = "label"
    tokens: bool = False
    domain_column: str | None = None

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

    @property
    def columns(self) -> TableColumns:
        return TableColumns(
            self.feature_columns, self.label_column, self.id_column, self.tokens, self.domain_column
        )

    def _files(self) -> tuple[Any, list[str]]:
        import pyarrow.dataset as pads

        dataset = pads.dataset(self.path, format="parquet")
        return dataset.filesystem, sorted(dataset.files)

    def _name(self, path: str) -> str:
        """A file's name in the fingerprint: relative to a directory source."""
        root = self.path.split("://", 1)[-1].rstrip("/")
        if path.startswith(root + "/"):
            return path[len(root) + 1 :]
        return posixpath.basename(path)

    def describe(self) -> dict[str, Any]:
        return describe_table_source(self, "parquet")

    def plan(self) -> SourcePlan:
        """Check every file's columns and types, and the ids; count rows; fingerprint the files.

        Reads each file's footer; with an id column also that column (8 bytes per row, 0.8 GB
        at 10^8 rows, plus a sort), a small cost next to scoring the rows; with a domain column
        that column. A token column's id range comes from the row groups' statistics (the token
        column itself is read only where a row group has none).
        """
        import pyarrow.parquet as pq

        fs, files = self._files()
        if not files:
            raise ValueError(f"Parquet source {self.path!r} holds no .parquet files")
        infos = fs.get_file_info(files)
        entries, chunks, id_columns, domains, ranges = [], [], set(), [], []
        for path, info in zip(files, infos, strict=True):
            with fs.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                id_column = self.columns.resolve(pf.schema_arrow, f"Parquet file {path!r}")
                id_columns.add(id_column)
                if len(id_columns) > 1:
                    raise ValueError(
                        f"Parquet source {self.path!r}: some files have an "
                        f"{sorted(c for c in id_columns if c)} column and others do not"
                    )
                if id_column is not None:
                    ids = pf.read(columns=[id_column]).column(0)
                    if ids.null_count:
                        raise ValueError(f"id column {id_column!r} in {path!r} has nulls")
                    chunks.append(ids.to_numpy().astype(np.int64, copy=False))
                if self.domain_column is not None:
                    domains.append(pf.read(columns=[self.domain_column]).column(0))
                if self.tokens:
                    ranges.append(_token_range(pf, self.feature_columns[0]))
                footer = parquet_footer_sha256(fh, info.size)
                rows = pf.metadata.num_rows
            entries.append(file_entry(info, self._name(path), rows, footer_sha256=footer))
        num_rows = sum(e["rows"] for e in entries)
        if num_rows == 0:
            raise ValueError(f"Parquet source {self.path!r} has no rows")
        (id_column,) = id_columns
        num_examples = num_rows if id_column is None else _check_ids(chunks, id_column)
        fingerprint = {
            "kind": "parquet",
            "ids": id_column or ROW_POSITIONS,
            "rows": num_rows,
            "files": entries,
        }
        names = None
        if self.domain_column is not None:
            names = domain_names(domains, self.domain_column, f"Parquet source {self.path!r}")
        found = [r for r in ranges if r is not None]
        tokens = (min(r[0] for r in found), max(r[1] for r in found)) if found else None
        return SourcePlan(
            num_rows,
            num_examples,
            self.label_column is not None,
            fingerprint,
            token_range=tokens,
            domain_names=names,
        )

    def open(self) -> _ParquetReader:
        return _ParquetReader(self)


def _token_range(pf: Any, column: str) -> tuple[int, int] | None:
    """Smallest and largest token id of a file's token column, from its row groups' statistics;
    the column is read if a non-empty row group has none."""
    meta = pf.metadata
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    leaves = [i for i, path in enumerate(paths) if path.startswith(column + ".")]
    lo = hi = None
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(leaves[0]).statistics if len(leaves) == 1 else None
        if stats is None or not stats.has_min_max:
            if group.num_rows == 0:
                continue
            return token_range([pf.read(columns=[column]).column(0)])
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return None if lo is None else (int(lo), int(hi))


def _check_ids(chunks: list[np.ndarray], id_column: str) -> int:
    """``num_examples`` (largest id + 1) after checking ids are >= 0 and unique."""
    all_ids = np.concatenate(chunks)
    if all_ids.min() < 0:
        raise ValueError(f"ids must be >= 0, found {int(all_ids.min())}")
    uniq = np.unique(all_ids)
    if uniq.size != all_ids.size:
        dup = uniq[np.flatnonzero(np.bincount(np.searchsorted(uniq, all_ids)) > 1)[0]]
        raise ValueError(f"id column {id_column!r} is not unique: id {int(dup)} repeats")
    return int(uniq[-1]) + 1


class _ParquetReader:
    """Reads row ranges of a ParquetSource, touching only the row groups that overlap."""

    def __init__(self, source: ParquetSource):
        import pyarrow.parquet as pq

        self._source = source
        self._fs, files = source._files()
        self._files: list[tuple[str, list[int]]] = []
        id_column = None
        for index, path in enumerate(files):
            with self._fs.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                meta = pf.metadata
                if index == 0:  # the driver's plan() checked that all files agree
                    id_column = source.columns.resolve(pf.schema_arrow, path)
            self._files.append(
                (path, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            )
        self._id_column = id_column
        self._columns = source.columns.to_read(id_column)

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
        pending_rows, position = 0, start
        columns = self._source.columns
        for path, group, lo, hi in self._row_group_slices(start, stop):
            with self._fs.open_input_file(path) as fh:
                table = pq.ParquetFile(fh).read_row_group(group, columns=self._columns)
            pending.append(table.slice(lo, hi - lo))
            pending_rows += hi - lo
            while pending_rows >= batch_size:
                merged = pa.concat_tables(pending)
                yield to_batch(merged.slice(0, batch_size), columns, self._id_column, position)
                position += batch_size
                rest = merged.slice(batch_size)
                pending, pending_rows = [rest], rest.num_rows
        if pending_rows:
            yield to_batch(pa.concat_tables(pending), columns, self._id_column, position)
