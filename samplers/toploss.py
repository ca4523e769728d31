"""Selective backprop as an in-step selector: keep the highest-loss rows of a super-batch.

The per-example variant of hard-batch training (ALGORITHMS.md §4, §6 "ce_loss_selection"): score
the super-batch with the learner (no grad), keep the ``b`` rows with the largest loss, train on
them with a plain mean. ``beta > 0`` makes the choice stochastic (§7): ``b`` rows drawn without
replacement ∝ ``exp(beta * loss)`` by Gumbel-top-k. It needs no reference or stored scores, and
on noisy data it favours mislabelled rows (RHO-LOSS exists to fix that).

DDP: each rank selects from its own super-batch; nothing is gathered.
"""

from __future__ import annotations

from typing import Any

import torch
from winnow.samplers._instep import (
    DeviceGenerators,
    check_fraction,
    check_losses,
    default_rank,
    ids_to_numpy,
    load_selector_state,
    resolve_batch_size,
    selector_state,
)
from winnow.selection.choose_torch import gumbel_top_k_torch

__all__ = ["TopLossSelector"]


class TopLossSelector:
    """Keep ``b = max(1, floor(keep * B))`` rows of each super-batch by learner loss (higher first).

    Args:
        keep: fraction of the super-batch kept, in ``(0, 1]``.
        seed: seeds the selector's generators (combined with the rank).
        beta: coldness of the stochastic choice; ``None`` (default) = deterministic top-k,
            ``0`` = uniform.
        batch_size: keep exactly this many rows instead of using ``keep``.
    """

    def __init__(
        self,
        keep: float = 0.1,
        seed: int = 0,
        *,
        beta: float | None = None,
        batch_size: int | None = None,
        rank: int | None = None,
        check_finite: bool | None = None,
    ):
        if beta is not None and not beta >= 0.0:
            raise ValueError(f"beta must be >= 0 or None, got {beta!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.keep = check_fraction(keep, "keep")
        self.seed = int(seed)
        self.beta = beta
        self.batch_size = batch_size
        self.rank = default_rank(rank)
        self.check_finite = check_finite
        self._gens = DeviceGenerators(self.seed, self.rank)
        self.steps = 0

    def select(self, ids, learner_losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, weights)``: int64 ``[b]`` positions (highest loss first when deterministic)
        and float32 ones ``[b]``, on the losses' device. ``ids`` may be ``None``."""
        n = None if ids is None else ids_to_numpy(ids).shape[0]
        losses = check_losses(
            learner_losses, n, name="learner_losses", check_finite=self.check_finite
        ).float()
        b = resolve_batch_size(losses.shape[0], fraction=self.keep, batch_size=self.batch_size)
        if self.beta is None:
            rows = torch.topk(losses, b, sorted=True).indices
        else:
            gen = self._gens.get(losses.device)
            rows = gumbel_top_k_torch(losses, b, beta=self.beta, generator=gen)
        self.steps += 1
        return rows, torch.ones(b, dtype=torch.float32, device=losses.device)

    def state_dict(self) -> dict[str, Any]:
        """Seed, rank, step count and generator states (no score table)."""
        return selector_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_selector_state(self, state)
