"""Input checks shared by the choosers and score functions (one place, messages name the values)."""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["as_score_array", "check_count", "check_fraction", "check_rng"]


def as_score_array(scores, *, name: str = "scores", allow_empty: bool = False) -> np.ndarray:
    """Return ``scores`` as a read-only view of a 1-D real numpy array, checked for NaN.

    Accepts numpy arrays, sequences and CPU torch tensors (without copying when possible).
    Integer scores are kept as they are; complex, bool and object arrays are refused.
    """
    if hasattr(scores, "detach") and hasattr(scores, "device"):
        if scores.device.type != "cpu":
            raise TypeError(
                f"{name} is a torch tensor on {scores.device}; the numpy choosers take CPU data "
                "(use selection.choose_torch for tensors on an accelerator, or call .cpu())"
            )
        scores = scores.detach().numpy()
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; expected at least one score")
    # min() propagates NaN without allocating a mask of the whole array (10^8 scores = 100 MB).
    if arr.size and np.issubdtype(arr.dtype, np.floating) and np.isnan(arr.min()):
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        raise ValueError(f"{name} contains {n_nan} NaN value(s) out of {arr.size}")
    return arr


def check_count(k, n: int, *, name: str = "k", what: str = "scores") -> int:
    """Validate a selection size ``0 <= k <= n`` and return it as a Python int."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {k!r} ({type(k).__name__})")
    k = int(k)
    if k < 0:
        raise ValueError(f"{name} must be >= 0, got {k}")
    if k > n:
        raise ValueError(f"{name}={k} is larger than the number of {what} n={n}")
    return k


def check_fraction(value, *, name: str, low: float = 0.0, high: float = 1.0) -> float:
    """Validate ``low <= value <= high`` (a real number, not NaN) and return it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_rng(rng) -> np.random.Generator:
    """Require an explicit ``numpy.random.Generator`` (never the global RNG)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got "
            f"{type(rng).__name__}"
        )
    return rng
