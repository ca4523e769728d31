"""Learning-rate schedules for samplers that change the number of optimiser steps.

RS2 compresses the whole cosine schedule into the reduced step total (docs/rs2.md); it is
not truncated. InfoBatch keeps the LR on epoch progress instead
(:meth:`winnow.samplers.InfoBatchSampler.schedule_progress`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["compressed_cosine", "cosine_lambda"]


def compressed_cosine(
    step: int, total_steps: int, *, lr_max: float = 0.1, lr_min: float = 1e-4
) -> float:
    """Cosine from ``lr_max`` at step 0 to ``lr_min`` at ``total_steps`` (held there after).

    ``lr(t) = lr_min + (lr_max - lr_min) * (1 + cos(pi * t / T)) / 2``, closed form, per step;
    pass ``T = sampler.total_steps(batch_size, num_rounds)`` so the full schedule fits RS2's
    reduced step budget.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 <= lr_min <= lr_max:
        raise ValueError(f"need 0 <= lr_min <= lr_max, got lr_min={lr_min}, lr_max={lr_max}")
    t = min(step, total_steps) / total_steps
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_lambda(
    total_steps: int, *, lr_max: float = 0.1, lr_min: float = 1e-4
) -> Callable[[int], float]:
    """Multiplier for ``torch.optim.lr_scheduler.LambdaLR`` with the optimiser's lr = ``lr_max``:
    ``LambdaLR(opt, cosine_lambda(T, lr_max=0.1, lr_min=1e-4))`` stepped once per batch."""
    compressed_cosine(0, total_steps, lr_max=lr_max, lr_min=lr_min)
    if lr_max == 0:
        raise ValueError("lr_max must be > 0 for a multiplier schedule")
    return lambda step: compressed_cosine(step, total_steps, lr_max=lr_max, lr_min=lr_min) / lr_max
