"""Lightning adapter: :class:`WinnowCallback` keeps Lightning's step counts and checkpoints in
step with a winnow sampler (docs/frameworks.md).

The sampler goes into the ``DataLoader`` as usual; nothing else changes in the user's code. The
epoch samplers are ``DistributedSampler`` s, so Lightning's DDP leaves them alone with its
default ``use_distributed_sampler=True``. The callback:

- makes ``trainer.estimated_stepping_batches`` the sampler's step total while
  ``configure_optimizers`` runs (where schedulers such as ``OneCycleLR`` read it), and
  ``trainer.num_training_batches`` (the progress bar, the end of epoch validation, the epoch's
  last step) each epoch's own count: Lightning reads
  ``len(loader)`` when it sets the loader up, before ``set_epoch`` plans the epoch, so with a
  pruning sampler it keeps the first epoch's count (or, reloading the loader every epoch, the
  previous epoch's), skips validation after shorter epochs and cuts longer ones short;
- settles each epoch's feedback as the epoch ends, so a loader Lightning reloads before the
  next ``set_epoch`` finds nothing left over;
- puts the sampler, its score table and an in-step selector into Lightning's checkpoints, so
  ``trainer.fit(..., ckpt_path=...)`` continues the uninterrupted run, mid-epoch included;
- refuses what would train on the wrong data: a ``HardBatchSampler`` that Lightning's DDP would
  rebuild, a loader Lightning replaced, a batch size or run length that differs from the
  sampler's.

It feeds nothing back by itself: ``training_step`` calls ``sampler.reweight(ids, losses)``.
Lightning is imported when the callback class is first used, never by ``import winnow``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from torch.utils.data import DataLoader

from winnow.samplers._dist import gather_rank_states
from winnow.samplers.epoch import EpochSampler
from winnow.samplers.hardbatch import HardBatchSampler
from winnow.samplers.selector import InStepSelector

__all__ = ["WinnowCallback"]  # noqa: F822 - the class is built by __getattr__ on first use

_K_SAMPLER = "sampler"
_K_SCORES = "scores"
_K_SELECTOR = "selector"


class _Hooks:
    """Keeps a winnow sampler and Lightning in step (module docstring).

    Args:
        sampler: a winnow epoch sampler or ``HardBatchSampler``, or the ``DataLoader`` that
            holds it (its batch size and ``drop_last`` are then read from the loader).
        batch_size: the loader's batch size, with an epoch sampler given directly: needed before
            Lightning builds the loader, when ``configure_optimizers`` reads
            ``trainer.estimated_stepping_batches``. Checked against the loader when training
            starts.
        drop_last: the loader's ``drop_last`` (not the sampler's, which governs sharding).
        selector: an in-step selector whose state goes into the checkpoints too.
    """

    def __init__(
        self,
        sampler: EpochSampler | HardBatchSampler | DataLoader | None = None,
        *,
        batch_size: int | None = None,
        drop_last: bool | None = None,
        selector: InStepSelector | None = None,
    ):
        if isinstance(sampler, DataLoader):
            sampler, batch_size, drop_last = _from_loader(sampler, batch_size, drop_last)
        if sampler is not None and not isinstance(sampler, EpochSampler | HardBatchSampler):
            raise TypeError(
                "sampler must be a winnow EpochSampler or HardBatchSampler (or the DataLoader "
                f"holding one), got {type(sampler).__name__}"
            )
        if selector is not None and not isinstance(selector, InStepSelector):
            raise TypeError(f"selector must be an InStepSelector, got {type(selector).__name__}")
        if sampler is None and selector is None:
            raise ValueError("WinnowCallback needs a sampler, a DataLoader or a selector")
        if isinstance(sampler, EpochSampler) and batch_size is None:
            raise ValueError(
                "pass batch_size= (the DataLoader's) with an epoch sampler, or pass the DataLoader "
                "itself: WinnowCallback(loader)"
            )
        if isinstance(sampler, HardBatchSampler):
            if batch_size not in (None, sampler.batch_size):
                raise ValueError(
                    f"HardBatchSampler yields batches of {sampler.batch_size} (global, before "
                    f"slicing per rank); got batch_size={batch_size}"
                )
            batch_size = sampler.batch_size
        self.sampler = sampler
        self.selector = selector
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self._trainer: Any = None
        self._user_max_steps: int | None = None  # set while the step total stands in for it

    # ----------------------------------------------------------------- hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        if self.sampler is None:
            return
        self._check_run_length(trainer)
        self._check_batch_sampler_setting(trainer)
        self._lend_step_total(trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # configure_optimizers has run: give max_steps back before Lightning restores its loops
        # (a max_steps of its own makes Lightning resume as an iteration-based run).
        if self._user_max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = self._user_max_steps
            self._user_max_steps = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.sampler is None:
            return
        self._check_loader(trainer)
        self._sync_batches(trainer)  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning has called set_epoch by now: the epoch is planned and its length known.
        if isinstance(self.sampler, EpochSampler):
            self._sync_batches(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Settle now rather than at the next set_epoch (a collective on every rank either way):
        # a reloaded loader is iterated once before Lightning's set_epoch, and must not find
        # feedback of a finished epoch pending. The next plan is the same either way. Planning
        # it here instead would break Lightning's resume from a checkpoint taken at this epoch's
        # end, which runs the end of this epoch again with the loader's length.
        if isinstance(self.sampler, EpochSampler):
            self.sampler.scores.flush()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if isinstance(self.sampler, EpochSampler):
            state[_K_SAMPLER] = self.sampler.state_dict(position=self._consumed())
            state[_K_SCORES] = self.sampler.scores.state_dict()  # a collective under DDP
        elif isinstance(self.sampler, HardBatchSampler):
            state[_K_SAMPLER] = self.sampler.state_dict()
        if self.selector is not None:
            # Lightning writes rank 0's checkpoint; a selector's noise stream is per rank.
            state[_K_SELECTOR] = gather_rank_states(self.selector.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, have in ((_K_SAMPLER, self.sampler), (_K_SELECTOR, self.selector)):
            if (key in state) != (have is not None):
                raise ValueError(
                    f"the checkpoint {'holds' if key in state else 'lacks'} a {key} state but "
                    f"this WinnowCallback {'has' if have is not None else 'has no'} {key}"
                )
        if isinstance(self.sampler, EpochSampler):
            self.sampler.scores.load_state_dict(state[_K_SCORES])  # scores first (conventions)
        if self.sampler is not None:
            self.sampler.load_state_dict(state[_K_SAMPLER])
        if self.selector is not None:
            self.selector.load_state_dict(_own_entry(state[_K_SELECTOR], self.selector.rank))
        if self._user_max_steps is not None:  # a resumed sampler knows its planned epochs
            self._lend_step_total(self._trainer)

    # ----------------------------------------------------------------- checks
    def _run_length(self) -> int | None:
        if isinstance(self.sampler, HardBatchSampler):
            return self.sampler.num_epochs
        return self.sampler.policy.num_epochs

    def _check_run_length(self, trainer: Any) -> None:
        run = self._run_length()
        if run is not None and trainer.max_epochs != run:
            name = type(self.sampler).__name__
            raise ValueError(
                f"{name} plans a run of num_epochs={run} but the Trainer runs "
                f"max_epochs={trainer.max_epochs}; pass Trainer(max_epochs={run}) or build the "
                f"{name} with num_epochs={trainer.max_epochs}"
            )

    def _check_batch_sampler_setting(self, trainer: Any) -> None:
        if not isinstance(self.sampler, HardBatchSampler) or trainer.world_size == 1:
            return
        if trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError(
                "HardBatchSampler slices every batch for its rank itself; under DDP Lightning "
                "would rebuild it around its own DistributedSampler (a new object that never sees "
                "your update() calls) or refuse it. Pass Trainer(use_distributed_sampler=False)."
            )

    def _check_loader(self, trainer: Any) -> None:
        for loader in _train_loaders(trainer):
            if _holds(loader, self.sampler):
                batch_size, drop_last = _batching(loader)
                if isinstance(self.sampler, EpochSampler) and (batch_size, drop_last) != (
                    self.batch_size,
                    self.drop_last,
                ):
                    raise ValueError(
                        f"WinnowCallback counts steps for batch_size={self.batch_size}, "
                        f"drop_last={self.drop_last} but the train DataLoader has "
                        f"batch_size={batch_size}, drop_last={drop_last}; pass the loader's values"
                    )
                return
        raise ValueError(
            f"the WinnowCallback's {type(self.sampler).__name__} is not the sampler of any train "
            "DataLoader Lightning runs: Lightning replaced it (a custom batch sampler under DDP "
            "needs Trainer(use_distributed_sampler=False)) or the callback got another object "
            "than the loader"
        )

    # ----------------------------------------------------------------- step counts
    def _epoch_batches(self, trainer: Any) -> list[int]:
        """This rank's batches per epoch over the whole run, limit_train_batches applied."""
        epochs = trainer.max_epochs
        steps = self.sampler.epoch_steps(self.batch_size, epochs, drop_last=self.drop_last)
        return [_limit(n, trainer.limit_train_batches) for n in steps]

    def _lend_step_total(self, trainer: Any) -> None:
        """Put the run's optimiser steps into max_steps until on_fit_start gives it back.

        Lightning's estimate is min(max_steps, first epoch's batches * max_epochs), read by
        configure_optimizers between setup and on_fit_start: a step total in max_steps is how
        it learns a pruned run's. An explicit max_steps of the user's stands.
        """
        user = trainer.max_steps if self._user_max_steps is None else self._user_max_steps
        if user != -1 or trainer.max_epochs in (None, -1):
            return
        accumulate = trainer.accumulate_grad_batches
        total = sum(math.ceil(n / accumulate) for n in self._epoch_batches(trainer))
        self._user_max_steps = user
        trainer.fit_loop.epoch_loop.max_steps = max(total, 1)

    def _sync_batches(self, trainer: Any) -> None:
        """Tell Lightning this epoch's batch count (it read len(loader) when it set it up)."""
        loop = trainer.fit_loop
        combined = loop._combined_loader
        if combined is None:
            return
        if isinstance(self.sampler, EpochSampler):
            count = self.sampler.steps_per_epoch(self.batch_size, drop_last=self.drop_last)
        else:
            count = self.sampler.num_batches
        count = _limit(count, trainer.limit_train_batches)
        combined.limits = [
            count if _holds(loader, self.sampler) else limit
            for loader, limit in zip(combined.flattened, combined.limits, strict=True)
        ]
        # len(combined) would answer with the iterator it built from the old limits; ask a new
        # one, as the next iter(combined) will build it, how many batches the epoch has.
        from lightning.pytorch.utilities.combined_loader import _SUPPORTED_MODES

        mode = _SUPPORTED_MODES[combined._mode]["iterator"]
        loop.max_batches = len(mode(combined.flattened, combined.limits))
        if isinstance(trainer.val_check_interval, float) and trainer.val_check_batch is not None:
            trainer.val_check_batch = max(1, int(loop.max_batches * trainer.val_check_interval))

    def _consumed(self) -> int:
        """Ids of this rank's shard trained on this epoch (the loader prefetches further)."""
        trainer = self._trainer
        if trainer is None:
            return 0
        if self.sampler.epoch < trainer.current_epoch:
            return len(self.sampler)  # finished; Lightning has not called set_epoch yet
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return min(len(self.sampler), batches * self.batch_size)


def _own_entry(states: list[dict[str, Any]], rank: int) -> dict[str, Any]:
    if rank >= len(states):
        raise ValueError(
            f"the checkpoint holds selector states of {len(states)} ranks; this is rank {rank}: "
            "resume with the world size the checkpoint was written with"
        )
    return states[rank]


def _from_loader(loader: DataLoader, batch_size: int | None, drop_last: bool | None):
    batch_sampler = loader.batch_sampler
    for candidate in (loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        if isinstance(candidate, EpochSampler | HardBatchSampler):
            got_size, got_drop = _batching(loader)
            if batch_size not in (None, got_size) or drop_last not in (None, got_drop):
                raise ValueError(
                    f"batch_size={batch_size}, drop_last={drop_last} differ from the DataLoader's "
                    f"({got_size}, {got_drop}); pass the loader alone"
                )
            return candidate, got_size, got_drop
    raise TypeError(
        "the DataLoader holds no winnow sampler (looked at .sampler, .batch_sampler and "
        f".batch_sampler.sampler: {type(loader.sampler).__name__}, "
        f"{type(batch_sampler).__name__})"
    )


def _batching(loader: Any) -> tuple[int | None, bool]:
    """A loader's per-step batch size and drop_last, whichever of its samplers holds them."""
    if getattr(loader, "batch_size", None) is not None:
        return loader.batch_size, bool(loader.drop_last)
    batch_sampler = getattr(loader, "batch_sampler", None)
    return getattr(batch_sampler, "batch_size", None), bool(
        getattr(batch_sampler, "drop_last", False)
    )


def _holds(loader: Any, sampler: Any) -> bool:
    batch_sampler = getattr(loader, "batch_sampler", None)
    return sampler is getattr(loader, "sampler", None) or sampler is batch_sampler or (
        sampler is getattr(batch_sampler, "sampler", None)
    )


def _train_loaders(trainer: Any) -> list[Any]:
    combined = trainer.fit_loop._combined_loader
    return [] if combined is None else list(combined.flattened)


def _limit(batches: int, limit: int | float) -> int:
    """Lightning's limit_train_batches applied to one epoch's batch count."""
    if isinstance(limit, int):
        return min(batches, limit)
    return int(batches * limit)


@functools.cache
def _callback_class() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "winnow.samplers.lightning needs Lightning: pip install 'winnow[lightning]'"
        ) from err
    return type(
        "WinnowCallback",
        (_Hooks, Callback),
        {"__module__": __name__, "__qualname__": "WinnowCallback", "__doc__": _Hooks.__doc__},
    )


def __getattr__(name: str) -> Any:
    # The callback class needs Lightning's base class; build it on first use so that importing
    # this module (and winnow) never imports Lightning.
    if name == "WinnowCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
