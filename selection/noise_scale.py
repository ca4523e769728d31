"""Gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018).

Rules: docs/noise-scale.md.

Two unbiased estimators from squared gradient norms taken at the same parameters:

- two batch sizes ``b_small < b_big`` (e.g. the per-device gradient before the DDP all-reduce and
  the all-reduced one)::

      |G|^2 = (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
      trS   = (|G_small|^2 - |G_big|^2) / (1/b_small - 1/b_big)

- per-example norms (``b_small = 1``, ``b_big = B``; nearly free with ghost norms)::

      trS   = B/(B-1) (mean_i |g_i|^2 - |g_mean|^2),   |G|^2 = |g_mean|^2 - trS / B

Each estimate is unbiased but their ratio is not: keep separate EMAs of the two and report
their ratio (``NoiseScaleTracker``). Inputs are squared norms of gradients of the *mean*
per-example loss (``|g_mean|^2`` = squared norm of ``.grad`` after ``loss.mean().backward()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from winnow.selection._state import check_state, make_state

__all__ = [
    "NoiseScaleEstimate",
    "NoiseScaleTracker",
    "grad_sq_norm",
    "noise_scale_from_per_example",
    "noise_scale_two_batches",
]


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """``grad_sq``: estimate of ``|G|^2``; ``trace_cov``: of ``tr(Sigma)``; floats."""

    grad_sq: float
    trace_cov: float

    @property
    def b_simple(self) -> float:
        """``trace_cov / grad_sq`` (inf when ``grad_sq <= 0``: noise dominates)."""
        if math.isnan(self.grad_sq) or math.isnan(self.trace_cov):
            return math.nan
        return self.trace_cov / self.grad_sq if self.grad_sq > 0 else math.inf


def _as_float(x, name: str) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(x.shape)}")
        x = x.item()
    value = float(x)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite squared norm >= 0, got {value}")
    return value


def grad_sq_norm(parameters) -> torch.Tensor:
    """``sum_p |p.grad|^2`` over parameters that have a gradient (a 0-d tensor, no host sync)."""
    sq = [p.grad.detach().float().square().sum() for p in parameters if p.grad is not None]
    if not sq:
        raise ValueError("no parameter has a .grad; call backward() first")
    return torch.stack(sq).sum()


def noise_scale_from_per_example(per_example_norms, mean_grad_sq: float) -> NoiseScaleEstimate:
    """Estimate from per-example gradient norms ``[B]`` (not squared) and ``|g_mean|^2``.

    ``per_example_norms``: e.g. ``per_example_grad_norms(...)`` (torch or numpy), ``B >= 2``.
    ``mean_grad_sq``: squared norm of the batch-mean gradient at the same parameters.
    """
    norms = per_example_norms
    if isinstance(norms, torch.Tensor):
        norms = norms.detach().double().cpu().numpy()
    norms = np.asarray(norms, dtype=np.float64)
    if norms.ndim != 1 or norms.shape[0] < 2:
        raise ValueError(f"per_example_norms must be 1-D with B >= 2, got shape {norms.shape}")
    if not np.all(np.isfinite(norms)):
        raise ValueError(f"per_example_norms has {int((~np.isfinite(norms)).sum())} non-finite")
    g_mean_sq = _as_float(mean_grad_sq, "mean_grad_sq")
    b = norms.shape[0]
    trace = b / (b - 1) * (float(np.mean(norms**2)) - g_mean_sq)
    return NoiseScaleEstimate(grad_sq=g_mean_sq - trace / b, trace_cov=trace)


def noise_scale_two_batches(
    small_sq: float, big_sq: float, b_small: int, b_big: int
) -> NoiseScaleEstimate:
    """Estimate from ``|G_small|^2`` and ``|G_big|^2``, mean gradients over ``b_small < b_big``."""
    small, big = _as_float(small_sq, "small_sq"), _as_float(big_sq, "big_sq")
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    return NoiseScaleEstimate(grad_sq=grad_sq, trace_cov=trace)


class NoiseScaleTracker:
    """Bias-corrected EMAs of ``|G|^2`` and ``tr(Sigma)``; ``b_simple`` is their ratio.

    ``beta`` = 0.99 as in GPT-NeoX; a step whose estimate is not finite is skipped and counted.
    """

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self._grad_sq = 0.0
        self._trace = 0.0
        self.steps = 0
        self.skipped = 0

    def update(self, estimate: NoiseScaleEstimate) -> None:
        if not (math.isfinite(estimate.grad_sq) and math.isfinite(estimate.trace_cov)):
            self.skipped += 1
            return
        self._grad_sq = self.beta * self._grad_sq + (1 - self.beta) * estimate.grad_sq
        self._trace = self.beta * self._trace + (1 - self.beta) * estimate.trace_cov
        self.steps += 1

    @property
    def estimate(self) -> NoiseScaleEstimate:
        """The bias-corrected EMAs (NaN before the first update)."""
        if self.steps == 0:
            return NoiseScaleEstimate(math.nan, math.nan)
        correction = 1.0 - self.beta**self.steps
        return NoiseScaleEstimate(self._grad_sq / correction, self._trace / correction)

    @property
    def b_simple(self) -> float:
        return self.estimate.b_simple

    def state_dict(self) -> dict[str, Any]:
        """The EMAs and counters, in the state convention of docs/conventions.md."""
        return make_state(
            "NoiseScaleTracker",
            1,
            {"beta": self.beta},
            grad_sq=self._grad_sq,
            trace=self._trace,
            steps=self.steps,
            skipped=self.skipped,
        )

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses a state of another ``beta``."""
        check_state(
            state,
            kind="NoiseScaleTracker",
            version=1,
            config={"beta": self.beta},
            required=("grad_sq", "trace", "steps", "skipped"),
        )
        self._grad_sq, self._trace = float(state["grad_sq"]), float(state["trace"])
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])
