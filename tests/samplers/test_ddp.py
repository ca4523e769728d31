"""A real two-process gloo run: identical plans and score tables, disjoint equal shards."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from winnow.samplers import (
    HardBatchSampler,
    IndexedDataset,
    InfoBatchSampler,
    PrunedSampler,
    RS2Sampler,
    TopLossSelector,
    _dist,
)

N, EPOCHS, BATCH = 3001, 4, 64  # odd N: DistributedSampler padding is exercised


def make(kind: str, **dist_args):
    if kind == "infobatch":
        return InfoBatchSampler(N, EPOCHS, prune_ratio=0.6, delta=0.75, seed=3, **dist_args)
    if kind == "rs2":
        return RS2Sampler(N, 0.3, seed=3, **dist_args)
    return PrunedSampler(np.sin(np.arange(N)), 0.5, beta=2.0, seed=3, **dist_args)


def loss_of(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    # bf16 losses: upstream packed ids into the loss dtype, which corrupts ids > 256 in bf16
    return (((ids * 7919 + epoch * 31) % 997).float() / 997 + 0.01).to(torch.bfloat16)


def drive(kind: str, **dist_args):
    """Runs EPOCHS epochs of the feedback loop; returns what each epoch looked like."""
    sampler = make(kind, **dist_args)
    loader = DataLoader(IndexedDataset(range(N)), batch_size=BATCH, sampler=sampler)
    record = {"shards": [], "plans": [], "pending": None}
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        record["plans"].append(sampler.plan.ids.copy())
        shard = []
        for step, (ids, _) in enumerate(loader):
            shard.extend(ids.tolist())
            sampler.reweight(ids, loss_of(ids, epoch))
            if epoch == 1 and step == 2:  # mid-epoch checkpoint: a collective
                record["pending"] = np.sort(sampler.scores.state_dict()["pending_ids"])
        record["shards"].append(np.array(shard))
    sampler.set_epoch(EPOCHS)
    record["scores"] = sampler.scores.values.copy()
    return record


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    # Settling gathers in chunks of at most 500 entries per rank here (4M by default): the
    # results must not depend on the chunking, and no gather buffer may exceed a chunk.
    _dist.GATHER_CHUNK = 500
    largest = []
    real_all_gather = dist.all_gather

    def all_gather(outputs, tensor, *args, **kwargs):
        largest.append(tensor.numel())
        return real_all_gather(outputs, tensor, *args, **kwargs)

    dist.all_gather = all_gather
    try:
        records = {kind: drive(kind) for kind in ("infobatch", "rs2", "pruned")}
        records["largest_gather"] = max(largest)
        torch.save(records, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_share_plans_and_scores(tmp_path):
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for kind in ("infobatch", "rs2", "pruned"):
        single = drive(kind, rank=0, world_size=1)  # one process sees every batch itself
        a, b = r0[kind], r1[kind]
        for epoch in range(EPOCHS):
            plan = a["plans"][epoch]
            np.testing.assert_array_equal(plan, b["plans"][epoch])
            np.testing.assert_array_equal(plan, single["plans"][epoch])
            s0, s1 = a["shards"][epoch], b["shards"][epoch]
            assert len(s0) == len(s1) == -(-len(plan) // 2)
            padded = np.concatenate([plan, plan])[: 2 * len(s0)]
            np.testing.assert_array_equal(np.stack([s0, s1], axis=1).ravel(), padded)
            if len(plan) % 2 == 0:
                assert not set(s0.tolist()) & set(s1.tolist())
        np.testing.assert_array_equal(a["scores"], b["scores"])
        np.testing.assert_array_equal(a["scores"], single["scores"])
        np.testing.assert_array_equal(a["pending"], b["pending"])
        assert len(a["pending"]) == 2 * 3 * BATCH  # both ranks' 3 batches, gathered
    assert len({len(p) for p in r0["infobatch"]["plans"]}) > 1  # pruned epochs really shrank
    assert r0["largest_gather"] == r1["largest_gather"] == 500  # bounded, and chunks were used


def _late_worker(rank: int, init_file: str, out_dir: str) -> None:
    # Built before the process group exists, as under Lightning (whose group starts in fit) or
    # a script that creates its samplers before torch.distributed.init_process_group.
    samplers = {kind: make(kind) for kind in ("infobatch", "rs2", "pruned")}
    hard = HardBatchSampler(N, 2 * BATCH, delta=0.5, num_epochs=1, seed=3)
    selector = TopLossSelector(keep=0.5, beta=1.0, seed=3)
    lengths = {kind: len(s) for kind, s in samplers.items()}  # read before the group exists
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        record = {kind: (s.rank, s.world_size, list(s)) for kind, s in samplers.items()}
        record["lengths_before"] = lengths
        record["hard"] = [batch for _, batch in zip(range(3), hard, strict=False)]
        record["selector"] = (selector.rank, selector.select(None, torch.rand(40))[0].tolist())
        torch.save(record, f"{out_dir}/late{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_samplers_built_before_the_process_group_shard_by_it(tmp_path):
    mp.start_processes(
        _late_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    records = [torch.load(tmp_path / f"late{r}.pt", weights_only=False) for r in (0, 1)]
    for rank, record in enumerate(records):
        assert record["lengths_before"]["rs2"] == make("rs2", rank=0, world_size=1).__len__()
        for kind in ("infobatch", "rs2", "pruned"):
            expected = list(make(kind, rank=rank, world_size=2))
            assert record[kind] == (rank, 2, expected), kind
        hard = HardBatchSampler(N, 2 * BATCH, delta=0.5, num_epochs=1, seed=3, rank=rank,
                                world_size=2)  # fmt: skip
        assert record["hard"] == [batch for _, batch in zip(range(3), hard, strict=False)]
        assert record["selector"][0] == rank
    assert records[0]["selector"][1] != records[1]["selector"][1]  # ranks draw their own noise
