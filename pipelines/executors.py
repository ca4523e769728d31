"""Where a scoring job's shards run: in this process, or on a Ray Data actor pool.

Both executors score the shards ``todo`` of a ``ShardPlan`` with ``ShardScorer``, show a progress
bar (rows/s and ETA) unless the job says ``progress=False``, record timings in ``timings`` and
raise ``ShardError`` for the first shard whose user model or data fails. Ray is imported only
inside ``run_ray``.

``run_ray`` uses the Ray already initialised in this process if there is one (and leaves it
running); otherwise it starts a local Ray (``ray.init(num_cpus=...)``), or joins ``address``,
and shuts it down (disconnects) at the end. A local Ray it starts is watched by
``pipelines.ray_watchdog``, which ends its processes if this process dies without shutting it
down (SIGKILL, OOM). Actors never claim every CPU: an actor pool that does deadlocks Ray Data
on a small machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from winnow.pipelines.jobspec import ScoreJob, ShardPlan
from winnow.pipelines.ray_watchdog import Watchdog
from winnow.pipelines.ray_watchdog import supported as watchdog_supported
from winnow.pipelines.scorer import ShardError, ShardScorer

__all__ = ["local_ray_cpus", "plan_actors", "run_inline", "run_ray"]


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="rows", unit_scale=True, desc="scoring", disable=not enabled,
        dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
    )  # fmt: skip


def run_inline(plan: ShardPlan, todo: list[int], todo_rows: int, timings: dict[str, float]) -> None:
    """Score ``todo`` one shard after another in this process (no Ray); stops at a failure."""
    t0 = time.perf_counter()
    scorer = ShardScorer(plan, report_setup_errors=True)
    if scorer.setup_error:
        raise ShardError(plan.job.run, todo[0], None, scorer.setup_error)
    timings["startup_s"] = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    with _progress_bar(todo_rows, plan.job.progress) as bar:
        for shard in todo:
            bar.update(scorer.score_shard(shard))
    timings["scoring_s"] = time.perf_counter() - t0
    timings["scoring_cpu_s"] = time.process_time() - cpu0


def plan_actors(
    total_cpus: float,
    total_gpus: float | None,
    actors: int | None,
    cpus_per_actor: float | None,
    device: str,
) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) that leave at least one CPU for Ray Data.

    ``total_gpus=None``: not known yet (checked once Ray runs). Raises ``ValueError`` for a pool
    that would claim every CPU (Ray Data then deadlocks) or GPUs that are not there.
    """
    gpus_per_actor = 0.0
    if device != "cpu":
        if total_gpus is not None and total_gpus < 1:
            raise ValueError(f"device {device!r} requested but the Ray cluster has no GPU")
        gpus_per_actor = 1.0
        actors = actors or (int(total_gpus) if total_gpus is not None else None)
    if actors is None:
        actors = max(1, min(int(total_cpus), 8))
    if cpus_per_actor is None:  # (positive values are checked by ScoreJob)
        cpus_per_actor = max(0.25, min(4.0, (total_cpus - 1.0) / actors))
    if cpus_per_actor * actors >= total_cpus:
        raise ValueError(
            f"{actors} actors x {cpus_per_actor:g} CPUs claim all {total_cpus:g} CPUs of the "
            "cluster; Ray Data then deadlocks. Use fewer actors or a smaller cpus_per_actor."
        )
    return actors, cpus_per_actor, gpus_per_actor


def local_ray_cpus(job: ScoreJob) -> int | None:
    """CPUs of the local Ray the job will start itself, or None if it joins a running one."""
    ray = sys.modules.get("ray")
    if job.address is not None or (ray is not None and ray.is_initialized()):
        return None
    return job.num_cpus or os.cpu_count() or 1


# glibc malloc settings for the scorer actors. Measured on this project's 2-core box (SmallCNN,
# loss only): inside a Ray worker, glibc handed the freed activation buffers of every forward back
# to the OS, so the next forward page-faulted them in again (146k minor faults per 10 shards vs 2
# in-process) and each row cost 2x the CPU. Keeping freed memory in the heap up to these sizes
# brings the actor to the in-process cost. glibc reads them at process start; other libcs ignore
# them.
_SCORER_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(128 << 20),
}


def run_ray(plan: ShardPlan, todo: list[int], todo_rows: int, timings: dict[str, float]) -> None:
    """Score ``todo`` on an actor pool: one ``ShardScorer`` per actor, one shard per call.

    Ray is joined or started as the job's ``address`` and ``num_cpus`` say; the pool has the
    job's ``actors`` x ``cpus_per_actor``. The driver only consumes one small report row per
    committed shard (progress, timings) and raises ``ShardError`` for the first failed one;
    in-flight shards may still commit.
    """
    import ray

    job = plan.job
    address = job.address

    own_ray = not ray.is_initialized()
    watchdog = None
    try:
        if own_ray:
            t0 = time.perf_counter()
            if address is None:
                # Quiet, telemetry-free local Ray unless the user configured otherwise.
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                # The watchdog ends this Ray's processes if this process dies without
                # shutting it down (pipelines.ray_watchdog).
                watchdog = Watchdog.start() if watchdog_supported() else None
                tagged = watchdog.token_in_environ() if watchdog else contextlib.nullcontext()
                with tagged:
                    ray.init(
                        num_cpus=local_ray_cpus(job),
                        include_dashboard=False,
                        logging_level="ERROR",
                        log_to_driver=False,
                    )
            else:
                ray.init(address=address, logging_level="ERROR")
            timings["ray_start_s"] = time.perf_counter() - t0
        import ray.data

        if own_ray:
            # Our progress bar replaces Ray Data's own bars and per-dataset log lines.
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        n_actors, cpus, gpus = plan_actors(
            float(resources.get("CPU", 1.0)),
            float(resources.get("GPU", 0.0)),
            job.actors,
            job.cpus_per_actor,
            job.device,
        )
        n_actors = min(n_actors, len(todo))
        shards = ray.data.from_items(
            [{"shard": k} for k in todo], override_num_blocks=len(todo)
        ).map_batches(
            ShardScorer,
            fn_constructor_kwargs={"plan": plan, "report_setup_errors": True},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=cpus,
            num_gpus=gpus,
            runtime_env={"env_vars": _SCORER_ENV},
        )
        t0 = time.perf_counter()
        arrivals: list[tuple[float, int]] = []  # (seconds since start, cumulative rows)
        cpu_s = 0.0
        with _progress_bar(todo_rows, job.progress) as bar:
            for report in shards.iter_rows():
                if report["error"]:
                    error_id = int(report["error_id"])
                    raise ShardError(
                        job.run,
                        int(report["shard"]),
                        None if error_id < 0 else error_id,
                        str(report["error"]),
                    )
                rows = int(report["rows"])
                arrivals.append(
                    (time.perf_counter() - t0, rows + (arrivals[-1][1] if arrivals else 0))
                )
                cpu_s += float(report["cpu_seconds"])
                bar.update(rows)
        timings["scoring_s"] = time.perf_counter() - t0
        timings["scoring_cpu_s"] = cpu_s  # summed over the actors' shard calls
        timings["first_shard_s"] = arrivals[0][0]
        timings.update(_steady_rate(arrivals, timings["scoring_s"]))
    finally:
        if own_ray:
            ray.shutdown()
        if watchdog is not None:
            watchdog.close()


def _steady_rate(arrivals: list[tuple[float, int]], total_s: float) -> dict[str, float]:
    """Rows/s after the first quarter of the rows landed, and the fixed cost it implies.

    Actor start-up (a Python process importing torch and building the model) is a fixed cost
    per job; the rate over the last three quarters of the rows excludes it, and
    ``startup_overhead_s = total - rows / rate`` estimates it.
    """
    total_rows = arrivals[-1][1]
    start = next((t, r) for t, r in arrivals if r >= total_rows / 4)
    if total_s - start[0] <= 0 or total_rows <= start[1]:
        return {}
    rate = (total_rows - start[1]) / (total_s - start[0])
    return {"steady_rows_per_s": rate, "startup_overhead_s": max(0.0, total_s - total_rows / rate)}
