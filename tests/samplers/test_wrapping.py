"""A winnow sampler is a ``DistributedSampler`` that frameworks leave alone, and a distributed
wrapper that shards its shard again (Lightning's, accelerate's, a hand-made one) is refused with
the fix named, in one process (rank and world size passed in)."""

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from winnow.samplers import (
    HardBatchSampler,
    IndexedDataset,
    InfoBatchSampler,
    PrunedSampler,
    RS2Sampler,
)

N = 101


def samplers(**dist_args):
    return {
        "infobatch": InfoBatchSampler(N, 3, prune_ratio=0.5, seed=1, **dist_args),
        "rs2": RS2Sampler(N, 0.5, seed=1, **dist_args),
        "pruned": PrunedSampler(np.cos(np.arange(N)), 0.5, seed=1, **dist_args),
    }


@pytest.mark.parametrize("kind", ["infobatch", "rs2", "pruned"])
def test_epoch_samplers_read_as_distributed_samplers(kind):
    sampler = samplers(rank=1, world_size=2)[kind]
    assert isinstance(sampler, DistributedSampler)
    sampler.set_epoch(2)
    assert (sampler.num_replicas, sampler.rank, sampler.epoch) == (2, 1, 2)
    assert sampler.num_samples == len(sampler) == len(list(sampler))
    assert sampler.total_size == 2 * len(sampler) >= len(sampler.plan.ids)
    assert sampler.dataset == range(N)
    # what Lightning and Fabric check before wrapping (their _requires_distributed_sampler)
    assert isinstance(DataLoader(IndexedDataset(range(N)), sampler=sampler).sampler,
                      DistributedSampler)  # fmt: skip


def iterate(loader):
    return [ids.tolist() for ids, _ in loader]


def test_a_lightning_wrapper_around_a_sharded_sampler_is_refused():
    wrapper_cls = pytest.importorskip("lightning.fabric.utilities.distributed")
    sampler = samplers(rank=0, world_size=2)["infobatch"]
    wrapped = wrapper_cls.DistributedSamplerWrapper(sampler, num_replicas=2, rank=0, shuffle=False)
    loader = DataLoader(IndexedDataset(range(N)), batch_size=8, sampler=wrapped)
    with pytest.raises(ValueError, match=r"use_distributed_sampler=False") as err:
        iterate(loader)
    assert "DistributedSamplerWrapper (over 2 replicas)" in str(err.value)
    assert "rank 0's shard of the plan (world_size=2)" in str(err.value)
    # one replica shards nothing: the wrapper is harmless and the sampler runs
    single = wrapper_cls.DistributedSamplerWrapper(sampler, num_replicas=1, rank=0, shuffle=False)
    got = iterate(DataLoader(IndexedDataset(range(N)), batch_size=8, sampler=single))
    assert sorted(sum(got, [])) == sorted(sampler.rank_plan().tolist())


class HandMadeWrapper(DistributedSampler):
    """What a user might write: shard another sampler's output."""

    def __init__(self, inner, num_replicas, rank):
        super().__init__(range(len(inner)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.inner = inner

    def __iter__(self):
        ids = list(self.inner)
        return iter(ids[self.rank :: self.num_replicas])


@pytest.mark.parametrize("kind", ["rs2", "pruned"])
def test_a_hand_made_distributed_wrapper_is_refused(kind):
    wrapped = HandMadeWrapper(samplers(rank=1, world_size=2)[kind], num_replicas=2, rank=1)
    with pytest.raises(ValueError, match="without a distributed wrapper"):
        iterate(DataLoader(IndexedDataset(range(N)), batch_size=8, sampler=wrapped))


def test_accelerate_batch_sampler_shard_is_refused_for_epoch_and_batch_samplers():
    data_loader = pytest.importorskip("accelerate.data_loader")
    sampler = samplers(rank=0, world_size=2)["rs2"]
    shard = data_loader.BatchSamplerShard(
        BatchSampler(sampler, 8, drop_last=False), num_processes=2, process_index=0
    )
    with pytest.raises(ValueError, match=r"huggingface.prepare_loader\(accelerator, loader\)"):
        iterate(DataLoader(IndexedDataset(range(N)), batch_sampler=shard))
    hard = HardBatchSampler(N, 10, delta=0.5, num_epochs=2, rank=0, world_size=2)
    shard = data_loader.BatchSamplerShard(hard, num_processes=2, process_index=0)
    with pytest.raises(ValueError, match="HardBatchSampler already yields only rank 0's shard"):
        iterate(DataLoader(IndexedDataset(range(N)), batch_sampler=shard))
    # one process shards nothing (even_batches=False: with True accelerate pads a short last
    # batch with ids from the start of the epoch even then)
    shard = data_loader.BatchSamplerShard(BatchSampler(sampler, 8, False), num_processes=1,
                                          process_index=0, even_batches=False)  # fmt: skip
    assert sum(iterate(DataLoader(IndexedDataset(range(N)), batch_sampler=shard)), []) == list(
        sampler
    )


def test_rank_and_world_follow_the_process_group_until_given():
    sampler = RS2Sampler(N, 0.5, seed=1)
    assert (sampler.rank, sampler.world_size) == (0, 1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        RS2Sampler(N, 0.5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="divisible by world_size 3"):
        HardBatchSampler(N, 10, delta=0.5, num_epochs=1, world_size=3)
    assert torch.equal(torch.tensor(list(RS2Sampler(N, 0.5, rank=1, world_size=2))),
                       torch.tensor(list(RS2Sampler(N, 0.5, world_size=2, rank=1))))  # fmt: skip
