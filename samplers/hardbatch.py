"""Hard batches (DyBAT, docs/hard-batch.md) as a ``batch_sampler`` over a fixed partition.

The data are shuffled once (seeded) and cut into ``n_b = floor(N / b)`` fixed mini-batches. A
warm-up pass trains every batch once, in order; the training loop reports each batch's
per-example losses from the forward *before* the update through :meth:`HardBatchSampler.update`,
and the batch's score is their mean. Then rounds follow: each round takes the
``k = max(1, floor(delta n_b))`` batches with the highest (stale) scores and trains them in
ascending batch order, overwriting their scores; unchosen batches keep stale scores, and as the
trained ones' losses fall they rotate back in. The run stops after exactly ``E n_b`` steps, as
many as ``E`` plain epochs: steps move toward hard batches, none are saved.

Feedback and prefetch: the dataset returns each item's ``example_id`` and the loop calls
``sampler.update(ids, losses)`` with the ids of the batch it trained on. The sampler keeps a short
queue of the batches it has yielded whose losses have not come back yet and matches the ids
against it (O(b) per call, no ``[N]`` inverse map), so a ``DataLoader`` that runs ahead
(``num_workers > 0``) is fine. A round is chosen when its first batch is requested: with the
loader ``p`` batches ahead, up to ``p`` batches of the previous round still count with their
previous score (one round staler); a batch never scored yet counts as the hardest. With
``num_workers=0`` the loader requests a batch only after the previous step, so nothing is stale.
Losses stay on their device until a round is chosen (one host sync per round, not per step).

Iteration: each ``iter(sampler)`` yields one "epoch equivalent" of ``n_b`` steps (the last may be
shorter), so ``for epoch in range(E): for batch in loader:`` runs the whole budget; ``len`` is
that epoch's length and :meth:`total_steps` = ``E n_b`` is for LR schedulers.

DDP: one global partition (same seed on every rank) with global batch size ``b``; each rank yields
its ``DistributedSampler``-style slice ``batch[rank::world]`` of every scheduled batch, and
:meth:`update` only records this rank's slice. When a round is chosen, the slices' loss sums
and counts of the whole round are all-reduced in one round of collectives (two small
all-reduces, whatever the round's length), so every rank scores each whole batch and all ranks
keep identical tables and schedules. Call ``update`` on every rank for every batch, in the order
the batches were yielded; round choice, :meth:`batch_losses` and :meth:`state_dict` are then
collectives.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from winnow.samplers._dist import (
    check_rank_world,
    is_distributed,
    reduce_batch_means,
    resolve_rank_world,
    shard,
)
from winnow.samplers._trace import StepTrace
from winnow.samplers._wrapping import refuse_resharding
from winnow.samplers.epoch import check_int
from winnow.selection._state import check_state, make_state, state_array

__all__ = ["HardBatchSampler"]

_STATE_VERSION = 2


class HardBatchSampler(Sampler[list[int]]):
    """DyBAT's hard-batch schedule as a ``DataLoader(batch_sampler=...)``.

    Args:
        num_examples: ``N``; ids are ``0..N-1``.
        batch_size: global mini-batch size ``b`` (divisible by the world size).
        delta: fraction of batches retrained per round, in ``(0, 1]`` (1 = plain epochs over the
            fixed partition).
        num_epochs: ``E``; the run is exactly ``E * floor(N / b)`` steps.
        seed: seeds the one-time shuffle that fixes the partition.
        rank, world_size: default from ``torch.distributed`` when a batch is first sliced (so a
            sampler built before the process group starts follows it), else ``(0, 1)``.
        trace, trace_every: a trace writer recording every step's batch as :meth:`update`
            receives it (ids, per-example losses, the batch's score), 1 step in
            ``trace_every`` (docs/traces.md).

    Under Lightning's DDP pass ``Trainer(use_distributed_sampler=False)``: Lightning rebuilds
    any custom batch sampler with its own sampler inside (a new object, which would not see the
    loop's ``update`` calls) or refuses it (docs/frameworks.md).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        delta: float,
        num_epochs: int,
        seed: int = 0,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        trace: Any = None,
        trace_every: int = 1,
    ):
        num_examples = check_int("num_examples", num_examples, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        num_epochs = check_int("num_epochs", num_epochs, minimum=1)
        seed = check_int("seed", seed, minimum=0)
        if batch_size > num_examples:
            raise ValueError(
                f"batch_size {batch_size} is larger than the dataset ({num_examples} examples)"
            )
        if isinstance(delta, bool) or not 0.0 < delta <= 1.0:
            raise ValueError(f"delta must be in (0, 1], got {delta!r}")
        check_rank_world(rank, world_size)
        self._rank_arg, self._world_arg = rank, world_size
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.delta = float(delta)
        self.num_epochs = num_epochs
        self.seed = seed
        self.num_batches = self.num_examples // self.batch_size
        self.batches_per_round = max(1, int(np.floor(self.delta * self.num_batches + 1e-9)))
        dtype = np.int32 if self.num_examples < 2**31 else np.int64
        self._perm = np.random.default_rng(self.seed).permutation(self.num_examples).astype(dtype)
        self._losses = np.full(self.num_batches, np.nan)
        self._loss_step = np.full(self.num_batches, -1, dtype=np.int64)
        # (batch, step, sum of this rank's slice losses on their device, slice size)
        self._unflushed: list[tuple[int, int, torch.Tensor, int]] = []
        self._round = np.arange(self.num_batches, dtype=np.int64)  # warm-up: every batch
        self._round_pos = 0
        self._rounds_started = 1
        self._sched_step = 0  # batches the schedule has produced
        self._emitted = 0  # steps handed out (after a resume: fed back + replayed)
        self._replay: deque[int] = deque()
        self._pending: deque[tuple[int, int]] = deque()  # (step, batch) awaiting losses
        self._trace = None if trace is None else StepTrace(trace, every=trace_every, owner=self)
        if world_size is not None or is_distributed():
            self._layout()  # a world size known now is checked against batch_size now

    @property
    def rank(self) -> int:
        """This process's rank: as given, else the process group's now, else 0."""
        return self._layout()[0]

    @property
    def world_size(self) -> int:
        """Ranks sharing every batch: as given, else the process group's now, else 1."""
        return self._layout()[1]

    def _layout(self) -> tuple[int, int]:
        rank, world = resolve_rank_world(self._rank_arg, self._world_arg)
        if self.batch_size % world:
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by world_size {world} "
                "(each rank takes an equal slice of every batch)"
            )
        return rank, world

    # -- plan ---------------------------------------------------------------------------------
    def total_steps(
        self,
        batch_size: int | None = None,
        num_epochs: int | None = None,
        *,
        drop_last: bool = False,
    ) -> int:
        """Optimiser steps of ``num_epochs`` epoch equivalents (default the run's ``E``):
        ``num_epochs * n_b``, the same on every rank, exact.

        The signature is every sampler's; the batch size is fixed at construction, so a
        ``batch_size`` other than the sampler's (global) one is refused, and ``drop_last`` has
        no effect (the partition has only full batches).
        """
        if batch_size is not None and batch_size != self.batch_size:
            raise ValueError(
                f"HardBatchSampler yields batches of {self.batch_size} (global); got "
                f"batch_size={batch_size!r}"
            )
        if num_epochs is None:
            num_epochs = self.num_epochs
        return check_int("num_epochs", num_epochs, minimum=0) * self.num_batches

    def epoch_steps(
        self,
        batch_size: int | None = None,
        num_epochs: int | None = None,
        *,
        drop_last: bool = False,
    ) -> list[int]:
        """:meth:`total_steps` epoch equivalent by epoch equivalent: ``n_b`` each."""
        total = self.total_steps(batch_size, num_epochs, drop_last=drop_last)
        return [self.num_batches] * (total // self.num_batches)

    @property
    def _run_steps(self) -> int:
        return self.num_epochs * self.num_batches

    @property
    def rounds_started(self) -> int:
        """Rounds begun so far; the warm-up pass is round 1."""
        return self._rounds_started

    @property
    def steps_done(self) -> int:
        """Steps yielded so far (including any still in the loader's prefetch queue)."""
        return self._emitted

    def batch_ids(self, batch: int) -> np.ndarray:
        """The global ids of fixed batch ``batch`` (all ranks), int64 ``[b]``."""
        if not 0 <= batch < self.num_batches:
            raise ValueError(f"batch must be in [0, {self.num_batches}), got {batch!r}")
        lo = batch * self.batch_size
        return self._perm[lo : lo + self.batch_size].astype(np.int64)

    def _local_ids(self, batch: int) -> np.ndarray:
        return shard(self.batch_ids(batch), *self._layout(), drop_last=True)

    def _epoch_end(self) -> int:
        epoch = self._emitted // self.num_batches
        return min(self._run_steps, (epoch + 1) * self.num_batches)

    def __len__(self) -> int:
        return max(0, self._epoch_end() - self._emitted)

    def set_epoch(self, epoch: int) -> None:
        """Check that ``epoch`` is the epoch equivalent the next ``iter()`` continues.

        The schedule depends on the losses fed back, so it cannot jump: epochs run in order.
        """
        current = self._emitted // self.num_batches
        if epoch != current:
            raise ValueError(
                f"HardBatchSampler is sequential: the next iteration is epoch {current} "
                f"({self._emitted} of {self._run_steps} steps done), got set_epoch({epoch})"
            )

    def _next_batch(self) -> int:
        if self._round_pos >= self._round.shape[0]:
            self._round = self._choose_round()
            self._round_pos = 0
            self._rounds_started += 1
        batch = int(self._round[self._round_pos])
        self._round_pos += 1
        self._sched_step += 1
        return batch

    def _choose_round(self) -> np.ndarray:
        self._flush()
        scores = np.where(np.isnan(self._losses), np.inf, self._losses)
        # Stable sort on -score: equal scores go to the lower batch index, as a sort would.
        top = np.argsort(-scores, kind="stable")[: self.batches_per_round]
        return np.sort(top).astype(np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        refuse_resharding(self, sys._getframe(1))
        end = self._epoch_end()
        while self._emitted < end:
            batch = self._replay.popleft() if self._replay else self._next_batch()
            self._pending.append((self._emitted, batch))
            self._emitted += 1
            yield self._local_ids(batch).tolist()

    # -- feedback -----------------------------------------------------------------------------
    def update(self, ids_or_batch, losses: torch.Tensor) -> None:
        """Record the pre-update per-example ``losses`` of a trained batch.

        ``ids_or_batch``: the ``example_id`` s of this rank's slice (as the loader yielded them,
        keep them on the CPU), or the fixed batch index. ``losses``: float ``[b / world]``
        per-example losses from the forward before the step, any device. Nothing is gathered
        or copied here: the step never waits for the device or the other ranks. In DDP every
        rank calls it for every batch; the ranks' slices are combined once per round.
        """
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"losses must be a torch.Tensor, got {type(losses).__name__}")
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be per-example, shape [{self.batch_size // self.world_size}], got "
                f"shape {tuple(losses.shape)}"
                + (" (already reduced?)" if losses.dim() == 0 else "")
            )
        slot = self._match(ids_or_batch)
        step, batch = self._pending[slot]
        local = self._local_ids(batch)
        if losses.shape[0] != local.shape[0]:
            raise ValueError(f"got {losses.shape[0]} losses for a slice of {local.shape[0]} ids")
        if losses.device.type == "cpu" and not bool(torch.isfinite(losses).all()):
            raise ValueError(f"losses of batch {batch} (step {step}) contain NaN/inf")
        detached = losses.detach()
        del self._pending[slot]
        self._unflushed.append((batch, step, detached.float().sum(), detached.shape[0]))
        if self._trace is not None and self._trace.wants(step):
            # score: the batch's settled mean loss, the one the round choice ranked (NaN: none)
            epoch = step // self.num_batches
            self._trace.record_batch(step, local, detached, score=self._losses[batch], epoch=epoch)

    def _match(self, key) -> int:
        if not self._pending:
            raise ValueError("update() called but no batch is awaiting losses")
        if isinstance(key, int | np.integer):
            for slot, (_, batch) in enumerate(self._pending):
                if batch == key:
                    return slot
            raise ValueError(
                f"batch {key} is not awaiting losses; pending: {[b for _, b in self._pending]}"
            )
        if isinstance(key, torch.Tensor):
            key = key.detach().cpu().numpy()
        ids = np.sort(np.asarray(key).astype(np.int64, copy=False).ravel())
        for slot, (_, batch) in enumerate(self._pending):
            local = self._local_ids(batch)
            if local.shape[0] == ids.shape[0] and np.array_equal(np.sort(local), ids):
                return slot
        raise ValueError(
            f"the {ids.shape[0]} ids given match none of the {len(self._pending)} batches "
            f"awaiting losses (first ids: {ids[:5].tolist()})"
        )

    def _flush(self) -> None:
        """Settle the losses fed back since the last round: one host copy and, under DDP, one
        round of collectives (``reduce_batch_means``) for the whole round, not per step."""
        if not self._unflushed:
            return
        device = self._unflushed[-1][2].device
        sums = torch.stack([total.to(device, torch.float64) for _, _, total, _ in self._unflushed])
        meta = torch.tensor(
            [[count, batch, step] for batch, step, _, count in self._unflushed],
            dtype=torch.float64,
        )
        entries = torch.cat([sums[:, None], meta.to(device)], dim=1)
        values = reduce_batch_means(entries).numpy()
        bad = ~np.isfinite(values)
        if bad.any():  # device losses are checked here, once per round, not with a sync per step
            where = [(b, t) for (b, t, _, _), x in zip(self._unflushed, bad, strict=True) if x]
            raise ValueError(f"NaN/inf losses were fed back for (batch, step) {where[:10]}")
        for (batch, step, _, _), value in zip(self._unflushed, values, strict=True):
            if step >= self._loss_step[batch]:
                self._losses[batch] = value
                self._loss_step[batch] = step
        self._unflushed.clear()

    # -- inspection and state -----------------------------------------------------------------
    def batch_losses(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, step)``: each batch's latest mean loss (NaN = none yet) and the step it was
        recorded at (-1 = never), both ``[n_b]``; the score age is ``steps_done - step``."""
        self._flush()
        return self._losses.copy(), self._loss_step.copy()

    def config(self) -> dict[str, Any]:
        """What identifies this schedule: N, batch size, delta, epochs, seed and world size."""
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "delta": self.delta,
            "num_epochs": self.num_epochs,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plan coordinates plus the ``[n_b]`` score table (8 bytes per batch, not per example).

        The position saved is the last batch whose losses came back: on resume, batches that
        were yielded but not yet fed back are yielded again first, so the run continues exactly.
        Tensors and plain values only (docs/conventions.md). Flushes the trace.
        """
        self._flush()
        if self._trace is not None:
            self._trace.flush()
        in_flight = [batch for _, batch in self._pending] + list(self._replay)
        return make_state(
            "HardBatchSampler",
            _STATE_VERSION,
            self.config(),
            fed_steps=self._emitted - len(self._pending),
            in_flight=in_flight,
            sched_step=self._sched_step,
            round=torch.from_numpy(self._round.copy()),
            round_pos=self._round_pos,
            rounds_started=self._rounds_started,
            losses=torch.from_numpy(self._losses.copy()),
            loss_step=torch.from_numpy(self._loss_step.copy()),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; refuses a state of another configuration, naming what differs."""
        check_state(
            state,
            kind="HardBatchSampler",
            version=_STATE_VERSION,
            config=self.config(),
            required=_STATE_KEYS,
        )
        def entry(key: str, dtype: Any) -> np.ndarray:
            return state_array(state[key], dtype, what=f"HardBatchSampler state {key!r}")

        losses = entry("losses", np.float64)
        loss_step = entry("loss_step", np.int64)
        if losses.shape != (self.num_batches,) or loss_step.shape != (self.num_batches,):
            raise ValueError(
                f"HardBatchSampler state holds {losses.shape} losses and {loss_step.shape} steps; "
                f"expected ({self.num_batches},) each"
            )
        self._emitted = int(state["fed_steps"])
        self._replay = deque(int(b) for b in state["in_flight"])
        self._pending.clear()
        self._unflushed.clear()
        self._sched_step = int(state["sched_step"])
        self._round = entry("round", np.int64).copy()
        self._round_pos = int(state["round_pos"])
        self._rounds_started = int(state["rounds_started"])
        self._losses = losses.copy()
        self._loss_step = loss_step.copy()
        if self._trace is not None:
            self._trace.resume(self._emitted)

    def close(self) -> None:
        """Write what the trace holds and close its writer (finishing the run's manifest)."""
        if self._trace is not None:
            self._trace.close()


_STATE_KEYS = (
    "fed_steps",
    "in_flight",
    "sched_step",
    "round",
    "round_pos",
    "rounds_started",
    "losses",
    "loss_step",
)
