"""Columns of a table source (Parquet files, a Hugging Face dataset), and rows as a Batch.

``TableColumns`` names the id, feature and label columns as the user gave them; ``resolve``
checks them against a schema once, on the driver, before anything runs, and decides where ids
come from: the named ``id_column``; without one, ``example_id`` if the data has it, else the row
positions ``0..N-1`` (files in sorted name order, then row order). ``to_batch`` turns an Arrow
table of rows into a ``Batch``: features as float32, or a token column (``list<int>``, ragged) as
int64 tokens padded to the batch's longest document with their lengths. See docs/scoring-job.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from winnow.pipelines.source_base import Batch, ItemError

__all__ = ["DEFAULT_ID_COLUMN", "ROW_POSITIONS", "TableColumns", "is_domain_type", "to_batch"]

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


def _is_string(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def is_domain_type(arrow_type: Any) -> bool:
    """Integers, strings, or a dictionary of strings (a categorical column)."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        return _is_string(arrow_type.value_type)
    return pa.types.is_integer(arrow_type) or _is_string(arrow_type)


@dataclass(frozen=True)
class TableColumns:
    """Which columns hold the features, the labels (None: unlabelled) and the ids (None: auto).

    ``tokens``: the one feature column is a token column (``list<int>``, one document per row);
    ``domain``: a column of domains (integers or strings), read with each batch.
    """

    features: tuple[str, ...]
    label: str | None = "label"
    id: str | None = None
    tokens: bool = False
    domain: str | None = None

    def resolve(self, schema: Any, where: str) -> str | None:
        """The id column to read (None: row positions), after checking every named column.

        Raises ``ValueError`` for a missing column and ``TypeError`` for a column whose type
        cannot be scored, naming the column, ``where`` it is and what was expected.
        """
        import pyarrow as pa

        names = list(schema.names)
        if self.id is not None and self.id not in names:
            raise ValueError(f"{where} has no id column {self.id!r}; it has {names}")
        extra = [c for c in (self.label, self.domain) if c is not None]
        wanted = [*self.features, *extra]
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
        if self.domain is not None and not is_domain_type(schema.field(self.domain).type):
            raise TypeError(
                f"domain column {self.domain!r} in {where} has type "
                f"{schema.field(self.domain).type}; expected integers or strings"
            )
        if self.tokens:
            self._check_tokens(schema, where)
            return id_column
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

    def _check_tokens(self, schema: Any, where: str) -> None:
        import pyarrow as pa

        (name,) = self.features
        arrow_type = schema.field(name).type
        storage = _storage(arrow_type)
        if not (_is_list(storage) and pa.types.is_integer(_storage(storage.value_type))):
            raise TypeError(
                f"token column {name!r} in {where} has type {arrow_type}; expected a list of "
                "integer token ids (list<int>), one document per row"
            )

    def to_read(self, id_column: str | None) -> list[str]:
        """The columns a reader loads, ids first."""
        extra = [c for c in (self.label, self.domain) if c is not None]
        return [*([id_column] if id_column is not None else []), *self.features, *extra]


def to_batch(table: Any, columns: TableColumns, id_column: str | None, first_row: int) -> Batch:
    """A ``Batch`` of the rows of ``table`` (Arrow), which sit at positions ``first_row...``."""
    import torch

    if id_column is None:
        ids = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    else:
        ids = np.array(table.column(id_column).to_numpy(), dtype=np.int64)
    domain = None if columns.domain is None else _domains(table, columns.domain, ids)
    if columns.tokens:
        tokens, lengths = _tokens(table, columns.features[0], ids)
        lengths = torch.from_numpy(lengths)
        return Batch(ids=ids, x=torch.from_numpy(tokens), y=None, lengths=lengths, domain=domain)
    x = _features(table, columns.features)
    y = None
    if columns.label is not None:
        labels = table.column(columns.label).to_numpy()
        y = torch.from_numpy(labels.astype(np.int64 if labels.dtype.kind in "iub" else np.float32))
    return Batch(ids=ids, x=torch.from_numpy(x), y=y, domain=domain)


def _first_null(array: Any, ids: np.ndarray) -> int:
    return int(ids[np.argmax(np.asarray(array.is_null(), dtype=bool))])


def _tokens(table: Any, column: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``[B, T]`` tokens right-padded with 0 (``T`` = the longest row) and ``[B]`` lengths.

    A null row, a null token or a document of fewer than 2 tokens raises ``ItemError`` naming
    the first such id.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column).combine_chunks()
    if isinstance(col, pa.ExtensionArray):
        col = col.storage
    if col.null_count:
        bad = _first_null(col, ids)
        raise ItemError(bad, ValueError(f"token column {column!r} is null for example {bad}"))
    lengths = np.asarray(pc.list_value_length(col).to_numpy(), dtype=np.int64)
    values = pc.list_flatten(col)
    if values.null_count:
        row = np.repeat(np.arange(len(col)), lengths)[np.flatnonzero(values.is_null())[0]]
        bad = int(ids[row])
        raise ItemError(bad, ValueError(f"token column {column!r} holds a null token in {bad}"))
    if lengths.min() < 2:
        row = int(np.argmin(lengths))
        raise ItemError(
            int(ids[row]),
            ValueError(
                f"example {int(ids[row])} has {int(lengths[row])} token(s); a document needs at "
                "least 2 (one next-token target)"
            ),
        )
    out = np.zeros((len(col), int(lengths.max())), dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(len(col)), lengths)
    out[row, np.arange(row.shape[0]) - starts[row]] = values.to_numpy(zero_copy_only=False)
    return out, lengths


def _domains(table: Any, column: str, ids: np.ndarray) -> np.ndarray:
    """The domain column's values, int64 or object (strings) ``[B]``; nulls raise ``ItemError``."""
    import pyarrow as pa

    col = table.column(column)
    if col.null_count:
        bad = _first_null(col, ids)
        raise ItemError(bad, ValueError(f"domain column {column!r} is null for example {bad}"))
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    values = col.to_numpy()
    return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(object)


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


def token_range(columns: list[Any]) -> tuple[int, int] | None:
    """Smallest and largest token id in token columns (Arrow list arrays); None if empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lo, hi = None, None
    for col in columns:
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if isinstance(col, pa.ExtensionArray):
            col = col.storage
        stats = pc.min_max(pc.list_flatten(col))
        if stats["min"].is_valid:
            lo = stats["min"].as_py() if lo is None else min(lo, stats["min"].as_py())
            hi = stats["max"].as_py() if hi is None else max(hi, stats["max"].as_py())
    return None if lo is None else (int(lo), int(hi))


# Domains are stored as float32 scores: integers up to 2**24 are exact.
_MAX_DOMAIN = 1 << 24


def domain_names(columns: list[Any], name: str, where: str) -> tuple[str, ...] | None:
    """Check a domain column (Arrow arrays of its rows); the sorted distinct strings that the
    codes 0, 1, ... stand for, or None for integer domains (stored as they are).

    Raises ``ValueError`` for nulls, or integers outside ``[0, 2**24)``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    arrays = [a.dictionary_decode() if pa.types.is_dictionary(a.type) else a for a in arrays]
    nulls = sum(a.null_count for a in arrays)
    if nulls:
        raise ValueError(f"domain column {name!r} in {where} has {nulls} null value(s)")
    if all(pa.types.is_integer(a.type) for a in arrays):
        for a in arrays:
            stats = pc.min_max(a)
            lo, hi = stats["min"].as_py(), stats["max"].as_py()
            if lo is not None and (lo < 0 or hi >= _MAX_DOMAIN):
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"domain column {name!r} in {where} holds {bad}; integer domains must be in "
                    f"[0, {_MAX_DOMAIN}) (or give names as strings)"
                )
        return None
    if not all(_is_string(a.type) for a in arrays):
        raise TypeError(f"domain column {name!r} in {where} mixes types {[a.type for a in arrays]}")
    distinct = pc.unique(pa.chunked_array([a.cast(pa.large_string()) for a in arrays]))
    return tuple(sorted(distinct.to_pylist()))
