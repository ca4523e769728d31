"""Which parameters reach the loss only through the layer calls the ghost rules see.

A ghost rule turns one layer call's (input, output gradient) into per-example norms of that
layer's parameters. That is exact only when the call is the parameter's *only* use: a weight
also used elsewhere (tied to the logits as ``h @ emb.weight.T``, passed to ``F.linear``, read
directly by a parent module as ``nn.MultiheadAttention`` does with ``out_proj.weight``) gets
gradient the rule never sees, and its ghost norm would come out silently too small.

``ParameterUses`` is a ``TorchFunctionMode`` active during the forward and the loss. Every torch
call (function, method, operator, property such as ``.T``) that receives a tracked parameter,
directly or inside a list or tuple, is counted as a use, inside the parameter's own layer call
(between its forward pre-hook and forward hook) or outside it. A parameter is exact by its rule
iff it has exactly one use and that use is inside its layer's single call
(docs/gradient-norms.md).

A call does not count when it cannot pass gradient back: it returns no tensor (``.shape``,
``.dtype``, ``.item()``), or grad mode is on and none of its returned tensors requires grad
(``.detach()``, ``.data``). Under ``no_grad`` a floating-point result still counts, because a
custom ``autograd.Function`` runs its ``forward`` under ``no_grad`` and still sends gradient to
its inputs; so does a call that returns ``None`` (it may have written the parameter into another
tensor in place). Counting too much only costs speed (the parameter goes to the exact
fallback), never exactness.

Why this and not a numerical check: comparing, per parameter, the batch-summed gradient the
captures imply with autograd's gradient would need every weight gradient in the backward, which
the ghost pass otherwise skips, plus the implied one, and a tolerance would decide what
"mismatch" means. Measured on the 40-512-512-10 MLP, batch 256, one thread: the backward to the
layer outputs alone took 0.59x a plain training step, with the weight gradients requested too
0.91x, before forming any implied gradient. The mode instead costs a Python call per torch op
of the forward and the loss: 2.9 us per op here (400 small ops: 3.0 us each without it, 5.9 us
with it), a few dozen ops per forward for the models of benchmarks/bench_gradnorm.py.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["ParameterUses"]

_CONTAINERS = (list, tuple)


class ParameterUses(TorchFunctionMode):
    """Counts uses of the tracked parameters, inside and outside their own layer's call.

    ``tracked``: ``id(parameter)`` of every parameter to watch. The ghost pass calls
    ``enter(ids)`` from a layer's forward pre-hook and ``leave(ids)`` from its forward hook, with
    the ids of the parameters that layer's rule accounts for.
    """

    def __init__(self, tracked: set[int]):
        super().__init__()
        self.tracked = tracked
        self.inside: Counter[int] = Counter()
        self.outside: Counter[int] = Counter()
        self._active: set[int] = set()

    def enter(self, ids: set[int]) -> None:
        self._active |= ids

    def leave(self, ids: set[int]) -> None:
        self._active -= ids

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        found = _tracked_in(args, self.tracked)
        if kwargs:
            found += _tracked_in(kwargs.values(), self.tracked)
        if found and _may_pass_gradient(out):
            for i in found:
                if i in self._active:
                    self.inside[i] += 1
                else:
                    self.outside[i] += 1
        return out


def _tracked_in(items, tracked: set[int]) -> list[int]:
    found = []
    for a in items:
        if isinstance(a, _CONTAINERS):
            found += _tracked_in(a, tracked)
        elif id(a) in tracked:
            found.append(id(a))
    return found


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, _CONTAINERS):
        return [t for o in out for t in _tensors(o)]
    return []


def _may_pass_gradient(out) -> bool:
    if out is None:
        return True  # an in-place write into another tensor (``buf[0] = w``)
    tensors = _tensors(out)
    if torch.is_grad_enabled():
        return any(t.requires_grad for t in tensors)
    return any(t.is_floating_point() or t.is_complex() for t in tensors)
