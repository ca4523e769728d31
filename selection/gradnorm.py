"""Exact per-example gradient norms: ghost norms from one backward, an exact fallback for the rest.

``per_example_grad_norms(model, loss_fn, inputs, targets)`` returns ``||grad_theta l_i||_2`` for
every example of the batch, over all parameters with ``requires_grad`` (docs/gradient-norms.md).

How: forward hooks on the supported layers (see ``selection._ghost``) keep each layer's input
(positional or keyword) and the ``GradientEdge`` of its output; one ``torch.autograd.grad`` of
``sum_i l_i`` with respect to those edges gives every layer's output gradient, and the rules
turn (input, output gradient) into per-example squared norms. Weight gradients are never
formed, nothing is accumulated into ``.grad`` (safe in the middle of a training step), no
backward hooks are involved (the model stays usable under ``torch.func``), and an edge taken
in the forward hook still names the layer's output after a later in-place op
(``ReLU(inplace=True)``) overwrote the tensor.

A rule is exact only if its layer's single call is the parameter's only path to the loss.
After the forward, ``selection._uses.accumulator_edges`` walks the autograd graph from the loss
and counts the edges into each hooked parameter's gradient accumulator, and those made inside
its layer's call; a parameter with any other edge (a tied output head ``h @ emb.weight.T``,
``F.linear(h, layer.weight)``, a parent module reading it as ``nn.MultiheadAttention`` reads
``out_proj.weight``, a regulariser in the loss) goes to the fallback, and ``method="ghost"``
refuses it, naming it and the reason.

Parameters the hooks cannot account for exactly go to ``selection._fallback``: layers without a
rule (including subclasses of known layers), modules called more than once per forward,
parameters shared between modules, parameters used outside their layer's call. The fallback is
a ``vmap(grad)`` pass over the whole model that differentiates only those parameters, chunked
over the batch to bound memory at ``chunk_size x (their size)``, or, for models holding an
RNN/GRU/LSTM (which ``vmap`` cannot batch), a loop of one backward per example. Squared norms of
disjoint parameter sets add, so the two passes combine exactly.

The rules assume each hooked layer sees the batch on dim 0; a layer whose input or output has
another leading size (a sequence-first layout) goes to the fallback. (If the sequence length
equals the batch size this cannot be told apart: keep the batch first, as ``batch_first=True``.)

Train-mode BatchNorm (or BatchNorm without running statistics) couples the examples of a batch;
per-example gradients are then undefined and a ``ValueError`` says so. Dropout draws one mask in
the ghost pass and independent masks per example in the fallback: score in ``model.eval()``
when exact agreement matters.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from winnow.selection._fallback import fallback_sq_norms
from winnow.selection._ghost import rule_for
from winnow.selection._uses import accumulator_edges

__all__ = ["per_example_grad_norms"]

_METHODS = ("auto", "ghost", "vmap")


@dataclass
class _Capture:
    """What one hooked module saw during the ghost forward pass."""

    rule: Callable
    names: dict[str, str]  # attribute ("weight") -> qualified parameter name ("0.weight")
    ids: dict[str, int]  # attribute -> id(parameter)
    input_name: str  # the forward's first argument, for a call like ``layer(input=x)``
    calls: int = 0
    node: object = None  # autograd node of the output, None if the call passed no gradient
    input_node: object = None  # autograd node of the input, where the call's own graph ends
    x: torch.Tensor | None = None  # the input, kept only if the batch is on dim 0
    edge: object = None  # the output's GradientEdge, taken before any in-place overwrite
    exact: list[str] = field(default_factory=list)  # attributes the rule accounts for


@cache
def _first_argument(cls: type) -> str:
    return list(inspect.signature(cls.forward).parameters)[1]


def _as_tuple(inputs) -> tuple[torch.Tensor, ...]:
    items = tuple(inputs) if isinstance(inputs, list | tuple) else (inputs,)
    for i, x in enumerate(items):
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise TypeError(f"inputs[{i}] must be a batched torch.Tensor, got {type(x).__name__}")
    return items


def _check_losses(losses, batch: int) -> torch.Tensor:
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(losses).__name__}")
    if losses.shape != (batch,):
        raise ValueError(
            f"loss_fn must return per-example losses of shape [{batch}], got shape "
            f"{tuple(losses.shape)} (a scalar means the loss was already reduced)"
        )
    return losses


def _plan(model: nn.Module) -> tuple[list[str], dict[nn.Module, _Capture], dict[str, str]]:
    """One walk over the modules: trainable parameter names (in ``named_parameters`` order),
    ghost-hooked modules, and ``{name: reason}`` for the fallback. Refuses batch-statistics
    BatchNorm."""
    trainable: list[str] = []
    seen: dict[int, str] = {}
    owners: dict[int, int] = {}
    own_by_module = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or module.running_mean is None
        ):
            raise ValueError(
                f"per-example gradients are undefined with {type(module).__name__} {prefix!r} "
                "using batch statistics (train mode or track_running_stats=False): they couple "
                "the examples of a batch; call model.eval() or use GroupNorm/LayerNorm"
            )
        own = {}
        for attr, p in module.named_parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
            if id(p) in seen or not p.requires_grad:
                continue  # a shared parameter is named (and counted) once, as named_parameters
            seen[id(p)] = name = f"{prefix}.{attr}" if prefix else attr
            trainable.append(name)
            own[attr] = (name, p)
        if own:
            own_by_module.append((module, own))
    captures: dict[nn.Module, _Capture] = {}
    fallback: dict[str, str] = {}
    for module, own in own_by_module:
        kind = type(module).__name__
        rule = rule_for(module)
        if rule is None:
            fallback.update({name: f"{kind} has no ghost rule" for name, _ in own.values()})
            continue
        names, ids = {}, {}
        for attr, (name, p) in own.items():
            if owners[id(p)] > 1:
                fallback[name] = "shared by several modules (tied weights)"
            elif attr not in ("weight", "bias"):
                fallback[name] = f"{kind}.{attr} has no ghost rule"
            else:
                names[attr], ids[attr] = name, id(p)
        if names:
            captures[module] = _Capture(rule, names, ids, _first_argument(type(module)))
    return trainable, captures, fallback


def _route(cap: _Capture, kind: str, total: Counter, reached: set, fallback: dict) -> list[str]:
    """After the forward: the capture's parameters its rule accounts for exactly; the others go
    to ``fallback`` with the reason. ``total``: edges into each parameter's accumulator
    reachable from the loss (``selection._uses``); ``reached``: the nodes on those paths.
    A parameter with no edge from the loss gets an exact zero instead."""
    inside = Counter()
    if cap.calls == 1 and cap.node in reached:
        own = set(cap.ids.values())
        inside, _ = accumulator_edges(cap.node, own, stop=cap.input_node)
    exact = []
    for attr, name in cap.names.items():
        uses, ours = total[cap.ids[attr]], inside[cap.ids[attr]]
        if uses == 0:
            continue
        if cap.calls > 1:
            fallback[name] = f"its {kind} is called {cap.calls} times in one forward"
        elif uses > ours:
            fallback[name] = (
                f"used {uses - ours} time(s) outside its {kind} call (a tied weight, "
                "F.linear on it, a parent module reading it directly, or the loss)"
            )
        elif cap.edge is None:
            fallback[name] = f"its {kind} does not see the batch on dim 0"
        elif ours != 1:
            fallback[name] = f"used {ours} times in its own {kind} call"
        else:
            exact.append(attr)
    return exact


def _ghost_pass(model, loss_fn, inputs, targets, batch, captures, fallback) -> dict:
    """One forward + one ``autograd.grad`` to the layer outputs; returns squared norms by
    parameter name for the parameters the rules account for, and adds the rest to
    ``fallback``."""

    def forward_hook(module, args, kwargs, output):
        cap = captures[module]
        cap.calls += 1
        if cap.calls > 1 or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        x = args[0] if args else kwargs.get(cap.input_name)
        if not isinstance(x, torch.Tensor):
            return
        cap.node, cap.input_node = output.grad_fn, x.grad_fn
        if x.ndim == 0 or x.shape[0] != batch or output.shape[0] != batch:
            return  # batch not on dim 0 (e.g. sequence-first layout): left to the fallback
        # The edge, not the tensor: a later in-place op (ReLU(inplace=True)) rebinds the
        # tensor to a new node, while the edge keeps naming this layer's output.
        cap.x, cap.edge = x.detach(), get_gradient_edge(output)

    handles = [m.register_forward_hook(forward_hook, with_kwargs=True) for m in captures]
    try:
        with torch.enable_grad():
            losses = _check_losses(loss_fn(model(*inputs), targets), batch)
            tracked = {i for cap in captures.values() for i in cap.ids.values()}
            total, reached = accumulator_edges(losses.grad_fn, tracked)
            wanted = {}
            for module, cap in captures.items():
                cap.exact = _route(cap, type(module).__name__, total, reached, fallback)
                if cap.exact:
                    wanted[module] = cap
            grads = ()
            if wanted:
                edges = [cap.edge for cap in wanted.values()]
                grads = torch.autograd.grad(losses.sum(), edges, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    sq: dict[str, torch.Tensor] = {}
    for (module, cap), g in zip(wanted.items(), grads, strict=True):
        if g is not None:  # None: no gradient reaches this output, its norms are 0
            per_param = cap.rule(module, cap.x, g)
            sq.update({cap.names[a]: per_param[a] for a in cap.exact})
    for cap in captures.values():
        for name in cap.names.values():
            if name not in sq and name not in fallback:  # no path from the loss: exactly 0
                sq[name] = losses.new_zeros(batch)
        cap.node = cap.input_node = cap.x = cap.edge = None
    return sq


def per_example_grad_norms(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs,
    targets,
    *,
    per_layer: bool = False,
    method: str = "auto",
    chunk_size: int = 32,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Exact L2 norm of each example's loss gradient over all trainable parameters.

    Args:
        model: any ``nn.Module``; evaluated as it is (call ``model.eval()`` to score without
            dropout); its ``.grad`` fields are not touched.
        loss_fn: ``loss_fn(outputs, targets) -> Tensor[B]`` of per-example losses (see
            ``selection.losses``); a scalar raises ``ValueError``.
        inputs: a batched tensor ``[B, ...]`` or a tuple of them, passed as ``model(*inputs)``.
        targets: ``[B, ...]`` tensor (or anything ``loss_fn`` accepts, passed unbatched).
        per_layer: also return ``{parameter name: Tensor[B]}`` norms per parameter tensor.
        method: ``"auto"`` (ghost norms where exact, the exact fallback for the rest),
            ``"ghost"`` (same, but raise a ``ValueError`` naming every parameter that would need
            the fallback and why, e.g. a weight also used outside its layer's call) or
            ``"vmap"`` (all by the fallback; the reference). The fallback is ``vmap(grad)``, or
            one backward per example for models holding an RNN/GRU/LSTM (``B`` backwards at
            batch size 1; docs/gradient-norms.md).
        chunk_size: examples per ``vmap`` chunk (memory ``chunk_size x`` fallback parameters).

    Returns:
        float32 (float64 for float64 models) ``[B]`` on the model's device, plus the per-parameter
        dict when ``per_layer``. Larger = the example pulls the parameters harder.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    inputs = _as_tuple(inputs)
    batch = inputs[0].shape[0]
    if batch == 0:
        raise ValueError("inputs are empty (batch size 0)")
    for i, x in enumerate(inputs):
        if x.shape[0] != batch:
            raise ValueError(f"inputs[{i}] has batch size {x.shape[0]}, inputs[0] has {batch}")
    if isinstance(targets, torch.Tensor) and (targets.ndim == 0 or targets.shape[0] != batch):
        raise ValueError(f"targets must have batch size {batch}, got shape {tuple(targets.shape)}")
    trainable, captures, fallback = _plan(model)
    if not trainable:
        raise ValueError("model has no parameters with requires_grad=True")

    if method == "vmap":
        sq, fallback = {}, dict.fromkeys(trainable, "method='vmap'")
    else:
        sq = _ghost_pass(model, loss_fn, inputs, targets, batch, captures, fallback)
        if fallback and method == "ghost":
            reasons = "; ".join(f"{n!r}: {fallback[n]}" for n in trainable if n in fallback)
            raise ValueError(
                "method='ghost' cannot account exactly for these parameters (method='auto' "
                f"computes them with the exact fallback): {reasons}"
            )
    if fallback:
        ordered = [n for n in trainable if n in fallback]
        sq.update(fallback_sq_norms(model, loss_fn, inputs, targets, ordered, chunk_size))

    device = next(model.parameters()).device
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in sq.values()) else torch.float32
    total = torch.stack([v.to(dtype) for v in sq.values()]).sum(0) if sq else None
    norms = total.sqrt() if total is not None else torch.zeros(batch, dtype=dtype, device=device)
    if not per_layer:
        return norms
    zeros = torch.zeros(batch, dtype=dtype, device=device)
    return norms, {n: sq[n].to(dtype).sqrt() if n in sq else zeros for n in trainable}
