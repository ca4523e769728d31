"""DistributedSampler-compatible sharding and rank/world resolution (samplers._dist)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from winnow.samplers._dist import all_gather_feedback, resolve_rank_world, shard, shard_length


@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_matches_distributed_sampler(drop_last):
    for n in range(1, 23):
        for world in range(1, 5):
            for rank in range(world):
                ref = DistributedSampler(
                    range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=drop_last
                )
                plan = np.arange(100, 100 + n)
                got = shard(plan, rank, world, drop_last=drop_last)
                assert got.tolist() == [100 + i for i in ref]
                assert len(got) == len(ref) == shard_length(n, world, drop_last=drop_last)


def test_resolve_rank_world():
    assert resolve_rank_world() == (0, 1)
    assert resolve_rank_world(2, 4) == (2, 4)
    with pytest.raises(ValueError, match="rank must be in"):
        resolve_rank_world(4, 4)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        resolve_rank_world(0, 0)
    with pytest.raises(TypeError, match="rank must be an int"):
        resolve_rank_world(0.5, 2)


def test_gather_is_identity_without_a_process_group():
    ids = torch.tensor([3, 1], dtype=torch.int32)
    losses = torch.tensor([0.5, 0.25], dtype=torch.bfloat16)
    got_ids, got_losses = all_gather_feedback(ids, losses)
    assert got_ids.dtype == torch.int64 and got_ids.tolist() == [3, 1]
    assert got_losses is losses
    with pytest.raises(ValueError, match="3 entries but losses has 2"):
        all_gather_feedback(torch.arange(3), losses)
