"""InfoBatch: unbiased dynamic data pruning (Qin et al., ICLR 2024), as an epoch sampler.

Rules (docs/infobatch.md). Score = latest raw training loss (``update``/``reweight``), higher =
harder; never-seen examples hold ``initial_score``. At each pruned epoch ``e < E*delta``:
threshold = mean of all N scores (stale included); ``D1 = {score < mean}`` (strict); exactly
``floor((1-r)|D1|)`` members of D1, uniformly drawn without replacement, are kept with loss weight
``1/(1-r)``; everything else is kept with weight 1; the plan is a uniform shuffle of the kept ids.
Later epochs are full, shuffled, all weights 1 ("annealing").

Fixes over upstream: a private generator per (seed, epoch) instead of the global numpy seed;
weights reset to 1 at every plan (upstream keeps ``1/(1-r)`` through annealing when ``E*delta`` is
not an integer); ids gathered as int64 in DDP; explicit ids and feedback, no monkey-patching; the
plan is built in ``set_epoch`` so ``len(loader)`` is right before the epoch starts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from winnow.samplers._permute import choose_in_mask, permutation, permuted_nonzero
from winnow.samplers.epoch import EpochPlan, EpochPolicy, EpochSampler, SeedStreams, check_int
from winnow.samplers.score_table import ScoreTable

__all__ = ["InfoBatch", "InfoBatchSampler"]

MAX_PRUNE_RATIO = 0.9
_K_PRUNED = "pruned_per_epoch"
_K_RATIOS = "ratio_per_epoch"


class InfoBatch(EpochPolicy):
    """InfoBatch's epoch rule as a policy (for :class:`InfoBatchSampler` or your own sampler).

    Args:
        num_examples: N.
        num_epochs: E, needed for annealing (epochs ``e >= E*delta`` use all data).
        prune_ratio: the paper's r in [0, 0.9]: the fraction of below-mean examples dropped
            (the share trained on is not fixed: it depends on how many are below the mean).
        delta: the paper's delta in [0, 1], the fraction of epochs that prune.
        target_saving: instead of a fixed r, choose r per epoch so that the pruned fraction over
            the whole run, ``sum_e (N - L_e) / (E*N)``, meets this budget (see
            :meth:`ratio_for`). ``prune_ratio`` is then ignored.
        initial_score: score of never-seen examples (upstream pip package: 3.0).
    """

    def __init__(
        self,
        num_examples: int,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        target_saving: float | None = None,
        initial_score: float = 3.0,
    ):
        super().__init__(num_examples)
        self.num_epochs = check_int("num_epochs", num_epochs, minimum=1)
        if not 0.0 <= prune_ratio <= MAX_PRUNE_RATIO:
            raise ValueError(f"prune_ratio must be in [0, {MAX_PRUNE_RATIO}], got {prune_ratio}")
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {delta}")
        if not math.isfinite(initial_score):
            raise ValueError(f"initial_score must be finite, got {initial_score}")
        self.prune_ratio = float(prune_ratio)
        self.delta = float(delta)
        self.initial_score = float(initial_score)
        self.num_pruned_epochs = math.ceil(self.num_epochs * self.delta)
        if target_saving is not None:
            # Epoch 0 never prunes (equal initial scores), and at most 90 % of N per epoch.
            most = MAX_PRUNE_RATIO * max(0, self.num_pruned_epochs - 1) / self.num_epochs
            if not 0.0 < target_saving <= most:
                raise ValueError(
                    f"target_saving must be in (0, {most:.4g}] for num_epochs={num_epochs}, "
                    f"delta={delta} (epoch 0 never prunes, r <= {MAX_PRUNE_RATIO}); "
                    f"got {target_saving}"
                )
            target_saving = float(target_saving)
        self.target_saving = target_saving
        self._pruned: dict[int, int] = {}
        self._ratios: dict[int, float] = {}

    def config(self) -> dict[str, Any]:
        return {
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "target_saving": self.target_saving,
            "initial_score": self.initial_score,
        }

    def is_pruned_epoch(self, epoch: int) -> bool:
        """True iff ``epoch < num_epochs * delta`` (0-based; the float product, as upstream)."""
        return epoch < self.num_epochs * self.delta

    def _budget_left(self, epoch: int) -> float:
        """Pruned examples ``target_saving`` still asks for from ``epoch`` on, per pruned epoch."""
        budget = self.target_saving * self.num_epochs * self.num_examples
        done = sum(v for e, v in self._pruned.items() if e < epoch)
        return (budget - done) / max(1, self.num_pruned_epochs - epoch)

    def ratio_for(self, epoch: int, below_mean: int) -> float:
        """Prune ratio r for ``epoch`` given ``|D1| = below_mean``.

        Fixed ``prune_ratio`` unless ``target_saving`` is set. Then, with budget
        ``B = target_saving * E * N`` pruned examples, ``S`` already pruned in earlier epochs and
        ``P`` pruned epochs in all, this epoch aims at its equal share of what is left,
        ``(B - S) / (P - epoch)``, i.e. ``r = clip(share / |D1|, 0, 0.9)``. An epoch that cannot
        deliver its share (few below-mean examples, e.g. epoch 0) leaves the rest to later
        epochs, so the realised total meets the budget unless the last epochs cannot either.
        """
        if not self.is_pruned_epoch(epoch):
            return 0.0
        if self.target_saving is None:
            return self.prune_ratio
        if below_mean == 0:
            return 0.0
        return float(min(MAX_PRUNE_RATIO, max(0.0, self._budget_left(epoch) / below_mean)))

    def plan_length(self, epoch: int) -> int | None:
        """Annealing epochs are full. With ``target_saving``, every pruned epoch not yet planned
        is projected at an equal share of the budget still left (what :meth:`ratio_for` aims
        at), so the projected total is the run's realised one when the epochs deliver their
        shares; with a fixed ratio the length depends on future losses (None)."""
        if not self.is_pruned_epoch(epoch):
            return self.num_examples
        if self.target_saving is None:
            return None
        first_open = max(self._pruned, default=-1) + 1
        if epoch < first_open:  # planned epochs are counted by the sampler; not asked here
            return None
        share = min(MAX_PRUNE_RATIO * self.num_examples, max(0.0, self._budget_left(first_open)))
        return self.num_examples - round(share)

    def plan(self, epoch: int, scores: ScoreTable, rng: SeedStreams) -> EpochPlan:
        gen = rng(epoch)
        n = self.num_examples
        if not self.is_pruned_epoch(epoch):
            self._record(epoch, 0, 0.0)
            return EpochPlan(ids=permutation(n, gen))
        values = scores.values
        below = values < values.mean(dtype=np.float64)
        d1 = int(np.count_nonzero(below))
        r = self.ratio_for(epoch, d1)
        # round() strips float noise such as (1 - 0.9) * 10 = 0.9999999999999998.
        keep = math.floor(round((1.0 - r) * d1, 6))
        keep_mask = choose_in_mask(below, keep, gen)
        np.logical_or(keep_mask, ~below, out=keep_mask)
        ids = permuted_nonzero(keep_mask, gen)
        self._record(epoch, d1 - keep, r)
        return EpochPlan(
            ids=ids,
            weight_mask=below,
            gamma=1.0 / (1.0 - r),
            decision=values,
            decision_known=scores.seen,
        )

    def _record(self, epoch: int, pruned: int, ratio: float) -> None:
        self._pruned[epoch] = pruned
        self._ratios[epoch] = ratio

    @property
    def pruned_per_epoch(self) -> dict[int, int]:
        """Examples pruned in each epoch planned so far (global, before sharding)."""
        return dict(self._pruned)

    @property
    def ratio_per_epoch(self) -> dict[int, float]:
        """The prune ratio r used in each epoch planned so far."""
        return dict(self._ratios)

    def saved_fraction(self) -> float:
        """Pruned examples so far over ``E * N`` (the run's saving when all epochs are planned)."""
        return sum(self._pruned.values()) / (self.num_epochs * self.num_examples)

    def state_dict(self) -> dict[str, Any]:
        return {_K_PRUNED: dict(self._pruned), _K_RATIOS: dict(self._ratios)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pruned = {int(k): int(v) for k, v in state[_K_PRUNED].items()}
        self._ratios = {int(k): float(v) for k, v in state[_K_RATIOS].items()}


class InfoBatchSampler(EpochSampler):
    """Soft-pruning sampler with loss rescaling and annealing: :class:`InfoBatch` run by
    :class:`EpochSampler`.

    ``InfoBatchSampler(N, E, prune_ratio, delta, target_saving=..., initial_score=...,
    **options)``: the first arguments are :class:`InfoBatch`'s, ``options`` are
    :class:`EpochSampler`'s (seed, rank, world_size, drop_last, scores, trace).
    ``len(sampler)`` is this rank's length of the current epoch's plan.
    """

    policy: InfoBatch

    def __init__(
        self,
        num_examples: int,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        target_saving: float | None = None,
        initial_score: float = 3.0,
        **options: Any,
    ):
        policy = InfoBatch(
            num_examples,
            num_epochs,
            prune_ratio,
            delta,
            target_saving=target_saving,
            initial_score=initial_score,
        )
        super().__init__(policy, **options)

    @property
    def num_epochs(self) -> int:
        return self.policy.num_epochs

    @property
    def pruned_per_epoch(self) -> dict[int, int]:
        """Examples pruned in each epoch planned so far (global, before sharding)."""
        return self.policy.pruned_per_epoch

    @property
    def ratio_per_epoch(self) -> dict[int, float]:
        """The prune ratio r used in each epoch planned so far."""
        return self.policy.ratio_per_epoch

    def saved_fraction(self) -> float:
        """Pruned examples so far over ``E * N``."""
        return self.policy.saved_fraction()

    def schedule_progress(self, step_in_epoch: int, batch_size: int) -> float:
        """Training progress in [0, 1] as ``(epoch + step/steps_in_epoch) / E``; feed it to a
        ``LambdaLR`` so the schedule follows epochs while pruned epochs have fewer steps."""
        steps = max(1, self.steps_per_epoch(batch_size))
        return min(1.0, (self._epoch + min(step_in_epoch, steps) / steps) / self.num_epochs)
