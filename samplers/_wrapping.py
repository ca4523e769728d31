"""Refuse a framework's wrapper that would shard a winnow sampler's shard a second time.

A winnow sampler yields only its own rank's share of the plan. A distributed wrapper around it
(Lightning's and Fabric's ``DistributedSamplerWrapper``, accelerate's ``BatchSamplerShard``,
a hand-made ``DistributedSampler`` over it) then keeps about ``1/world`` of that share, and a
``DistributedSampler``-style wrapper also fixes its length when it is built, so later, shorter
plans are padded with repeats. Training goes on without an error, on the wrong data.

Frameworks do not tell the sampler that they wrapped it, so the sampler looks at who iterates
it: when an epoch's iteration starts it walks a few frames up the call stack and refuses if one
of them belongs to such a wrapper with more than one replica. That costs a few microseconds
once per epoch and changes nothing else. Private to ``samplers``.
"""

from __future__ import annotations

from types import FrameType
from typing import Any

from torch.utils.data import DistributedSampler

__all__ = ["refuse_resharding"]

# Frames between the sampler and a wrapper: DataLoader -> (wrapper) -> BatchSampler -> sampler,
# plus a generator expression and a dataset-over-sampler adapter in Lightning's wrapper.
_DEPTH = 8

_FIX_LIGHTNING = (
    "pass use_distributed_sampler=False to the Trainer (Fabric: to setup_dataloaders); winnow's "
    "epoch samplers are DistributedSamplers, which Lightning leaves alone by default"
)
_FIX_ACCELERATE = (
    "prepare the loader with winnow.samplers.huggingface.prepare_loader(accelerator, loader) "
    "instead of accelerator.prepare(loader); transformers.Trainer: use "
    "winnow.samplers.huggingface.WinnowTrainer"
)
_FIX_OTHER = "give the winnow sampler to the DataLoader directly, without a distributed wrapper"


def _resharder(owner: Any, obj: Any) -> tuple[str, int, str] | None:
    """``(wrapper name, its replicas, the fix)`` if ``obj`` shards ``owner``'s output again."""
    if obj is None or obj is owner:
        return None
    cls = type(obj)
    module = cls.__module__ or ""
    name = f"{module}.{cls.__qualname__}"
    if isinstance(obj, DistributedSampler):
        replicas = getattr(obj, "num_replicas", 1)
        lightning = module.startswith(("lightning", "pytorch_lightning"))
        fix = _FIX_LIGHTNING if lightning else _FIX_OTHER
        return (name, replicas, fix) if replicas > 1 else None
    if module.startswith("accelerate") and cls.__name__ == "BatchSamplerShard":
        replicas = getattr(obj, "num_processes", 1)
        return (name, replicas, _FIX_ACCELERATE) if replicas > 1 else None
    return None


def refuse_resharding(owner: Any, frame: FrameType | None) -> None:
    """Raise ``ValueError`` if a distributed wrapper up the stack from ``frame`` iterates
    ``owner`` (a winnow sampler that shards itself) and shards it again.

    ``frame``: the frame that asked ``owner`` for its iterator (``sys._getframe(1)``).
    """
    for _ in range(_DEPTH):
        if frame is None:
            return
        found = _resharder(owner, frame.f_locals.get("self"))
        if found is not None:
            name, replicas, fix = found
            raise ValueError(
                f"{type(owner).__name__} already yields only rank {owner.rank}'s shard of the "
                f"plan (world_size={owner.world_size}), and {name} (over {replicas} replicas) "
                f"shards it again: each rank would train on about 1/{replicas} of its shard, "
                f"with repeats. To fix it, {fix}."
            )
        frame = frame.f_back
