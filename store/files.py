"""Parquet files of the store: their explicit schemas, atomic writing, validated reading."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.store.errors import CorruptFileError
from winnow.store.layout import StoreFS

__all__ = [
    "MIXTURE_SCHEMA",
    "NOISE_SCALE_SCHEMA",
    "SCORES_SCHEMA",
    "STEPS_SCHEMA",
    "TRACE_SCHEMA",
    "check_schema",
    "count_rows",
    "read_checked",
    "vectors_schema",
    "write_parquet",
]

SCORES_SCHEMA = pa.schema(
    [pa.field("example_id", pa.int64(), nullable=False), pa.field("value", pa.float32())]
)
TRACE_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.int64(), nullable=False),
        pa.field("loss", pa.float32()),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)
# Per-step selection records (in-step selectors, batch samplers): ``steps/run=R/start=S/``.
STEPS_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.int32()),
        pa.field("example_id", pa.int64(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("loss", pa.float32()),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)
# A batch sampler's domain mixture, one row per (step, domain): ``mixture/run=R/start=S/``.
MIXTURE_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("domain", pa.int32(), nullable=False),
        pa.field("pi", pa.float64(), nullable=False),
        pa.field("drawn", pa.bool_(), nullable=False),
    ]
)
# The gradient noise scale measured during training: ``noise_scale/run=R/start=S/``.
NOISE_SCALE_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("b_simple", pa.float64()),
        pa.field("grad_sq", pa.float64()),
        pa.field("trace_cov", pa.float64()),
        pa.field("batch_size", pa.int64(), nullable=False),
        pa.field("estimator", pa.string(), nullable=False),
    ]
)
_COMPRESSION = "zstd"
# Ids are unique within a file and scores mostly continuous: dictionary pages would be built,
# overflow and be abandoned, costing write time and bytes for nothing (measured: -40% time).
_USE_DICTIONARY = False


def vectors_schema(dim: int) -> pa.Schema:
    """``(example_id int64, vector fixed_size_list<float16>[dim])``."""
    return pa.schema(
        [
            pa.field("example_id", pa.int64(), nullable=False),
            pa.field("vector", pa.list_(pa.float16(), dim), nullable=False),
        ]
    )


def write_parquet(sfs: StoreFS, path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` atomically (temporary name, then rename), zstd-compressed."""
    sfs.write_atomic(
        path,
        lambda tmp: pq.write_table(
            table,
            tmp,
            filesystem=sfs.fs,
            compression=_COMPRESSION,
            use_dictionary=_USE_DICTIONARY,
        ),
    )


def _types_match(found: pa.Schema, expected: pa.Schema, exact_vector: bool) -> bool:
    if found.names[: len(expected)] != expected.names:
        return False
    for name in expected.names:
        want, got = expected.field(name).type, found.field(name).type
        if not exact_vector and pa.types.is_fixed_size_list(want):
            if not (pa.types.is_fixed_size_list(got) and got.value_type == want.value_type):
                return False
        elif got != want:
            return False
    return True


def check_schema(path: str, found: pa.Schema, expected: pa.Schema, *, exact: bool = True) -> None:
    """Raise CorruptFileError naming ``path`` unless ``found`` starts with ``expected``'s columns
    and types (for a fixed-size-list column with ``exact=False`` only the value type counts)."""
    if not _types_match(found, expected, exact):
        raise CorruptFileError(
            path, f"expected columns {expected}, found {found}".replace("\n", "; ")
        )


def read_checked(sfs: StoreFS, path: str, expected: pa.Schema, *, exact: bool = True) -> pa.Table:
    """Read one store file and check it against the store's schema.

    Raises:
        CorruptFileError: the file is truncated, not Parquet, or has other columns/types, or nulls
            in a non-nullable column; the message names the file.
        PermissionError: the file may not be read (passed on as it is: it is not corruption).
    """
    try:
        with sfs.fs.open_input_file(path) as source:
            parquet = pq.ParquetFile(source)
            check_schema(path, parquet.schema_arrow, expected, exact=exact)
            table = parquet.read(columns=expected.names)
    except PermissionError:  # not corruption: the caller sees it as it is
        raise
    except (OSError, pa.ArrowException) as exc:
        raise CorruptFileError(path, f"{type(exc).__name__}: {exc}") from exc
    for name in expected.names:
        if not expected.field(name).nullable and table.column(name).null_count:
            raise CorruptFileError(path, f"column {name!r} has null values")
    return table


def count_rows(sfs: StoreFS, path: str) -> int:
    """Number of rows from the Parquet footer (no data read)."""
    try:
        return pq.read_metadata(path, filesystem=sfs.fs).num_rows
    except PermissionError:  # not corruption: the caller sees it as it is
        raise
    except (OSError, pa.ArrowException) as exc:
        raise CorruptFileError(path, f"{type(exc).__name__}: {exc}") from exc
