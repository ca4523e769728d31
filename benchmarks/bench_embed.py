"""SemDeDup on 10^6 x 384 synthetic embeddings with planted near-duplicates.

    python -m benchmarks.bench_embed                   # N = 10^6, D = 384, float32 storage
    python -m benchmarks.bench_embed --dtype float16   # half the storage
    python -m benchmarks.bench_embed --quick           # N = 10^5

Data: a mixture of ``N/1000`` Gaussian clusters; a fraction ``--dup`` of rows are copies of other
rows plus noise of relative size ``--noise`` (``1 - cos`` ~ noise^2 / 2). Steps, each timed:
``selection.spherical_kmeans`` (train on a sample, assign every row in chunks) and
``selection.semdedup`` for several eps in one pass. Reported: recall of planted pairs (at least
one of the pair removed), pairs where both went, false-positive rate on rows that are in no
planted pair, seconds, and peak RSS. Baseline in the same run: hand-written faiss on the same
data (normalise a full float32 copy, ``faiss.Kmeans(..., spherical=True).train``, then
``index.search`` of every row), to show what the chunked wrapper costs or saves in time and
memory. Results: benchmarks/results/bench_embed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

from winnow.selection import semdedup, spherical_kmeans

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_embed.json"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(n: int, d: int, dup: float, noise: float, dtype, seed: int = 0):
    """Clustered embeddings with planted near-duplicate pairs ``(originals[i], copies[i])``."""
    rng = np.random.default_rng(seed)
    n_centers = max(1, n // 1000)
    centers = rng.standard_normal((n_centers, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=dtype)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        labels = rng.integers(0, n_centers, stop - start)
        block = rng.standard_normal((stop - start, d), dtype=np.float32) / np.sqrt(d)
        block += centers[labels]
        x[start:stop] = block
    n_dup = int(dup * n)
    picked = rng.choice(n, size=2 * n_dup, replace=False)
    originals, copies = picked[:n_dup], picked[n_dup:]
    src = x[originals].astype(np.float32)
    scale = noise * np.linalg.norm(src, axis=1, keepdims=True) / np.sqrt(d)
    x[copies] = src + scale * rng.standard_normal(src.shape, dtype=np.float32)
    return x, originals, copies


def raw_faiss_baseline(x: np.ndarray, k: int, niter: int, max_pts: int, threads: int) -> float:
    import faiss

    start = time.perf_counter()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        xn = x.astype(np.float32)
        faiss.normalize_L2(xn)
        km = faiss.Kmeans(
            x.shape[1], k, niter=niter, spherical=True, seed=1234, max_points_per_centroid=max_pts
        )
        km.train(xn)
        km.index.search(xn, 1)
    finally:
        faiss.omp_set_num_threads(before)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10^5")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--dup", type=float, default=0.05, help="fraction of rows that are copies")
    parser.add_argument("--noise", type=float, default=0.01, help="relative noise of a copy")
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--max-points-per-centroid", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    n = args.n or (10**5 if args.quick else 10**6)
    k = max(1, n // 1000)

    t0 = time.perf_counter()
    x, originals, copies = make_data(n, args.dim, args.dup, args.noise, np.dtype(args.dtype))
    t_data = time.perf_counter() - t0
    rss_data = _rss_mib()
    print(f"data {x.shape} {x.dtype} ({x.nbytes / 2**20:.0f} MiB) in {t_data:.1f} s")

    t0 = time.perf_counter()
    km = spherical_kmeans(
        x,
        k,
        niter=args.niter,
        max_points_per_centroid=args.max_points_per_centroid,
        threads=args.threads,
    )
    t_kmeans = time.perf_counter() - t0
    rss_kmeans = _rss_mib()
    sizes = np.bincount(km.assignment, minlength=k)
    print(f"spherical_kmeans k={k}: {t_kmeans:.1f} s; cluster sizes {sizes.min()}..{sizes.max()}")

    t0 = time.perf_counter()
    res = semdedup(x, km.assignment, args.eps, distance=km.distance)
    t_dedup = time.perf_counter() - t0
    rss_dedup = _rss_mib()
    print(f"semdedup ({len(args.eps)} eps, one pass): {t_dedup:.1f} s")

    in_pair = np.zeros(n, dtype=bool)
    in_pair[originals] = True
    in_pair[copies] = True
    per_eps = []
    for eps in args.eps:
        removed = res.duplicates[eps]
        pair_hits = removed[originals].astype(int) + removed[copies].astype(int)
        row = {
            "eps": eps,
            "removed_fraction": round(float(removed.mean()), 5),
            "recall": round(float((pair_hits >= 1).mean()), 5),
            "both_of_pair_removed": int((pair_hits == 2).sum()),
            "false_positive_rate": float(removed[~in_pair].mean()),
        }
        per_eps.append(row)
        print(
            f"  eps={eps:g}: removed {row['removed_fraction']:.4f}, recall {row['recall']:.4f}, "
            f"FPR {row['false_positive_rate']:.2e}, both-of-pair {row['both_of_pair_removed']}"
        )
    ours = t_kmeans + t_dedup
    result = {
        "benchmark": "bench_embed",
        "n": n,
        "dim": args.dim,
        "dtype": args.dtype,
        "data_mib": round(x.nbytes / 2**20, 1),
        "clusters": k,
        "planted_pairs": int(len(originals)),
        "copy_noise": args.noise,
        "threads": args.threads,
        "seconds": {
            "make_data": round(t_data, 2),
            "spherical_kmeans": round(t_kmeans, 2),
            "semdedup": round(t_dedup, 2),
        },
        "peak_rss_mib": {
            "after_data": round(rss_data, 1),
            "after_kmeans": round(rss_kmeans, 1),
            "after_semdedup": round(rss_dedup, 1),
        },
        "per_eps": per_eps,
        "machine": platform.machine(),
    }
    if not args.no_baseline:
        t_raw = raw_faiss_baseline(x, k, args.niter, args.max_points_per_centroid, args.threads)
        result["seconds"]["raw_faiss_kmeans_assign_baseline"] = round(t_raw, 2)
        result["kmeans_seconds_ratio_to_raw_faiss"] = round(t_kmeans / t_raw, 2)
        result["peak_rss_mib"]["after_raw_faiss_baseline"] = round(_rss_mib(), 1)
        print(
            f"raw faiss baseline (full normalised copy, train, search): {t_raw:.1f} s; "
            f"ours/raw = {t_kmeans / t_raw:.2f}; peak RSS after it {_rss_mib():.0f} MiB"
        )
    print(f"kmeans + semdedup {ours:.1f} s; peak RSS before baseline {rss_dedup:.0f} MiB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
