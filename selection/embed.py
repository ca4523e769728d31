"""Embedding metrics with faiss: spherical k-means, prototypicality, SemDeDup.

Embeddings are ``[N, D]`` float32 or float16 numpy arrays (float16 halves storage at 10^6 x 384:
0.77 GB instead of 1.5 GB); they are L2-normalised here chunk by chunk, never copied whole.
Peak extra memory is one chunk plus the k-means training sample plus O(N) result arrays.

- ``spherical_kmeans``: faiss k-means with unit-norm centroids, trained on a random sample of
  at most ``k * max_points_per_centroid`` rows, then every row assigned in chunks.
- Prototypicality (Sorscher et al. 2022; docs/embeddings.md): cosine distance to the
  assigned centroid, ``1 - cos``; **higher = less prototypical (harder)**.
- ``semdedup`` (Abbas et al. 2023; docs/embeddings.md): within each cluster, members are
  ordered by distance to the centroid (farthest first by default, "keep hard"); member ``j`` is
  a duplicate iff its largest cosine similarity to an *earlier* member exceeds ``1 - eps``. Not
  transitivity-aware, as upstream: ``j`` goes even if that earlier member also went. Several
  ``eps`` come from one pass because the max similarity per member is computed once.

faiss OpenMP threads are set explicitly for each call (``threads``) and restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from winnow.selection._checks import check_rng

__all__ = [
    "KMeansResult",
    "SemDeDupResult",
    "assign_to_centroids",
    "class_prototype_distance",
    "l2_normalize",
    "semdedup",
    "spherical_kmeans",
]

_KEEP = ("hard", "easy", "random")


def _check_embeddings(x, name: str = "embeddings") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float16, np.float64):
        raise TypeError(f"{name} must be float16/float32/float64, got dtype {x.dtype}")
    return x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a new float32 array (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


@contextlib.contextmanager
def _faiss_threads(threads: int | None) -> Iterator[object]:
    import faiss

    before = faiss.omp_get_max_threads()
    n = threads if threads is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    faiss.omp_set_num_threads(int(n))
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(before)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass(frozen=True)
class KMeansResult:
    """``centroids`` float32 ``[k, D]`` (unit norm), ``assignment`` int64 ``[N]``,
    ``distance`` float32 ``[N]`` = ``1 - cos(x_i, centroid)`` (prototypicality; higher = harder).

    Unpacks as ``assignment, distance = spherical_kmeans(...)``.
    """

    centroids: np.ndarray
    assignment: np.ndarray
    distance: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.assignment, self.distance))


def assign_to_centroids(
    embeddings, centroids, *, chunk_size: int = 65536, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine for every row: ``(assignment int64 [N], 1 - cos float32 [N])``."""
    x = _check_embeddings(embeddings)
    c = l2_normalize(_check_embeddings(centroids, "centroids"))
    if c.shape[1] != x.shape[1]:
        raise ValueError(f"centroids have D={c.shape[1]}, embeddings have D={x.shape[1]}")
    assignment = np.empty(x.shape[0], dtype=np.int64)
    distance = np.empty(x.shape[0], dtype=np.float32)
    with _faiss_threads(threads) as faiss:
        index = faiss.IndexFlatIP(c.shape[1])
        index.add(c)
        for sl in _chunks(x.shape[0], chunk_size):
            sim, idx = index.search(l2_normalize(x[sl]), 1)
            assignment[sl] = idx[:, 0]
            distance[sl] = 1.0 - sim[:, 0]
    return assignment, distance


def spherical_kmeans(
    embeddings,
    k: int,
    *,
    niter: int = 20,
    nredo: int = 1,
    seed: int = 1234,
    max_points_per_centroid: int = 256,
    chunk_size: int = 65536,
    threads: int | None = None,
) -> KMeansResult:
    """faiss spherical k-means on L2-normalised rows; see the module docstring for memory.

    ``nredo`` > 1 reruns k-means from other random starts and keeps the best objective.
    """
    x = _check_embeddings(embeddings)
    n, d = x.shape
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}], got {k!r}")
    if min(niter, nredo, max_points_per_centroid) < 1:
        raise ValueError(
            f"niter, nredo and max_points_per_centroid must be >= 1, got {niter}, {nredo}, "
            f"{max_points_per_centroid}"
        )
    rng = np.random.default_rng(seed)
    n_train = min(n, int(k) * max_points_per_centroid)
    sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else slice(None)
    train = l2_normalize(x[sample])
    with _faiss_threads(threads) as faiss:
        km = faiss.Kmeans(
            d,
            int(k),
            niter=niter,
            nredo=nredo,
            seed=seed,
            spherical=True,
            verbose=False,
            max_points_per_centroid=max_points_per_centroid,
        )
        km.train(train)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    del train
    assignment, distance = assign_to_centroids(x, centroids, chunk_size=chunk_size, threads=threads)
    return KMeansResult(l2_normalize(centroids), assignment, distance)


def class_prototype_distance(embeddings, labels) -> np.ndarray:
    """Supervised prototypicality ``1 - cos(x_i, mean of its class's normalised rows)``, ``[N]``."""
    x = _check_embeddings(embeddings)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int [N={x.shape[0]}], got {labels.dtype} {labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = torch.zeros(classes.shape[0], x.shape[1], dtype=torch.float64)
    for sl in _chunks(x.shape[0], 65536):
        rows = torch.from_numpy(l2_normalize(x[sl])).double()
        sums.index_add_(0, torch.from_numpy(inverse[sl]), rows)
    protos = l2_normalize(sums.numpy())
    out = np.empty(x.shape[0], dtype=np.float32)
    for sl in _chunks(x.shape[0], 65536):
        out[sl] = 1.0 - np.einsum("nd,nd->n", l2_normalize(x[sl]), protos[inverse[sl]])
    return out


@dataclass(frozen=True)
class SemDeDupResult:
    """``max_similarity`` float32 ``[N]``: largest cosine to an earlier member of the same
    (sub)cluster (``-inf`` for the first member); ``duplicates``: ``{eps: bool [N]}``, True =
    remove (also as ``result[eps]``). ``keep_fraction(eps)`` is the share kept."""

    max_similarity: np.ndarray
    duplicates: dict[float, np.ndarray]

    def __getitem__(self, eps: float) -> np.ndarray:
        return self.duplicates[eps]

    def keep_fraction(self, eps: float) -> float:
        return 1.0 - float(self.duplicates[eps].mean())


def _centroid_distance(x: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """``1 - cos`` to the normalised mean of each row's cluster (when no distance is given)."""
    _, inverse = np.unique(assignment, return_inverse=True)
    return class_prototype_distance(x, inverse)


def _max_sim_to_earlier(e: torch.Tensor, block: int) -> torch.Tensor:
    """For unit rows ``e`` ``[m, D]`` (in order), ``max_{i<j} e_i . e_j`` per ``j``, blockwise.

    Row block ``[start, stop)`` is compared with columns ``[0, stop)`` only (no work above the
    block's diagonal), and only its square diagonal part needs the ``i < j`` mask.
    """
    m = e.shape[0]
    out = torch.full((m,), float("-inf"), dtype=torch.float32)
    upper = torch.ones(block, block, dtype=torch.bool).triu_()  # i >= j within a block
    for start in range(0, m, block):
        stop = min(m, start + block)
        sim = e[start:stop] @ e[:stop].T  # [rows, stop]
        rows = stop - start
        sim[:, start:stop].masked_fill_(upper[:rows, :rows], float("-inf"))
        out[start:stop] = sim.max(dim=1).values
    return out


def semdedup(
    embeddings,
    assignment,
    eps: float | Sequence[float],
    *,
    distance=None,
    keep: str = "hard",
    max_cluster_size: int = 20000,
    block_size: int = 512,
    rng: np.random.Generator | None = None,
) -> SemDeDupResult:
    """Mark semantic near-duplicates within clusters (see the module docstring).

    Args:
        embeddings: ``[N, D]`` float array (normalised here).
        assignment: int ``[N]`` cluster of each row (e.g. ``spherical_kmeans(...).assignment``).
        eps: one or several thresholds in ``(0, 1)``; ``j`` is a duplicate iff its max cosine
            to an earlier member is ``> 1 - eps``.
        distance: ``[N]`` cosine distance to the own centroid (``spherical_kmeans(...).distance``);
            if omitted, centroids are recomputed as the normalised mean of each cluster.
        keep: ``"hard"`` (farthest from the centroid first, so it survives; upstream default),
            ``"easy"`` (closest first) or ``"random"`` (needs ``rng``).
        max_cluster_size: larger clusters are split, in the member order, into consecutive
            pieces of at most this size, bounding time at ``O(size^2 D)`` per piece. With
            ``keep`` by distance, near-duplicates have nearly equal distances
            (``|d_i - d_j| <= sqrt(2 eps)``), so few pairs straddle a cut.
        block_size: rows per similarity block (memory ``block_size x max_cluster_size`` floats).
    """
    x = _check_embeddings(embeddings)
    n = x.shape[0]
    eps_list = [float(eps)] if np.isscalar(eps) else [float(e) for e in eps]
    if not eps_list or any(not 0.0 < e < 1.0 for e in eps_list):
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    assignment = np.asarray(assignment)
    if assignment.shape != (n,) or not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(
            f"assignment must be int [N={n}], got {assignment.dtype} {assignment.shape}"
        )
    if keep not in _KEEP:
        raise ValueError(f"keep must be one of {_KEEP}, got {keep!r}")
    if max_cluster_size < 2 or block_size < 1:
        raise ValueError(
            f"max_cluster_size must be >= 2 and block_size >= 1, got "
            f"{max_cluster_size}, {block_size}"
        )
    if keep == "random":
        key = check_rng(rng).random(n)
    else:
        if distance is None:
            distance = _centroid_distance(x, assignment)
        key = np.asarray(distance, dtype=np.float64)
        if key.shape != (n,) or np.isnan(key).any():
            raise ValueError(f"distance must be [N={n}] without NaN, got shape {key.shape}")
        key = -key if keep == "hard" else key
    order = np.lexsort((key, assignment))
    sorted_clusters = assignment[order]
    bounds = np.flatnonzero(np.r_[True, sorted_clusters[1:] != sorted_clusters[:-1], True])
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        for piece in range(start, stop, max_cluster_size):
            members = order[piece : min(stop, piece + max_cluster_size)]
            if members.shape[0] < 2:
                continue
            e = torch.from_numpy(l2_normalize(x[members]))
            max_sim[members] = _max_sim_to_earlier(e, block_size).numpy()
    return SemDeDupResult(max_sim, {e: max_sim > 1.0 - e for e in eps_list})
