"""Stochastic acquisition on torch tensors (any device), for in-step selectors.

Same rules as ``selection.choose.gumbel_top_k`` (docs/stochastic-selection.md), computed with tensor
ops on the scores' device and a caller-owned ``torch.Generator``, without a host-device sync
(no ``.item()``, no data-dependent shapes). Input checks that would need a sync (NaN, negative
scores for ``kind="power"``) run only with ``check=True``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gumbel_top_k_torch"]

_KINDS = ("softmax", "power", "softrank")


def _gumbel(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """i.i.d. Gumbel(0, 1) as ``-log(Exp(1))``."""
    noise = torch.empty(n, dtype=like.dtype, device=like.device)
    # exponential_ can return 0 in float32; -log(0) = inf would ignore the score.
    noise.exponential_(generator=generator).clamp_min_(torch.finfo(like.dtype).tiny)
    return noise.log_().neg_()


def gumbel_top_k_torch(
    scores: torch.Tensor,
    k: int,
    *,
    beta: float = 1.0,
    kind: str = "softmax",
    generator: torch.Generator | None = None,
    check: bool = False,
) -> torch.Tensor:
    """Draw ``k`` distinct positions of 1-D ``scores``, ``p ∝ exp(beta u)`` successively.

    ``u = s`` (softmax), ``log s`` (power; zero scores are drawn only after every positive one,
    uniformly among themselves) or ``-log rank`` (softrank, rank 1 = highest). ``beta = 0`` is
    uniform, ``math.inf`` is ``topk``. Returns int64 ``[k]`` on ``scores.device``, draw order.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, n={n}], got {k!r}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    beta = float(beta)
    if math.isnan(beta) or beta < 0:
        raise ValueError(f"beta (coldness) must be >= 0 or math.inf, got {beta}")
    s = scores.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()  # fp16/bf16 noise would tie too often
    if check:
        if torch.isnan(s).any():
            raise ValueError(f"scores contain {int(torch.isnan(s).sum())} NaN value(s)")
        if kind == "power" and (s < 0).any():
            raise ValueError(f"kind='power' needs scores >= 0; got {int((s < 0).sum())} negative")
    if math.isinf(beta):
        return torch.topk(s, k, sorted=True).indices
    if beta == 0:
        return torch.topk(_gumbel(n, s, generator), k, sorted=True).indices

    order = None
    if kind == "softmax":
        u = s.clone()
    elif kind == "power":
        u = s.log()
    else:
        order = torch.argsort(s, descending=True, stable=True)
        u = torch.arange(1, n + 1, dtype=s.dtype, device=s.device).log_().neg_()
    # Scale the smaller of (u, noise) so neither overflows; the order of keys is the same.
    keys = u * beta + _gumbel(n, s, generator) if beta <= 1 else u + _gumbel(n, s, generator) / beta
    if kind == "power":
        # Zero-mass entries rank below every positive one, in uniformly random order.
        has_mass = s > 0
        floor = torch.where(has_mass, keys, torch.full_like(keys, math.inf)).min()
        floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
        uniform = torch.rand(n, dtype=s.dtype, device=s.device, generator=generator)
        keys = torch.where(has_mass, keys, floor - 1.0 - uniform)
    picked = torch.topk(keys, k, sorted=True).indices
    return order[picked] if order is not None else picked
