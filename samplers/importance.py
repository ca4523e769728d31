"""Importance sampling as an in-step selector (ALGORITHMS.md §9, Katharopoulos & Fleuret 2018).

The loader yields a pre-sampled super-batch of ``B`` rows (upstream: ``B = 3 b``); the learner
scores it without gradients; each row's score is an upper bound of its gradient norm
(:func:`selection.importance.last_layer_bound`). The selector draws ``b`` rows **with
replacement** with ``p_i = g_i / sum(g)`` and returns the unbiased loss weights ``1 / (B p_i)``:
train with ``(weights * losses[rows]).mean()``.

Sampling only pays when it reduces the gradient variance enough to cover the scoring forward, so
a gate keeps the draw uniform (without replacement, weights 1) until the smoothed estimate
``tau`` (EMA, momentum 0.9) exceeds ``tau_th = (B + 3b) / (3b)``. Both draws are made and the
gate picks with ``torch.where``, so the step never waits on the host for the gate's decision.

DDP: each rank selects from its own super-batch and keeps its own ``tau`` (not gathered).
"""

from __future__ import annotations

from typing import Any

import torch
from winnow.samplers._instep import (
    DeviceGenerators,
    check_losses,
    default_rank,
    ids_to_numpy,
    load_selector_state,
    selector_state,
)
from winnow.selection.importance import (
    last_layer_bound,
    sample_with_replacement,
    tau_threshold,
    variance_reduction,
)

__all__ = ["ImportanceSelector"]


class ImportanceSelector:
    """Draw ``batch_size`` rows of each super-batch ∝ gradient-norm bound, behind a tau gate.

    Args:
        batch_size: rows trained per step (``b``); the super-batch must have at least as many.
        seed: seeds the selector's generators (combined with the rank).
        momentum: EMA momentum of ``tau`` (upstream 0.9).
        tau_th: gate threshold; ``None`` = ``(B + 3b) / (3b)`` for each super-batch size ``B``;
            ``0`` = always importance-sample.
    """

    def __init__(
        self,
        batch_size: int,
        seed: int = 0,
        *,
        momentum: float = 0.9,
        tau_th: float | None = None,
        rank: int | None = None,
        check_finite: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if tau_th is not None and not tau_th >= 0.0:
            raise ValueError(f"tau_th must be >= 0 or None, got {tau_th!r}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.momentum = float(momentum)
        self.tau_th = tau_th
        self.rank = default_rank(rank)
        self.check_finite = check_finite
        self._gens = DeviceGenerators(self.seed, self.rank)
        self._tau: torch.Tensor | None = None  # EMA, on the scores' device
        self.steps = 0

    @property
    def tau(self) -> float:
        """The smoothed variance-reduction estimate (1.0 before the first step; a host sync)."""
        return 1.0 if self._tau is None else float(self._tau)

    def select(self, ids, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, weights)`` from per-row importance ``scores`` (``[B]``, >= 0, any device).

        ``rows``: int64 ``[b]`` positions into the super-batch (repeats possible once the gate
        is open); ``weights``: float32 ``[b]``, ``1 / (B p_row)`` when sampling, else ones.
        """
        n = None if ids is None else ids_to_numpy(ids).shape[0]
        g = check_losses(scores, n, name="scores", check_finite=self.check_finite).float()
        big = g.shape[0]
        if big < self.batch_size:
            raise ValueError(
                f"super-batch of {big} rows is smaller than the batch of {self.batch_size}"
            )
        gen = self._gens.get(g.device)
        tau_now = variance_reduction(g)
        if self._tau is None:
            self._tau = torch.ones((), dtype=torch.float32, device=g.device)
        self._tau = self.momentum * self._tau.to(g.device) + (1.0 - self.momentum) * tau_now
        threshold = self.tau_th if self.tau_th is not None else tau_threshold(big, self.batch_size)
        is_rows, is_weights = sample_with_replacement(g, self.batch_size, generator=gen)
        uni_rows = torch.randperm(big, generator=gen, device=g.device)[: self.batch_size]
        gate = self._tau > threshold
        rows = torch.where(gate, is_rows, uni_rows)
        weights = torch.where(gate, is_weights, torch.ones_like(is_weights))
        self.steps += 1
        return rows, weights

    def select_logits(
        self,
        ids,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`select` with the last-layer bound of softmax cross-entropy as the score."""
        return self.select(ids, last_layer_bound(logits, targets, features=features))

    def state_dict(self) -> dict[str, Any]:
        """Seed, rank, step count, the smoothed tau and generator states."""
        return selector_state(self, tau=self.tau)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_selector_state(self, state)
        self._tau = torch.tensor(float(state["tau"]), dtype=torch.float32)
