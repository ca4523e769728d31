"""Per-example vectors (embeddings) as ``fixed_size_list<float16>[d]`` Parquet columns.

float16 halves the bytes of float32 (10^8 examples x 384 dims = 77 GB instead of 154 GB) and is
ample for cosine similarities and k-means assignment.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from winnow.store.files import read_checked, vectors_schema
from winnow.store.layout import StoreFS
from winnow.store.validation import check_same_length, to_numpy

__all__ = ["check_width", "read_vectors", "vectors_table"]


def vectors_table(ids: np.ndarray, vectors: object) -> pa.Table:
    """``(example_id, vector)`` table from validated int64 ids [n] and vectors [n, d].

    Raises:
        TypeError: vectors are not real numbers.
        ValueError: not 2-d, d == 0, length differs from ids, or non-finite in float16.
    """
    arr = to_numpy(vectors)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"vectors must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"vectors must have shape [n, d] with d >= 1, got {arr.shape}")
    check_same_length(ids=ids, vectors=arr)
    with np.errstate(over="ignore"):  # overflow to inf is reported below, by row
        half = np.ascontiguousarray(arr, dtype=np.float16)
    if not bool(np.isfinite(half).all()):
        bad = np.flatnonzero(~np.isfinite(half).all(axis=1))
        raise ValueError(
            f"vectors has non-finite values in float16 (NaN, or |x| > 65504) in rows "
            f"{bad[:5].tolist()}"
        )
    dim = arr.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(half.reshape(-1)), dim)
    return pa.Table.from_arrays([pa.array(ids), column], schema=vectors_schema(dim))


def check_width(sfs: StoreFS, files: dict[int, str], shard: int, dim: int, label: str) -> None:
    """Refuse writing ``shard`` with width ``dim`` when the other shards of the name have another.

    Args:
        files: the name's committed shards, ``{shard: path}``; the first readable one other than
            ``shard`` decides (each was checked the same way when it was written). Rewriting the
            only shard may change the width.
        label: names the run and vector name in the message.
    """
    for other, path in files.items():
        if other == shard:
            continue
        try:
            found = pq.read_schema(path, filesystem=sfs.fs).field("vector").type
        except (OSError, KeyError, pa.ArrowException):
            continue  # a corrupt shard says nothing about the width; reads report it
        width = found.list_size if pa.types.is_fixed_size_list(found) else None
        if width != dim:
            raise ValueError(
                f"refusing vectors of width {dim}: {label} has width {width} in {path}; every "
                "shard of one vector name must have the same width"
            )
        return


def read_vectors(sfs: StoreFS, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate shard files; return ``(ids int64 [n] ascending, vectors float16 [n, d])``."""
    ids_parts, vector_parts, dim = [], [], None
    for path in files:
        table = read_checked(sfs, path, vectors_schema(1), exact=False)
        file_dim = table.schema.field("vector").type.list_size
        if dim is not None and file_dim != dim:
            raise ValueError(f"vector dimension {file_dim} in {path} differs from {dim}")
        dim = file_dim
        for chunk in table["vector"].chunks:
            vector_parts.append(chunk.flatten().to_numpy().reshape(-1, dim))
        ids_parts.append(table["example_id"].to_numpy())
    if dim is None:
        return np.empty(0, np.int64), np.empty((0, 0), np.float16)
    ids = np.concatenate(ids_parts)
    vectors = np.concatenate(vector_parts)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        repeated = np.unique(ids[1:][ids[1:] == ids[:-1]])
        raise ValueError(f"example_id(s) {repeated[:5].tolist()} stored by more than one shard")
    return ids, vectors
