"""Epoch samplers: a method's :class:`EpochPolicy` run by the one shared :class:`EpochSampler`.

A new epoch method is one policy (docs/extending.md): it turns the settled score snapshot into
an :class:`EpochPlan` (ordered ids and loss weights) with :meth:`EpochPolicy.plan`. Everything
else is the sampler's: DDP shards exactly as ``DistributedSampler``, iteration from any position,
feedback into the shared :class:`ScoreTable`, loss reweighting, the trace, checkpoints and step
counts. The plan of epoch ``e`` is a pure function of (score snapshot, seed, ``e``, the
policy's own small state), built once when epoch ``e`` is first needed after ``set_epoch(e)``.

Resume has one path, ``sampler.load_state_dict(state)`` (docs/conventions.md):

- with a plain ``DataLoader`` the caller loads the score table, then the sampler state (saved
  with the consumed position), then calls ``set_epoch`` as usual;
- torchdata's ``StatefulDataLoader`` calls ``state_dict()`` right after drawing each batch's ids
  (the state it keeps is the one after the last *consumed* batch), and on resume calls
  ``iter(sampler)``, then ``load_state_dict``, then ``iter(sampler)`` again. A restored loop has
  already called ``set_epoch(e)`` by then, on a score table restored with the interrupted
  epoch's unsettled feedback; settling it at that point would change the plan. So a restored
  table (:meth:`ScoreTable.load_state_dict` marks it) holds ``set_epoch`` until the sampler's
  own state arrives (or the first id is drawn, when there is none), and ``iter`` is lazy. The
  loaded state then wins for its own epoch; a later epoch settles and plans from position 0;
  an earlier one raises.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from winnow.samplers._dist import check_rank_world, resolve_rank_world, shard, shard_length
from winnow.samplers._wrapping import refuse_resharding
from winnow.samplers.score_table import ScoreTable, as_feedback_tensors
from winnow.selection._state import check_state, make_state

__all__ = ["EpochPlan", "EpochPolicy", "EpochSampler", "SeedStreams", "TraceWriter", "check_int"]

_VERSION = 2
_K_EPOCH = "epoch"
_K_POSITION = "position"
_K_WORLD = "world_size"
_K_LENGTHS = "plan_lengths"
_K_POLICY = "policy"
_YIELD_CHUNK = 1 << 16


class TraceWriter(Protocol):
    """Receives one call per planned epoch; arrays are aligned, one row per example."""

    def write(
        self,
        epoch: int,
        example_id: np.ndarray,
        kept: np.ndarray,
        weight: np.ndarray,
        loss: np.ndarray,
    ) -> Any: ...


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's plan, identical on every rank.

    ids: ordered example ids, int32/int64 ``[L]`` (before sharding).
    weight_mask: bool ``[N]``; ids where it is True get loss weight ``gamma``, all others 1.
        ``None`` means every weight is 1.
    decision: float ``[N]`` score each keep/drop decision used (trace only); ``None`` if none.
    decision_known: bool ``[N]``, False where ``decision`` holds no real score (trace: NaN).
    """

    ids: np.ndarray
    weight_mask: np.ndarray | None = None
    gamma: float = 1.0
    decision: np.ndarray | None = None
    decision_known: np.ndarray | None = None


class SeedStreams:
    """Named random streams of one seed: ``streams(*keys)`` is a fresh ``np.random.Generator``.

    A pure function of ``(seed, keys)``; the global numpy RNG is never touched. A policy draws an
    epoch's randomness from ``streams(epoch)`` and anything that spans epochs (a permutation
    cycled over several epochs, a subset fixed once) from its own constant keys.
    """

    def __init__(self, seed: int):
        self.seed = check_int("seed", seed, minimum=0)

    def __call__(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *(int(k) for k in keys)])


class EpochPolicy:
    """What a method decides each epoch. Subclass it to add an epoch method (docs/extending.md).

    Implement :meth:`plan` and :meth:`config`; override the rest only when needed.
    ``num_examples`` (N) is the policy's dataset size; ``initial_score`` is the value a new
    :class:`ScoreTable` gives never-seen examples; ``num_epochs`` (or None) is the run length
    :meth:`EpochSampler.total_steps` uses when the caller gives none.
    """

    initial_score: float = 0.0
    num_epochs: int | None = None

    def __init__(self, num_examples: int):
        self.num_examples = check_int("num_examples", num_examples, minimum=1)

    @property
    def name(self) -> str:
        """The method's name in states and messages (the class name by default)."""
        return type(self).__name__

    def plan(self, epoch: int, scores: ScoreTable, rng: SeedStreams) -> EpochPlan:
        """The full plan of ``epoch`` from the settled ``scores`` (a pure function)."""
        raise NotImplementedError(f"{self.name} must implement plan(epoch, scores, rng)")

    def config(self) -> dict[str, Any]:
        """Plain values that identify this configuration (ratios, epochs...); a checkpoint of
        another configuration is refused with the differing key named."""
        raise NotImplementedError(f"{self.name} must implement config()")

    def plan_length(self, epoch: int) -> int | None:
        """Length of ``epoch``'s plan if known before it is planned, else None (then
        :meth:`EpochSampler.total_steps` counts the epoch as full: an upper bound)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Mutable run state (tensors and plain values) that a resumed plan depends on."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        return None


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int ``>= minimum``; ``TypeError``/``ValueError`` naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class EpochSampler(DistributedSampler):
    """Runs an :class:`EpochPolicy` as a ``torch.utils.data.Sampler`` (see module docstring).

    It is a ``DistributedSampler`` (``num_replicas``, ``rank``, ``epoch``, ``num_samples``,
    ``total_size`` and ``set_epoch`` read as there) because Lightning and Fabric leave a
    ``DistributedSampler`` in place under DDP, where they would wrap any other sampler in a
    distributed wrapper that shards each rank's shard again. Its ``__init__`` is not called (it
    would need a process group) and its ``shuffle`` is unused: the policy orders the plan. A
    wrapper that shards it anyway is refused when iteration starts (docs/frameworks.md).

    Args:
        policy: the method (``InfoBatch``, ``RS2``, ``StaticSubset`` or your own).
        seed: the policy draws from :class:`SeedStreams` of this seed.
        rank, world_size: default from ``torch.distributed`` when a plan is first sharded (so a
            sampler built before the process group starts, as under Lightning, follows it),
            else 0 and 1.
        drop_last: sharding as ``DistributedSampler(drop_last=...)``.
        scores: a :class:`ScoreTable` to share or pre-seed; a new one otherwise.
        trace: optional writer with ``write(epoch, example_id, kept, weight, loss)``; rank 0
            calls it once per planned epoch with all N ids.
    """

    def __init__(
        self,
        policy: EpochPolicy,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        scores: ScoreTable | None = None,
        trace: TraceWriter | None = None,
    ):
        if not isinstance(policy, EpochPolicy):
            raise TypeError(f"policy must be an EpochPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.num_examples = policy.num_examples
        self.streams = SeedStreams(seed)
        check_rank_world(rank, world_size)
        self._rank_arg, self._world_arg = rank, world_size
        self.drop_last = bool(drop_last)
        if scores is None:
            scores = ScoreTable(self.num_examples, initial=policy.initial_score)
        elif not isinstance(scores, ScoreTable):
            raise TypeError(f"scores must be a ScoreTable, got {type(scores).__name__}")
        elif scores.num_examples != self.num_examples:
            raise ValueError(
                f"scores has {scores.num_examples} examples but the policy has "
                f"num_examples={self.num_examples}"
            )
        self.scores = scores
        if trace is not None and not callable(getattr(trace, "write", None)):
            raise TypeError(f"trace must have a write(...) method, got {type(trace).__name__}")
        self._trace = trace
        self._epoch = 0
        self._planned: int | None = None
        self._plan: EpochPlan | None = None
        self._shard: np.ndarray | None = None
        self._sharded_for: tuple[int, int] | None = None
        self._lengths: dict[int, int] = {}
        self._weights: dict[tuple[torch.device, torch.dtype], torch.Tensor | None] = {}
        self._resume_at = 0
        self._cursor: tuple[int, int, Any] | None = None
        self._held_epoch: int | None = None

    @property
    def seed(self) -> int:
        return self.streams.seed

    # DistributedSampler's attributes, read from the live plan and process group.
    shuffle = True

    @property
    def rank(self) -> int:
        """This process's rank: as given, else the process group's now, else 0."""
        return resolve_rank_world(self._rank_arg, self._world_arg)[0]

    @property
    def world_size(self) -> int:
        """Number of ranks sharing the plan: as given, else the process group's now, else 1."""
        return resolve_rank_world(self._rank_arg, self._world_arg)[1]

    @property
    def num_replicas(self) -> int:
        """``DistributedSampler``'s name for :attr:`world_size`."""
        return self.world_size

    @property
    def num_samples(self) -> int:
        """``DistributedSampler``'s name for ``len(sampler)``: this rank's ids this epoch."""
        return len(self)

    @property
    def total_size(self) -> int:
        """Ids of all ranks this epoch, after padding or truncation (``DistributedSampler``)."""
        return len(self) * self.world_size

    @property
    def dataset(self) -> range:
        """The ids a plan draws from, ``range(N)`` (``DistributedSampler``'s dataset)."""
        return range(self.num_examples)

    # ----------------------------------------------------------------- epochs and plans
    @property
    def epoch(self) -> int:
        return self._epoch if self._held_epoch is None else self._held_epoch

    def set_epoch(self, epoch: int) -> None:
        """Settle pending feedback (a collective under DDP) and plan ``epoch``.

        Idempotent for the epoch already planned, so ``load_state_dict`` then
        ``set_epoch(same epoch)`` resumes the interrupted plan unchanged. Held until the
        sampler's state is loaded when the score table was just restored (module docstring).
        """
        epoch = check_int("epoch", epoch, minimum=0)
        if self.scores.restored and self._planned is None:
            self._held_epoch = epoch
            return
        self._held_epoch = None
        if epoch == self._planned:
            return
        self._settle_and_plan(epoch)

    def _apply_held_epoch(self) -> None:
        epoch, self._held_epoch = self._held_epoch, None
        self.scores.restored = False
        if epoch is None or epoch == self._planned:
            return
        if self._planned is not None and epoch < self._planned:
            raise ValueError(
                f"set_epoch({epoch}) was called before a loaded state at epoch {self._planned} "
                f"was applied; start the epoch loop at the checkpoint's epoch {self._planned}"
            )
        self._settle_and_plan(epoch)

    def _settle_and_plan(self, epoch: int) -> None:
        self.scores.flush()
        self._epoch = epoch
        self._resume_at = 0
        self._build()

    def _build(self) -> None:
        # Drop the previous plan first so two plans never coexist (bytes per example at 10^8).
        self._plan, self._shard, self._weights, self._cursor = None, None, {}, None
        self._sharded_for = None
        plan = self.policy.plan(self._epoch, self.scores, self.streams)
        if not isinstance(plan, EpochPlan):
            raise TypeError(
                f"{self.policy.name}.plan() must return an EpochPlan, got {type(plan).__name__}"
            )
        self._plan = plan
        self._planned = self._epoch
        self._lengths[self._epoch] = int(len(plan.ids))
        self._cut_shard()
        if self._trace is not None and self.rank == 0:
            self._write_trace(plan)

    def _cut_shard(self) -> None:
        assert self._plan is not None
        layout = resolve_rank_world(self._rank_arg, self._world_arg)
        self._shard = shard(self._plan.ids, *layout, drop_last=self.drop_last)
        self._sharded_for = layout

    def _ensure_plan(self) -> np.ndarray:
        if self._held_epoch is not None or self.scores.restored:
            self._apply_held_epoch()
        if self._shard is None:
            self._build()
        elif self._sharded_for != resolve_rank_world(self._rank_arg, self._world_arg):
            # Planned before the process group started (e.g. len(loader) before fit): the
            # plan stands, only this rank's share of it changes.
            self._cut_shard()
        assert self._shard is not None
        return self._shard

    @property
    def plan(self) -> EpochPlan:
        """The current epoch's full plan (all ranks)."""
        self._ensure_plan()
        assert self._plan is not None
        return self._plan

    def rank_plan(self) -> np.ndarray:
        """This rank's ids for the current epoch, in order (read-only)."""
        view = self._ensure_plan().view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        """Number of ids this rank yields in the current epoch."""
        return len(self._ensure_plan())

    def steps_per_epoch(self, batch_size: int, *, drop_last: bool = False) -> int:
        """Optimiser steps this rank takes in the current epoch at ``batch_size``."""
        return _steps(len(self), check_int("batch_size", batch_size, minimum=1), drop_last)

    def total_steps(
        self, batch_size: int, num_epochs: int | None = None, *, drop_last: bool = False
    ) -> int:
        """Optimiser steps of ``num_epochs`` epochs on this rank, for step-based LR schedulers.

        ``num_epochs`` defaults to the policy's own run length (InfoBatch's ``num_epochs``).
        Exact for epochs already planned and for epochs whose length the policy knows in
        advance; an epoch whose length depends on future losses counts as full (an upper bound,
        so a scheduler built on it never runs past its end). ``drop_last`` is the DataLoader's.
        """
        return sum(self.epoch_steps(batch_size, num_epochs, drop_last=drop_last))

    def epoch_steps(
        self, batch_size: int, num_epochs: int | None = None, *, drop_last: bool = False
    ) -> list[int]:
        """:meth:`total_steps` epoch by epoch: this rank's batches in epochs ``0..num_epochs-1``
        (what a framework that accumulates gradients or limits batches per epoch needs)."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if num_epochs is None:
            num_epochs = self.policy.num_epochs
            if num_epochs is None:
                raise ValueError(
                    f"{self.policy.name} has no fixed run length; pass num_epochs to total_steps"
                )
        num_epochs = check_int("num_epochs", num_epochs, minimum=0)
        world = self.world_size
        steps = []
        for epoch in range(num_epochs):
            length = self._lengths.get(epoch)
            if length is None:
                length = self.policy.plan_length(epoch)
            if length is None:
                length = self.num_examples
            per_rank = shard_length(length, world, drop_last=self.drop_last)
            steps.append(_steps(per_rank, batch_size, drop_last))
        return steps

    @property
    def plan_lengths(self) -> dict[int, int]:
        """Length of every epoch's plan built so far (global, before sharding)."""
        return dict(self._lengths)

    def __iter__(self):
        refuse_resharding(self, sys._getframe(1))
        # Lazy: StatefulDataLoader calls iter() before it loads the sampler's state.
        return self._iterate()

    def _iterate(self):
        ids = self._ensure_plan()
        if self._cursor is not None and self.position >= len(ids) and self.scores.num_pending:
            # A second pass over a finished epoch with feedback waiting: set_epoch was
            # forgotten, so the plan (and InfoBatch's pruning) would never change.
            warnings.warn(
                f"{type(self).__name__} is iterated again at epoch {self._epoch} with "
                f"{self.scores.num_pending} unsettled feedback entries; call "
                "sampler.set_epoch(epoch) before every epoch",
                stacklevel=2,
            )
        start, self._resume_at = self._resume_at, 0
        self._cursor = (start, 0, iter(()))
        for s in range(start, len(ids), _YIELD_CHUNK):
            part = ids[s : s + _YIELD_CHUNK].tolist()
            it = iter(part)
            self._cursor = (s, len(part), it)
            yield from it
        self._cursor = (len(ids), 0, iter(()))

    @property
    def position(self) -> int:
        """Ids this rank's live iterator has handed out this epoch (0 before iterating)."""
        if self._cursor is None:
            return self._resume_at
        s, n, it = self._cursor
        return s + n - it.__length_hint__()

    # ----------------------------------------------------------------- feedback
    def update(self, ids: Any, losses: Any) -> None:
        """Record per-example losses ``[B]`` for ``ids [B]``; see :meth:`ScoreTable.update`."""
        self.scores.update(ids, losses)

    def reweight(self, ids: Any, losses: Any) -> torch.Tensor:
        """Record ``losses`` (as :meth:`update`) and return ``mean(w[ids] * losses)``.

        ``losses``: per-example ``[B]`` on any device; the weights of the current plan live on
        that device (copied once per epoch, device and dtype; pin the DataLoader's memory or
        move ``ids`` there yourself to keep the id copy asynchronous). A plain mean, not
        normalised by the weights' sum, so the epoch's summed gradient is unbiased (InfoBatch).
        Half-precision losses are weighted in float32.
        """
        ids, losses = as_feedback_tensors(ids, losses, self.num_examples)
        self.scores.record_checked(ids, losses)
        weights = self._weights_on(losses.device, losses.dtype)
        if weights is None:
            return losses.mean()
        if losses.dtype != weights.dtype:
            losses = losses.to(weights.dtype)
        if ids.device != weights.device:
            ids = ids.to(weights.device, non_blocking=True)
        # dot + index_select: two kernels instead of index, mul and mean (the per-step budget).
        return torch.dot(losses, torch.index_select(weights, 0, ids)) / losses.shape[0]

    def weights_of(self, ids: Any) -> np.ndarray:
        """Loss weights of the current plan for ``ids``, float32 (host)."""
        plan = self.plan
        ids = np.asarray(ids)
        if plan.weight_mask is None:
            return np.ones(ids.shape, dtype=np.float32)
        return np.where(plan.weight_mask[ids], np.float32(plan.gamma), np.float32(1.0))

    def _weights_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        key = (device, dtype)
        if key in self._weights:
            return self._weights[key]
        plan = self.plan
        weights = None
        if plan.weight_mask is not None and plan.gamma != 1.0:
            np_dtype = np.float64 if dtype == torch.float64 else np.float32
            host = np.where(plan.weight_mask, np_dtype(plan.gamma), np_dtype(1.0))
            weights = torch.from_numpy(host).to(device)
        self._weights[key] = weights
        return weights

    # ----------------------------------------------------------------- trace
    def _write_trace(self, plan: EpochPlan) -> None:
        n = self.num_examples
        kept = np.zeros(n, dtype=bool)
        kept[plan.ids] = True
        weight = np.zeros(n, dtype=np.float32)
        weight[kept] = 1.0
        if plan.weight_mask is not None:
            weight[kept & plan.weight_mask] = plan.gamma
        if plan.decision is None:
            loss = np.full(n, np.nan, dtype=np.float32)
        elif plan.decision_known is None:
            loss = np.asarray(plan.decision, dtype=np.float32)
        else:
            loss = np.where(plan.decision_known, plan.decision, np.nan).astype(np.float32)
        self._trace.write(self._epoch, np.arange(n, dtype=np.int64), kept, weight, loss)

    # ----------------------------------------------------------------- checkpoints
    def config(self) -> dict[str, Any]:
        """What identifies this sampler's plans: the method, its configuration, N and seed."""
        return {
            "method": self.policy.name,
            "num_examples": self.num_examples,
            "seed": self.seed,
            "drop_last": self.drop_last,
            **self.policy.config(),
        }

    def state_dict(self, *, position: int | None = None) -> dict[str, Any]:
        """Small plan coordinates (epoch, position, world size) plus the policy's state.

        ``position`` defaults to the ids this sampler's iterator has handed out, which runs
        ahead of training when the DataLoader prefetches; with a plain DataLoader pass the
        ids actually consumed, e.g. ``batches_done * batch_size`` (StatefulDataLoader tracks
        this itself). Score tables are checkpointed separately: ``sampler.scores.state_dict()``.
        Loadable with ``torch.load``'s defaults (docs/conventions.md).
        """
        # A held set_epoch is not part of the state (StatefulDataLoader snapshots the state
        # before it loads one); the loop calls set_epoch again after restoring.
        if position is None:
            position = self.position
        position = check_int("position", position, minimum=0)
        return make_state(
            type(self).__name__,
            _VERSION,
            self.config(),
            **{
                _K_EPOCH: self._epoch,
                _K_POSITION: position,
                _K_WORLD: self.world_size,
                _K_LENGTHS: dict(self._lengths),
                _K_POLICY: self.policy.state_dict(),
            },
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s epoch and position: the one resume path.

        The plan is rebuilt from the settled scores, so load ``sampler.scores`` from the same
        checkpoint first. Refuses a state of another method or configuration (N, seed, ratios,
        epochs), naming what differs, and a mid-epoch state saved with another world size.
        """
        check_state(
            state,
            kind=type(self).__name__,
            version=_VERSION,
            config=self.config(),
            required=(_K_EPOCH, _K_POSITION, _K_WORLD, _K_LENGTHS, _K_POLICY),
        )
        position = check_int("position", state[_K_POSITION], minimum=0)
        epoch = check_int("epoch", state[_K_EPOCH], minimum=0)
        if int(state[_K_WORLD]) != self.world_size and position > 0:
            raise ValueError(
                f"cannot resume mid-epoch (position {position}) saved with world_size "
                f"{state[_K_WORLD]} on world_size {self.world_size}; resume at an epoch boundary"
            )
        self.policy.load_state_dict(state[_K_POLICY])
        self._lengths = {int(k): int(v) for k, v in state[_K_LENGTHS].items()}
        self._epoch = epoch
        self._planned = epoch
        self._plan = None
        self._shard = None
        self._sharded_for = None
        self._weights = {}
        self._cursor = None
        self._resume_at = position
        if self._held_epoch is None:
            self.scores.restored = False


def _steps(length: int, batch_size: int, drop_last: bool) -> int:
    return length // batch_size if drop_last else -(-length // batch_size)
