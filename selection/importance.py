"""Importance sampling with the last-layer gradient bound (docs/importance-sampling.md).

Katharopoulos & Fleuret, "Not All Samples Are Created Equal" (ICML 2018).

Pure torch functions; they run on the scores' device with no host synchronisation.

* :func:`last_layer_bound` scores each example by an upper bound of its gradient norm, from the
  logits alone (``||softmax(z) - onehot(y)||_2`` = EL2N) or, given the last linear layer's input
  ``h``, the exact norm of that layer's gradient ``||p - y||_2 * sqrt(||h||^2 + 1)``.
  Higher = larger gradient = more worth sampling.
* :func:`sample_with_replacement` draws ``b`` rows with ``p_i = g_i / sum(g)`` and returns the
  unbiased loss weights ``w_i = 1 / (B p_i)``: ``E[mean_j w_j l_j] = mean_i l_i``.
* :func:`variance_reduction` is the estimate ``tau = (1 - ||g - u||^2 / ||g||^2)^(-1/2)`` and
  :func:`tau_threshold` the rule ``(B + 3b) / (3b)`` above which importance sampling pays off.
"""

from __future__ import annotations

import torch

from winnow.selection.scores import el2n, last_layer_grad_norm

__all__ = [
    "last_layer_bound",
    "sample_with_replacement",
    "tau_threshold",
    "variance_reduction",
]


def last_layer_bound(
    logits: torch.Tensor, targets: torch.Tensor, *, features: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example gradient-norm bound for softmax cross-entropy, ``[B]`` (>= 0).

    ``logits``: ``[B, C]``; ``targets``: ``[B]`` int class ids in ``[0, C)``. Without
    ``features`` this is ``||softmax(z_i) - onehot(y_i)||_2``, the norm of the loss gradient
    w.r.t. the logits (EL2N, :func:`selection.scores.el2n`). With ``features`` (``[B, H]``, the
    input of the last linear layer, bias included) it is that layer's exact per-example gradient
    norm ``||p_i - y_i||_2 * sqrt(||h_i||^2 + 1)`` (:func:`selection.scores.last_layer_grad_norm`).
    Computed without autograd; any device.
    """
    if isinstance(targets, torch.Tensor) and targets.is_floating_point():
        raise TypeError(f"targets must be integer class ids, got dtype {targets.dtype}")
    with torch.no_grad():
        if features is None:
            return el2n(logits, targets)
        return last_layer_grad_norm(logits, targets, features)


def _probabilities(scores: torch.Tensor) -> torch.Tensor:
    """``g / sum(g)``, uniform where every score is zero (no host branch: ``torch.where``)."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [B], got shape {tuple(scores.shape)}")
    g = scores.float().clamp_min(0.0)
    total = g.sum()
    uniform = torch.full_like(g, 1.0 / g.shape[0])
    return torch.where(total > 0, g / total.clamp_min(torch.finfo(g.dtype).tiny), uniform)


def sample_with_replacement(
    scores: torch.Tensor, batch_size: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` rows with replacement ∝ ``scores``; return ``(rows, weights)``.

    ``scores``: ``[B]`` non-negative (negative values count as 0; all zero = uniform).
    ``rows``: int64 ``[b]``; ``weights``: float32 ``[b]``, ``1 / (B p_row)``, so the weighted mean
    loss over the drawn rows is an unbiased estimate of the super-batch's mean loss.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    p = _probabilities(scores)
    rows = torch.multinomial(p, batch_size, replacement=True, generator=generator)
    weights = 1.0 / (p.shape[0] * p.index_select(0, rows))
    return rows, weights


def variance_reduction(scores: torch.Tensor) -> torch.Tensor:
    """``tau = (1 - ||g - u||^2 / ||g||^2)^(-1/2)`` with ``g = scores / sum``, ``u = 1/B``.

    A 0-d float32 tensor: 1 for uniform scores, up to ``sqrt(B)`` when one score holds all the
    mass. Larger means importance sampling reduces the gradient variance more.
    """
    g = _probabilities(scores)
    u = 1.0 / g.shape[0]
    ratio = (g - u).square().sum() / g.square().sum()
    return torch.rsqrt((1.0 - ratio).clamp_min(torch.finfo(g.dtype).eps))


def tau_threshold(super_batch: int, batch_size: int) -> float:
    """Katharopoulos & Fleuret's break-even ``(B + 3b) / (3b)`` (a backward = 2 forwards)."""
    if batch_size < 1 or super_batch < batch_size:
        raise ValueError(
            f"need 1 <= batch_size <= super_batch, got batch_size={batch_size}, "
            f"super_batch={super_batch}"
        )
    return (super_batch + 3 * batch_size) / (3 * batch_size)
