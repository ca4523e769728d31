"""RS2: repeated random sampling (Okanovic et al., ICLR 2024), one round per sampler epoch.

Rules (ALGORITHMS.md §3). Each round trains one pass over ``k = round(ratio * N)`` ids.
Without replacement (default): round ``t`` takes the next ``k`` ids of one uniform permutation of
all N; once fewer than ``k`` unused ids remain, a fresh permutation starts (so every id is seen
before any repeats; upstream's one-short wrap-around chunk is not reproduced). With replacement:
each round is an independent uniform ``k``-subset. ``labels=`` stratifies either mode by class:
``round(ratio * N_c)`` ids of class ``c`` per round, each class cycling its own permutation.

Step counts (per rank): ``floor(k/b)`` per round without replacement (upstream drops the last
partial batch), ``ceil(k/b)`` with; build the LR schedule over the *reduced* total with
:func:`samplers.schedule.compressed_cosine` (the schedule is compressed, not truncated).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from winnow.samplers._dist import shard_length
from winnow.samplers._epoch import EpochPlan, EpochSampler, TraceWriter, check_int
from winnow.samplers._permute import (
    choose_in_mask,
    index_dtype,
    permutation,
    permuted,
    permuted_nonzero,
)
from winnow.samplers.scores import ScoreTable

__all__ = ["RS2Sampler"]

_STREAM_PERM = 1
_STREAM_ROUND = 2
_STREAM_CLASS = 3


class RS2Sampler(EpochSampler):
    """Repeated random subsets of ``ratio * N`` ids, a new one every round (= sampler epoch).

    Args:
        num_examples: N.
        ratio: selection ratio r in (0, 1].
        replacement: False = cycle through permutations (each id once per ``1/r`` rounds);
            True = independent subsets per round.
        seed: round t is a pure function of (seed, t).
        labels: optional int ``[N]`` class labels for per-class (stratified) draws.
        rank, world_size, drop_last, scores, trace: see :class:`EpochSampler`.
    """

    def __init__(
        self,
        num_examples: int,
        ratio: float,
        replacement: bool = False,
        seed: int = 0,
        *,
        labels: Any = None,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        scores: ScoreTable | None = None,
        trace: TraceWriter | None = None,
    ):
        super().__init__(
            num_examples,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            scores=scores,
            trace=trace,
        )
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)
        self.replacement = bool(replacement)
        self._classes: list[np.ndarray] | None = None
        if labels is None:
            self.round_size = max(1, round(self.ratio * self.num_examples))
        else:
            self._classes = _split_by_class(labels, self.num_examples)
            self._class_k = [round(self.ratio * len(m)) for m in self._classes]
            self.round_size = int(sum(self._class_k))
            if self.round_size == 0:
                raise ValueError(
                    f"ratio={ratio} rounds every class to 0 examples per round; raise the ratio"
                )
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _make_plan(self, epoch: int) -> EpochPlan:
        if self._classes is not None:
            return EpochPlan(ids=self._stratified_round(epoch))
        n, k = self.num_examples, self.round_size
        if self.replacement:
            rng = self._rng(_STREAM_ROUND, epoch)
            chosen = choose_in_mask(np.ones(n, dtype=bool), k, rng)
            return EpochPlan(ids=permuted_nonzero(chosen, rng))
        cycle, chunk = divmod(epoch, n // k)
        if self._perm_cache is None or self._perm_cache[0] != cycle:
            self._perm_cache = (cycle, permutation(n, self._rng(_STREAM_PERM, cycle)))
        return EpochPlan(ids=self._perm_cache[1][chunk * k : (chunk + 1) * k].copy())

    def _stratified_round(self, epoch: int) -> np.ndarray:
        assert self._classes is not None
        parts = []
        for c, (members, k) in enumerate(zip(self._classes, self._class_k, strict=True)):
            if k == 0:
                continue
            if self.replacement:
                rng = self._rng(_STREAM_CLASS, c, epoch)
                parts.append(members[np.sort(rng.choice(len(members), k, replace=False))])
            else:
                cycle, chunk = divmod(epoch, len(members) // k)
                perm = permuted(members, self._rng(_STREAM_CLASS, c, cycle))
                parts.append(perm[chunk * k : (chunk + 1) * k])
        return permuted(np.concatenate(parts), self._rng(_STREAM_ROUND, epoch))

    def steps_per_round(self, batch_size: int, *, drop_last: bool | None = None) -> int:
        """Optimiser steps per round on this rank. ``drop_last`` defaults to upstream's choice:
        True without replacement, False with."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if drop_last is None:
            drop_last = not self.replacement
        per_rank = shard_length(self.round_size, self.world_size, drop_last=self.drop_last)
        return per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def total_steps(
        self, batch_size: int, num_rounds: int, *, drop_last: bool | None = None
    ) -> int:
        """Steps of ``num_rounds`` rounds on this rank (exact: every round has the same size)."""
        num_rounds = check_int("num_rounds", num_rounds, minimum=0)
        return num_rounds * self.steps_per_round(batch_size, drop_last=drop_last)


def _split_by_class(labels: Any, num_examples: int) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if labels.shape != (num_examples,):
        raise ValueError(f"labels must have shape ({num_examples},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    order = np.argsort(labels, kind="stable").astype(index_dtype(num_examples))
    _, starts = np.unique(labels[order], return_index=True)
    return np.split(order, starts[1:])
