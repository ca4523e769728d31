"""Uniform random permutations and exact-size subsets at 10^8 scale, cache-friendly.

A plain Fisher-Yates shuffle of 10^8 ids is bound by cache misses (~30 ns per id here). These
functions use the Rao-Sandelius method instead, which is *exactly* uniform: every id gets an
independent uniform bucket out of 256 (a stable counting sort moves them, streaming through
memory), then each bucket, small enough for the cache, is shuffled in place with numpy's exact
Fisher-Yates (serial on purpose: torch.randperm is multi-threaded and ~10x slower when the cores
are busy, as they are in training). All randomness comes from the caller's ``np.random.Generator``,
so a plan is a pure function of the generator's seed. Memory: the result plus one scratch array
of the same size (4 bytes per id each with int32 ids).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["index_dtype", "permutation", "permuted", "permuted_nonzero", "choose_in_mask"]

_CHUNK = 1 << 22
_BUCKETS = 256
_SMALL = 1 << 20


def index_dtype(num_examples: int) -> np.dtype:
    """int32 when every id fits (halves plan memory), else int64."""
    return np.dtype(np.int32) if num_examples <= np.iinfo(np.int32).max else np.dtype(np.int64)


def _shuffle_small(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = values.copy()
    rng.shuffle(out)
    return out


def _rao_sandelius(
    chunks: Iterator[np.ndarray], total: int, dtype: np.dtype, rng: np.random.Generator
) -> np.ndarray:
    """Uniform random order of the concatenation of ``chunks`` (``total`` values in all)."""
    scattered = np.empty(total, dtype=dtype)
    counts: list[np.ndarray] = []
    pos = 0
    for chunk in chunks:
        keys = rng.integers(0, _BUCKETS, size=len(chunk), dtype=np.uint8)
        order = np.argsort(keys, kind="stable")
        np.take(chunk, order, out=scattered[pos : pos + len(chunk)])
        counts.append(np.bincount(keys, minlength=_BUCKETS))
        pos += len(chunk)
    if pos != total:
        raise RuntimeError(f"internal: expected {total} values, got {pos}")
    per_chunk = np.stack(counts)  # [chunks, buckets]
    chunk_start = np.concatenate([[0], np.cumsum(per_chunk.sum(axis=1))[:-1]])
    bucket_start = np.cumsum(per_chunk, axis=1) - per_chunk  # offset of bucket b in chunk j
    out = np.empty(total, dtype=dtype)
    o = 0
    for b in range(_BUCKETS):
        n = int(per_chunk[:, b].sum())
        if n == 0:
            continue
        pieces = [
            scattered[s + off : s + off + c]
            for s, off, c in zip(chunk_start, bucket_start[:, b], per_chunk[:, b], strict=True)
        ]
        seg = out[o : o + n]
        np.concatenate(pieces, out=seg)
        rng.shuffle(seg)
        o += n
    return out


def permuted(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random reordering of 1-D ``values`` (new array, same dtype)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if len(values) <= _SMALL:
        return _shuffle_small(values, rng)
    chunks = (values[s : s + _CHUNK] for s in range(0, len(values), _CHUNK))
    return _rao_sandelius(chunks, len(values), values.dtype, rng)


def permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``0..n-1`` as :func:`index_dtype` ids."""
    dtype = index_dtype(n)
    if n <= _SMALL:
        return _shuffle_small(np.arange(n, dtype=dtype), rng)
    chunks = (np.arange(s, min(n, s + _CHUNK), dtype=dtype) for s in range(0, n, _CHUNK))
    return _rao_sandelius(chunks, n, dtype, rng)


def permuted_nonzero(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The positions where the 1-D bool ``mask`` is True, in uniformly random order."""
    dtype = index_dtype(len(mask))
    total = int(np.count_nonzero(mask))
    if total <= _SMALL:
        return _shuffle_small(np.flatnonzero(mask).astype(dtype, copy=False), rng)
    chunks = (
        (np.flatnonzero(mask[s : s + _CHUNK]) + s).astype(dtype, copy=False)
        for s in range(0, len(mask), _CHUNK)
    )
    return _rao_sandelius(chunks, total, dtype, rng)


def choose_in_mask(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random subset of exactly ``k`` of the True positions of ``mask``, as a mask.

    Independent Bernoulli(k / |mask|) draws give a uniform subset given its size; the few
    surplus (or missing) members are then removed (added) uniformly, which keeps it uniform at
    exactly ``k``. O(N) streaming work and one bool array; no index array of size N.
    """
    total = int(np.count_nonzero(mask))
    if not 0 <= k <= total:
        raise ValueError(f"k must be in [0, {total}], got {k}")
    if k == total:
        return mask.copy()
    chosen = np.zeros(len(mask), dtype=bool)
    if k == 0:
        return chosen
    # 16-bit draws are enough: the fix-up below makes the count exact whatever p's rounding.
    threshold = np.uint16(min(2**16 - 1, math.floor(k / total * 2**16)))
    for s in range(0, len(mask), _CHUNK):
        u = rng.integers(0, 2**16, size=min(_CHUNK, len(mask) - s), dtype=np.uint16)
        np.logical_and(u < threshold, mask[s : s + _CHUNK], out=chosen[s : s + _CHUNK])
    surplus = int(np.count_nonzero(chosen)) - k
    if surplus != 0:
        pool = chosen if surplus > 0 else mask & ~chosen
        _flip_random(chosen, pool, abs(surplus), rng)
    return chosen


def _flip_random(target: np.ndarray, pool: np.ndarray, m: int, rng: np.random.Generator) -> None:
    """Flip ``target`` at ``m`` uniformly chosen True positions of ``pool`` (no N-sized index)."""
    block = 1 << 14
    padded = -(-len(pool) // block) * block
    counts = np.zeros(padded // block, dtype=np.int64)
    full = len(pool) // block * block
    counts[: full // block] = pool[:full].reshape(-1, block).sum(axis=1)
    if full < len(pool):
        counts[-1] = np.count_nonzero(pool[full:])
    ends = np.cumsum(counts)
    ranks = np.sort(rng.choice(int(ends[-1]), size=m, replace=False))
    blocks = np.searchsorted(ends, ranks, side="right")
    local = ranks - (ends[blocks] - counts[blocks])
    uniq, first = np.unique(blocks, return_index=True)
    for b, lo, hi in zip(uniq, first, [*first[1:], m], strict=True):
        start = int(b) * block
        where = np.flatnonzero(pool[start : start + block])[local[lo:hi]] + start
        target[where] = ~target[where]
