"""Static pruning: train on a fixed subset chosen once from stored scores (docs/static-pruning.md).

Any metric works (EL2N, GraNd, forgetting counts, prototype distance, learnability, ...): the
caller passes ``scores [N]`` and says which end is wanted (``largest=True`` keeps the highest,
e.g. the hardest by EL2N). Choice rules, all from ``selection.choose``:

- plain: top/bottom ``k``;
- ``offset=m``: skip the ``m`` most extreme first (Data Diet's offset mode, drops likely noise);
- ``alpha``: calibration by randomisation, ``round(alpha*k)`` of the budget drawn uniformly
  from the rest (Ayed & Hayou; use more randomness as the kept fraction shrinks);
- ``beta``: stochastic selection, Gumbel-top-k with coldness ``beta`` (``kind`` softmax, power
  or softrank; docs/stochastic-selection.md);
- ``labels``: the same rule inside each class, budgets proportional to class sizes.

The subset is fixed at construction (a pure function of scores and seed); each epoch is a fresh
uniform shuffle of it, all weights 1.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from winnow.samplers._permute import index_dtype, permuted
from winnow.samplers.epoch import EpochPlan, EpochPolicy, EpochSampler, SeedStreams
from winnow.samplers.score_table import ScoreTable
from winnow.selection import choose

__all__ = ["PrunedSampler", "StaticSubset"]

_STREAM_SELECT = 0xC0
_STREAM_EPOCH = 0xE0


class StaticSubset(EpochPolicy):
    """A fixed subset chosen once from stored scores, reshuffled every epoch, all weights 1.

    Args:
        scores: float ``[N]`` stored score per example (finite), aligned by example_id.
        keep: the share of the data trained on, a fraction in (0, 1] (float), or a count (int).
        largest: True keeps the highest scores, False the lowest.
        offset: skip this many of the most extreme scores first (not with alpha/beta).
        alpha: fraction of the budget drawn uniformly at random, in [0, 1].
        beta: coldness of stochastic selection (None = deterministic); ``kind`` picks the
            distribution ("softmax", "power", "softrank").
        labels: optional int ``[N]``; choose per class.

    The subset is drawn from the sampler's seed (stream ``_STREAM_SELECT``) the first time it is
    needed: :attr:`PrunedSampler.kept_ids` does so at construction.
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
    ):
        values = np.asarray(scores)
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(
                f"scores must be a 1-D numeric array, got {values.dtype} {values.shape}"
            )
        super().__init__(len(values))
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            raise ValueError(
                f"scores must be finite; {len(bad)} are not (ids {bad[:5].tolist()}); "
                "fill or drop missing scores first"
            )
        if (offset and (alpha or beta is not None)) or (alpha and beta is not None):
            raise ValueError(
                f"offset, alpha and beta are alternatives; got offset={offset}, alpha={alpha}, "
                f"beta={beta}"
            )
        if beta is not None and not largest and kind == "power":
            raise ValueError("kind='power' needs largest=True (it weights by score**beta)")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != values.shape:
                raise ValueError(f"labels must have shape {values.shape}, got {labels.shape}")
        self.static_scores = values
        self.keep_count = _keep_count(keep, len(values))
        self.largest = bool(largest)
        self.offset = int(offset)
        self.alpha = float(alpha)
        self.beta = None if beta is None else float(beta)
        self.kind = kind
        self.labels = labels
        # Identifies the scores in checkpoints: another score array is another subset.
        self.scores_crc32 = zlib.crc32(np.ascontiguousarray(values))
        self._kept: np.ndarray | None = None

    def config(self) -> dict[str, Any]:
        return {
            "keep_count": self.keep_count,
            "largest": self.largest,
            "offset": self.offset,
            "alpha": self.alpha,
            "beta": self.beta,
            "kind": self.kind,
            "stratified": self.labels is not None,
            "scores_crc32": self.scores_crc32,
        }

    def plan_length(self, epoch: int) -> int:
        """Every epoch trains the same ``keep_count`` ids."""
        return self.keep_count

    def kept_ids(self, rng: SeedStreams) -> np.ndarray:
        """The subset, ascending (read-only), drawn once from ``rng``'s selection stream."""
        if self._kept is None:
            kept = np.sort(self._choose(rng(_STREAM_SELECT))).astype(index_dtype(self.num_examples))
            kept.flags.writeable = False
            self._kept = kept
        return self._kept

    def _choose(self, gen: np.random.Generator) -> np.ndarray:
        values, k = self.static_scores, self.keep_count
        if self.beta is not None:
            chooser = choose.gumbel_top_k
            kwargs = {"beta": self.beta, "kind": self.kind, "rng": gen}
            if not self.largest:
                values = -values
        elif self.alpha:
            chooser = choose.random_mix
            kwargs = {"alpha": self.alpha, "rng": gen, "largest": self.largest}
        elif self.offset:
            chooser, kwargs = choose.offset_window, {"offset": self.offset, "largest": self.largest}
        else:
            chooser, kwargs = (choose.top_k if self.largest else choose.bottom_k), {}
        if self.labels is not None:
            return choose.stratified(self.labels, k, chooser, scores=values, **kwargs)
        return chooser(values, k, **kwargs)

    def plan(self, epoch: int, scores: ScoreTable, rng: SeedStreams) -> EpochPlan:
        ids = permuted(self.kept_ids(rng), rng(_STREAM_EPOCH, epoch))
        return EpochPlan(ids=ids, decision=self.static_scores)


class PrunedSampler(EpochSampler):
    """A static subset of the data, reshuffled every epoch: :class:`StaticSubset` run by
    :class:`EpochSampler`.

    ``PrunedSampler(scores, keep, largest=..., offset=..., alpha=..., beta=..., kind=...,
    labels=..., score_table=None, **options)``; ``options`` are :class:`EpochSampler`'s
    (seed, rank, world_size, drop_last, trace). ``score_table`` is a :class:`ScoreTable` for
    training feedback (``update``/``reweight``); feedback does not change the subset.
    """

    policy: StaticSubset

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
        score_table: ScoreTable | None = None,
        **options: Any,
    ):
        policy = StaticSubset(
            scores,
            keep,
            largest=largest,
            offset=offset,
            alpha=alpha,
            beta=beta,
            kind=kind,
            labels=labels,
        )
        super().__init__(policy, scores=score_table, **options)
        self.kept_ids  # noqa: B018 (choose now, so a bad choice fails at construction)

    @property
    def kept_ids(self) -> np.ndarray:
        """The kept example ids, ascending (read-only)."""
        return self.policy.kept_ids(self.streams)

    @property
    def keep_count(self) -> int:
        return self.policy.keep_count

    @property
    def static_scores(self) -> np.ndarray:
        return self.policy.static_scores


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
