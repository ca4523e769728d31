"""What :class:`winnow.samplers.NoiseScaleMonitor`'s hooks need to know about a model's
gradients: which layers the per-example (ghost-norm) hooks cover exactly, and the squared norm
of a set of gradients without a host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from winnow.selection._ghost import rule_for

__all__ = ["ghost_modules", "norm_sq", "stack_on_one_device"]


def norm_sq(grads: list[torch.Tensor]) -> torch.Tensor:
    """``sum_p |g_p|^2`` as a float64 0-d tensor on the gradients' device (no host sync)."""
    norms = [torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads]
    return stack_on_one_device(norms).double().square().sum()


def stack_on_one_device(values: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of 0-d tensors, moved to the first one's device if they are spread
    (a model split over devices); the common single-device case pays no per-item call."""
    try:
        return torch.stack(values)
    except RuntimeError:
        device = values[0].device
        return torch.stack([v.to(device) for v in values])


def ghost_modules(model: nn.Module) -> list[nn.Module]:
    """The modules holding trainable parameters, each with an exact ghost rule; ValueError
    naming the parameters that have none (or are shared between modules)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    found, refused = [], []
    for prefix, module in model.named_modules():
        own = {a: p for a, p in module.named_parameters(recurse=False) if p.requires_grad}
        if not own:
            continue
        names = [f"{prefix}.{a}" if prefix else a for a in own]
        if rule_for(module) is None or set(own) - {"weight", "bias"}:
            refused.extend(names)
        elif any(owners[id(p)] > 1 for p in own.values()):
            refused.extend(names)
        else:
            found.append(module)
    if refused:
        raise ValueError(
            f"the per_example estimator needs every trainable parameter in a layer with an "
            f"exact ghost-norm rule (Linear, Conv, Embedding, norms in eval; not shared, no "
            f"batch statistics); these are not: {refused[:10]}; use estimator='two_batch'"
        )
    return found
