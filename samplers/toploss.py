"""Selective backprop as an in-step selector: keep the highest-loss rows of a super-batch.

The per-example variant of hard-batch training (docs/hard-batch.md, docs/rho-loss.md): score
the super-batch with the learner (no grad), keep the ``b`` rows with the largest loss, train on
them with a plain mean. ``beta > 0`` makes the choice stochastic
(docs/stochastic-selection.md): ``b`` rows drawn without replacement ∝ ``exp(beta * loss)``
by Gumbel-top-k. It needs no reference or stored scores, and on noisy data it favours
mislabelled rows (RHO-LOSS exists to fix that).

DDP: each rank selects from its own super-batch; nothing is gathered.
"""

from __future__ import annotations

from typing import Any

import torch

from winnow.samplers.selector import InStepSelector
from winnow.selection.choose_torch import gumbel_top_k_torch

__all__ = ["TopLossSelector"]


class TopLossSelector(InStepSelector):
    """Keep ``k = max(1, floor(keep * B))`` rows of each super-batch by learner loss (higher first).

    Args:
        keep: the share of the super-batch trained on, in ``(0, 1]`` (default 0.1).
        beta: coldness of the stochastic choice; ``None`` (default) = deterministic top-k,
            ``0`` = uniform.
        batch_size, seed, rank, check_finite: see :class:`InStepSelector`.

    ``select(ids, learner_losses)`` returns int64 rows (highest loss first when deterministic)
    and float32 ones; ``ids`` may be ``None``.
    """

    input_name = "learner_losses"

    def __init__(self, keep: float | None = None, *, beta: float | None = None, **options: Any):
        if beta is not None and not beta >= 0.0:
            raise ValueError(f"beta must be >= 0 or None, got {beta!r}")
        super().__init__(keep=keep, **options)
        self.beta = None if beta is None else float(beta)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta": self.beta}

    def choose(
        self, scores: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.beta is None:
            rows = torch.topk(scores, k, sorted=True).indices
        else:
            rows = gumbel_top_k_torch(scores, k, beta=self.beta, generator=generator)
        return rows, torch.ones(k, dtype=torch.float32, device=scores.device)
