"""Choosers: turn a 1-D array of scores into the positions of the examples to keep.

Every chooser takes ``scores`` (a 1-D float or int numpy array, or a CPU torch tensor, length
``n``) and returns int64 *positions* into that array (map them to ``example_id`` yourself).
Higher score means "more wanted" for ``top_k``-style choosers; pass ``largest=False`` (or use
``bottom_k``) to prefer low scores. Stochastic choosers take an explicit
``numpy.random.Generator``; nothing here touches numpy's global RNG. All work is vectorised
(``np.partition``, one packed-key sort of the chosen block, one noise draw; see
``selection._ranking``), so 10^8 scores cost seconds and a few bytes per score beyond the input:
about 8 (positions) plus 8 (keys and noise, float32) for the stochastic choosers.

Ties are broken by position (lower position first), so the result is the same on every machine
and never depends on an RNG; returned positions within a block are ordered by score.

References: docs/stochastic-selection.md (stochastic acquisition), docs/static-pruning.md
(EL2N offset windows, calibration by randomisation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from winnow.selection._checks import as_score_array, check_count, check_fraction, check_rng
from winnow.selection._ranking import EMPTY, order_by_score, rank_window

__all__ = [
    "CHOOSERS",
    "bottom_k",
    "class_budgets",
    "gumbel_top_k",
    "offset_window",
    "random_mix",
    "stratified",
    "subsample_top_k",
    "threshold",
    "top_k",
    "uniform",
]

_KINDS = ("softmax", "power", "softrank")


def _work_dtype(arr: np.ndarray) -> type:
    """float32 keys for float16/float32 scores (halves memory at 10^8), float64 otherwise."""
    return np.float32 if arr.dtype in (np.float16, np.float32) else np.float64


def top_k(scores, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, in descending order of score. int64 ``[k]``."""
    s = as_score_array(scores)
    k = check_count(k, s.shape[0])
    return rank_window(s, 0, k, largest=True)


def bottom_k(scores, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest scores, in ascending order of score. int64 ``[k]``."""
    s = as_score_array(scores)
    k = check_count(k, s.shape[0])
    return rank_window(s, 0, k, largest=False)


def threshold(scores, value: float, *, above: bool = True, inclusive: bool = False) -> np.ndarray:
    """Positions (ascending) whose score is ``> value`` (``above``) or ``< value`` (not ``above``).

    ``inclusive=True`` uses ``>=`` / ``<=``. ``value`` must be a real number, not NaN.
    """
    s = as_score_array(scores)
    if isinstance(value, bool) or not np.isscalar(value) or np.isnan(value):
        raise ValueError(f"threshold value must be a real number (not NaN), got {value!r}")
    if above:
        mask = s >= value if inclusive else s > value
    else:
        mask = s <= value if inclusive else s < value
    return np.flatnonzero(mask).astype(np.int64, copy=False)


def offset_window(scores, k: int, *, offset: int, largest: bool = True) -> np.ndarray:
    """Skip the ``offset`` most extreme scores, then take the next ``k`` (in rank order).

    Data Diet's "offset" mode (docs/static-pruning.md): with ``largest=True`` it drops the very
    hardest examples (often mislabelled) and keeps the next ``k`` hardest. ``offset + k <= n``.
    """
    s = as_score_array(scores)
    n = s.shape[0]
    offset = check_count(offset, n, name="offset")
    k = check_count(k, n - offset, name="k", what=f"scores left after offset={offset}")
    return rank_window(s, offset, offset + k, largest=largest)


def uniform(scores, k: int, *, rng: np.random.Generator) -> np.ndarray:
    """``k`` positions drawn uniformly without replacement (scores set only ``n``); draw order."""
    s = as_score_array(scores)
    k = check_count(k, s.shape[0])
    return check_rng(rng).choice(s.shape[0], size=k, replace=False).astype(np.int64, copy=False)


def _add_gumbel(u: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Keys ordered like ``beta*u + G`` with ``G ~ Gumbel(0, 1)`` i.i.d.; ``u`` is overwritten.

    ``G = -log(E)`` with ``E ~ Exp(1)``, drawn in ``u.dtype``. To avoid overflow the small
    factor is applied: ``beta*u + G`` for ``beta <= 1``, ``u + G/beta`` (same order) otherwise.
    """
    noise = rng.standard_exponential(u.shape[0], dtype=u.dtype)
    # A float32 draw can be exactly 0 (~1 in 10^7); -log(0) = inf would pick it regardless of
    # its score, so clip at the smallest normal number (Gumbel <= 87.3 in float32).
    np.maximum(noise, np.finfo(u.dtype).tiny, out=noise)
    np.log(noise, out=noise)
    if beta <= 1.0:
        u *= beta
        u -= noise
    else:
        noise *= 1.0 / beta
        u -= noise
    return u


def gumbel_top_k(
    scores,
    k: int,
    *,
    beta: float = 1.0,
    kind: str = "softmax",
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``k`` positions without replacement, with probabilities set by ``kind`` and ``beta``.

    Stochastic acquisition (Kirsch et al. 2023; docs/stochastic-selection.md), sampled with the
    Gumbel-top-k trick: the top ``k`` of ``u_i + G_i/beta`` with ``G_i ~ Gumbel(0, 1)`` is a
    sequential draw without replacement with ``p_i ∝ exp(beta * u_i)``, where

    - ``kind="softmax"``: ``u_i = s_i``, so ``p_i ∝ exp(beta * s_i)``;
    - ``kind="power"``: ``u_i = log s_i`` (needs ``s_i >= 0``), so ``p_i ∝ s_i**beta``; zero
      scores have no mass and are picked only when fewer than ``k`` scores are positive, in which
      case the rest is filled uniformly from the zero scores (as baal falls back to uniform);
    - ``kind="softrank"``: ``u_i = -log r_i`` with ``r_i`` the descending rank (1 = highest; ties
      ranked by position), so ``p_i ∝ r_i**-beta``; scale-free.

    ``beta`` (coldness, ``>= 0``): ``0`` is uniform, ``np.inf`` is exactly ``top_k``. Returns int64
    ``[k]`` in draw order (first drawn first). Memory: two work arrays of ``n`` float32 (float64 for
    float64/int scores) plus the ``argpartition`` positions.
    """
    s = as_score_array(scores)
    n = s.shape[0]
    k = check_count(k, n)
    check_rng(rng)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if isinstance(beta, bool) or not np.isscalar(beta) or np.isnan(beta) or beta < 0:
        raise ValueError(f"beta (coldness) must be a number >= 0 or np.inf, got {beta!r}")
    if kind == "power" and s.min() < 0:
        n_neg = int(np.count_nonzero(s < 0))
        raise ValueError(f"kind='power' needs scores >= 0; got {n_neg} negative score(s)")
    if k == 0:
        return EMPTY.copy()
    dtype = _work_dtype(s)
    if beta == 0 or (dtype(beta) == 0 and kind != "power"):
        # A beta that underflows in the work dtype is uniform too; for power, s**tiny is 1 on
        # positive scores and 0 on zeros, handled below by the keys' -inf.
        return uniform(s, k, rng=rng)
    if dtype(beta) == 0:
        s, beta = (s > 0).astype(dtype), 1.0
    if np.isinf(beta):
        return rank_window(s, 0, k, largest=True)

    if kind == "softrank":
        order = order_by_score(s, descending=True)
        # Ranks are a permutation of 1..n and the noise is i.i.d., so the keys can be built
        # directly in rank order; no inverse permutation is needed.
        keys = np.arange(1, n + 1, dtype=dtype)
        np.log(keys, out=keys)
        keys *= -1
        keys = _add_gumbel(keys, beta, rng)
        return order[rank_window(keys, 0, k, largest=True)].astype(np.int64, copy=False)

    if kind == "softmax":
        keys = s.astype(dtype, copy=True)
    else:
        with np.errstate(divide="ignore"):
            keys = np.log(s.astype(dtype, copy=False))
    keys = _add_gumbel(keys, beta, rng)
    if kind == "power":
        n_pos = int(np.count_nonzero(s > 0))
        if n_pos < k:
            chosen = rank_window(keys, 0, n_pos, largest=True)
            zeros = np.flatnonzero(s == 0)
            fill = rng.choice(zeros, size=k - n_pos, replace=False)
            return np.concatenate([chosen, fill.astype(np.int64, copy=False)])
    return rank_window(keys, 0, k, largest=True)


def _complement_draw(chosen: np.ndarray, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` positions drawn uniformly from ``range(n)`` minus ``chosen``, without building it.

    A draw ``c`` indexes the complement; its position is ``c`` plus the number of chosen positions
    at or before it, found by ``searchsorted`` on ``sorted(chosen) - arange``.
    """
    taken = np.sort(chosen)
    shifted = taken - np.arange(taken.shape[0], dtype=np.int64)
    draws = np.sort(rng.choice(n - taken.shape[0], size=m, replace=False)).astype(np.int64)
    # Sorted queries make searchsorted a merge (about 20x faster at 10^7 than random ones).
    positions = draws + np.searchsorted(shifted, draws, side="right")
    rng.shuffle(positions)
    return positions


def random_mix(
    scores, k: int, *, alpha: float, rng: np.random.Generator, largest: bool = True
) -> np.ndarray:
    """Calibration by randomisation, budget split (docs/static-pruning.md).

    Keep ``k - round(alpha*k)`` positions by score (the largest, or smallest with
    ``largest=False``) and ``round(alpha*k)`` uniformly at random from the rest. ``alpha=0`` is
    pure score-based pruning, ``alpha=1`` is uniform. Returns int64 ``[k]``: the score-chosen
    block first (rank order), then the random block (in random order).
    """
    s = as_score_array(scores)
    n = s.shape[0]
    k = check_count(k, n)
    alpha = check_fraction(alpha, name="alpha")
    check_rng(rng)
    n_random = int(round(alpha * k))
    by_score = rank_window(s, 0, k - n_random, largest=largest)
    return np.concatenate([by_score, _complement_draw(by_score, n, n_random, rng)])


def subsample_top_k(
    scores, k: int, *, subset_size: int, rng: np.random.Generator, largest: bool = True
) -> np.ndarray:
    """Calibration "random-then-score": draw ``subset_size`` uniformly, keep its best ``k``.

    ``k <= subset_size <= n``; ``subset_size = n`` is plain ``top_k``, ``subset_size = k`` is
    uniform. Returns int64 ``[k]`` in rank order.
    """
    s = as_score_array(scores)
    n = s.shape[0]
    subset_size = check_count(subset_size, n, name="subset_size")
    k = check_count(k, subset_size, what=f"subsampled scores subset_size={subset_size}")
    subset = np.sort(check_rng(rng).choice(n, size=subset_size, replace=False))
    return subset[rank_window(s[subset], 0, k, largest=largest)].astype(np.int64, copy=False)


CHOOSERS: dict[str, Callable[..., np.ndarray]] = {
    "top_k": top_k,
    "bottom_k": bottom_k,
    "gumbel_top_k": gumbel_top_k,
    "random_mix": random_mix,
    "offset_window": offset_window,
    "subsample_top_k": subsample_top_k,
    "uniform": uniform,
}


def class_budgets(counts, k: int) -> np.ndarray:
    """Split ``k`` over classes proportionally to ``counts`` by the largest-remainder method.

    ``counts``: int ``[C]`` class sizes (sum ``n``). Returns int64 ``[C]`` summing to ``k`` with
    ``budget[c] <= counts[c]``; ties in the remainder go to the lower class index.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    k = check_count(k, n, what="examples")
    if n == 0:
        return np.zeros_like(counts)
    quota, remainder = np.divmod(k * counts, n)
    short = k - int(quota.sum())
    if short:
        quota[np.argsort(-remainder, kind="stable")[:short]] += 1
    return quota


def stratified(
    labels,
    k: int,
    chooser: str | Callable[..., np.ndarray] = "top_k",
    *,
    scores=None,
    **kwargs,
) -> np.ndarray:
    """Apply ``chooser`` within each class, with per-class budgets proportional to class size.

    ``labels``: int ``[n]`` class of each example; ``scores``: ``[n]`` (required keyword);
    ``chooser``: a name from ``CHOOSERS`` or a callable ``chooser(class_scores, k_c, **kwargs)``
    returning positions into ``class_scores``. Budgets come from :func:`class_budgets`; ``kwargs``
    (``rng``, ``beta``, ``offset``, ...) are passed to every per-class call, so an ``offset`` is
    per class. Returns int64 positions into ``scores``, grouped by ascending class label.
    """
    lab = as_score_array(labels, name="labels")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    if scores is None:
        raise ValueError("stratified() needs scores=<1-D array aligned with labels>")
    s = as_score_array(scores)
    if s.shape[0] != lab.shape[0]:
        raise ValueError(f"labels has length {lab.shape[0]} but scores has length {s.shape[0]}")
    if isinstance(chooser, str):
        if chooser not in CHOOSERS:
            raise ValueError(f"unknown chooser {chooser!r}; expected one of {sorted(CHOOSERS)}")
        chooser = CHOOSERS[chooser]
    k = check_count(k, s.shape[0])
    order = np.argsort(lab, kind="stable")
    sorted_labels = lab[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    counts = np.diff(np.r_[starts, lab.shape[0]])
    del sorted_labels
    budgets = class_budgets(counts, k)
    parts = []
    for start, count, budget in zip(starts, counts, budgets, strict=True):
        if budget == 0:
            continue
        members = order[start : start + count]
        picked = np.asarray(chooser(s[members], int(budget), **kwargs), dtype=np.int64)
        parts.append(members[picked])
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else EMPTY.copy()
