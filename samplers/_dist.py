"""Distributed helpers shared by every sampler: rank/world resolution, sharding, feedback gather.

Private to ``samplers``. Everything here is a no-op (or the identity) when ``torch.distributed``
is not initialised, so single-process code paths and tests need no special casing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_gather_feedback",
    "check_rank_world",
    "gather_feedback_to_host",
    "gather_rank_states",
    "is_distributed",
    "reduce_batch_means",
    "resolve_rank_world",
    "shard",
    "shard_length",
]

# Entries per rank per collective when pending feedback is settled: bounds the gather buffers
# (12 bytes per entry, times the world size, twice for padding) whatever the epoch's size.
GATHER_CHUNK = 1 << 22


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def check_rank_world(rank: int | None, world_size: int | None) -> None:
    """Check what was given explicitly; ``None`` is left to :func:`resolve_rank_world`.

    Samplers call this at construction and resolve the rest when they first plan: under
    Lightning the process group starts inside ``fit``, after the user built the sampler.
    """
    if world_size is not None:
        if isinstance(world_size, bool) or not isinstance(world_size, int | np.integer):
            raise TypeError(f"world_size must be an int, got {type(world_size).__name__}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
            raise TypeError(f"rank must be an int, got {type(rank).__name__}")
        if rank < 0 or (world_size is not None and rank >= world_size):
            bound = "" if world_size is None else f", {world_size}"
            raise ValueError(f"rank must be in [0{bound}), got {rank}")


def resolve_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Return ``(rank, world_size)``: the given values, else the process group's, else ``(0, 1)``.

    Raises ``ValueError`` if ``world_size < 1`` or ``rank`` is not in ``[0, world_size)``.
    """
    check_rank_world(rank, world_size)
    if world_size is None:
        world_size = dist.get_world_size() if is_distributed() else 1
    if rank is None:
        rank = dist.get_rank() if is_distributed() else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return int(rank), int(world_size)


def shard_length(plan_length: int, world_size: int, *, drop_last: bool) -> int:
    """Per-rank length of a plan of ``plan_length`` ids, exactly as ``DistributedSampler``.

    ``drop_last=True`` drops the tail so every rank gets ``plan_length // world_size`` ids;
    ``drop_last=False`` pads (by wrapping around the plan) to ``ceil(plan_length / world_size)``.
    """
    if drop_last:
        return plan_length // world_size
    return -(-plan_length // world_size)


def shard(plan: np.ndarray, rank: int, world_size: int, *, drop_last: bool) -> np.ndarray:
    """Rank ``rank``'s share of ``plan`` (1-D ids), with ``DistributedSampler`` semantics.

    The plan is padded by repeating it from its start (``drop_last=False``) or truncated
    (``drop_last=True``) to ``world_size * shard_length``; rank ``r`` takes ``[r::world_size]``.
    Returns a new array of the plan's dtype; for ``world_size == 1`` returns ``plan`` itself.
    """
    plan = np.asarray(plan)
    if plan.ndim != 1:
        raise ValueError(f"plan must be 1-D, got shape {plan.shape}")
    if world_size == 1:
        return plan
    per_rank = shard_length(len(plan), world_size, drop_last=drop_last)
    total = per_rank * world_size
    if total > len(plan):
        if len(plan) == 0:
            return plan[:0].copy()
        reps = -(-total // len(plan))
        plan = np.tile(plan, reps)[:total]
    return plan[rank:total:world_size].copy()


def _gather_device(losses: torch.Tensor) -> torch.device:
    """Device the collective runs on: the losses' CUDA device for NCCL, else the CPU."""
    backend = dist.get_backend()
    if backend == "nccl":
        if losses.device.type == "cuda":
            return losses.device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_feedback(
    ids: torch.Tensor, losses: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``(ids, losses)`` from every rank, concatenated in rank order.

    ``ids``: 1-D integer tensor, any device; gathered as **int64** (never packed into the loss
    dtype, which corrupts ids above 2^11 in fp16). ``losses``: 1-D floating tensor of the same
    length. Ranks may contribute different lengths (sizes are gathered first, then padded).
    Not distributed: returns ``(ids as int64, losses)`` unchanged, on their own devices.
    Distributed: results live on the collective's device (CPU for gloo, CUDA for NCCL); every
    rank must call this the same number of times (it is a collective).
    """
    if ids.ndim != 1 or losses.ndim != 1:
        raise ValueError(
            f"ids and losses must be 1-D, got shapes {tuple(ids.shape)} and {tuple(losses.shape)}"
        )
    if ids.shape[0] != losses.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} entries but losses has {losses.shape[0]}")
    ids = ids.to(torch.int64)
    if not is_distributed() or dist.get_world_size() == 1:
        return ids, losses
    device = _gather_device(losses)
    world = dist.get_world_size()
    ids = ids.to(device)
    losses = losses.detach().to(device)
    size = torch.tensor([ids.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    pad = longest - ids.shape[0]
    if pad:
        ids = torch.cat([ids, ids.new_zeros(pad)])
        losses = torch.cat([losses, losses.new_zeros(pad)])
    id_parts = [torch.empty_like(ids) for _ in range(world)]
    loss_parts = [torch.empty_like(losses) for _ in range(world)]
    dist.all_gather(id_parts, ids)
    dist.all_gather(loss_parts, losses)
    ids_all = torch.cat([part[:n] for part, n in zip(id_parts, counts, strict=True)])
    losses_all = torch.cat([part[:n] for part, n in zip(loss_parts, counts, strict=True)])
    return ids_all, losses_all


def gather_feedback_to_host(
    ids: torch.Tensor, losses: torch.Tensor, *, chunk: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every rank's ``(ids, losses)`` on the host as ``(int64, float32)`` numpy pairs.

    Distributed, the gather runs in rounds of at most ``chunk`` entries per rank (default
    :data:`GATHER_CHUNK`), each moved to the host before the next, so device memory stays
    bounded at 10^8 entries; the rounds are agreed with one all-reduce. Every rank gets the same
    list in the same order (rank order within a round). A collective when distributed.
    """
    chunk = GATHER_CHUNK if chunk is None else chunk
    if not is_distributed() or dist.get_world_size() == 1:
        if ids.numel() == 0:
            return []
        return [(ids.to(torch.int64).cpu().numpy(), losses.float().cpu().numpy())]
    device = _gather_device(losses)
    rounds = torch.tensor([-(-ids.shape[0] // chunk)], dtype=torch.int64, device=device)
    dist.all_reduce(rounds, op=dist.ReduceOp.MAX)
    out = []
    for r in range(int(rounds.item())):
        part = slice(r * chunk, (r + 1) * chunk)
        got_ids, got_losses = all_gather_feedback(ids[part], losses[part])
        if got_ids.numel():
            out.append((got_ids.cpu().numpy(), got_losses.float().cpu().numpy()))
    return out


def gather_rank_states(state: dict) -> list[dict]:
    """Every rank's ``state`` (small: a selector's generators), in rank order; a collective.

    For checkpoints that one rank writes (Lightning's, the HF Trainer's): a state that differs
    per rank is kept for every rank, and each rank loads its own entry on resume.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def reduce_batch_means(entries: torch.Tensor) -> torch.Tensor:
    """Mean loss of each fed-back batch over all ranks, in one round of collectives.

    ``entries``: float64 ``[n, 4]`` rows ``(loss sum, count, batch, step)`` of this rank's
    slices, in feedback order. Every rank must hold the same ``n`` batches in the same order
    (every rank calls ``update`` for every batch); a mismatch raises ``RuntimeError`` instead of
    mixing batches. Returns float64 ``[n]`` means on the host.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return (entries[:, 0] / entries[:, 1]).cpu()
    world = dist.get_world_size()
    device = _gather_device(entries)
    entries = entries.to(device, torch.float64)
    sizes = torch.tensor([entries.shape[0], -entries.shape[0]], dtype=torch.int64, device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    if int(sizes[0]) != -int(sizes[1]):
        raise RuntimeError(
            f"ranks fed back different numbers of batches this round ({-int(sizes[1])} to "
            f"{int(sizes[0])}); every rank must call update() for every batch"
        )
    total = entries.clone()
    dist.all_reduce(total)
    total = total.cpu()
    local = entries[:, 2:].cpu()
    if not torch.equal(total[:, 2:], world * local):
        raise RuntimeError(
            "ranks fed back different batches in the same slots; every rank must call update() "
            "for every batch, in the order the sampler yielded them"
        )
    return total[:, 0] / total[:, 1]
