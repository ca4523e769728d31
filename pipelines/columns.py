"""Columns of a table source (Parquet files, a Hugging Face dataset), and rows as a Batch.

``TableColumns`` names the id, feature and label columns as the user gave them; ``resolve``
checks them against a schema once, on the driver, before anything runs, and decides where ids
come from: the named ``id_column``; without one, ``example_id`` if the data has it, else the row
positions ``0..N-1`` (files in sorted name order, then row order). ``to_batch`` turns an Arrow
table of rows into a ``Batch``. See docs/scoring-job.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from winnow.pipelines.source_base import Batch

__all__ = ["DEFAULT_ID_COLUMN", "ROW_POSITIONS", "TableColumns", "to_batch"]

DEFAULT_ID_COLUMN = "example_id"
ROW_POSITIONS = "row positions"
"""How the manifest's source fingerprint names ids taken from row positions."""


def _storage(arrow_type: Any) -> Any:
    import pyarrow as pa

    # Hugging Face Array2D/3D... are extension types over nested lists.
    return arrow_type.storage_type if isinstance(arrow_type, pa.ExtensionType) else arrow_type


def _is_list(arrow_type: Any) -> bool:
    import pyarrow as pa

    arrow_type = _storage(arrow_type)
    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _is_number(arrow_type: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


@dataclass(frozen=True)
class TableColumns:
    """Which columns hold the features, the labels (None: unlabelled) and the ids (None: auto)."""

    features: tuple[str, ...]
    label: str | None = "label"
    id: str | None = None

    def resolve(self, schema: Any, where: str) -> str | None:
        """The id column to read (None: row positions), after checking every named column.

        Raises ``ValueError`` for a missing column and ``TypeError`` for a column whose type
        cannot be scored, naming the column, ``where`` it is and what was expected.
        """
        import pyarrow as pa

        names = list(schema.names)
        if self.id is not None and self.id not in names:
            raise ValueError(f"{where} has no id column {self.id!r}; it has {names}")
        wanted = [*self.features, *([self.label] if self.label is not None else [])]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"{where} lacks column(s) {missing}; it has {names}")
        id_column = self.id if self.id is not None else None
        if id_column is None and DEFAULT_ID_COLUMN in names:
            id_column = DEFAULT_ID_COLUMN
        if id_column is not None and not pa.types.is_integer(schema.field(id_column).type):
            raise TypeError(
                f"id column {id_column!r} in {where} must be integer, "
                f"got {schema.field(id_column).type}"
            )
        for name in self.features:
            arrow_type = schema.field(name).type
            leaf = arrow_type
            while _is_list(leaf):
                leaf = _storage(leaf).value_type
            if _is_list(arrow_type) and len(self.features) > 1:
                raise TypeError(
                    f"feature column {name!r} in {where} is a list column ({arrow_type}); a "
                    "list column must be the only feature column"
                )
            if not _is_number(leaf):
                raise TypeError(
                    f"feature column {name!r} in {where} has type {arrow_type}; expected "
                    "numbers, or one (nested) list column of numbers (tokenize text first, "
                    "or score a module:factory Dataset)"
                )
        if self.label is not None and not _is_number(schema.field(self.label).type):
            raise TypeError(
                f"label column {self.label!r} in {where} has type "
                f"{schema.field(self.label).type}; expected integer, bool or float labels "
                "(encode class names as integers, or --label-column '' for none)"
            )
        return id_column

    def to_read(self, id_column: str | None) -> list[str]:
        """The columns a reader loads, ids first."""
        label = [self.label] if self.label is not None else []
        return [*([id_column] if id_column is not None else []), *self.features, *label]


def to_batch(table: Any, columns: TableColumns, id_column: str | None, first_row: int) -> Batch:
    """A ``Batch`` of the rows of ``table`` (Arrow), which sit at positions ``first_row...``."""
    import torch

    if id_column is None:
        ids = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    else:
        ids = np.array(table.column(id_column).to_numpy(), dtype=np.int64)
    x = _features(table, columns.features)
    y = None
    if columns.label is not None:
        labels = table.column(columns.label).to_numpy()
        y = torch.from_numpy(labels.astype(np.int64 if labels.dtype.kind in "iub" else np.float32))
    return Batch(ids=ids, x=torch.from_numpy(x), y=y)


def _features(table: Any, columns: Sequence[str]) -> np.ndarray:
    """float32 ``[B, ...]`` from one (nested) list column or several scalar columns."""
    import pyarrow as pa

    if len(columns) == 1:
        col = table.column(columns[0]).combine_chunks()
        if isinstance(col, pa.ExtensionArray):
            col = col.storage
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
