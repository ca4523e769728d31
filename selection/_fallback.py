"""The exact fallback: per-example squared gradient norms of chosen parameters, by brute force.

Two ways, both exact (docs/gradient-norms.md):

- ``vmap(grad)`` over the whole model with ``functional_call``, differentiating only the chosen
  parameters, ``chunk_size`` examples at a time: about one batched backward of time, memory
  ``chunk_size x`` their size, independent randomness per example.
- a loop of one forward and one ``autograd.grad`` per example, for models holding a module
  ``vmap`` cannot batch: the RNN kernels (``nn.RNN``/``GRU``/``LSTM``; on CPU, GRU and RNN in
  float32 and LSTM in float64 crash inside ``vmap``, LSTM in float32 runs but 3x slower than
  the loop, and cuDNN's kernels are unsupported). It costs ``B`` forward and backward passes at
  batch size 1 and the memory of one example's graph. Measured on one thread, 2 layers of
  width 64 over 32 steps, 64 examples: LSTM (a fused CPU kernel) 1.7 ms per example, 5.7x a
  plain step of the batch; GRU (no fused CPU kernel with grad, so about 130 small ops per
  example and step) 22 ms per example, 42x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["fallback_sq_norms", "vmap_unsupported"]

# Modules whose forward vmap cannot batch; their presence anywhere in the model selects the loop.
_VMAP_UNSUPPORTED = (nn.RNNBase,)


def vmap_unsupported(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that make the fallback loop instead of ``vmap``."""
    return [n for n, m in model.named_modules() if isinstance(m, _VMAP_UNSUPPORTED)]


def _sq(g: torch.Tensor, dims) -> torch.Tensor:
    return g.to(torch.promote_types(g.dtype, torch.float32)).square().sum(dims)


class _Scored(nn.Module):
    """``loss_fn(model(*xs), y)`` as one module, so that ``functional_call`` swaps the
    parameters for the loss too (a ``loss_fn`` may read them, e.g. a regulariser)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, xs, y):
        return self.loss_fn(self.model(*xs), y)


def _vmap_pass(model, loss_fn, inputs, targets, names: Sequence[str], chunk_size: int) -> dict:
    from torch.func import functional_call, grad, vmap

    scored = _Scored(model, loss_fn)
    params = {n: p.detach() for n, p in scored.named_parameters()}
    buffers = {n: b.detach() for n, b in scored.named_buffers()}
    diff = {f"model.{n}": params[f"model.{n}"] for n in names}
    const = {n: p for n, p in params.items() if n not in diff}
    has_targets = isinstance(targets, torch.Tensor)

    def loss_one(diff_params, xs, y):
        xs = tuple(x[None] for x in xs)
        y = y[None] if has_targets else targets
        return functional_call(scored, ({**const, **diff_params}, buffers), (xs, y)).sum()

    per_example = vmap(
        grad(loss_one), in_dims=(None, 0, 0 if has_targets else None), randomness="different"
    )
    batch = inputs[0].shape[0]
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, batch, chunk_size):
        sl = slice(start, start + chunk_size)
        grads = per_example(
            diff, tuple(x[sl] for x in inputs), targets[sl] if has_targets else None
        )
        for n in names:
            chunks[n].append(_sq(grads[f"model.{n}"].flatten(1), 1))
        del grads
    return {n: torch.cat(chunks[n]) for n in names}


def _loop_pass(model, loss_fn, inputs, targets, names: Sequence[str]) -> dict:
    params = dict(model.named_parameters())
    diff = [params[n] for n in names]
    has_targets = isinstance(targets, torch.Tensor)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(inputs[0].shape[0]):
        with torch.enable_grad():
            out = model(*(x[i : i + 1] for x in inputs))
            loss = loss_fn(out, targets[i : i + 1] if has_targets else targets).sum()
            grads = torch.autograd.grad(loss, diff, allow_unused=True)
        for n, g, p in zip(names, grads, diff, strict=True):
            rows[n].append(_sq(g if g is not None else torch.zeros_like(p), None))
    return {n: torch.stack(rows[n]) for n in names}


def fallback_sq_norms(
    model: nn.Module, loss_fn, inputs, targets, names: Sequence[str], chunk_size: int
) -> dict[str, torch.Tensor]:
    """``{name: Tensor[B]}`` squared per-example gradient norms of the parameters ``names``."""
    if vmap_unsupported(model):
        return _loop_pass(model, loss_fn, inputs, targets, names)
    return _vmap_pass(model, loss_fn, inputs, targets, names, chunk_size)
