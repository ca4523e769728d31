"""Choosers on 10^8 float32 scores, next to ``np.argpartition`` on the same array.

    python -m benchmarks.bench_choose            # n = 10^8 (400 MB of scores), k = n/10
    python -m benchmarks.bench_choose --quick    # n = 10^7

For each chooser: seconds (minimum of ``--repeats``; the box is shared), the ratio to
``np.argpartition(s, n - k)`` (the bare selection every top-k needs; the choosers also order the
chosen block and resolve ties by position), and the peak of extra memory it allocated
(tracemalloc, which sees numpy's buffers). The process's peak RSS goes in the JSON too.
Results: benchmarks/results/bench_choose.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from winnow.selection import choose

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_choose.json"


def _measure(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Minimum seconds over ``repeats`` (load from other processes only adds time) and the
    peak traced bytes allocated during one call."""
    times, peak = [], 0
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return min(times), peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 10^7 instead of 10^8")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--fraction", type=float, default=0.1, help="k = fraction * n")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.n or (10**7 if args.quick else 10**8)
    k = int(args.fraction * n)
    rng = np.random.default_rng(0)
    scores = rng.random(n, dtype=np.float32)
    labels = rng.integers(0, 10, size=n, dtype=np.int16)

    cases: dict[str, Callable[[], object]] = {
        "np.argpartition (baseline)": lambda: np.argpartition(scores, n - k),
        "top_k": lambda: choose.top_k(scores, k),
        "bottom_k": lambda: choose.bottom_k(scores, k),
        "threshold": lambda: choose.threshold(scores, 0.9),
        "offset_window": lambda: choose.offset_window(scores, k, offset=k // 10),
        "gumbel_top_k softmax": lambda: choose.gumbel_top_k(
            scores, k, beta=1.0, kind="softmax", rng=np.random.default_rng(1)
        ),
        "gumbel_top_k power": lambda: choose.gumbel_top_k(
            scores, k, beta=1.0, kind="power", rng=np.random.default_rng(1)
        ),
        "gumbel_top_k softrank": lambda: choose.gumbel_top_k(
            scores, k, beta=1.0, kind="softrank", rng=np.random.default_rng(1)
        ),
        "random_mix alpha=0.5": lambda: choose.random_mix(
            scores, k, alpha=0.5, rng=np.random.default_rng(1)
        ),
        "uniform": lambda: choose.uniform(scores, k, rng=np.random.default_rng(1)),
        "stratified top_k (10 classes)": lambda: choose.stratified(
            labels, k, "top_k", scores=scores
        ),
    }
    rows = []
    base = None
    for name, fn in cases.items():
        seconds, peak = _measure(fn, 1 if "softrank" in name else args.repeats)
        base = seconds if base is None else base
        rows.append(
            {
                "chooser": name,
                "seconds": round(seconds, 3),
                "ratio_to_argpartition": round(seconds / base, 2),
                "peak_extra_mib": round(peak / 2**20, 1),
            }
        )
        print(f"{name:32s} {seconds:8.3f} s  x{seconds / base:5.2f}  {peak / 2**20:8.1f} MiB")
    result = {
        "benchmark": "bench_choose",
        "n": n,
        "k": k,
        "dtype": "float32",
        "scores_mib": round(scores.nbytes / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": platform.machine(),
        "rows": rows,
    }
    print(f"peak RSS {result['peak_rss_mib']} MiB (scores {result['scores_mib']} MiB)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
