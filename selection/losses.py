"""Per-example losses (``reduction='none'`` semantics): one value per example, shape ``[B]``.

All functions are differentiable torch code that runs on the inputs' device, so they serve both
for scoring (under ``torch.no_grad``) and as the training loss (``loss.mean()`` or a weighted
mean). Inputs are validated up front and mismatches raise ``ValueError``/``TypeError`` naming the
offending shapes, dtypes or devices. Higher loss = harder / less well fitted example.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "as_per_example",
    "per_example_cross_entropy",
    "per_example_mse",
    "sequence_loss",
    "sigmoid_pair_losses",
]


def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_same_device(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{names} are on different devices: {a.device} vs {b.device}")


def per_example_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Softmax cross-entropy per example.

    ``logits``: float ``[B, C]``; ``targets``: int ``[B]`` class indices, or float ``[B, C]``
    class probabilities. ``label_smoothing`` in ``[0, 1]`` as in ``torch.nn.CrossEntropyLoss``.
    Returns float ``[B]`` on ``logits.device``.
    """
    _check_tensor(logits, "logits")
    _check_tensor(targets, "targets")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    _check_same_device(logits, targets, "logits and targets")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"probability targets must match logits' shape {tuple(logits.shape)}, "
                f"got {tuple(targets.shape)}"
            )
    elif targets.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if targets.shape != logits.shape[:1]:
            raise ValueError(
                f"class-index targets must be [B] with B={logits.shape[0]}, "
                f"got shape {tuple(targets.shape)}"
            )
        targets = targets.long()
    else:
        raise TypeError(
            f"targets must be integer class indices or float probabilities, got {targets.dtype}"
        )
    return F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)


def sequence_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    reduce: str = "mean",
    ignore_index: int = -100,
) -> torch.Tensor:
    """Token-level language-model cross-entropy reduced per sequence.

    ``logits``: float ``[B, T, V]``; ``targets``: int ``[B, T]`` already aligned with ``logits``
    (shift them yourself for next-token prediction); ``mask``: ``[B, T]`` bool/0-1, ``True`` for
    tokens that count. Tokens equal to ``ignore_index`` never count. ``reduce="mean"`` averages
    over counted tokens (a sequence with none gets 0), ``"sum"`` adds them. Returns float ``[B]``.
    """
    _check_tensor(logits, "logits")
    _check_tensor(targets, "targets")
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets must be [B, T] = {tuple(logits.shape[:2])}, got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer token ids, got {targets.dtype}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    _check_same_device(logits, targets, "logits and targets")
    b, t, v = logits.shape
    keep = targets != ignore_index
    if mask is not None:
        _check_tensor(mask, "mask")
        if mask.shape != targets.shape:
            raise ValueError(f"mask must be [B, T] = {(b, t)}, got {tuple(mask.shape)}")
        _check_same_device(logits, mask, "logits and mask")
        keep = keep & mask.bool()
    safe_targets = torch.where(keep, targets.long(), torch.zeros_like(targets, dtype=torch.long))
    token = F.cross_entropy(logits.reshape(b * t, v), safe_targets.reshape(b * t), reduction="none")
    token = token.reshape(b, t) * keep.to(token.dtype)
    total = token.sum(dim=1)
    if reduce == "sum":
        return total
    return total / keep.sum(dim=1).clamp_min(1).to(total.dtype)


def per_example_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example, averaged over all non-batch dimensions.

    ``outputs`` and ``targets``: float, same shape ``[B, ...]`` (``[B]`` allowed). Returns ``[B]``.
    """
    _check_tensor(outputs, "outputs")
    _check_tensor(targets, "targets")
    if outputs.shape != targets.shape:
        raise ValueError(
            f"outputs and targets must have the same shape, got {tuple(outputs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if outputs.ndim == 0:
        raise ValueError("outputs must have a batch dimension, got a scalar")
    _check_same_device(outputs, targets, "outputs and targets")
    sq = (outputs - targets.to(outputs.dtype)).square()
    return sq.reshape(sq.shape[0], -1).mean(dim=1)


def sigmoid_pair_losses(
    x_emb: torch.Tensor,
    y_emb: torch.Tensor,
    *,
    temperature: float | torch.Tensor,
    bias: float | torch.Tensor,
    normalize: bool = False,
) -> torch.Tensor:
    """SigLIP pairwise losses ``A_ij = log(1 + exp(-z_ij (t x_i.y_j + b)))``, ``[B, B]``.

    ``z_ij = +1`` on the diagonal (matching pairs), ``-1`` elsewhere (docs/jest.md).
    ``x_emb``, ``y_emb``: float ``[B, D]``, already L2-normalised unless ``normalize=True``.
    ``temperature`` (``t``) and ``bias`` (``b``) may be learnable scalar tensors. The batch loss
    is ``A.sum() / B``; JEST uses the matrix itself.
    """
    _check_tensor(x_emb, "x_emb")
    _check_tensor(y_emb, "y_emb")
    if x_emb.ndim != 2 or x_emb.shape != y_emb.shape:
        raise ValueError(
            f"x_emb and y_emb must both be [B, D] with equal shapes, got {tuple(x_emb.shape)} "
            f"and {tuple(y_emb.shape)}"
        )
    _check_same_device(x_emb, y_emb, "x_emb and y_emb")
    if normalize:
        x_emb = F.normalize(x_emb, dim=1)
        y_emb = F.normalize(y_emb, dim=1)
    logits = temperature * (x_emb @ y_emb.T) + bias
    z = 2.0 * torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device) - 1.0
    return -F.logsigmoid(z * logits)


def as_per_example(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a user loss ``loss_fn(outputs, targets)`` so it must return one value per example.

    A ``torch.nn`` loss module whose ``reduction`` is not ``'none'`` is refused at once. The
    wrapper checks every result: a scalar (already reduced) loss, or a result whose leading size
    differs from the batch size (``len(targets)``, else ``len(outputs)``), raises ``ValueError``
    naming the shape. Extra trailing dimensions (e.g. per token) are refused too: reduce them
    yourself, or use :func:`sequence_loss`.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    reduction = getattr(loss_fn, "reduction", None)
    if isinstance(loss_fn, torch.nn.Module) and reduction not in (None, "none"):
        raise ValueError(
            f"{type(loss_fn).__name__} has reduction={reduction!r}; build it with "
            "reduction='none' to get per-example losses"
        )

    @functools.wraps(loss_fn)
    def per_example(outputs, targets, *args, **kwargs) -> torch.Tensor:
        losses = loss_fn(outputs, targets, *args, **kwargs)
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor, got {type(losses).__name__}")
        batch = _batch_size(targets, outputs)
        if losses.ndim == 0:
            raise ValueError(
                "loss_fn returned a scalar (shape ()), i.e. an already-reduced loss; expected "
                f"per-example losses of shape [{batch}] (use reduction='none')"
            )
        if losses.ndim != 1 or (batch is not None and losses.shape[0] != batch):
            raise ValueError(
                f"loss_fn returned shape {tuple(losses.shape)}; expected per-example losses "
                f"of shape [{batch}]"
            )
        return losses

    return per_example


def _batch_size(targets, outputs) -> int | None:
    for x in (targets, outputs):
        if isinstance(x, torch.Tensor) and x.ndim > 0:
            return int(x.shape[0])
        if isinstance(x, list | tuple) and len(x) and isinstance(x[0], torch.Tensor):
            return int(x[0].shape[0]) if x[0].ndim > 0 else None
    return None
