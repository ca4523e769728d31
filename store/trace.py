"""Training-time trace: what samplers, selectors and monitors decided, written into the store.

Samplers receive a ``TraceWriter`` from the training script and call it duck-typed; they never
import ``store``. Two shapes of decisions (docs/traces.md):

- per epoch (epoch samplers): ``write(epoch, ...)``, one file per (run, epoch, shard) at
  ``trace/run=R/epoch=E/shard-S.parquet`` with ``(example_id, loss, kept, weight)``; rewriting an
  epoch replaces it;
- per step (in-step selectors, batch samplers, the noise-scale monitor): ``write_steps``,
  ``write_mixture`` and ``write_noise_scale`` append one file per flush under
  ``<kind>/run=R/start=S/`` (``store.steps``); ``discard(kind, step)`` removes this shard's files
  from a resumed step on.

SQL sees both shapes in one ``trace`` view, plus ``mixture`` and ``noise_scale``. The run gets a
manifest: shard 0 begins it (status ``running``, kind ``trace`` unless the run already has one)
with its first write, and :meth:`TraceWriter.close` finishes it (recounted rows, ``complete``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from winnow.store.files import (
    MIXTURE_SCHEMA,
    NOISE_SCALE_SCHEMA,
    STEPS_SCHEMA,
    TRACE_SCHEMA,
    write_parquet,
)
from winnow.store.layout import StoreFS, check_name, check_nonnegative_int, shard_filename
from winnow.store.steps import STEP_KINDS, discard_from, write_step_file
from winnow.store.validation import as_numpy, check_ids, check_same_length, check_values

__all__ = ["RunLifecycle", "TraceWriter", "trace_path"]

_FLUSH_STEPS = 1000
_FLUSH_BYTES = 64 << 20


def trace_path(sfs: StoreFS, run: str, epoch: int, shard: int) -> str:
    return sfs.path("trace", f"run={run}", f"epoch={epoch}", shard_filename(shard))


class RunLifecycle(Protocol):
    """What a writer needs of the store's manifests (``ScoreStore`` provides it)."""

    def trace_begun(self, run: str) -> None: ...

    def trace_finished(self, run: str, status: str) -> dict[str, Any]: ...


class TraceWriter:
    """Writes one shard's training decisions into the store (see the module docstring).

    Args:
        sfs: the store's filesystem (``ScoreStore.trace_writer`` builds this object).
        run: run name.
        shard: this writer's shard, typically the DDP rank, so ranks never overwrite each other.
            Only shard 0 writes the run's manifest.
        flush_steps, flush_bytes: how often a sampler that buffers per-step records hands them
            over (read duck-typed by the sampler; the writer itself writes what it is given).
        lifecycle: begins and finishes the run's manifest; ``None`` writes no manifest.
    """

    def __init__(
        self,
        sfs: StoreFS,
        run: str,
        *,
        shard: int = 0,
        flush_steps: int = _FLUSH_STEPS,
        flush_bytes: int = _FLUSH_BYTES,
        lifecycle: RunLifecycle | None = None,
    ) -> None:
        self._sfs = sfs
        self.run = check_name(run, "run")
        self.shard = check_nonnegative_int(shard, "shard")
        self.flush_steps = _positive(flush_steps, "flush_steps")
        self.flush_bytes = _positive(flush_bytes, "flush_bytes")
        self._lifecycle = lifecycle
        self._begun = False

    def __repr__(self) -> str:
        return f"TraceWriter(run={self.run!r}, shard={self.shard})"

    # ------------------------------------------------------------------------- lifecycle
    def _begin(self) -> None:
        if not self._begun and self.shard == 0 and self._lifecycle is not None:
            self._lifecycle.trace_begun(self.run)
        self._begun = True

    def close(self, status: str = "complete") -> dict[str, Any] | None:
        """Finish the run's manifest (shard 0 only): rows recounted from every shard's files,
        ``status`` recorded. Close shard 0 last under DDP (after a barrier), so it counts the
        other ranks' files. A later write begins the run again. Returns the manifest (or None
        for another shard)."""
        self._begun = False
        if self.shard != 0 or self._lifecycle is None:
            return None
        return self._lifecycle.trace_finished(self.run, status)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close("complete" if exc_type is None else "failed")

    # ------------------------------------------------------------------------- per epoch
    def write(
        self,
        epoch: int,
        example_id: object,
        kept: object,
        weight: object | None = None,
        loss: object | None = None,
    ) -> int:
        """Record one epoch's decisions atomically; return the number of rows.

        Args:
            epoch: non-negative epoch number.
            example_id: [n] integer ids (numpy, list or tensor on any device), unique.
            kept: [n] bool, True where the example is trained on this epoch.
            weight: [n] float loss weight (finite); None means 1.0 for kept, 0.0 for pruned.
            loss: [n] float latest known loss per example (NaN allowed = unknown); None = unknown.
        """
        epoch = check_nonnegative_int(epoch, "epoch")
        ids = check_ids(example_id)
        kept_arr = _as_kept(kept)
        weight_arr = _weights(weight, kept_arr)
        loss_arr = _optional_values(loss, "loss", ids.size)
        check_same_length(example_id=ids, kept=kept_arr, weight=weight_arr, loss=loss_arr)
        table = pa.Table.from_arrays(
            [pa.array(ids), pa.array(loss_arr), pa.array(kept_arr), pa.array(weight_arr)],
            schema=TRACE_SCHEMA,
        )
        self._begin()
        write_parquet(self._sfs, trace_path(self._sfs, self.run, epoch, self.shard), table)
        return ids.size

    # ------------------------------------------------------------------------- per step
    def write_steps(
        self,
        step: object,
        example_id: object,
        kept: object,
        weight: object | None = None,
        score: object | None = None,
        loss: object | None = None,
        epoch: object | None = None,
    ) -> int:
        """Append per-step selection records (one row per candidate) as one file; return n.

        Args:
            step: [n] non-negative, non-decreasing step of each row (the file is named by the
                first); the rows of one step are that step's candidates.
            example_id: [n] integer ids; an id may repeat (once per step it was a candidate).
            kept: [n] bool, True where the candidate was trained on.
            weight: [n] float total loss weight of the row in its step (0 when dropped; a row
                drawn twice counts twice); None means 1.0 for kept, 0.0 for dropped.
            score: [n] float the score the choice ranked (NaN = none); None = unknown.
            loss: [n] float the learner's loss (NaN = not known); None = unknown.
            epoch: None (unknown), one int for every row, or [n] non-negative ints.
        """
        steps = _steps(step)
        ids = check_ids(example_id, unique=False)
        kept_arr = _as_kept(kept)
        weight_arr = _weights(weight, kept_arr)
        score_arr = _optional_values(score, "score", ids.size)
        loss_arr = _optional_values(loss, "loss", ids.size)
        epoch_arr = _epochs(epoch, ids.size)
        check_same_length(
            step=steps,
            example_id=ids,
            kept=kept_arr,
            weight=weight_arr,
            score=score_arr,
            loss=loss_arr,
            epoch=epoch_arr,
        )
        columns = [steps, epoch_arr, ids, score_arr, loss_arr, kept_arr, weight_arr]
        return self._append("steps", STEPS_SCHEMA, columns)

    def write_mixture(self, step: object, domain: object, pi: object, drawn: object) -> int:
        """Append a domain mixture: one row per (step, domain) with its probability ``pi``
        (finite, in [0, 1]) and whether the step drew that domain; return n."""
        steps = _steps(step)
        domains = check_ids(domain, "domain", unique=False)
        pis = _float64(pi, "pi", allow_nan=False)
        if pis.size and (pis.min() < 0.0 or pis.max() > 1.0):
            raise ValueError(f"pi must be probabilities in [0, 1], got [{pis.min()}, {pis.max()}]")
        drawn_arr = _as_kept(drawn, "drawn")
        check_same_length(step=steps, domain=domains, pi=pis, drawn=drawn_arr)
        columns = [steps, domains.astype(np.int32), pis, drawn_arr]
        return self._append("mixture", MIXTURE_SCHEMA, columns)

    def write_noise_scale(
        self,
        step: object,
        b_simple: object,
        grad_sq: object,
        trace_cov: object,
        batch_size: object,
        estimator: str | object,
    ) -> int:
        """Append gradient-noise-scale rows (smoothed estimates at ``step``; NaN/inf allowed:
        ``b_simple`` is inf where ``grad_sq <= 0``), the batch size they refer to, and the
        estimator's name (one string, or one per row); return n."""
        steps = _steps(step)
        values = {
            name: _float64(v, name, allow_nan=True)
            for name, v in (("b_simple", b_simple), ("grad_sq", grad_sq), ("trace_cov", trace_cov))
        }
        sizes = check_ids(batch_size, "batch_size", unique=False)
        if isinstance(estimator, str):
            names = np.full(steps.size, estimator, dtype=object)
        else:
            names = as_numpy(estimator, "estimator").astype(object)
        if not all(isinstance(n, str) and n for n in names):
            raise TypeError("estimator must be a non-empty string (or one per row)")
        check_same_length(step=steps, batch_size=sizes, estimator=names, **values)
        columns = [steps, *values.values(), sizes, names]
        return self._append("noise_scale", NOISE_SCALE_SCHEMA, columns)

    def discard(self, kind: str, from_step: int) -> int:
        """Remove this shard's ``kind`` files (``steps``, ``mixture``, ``noise_scale``) from
        ``from_step`` on, before a resumed run writes those steps again; returns files removed."""
        if kind not in STEP_KINDS:
            raise ValueError(f"kind must be one of {sorted(STEP_KINDS)}, got {kind!r}")
        from_step = check_nonnegative_int(from_step, "from_step")
        return discard_from(self._sfs, kind, self.run, self.shard, from_step)

    def _append(self, kind: str, schema: pa.Schema, columns: list[np.ndarray]) -> int:
        n = len(columns[0])
        if n == 0:
            return 0
        arrays = [c if isinstance(c, pa.Array) else pa.array(c) for c in columns]
        table = pa.Table.from_arrays(arrays, schema=schema)
        self._begin()
        write_step_file(self._sfs, kind, self.run, self.shard, table)
        return n


def _positive(value: object, what: str) -> int:
    number = check_nonnegative_int(value, what)
    if number == 0:
        raise ValueError(f"{what} must be >= 1, got 0")
    return number


def _as_kept(kept: object, what: str = "kept") -> np.ndarray:
    arr = as_numpy(kept, what)
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise TypeError(f"{what} must be booleans (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(np.bool_)
    return arr


def _weights(weight: object | None, kept: np.ndarray) -> np.ndarray:
    if weight is None:
        return kept.astype(np.float32)
    return check_values(weight, "weight", allow_nan=False)


def _optional_values(values: object | None, what: str, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan, dtype=np.float32)
    return check_values(values, what, allow_nan=True)


def _float64(values: object, what: str, *, allow_nan: bool) -> np.ndarray:
    arr = as_numpy(values, what)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not allow_nan and not np.isfinite(arr).all():
        raise ValueError(f"{what} has {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    return arr


def _steps(step: object) -> np.ndarray:
    steps = check_ids(step, "step", unique=False)
    if steps.size > 1 and not bool(np.all(steps[1:] >= steps[:-1])):
        raise ValueError("step must be non-decreasing within one write (rows in step order)")
    return steps


def _epochs(epoch: object | None, n: int) -> pa.Array:
    if epoch is None:
        return pa.nulls(n, pa.int32())
    if isinstance(epoch, int | np.integer) and not isinstance(epoch, bool):
        return pa.array(np.full(n, check_nonnegative_int(epoch, "epoch"), dtype=np.int32))
    return pa.array(check_ids(epoch, "epoch", unique=False).astype(np.int32))
