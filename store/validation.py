"""Input checks for what goes into the store: ids, values, lengths.

All checks are vectorised and cost O(n) in the common cases (sorted ids, or ids that are dense in
``[0, max]``), so validating 10^7 rows takes tens of milliseconds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_numpy", "check_ids", "check_same_length", "check_values", "to_numpy"]

# Duplicate detection uses a bitmap when ids are at most this many times sparser than dense.
_BITMAP_SPARSITY = 16


def to_numpy(x: object) -> np.ndarray:
    """Any array-like (numpy, list, Arrow, torch tensor on any device) as a numpy array.

    Floating tensors of a dtype numpy lacks (bfloat16, float8) become float32, which holds each
    of their values exactly.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # "Got unsupported ScalarType BFloat16"
            if not x.is_floating_point():
                raise
            return x.float().numpy()
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):  # pyarrow Array/ChunkedArray
        x = x.to_numpy(zero_copy_only=False)
    return np.asarray(x)


def as_numpy(x: object, what: str) -> np.ndarray:
    """``to_numpy`` for a 1-d input; a ValueError naming the shape otherwise."""
    arr = to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-dimensional, got shape {arr.shape}")
    return arr


def _is_integer_type(kind: type) -> bool:
    return issubclass(kind, int | np.integer) and not issubclass(kind, bool | np.bool_)


def _ids_from_objects(values: list, what: str) -> np.ndarray:
    """Python objects as int64, refusing anything but integers: casting Decimal('1.5'), 1.5 or
    '1' to int64 would silently store another id."""
    if not all(map(_is_integer_type, set(map(type, values)))):
        bad = next(v for v in values if not _is_integer_type(type(v)))
        raise TypeError(
            f"{what} must be integers convertible to int64, got {bad!r} ({type(bad).__name__})"
        )
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        big = next(v for v in values if not -(2**63) <= int(v) < 2**63)
        raise ValueError(f"{what} {int(big)} does not fit in int64") from None


def check_ids(ids: object, what: str = "example_id", *, unique: bool = True) -> np.ndarray:
    """Validate example ids; return them as a 1-d int64 array (no copy when already int64).

    ``unique=False`` allows repeats (a trace of many steps holds an id once per step).

    Raises:
        TypeError: ids are not integers (floats, Decimals, strings, bools, other objects).
        ValueError: ids are null, negative, out of int64 range, or repeated (the first few are
            named).
    """
    nulls = getattr(ids, "null_count", 0)  # pyarrow: a null would become NaN, then a float
    if nulls:
        raise ValueError(f"{what} has {nulls} null value(s); every row needs an id")
    arr = as_numpy(ids, what)
    if isinstance(ids, list | tuple) and arr.dtype.kind == "f" and arr.size:
        # numpy turns [2**63, 1] into float64: look at the Python objects when all are ints.
        objects = np.array(ids, dtype=object)
        if all(map(_is_integer_type, set(map(type, objects.tolist())))):
            arr = objects
    if arr.dtype == object and arr.size:
        arr = _ids_from_objects(arr.tolist(), what)
    if arr.dtype.kind == "u":
        if arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{what} {int(arr.max())} does not fit in int64")
    elif arr.dtype.kind != "i" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise TypeError(f"{what} must be integers convertible to int64, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size == 0:
        return arr
    low = int(arr.min())
    if low < 0:
        bad = arr[arr < 0][:5].tolist()
        raise ValueError(f"{what} must be non-negative, got {bad}")
    if unique:
        _check_unique(arr, what)
    return arr


def _check_unique(ids: np.ndarray, what: str) -> None:
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return
    high = int(ids.max())
    if high < _BITMAP_SPARSITY * ids.size + 1024:
        seen = np.zeros(high + 1, dtype=np.bool_)
        seen[ids] = True
        if int(np.count_nonzero(seen)) == ids.size:
            return
    unique, counts = np.unique(ids, return_counts=True)
    repeated = unique[counts > 1]
    if repeated.size:
        raise ValueError(
            f"{what} contains {repeated.size} duplicated id(s) within one write, "
            f"e.g. {repeated[:5].tolist()}; each id may appear once per write"
        )


def check_values(values: object, what: str, *, allow_nan: bool) -> np.ndarray:
    """Validate scores; return them as a 1-d float32 array.

    Raises:
        TypeError: values are not real numbers.
        ValueError: NaN or +-inf values (unless ``allow_nan``).
    """
    arr = as_numpy(values, what)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # overflow to inf is reported below, by position
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not allow_nan:
        finite = np.isfinite(arr)
        if not bool(finite.all()):
            where = np.flatnonzero(~finite)
            raise ValueError(
                f"{what} has {where.size} non-finite value(s) (NaN or inf), first at positions "
                f"{where[:5].tolist()} = {arr[where[:5]].tolist()}; "
                "pass allow_nan=True to store them"
            )
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """Common length of named 1-d arrays, or a ValueError naming every length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"mismatched lengths: {listed}")
    return next(iter(lengths.values()), 0)
