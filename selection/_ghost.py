"""Per-layer ghost-norm formulas: squared per-example gradient norms of one module's parameters.

Each rule takes the module, the input it saw in the forward pass and the gradient of the summed
loss with respect to its output, and returns ``{parameter attribute: Tensor[B]}`` of squared
norms, without forming per-example gradients when that is cheaper (docs/gradient-norms.md):

- Linear, ``A_i`` ``[T, d_in]``, ``G_i`` ``[T, d_out]``:
  ``||G_i^T A_i||_F^2 = <A_i A_i^T, G_i G_i^T>`` (``T = 1``: ``||a_i||^2 ||g_i||^2``); the
  per-example gradient itself is formed instead when that takes fewer multiply-adds,
  ``T d_in d_out <= T^2 (d_in + d_out)`` (mixed ghost norm, Bu et al. 2022). Bias:
  ``||sum_t g_t||^2``.
- Conv1d/2d/3d: the same choice per layer, ``T`` = output positions, ``d_in`` = input channels
  per group x kernel size. The Gram form works on unfolded input patches; the per-example
  gradients come from the convolution's own weight-gradient kernel with the batch folded into
  the groups. Padding (any mode), stride, dilation and groups are respected.
- Embedding: rows of one token add up; exact via a per-(example, token) segment sum.
- LayerNorm/RMSNorm/GroupNorm/BatchNorm (eval): affine grads ``sum_t xhat_t * g_t`` directly.

Matmuls over the batch run in chunks of at most ``_CHUNK_ELEMENTS`` results, so memory stays
bounded for wide layers.

Rules match exact module types only: a subclass may change ``forward`` and is left to the
exact fallback.
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
    if t.dtype in (torch.float32, torch.float64):
        return t  # the common case, without a call into torch (small models feel it)
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _sq(t: torch.Tensor, dim) -> torch.Tensor:
    """Sum of squares over ``dim``. ``vector_norm`` reduces without a squared temporary:
    1.3-2x faster than ``square().sum()`` on [256, 64, 64] and [8192, 64] (one thread)."""
    return torch.linalg.vector_norm(t, dim=dim).square()


# Largest intermediate, in elements, that one matmul of a rule may form (64 MiB of float32):
# a rule loops over chunks of examples beyond it, so memory stays bounded for wide layers.
_CHUNK_ELEMENTS = 1 << 24


def _gram_is_cheaper(t: int, d_in: int, d_out: int) -> bool:
    """Whether ``<A A^T, G G^T>`` (``T^2 (d_in + d_out)`` multiply-adds per example) beats
    forming ``G^T A`` (``T d_in d_out``), as in mixed ghost clipping (Bu et al. 2022).

    Measured at batch 64, one thread (docs/gradient-norms.md): Linear T=32 64->192 (ratio of the
    two counts 0.67): Gram 0.9 ms, explicit 2.6 ms; T=64 64->64 (2.0): 1.6 vs 1.0 ms. Conv2d
    3x3 128->128 on 8x8 (0.56): 34 vs 111 ms; 64->64 on 8x8 (1.1): 26 vs 26-32 ms; 16->32 on
    16x16 (9.8): 127 vs 10 ms. The crossover sits at a ratio of about 1.
    """
    return t * (d_in + d_out) < d_in * d_out


def _row_chunks(n: int, per_row: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    return (slice(i, i + step) for i in range(0, n, step))


def _matmul_sq_norm(a: torch.Tensor, gt: torch.Tensor, batch: int) -> torch.Tensor:
    """``||gt_n a_n||_F^2``, ``a`` ``[N, T, d_in]``, ``gt`` ``[N, d_out, T]``, summed per example.

    ``N = batch * groups`` (rows of one example are consecutive). Both operands may be
    transposed views: 3-D batched matmul takes them without a copy.
    """
    t, d_in, d_out = a.shape[1], a.shape[2], gt.shape[1]
    if t == 1:
        out = _sq(a, (1, 2)) * _sq(gt, (1, 2))
    elif _gram_is_cheaper(t, d_in, d_out):
        out = _chunked(lambda a, gt: ((a @ a.mT) * (gt.mT @ gt)).sum((1, 2)), a, gt, 2 * t * t)
    else:
        out = _chunked(lambda a, gt: _sq(gt @ a, (1, 2)), a, gt, d_in * d_out)
    return out if out.shape[0] == batch else out.reshape(batch, -1).sum(1)


def _chunked(fn, a: torch.Tensor, gt: torch.Tensor, per_row: int) -> torch.Tensor:
    n = a.shape[0]
    if n * per_row <= _CHUNK_ELEMENTS:
        return fn(a, gt)
    return torch.cat([fn(a[s], gt[s]) for s in _row_chunks(n, per_row)])


def _linear(module: nn.Linear, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    x, g = _acc(x), _acc(g)
    if x.ndim == 2:  # one position per example: ||a||^2 ||g||^2, and ||g||^2 for the bias
        # Few torch calls on purpose: for small MLPs the rule's Python overhead is its cost.
        g_norm = torch.linalg.vector_norm(g, dim=1)
        out = {"weight": (torch.linalg.vector_norm(x, dim=1) * g_norm).square()}
        if module.bias is not None:
            out["bias"] = g_norm.square()
        return out
    b = x.shape[0]
    a = x.reshape(b, -1, module.in_features)
    g = g.reshape(b, -1, module.out_features)
    out = {"weight": _matmul_sq_norm(a, g.transpose(1, 2), b)}
    if module.bias is not None:
        out["bias"] = _sq(g.sum(1), 1)
    return out


def _patches(x: torch.Tensor, kernel, dilation, stride) -> torch.Tensor:
    """Unfold ``x`` ``[B, C, *spatial]`` (already padded) into ``[B, C * prod(kernel), T]``.

    Strided views (``Tensor.unfold``) and one copy into the im2col layout, whose innermost
    dimension runs along output positions; the Gram form takes its transpose as a view. Against
    the ``[B, T, C * K]`` layout, batch 256, one thread: 3x3 conv 64->64 on 8x8 98 vs 131 ms,
    128->128 on 4x4 16 vs 24 ms (a Conv1d with T=5: 0.58 vs 0.37 ms). ``F.unfold`` exists for
    2-D only.
    """
    nd = len(kernel)
    for d in range(nd):
        span = dilation[d] * (kernel[d] - 1) + 1
        x = x.unfold(2 + d, span, stride[d])
    if any(dl > 1 for dl in dilation):
        x = x[(...,) + tuple(slice(None, None, dl) for dl in dilation)]
    b, c = x.shape[:2]
    # [B, C, *T, *K] -> [B, C, *K, *T]
    perm = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    return x.permute(perm).reshape(b, c * math.prod(kernel), -1)


_CONV_WEIGHT_GRAD = {
    1: torch.nn.grad.conv1d_weight,
    2: torch.nn.grad.conv2d_weight,
    3: torch.nn.grad.conv3d_weight,
}


def _conv_per_example_sq(module, x: torch.Tensor, g: torch.Tensor, padding) -> torch.Tensor:
    """``||grad_W l_i||^2`` from the per-example weight gradients, formed by the convolution's
    own weight-gradient kernel with the batch folded into the groups (``B * groups`` groups,
    chunked so that they stay under ``_CHUNK_ELEMENTS``): the same multiply-adds as the weight
    gradient of a plain backward, which the ghost pass does not compute. It beats unfolding the
    input and multiplying for the narrow layers where the Gram form loses (3x3 conv 16->32 on
    16x16, batch 64: 9.6 vs 21 ms). The grouped kernel slows down for wide layers (128->128 on
    8x8: 181 ms, unfold and multiply 111 ms), but those go to the Gram form (34 ms).
    """
    b, c_in, c_out = x.shape[0], x.shape[1], g.shape[1]
    weight_shape = (c_out, c_in // module.groups, *module.kernel_size)
    conv_weight = _CONV_WEIGHT_GRAD[len(module.kernel_size)]
    out = []
    for s in _row_chunks(b, math.prod(weight_shape)):
        n = len(range(b)[s])
        grad_w = conv_weight(
            x[s].reshape(1, n * c_in, *x.shape[2:]),
            (n * c_out, *weight_shape[1:]),
            g[s].reshape(1, n * c_out, *g.shape[2:]),
            module.stride,
            padding,
            module.dilation,
            n * module.groups,
        )
        out.append(_sq(grad_w.reshape(n, -1), 1))
    return torch.cat(out)


def _conv(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    nd = len(module.kernel_size)
    if x.ndim != nd + 2:
        raise ValueError(f"{type(module).__name__} ghost norm needs batched input, got {x.shape}")
    x, g = _acc(x), _acc(g)
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * nd
    b, groups = x.shape[0], module.groups
    t = math.prod(g.shape[2:])
    d_in = module.in_channels // groups * math.prod(module.kernel_size)
    d_out = module.out_channels // groups
    if _gram_is_cheaper(t, d_in, d_out):
        if any(padding):
            x = F.pad(x, [p for p in reversed(padding) for _ in range(2)])
        a = _patches(x, module.kernel_size, module.dilation, module.stride)  # [B, C*K, T]
        a = a.reshape(b * groups, d_in, t).transpose(1, 2)
        gt = g.reshape(b * groups, d_out, t)
        weight = _matmul_sq_norm(a, gt, b)
    else:
        weight = _conv_per_example_sq(module, x, g, padding)
    out = {"weight": weight}
    if module.bias is not None:
        out["bias"] = _sq(g.reshape(b, module.out_channels, t).sum(2), 1)
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
    sq.index_add_(0, torch.div(uniq, module.num_embeddings, rounding_mode="floor"), _sq(rows, 1))
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
    out = {"weight": _sq((xhat * g).sum(1), 1)}
    if module.bias is not None:
        out["bias"] = _sq(g.sum(1), 1)
    return out


def _rms_norm(module: nn.RMSNorm, x: torch.Tensor, g: torch.Tensor) -> SqNorms:
    xhat = F.rms_norm(_acc(x), module.normalized_shape, None, module.eps)
    xhat, g = _param_numel_flat(xhat, _acc(g), module.normalized_shape)
    return {"weight": _sq((xhat * g).sum(1), 1)}


def _channel_affine(xhat: torch.Tensor, g: torch.Tensor, has_bias: bool) -> SqNorms:
    b, c = g.shape[0], g.shape[1]
    xhat, g = xhat.reshape(b, c, -1), g.reshape(b, c, -1)
    out = {"weight": _sq((xhat * g).sum(2), 1)}
    if has_bias:
        out["bias"] = _sq(g.sum(2), 1)
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
    nn.Conv3d: _conv,
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
