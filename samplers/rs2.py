"""RS2: repeated random sampling (Okanovic et al., ICLR 2024), one round per sampler epoch.

Rules (docs/rs2.md). Each round trains one pass over ``k = round(keep * N)`` ids.
Without replacement (default): round ``t`` takes the next ``k`` ids of one uniform permutation of
all N; once fewer than ``k`` unused ids remain, a fresh permutation starts (so every id is seen
before any repeats; upstream's one-short wrap-around chunk is not reproduced). With replacement:
each round is an independent uniform ``k``-subset. ``labels=`` stratifies either mode by class:
``round(keep * N_c)`` ids of class ``c`` per round, each class cycling its own permutation.

Step counts (per rank): ``ceil(k/b)`` per round, ``floor(k/b)`` with the DataLoader's
``drop_last=True`` (upstream's choice without replacement); build the LR schedule over the
*reduced* total with :func:`winnow.samplers.schedule.compressed_cosine` (the schedule is
compressed, not truncated).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from winnow.samplers._permute import (
    choose_in_mask,
    index_dtype,
    permutation,
    permuted,
    permuted_nonzero,
)
from winnow.samplers.epoch import EpochPlan, EpochPolicy, EpochSampler, SeedStreams
from winnow.samplers.score_table import ScoreTable

__all__ = ["RS2", "RS2Sampler"]

_STREAM_PERM = 1
_STREAM_ROUND = 2
_STREAM_CLASS = 3


class RS2(EpochPolicy):
    """RS2's rounds as a policy: a new random ``keep * N`` ids every round (= sampler epoch).

    Args:
        num_examples: N.
        keep: the share of the data trained on per round, in (0, 1] (the RS2 paper's
            selection ratio r).
        replacement: False = cycle through permutations (each id once per ``1/keep`` rounds);
            True = independent subsets per round.
        labels: optional int ``[N]`` class labels for per-class (stratified) draws.
    """

    def __init__(
        self,
        num_examples: int,
        keep: float,
        *,
        replacement: bool = False,
        labels: Any = None,
    ):
        super().__init__(num_examples)
        if isinstance(keep, bool) or not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
        self.keep = float(keep)
        self.replacement = bool(replacement)
        self.stratified = labels is not None
        self._classes: list[np.ndarray] | None = None
        if labels is None:
            self.round_size = max(1, round(self.keep * self.num_examples))
        else:
            self._classes = _split_by_class(labels, self.num_examples)
            self._class_k = [round(self.keep * len(m)) for m in self._classes]
            self.round_size = int(sum(self._class_k))
            if self.round_size == 0:
                raise ValueError(
                    f"keep={keep} rounds every class to 0 examples per round; raise keep"
                )
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "replacement": self.replacement,
            "stratified": self.stratified,
            "round_size": self.round_size,
        }

    def plan_length(self, epoch: int) -> int:
        """Every round has ``round_size`` ids."""
        return self.round_size

    def plan(self, epoch: int, scores: ScoreTable, rng: SeedStreams) -> EpochPlan:
        if self._classes is not None:
            return EpochPlan(ids=self._stratified_round(epoch, rng))
        n, k = self.num_examples, self.round_size
        if self.replacement:
            gen = rng(_STREAM_ROUND, epoch)
            chosen = choose_in_mask(np.ones(n, dtype=bool), k, gen)
            return EpochPlan(ids=permuted_nonzero(chosen, gen))
        cycle, chunk = divmod(epoch, n // k)
        if self._perm_cache is None or self._perm_cache[0] != cycle:
            self._perm_cache = None  # release the old permutation before drawing the next
            self._perm_cache = (cycle, permutation(n, rng(_STREAM_PERM, cycle)))
        return EpochPlan(ids=self._perm_cache[1][chunk * k : (chunk + 1) * k].copy())

    def _stratified_round(self, epoch: int, rng: SeedStreams) -> np.ndarray:
        assert self._classes is not None
        parts = []
        for c, (members, k) in enumerate(zip(self._classes, self._class_k, strict=True)):
            if k == 0:
                continue
            if self.replacement:
                gen = rng(_STREAM_CLASS, c, epoch)
                parts.append(members[np.sort(gen.choice(len(members), k, replace=False))])
            else:
                cycle, chunk = divmod(epoch, len(members) // k)
                perm = permuted(members, rng(_STREAM_CLASS, c, cycle))
                parts.append(perm[chunk * k : (chunk + 1) * k])
        return permuted(np.concatenate(parts), rng(_STREAM_ROUND, epoch))


class RS2Sampler(EpochSampler):
    """Repeated random subsets of ``keep * N`` ids: :class:`RS2` run by :class:`EpochSampler`.

    ``RS2Sampler(N, keep, replacement=..., labels=..., **options)``; ``options`` are
    :class:`EpochSampler`'s (seed, rank, world_size, drop_last, scores, trace). One sampler
    epoch is one round; ``total_steps(batch_size, num_rounds)`` is exact (upstream trains
    with ``DataLoader(drop_last=True)`` without replacement: pass ``drop_last=True`` then).
    """

    policy: RS2

    def __init__(
        self,
        num_examples: int,
        keep: float,
        *,
        replacement: bool = False,
        labels: Any = None,
        **options: Any,
    ):
        super().__init__(
            RS2(num_examples, keep, replacement=replacement, labels=labels), **options
        )

    @property
    def keep(self) -> float:
        return self.policy.keep

    @property
    def round_size(self) -> int:
        """Ids per round (global, before sharding)."""
        return self.policy.round_size

    @property
    def replacement(self) -> bool:
        return self.policy.replacement


def _split_by_class(labels: Any, num_examples: int) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if labels.shape != (num_examples,):
        raise ValueError(f"labels must have shape ({num_examples},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    order = np.argsort(labels, kind="stable").astype(index_dtype(num_examples))
    _, starts = np.unique(labels[order], return_index=True)
    return np.split(order, starts[1:])
