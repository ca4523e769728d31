"""Exact per-example gradient norms: ghost norms from one backward, ``torch.func`` for the rest.

``per_example_grad_norms(model, loss_fn, inputs, targets)`` returns ``||grad_theta l_i||_2`` for
every example of the batch, over all parameters with ``requires_grad`` (docs/gradient-norms.md).

How: forward hooks on the supported layers (see ``selection._ghost``) keep each layer's input
and register a tensor hook on its *output*; one ``torch.autograd.grad`` of ``sum_i l_i`` fires the
tensor hooks, which turn (input, output gradient) into per-example squared norms. Nothing is
accumulated into ``.grad``, so it is safe in the middle of a training step. Tensor hooks (not
``register_full_backward_hook``) keep the model usable under ``torch.func``, and see the gradient
of the layer output even when a later in-place op (``ReLU(inplace=True)``) overwrote it.

Parameters the hooks cannot account for exactly go to a ``vmap(grad)`` pass over the whole model
that differentiates only those parameters, chunked over the batch to bound memory at
``chunk_size x (their size)``: layers without a rule (including subclasses of known layers),
modules called more than once per forward, parameters shared between modules, and layers whose
``forward`` was bypassed (``nn.MultiheadAttention`` reads ``out_proj.weight`` directly).
Squared norms of disjoint parameter sets add, so the two passes combine exactly.

The rules assume each hooked layer sees the batch on dim 0; a layer whose input or output has
another leading size (a sequence-first layout) goes to the fallback. (If the sequence length
equals the batch size this cannot be told apart: keep the batch first, as ``batch_first=True``.)

Train-mode BatchNorm (or BatchNorm without running statistics) couples the examples of a batch;
per-example gradients are then undefined and a ``ValueError`` says so. Dropout draws one mask in
the ghost pass and independent masks per example in the fallback: score in ``model.eval()``
when exact agreement matters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from winnow.selection._fallback import fallback_sq_norms
from winnow.selection._ghost import rule_for

__all__ = ["per_example_grad_norms"]

_METHODS = ("auto", "ghost", "vmap")


@dataclass
class _Capture:
    """What one hooked module saw during the ghost forward pass."""

    rule: Callable
    names: dict[str, str]  # attribute ("weight") -> qualified parameter name ("0.weight")
    calls: int = 0
    output: torch.Tensor | None = None
    version: int = -1
    sq: dict[str, torch.Tensor] = field(default_factory=dict)


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


def _plan(model: nn.Module) -> tuple[list[str], dict[nn.Module, _Capture], set[str]]:
    """One walk over the modules: trainable parameter names (in ``named_parameters`` order),
    ghost-hooked modules, and names for the fallback. Refuses batch-statistics BatchNorm."""
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
        own, ids = {}, []
        for attr, p in module.named_parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
            ids.append(id(p))
            if id(p) in seen or not p.requires_grad:
                continue  # a shared parameter is named (and counted) once, as named_parameters
            seen[id(p)] = name = f"{prefix}.{attr}" if prefix else attr
            trainable.append(name)
            own[attr] = (name, p)
        if own:
            own_by_module.append((module, own, ids))
    captures: dict[nn.Module, _Capture] = {}
    fallback: set[str] = set()
    for module, own, ids in own_by_module:
        rule = rule_for(module)
        shared = any(owners[i] > 1 for i in ids)
        if rule is None or shared or set(own) - {"weight", "bias"}:
            fallback.update(name for name, _ in own.values())
            continue
        captures[module] = _Capture(rule=rule, names={a: name for a, (name, _) in own.items()})
    return trainable, captures, fallback


def _ghost_pass(model, loss_fn, inputs, targets, batch, captures, fallback) -> dict:
    """One forward + one ``autograd.grad``; returns squared norms by parameter name."""

    def forward_hook(module, args, output):
        cap = captures[module]
        cap.calls += 1
        if cap.calls > 1 or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        x = args[0].detach()
        if x.ndim == 0 or x.shape[0] != batch or output.shape[0] != batch:
            return  # batch not on dim 0 (e.g. sequence-first layout): left to the fallback
        cap.output, cap.version = output, output._version

        def tensor_hook(grad):
            cap.sq = cap.rule(module, x, grad.detach())

        output.register_hook(tensor_hook)

    handles = [m.register_forward_hook(forward_hook) for m in captures]
    try:
        with torch.enable_grad():
            losses = _check_losses(loss_fn(model(*inputs), targets), batch)
            anchors, probes = [], []
            for module, cap in captures.items():
                if cap.calls == 0:
                    # Unused, or its forward was bypassed: ask autograd whether a gradient
                    # reaches its parameters (None = unused, so a zero norm, no fallback).
                    probes.extend((name, getattr(module, attr)) for attr, name in cap.names.items())
                elif cap.calls == 1 and cap.output is not None:
                    if cap.output._version == cap.version:
                        anchors.append(cap.output)
                    else:  # overwritten in place: reach its producer through the weight instead
                        anchors.append(getattr(module, next(iter(cap.names))))
            wanted = anchors + [p for _, p in probes]
            grads = torch.autograd.grad(losses.sum(), wanted, allow_unused=True) if wanted else ()
            reached = {
                name
                for (name, _), g in zip(probes, grads[len(anchors) :], strict=True)
                if g is not None
            }
    finally:
        for h in handles:
            h.remove()
    sq: dict[str, torch.Tensor] = {}
    for cap in captures.values():
        if cap.calls > 1 or (cap.calls == 1 and cap.output is None):
            fallback.update(cap.names.values())
        elif cap.calls == 0:
            fallback.update(n for n in cap.names.values() if n in reached)
            sq.update(
                {
                    n: torch.zeros(batch, device=losses.device)
                    for n in cap.names.values()
                    if n not in reached
                }
            )
        else:
            for attr, name in cap.names.items():
                if attr in cap.sq:
                    sq[name] = cap.sq[attr]
        cap.output, cap.sq = None, {}
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
        method: ``"auto"`` (ghost norms where exact, ``torch.func`` for the rest), ``"ghost"``
            (same, but raise if anything would need the fallback) or ``"vmap"`` (all by
            ``torch.func``; the reference).
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
        sq, fallback = {}, set(trainable)
    else:
        sq = _ghost_pass(model, loss_fn, inputs, targets, batch, captures, fallback)
        if fallback and method == "ghost":
            raise ValueError(
                f"method='ghost' but these parameters need the torch.func fallback: "
                f"{sorted(fallback)}"
            )
    if fallback:
        ordered = [n for n in trainable if n in fallback]
        sq.update(fallback_sq_norms(model, loss_fn, inputs, targets, ordered, chunk_size))

    device = next(model.parameters()).device
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in sq.values()) else torch.float32
    total = torch.zeros(batch, dtype=dtype, device=device)
    for v in sq.values():
        total += v.to(dtype)
    norms = total.sqrt()
    if not per_layer:
        return norms
    zeros = torch.zeros(batch, dtype=dtype, device=device)
    return norms, {n: sq[n].to(dtype).sqrt() if n in sq else zeros for n in trainable}
