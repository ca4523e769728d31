"""The scorer: per-example metrics of a mini-batch, and the actor that scores whole shards.

``BatchScorer`` is the math on one mini-batch (no files, no Ray). ``ShardScorer`` is the class
Ray Data runs in an actor pool: it builds the models and the data reader once per actor, scores
one shard of rows per call, and commits the shard through the store's atomic writer before it
reports back. A shard is therefore either fully in the store or not at all, which is what makes
``--resume`` exactly-once.

Metric names and directions (all float32 per example, keyed by ``example_id``):

- ``loss``: the model's per-example loss (higher = harder).
- ``el2n``: ``||softmax(z) - onehot(y)||_2`` (higher = harder).
- ``grad_norm``: exact per-example gradient norm over all parameters (higher = more influential).
- ``learnability``: ``loss - ref_loss`` per example, ``ref_loss`` from the reference model
  (higher = learnable and not yet learnt); stores ``loss``, ``ref_loss`` and ``learnability``.
- ``entropy``: predictive entropy (higher = less certain; needs no labels).
- ``margin``: see ``selection.scores.margin`` (lower = closer to the decision boundary).
- ``embedding``: a float16 vector per example (``model.embed(x)`` or a named layer's output),
  plus ``embedding_norm``, its L2 norm.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from winnow.pipelines.models import ModelSpec, load_model
from winnow.pipelines.sources import ItemError

__all__ = [
    "METRICS",
    "EMBEDDING",
    "BatchScorer",
    "JobSpec",
    "ShardError",
    "ShardScorer",
    "scalar_outputs",
    "validate_metrics",
]

METRICS = ("loss", "el2n", "grad_norm", "learnability", "entropy", "margin", "embedding")
EMBEDDING = "embedding"
_NEEDS_LABELS = frozenset({"loss", "el2n", "grad_norm", "learnability", "margin"})
_NEEDS_LOGITS = frozenset({"loss", "el2n", "learnability", "entropy", "margin"})
_SCORES = frozenset({"el2n", "entropy", "margin"})


def validate_metrics(
    metrics: Sequence[str] | str, *, has_reference: bool, has_labels: bool
) -> tuple[str, ...]:
    """Return the requested metrics as a tuple in canonical order, or raise ``ValueError``."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; expected some of {list(METRICS)}")
    if not metrics:
        raise ValueError(f"no metrics requested; expected some of {list(METRICS)}")
    if "learnability" in metrics and not has_reference:
        raise ValueError("metric 'learnability' needs a reference model (--reference)")
    if not has_labels and _NEEDS_LABELS.intersection(metrics):
        raise ValueError(
            f"metrics {sorted(_NEEDS_LABELS.intersection(metrics))} need labels, "
            "but the data source has none (give --label-column, or items (x, y))"
        )
    return tuple(m for m in METRICS if m in metrics)


def scalar_outputs(metrics: Sequence[str]) -> tuple[str, ...]:
    """The float metric columns a run of ``metrics`` stores.

    ``learnability`` adds ``loss`` and ``ref_loss``; ``embedding`` adds ``embedding_norm`` (the
    L2 norm of each vector), which also marks the shard's vectors as committed.
    """
    out: list[str] = []
    for name in metrics:
        if name == "learnability":
            out.extend(n for n in ("loss", "ref_loss", "learnability") if n not in out)
        elif name == EMBEDDING:
            out.append("embedding_norm")
        elif name not in out:
            out.append(name)
    return tuple(out)


class BatchScorer:
    """Computes the requested metrics for one mini-batch.

    ``x``: ``[B, ...]`` tensor, ``y``: ``[B]`` targets or None. Returns ``{metric: float32 [B]}``
    plus ``"embedding": float16 [B, d]`` when asked. Everything runs under
    ``torch.inference_mode`` except ``grad_norm``, which needs one backward pass.
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Callable,
        metrics: Sequence[str],
        *,
        reference: Any | None = None,
        reference_loss_fn: Callable | None = None,
        embed_layer: str | None = None,
        device: str = "cpu",
    ):
        self.model, self.loss_fn, self.metrics = model, loss_fn, tuple(metrics)
        self.reference, self.reference_loss_fn = reference, reference_loss_fn
        self.device = device
        self._captured: list[Any] = []
        self._embed: Callable | None = None
        if EMBEDDING in self.metrics:
            if embed_layer is not None:
                model.get_submodule(embed_layer).register_forward_hook(self._capture)
            elif callable(getattr(model, "embed", None)):
                self._embed = model.embed
            else:
                raise ValueError(
                    f"{type(model).__name__} has no embed() method; name a layer whose output "
                    "is the embedding (--embed-layer, e.g. 'head')"
                )
        self._embed_layer = embed_layer if EMBEDDING in self.metrics else None
        # Imported here, not per batch, so a missing dependency is not blamed on the user's model.
        self._scores = (
            importlib.import_module("winnow.selection.scores")
            if _SCORES.intersection(self.metrics)
            else None
        )
        self._grad_norms = None
        if "grad_norm" in self.metrics:
            gradnorm = importlib.import_module("winnow.selection.gradnorm")
            self._grad_norms = gradnorm.per_example_grad_norms

    def _capture(self, _module: Any, _inputs: Any, output: Any) -> None:
        # Only the inference forward's output is the embedding (not the grad_norm forward's).
        if not self._captured:
            self._captured.append(output)

    def __call__(self, x: Any, y: Any | None) -> dict[str, np.ndarray]:
        import torch

        scores = self._scores
        x = x.to(self.device, non_blocking=True)
        y = None if y is None else y.to(self.device, non_blocking=True)
        out: dict[str, Any] = {}
        self._captured.clear()
        with torch.inference_mode():
            logits = None
            if _NEEDS_LOGITS.intersection(self.metrics) or self._embed_layer is not None:
                logits = self.model(x)
            if "loss" in self.metrics or "learnability" in self.metrics:
                out["loss"] = self.loss_fn(logits, y)
            if "learnability" in self.metrics:
                ref_loss = self.reference_loss_fn(self.reference(x), y)
                out["ref_loss"] = ref_loss
                out["learnability"] = out["loss"] - ref_loss
            if "el2n" in self.metrics:
                out["el2n"] = scores.el2n(logits, y)
            if "entropy" in self.metrics:
                out["entropy"] = scores.entropy(logits)
            if "margin" in self.metrics:
                out["margin"] = scores.margin(logits, y)
            if EMBEDDING in self.metrics:
                emb = self._captured[0] if self._embed is None else self._embed(x)
                out[EMBEDDING] = emb.flatten(1)
                out["embedding_norm"] = out[EMBEDDING].float().norm(dim=1)
        if self._grad_norms is not None:
            out["grad_norm"] = self._grad_norms(self.model, self.loss_fn, x, y)
        self._captured.clear()
        result = {}
        for name, value in out.items():
            array = torch.as_tensor(value).detach().to("cpu")
            dtype = torch.float16 if name == EMBEDDING else torch.float32
            result[name] = array.to(dtype).numpy()
        return result


class ShardError(RuntimeError):
    """A user model (or data) failed on a shard; names the shard and the first failing id."""

    def __init__(self, run: str, shard: int, example_id: int | None, cause: str):
        self.run, self.shard, self.example_id, self.cause = run, shard, example_id, cause
        where = "" if example_id is None else f", first failing example_id {example_id}"
        super().__init__(f"run {run!r}: shard {shard} failed{where}: {cause}")

    def __reduce__(self):
        return (type(self), (self.run, self.shard, self.example_id, self.cause))


@dataclass(frozen=True)
class JobSpec:
    """Everything an actor needs, picklable: where data, models and the store are.

    ``source`` is a ``ParquetSource`` or ``DatasetSource``; ``num_rows`` its row count. Shards
    are ``shard_size`` consecutive row positions, so the same spec always cuts the same shards.
    """

    source: Any
    model: ModelSpec
    metrics: tuple[str, ...]
    store_root: str
    run: str
    num_rows: int
    shard_size: int
    batch_size: int = 256
    reference: ModelSpec | None = None
    embed_layer: str | None = None
    device: str = "cpu"

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Row positions ``[start, stop)`` of ``shard``: a pure function of the shard size."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_rows)

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)


class ShardScorer:
    """Ray Data actor: ``{"shard": int64 [k]}`` in, one report row per shard out.

    Report columns: ``shard``, ``rows``, ``seconds`` (wall), ``cpu_seconds`` (this process's CPU
    time, all threads), ``error`` (the cause; "" when committed),
    ``error_id`` (first failing ``example_id``, -1 if unknown). A failing user model is reported,
    not raised, so the driver can name the shard and id in one clear error; with
    ``report_setup_errors``, so is a failure to build the model or the data reader.
    """

    def __init__(self, spec: JobSpec, *, report_setup_errors: bool = False):
        self.spec = spec
        self._setup_error = ""
        if not report_setup_errors:
            self._setup()
            return
        try:
            self._setup()
        except Exception as exc:  # reported with every shard, so the driver names the cause
            self._setup_error = (
                f"could not build the model or data reader: {type(exc).__name__}: {exc}"
            )

    @property
    def setup_error(self) -> str:
        """Why building the model or data reader failed ("" if it did not)."""
        return self._setup_error

    def _setup(self) -> None:
        from winnow.store import ScoreStore

        spec = self.spec
        model, loss_fn = load_model(spec.model, spec.device)
        reference = ref_loss = None
        if spec.reference is not None:
            reference, ref_loss = load_model(spec.reference, spec.device)
        self.scorer = BatchScorer(
            model,
            loss_fn,
            spec.metrics,
            reference=reference,
            reference_loss_fn=ref_loss,
            embed_layer=spec.embed_layer,
            device=spec.device,
        )
        self.reader = spec.source.open()
        self.store = ScoreStore(spec.store_root)
        self.outputs = scalar_outputs(spec.metrics)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports = []
        for shard in np.asarray(batch["shard"]).tolist():
            started, cpu_started = time.perf_counter(), time.process_time()
            if self.setup_error:
                reports.append((shard, 0, 0.0, 0.0, self.setup_error, -1))
                continue
            try:
                rows = self.score_shard(int(shard))
                error, error_id = "", -1
            except ShardError as exc:
                rows, error = 0, exc.cause
                error_id = -1 if exc.example_id is None else exc.example_id
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            reports.append((shard, rows, seconds, cpu, error, error_id))
        shards, rows, seconds, cpu, errors, error_ids = zip(*reports, strict=True)
        return {
            "shard": np.asarray(shards, dtype=np.int64),
            "rows": np.asarray(rows, dtype=np.int64),
            "seconds": np.asarray(seconds, dtype=np.float64),
            "cpu_seconds": np.asarray(cpu, dtype=np.float64),
            "error": np.asarray(errors, dtype=object),
            "error_id": np.asarray(error_ids, dtype=np.int64),
        }

    def score_shard(self, shard: int) -> int:
        """Score every row of ``shard`` and commit it; returns the row count.

        Raises ``ShardError`` if the user's model or data fails or yields a non-finite value;
        nothing of that shard is written then.
        """
        import pyarrow as pa

        spec = self.spec
        start, stop = spec.shard_rows(shard)
        ids_parts: list[np.ndarray] = []
        parts: dict[str, list[np.ndarray]] = {}
        batches = self.reader.iter_batches(start, stop, spec.batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except ItemError as exc:  # the user's dataset failed on an item
                raise ShardError(spec.run, shard, exc.example_id, str(exc)) from exc
            except Exception as exc:  # the user's data failed: report it with its shard
                raise ShardError(spec.run, shard, None, f"{type(exc).__name__}: {exc}") from exc
            try:
                values = self.scorer(batch.x, batch.y)
            except Exception as exc:  # the user's model failed: find which example
                bad = self._first_failing_id(batch)
                raise ShardError(spec.run, shard, bad, f"{type(exc).__name__}: {exc}") from exc
            ids_parts.append(batch.ids)
            for name, value in values.items():
                parts.setdefault(name, []).append(value)
        ids = np.concatenate(ids_parts)
        columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        for name, value in columns.items():
            finite = np.isfinite(value.reshape(len(ids), -1)).all(axis=1)
            if not finite.all():
                bad = int(ids[np.argmin(finite)])
                raise ShardError(spec.run, shard, bad, f"metric {name!r} is not finite")
        if EMBEDDING in columns:
            self.store.write_vectors(spec.run, EMBEDDING, ids, columns[EMBEDDING], shard=shard)
        if self.outputs:
            table = pa.table({"example_id": ids, **{name: columns[name] for name in self.outputs}})
            self.store.write_table(spec.run, table, shard=shard)
        return int(len(ids))

    def _first_failing_id(self, batch: Any) -> int | None:
        """Re-run a failed mini-batch one example at a time; the first id that fails, if any."""
        for row in range(len(batch.ids)):
            y = None if batch.y is None else batch.y[row : row + 1]
            try:
                self.scorer(batch.x[row : row + 1], y)
            except Exception:  # we only need to know which example fails
                return int(batch.ids[row])
        return None
