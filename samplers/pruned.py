"""Static pruning: train on a fixed subset chosen once from stored scores (ALGORITHMS.md §8).

Any metric works (EL2N, GraNd, forgetting counts, prototype distance, learnability, ...): the
caller passes ``scores [N]`` and says which end is wanted (``largest=True`` keeps the highest,
e.g. the hardest by EL2N). Choice rules, all from ``selection.choose``:

- plain: top/bottom ``k``;
- ``offset=m``: skip the ``m`` most extreme first (Data Diet's offset mode, drops likely noise);
- ``alpha``: calibration by randomisation, ``round(alpha*k)`` of the budget drawn uniformly
  from the rest (Ayed & Hayou; use more randomness as the kept fraction shrinks);
- ``beta``: stochastic selection, Gumbel-top-k with coldness ``beta`` (``kind`` softmax, power
  or softrank; ALGORITHMS.md §7);
- ``labels``: the same rule inside each class, budgets proportional to class sizes.

The subset is fixed at construction (a pure function of scores and seed); each epoch is a fresh
uniform shuffle of it, all weights 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from winnow.samplers._epoch import EpochPlan, EpochSampler, TraceWriter
from winnow.samplers._permute import index_dtype, permuted
from winnow.samplers.scores import ScoreTable
from winnow.selection import choose

__all__ = ["PrunedSampler"]

_STREAM_SELECT = 0xC0
_STREAM_EPOCH = 0xE0


class PrunedSampler(EpochSampler):
    """A static subset of the data, reshuffled every epoch.

    Args:
        scores: float ``[N]`` stored score per example (finite), aligned by example_id.
        keep: fraction in (0, 1] (float) or number of examples (int) to keep.
        largest: True keeps the highest scores, False the lowest.
        offset: skip this many of the most extreme scores first (not with alpha/beta).
        alpha: fraction of the budget drawn uniformly at random, in [0, 1].
        beta: coldness of stochastic selection (None = deterministic); ``kind`` picks the
            distribution ("softmax", "power", "softrank").
        labels: optional int ``[N]``; choose per class.
        seed: seeds the (stochastic) choice and every epoch's shuffle.
        score_table: a :class:`ScoreTable` for training feedback (``update``/``reweight``);
            feedback does not change the subset.
        rank, world_size, drop_last, trace: see :class:`EpochSampler`.
    """

    def __init__(
        self,
        scores: Any,
        keep: float | int,
        *,
        largest: bool = True,
        offset: int = 0,
        alpha: float = 0.0,
        beta: float | None = None,
        kind: str = "softmax",
        labels: Any = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        score_table: ScoreTable | None = None,
        trace: TraceWriter | None = None,
    ):
        values = np.asarray(scores)
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(
                f"scores must be a 1-D numeric array, got {values.dtype} {values.shape}"
            )
        super().__init__(
            len(values),
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            scores=score_table,
            trace=trace,
        )
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            raise ValueError(
                f"scores must be finite; {len(bad)} are not (ids {bad[:5].tolist()}); "
                "fill or drop missing scores first"
            )
        self.static_scores = values
        self.keep_count = _keep_count(keep, len(values))
        positions = self._choose(
            values, largest=largest, offset=offset, alpha=alpha, beta=beta, kind=kind, labels=labels
        )
        self.kept_ids = np.sort(positions).astype(index_dtype(len(values)))
        self.kept_ids.flags.writeable = False

    def _choose(
        self,
        values: np.ndarray,
        *,
        largest: bool,
        offset: int,
        alpha: float,
        beta: float | None,
        kind: str,
        labels: Any,
    ) -> np.ndarray:
        if (offset and (alpha or beta is not None)) or (alpha and beta is not None):
            raise ValueError(
                f"offset, alpha and beta are alternatives; got offset={offset}, alpha={alpha}, "
                f"beta={beta}"
            )
        rng = self._rng(_STREAM_SELECT)
        k = self.keep_count
        if beta is not None:
            if not largest and kind == "power":
                raise ValueError("kind='power' needs largest=True (it weights by score**beta)")
            chooser, kwargs = choose.gumbel_top_k, {"beta": beta, "kind": kind, "rng": rng}
            if not largest:
                values = -values
        elif alpha:
            chooser, kwargs = choose.random_mix, {"alpha": alpha, "rng": rng, "largest": largest}
        elif offset:
            chooser, kwargs = choose.offset_window, {"offset": offset, "largest": largest}
        else:
            chooser, kwargs = (choose.top_k if largest else choose.bottom_k), {}
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != values.shape:
                raise ValueError(f"labels must have shape {values.shape}, got {labels.shape}")
            return choose.stratified(labels, k, chooser, scores=values, **kwargs)
        return chooser(values, k, **kwargs)

    def _make_plan(self, epoch: int) -> EpochPlan:
        ids = permuted(self.kept_ids, self._rng(_STREAM_EPOCH, epoch))
        return EpochPlan(ids=ids, decision=self.static_scores)

    def total_steps(self, batch_size: int, num_epochs: int, *, drop_last: bool = False) -> int:
        """Steps of ``num_epochs`` epochs on this rank (every epoch has the same length)."""
        return num_epochs * self.steps_per_epoch(batch_size, drop_last=drop_last)


def _keep_count(keep: float | int, n: int) -> int:
    if isinstance(keep, bool):
        raise TypeError("keep must be a fraction (float) or a count (int), got a bool")
    if isinstance(keep, int | np.integer):
        if not 1 <= keep <= n:
            raise ValueError(f"keep count must be in [1, {n}], got {keep}")
        return int(keep)
    if isinstance(keep, float | np.floating):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
        return max(1, round(keep * n))
    raise TypeError(f"keep must be a float fraction or an int count, got {type(keep).__name__}")
