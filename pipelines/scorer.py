"""The scorer: per-example metrics of a mini-batch, and the actor that scores whole shards.

``BatchScorer`` is the math on one mini-batch (no files, no Ray): it runs the model once and
calls each requested metric's registry entry (``pipelines.metric_registry``). ``ShardScorer`` is
what runs a shard, in this process or as a Ray actor: it builds the models and the data reader
once, scores one shard of rows per call, and commits the shard through the store's atomic
writer before it reports back. A shard is therefore either fully in the store or not at all,
which is what makes ``--resume`` exactly-once.

Every scalar column is float32 per example and every vector column float16 ``[B, d]``, keyed by
``example_id``; the metrics, their directions and columns are listed by ``winnow score --help``.
Token documents (``--token-column``) are cut into windows (``winnow.selection.lm``) and every
metric still yields one value per document (docs/scoring-job.md, "Token documents").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from winnow.pipelines.jobspec import ShardPlan
from winnow.pipelines.metric_registry import (
    Metric,
    MetricContext,
    get_metric,
    scalar_outputs,
    vector_outputs,
)
from winnow.pipelines.models import load_model
from winnow.pipelines.sources import Batch, ItemError
from winnow.pipelines.token_context import TokenContext

__all__ = ["BatchScorer", "ShardError", "ShardScorer"]


class BatchScorer:
    """Computes the requested metrics for one mini-batch.

    ``metrics``: names (looked up in the registry) or ``Metric`` entries (as an actor receives
    them). ``x``: ``[B, ...]`` tensor, ``y``: ``[B]`` targets or None. Returns
    ``{column: float32 [B]}`` for every scalar column and ``{column: float16 [B, d]}`` for
    every vector column of the metrics. The model runs once, under ``torch.inference_mode``,
    for every metric except ``needs_grad`` ones (``grad_norm``), which run after it with
    autograd on. A metric returning the wrong columns or shapes raises ``ValueError`` naming it.

    ``tokens=True``: ``x`` is int64 ``[B, T]`` token documents right-padded, with ``lengths``
    ``[B]``; they are cut into windows of at most ``max_tokens`` tokens and the model maps the
    windows ``[M, W]`` to ``[M, W, V]`` logits. ``domain``: ``[B]`` domain codes or None.
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Callable,
        metrics: Sequence[str | Metric],
        *,
        reference: Any | None = None,
        reference_loss_fn: Callable | None = None,
        embed_layer: str | None = None,
        device: str = "cpu",
        tokens: bool = False,
        max_tokens: int | None = None,
    ):
        self.model, self.loss_fn = model, loss_fn
        self.tokens, self.max_tokens = tokens, max_tokens
        self.entries = tuple(m if isinstance(m, Metric) else get_metric(m) for m in metrics)
        self.metrics = tuple(m.name for m in self.entries)
        self.reference, self.reference_loss_fn = reference, reference_loss_fn
        self.device = device
        self._captured: list[Any] = []
        self._embed: Callable | None = None
        self._embed_layer: str | None = None
        if any(m.needs_embedding for m in self.entries):
            if embed_layer is not None:
                model.get_submodule(embed_layer).register_forward_hook(self._capture)
                self._embed_layer = embed_layer
            elif callable(getattr(model, "embed", None)):
                self._embed = model.embed
            else:
                raise ValueError(
                    f"{type(model).__name__} has no embed() method; name a layer whose output "
                    "is the embedding (--embed-layer, e.g. 'head')"
                )
        # The forward also runs when the embedding comes from a hooked layer.
        self._forward = self._embed_layer is not None or any(m.needs_logits for m in self.entries)
        self._vectors = frozenset(vector_outputs(self.entries))

    def _capture(self, _module: Any, _inputs: Any, output: Any) -> None:
        # Only the inference forward's output is the embedding (not the grad_norm forward's).
        if not self._captured:
            self._captured.append(output)

    def __call__(
        self, x: Any, y: Any | None, lengths: Any | None = None, domain: Any | None = None
    ) -> dict[str, np.ndarray]:
        import torch

        x = x.to(self.device, non_blocking=True)
        y = None if y is None else y.to(self.device, non_blocking=True)
        codes = None
        if domain is not None:
            codes = torch.as_tensor(domain, dtype=torch.float32, device=self.device)
        windows = None
        if self.tokens:
            from winnow.selection.lm import make_windows

            if lengths is None:
                raise ValueError("token documents need their lengths")
            windows = make_windows(x, torch.as_tensor(lengths).to(self.device), self.max_tokens)
            inputs, targets, batch = windows.tokens, windows.targets, windows.num_documents
            ctx: MetricContext = TokenContext(
                x=inputs,
                model=self.model,
                loss_fn=self.loss_fn,
                reference=self.reference,
                reference_loss_fn=self.reference_loss_fn,
                domain=codes,
                windows=windows,
                max_tokens=self.max_tokens,
            )
        else:
            inputs, targets, batch = x, y, len(x)
            ctx = MetricContext(
                x=x,
                model=self.model,
                loss_fn=self.loss_fn,
                reference=self.reference,
                reference_loss_fn=self.reference_loss_fn,
                domain=codes,
            )
        out: dict[str, Any] = {}
        self._captured.clear()
        try:
            with torch.inference_mode():
                logits = self.model(inputs) if self._forward else None
                if windows is not None and logits is not None:
                    from winnow.selection.lm import lm_logits

                    logits = lm_logits(logits, windows)
                embedding = None
                if self._embed_layer is not None:
                    embedding = self._captured[0]
                elif self._embed is not None:
                    embedding = self._embed(inputs)
                if embedding is not None:
                    ctx.embedding = self._pool(embedding, windows)
                for metric in self.entries:
                    if not metric.needs_grad:
                        out.update(self._columns(metric, metric.fn(logits, targets, ctx), batch))
            for metric in self.entries:
                if metric.needs_grad:
                    outputs = logits if metric.needs_logits else None
                    out.update(self._columns(metric, metric.fn(outputs, targets, ctx), batch))
        finally:
            self._captured.clear()
        result = {}
        for name, value in out.items():
            array = torch.as_tensor(value).detach().to("cpu")
            dtype = torch.float16 if name in self._vectors else torch.float32
            result[name] = array.to(dtype).numpy()
        return result

    @staticmethod
    def _pool(embedding: Any, windows: Any) -> Any:
        """``[B, d]``: flattened per example, or for token documents the mean over each
        document's tokens (``selection.lm.pool_windows``; a layer's tuple output: its first)."""
        if windows is None:
            return embedding.flatten(1)
        from winnow.selection.lm import pool_windows

        if isinstance(embedding, tuple | list):
            embedding = embedding[0]
        return pool_windows(embedding, windows)

    def _columns(self, metric: Metric, value: Any, batch: int) -> dict[str, Any]:
        """``{column: tensor}`` of one metric's result, checked against its declared columns."""
        import torch

        if not isinstance(value, Mapping):
            if len(metric.columns) != 1:
                raise ValueError(
                    f"metric {metric.name!r} returned one tensor; expected a mapping with the "
                    f"columns {list(metric.columns)}"
                )
            value = {metric.columns[0]: value}
        if set(value) != set(metric.columns):
            raise ValueError(
                f"metric {metric.name!r} returned columns {sorted(value)}; expected "
                f"{sorted(metric.columns)}"
            )
        columns = {}
        for name, column in value.items():
            column = torch.as_tensor(column)
            if name in metric.vectors:
                ok = column.ndim >= 2 and column.shape[0] == batch
                expected = f"[{batch}, d]"
                column = column.flatten(1) if ok else column
            else:
                ok = tuple(column.shape) == (batch,)
                expected = f"[{batch}]"
            if not ok:
                raise ValueError(
                    f"metric {metric.name!r}: column {name!r} has shape {list(column.shape)}; "
                    f"expected {expected}"
                )
            columns[name] = column
        return columns


class ShardError(RuntimeError):
    """A user model (or data) failed on a shard; names the shard and the first failing id."""

    def __init__(self, run: str, shard: int, example_id: int | None, cause: str):
        self.run, self.shard, self.example_id, self.cause = run, shard, example_id, cause
        where = "" if example_id is None else f", first failing example_id {example_id}"
        super().__init__(f"run {run!r}: shard {shard} failed{where}: {cause}")

    def __reduce__(self):
        return (type(self), (self.run, self.shard, self.example_id, self.cause))


class ShardScorer:
    """Scores and commits whole shards; one per process (the inline loop, or one Ray actor).

    ``run(shard)`` returns a report: ``shard``, ``rows``, ``seconds`` (wall), ``cpu_seconds``
    (this process's CPU time, all threads), ``error`` (the cause; "" when committed),
    ``error_id`` (first failing ``example_id``, -1 if unknown). A failing user model is reported,
    not raised, so the driver can name the shard and id in one clear error; with
    ``report_setup_errors``, so is a failure to build the model or the data reader.
    ``threads``: torch's intra-op thread count for this process (None: leave it as it is).
    """

    def __init__(
        self, plan: ShardPlan, *, report_setup_errors: bool = False, threads: int | None = None
    ):
        self.plan = plan
        self._setup_error = ""
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
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

    def ready(self) -> dict[str, Any]:
        """Where this scorer runs: ``threads`` (torch's thread count) and ``node`` (the Ray
        node's id; "" outside Ray). An actor answers once it is built (start-up timing)."""
        import torch

        ray = sys.modules.get("ray")
        node = ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else ""
        return {"threads": torch.get_num_threads(), "node": node}

    def _setup(self) -> None:
        from winnow.store import ScoreStore

        job = self.plan.job
        model, loss_fn = load_model(job.model, job.device)
        reference = ref_loss = None
        if job.reference is not None:
            reference, ref_loss = load_model(job.reference, job.device)
        # The job's resolved entries, not this process's registry: a metric registered in the
        # driver need not be registered here.
        self.scorer = BatchScorer(
            model,
            loss_fn,
            job.entries,
            reference=reference,
            reference_loss_fn=ref_loss,
            embed_layer=job.embed_layer,
            device=job.device,
            tokens=job.token_column is not None,
            max_tokens=job.max_tokens,
        )
        self.reader = job.data.open()
        self.store = ScoreStore(job.store)
        self.outputs = scalar_outputs(job.entries)
        self.vectors = vector_outputs(job.entries)

    def run(self, shard: int) -> dict[str, Any]:
        """Score and commit ``shard``; the report (see the class), never an exception."""
        started, cpu_started = time.perf_counter(), time.process_time()
        rows, error, error_id = 0, self.setup_error, -1
        if not error:
            try:
                rows = self.score_shard(shard)
            except ShardError as exc:
                error = exc.cause
                error_id = -1 if exc.example_id is None else exc.example_id
        return {
            "shard": shard,
            "rows": rows,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "error": error,
            "error_id": error_id,
        }

    def score_shard(self, shard: int) -> int:
        """Score every row of ``shard`` and commit it; returns the row count.

        Raises ``ShardError`` if the user's model or data fails or yields a non-finite value;
        nothing of that shard is written then.
        """
        import pyarrow as pa

        plan, run = self.plan, self.plan.job.run
        start, stop = plan.shard_rows(shard)
        ids_parts: list[np.ndarray] = []
        parts: dict[str, list[np.ndarray]] = {}
        batches = self.reader.iter_batches(start, stop, plan.job.batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except ItemError as exc:  # the user's dataset failed on an item
                raise ShardError(run, shard, exc.example_id, str(exc)) from exc
            except Exception as exc:  # the user's data failed: report it with its shard
                raise ShardError(run, shard, None, f"{type(exc).__name__}: {exc}") from exc
            codes = self._domain_codes(batch, shard)
            try:
                values = self.scorer(batch.x, batch.y, batch.lengths, codes)
            except Exception as exc:  # the user's model failed: find which example
                bad = self._first_failing_id(batch, codes)
                raise ShardError(run, shard, bad, f"{type(exc).__name__}: {exc}") from exc
            ids_parts.append(batch.ids)
            for name, value in values.items():
                parts.setdefault(name, []).append(value)
        ids = np.concatenate(ids_parts)
        columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        for name, value in columns.items():
            finite = np.isfinite(value.reshape(len(ids), -1)).all(axis=1)
            if not finite.all():
                bad = int(ids[np.argmin(finite)])
                raise ShardError(run, shard, bad, f"metric {name!r} is not finite")
        # Vectors first: the scalar files mark the shard as committed (see job._completed_shards).
        for name in self.vectors:
            self.store.write_vectors(run, name, ids, columns[name], shard=shard)
        table = pa.table({"example_id": ids, **{name: columns[name] for name in self.outputs}})
        self.store.write_table(run, table, shard=shard)
        return int(len(ids))

    def _domain_codes(self, batch: Batch, shard: int) -> np.ndarray | None:
        """float32 ``[B]`` domain codes: integers as they are, strings as their index in the
        plan's ``domain_names`` (a name not among them means the data changed)."""
        if batch.domain is None:
            return None
        names = self.plan.domain_names
        if names is None:
            return batch.domain.astype(np.float32)
        known = np.asarray(names, dtype=object)
        codes = np.searchsorted(known, batch.domain).clip(0, len(known) - 1)
        unknown = known[codes] != batch.domain
        if unknown.any():
            row = int(np.argmax(unknown))
            raise ShardError(
                self.plan.job.run,
                shard,
                int(batch.ids[row]),
                f"domain {batch.domain[row]!r} is not among the domains found when the job "
                f"began {list(names)[:10]}: the data changed",
            )
        return codes.astype(np.float32)

    def _first_failing_id(self, batch: Batch, codes: np.ndarray | None) -> int | None:
        """Re-run a failed mini-batch one example at a time; the first id that fails, if any."""
        for row in range(len(batch.ids)):
            one = slice(row, row + 1)
            y = None if batch.y is None else batch.y[one]
            lengths = None if batch.lengths is None else batch.lengths[one]
            try:
                self.scorer(batch.x[one], y, lengths, None if codes is None else codes[one])
            except Exception:  # we only need to know which example fails
                return int(batch.ids[row])
        return None
