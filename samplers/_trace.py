"""The per-step trace of in-step selectors and batch samplers, kept off the hot path.

A selector or batch sampler that was given a trace writer (``trace=ScoreStore(root)
.trace_writer(run)``, duck-typed: ``write_steps``, optionally ``write_mixture``, ``discard``,
``close``, ``flush_steps``, ``flush_bytes``) records each step's candidates here: their ids
(host), and their scores, losses, kept flags and weights as **one tensor on the scores' device**.
Nothing is copied to the host during the step, so a GPU loop never waits for the trace. Every
``flush_steps`` recorded steps or ``flush_bytes`` bytes (the writer's, 1000 steps and 64 MiB by
default), at a checkpoint (``state_dict``), at ``close`` and when the owner is garbage
collected or the interpreter exits, the buffer is concatenated on the device, copied to the host
once and handed to the writer as one file. ``every=k`` records 1 step in ``k`` (the steps
divisible by ``k``) for long runs.

Resume: ``resume(step)`` drops what was buffered and makes the next flush first remove this
shard's files from ``step`` on, so the steps a resumed run replays are stored once. A fresh
trace does the same from its first recorded step: a rerun replaces the old trace of its run and
shard. Give every selector its own run (or shard). See docs/traces.md.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np
import torch

__all__ = ["StepTrace", "check_trace_writer"]

_FLUSH_STEPS = 1000
_FLUSH_BYTES = 64 << 20
_ROW_BYTES = 24  # id (8) + score, loss, kept, weight (4 each)


def check_trace_writer(writer: Any, needs: str = "write_steps") -> Any:
    """``writer`` if it has a callable ``needs`` method, else ``TypeError``."""
    if not callable(getattr(writer, needs, None)):
        raise TypeError(
            f"trace must be a trace writer with a {needs}(...) method (e.g. "
            f"ScoreStore(root).trace_writer(run)), got {type(writer).__name__}"
        )
    return writer


def _check_every(every: Any) -> int:
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise ValueError(f"trace_every must be an int >= 1, got {every!r}")
    return int(every)


class StepTrace:
    """Buffer of per-step records for one writer (see the module docstring).

    Args:
        writer: the trace writer.
        every: record the steps divisible by ``every``.
        owner: the selector or sampler; the buffer is flushed when it is garbage collected or
            the interpreter exits.
    """

    def __init__(self, writer: Any, *, every: int = 1, owner: Any = None):
        self.writer = check_trace_writer(writer)
        self.every = _check_every(every)
        self.flush_steps = int(getattr(writer, "flush_steps", _FLUSH_STEPS))
        self.flush_bytes = int(getattr(writer, "flush_bytes", _FLUSH_BYTES))
        self._steps: list[int] = []
        self._ids: list[np.ndarray] = []
        self._blocks: list[torch.Tensor] = []  # [4, B]: score, loss, kept, weight
        self._epochs: list[int | None] = []
        self._mixture: list[tuple[int, np.ndarray, int]] = []
        self._bytes = 0
        self._stale_from: int | None = None  # store rows from here on belong to a dead run
        self._fresh = {"steps": True, "mixture": True}
        if owner is not None:
            weakref.finalize(owner, self.flush)

    def wants(self, step: int) -> bool:
        """Whether ``step`` is one of the recorded steps."""
        return step % self.every == 0

    @property
    def buffered_steps(self) -> int:
        """Steps recorded and not yet handed to the writer."""
        return len(self._steps)

    @property
    def buffer(self) -> list[torch.Tensor]:
        """The buffered ``[4, B]`` blocks (score, loss, kept, weight), on their devices."""
        return list(self._blocks)

    # ------------------------------------------------------------------------- recording
    def record(
        self,
        step: int,
        ids: np.ndarray | None,
        score: torch.Tensor,
        rows: torch.Tensor,
        weights: torch.Tensor,
        *,
        loss: torch.Tensor | None = None,
        epoch: int | None = None,
    ) -> None:
        """One selection: ``B`` candidates (``ids`` host int64, ``score`` and ``loss`` ``[B]``
        on a device), the ``rows`` chosen (``[k]``, repeats allowed) and their ``weights``.

        A candidate's weight is the sum of its picks' weights (0 when dropped). Device ops
        only: no host sync.
        """
        if ids is None:
            raise ValueError(
                "a traced selector needs the example ids of the super-batch: pass ids to select"
            )
        n = score.shape[0]
        device = score.device
        kept = torch.zeros(n, dtype=torch.float32, device=device)
        kept.index_fill_(0, rows, 1.0)
        weight = torch.zeros(n, dtype=torch.float32, device=device)
        weight.index_add_(0, rows, weights.to(torch.float32))
        if loss is None:
            loss = torch.full((n,), math.nan, dtype=torch.float32, device=device)
        block = torch.stack([score.detach().float(), loss.detach().float(), kept, weight])
        self._append(step, ids, block, epoch)

    def record_batch(
        self,
        step: int,
        ids: np.ndarray,
        loss: torch.Tensor,
        *,
        score: float = math.nan,
        epoch: int | None = None,
    ) -> None:
        """A batch trained whole (hard batches, ODM): every row kept with weight 1, the
        per-example ``loss`` ``[b]`` on its device and one ``score`` for the batch."""
        n = loss.shape[0]
        ones = torch.ones(n, dtype=torch.float32, device=loss.device)
        block = torch.stack([ones * float(score), loss.detach().float(), ones, ones])
        self._append(step, ids, block, epoch)

    def record_mixture(self, step: int, pi: np.ndarray, domain: int) -> None:
        """The mixture ``pi`` ``[K]`` (host) a step drew its ``domain`` from."""
        check_trace_writer(self.writer, "write_mixture")
        self._mixture.append((step, np.asarray(pi, dtype=np.float64).copy(), int(domain)))

    def _append(self, step: int, ids: np.ndarray, block: torch.Tensor, epoch: int | None) -> None:
        ids = np.array(ids, dtype=np.int64)  # a copy: the caller's array may be reused
        if ids.shape != (block.shape[1],):
            raise ValueError(f"got {ids.shape[0]} ids for {block.shape[1]} candidates")
        self._steps.append(int(step))
        self._ids.append(ids)
        self._blocks.append(block)
        self._epochs.append(epoch)
        self._bytes += _ROW_BYTES * ids.shape[0]
        if len(self._steps) >= self.flush_steps or self._bytes >= self.flush_bytes:
            self.flush()

    # ------------------------------------------------------------------------- flushing
    def flush(self) -> None:
        """Hand every buffered record to the writer: one host copy, one file per kind."""
        if self._steps:
            steps, ids, blocks, epochs = self._steps, self._ids, self._blocks, self._epochs
            self._steps, self._ids, self._blocks, self._epochs = [], [], [], []
            self._bytes = 0
            device = blocks[0].device
            data = torch.cat([b.to(device) for b in blocks], dim=1).cpu().numpy()
            lengths = [i.shape[0] for i in ids]
            epoch = None
            if all(e is not None for e in epochs):
                epoch = np.repeat(np.asarray(epochs, dtype=np.int64), lengths)
            self._discard_stale("steps", steps[0])
            self.writer.write_steps(
                np.repeat(np.asarray(steps, dtype=np.int64), lengths),
                np.concatenate(ids),
                data[2] > 0.5,
                weight=data[3],
                score=data[0],
                loss=data[1],
                epoch=epoch,
            )
        if self._mixture:
            rows, self._mixture = self._mixture, []
            k = rows[0][1].shape[0]
            self._discard_stale("mixture", rows[0][0])
            self.writer.write_mixture(
                np.repeat([r[0] for r in rows], k),
                np.tile(np.arange(k), len(rows)),
                np.concatenate([r[1] for r in rows]),
                np.concatenate([np.arange(k) == r[2] for r in rows]),
            )

    def _discard_stale(self, kind: str, first_step: int) -> None:
        if not self._fresh[kind]:
            return
        self._fresh[kind] = False
        discard = getattr(self.writer, "discard", None)
        if callable(discard):
            start = first_step if self._stale_from is None else min(first_step, self._stale_from)
            discard(kind, start)

    def resume(self, step: int) -> None:
        """Continue from a checkpoint at ``step``: buffered records are dropped, and the next
        flush first removes this shard's stored records from ``step`` on."""
        self._steps, self._ids, self._blocks, self._epochs = [], [], [], []
        self._mixture = []
        self._bytes = 0
        self._stale_from = int(step)
        self._fresh = {"steps": True, "mixture": True}

    def close(self) -> None:
        """Flush, then close the writer (which finishes the run's manifest)."""
        self.flush()
        close = getattr(self.writer, "close", None)
        if callable(close):
            close()
