"""The offline scoring job: score every example on Ray actors and commit the scores to the store.

    manifest = pipelines.score(
        "data/train.parquet", "mypkg.models:build", checkpoint="ckpt.pt",
        feature_columns="x", metrics=["loss", "el2n", "grad_norm"],
        store="winnow-store", run="epoch10",
    )

Before anything is written or Ray starts, the driver checks the data (``source.plan()``: columns,
types, ids, and a fingerprint of the files), the models and the actor pool
(``pipelines.preflight``), and decides what to do with an existing run of that name
(``pipelines.rerun``: continue it, replace it, or refuse saying which option applies).

How it runs. Rows are cut into deterministic shards (shard ``k`` = row positions
``[k*S, (k+1)*S)``); the driver hands shard numbers to a pool of ``ShardScorer`` actors
(``pipelines.executors``). Each actor builds the models and the data reader once, scores whole
shards in mini-batches and commits each shard through the store's atomic writer before it
reports the shard done. The driver only shows progress and, at
the end, computes the faiss embedding metrics and writes the run manifest (last). ``resume=True``
skips shards whose every output is already committed, so a crash at any point loses nothing and
duplicates nothing.

Ray. Imported lazily, only here. With no Ray running and no ``address``, the job starts a local
Ray (``ray.init(num_cpus=...)``), watched by ``pipelines.ray_watchdog`` in case this process
dies, and shuts it down at the end; ``address="auto"`` or
``"ray://host:port"`` joins a cluster instead (the store root must then be reachable from every
node). If Ray is already initialised in this process, that Ray is used and left running. By
default each actor asks for ``(cpus - 1) / actors`` CPUs, at least 0.25 (a CPU is left for the
driver and Ray), and runs that many torch threads, rounded up; a pool sized by the user may
claim every CPU, never more. ``executor="inline"`` runs the same scorer
in this process without Ray (debugging, and the baseline of ``benchmarks/bench_score.py``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Mapping
from typing import Any

from winnow.pipelines.embed import EMBEDDING_METRICS, write_embedding_metrics
from winnow.pipelines.executors import ray_pool, run_inline, run_ray
from winnow.pipelines.jobspec import ScoreJob, ShardPlan, default_shard_size
from winnow.pipelines.metric_registry import EMBEDDING, resolve_metrics, scalar_outputs
from winnow.pipelines.models import describe_model
from winnow.pipelines.preflight import check_job
from winnow.pipelines.rerun import decide
from winnow.pipelines.scorer import ShardError

__all__ = ["score", "run_job", "default_shard_size", "ShardError"]


def score(data: Any, model: Any, **options: Any) -> dict[str, Any]:
    """Score ``data`` with ``model`` and commit the metrics as a run of the store.

    ``data``: a Parquet path (name its ``feature_columns``; ``id_column`` and ``label_column``
    default to ``example_id`` and ``label``) or ``"module:factory"`` building a map-style
    Dataset of ``(x, y)`` items (ids = indices). ``model``/``reference``: ``"module:factory"``
    returning an ``nn.Module`` or ``(module, loss_fn)``; checkpoints are state_dicts read with
    ``weights_only=True``. ``store`` and ``run`` are required; every option is a field of
    ``ScoreJob`` (``metrics=("loss",)``, ``batch_size=256``, ``resume=False``,
    ``executor="ray"``, ...). Same as ``run_job(ScoreJob(data=data, model=model, **options))``.

    Token documents: ``token_column="tokens"`` (a ``list<int>`` column of a Parquet file or a
    Hugging Face dataset, e.g. ``input_ids``) instead of ``feature_columns``, a causal LM
    ``[B, T] -> [B, T, V]``, ``metrics=["nll", "perplexity"]``, optionally ``max_tokens`` and
    ``domain_column`` (docs/scoring-job.md, "Token documents").

    Returns the run manifest (``status == "complete"``, row counts per metric, timings).
    Raises ``ValueError``/``TypeError`` for a bad option before anything is written, and
    ``ShardError`` naming the shard and first failing id if the user's model fails; shards
    committed before that stay committed and ``resume=True`` continues from them.
    """
    return run_job(ScoreJob(data=data, model=model, **options))


def run_job(job: ScoreJob) -> dict[str, Any]:
    """Run ``job``: plan the shards, score the missing ones, write the manifest (last)."""
    from winnow.store import ScoreStore

    if not isinstance(job, ScoreJob):
        raise TypeError(f"run_job expects a ScoreJob, got {type(job).__name__}")
    started = time.perf_counter()
    data_plan = job.data.plan()
    # Only now is it known whether the data has labels.
    resolve_metrics(job.metrics, has_labels=data_plan.has_labels, kind=job.kind)
    scores = ScoreStore(job.store)
    identity = describe_model(job.model)
    config = job.manifest_config(
        num_rows=data_plan.num_rows,
        shard_size=job.shard_size or default_shard_size(data_plan.num_rows),
        source_fingerprint=data_plan.fingerprint,
    )
    if data_plan.domain_names is not None:
        config["domain_names"] = list(data_plan.domain_names)
    existing = _existing_manifest(scores, job.run)
    counts = scores.row_counts(job.run)
    if existing is None and any(counts[key] for key in ("row_counts", "vector_rows")):
        existing = {"name": job.run, "status": "unknown"}  # files without a manifest
    decision = decide(existing, job, config, identity, counts)
    check_job(job, data_plan)  # models, tokens, embedding layer, actor pool: before any write
    if decision.action == "continue":  # a resumed run keeps the shards it was cut into
        config["shard_size"] = decision.shard_size
    plan = ShardPlan(
        job=job,
        num_rows=data_plan.num_rows,
        shard_size=config["shard_size"],
        domain_names=data_plan.domain_names,
    )
    outputs = list(scalar_outputs(job.entries))
    if EMBEDDING in job.metrics:
        outputs += [*EMBEDDING_METRICS, *(_dup_metric(e) for e in job.dedup_eps)]
    replace = decision.action == "replace"
    done = set() if replace else _completed_shards(scores, plan)
    todo = [k for k in range(plan.num_shards) if k not in done]
    todo_rows = sum(plan.shard_rows(k)[1] - plan.shard_rows(k)[0] for k in todo)
    timings: dict[str, float | int] = {}  # seconds, and counts (actors, ray_nodes)
    written: dict[str, Any] = {}
    with contextlib.ExitStack() as ray_running:
        pool = None
        if todo and job.executor == "ray":
            # Starts or joins Ray and sizes the pool: a joined cluster too small for it is
            # refused here, before the store is touched.
            pool = ray_running.enter_context(ray_pool(job, len(todo), timings))
        if replace:
            scores.remove_run(job.run)
            if job.progress:
                print(
                    f"winnow score: replacing run {job.run!r} ({decision.reason})", file=sys.stderr
                )
        # On resume this marks the run "running" again, keeping its creation time.
        scores.begin_run(
            job.run,
            kind="scores",
            config=config,
            model=identity,
            num_examples=data_plan.num_examples,
            metrics=tuple(outputs),
        )
        try:
            if todo and pool is None:
                run_inline(plan, todo, todo_rows, timings)
            elif todo:
                run_ray(plan, todo, todo_rows, timings, pool)
            ray_running.close()  # Ray is shut down before the driver's own embedding work
            if EMBEDDING in job.metrics:
                t0 = time.perf_counter()
                written = write_embedding_metrics(
                    scores, job.run, num_clusters=job.num_clusters, dedup_eps=job.dedup_eps
                )
                timings["embedding_metrics_s"] = time.perf_counter() - t0
        except ShardError as exc:
            failure = {"error": str(exc), "failed_shard": exc.shard, "failed_id": exc.example_id}
            scores.finish_run(job.run, status="failed", extra=failure)
            raise
        except BaseException as exc:  # any other end is recorded too, then re-raised as it was
            status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
            scores.finish_run(job.run, status=status, extra={"error": _one_line(exc)})
            raise
    seconds = time.perf_counter() - started
    scoring_s = timings.get("scoring_s", 0.0)
    extra = {
        "rows_scored": todo_rows,
        "rows_total": data_plan.num_rows,
        "shards": plan.num_shards,
        "shards_skipped": len(done),
        "seconds": round(seconds, 3),
        "rows_per_s": round(todo_rows / scoring_s, 1) if scoring_s > 0 else None,
        "executor": job.executor,
        "replaced": decision.reason,
        **({"duplicate_share": written["duplicate_share"]} if written else {}),
        # A resumed run that completes no longer carries the failure of an earlier attempt.
        "error": None,
        "failed_shard": None,
        "failed_id": None,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()},
    }
    manifest = scores.finish_run(job.run, status="complete", extra=extra)
    if job.progress:
        _print_summary(job.run, job.store, extra, len(done))
    return manifest


def _print_summary(run: str, store_root: str, extra: Mapping[str, Any], skipped: int) -> None:
    rate = extra["rows_per_s"]
    resumed = f", {skipped} shards were already done" if skipped else ""
    where = ""
    if "actors" in extra:
        nodes = extra["ray_nodes"]
        where = f" on {extra['actors']} Ray actors ({nodes} node{'s' if nodes != 1 else ''})"
    print(
        f"winnow score: run {run!r}: {extra['rows_scored']} rows scored{where} in "
        f"{extra['seconds']:.1f} s ({rate if rate is not None else '-'} rows/s while scoring"
        f"{resumed}); store {store_root}",
        file=sys.stderr,
    )


def _dup_metric(eps: float) -> str:
    return f"dup_eps{eps:g}"


def _existing_manifest(scores: Any, run: str) -> dict[str, Any] | None:
    from winnow.store import UnknownRunError

    try:
        return scores.manifest(run)
    except UnknownRunError:
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _completed_shards(scores: Any, plan: ShardPlan) -> set[int]:
    """Shards whose every metric file is committed.

    A shard's vectors are written before its metric files, so committed metrics imply committed
    vectors (every metric with vectors also stores a scalar, e.g. ``embedding_norm``).
    """
    done: set[int] | None = None
    for name in scalar_outputs(plan.job.entries):
        shards = set(scores.completed_shards(plan.job.run, name))
        done = shards if done is None else done & shards
    return done or set()


if __name__ == "__main__":
    from winnow.pipelines.cli import main

    sys.exit(main(["score", *sys.argv[1:]]))
