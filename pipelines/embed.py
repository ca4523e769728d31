"""Embedding metrics of a scoring run: faiss clusters, prototype distance, SemDeDup flags.

The scoring actors write each example's embedding to the store as a float16 vector
(``vectors`` view, name ``embedding``). After all shards are committed, the driver reads the
vectors back and stores, per example:

- ``cluster``: id of the nearest centroid of a spherical k-means (faiss) on the L2-normalised
  vectors (an integer stored as float);
- ``proto_dist``: cosine distance ``1 - cos(x, centroid)`` to that centroid (Sorscher et al.'s
  prototype difficulty: higher = farther from the prototype = harder / more atypical);
- ``dup_eps<eps>``: 1.0 if SemDeDup removes the example at threshold ``eps`` (it has a kept
  near-duplicate with cosine similarity > 1 - eps in its cluster), else 0.0.

Non-negative embeddings (after a ReLU) all point into one orthant, so their cosine similarity is
high everywhere: with ``eps=0.05`` SemDeDup flagged 95 % of the rows of a trained SmallCNN on
MNIST-1D. The default ``eps`` is 0.001, which found every planted exact and near copy and flagged
at most 0.1 % of the other rows on the sets measured in docs/embeddings.md; a threshold that
flags most rows warns (``DuplicatesWarning``).

The math lives in ``selection.embed``; this module moves vectors and scores between it and the
store. It holds the run's vectors in memory as float16 (``n * d * 2`` bytes); ``selection.embed``
normalises them chunk by chunk and trains k-means on a sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_DEDUP_EPS",
    "DuplicatesWarning",
    "EMBEDDING_METRICS",
    "default_num_clusters",
    "write_embedding_metrics",
]

EMBEDDING_METRICS = ("cluster", "proto_dist")
DEFAULT_DEDUP_EPS = (0.001,)
_MOST = 0.5  # a share of flagged rows above which a threshold warns


class DuplicatesWarning(UserWarning):
    """A SemDeDup threshold flagged most rows as near-duplicates: probably too loose."""


def default_num_clusters(num_vectors: int) -> int:
    """About ``sqrt(n)`` clusters (so a cluster holds about ``sqrt(n)`` members), at most 4096."""
    return int(max(1, min(4096, round(math.sqrt(num_vectors)))))


def write_embedding_metrics(
    store: Any,
    run: str,
    *,
    num_clusters: int | None = None,
    dedup_eps: Sequence[float] = DEFAULT_DEDUP_EPS,
    name: str = "embedding",
    seed: int = 1234,
) -> dict[str, Any]:
    """Compute and store ``cluster``, ``proto_dist`` and ``dup_eps<eps>`` for run ``run``.

    Deterministic for a given ``seed``, so re-running (e.g. after ``--resume``) rewrites the
    same values. Returns ``{"rows": {metric: rows written}, "duplicate_share": {"dup_eps<eps>":
    share of rows flagged}}``; a threshold that flags more than half of the rows warns with a
    ``DuplicatesWarning``.
    """
    import pyarrow as pa

    from winnow.selection import embed

    ids, vectors = store.read_vectors(run, name)
    if len(ids) == 0:
        raise ValueError(f"run {run!r} has no {name!r} vectors to cluster")
    k = default_num_clusters(len(ids)) if num_clusters is None else int(num_clusters)
    if k <= 0:
        raise ValueError(f"num_clusters must be positive, got {num_clusters!r}")
    k = min(k, len(ids))
    eps_values = [float(e) for e in dedup_eps]
    for eps in eps_values:
        if not 0.0 < eps < 1.0:
            raise ValueError(f"dedup eps must be in (0, 1), got {eps}")
    kmeans = embed.spherical_kmeans(vectors, k, seed=seed)
    columns = {
        "example_id": ids,
        "cluster": kmeans.assignment.astype(np.float32),
        "proto_dist": kmeans.distance.astype(np.float32),
    }
    shares = {}
    if eps_values:
        dedup = embed.semdedup(vectors, kmeans.assignment, eps_values, distance=kmeans.distance)
        for eps in eps_values:
            flags = dedup.duplicates[eps]
            column = f"dup_eps{eps:g}"
            columns[column] = flags.astype(np.float32)
            shares[column] = float(flags.mean())
            if shares[column] > _MOST:
                warnings.warn(
                    f"{column} flags {shares[column]:.0%} of the {len(ids)} rows of run {run!r} "
                    "as near-duplicates: the threshold is too loose for these embeddings (all "
                    "alike by cosine, as after a ReLU); use a smaller --dedup-eps (default "
                    f"{DEFAULT_DEDUP_EPS[0]:g}) and check the flagged share",
                    DuplicatesWarning,
                    stacklevel=2,
                )
    rows = store.write_table(run, pa.table(columns), shard=0)
    return {"rows": rows, "duplicate_share": shares}
