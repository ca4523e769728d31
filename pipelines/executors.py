"""Where a scoring job's shards run: in this process, or on a pool of Ray actors.

Both executors score the shards ``todo`` of a ``ShardPlan`` with ``ShardScorer``, show a progress
bar (rows/s and ETA) unless the job says ``progress=False``, record timings in ``timings`` and
raise ``ShardError`` for the first shard whose user model or data fails. Ray is imported only
inside ``ray_pool``.

``ray_pool`` (a context manager) uses the Ray already initialised in this process if there is
one (and leaves it running); otherwise it starts a local Ray (``ray.init(num_cpus=...)``), or
joins ``address``, and shuts it down (disconnects) on exit; it sizes the actor pool from the
cluster's resources before the job writes anything. A local Ray it starts is watched by
``pipelines.ray_watchdog``, which ends its processes if this process dies without shutting it
down (SIGKILL, OOM). By default the actors leave a CPU unclaimed (see ``plan_actors``).
``run_ray`` scores the shards on that pool.

Why plain actors and not Ray Data's ``map_batches`` with an actor pool, which this job used
before: measured on this project's 2-core box (200k rows, a 40-256-256-10 MLP, loss), the Ray
Data job took 18 s from submitting the pool to its first committed shard, this pool 4 s; and
Ray Data's actors (restartable, constructor arguments in the object store) made Ray print a
``core_worker.cc`` warning through the progress bar on every run. The work is a list of shard
numbers, each a call that commits its own output: nothing Ray Data adds is needed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from winnow.pipelines.jobspec import ScoreJob, ShardPlan
from winnow.pipelines.ray_watchdog import Watchdog
from winnow.pipelines.ray_watchdog import supported as watchdog_supported
from winnow.pipelines.scorer import ShardError, ShardScorer

__all__ = ["RayPool", "local_ray_cpus", "plan_actors", "ray_pool", "run_inline", "run_ray"]


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
    """(actors, CPUs per actor, GPUs per actor) for a cluster of ``total_cpus`` and GPUs.

    By default the pool leaves one CPU unclaimed, for the driver and Ray's own processes (on
    one machine they share its cores). A pool the user sized may claim every CPU, not more:
    Ray would keep the actors it cannot place pending, and the job would wait forever.
    ``total_gpus=None``: not known yet (checked once Ray runs). Raises ``ValueError`` for a pool
    larger than the cluster, or GPUs that are not there.
    """
    gpus_per_actor = 0.0
    if device != "cpu":
        if total_gpus is not None and total_gpus < 1:
            raise ValueError(f"device {device!r} requested but the Ray cluster has no GPU")
        gpus_per_actor = 1.0
        if actors is not None and total_gpus is not None and actors > total_gpus:
            raise ValueError(
                f"{actors} actors x 1 GPU need {actors} GPUs; the Ray cluster has "
                f"{total_gpus:g}. Use at most {int(total_gpus)} actors."
            )
        actors = actors or (int(total_gpus) if total_gpus is not None else None)
    if actors is None:
        actors = max(1, min(int(total_cpus), 8))
    if cpus_per_actor is None:  # (positive values are checked by ScoreJob)
        cpus_per_actor = max(0.25, min(4.0, (total_cpus - 1.0) / actors))
    if cpus_per_actor * actors > total_cpus + 1e-9:
        raise ValueError(
            f"{actors} actors x {cpus_per_actor:g} CPUs need {actors * cpus_per_actor:g} CPUs; "
            f"the Ray cluster has {total_cpus:g}, so some actors would never start. Use fewer "
            "actors or a smaller cpus_per_actor."
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


@dataclasses.dataclass(frozen=True)
class RayPool:
    """A started or joined Ray and the actor pool it can place: ``actors`` x ``cpus`` CPUs and
    ``gpus`` GPUs each; ``own_local``: a local Ray this job started (its processes inherited
    the scorer's malloc settings)."""

    ray: Any
    actors: int
    cpus: float
    gpus: float
    own_local: bool


@contextlib.contextmanager
def ray_pool(job: ScoreJob, shards: int, timings: dict[str, float | int]) -> Iterator[RayPool]:
    """Start or join Ray as ``job`` says and size the actor pool for ``shards`` shards to do.

    Uses the Ray already initialised in this process if there is one (and leaves it running);
    otherwise starts a local Ray (``num_cpus``) watched by ``pipelines.ray_watchdog``, or joins
    ``address``, and shuts it down (disconnects) on exit. A pool the cluster cannot place
    raises ``ValueError`` here, before the job writes anything: a joined cluster's CPUs and
    GPUs are known only now.
    """
    import ray

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
                # Ray's processes, and so its pre-started workers, inherit this environment:
                # the actors get the malloc settings without a runtime_env (see _actor_options).
                with tagged, _environ(_SCORER_ENV):
                    ray.init(
                        num_cpus=local_ray_cpus(job),
                        include_dashboard=False,
                        logging_level="ERROR",
                        log_to_driver=False,
                    )
            else:
                ray.init(address=address, logging_level="ERROR")
            timings["ray_start_s"] = time.perf_counter() - t0
        resources = ray.cluster_resources()
        n_actors, cpus, gpus = plan_actors(
            float(resources.get("CPU", 1.0)),
            float(resources.get("GPU", 0.0)),
            job.actors,
            job.cpus_per_actor,
            job.device,
        )
        yield RayPool(ray, min(n_actors, shards), cpus, gpus, own_ray and address is None)
    finally:
        if own_ray:
            t0 = time.perf_counter()
            if address is None:
                _end_autoscaler_monitor(ray)
            ray.shutdown()
            timings["ray_shutdown_s"] = time.perf_counter() - t0
        if watchdog is not None:
            watchdog.close()


def _end_autoscaler_monitor(ray: Any) -> None:
    """SIGKILL the autoscaler monitor of the local Ray this process started, before shutdown.

    ``ray.shutdown()`` stops the GCS first, then sends the monitor SIGTERM, whose handler
    reports the monitor's death to that GCS and blocks until Ray's one-second grace period runs
    out (measured: 1.0 of the 1.3 s shutdown, every run, Ray 2.60). A local single-node Ray has
    nothing to autoscale and nobody to tell; once it is gone, Ray's shutdown skips it. Reaches
    into Ray's private node object: if that has changed, the shutdown is just a second slower.
    """
    try:
        node = ray._private.worker._global_node
        infos = list(node.all_processes.get("monitor", ()))
    except AttributeError:
        return
    for info in infos:
        process = getattr(info, "process", None)
        if process is None or process.poll() is not None:
            continue
        process.kill()
        with contextlib.suppress(Exception):
            process.wait(timeout=5.0)


def run_ray(
    plan: ShardPlan,
    todo: list[int],
    todo_rows: int,
    timings: dict[str, float | int],
    pool: RayPool,
) -> None:
    """Score ``todo`` on ``pool`` (from ``ray_pool``): ``ShardScorer`` actors, one shard per call.

    Each actor runs as many torch threads as CPUs it asked for (rounded up, as Ray sets
    ``OMP_NUM_THREADS``). The driver hands each actor the next shard as one finishes, keeping
    ``_IN_FLIGHT`` queued per actor so none waits for the driver, and consumes one small report
    per committed shard (progress, timings). At the first failed shard it stops handing out
    shards, lets the ones in flight finish, and raises ``ShardError``. The actors end with the
    call.
    """
    ray, job = pool.ray, plan.job
    actors: list[Any] = []
    try:
        t0 = time.perf_counter()
        actor_cls = ray.remote(ShardScorer).options(
            **_actor_options(pool.cpus, pool.gpus, own_local=pool.own_local)
        )
        threads = max(1, math.ceil(pool.cpus))
        actors = [
            actor_cls.remote(plan, report_setup_errors=True, threads=threads)
            for _ in range(pool.actors)
        ]
        driver_cpu = time.process_time()
        with _progress_bar(todo_rows, job.progress) as bar:
            calls = _Calls(ray, job.run, actors, todo)
            for report in calls.reports():
                bar.update(int(report["rows"]))
        timings["actors"] = len(actors)
        timings["ray_nodes"] = len(calls.nodes)
        started = calls.ready_at[0]
        timings["startup_s"] = started - t0  # the first actor built: torch imported, model loaded
        timings["actors_ready_s"] = calls.ready_at[-1] - t0
        timings["scoring_s"] = calls.arrivals[-1][0] - started
        timings["scoring_cpu_s"] = calls.cpu_s  # summed over the actors' shard calls
        # Per-actor cost (rows per busy second) and the driver's cost per shard: together they
        # predict a larger pool (benchmarks/bench_score.py).
        timings["scoring_busy_s"] = calls.busy_s
        timings["driver_cpu_s"] = time.process_time() - driver_cpu
        timings["first_shard_s"] = calls.arrivals[0][0] - started
        arrivals = [(t - started, rows) for t, rows in calls.arrivals]
        timings.update(_steady_rate(arrivals, timings["scoring_s"]))
    finally:
        for actor in actors:  # after the calls queued on it: shards in flight still commit
            actor.__ray_terminate__.remote()


# Shard calls queued per actor: the next shard is already there when one finishes, so an actor
# never waits for the driver to see its report and send more.
_IN_FLIGHT = 2


class _Calls:
    """Hands ``todo`` out to ``actors`` as they finish shards; records when things happened.

    ``ready_at``: when each actor was built; ``nodes``: the Ray nodes they run on;
    ``arrivals``: (time, cumulative rows) per committed shard (times from
    ``time.perf_counter()``); ``cpu_s`` and ``busy_s``: the actors' CPU and wall seconds in
    their shard calls.
    """

    def __init__(self, ray: Any, run: str, actors: list[Any], todo: list[int]):
        self._ray, self._run = ray, run
        self._queue = collections.deque(todo)
        # Calls on one actor run in the order submitted: ready() answers once it is built.
        self._ready = {actor.ready.remote(): i for i, actor in enumerate(actors)}
        self._calls: dict[Any, tuple[int, Any]] = {}
        for index, actor in enumerate(actors):
            for _ in range(_IN_FLIGHT):
                self._submit(index, actor)
        self.ready_at: list[float] = []
        self.nodes: set[str] = set()
        self.arrivals: list[tuple[float, int]] = []
        self.cpu_s = self.busy_s = 0.0

    def _submit(self, index: int, actor: Any) -> None:
        if self._queue:
            self._calls[actor.run.remote(self._queue.popleft())] = (index, actor)

    def reports(self) -> Iterator[dict[str, Any]]:
        """Each committed shard's report; raises ``ShardError`` once nothing is in flight."""
        failure: ShardError | None = None
        while self._calls:
            (ref,), _ = self._ray.wait([*self._ready, *self._calls], num_returns=1)
            now = time.perf_counter()
            if ref in self._ready:
                self._built(ref, now)
                continue
            index, actor = self._calls.pop(ref)
            for ready_ref in [r for r, i in self._ready.items() if i == index]:
                self._built(ready_ref, now)  # both answered at once: it was built by now
            report = self._ray.get(ref)
            if report["error"]:
                if failure is None:
                    error_id = int(report["error_id"])
                    failure = ShardError(
                        self._run, int(report["shard"]),
                        None if error_id < 0 else error_id, str(report["error"]),
                    )  # fmt: skip
                    self._queue.clear()
                continue
            if failure is None:
                self._submit(index, actor)
            rows = int(report["rows"]) + (self.arrivals[-1][1] if self.arrivals else 0)
            self.arrivals.append((now, rows))
            self.cpu_s += float(report["cpu_seconds"])
            self.busy_s += float(report["seconds"])
            yield report
        if failure is not None:
            raise failure

    def _built(self, ref: Any, now: float) -> None:
        del self._ready[ref]
        self.nodes.add(self._ray.get(ref)["node"])
        self.ready_at.append(now)


def _actor_options(cpus: float, gpus: float, *, own_local: bool) -> dict[str, Any]:
    """Resources of one scorer actor, and how it gets ``_SCORER_ENV``.

    A local Ray this job started already passes the variables to every worker (set for
    ``ray.init``); elsewhere they come with a ``runtime_env``, which makes Ray start a new worker
    process for the actor instead of taking an idle one (measured: +4 s before the actor's
    constructor ran on this project's 2-core box). ``max_restarts=0``: an actor that dies fails
    the job (``--resume`` continues it); restarting it would need its constructor arguments kept.
    """
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0}
    if not own_local:
        options["runtime_env"] = {"env_vars": _SCORER_ENV}
    return options


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the duration (variables already set are kept)."""
    added = [key for key in values if key not in os.environ]
    os.environ.update({key: values[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            del os.environ[key]


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
