"""The offline scoring job: score every example with Ray Data and commit the scores to the store.

    manifest = pipelines.score(
        "data/train.parquet", "mypkg.models:build", checkpoint="ckpt.pt",
        feature_columns="x", metrics=["loss", "el2n", "grad_norm"],
        store="winnow-store", run="epoch10",
    )

How it runs. Rows are cut into deterministic shards (shard ``k`` = row positions
``[k*S, (k+1)*S)``); a Ray Data dataset of shard numbers flows through
``map_batches(ShardScorer, compute=ActorPoolStrategy(...))``. Each actor builds the models and
the data reader once, scores whole shards in mini-batches and commits each shard through the
store's atomic writer before it reports the shard done. The driver only shows progress and, at
the end, computes the faiss embedding metrics and writes the run manifest (last). ``resume=True``
skips shards whose every output is already committed, so a crash at any point loses nothing and
duplicates nothing.

Ray. Imported lazily, only here. With no Ray running and no ``address``, the job starts a local
Ray (``ray.init(num_cpus=...)``) and shuts it down at the end; ``address="auto"`` or
``"ray://host:port"`` joins a cluster instead (the store root must then be reachable from every
node). If Ray is already initialised in this process, that Ray is used and left running. Actors
never claim every CPU (a 2-CPU pool of 1-CPU actors deadlocks Ray Data): by default each actor
asks for ``(cpus - 1) / actors`` CPUs, at least 0.25. ``executor="inline"`` runs the same scorer
in this process without Ray (debugging, and the baseline of ``benchmarks/bench_score.py``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from winnow.pipelines.embed import EMBEDDING_METRICS, write_embedding_metrics
from winnow.pipelines.executors import run_inline, run_ray
from winnow.pipelines.models import ModelSpec, describe_model
from winnow.pipelines.scorer import EMBEDDING, JobSpec, ShardError, scalar_outputs, validate_metrics
from winnow.pipelines.sources import DatasetSource, ParquetSource, make_source

__all__ = ["score", "default_shard_size", "ShardError"]

_MIN_SHARD, _MAX_SHARD = 512, 100_000


def default_shard_size(num_rows: int) -> int:
    """About 32 shards for small data, at most 100k rows (a few seconds of work) per shard."""
    return int(min(_MAX_SHARD, max(_MIN_SHARD, math.ceil(num_rows / 32))))


def score(
    data: str | ParquetSource | DatasetSource,
    model: str | ModelSpec,
    *,
    store: str | os.PathLike,
    run: str,
    metrics: Sequence[str] | str = ("loss",),
    checkpoint: str | None = None,
    reference: str | ModelSpec | None = None,
    reference_checkpoint: str | None = None,
    id_column: str = "example_id",
    feature_columns: Sequence[str] | str | None = None,
    label_column: str | None = "label",
    data_kwargs: Mapping[str, Any] | None = None,
    embed_layer: str | None = None,
    num_clusters: int | None = None,
    dedup_eps: Sequence[float] = (0.05,),
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    num_cpus: int | None = None,
    batch_size: int = 256,
    shard_size: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    executor: str = "ray",
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``data`` with ``model`` and commit ``metrics`` as run ``run`` of the store.

    ``data``: a Parquet path (name its ``id_column``, ``feature_columns`` and ``label_column``)
    or ``"module:factory"`` building a map-style Dataset of ``(x, y)`` items (ids = indices).
    ``model``/``reference``: ``"module:factory"`` returning an ``nn.Module`` or
    ``(module, loss_fn)``; checkpoints are state_dicts read with ``weights_only=True``.
    Returns the run manifest (``status == "complete"``, row counts per metric, timings).
    Raises ``ShardError`` naming the shard and first failing id if the user's model fails;
    shards committed before that stay committed and ``resume=True`` continues from them.
    """
    from winnow.store import ScoreStore

    started = time.perf_counter()
    _check_options(executor, device, batch_size, shard_size, num_clusters, dedup_eps)
    source = make_source(
        data,
        id_column=id_column,
        feature_columns=feature_columns,
        label_column=label_column,
        kwargs=data_kwargs,
    )
    model_spec = model if isinstance(model, ModelSpec) else ModelSpec(model, checkpoint)
    ref_spec = reference
    if isinstance(reference, str):
        ref_spec = ModelSpec(reference, reference_checkpoint)
    elif reference is None and reference_checkpoint is not None:
        raise ValueError("reference_checkpoint given without a reference model factory")
    plan = source.plan()
    metrics = validate_metrics(
        metrics, has_reference=ref_spec is not None, has_labels=plan.has_labels
    )
    store_root = os.fspath(store)
    if "://" not in store_root:
        # Actors may run in another working directory: keep local paths absolute.
        store_root = os.path.abspath(store_root)
    scores = ScoreStore(store_root)
    config = {
        "source": source.describe(),
        "metrics": list(metrics),
        "reference": describe_model(ref_spec),
        "embed_layer": embed_layer,
        "num_rows": plan.num_rows,
        "batch_size": batch_size,
        "device": device,
    }
    identity = describe_model(model_spec)
    existing = _existing_manifest(scores, run)
    if existing is not None and not resume:
        raise ValueError(
            f"run {run!r} already exists in {store_root} (status {existing.get('status')!r}); "
            "pass --resume to continue it, or choose another --run"
        )
    if existing is not None:
        shard_size = _check_resumable(existing, config, identity, shard_size)
    config["shard_size"] = shard_size = shard_size or default_shard_size(plan.num_rows)
    spec = JobSpec(
        source=source,
        model=model_spec,
        metrics=metrics,
        store_root=store_root,
        run=run,
        num_rows=plan.num_rows,
        shard_size=shard_size,
        batch_size=batch_size,
        reference=ref_spec,
        embed_layer=embed_layer,
        device=device,
    )
    outputs = list(scalar_outputs(metrics))
    if EMBEDDING in metrics:
        outputs += [*EMBEDDING_METRICS, *(_dup_metric(e) for e in dedup_eps)]
    # On resume this marks the run "running" again, keeping its creation time.
    scores.begin_run(
        run,
        kind="scores",
        config=config,
        model=identity,
        num_examples=plan.num_examples,
        metrics=tuple(outputs),
    )
    done = _completed_shards(scores, spec)
    todo = [k for k in range(spec.num_shards) if k not in done]
    todo_rows = sum(spec.shard_rows(k)[1] - spec.shard_rows(k)[0] for k in todo)
    timings: dict[str, float] = {}
    try:
        if todo and executor == "inline":
            run_inline(spec, todo, todo_rows, progress, timings)
        elif todo:
            run_ray(
                spec, todo, todo_rows, progress, timings,
                address=address, actors=actors, cpus_per_actor=cpus_per_actor, num_cpus=num_cpus,
            )  # fmt: skip
        if EMBEDDING in metrics:
            t0 = time.perf_counter()
            write_embedding_metrics(scores, run, num_clusters=num_clusters, dedup_eps=dedup_eps)
            timings["embedding_metrics_s"] = time.perf_counter() - t0
    except ShardError as exc:
        failure = {"error": str(exc), "failed_shard": exc.shard, "failed_id": exc.example_id}
        scores.finish_run(run, status="failed", extra=failure)
        raise
    seconds = time.perf_counter() - started
    scoring_s = timings.get("scoring_s", 0.0)
    extra = {
        "rows_scored": todo_rows,
        "rows_total": plan.num_rows,
        "shards": spec.num_shards,
        "shards_skipped": len(done),
        "seconds": round(seconds, 3),
        "rows_per_s": round(todo_rows / scoring_s, 1) if scoring_s > 0 else None,
        "executor": executor,
        # A resumed run that completes no longer carries the failure of an earlier attempt.
        "error": None,
        "failed_shard": None,
        "failed_id": None,
        **{k: round(v, 3) for k, v in timings.items()},
    }
    manifest = scores.finish_run(run, status="complete", extra=extra)
    if progress:
        _print_summary(run, store_root, extra, len(done))
    return manifest


def _print_summary(run: str, store_root: str, extra: Mapping[str, Any], skipped: int) -> None:
    rate = extra["rows_per_s"]
    resumed = f", {skipped} shards were already done" if skipped else ""
    print(
        f"winnow score: run {run!r}: {extra['rows_scored']} rows scored in "
        f"{extra['seconds']:.1f} s ({rate if rate is not None else '-'} rows/s while scoring"
        f"{resumed}); store {store_root}",
        file=sys.stderr,
    )


def _check_options(
    executor: str,
    device: str,
    batch_size: int,
    shard_size: int | None,
    num_clusters: int | None,
    dedup_eps: Sequence[float],
) -> None:
    """Refuse bad options before anything is read or written."""
    if executor not in ("ray", "inline"):
        raise ValueError(f"executor must be 'ray' or 'inline', got {executor!r}")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    _check_positive("batch_size", batch_size)
    if shard_size is not None:
        _check_positive("shard_size", shard_size)
    if num_clusters is not None:
        _check_positive("num_clusters", num_clusters)
    for eps in dedup_eps:
        if not 0.0 < float(eps) < 1.0:
            raise ValueError(f"dedup eps must be in (0, 1), got {eps!r}")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _dup_metric(eps: float) -> str:
    return f"dup_eps{eps:g}"


def _existing_manifest(scores: Any, run: str) -> dict[str, Any] | None:
    from winnow.store import UnknownRunError

    try:
        return scores.manifest(run)
    except UnknownRunError:
        return None


def _check_resumable(
    manifest: Mapping[str, Any],
    config: Mapping[str, Any],
    model: Mapping[str, Any] | None,
    shard_size: int | None,
) -> int:
    """The stored shard size, after checking the resumed job is the same job.

    Same data, metrics and model identity (factory, kwargs, checkpoint hash); the model's code
    may change (that is how a failing model gets fixed before ``--resume``).
    """
    if manifest.get("model") != model:
        raise ValueError(
            f"cannot resume run {manifest.get('name')!r}: the model differs "
            f"(stored {manifest.get('model')!r}, now {model!r})"
        )
    stored = manifest.get("config", {})
    for key in ("source", "metrics", "reference", "embed_layer", "num_rows"):
        if stored.get(key) != config[key]:
            raise ValueError(
                f"cannot resume run {manifest.get('name')!r}: {key} differs "
                f"(stored {stored.get(key)!r}, now {config[key]!r})"
            )
    stored_shard = int(stored["shard_size"])
    if shard_size is not None and shard_size != stored_shard:
        raise ValueError(f"cannot resume with shard_size {shard_size}: the run uses {stored_shard}")
    return stored_shard


def _completed_shards(scores: Any, spec: JobSpec) -> set[int]:
    """Shards whose every metric file is committed.

    A shard's vectors are written before its metric files, so committed metrics imply committed
    vectors (embedding runs always store the scalar ``embedding_norm``).
    """
    done: set[int] | None = None
    for name in scalar_outputs(spec.metrics):
        shards = set(scores.completed_shards(spec.run, name))
        done = shards if done is None else done & shards
    return done or set()


if __name__ == "__main__":
    from winnow.pipelines.cli import main

    sys.exit(main(["score", *sys.argv[1:]]))
