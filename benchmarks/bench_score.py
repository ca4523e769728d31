"""Scoring-job speed: the Ray executor against the inline one, same model, data and machine.

    python -m benchmarks.bench_score                 # 200k rows, 2 interleaved repeats
    python -m benchmarks.bench_score --rows 50000 --repeats 1 --no-cluster

Model: the 40-256-256-10 MLP (``pipelines.toydata.MLP(hidden=256)``, a saved checkpoint);
data: random float32 features in Parquet (one fixed-size-list column, 4 files). For each metric
set (``loss``, ``loss,grad_norm``, ``embedding``) the two executors run interleaved, each as
``pipelines.score(...)`` from a process with no Ray running, i.e. as ``winnow score`` runs:

- ``inline``: the scorer in this process, torch with its default thread count;
- ``ray``: the job starts a local Ray (all CPUs), scores on the default actor pool (on 2 CPUs:
  2 actors x 0.5 CPU, one torch thread each) and shuts Ray down.

Reported per executor: rows/s while scoring (``scoring_s``: from the first built scorer to the
last committed shard; the Ray job's start-up is reported apart: ``ray.init`` and the actors'
start-up, a process importing torch and building the model, and ``ray.shutdown``), end-to-end
seconds (the whole ``pipelines.score`` call, embedding clustering included), what Ray adds end
to end (``ray_overhead_s`` = Ray's end to end - inline's, best of each) and CPU microseconds per
row while scoring (the inline process; the Ray actors' shard calls). ``ratio`` = Ray rows/s /
inline rows/s. Best of ``--repeats`` by rows/s; all runs are in the JSON.

Scaling on a real multi-node Ray (unless ``--no-cluster``): a local cluster of a head without
CPUs and one worker node of one CPU per core of this machine, at most 4 (``--nodes``;
``ray.cluster_utils.Cluster``: separate raylets, object stores and workers, as ``ray start
--head`` plus ``ray start --address`` would start them). The job joins it with ``address`` and
scores ``loss,grad_norm`` with 1, 2, ... actors of one CPU each, so each actor has a node of its
own; rows/s per actor count, the speed-up over one actor, and the speed-up the cost model below
predicts.

Cost model for more actors (this box has too few cores to measure it): each actor scores
``rows_per_actor_s`` rows per second of its own shard calls, and the driver spends
``driver_cpu_ms_per_shard`` handing out one shard and reading its report, so N actors (each
with its own CPUs) score ``N * rows_per_actor_s`` rows/s until the driver is busy all the time,
at ``shard_size / driver_cpu_per_shard`` rows/s. On a machine with few cores the driver and
Ray's processes share the actors' cores, so the measured scaling falls short of the model's.
Results: ``benchmarks/results/bench_score.json`` (``--out`` for another file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "bench_score.json"
MODEL = "winnow.pipelines.toydata:MLP"
HIDDEN = 256
METRIC_SETS = ("loss", "loss,grad_norm", "embedding")
EXECUTORS = ("inline", "ray")
CLUSTER_METRICS = "loss,grad_norm"


def _write_data(directory: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    chunk = -(-n // 4)
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
    data: Path, ckpt: Path, store: Path, run: str, metrics: str, executor: str, **options: Any
) -> dict:
    from winnow import pipelines

    model = pipelines.ModelSpec(MODEL, checkpoint=str(ckpt), kwargs={"hidden": HIDDEN})
    started = time.perf_counter()
    manifest = pipelines.score(
        str(data), model, feature_columns="x", metrics=metrics, store=store, run=run,
        executor=executor, progress=False, **options,
    )  # fmt: skip
    end_to_end = time.perf_counter() - started
    extra = manifest["extra"]
    rows = extra["rows_scored"]
    job = {
        "rows": rows,
        "shards": extra["shards"],
        "rows_per_s": round(rows / extra["scoring_s"], 1),
        "end_to_end_s": round(end_to_end, 2),
        "cpu_us_per_row": round(1e6 * extra["scoring_cpu_s"] / rows, 2),
        "scoring_s": extra["scoring_s"],
    }
    for key in (
        "ray_start_s", "startup_s", "actors_ready_s", "ray_shutdown_s", "actors", "ray_nodes",
        "embedding_metrics_s",
    ):  # fmt: skip
        if key in extra:
            job[key] = extra[key]
    if executor == "ray" and extra.get("scoring_busy_s"):
        job["rows_per_actor_s"] = round(rows / extra["scoring_busy_s"], 1)
        job["driver_cpu_ms_per_shard"] = round(1e3 * extra["driver_cpu_s"] / extra["shards"], 3)
        # The pre-change executor counted the actors' start-up as scoring; this is comparable.
        job["rows_per_s_with_actor_startup"] = round(
            rows / (extra["scoring_s"] + extra["startup_s"]), 1
        )
    return job


def _cost_model(ray_job: dict, actors: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> dict:
    per_actor = ray_job["rows_per_actor_s"]
    shard_rows = ray_job["rows"] / ray_job["shards"]
    driver_bound = shard_rows / max(ray_job["driver_cpu_ms_per_shard"] / 1e3, 1e-9)
    return {
        "rows_per_actor_s": per_actor,
        "driver_bound_rows_per_s": round(driver_bound, 0),
        "predicted_rows_per_s": {n: round(min(n * per_actor, driver_bound), 0) for n in actors},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of data (200000)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per job")
    parser.add_argument("--metrics", default=",".join(m.replace(",", "+") for m in METRIC_SETS),
                        help="metric sets, comma-separated, '+' within a set")  # fmt: skip
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip the scaling run on a local multi-node Ray")  # fmt: skip
    parser.add_argument("--nodes", type=int, default=min(os.cpu_count() or 1, 4),
                        help="worker nodes of the local cluster (this machine's cores, at most 4)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    args = parser.parse_args(argv)
    metric_sets = [m.replace("+", ",") for m in args.metrics.split(",")]

    import torch

    from winnow.pipelines.toydata import MLP

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    results: dict = {
        "benchmark": "bench_score",
        "rows": args.rows,
        "model": f"MLP 40-{HIDDEN}-{HIDDEN}-10",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch_threads_inline": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "jobs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        tmp_path = Path(tmp)
        data = _write_data(tmp_path / "data", args.rows)
        torch.manual_seed(0)
        ckpt = tmp_path / "model.pt"
        torch.save(MLP(hidden=HIDDEN).state_dict(), ckpt)
        for metrics in metric_sets:
            runs: dict[str, list[dict]] = {name: [] for name in EXECUTORS}
            for rep in range(args.repeats):
                # Alternate the order, so a load drift does not always hit the same executor.
                for name in EXECUTORS if rep % 2 == 0 else EXECUTORS[::-1]:
                    run = f"{name}-{metrics.replace(',', '-')}-{rep}"
                    job = _job(data, ckpt, tmp_path / "store", run, metrics, name)
                    runs[name].append(job)
                    print(f"  {metrics:<15} {name:<7} {json.dumps(job)}", flush=True)
            best = {e: max(r, key=lambda j: j["rows_per_s"]) for e, r in runs.items()}
            inline, ray_job = best["inline"], best["ray"]
            inline_e2e = min(j["end_to_end_s"] for j in runs["inline"])
            ray_e2e = min(j["end_to_end_s"] for j in runs["ray"])
            results["jobs"].append(
                {
                    "metrics": metrics,
                    "inline_rows_per_s": inline["rows_per_s"],
                    "ray_rows_per_s": ray_job["rows_per_s"],
                    "ratio": round(ray_job["rows_per_s"] / inline["rows_per_s"], 3),
                    "inline_end_to_end_s": inline_e2e,
                    "ray_end_to_end_s": ray_e2e,
                    "ray_overhead_s": round(ray_e2e - inline_e2e, 2),
                    "ray_init_s": round(min(j["ray_start_s"] for j in runs["ray"]), 2),
                    "ray_shutdown_s": round(min(j["ray_shutdown_s"] for j in runs["ray"]), 2),
                    "ray_actor_startup_s": round(
                        min(j.get("actors_ready_s", float("nan")) for j in runs["ray"]), 2
                    ),
                    "inline_cpu_us_per_row": inline["cpu_us_per_row"],
                    "ray_cpu_us_per_row": ray_job["cpu_us_per_row"],
                    "cost_model": _cost_model(ray_job) if "rows_per_actor_s" in ray_job else None,
                    "all": runs,
                }
            )
        if not args.no_cluster:
            results["cluster"] = _cluster_scaling(
                data, ckpt, tmp_path / "store", results, args.nodes
            )
    results["load_average_at_end"] = os.getloadavg()
    _print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _cluster_scaling(data: Path, ckpt: Path, store: Path, results: dict, nodes: int) -> dict:
    """Rows/s with 1..N one-CPU actors, each on a worker node of its own, of a local cluster."""
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cluster_start_s = time.perf_counter() - started
        runs = []
        for actors in range(1, nodes + 1):
            run = f"cluster-{actors}"
            job = _job(
                data, ckpt, store, run, CLUSTER_METRICS, "ray", address=cluster.address,
                actors=actors, cpus_per_actor=1.0,
            )  # fmt: skip
            runs.append(job)
            print(f"  cluster         {actors} actor(s) {json.dumps(job)}", flush=True)
    finally:
        cluster.shutdown()
    one = runs[0]["rows_per_s"]
    same = [j["cost_model"] for j in results["jobs"] if j["metrics"] == CLUSTER_METRICS]
    model = same[0] if same else None
    predicted = {}
    if model:
        per_actor, bound = model["rows_per_actor_s"], model["driver_bound_rows_per_s"]
        predicted = {n: min(n * per_actor, bound) / per_actor for n in range(1, nodes + 1)}
    return {
        "metrics": CLUSTER_METRICS,
        "worker_nodes": nodes,
        "cluster_start_s": round(cluster_start_s, 2),
        "scaling": [
            {
                "actors": j["actors"],
                "ray_nodes": j["ray_nodes"],
                "rows_per_s": j["rows_per_s"],
                "speedup": round(j["rows_per_s"] / one, 2),
                "model_speedup": round(predicted.get(j["actors"], float("nan")), 2),
                "cpu_us_per_row": j["cpu_us_per_row"],
            }
            for j in runs
        ],
        "all": runs,
    }


def _print_table(results: dict) -> None:
    print(
        f"bench_score: {results['rows']} rows, {results['model']}, {results['machine']['cpus']} "
        f"CPUs, load {results['load_average_at_start'][0]:.1f} at start; inline: torch default "
        f"threads ({results['torch_threads_inline']}); ray: default pool of a local Ray"
    )
    cols = [
        ("metrics", "metrics", "<16", ""),
        ("inline rows/s", "inline_rows_per_s", ">14", ".0f"),
        ("ray rows/s", "ray_rows_per_s", ">11", ".0f"),
        ("ratio", "ratio", ">7", ".2f"),
        ("inline e2e s", "inline_end_to_end_s", ">13", ".1f"),
        ("ray e2e s", "ray_end_to_end_s", ">10", ".1f"),
        ("ray adds s", "ray_overhead_s", ">11", ".1f"),
        ("ray.init s", "ray_init_s", ">11", ".1f"),
        ("actors s", "ray_actor_startup_s", ">9", ".1f"),
        ("shutdown s", "ray_shutdown_s", ">11", ".1f"),
        ("inline us/row", "inline_cpu_us_per_row", ">14", ".1f"),
        ("ray us/row", "ray_cpu_us_per_row", ">11", ".1f"),
    ]
    print("".join(f"{title:{align}}" for title, _, align, _ in cols))
    for row in results["jobs"]:
        print("".join(f"{row[key]:{align}{fmt}}" for _, key, align, fmt in cols))
    print("cost model, rows/s with N actors of one CPU each (per-actor rate x N, driver-bound):")
    for row in results["jobs"]:
        model = row["cost_model"] or {"predicted_rows_per_s": {}, "driver_bound_rows_per_s": 0}
        predicted = "  ".join(f"{n}: {v:.0f}" for n, v in model["predicted_rows_per_s"].items())
        bound = model["driver_bound_rows_per_s"]
        print(f"  {row['metrics']:<16} {predicted}   (driver bound {bound:.0f})")
    cluster = results.get("cluster")
    if cluster:
        print(
            f"local multi-node Ray: head (0 CPUs) + {cluster['worker_nodes']} worker nodes of 1 "
            f"CPU, {cluster['metrics']}, one 1-CPU actor per node (started in "
            f"{cluster['cluster_start_s']:.1f} s)"
        )
        print(f"{'actors':>7}{'nodes':>7}{'rows/s':>10}{'speed-up':>10}{'model':>8}{'us/row':>8}")
        for row in cluster["scaling"]:
            print(
                f"{row['actors']:>7}{row['ray_nodes']:>7}{row['rows_per_s']:>10.0f}"
                f"{row['speedup']:>10.2f}{row['model_speedup']:>8.2f}{row['cpu_us_per_row']:>8.1f}"
            )


if __name__ == "__main__":
    main()
