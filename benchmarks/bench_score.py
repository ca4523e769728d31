"""Scoring-job speed: the Ray job against an in-process loop (no Ray), same model, same data.

    python -m benchmarks.bench_score            # 1M rows (loss), 200k (loss+grad_norm)
    python -m benchmarks.bench_score --quick    # 200k / 40k

Model: ``pipelines.toydata.SmallCNN`` (MNIST-1D shaped input, 40 features, 10 classes);
data: random features in Parquet (one fixed-size-list column). For ``loss`` and
``loss,grad_norm``, interleaved:

- ``inline``: ``pipelines.score(..., executor="inline")``: the same scorer and the same store
  writes in this process, torch with its default thread count;
- ``ray``: ``pipelines.score(...)`` on a local Ray (``ray.init(num_cpus=2)``) with 2 actors of
  0.5 CPU each (one torch thread each).

The in-process loop runs twice, with torch's default thread count and with one thread (on a
busy 2-core machine two threads can be much slower); the faster is the baseline. Reported for
the Ray job: rows/s over the whole job (includes the actors' start-up: a process importing
torch and building the model), the steady rate after the first quarter of the rows, and the
fixed costs: ``ray.init`` (paid once per job by the embedded default) and the start-up overhead
implied by the steady rate. ``ratio`` = steady Ray rows/s / baseline rows/s (target >= 0.8,
start-up excluded); ``ratio_with_startup`` uses the whole-job rate. Because other processes
on a shared 2-core machine distort wall-clock rates, CPU cost is reported too: rows per CPU
second of the actors (their shard calls) against the 1-thread in-process loop
(``cpu_efficiency``; 1.0 = Ray adds no CPU per row). Best of ``--repeats`` interleaved runs.
Results: ``benchmarks/results/bench_score.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_score.json"
# name -> (executor, torch threads in this process (None: torch's default), full data or not)
_EXECUTORS = {
    "inline": ("inline", None, False),
    "inline_1thread": ("inline", 1, True),
    "ray": ("ray", None, True),
}
MODEL = "winnow.pipelines.toydata:SmallCNN"


def _write_data(directory: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    chunk = 50_000
    for part, start in enumerate(range(0, n, chunk)):
        rows = min(chunk, n - start)
        x = rng.normal(size=(rows, 40)).astype(np.float32)
        table = pa.table(
            {
                "example_id": np.arange(start, start + rows, dtype=np.int64),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 40),
                "label": rng.integers(0, 10, size=rows),
            }
        )
        pq.write_table(table, directory / f"part-{part:04d}.parquet", row_group_size=8192)
    return directory


def _job(
    data: Path, rows: int, ckpt: Path, store: Path, run: str, metrics: str, executor: str
) -> dict:
    from winnow import pipelines

    manifest = pipelines.score(
        str(data),
        MODEL,
        checkpoint=str(ckpt),
        feature_columns="x",
        metrics=metrics,
        store=store,
        run=run,
        batch_size=512,
        shard_size=max(1_000, rows // 40),  # enough shards for a steady-state rate
        actors=2,
        executor=executor,
        progress=False,
    )
    extra = manifest["extra"]
    return {
        "rows": extra["rows_scored"],
        "rows_per_s": extra["rows_per_s"],
        "steady_rows_per_s": extra.get("steady_rows_per_s"),
        "first_shard_s": extra.get("first_shard_s"),
        "startup_overhead_s": extra.get("startup_overhead_s"),
        "scoring_s": extra["scoring_s"],
        "rows_per_cpu_s": round(extra["rows_scored"] / extra["scoring_cpu_s"], 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200k rows instead of 1M")
    parser.add_argument("--rows", type=int, help="override the number of rows")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per job")
    args = parser.parse_args(argv)
    n = args.rows or (200_000 if args.quick else 1_000_000)

    import ray
    import torch

    from winnow.pipelines.toydata import SmallCNN

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    results: dict = {
        "benchmark": "bench_score",
        "rows": n,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch_threads_inline": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "jobs": [],
    }
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        tmp_path = Path(tmp)
        # loss+grad_norm is ~10x slower per row: a fifth of the rows keeps the run short. The
        # default-thread in-process loop (slow on a busy machine) gets a fixed 20k rows: an
        # in-process loop has no fixed cost in its rate (model loading is excluded).
        sizes = {"loss": n, "loss,grad_norm": max(n // 5, 20_000), "small": 20_000}
        datasets = {key: _write_data(tmp_path / f"data-{i}", rows)
                    for i, (key, rows) in enumerate(sizes.items())}  # fmt: skip
        torch.manual_seed(0)
        ckpt = tmp_path / "model.pt"
        torch.save(SmallCNN().state_dict(), ckpt)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        results["ray_start_s"] = round(time.perf_counter() - t0, 2)
        try:
            for metrics in ("loss", "loss,grad_norm"):
                runs: dict[str, list[dict]] = {name: [] for name in _EXECUTORS}
                for rep in range(args.repeats):
                    for name, (executor, threads, full) in _EXECUTORS.items():
                        run = f"{name}-{metrics.replace(',', '-')}-{rep}"
                        key = metrics if full else "small"
                        torch.set_num_threads(threads or default_threads)
                        try:
                            job = _job(
                                datasets[key], sizes[key], ckpt, tmp_path / "store", run,
                                metrics, executor,
                            )  # fmt: skip
                        finally:
                            torch.set_num_threads(default_threads)
                        runs[name].append(job)
                best = {e: max(r, key=lambda j: j["rows_per_s"]) for e, r in runs.items()}
                baseline = max(best["inline"]["rows_per_s"], best["inline_1thread"]["rows_per_s"])
                ray_job = best["ray"]
                steady = ray_job["steady_rows_per_s"] or 0.0
                results["jobs"].append(
                    {
                        "metrics": metrics,
                        "rows": sizes[metrics],
                        "inline_rows_per_s": best["inline"]["rows_per_s"],
                        "inline_1thread_rows_per_s": best["inline_1thread"]["rows_per_s"],
                        "ray_rows_per_s": ray_job["rows_per_s"],
                        "ray_steady_rows_per_s": round(steady, 1),
                        "ray_first_shard_s": round(ray_job["first_shard_s"], 2),
                        "ray_startup_overhead_s": round(ray_job["startup_overhead_s"] or 0, 2),
                        "ratio_with_startup": round(ray_job["rows_per_s"] / baseline, 3),
                        "ratio": round(steady / baseline, 3),
                        "inline_1thread_rows_per_cpu_s": best["inline_1thread"]["rows_per_cpu_s"],
                        "ray_actor_rows_per_cpu_s": ray_job["rows_per_cpu_s"],
                        "cpu_efficiency": round(
                            ray_job["rows_per_cpu_s"] / best["inline_1thread"]["rows_per_cpu_s"], 3
                        ),
                        "all": runs,
                    }
                )
        finally:
            ray.shutdown()

    print(
        f"bench_score: {n} rows, SmallCNN, Ray: 2 actors x 0.5 CPU; "
        f"ray.init {results['ray_start_s']} s (fixed, per job with the embedded Ray)"
    )
    cols = [
        ("metrics", "metrics", "<16", ""),
        ("rows", "rows", ">9", "d"),
        ("inline", "inline_rows_per_s", ">9", ".0f"),
        ("inline 1thr", "inline_1thread_rows_per_s", ">12", ".0f"),
        ("ray", "ray_rows_per_s", ">9", ".0f"),
        ("ray steady", "ray_steady_rows_per_s", ">11", ".0f"),
        ("start-up s", "ray_startup_overhead_s", ">11", ".1f"),
        ("ratio", "ratio", ">7", ".2f"),
        ("w/ start-up", "ratio_with_startup", ">12", ".2f"),
        ("rows/cpu-s ratio", "cpu_efficiency", ">17", ".2f"),
    ]
    print("".join(f"{title:{align}}" for title, _, align, _ in cols) + "   (rows/s)")
    for row in results["jobs"]:
        print("".join(f"{row[key]:{align}{fmt}}" for _, key, align, fmt in cols))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
