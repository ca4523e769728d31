"""Importance sampling as an in-step selector (Katharopoulos & Fleuret 2018).

Rules: docs/importance-sampling.md.

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

import math
from typing import Any

import torch

from winnow.samplers._instep import ids_to_numpy
from winnow.samplers.selector import InStepSelector
from winnow.selection.importance import (
    last_layer_bound,
    sample_with_replacement,
    tau_threshold,
    variance_reduction,
)

__all__ = ["ImportanceSelector"]


class ImportanceSelector(InStepSelector):
    """Draw ``b`` rows of each super-batch ∝ gradient-norm bound, behind a tau gate.

    Args:
        keep: the share of the super-batch trained on (default 1/3: upstream's ``B = 3b``);
            or ``batch_size=b`` rows exactly.
        momentum: EMA momentum of ``tau`` (upstream 0.9).
        tau_th: gate threshold; ``None`` = ``(B + 3b) / (3b)`` for each super-batch size ``B``;
            ``0`` = always importance-sample.
        seed, rank, check_finite: see :class:`InStepSelector`.

    ``select(ids, scores)`` takes per-row importance ``scores [B]`` (>= 0, any device) and
    returns ``rows`` int64 ``[b]`` (repeats possible once the gate is open) and ``weights``
    float32 ``[b]``: ``1 / (B p_row)`` when sampling, else ones.
    """

    default_keep = 1.0 / 3.0

    def __init__(
        self,
        keep: float | None = None,
        *,
        momentum: float = 0.9,
        tau_th: float | None = None,
        **options: Any,
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if tau_th is not None and not tau_th >= 0.0:
            raise ValueError(f"tau_th must be >= 0 or None, got {tau_th!r}")
        super().__init__(keep=keep, **options)
        self.momentum = float(momentum)
        self.tau_th = None if tau_th is None else float(tau_th)
        self._tau: torch.Tensor | None = None  # EMA, on the scores' device
        self._super_batch: int | None = None  # B of the last super-batch seen
        # The gate as the host sees it: the EMA copied to pinned memory after each update
        # (no wait), read at the next step's decision, so a GPU loop never syncs per step.
        self._tau_host: torch.Tensor | None = None
        self._tau_ready: torch.cuda.Event | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum, "tau_th": self.tau_th}

    @property
    def tau(self) -> float:
        """The smoothed variance-reduction estimate (1.0 before the first step; a host sync)."""
        return 1.0 if self._tau is None else float(self._tau)

    def _threshold(self, super_batch: int | None) -> float | None:
        if self.tau_th is not None:
            return self.tau_th
        if self.batch_size is None:
            # (B + 3b) / (3b) with b = keep * B does not depend on B
            return (1.0 + 3.0 * self.keep) / (3.0 * self.keep)
        if super_batch is None:
            return None
        return tau_threshold(super_batch, self.selected_size(super_batch))

    def _update_tau(self, scores: torch.Tensor) -> None:
        tau_now = variance_reduction(scores)
        if self._tau is None:
            self._tau = torch.ones((), dtype=torch.float32, device=scores.device)
        self._tau = self.momentum * self._tau.to(scores.device) + (1.0 - self.momentum) * tau_now
        if self._tau.device.type == "cuda":
            if self._tau_host is None:
                self._tau_host = torch.empty((), dtype=torch.float32, pin_memory=True)
                self._tau_ready = torch.cuda.Event()
            self._tau_host.copy_(self._tau, non_blocking=True)
            self._tau_ready.record()
        else:
            self._tau_host, self._tau_ready = self._tau, None

    @property
    def sampling(self) -> bool:
        """Whether the gate is open for the next step: score the super-batch and :meth:`select`
        when True, else train on :meth:`uniform` rows and :meth:`observe` their scores.

        A host value: on an accelerator it is the EMA as of the previous update, copied to
        pinned memory without waiting (one step late, never a sync on the step in flight).
        """
        threshold = self._threshold(self._super_batch)
        if threshold is None:
            return False
        if self._tau_host is None:
            return 1.0 > threshold
        if self._tau_ready is not None:
            self._tau_ready.synchronize()  # recorded a step ago: long done
        return float(self._tau_host) > threshold

    def uniform(
        self, super_batch: int, device: torch.device | str = "cpu", *, ids: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The closed gate's choice without scores: ``b`` rows of a super-batch of
        ``super_batch`` rows, uniformly without replacement, weights 1 (on ``device``).
        A traced selector needs the super-batch's ``ids`` (its scores are traced as NaN)."""
        if isinstance(super_batch, bool) or not isinstance(super_batch, int) or super_batch < 1:
            raise ValueError(f"super_batch must be a positive int, got {super_batch!r}")
        k = self.selected_size(super_batch)
        self._super_batch = super_batch
        gen = self.generator(device)
        rows = torch.randperm(super_batch, generator=gen, device=gen.device)[:k]
        weights = torch.ones(k, dtype=torch.float32, device=gen.device)
        if self._trace is not None:
            unscored = torch.full((super_batch,), math.nan, device=gen.device)
            self._record(None if ids is None else ids_to_numpy(ids), unscored, rows, weights)
        self.steps += 1
        return rows, weights

    def observe(self, scores: torch.Tensor) -> None:
        """Update ``tau`` from the importance scores ``[b]`` of the rows just trained on
        (the training forward's, e.g. ``last_layer_bound(logits.detach(), y)``), as upstream
        does while the gate is closed. No host sync."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.shape[0] == 0:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
            raise ValueError(f"observe() takes per-row scores [b] of the trained rows, got {shape}")
        self._update_tau(scores.detach().float())

    def choose(
        self, scores: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        big = scores.shape[0]
        self._super_batch = big
        self._update_tau(scores)
        threshold = self.tau_th if self.tau_th is not None else tau_threshold(big, k)
        is_rows, is_weights = sample_with_replacement(scores, k, generator=generator)
        uni_rows = torch.randperm(big, generator=generator, device=scores.device)[:k]
        gate = self._tau > threshold
        rows = torch.where(gate, is_rows, uni_rows)
        weights = torch.where(gate, is_weights, torch.ones_like(is_weights))
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

    def extra_state(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._tau = torch.tensor(float(state["tau"]), dtype=torch.float32)
