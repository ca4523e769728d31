"""Per-layer ghost-norm formulas: squared per-example gradient norms of one module's parameters.

Each rule takes the module, the input it saw in the forward pass and the gradient of the summed
loss with respect to its output, and returns ``{parameter attribute: Tensor[B]}`` of squared
norms, without forming per-example gradients when that is cheaper (docs/gradient-norms.md):

- Linear, ``A_i`` ``[T, d_in]``, ``G_i`` ``[T, d_out]``:
  ``||G_i^T A_i||_F^2 = <A_i A_i^T, G_i G_i^T>`` (``T = 1``: ``||a_i||^2 ||g_i||^2``); the
  per-example gradient itself is formed instead when ``2 T^2 >= d_in d_out`` (mixed ghost norm,
  Bu et al. 2022). Bias: ``||sum_t g_t||^2``.
- Conv1d/Conv2d: the same on unfolded patches, per group.
- Embedding: rows of one token add up; exact via a per-(example, token) segment sum.
- LayerNorm/RMSNorm/GroupNorm/BatchNorm (eval): affine grads ``sum_t xhat_t * g_t`` directly.

Rules match exact module types only: a subclass may change ``forward`` and is left to the
``torch.func`` fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RULES", "rule_for"]

SqNorms = dict[str, torch.Tensor]


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Accumulate in at least float32 (bf16/fp16 models)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _matmul_sq_norm(a: torch.Tensor, gt: torch.Tensor, batch: int) -> torch.Tensor:
    """``||gt_n a_n||_F^2``, ``a`` ``[N, T, d_in]``, ``gt`` ``[N, d_out, T]``, summed per example.

    ``N = batch * groups`` (rows of one example are consecutive). Both operands may be
    transposed views: 3-D batched matmul takes them without a copy.
    """
    t, d_in, d_out = a.shape[1], a.shape[2], gt.shape[1]
    if t == 1:
        out = a.square().sum((1, 2)) * gt.square().sum((1, 2))
    elif 2 * t * t < d_in * d_out:
        out = ((a @ a.transpose(1, 2)) * (gt.transpose(1, 2) @ gt)).sum((1, 2))
    else:
        out = (gt @ a).square().sum((1, 2))
    return out.reshape(batch, -1).sum(1)


def _linear(module: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    b = x.shape[0]
    a = _acc(x).reshape(b, -1, module.in_features)
    g = _acc(g).reshape(b, -1, module.out_features)
    out = {"weight": _matmul_sq_norm(a, g.transpose(1, 2), b)}
    if module.bias is not None:
        out["bias"] = g.sum(1).square().sum(1)
    return out


def _patches(x: torch.Tensor, kernel, dilation, stride) -> torch.Tensor:
    """Unfold ``x`` ``[B, C, *spatial]`` (already padded) into ``[B, T, C * prod(kernel)]``.

    Strided views (``Tensor.unfold``) and one copy; ``F.unfold`` (im2col) is several times
    slower on CPU for these small kernels and only exists for 2-D.
    """
    nd = len(kernel)
    for d in range(nd):
        span = dilation[d] * (kernel[d] - 1) + 1
        x = x.unfold(2 + d, span, stride[d])
    if any(dl > 1 for dl in dilation):
        x = x[(...,) + tuple(slice(None, None, dl) for dl in dilation)]
    b, c = x.shape[:2]
    # [B, C, *T, *K] -> [B, *T, C, *K]
    perm = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    # contiguous(): with one channel the reshape is an overlapping view, which batched matmul
    # would copy matrix by matrix.
    return x.permute(perm).reshape(b, -1, c * math.prod(kernel)).contiguous()


def _conv(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    nd = len(module.kernel_size)
    if x.ndim != nd + 2:
        raise ValueError(f"{type(module).__name__} ghost norm needs batched input, got {x.shape}")
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    elif any(module.padding):
        x = F.pad(x, [p for p in reversed(module.padding) for _ in range(2)])
    b, groups = x.shape[0], module.groups
    a = _patches(_acc(x), module.kernel_size, module.dilation, module.stride)  # [B, T, C*K]
    t = a.shape[1]
    if groups > 1:
        a = a.reshape(b, t, groups, -1).transpose(1, 2).reshape(b * groups, t, -1)
    gt = _acc(g).reshape(b * groups, module.out_channels // groups, t)  # [B*groups, d_out, T]
    out = {"weight": _matmul_sq_norm(a, gt, b)}
    if module.bias is not None:
        out["bias"] = gt.sum(2).square().reshape(b, -1).sum(1)
    return out


def _embedding(module: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> SqNorms:
    b = ids.shape[0]
    ids = ids.reshape(b, -1)
    g = _acc(g).reshape(b, ids.shape[1], module.embedding_dim)
    if module.padding_idx is not None:
        g = g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)
    # One gradient row per distinct (example, token): segment-sum the token gradients.
    keys = (ids + torch.arange(b, device=ids.device).unsqueeze(1) * module.num_embeddings).ravel()
    uniq, inverse = torch.unique(keys, return_inverse=True)
    rows = torch.zeros(uniq.shape[0], g.shape[-1], dtype=g.dtype, device=g.device)
    rows.index_add_(0, inverse, g.reshape(-1, g.shape[-1]))
    sq = torch.zeros(b, dtype=g.dtype, device=g.device)
    sq.index_add_(
        0, torch.div(uniq, module.num_embeddings, rounding_mode="floor"), rows.square().sum(1)
    )
    return {"weight": sq}


def _param_numel_flat(x: torch.Tensor, g: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    n = 1
    for s in shape:
        n *= s
    b = x.shape[0]
    return x.reshape(b, -1, n), g.reshape(b, -1, n)


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    xhat = F.layer_norm(_acc(x), module.normalized_shape, None, None, module.eps)
    xhat, g = _param_numel_flat(xhat, _acc(g), module.normalized_shape)
    out = {"weight": (xhat * g).sum(1).square().sum(1)}
    if module.bias is not None:
        out["bias"] = g.sum(1).square().sum(1)
    return out


def _rms_norm(module: nn.RMSNorm, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    xhat = F.rms_norm(_acc(x), module.normalized_shape, None, module.eps)
    xhat, g = _param_numel_flat(xhat, _acc(g), module.normalized_shape)
    return {"weight": (xhat * g).sum(1).square().sum(1)}


def _channel_affine(xhat: torch.Tensor, g: torch.Tensor, has_bias: bool) -> SqNorms:
    b, c = g.shape[0], g.shape[1]
    xhat, g = xhat.reshape(b, c, -1), g.reshape(b, c, -1)
    out = {"weight": (xhat * g).sum(2).square().sum(1)}
    if has_bias:
        out["bias"] = g.sum(2).square().sum(1)
    return out


def _group_norm(module: nn.GroupNorm, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    xhat = F.group_norm(_acc(x), module.num_groups, None, None, module.eps)
    return _channel_affine(xhat, _acc(g), module.bias is not None)


def _batch_norm_eval(module: nn.modules.batchnorm._BatchNorm, x, g) -> SqNorms:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = module.running_mean.reshape(shape)
    std = (module.running_var + module.eps).sqrt().reshape(shape)
    xhat = (_acc(x) - mean) / std
    return _channel_affine(xhat, _acc(g), module.bias is not None)


RULES: dict[type, Callable[..., SqNorms]] = {
    nn.Linear: _linear,
    nn.modules.linear.NonDynamicallyQuantizableLinear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Embedding: _embedding,
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.BatchNorm1d: _batch_norm_eval,
    nn.BatchNorm2d: _batch_norm_eval,
    nn.BatchNorm3d: _batch_norm_eval,
}
if hasattr(nn, "RMSNorm"):
    RULES[nn.RMSNorm] = _rms_norm


def rule_for(module: nn.Module) -> Callable[..., SqNorms] | None:
    """The ghost rule for ``module``, or ``None`` when it must use the ``torch.func`` fallback."""
    rule = RULES.get(type(module))
    if rule is None:
        return None
    if isinstance(module, nn.Embedding) and module.scale_grad_by_freq:
        return None  # frequency scaling couples the tokens of a batch
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
        module.training or module.running_mean is None
    ):
        return None  # batch statistics couple examples; the caller reports it
    return rule
