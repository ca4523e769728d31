"""The machinery every epoch sampler shares: plan caching, DDP shards, resume, feedback, trace.

Contract for a concrete sampler (the only thing it implements):

    _make_plan(epoch) -> EpochPlan

a pure function of (settled score snapshot, seed, epoch, the sampler's own small state). This
base class then shards the plan per rank exactly as ``DistributedSampler`` does, iterates it
from any position, records feedback into ``self.scores`` and applies the plan's loss weights.
The plan for epoch ``e`` is built once, in ``set_epoch(e)`` (after settling pending feedback);
calling ``set_epoch`` again with the same epoch keeps it, which is what lets a resumed run
rebuild exactly the interrupted plan.

Resume protocol (plain ``DataLoader`` and torchdata's ``StatefulDataLoader``):

- ``state_dict()`` reports the position of the live iterator; ``load_state_dict`` makes the next
  ``iter(sampler)`` start there. With a plain DataLoader the caller passes the consumed position.
- ``StatefulDataLoader`` wraps the sampler in its own ``BatchSampler`` and treats it as
  ``Stateful``: it calls ``sampler.state_dict()`` right after drawing each batch's ids (with
  workers: when the batch is dispatched, kept until that batch is *yielded*), so the state it
  returns is the one after the last consumed batch, never the prefetched position. Its
  ``load_state_dict`` only stores the state; the next ``iter(loader)`` calls ``iter(sampler)``,
  then ``sampler.load_state_dict(...)``, then ``iter(sampler)`` again, with no fast-forward.
- A restored loop calls ``set_epoch(e)`` before that late load, on a score table restored with
  the interrupted epoch's unsettled feedback; settling it then would change the plan. So
  ``iter(sampler)`` is lazy (nothing runs until the first id is drawn), and ``set_epoch`` on a
  sampler that has never planned nor loaded a state *while its score table holds unsettled
  feedback* (the signature of a restore) is deferred to the first draw or plan query. The loaded
  state then wins for its own epoch (nothing settled early, same position); a later ``e``
  settles and replans from position 0 (the loaded epoch was finished); an earlier ``e`` raises.
  Query ``len(loader)`` / ``sampler.plan`` only after the first batch of such a restored run:
  before it they would apply ``set_epoch`` ahead of the loader's state.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Sampler
from winnow.samplers._dist import resolve_rank_world, shard
from winnow.samplers.scores import ScoreTable, as_feedback_tensors

__all__ = ["EpochPlan", "EpochSampler", "TraceWriter"]

_K_EPOCH = "epoch"
_K_POSITION = "position"
_K_SEED = "seed"
_K_WORLD = "world_size"
_K_NUM = "num_examples"
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


def check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class EpochSampler(Sampler[int]):
    """Base of the epoch samplers (see module docstring for the subclass contract).

    Args:
        num_examples: N; ids are ``0..N-1`` (wrap the dataset in ``IndexedDataset``).
        seed: the plan of epoch ``e`` draws from ``np.random.default_rng([seed, e, ...])``.
        rank, world_size: default from ``torch.distributed`` when initialised, else 0 and 1.
        drop_last: sharding as ``DistributedSampler(drop_last=...)``.
        scores: a :class:`ScoreTable` to share or pre-seed; a new one otherwise.
        trace: optional writer with ``write(epoch, example_id, kept, weight, loss)``; rank 0
            calls it once per planned epoch with all N ids.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        scores: ScoreTable | None = None,
        trace: TraceWriter | None = None,
        initial_score: float = 0.0,
    ):
        self.num_examples = check_int("num_examples", num_examples, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.rank, self.world_size = resolve_rank_world(rank, world_size)
        self.drop_last = bool(drop_last)
        if scores is None:
            scores = ScoreTable(self.num_examples, initial=initial_score)
        elif not isinstance(scores, ScoreTable):
            raise TypeError(f"scores must be a ScoreTable, got {type(scores).__name__}")
        elif scores.num_examples != self.num_examples:
            raise ValueError(
                f"scores has {scores.num_examples} examples but num_examples={self.num_examples}"
            )
        self.scores = scores
        if trace is not None and not callable(getattr(trace, "write", None)):
            raise TypeError(f"trace must have a write(...) method, got {type(trace).__name__}")
        self._trace = trace
        self._epoch = 0
        self._planned: int | None = None
        self._plan: EpochPlan | None = None
        self._shard: np.ndarray | None = None
        self._weights: dict[tuple[torch.device, torch.dtype], torch.Tensor | None] = {}
        self._resume_at = 0
        self._cursor: tuple[int, int, Any] | None = None
        self._pending_epoch: int | None = None

    # ----------------------------------------------------------------- subclass contract
    def _make_plan(self, epoch: int) -> EpochPlan:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    def _rng(self, *keys: int) -> np.random.Generator:
        """A private generator for (seed, *keys); the global numpy RNG is never touched."""
        return np.random.default_rng([self.seed, *keys])

    # ----------------------------------------------------------------- epochs and plans
    @property
    def epoch(self) -> int:
        return self._epoch if self._pending_epoch is None else self._pending_epoch

    def set_epoch(self, epoch: int) -> None:
        """Settle pending feedback (a collective under DDP) and plan ``epoch``.

        Idempotent for the epoch already planned, so ``load_state_dict`` then
        ``set_epoch(same epoch)`` resumes the interrupted plan unchanged. Deferred to the first
        draw on a restored score table not yet matched by a sampler state (resume protocol).
        """
        epoch = check_int("epoch", epoch, minimum=0)
        if self._planned is None and self.scores.num_pending:
            self._pending_epoch = epoch
            return
        self._pending_epoch = None
        if epoch == self._planned:
            return
        self._settle_and_plan(epoch)

    def _apply_pending_epoch(self) -> None:
        epoch, self._pending_epoch = self._pending_epoch, None
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
        plan = self._make_plan(self._epoch)
        self._plan = plan
        self._planned = self._epoch
        self._shard = shard(plan.ids, self.rank, self.world_size, drop_last=self.drop_last)
        if self._trace is not None and self.rank == 0:
            self._write_trace(plan)

    def _ensure_plan(self) -> np.ndarray:
        if self._pending_epoch is not None:
            self._apply_pending_epoch()
        if self._shard is None:
            self._build()
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
        batch_size = check_int("batch_size", batch_size, minimum=1)
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def __iter__(self):
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
        ids, losses = as_feedback_tensors(ids, losses)
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
    def state_dict(self, *, position: int | None = None) -> dict[str, Any]:
        """Small plan coordinates: epoch, position, seed, world size (+ sampler extras).

        ``position`` defaults to the ids this sampler's iterator has handed out, which runs
        ahead of training when the DataLoader prefetches; with a plain DataLoader pass the
        ids actually consumed, e.g. ``batches_done * batch_size`` (StatefulDataLoader tracks
        this itself). Score tables are checkpointed separately: ``sampler.scores.state_dict()``.
        """
        # A deferred set_epoch is not part of the state (StatefulDataLoader snapshots the state
        # before it loads one); the loop calls set_epoch again after restoring.
        if position is None:
            position = self.position
        position = check_int("position", position, minimum=0)
        state = {
            _K_EPOCH: self._epoch,
            _K_POSITION: position,
            _K_SEED: self.seed,
            _K_WORLD: self.world_size,
            _K_NUM: self.num_examples,
        }
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s epoch and position; the plan is rebuilt from the settled scores
        (load ``sampler.scores`` from the same checkpoint first)."""
        missing = {_K_EPOCH, _K_POSITION, _K_SEED, _K_WORLD, _K_NUM} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks keys {sorted(missing)}")
        if int(state[_K_NUM]) != self.num_examples:
            raise ValueError(
                f"state is for {state[_K_NUM]} examples but this sampler has {self.num_examples}"
            )
        position = check_int("position", state[_K_POSITION], minimum=0)
        if int(state[_K_WORLD]) != self.world_size and position > 0:
            raise ValueError(
                f"cannot resume mid-epoch (position {position}) saved with world_size "
                f"{state[_K_WORLD]} on world_size {self.world_size}; resume at an epoch boundary"
            )
        self.seed = check_int("seed", state[_K_SEED], minimum=0)
        self._epoch = check_int("epoch", state[_K_EPOCH], minimum=0)
        self._load_extra_state(state)
        self._planned = self._epoch
        self._plan = None
        self._shard = None
        self._cursor = None
        self._resume_at = position
