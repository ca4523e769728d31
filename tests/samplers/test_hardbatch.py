"""HardBatchSampler: step budget, DyBAT schedule, stale-loss rotation, prefetch, resume, DDP."""

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from winnow.samplers.hardbatch import HardBatchSampler
from winnow.samplers.indexed import IndexedDataset


class Losses:
    """Synthetic training: example i's loss halves each time its batch is trained."""

    def __init__(self, n: int, seed: int = 0):
        self.base = np.random.default_rng(seed).uniform(1.0, 2.0, n)
        self.seen = np.zeros(n, dtype=np.int64)

    def __call__(self, ids) -> torch.Tensor:
        ids = np.asarray(ids)
        out = torch.tensor(self.base[ids] * 0.5 ** self.seen[ids])
        self.seen[ids] += 1
        return out


def batch_index(sampler: HardBatchSampler) -> dict[frozenset, int]:
    return {frozenset(sampler.batch_ids(j).tolist()): j for j in range(sampler.num_batches)}


def drive(sampler, losses, epochs, *, lag=0, stop_after=None, start_epoch=0):
    """Iterate like a training loop whose loader runs ``lag`` batches ahead.

    Returns the batches yielded (as id lists) and, when stopped early, the unfed ones.
    """
    yielded, queue, fed = [], [], 0
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        it = iter(sampler)
        for ids in it:
            yielded.append(ids)
            queue.append(ids)
            while len(queue) > lag:
                head = queue.pop(0)
                sampler.update(torch.tensor(head), losses(head))
                fed += 1
                if stop_after is not None and fed == stop_after:
                    return yielded, queue
        while queue:
            head = queue.pop(0)
            sampler.update(torch.tensor(head), losses(head))
            fed += 1
    return yielded, queue


def reference_dybat(n_b, k, epochs, batch_loss):
    """The DyBAT pseudo-code of docs/hard-batch.md: the schedule of batch indices."""
    order = list(range(n_b))
    scores = [batch_loss(j) for j in order]
    steps = n_b
    while steps < epochs * n_b:
        top = sorted(np.argsort(-np.array(scores), kind="stable")[:k].tolist())
        for j in top:
            if steps >= epochs * n_b:
                break
            scores[j] = batch_loss(j)
            order.append(j)
            steps += 1
    return order


def test_budget_is_exactly_e_plain_epochs():
    s = HardBatchSampler(103, 10, delta=0.35, num_epochs=3, seed=1)
    assert (s.num_batches, s.batches_per_round, s.total_steps()) == (10, 3, 30)
    losses = Losses(103)
    lengths = []
    for epoch in range(3):
        lengths.append(len(s))
        got, _ = drive(s, losses, epoch + 1, start_epoch=epoch)
        assert len(got) == lengths[-1]
    assert lengths == [10, 10, 10] and s.steps_done == 30
    assert len(s) == 0 and list(iter(s)) == []
    parts = np.concatenate([s.batch_ids(j) for j in range(10)])
    assert len(np.unique(parts)) == 100 and parts.max() < 103


def test_schedule_matches_dybat_and_stale_losses_rotate():
    n, b, epochs = 120, 10, 6
    s = HardBatchSampler(n, b, delta=0.3, num_epochs=epochs, seed=2)
    index = batch_index(s)
    losses = Losses(n)
    got, _ = drive(s, losses, epochs)
    order = [index[frozenset(ids)] for ids in got]
    assert order[:12] == list(range(12))  # warm-up: every batch once, in order

    twin = Losses(n)
    expected = reference_dybat(12, 3, epochs, lambda j: float(twin(s.batch_ids(j)).mean()))
    assert order == expected
    # Rotation: every batch comes back after warm-up, even though rounds retrain only 3 of 12.
    assert set(order[12:]) == set(range(12))
    assert s.rounds_started == 1 + (epochs * 12 - 12) // 3  # warm-up + rounds of 3 batches
    scores, step = s.batch_losses()
    assert np.all(step >= 0) and np.isfinite(scores).all()
    last_seen = {j: max(t for t, o in enumerate(order) if o == j) for j in range(12)}
    assert all(step[j] == last_seen[j] for j in range(12))  # skipped batches keep stale scores


def test_delta_one_is_plain_epochs_over_the_fixed_partition():
    s = HardBatchSampler(50, 10, delta=1.0, num_epochs=3)
    index = batch_index(s)
    got, _ = drive(s, Losses(50), 3)
    assert [index[frozenset(ids)] for ids in got] == list(range(5)) * 3


def test_resume_mid_epoch_with_batches_in_flight():
    n, epochs, lag = 200, 4, 3
    full = HardBatchSampler(n, 10, delta=0.25, num_epochs=epochs, seed=3)
    expected, _ = drive(full, Losses(n), epochs, lag=lag)

    first = HardBatchSampler(n, 10, delta=0.25, num_epochs=epochs, seed=3)
    losses = Losses(n)
    head, in_flight = drive(first, losses, epochs, lag=lag, stop_after=27)
    state = first.state_dict()
    assert state["fed_steps"] == 27 and len(state["in_flight"]) == lag
    resumed = HardBatchSampler(n, 10, delta=0.25, num_epochs=epochs, seed=3)
    resumed.load_state_dict(state)
    tail, _ = drive(resumed, losses, epochs, lag=lag, start_epoch=27 // 20)
    assert head[:27] + tail == expected
    assert resumed.steps_done == epochs * 20
    with pytest.raises(ValueError, match="delta"):
        HardBatchSampler(n, 10, delta=0.5, num_epochs=epochs, seed=3).load_state_dict(state)


def test_real_dataloader_with_prefetching_workers():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 8, generator=g), torch.randint(0, 3, (160,), generator=g)
    s = HardBatchSampler(160, 16, delta=0.5, num_epochs=3, seed=0)
    loader = DataLoader(
        IndexedDataset(TensorDataset(x, y)),
        batch_sampler=s,
        num_workers=1,
        prefetch_factor=4,
        persistent_workers=True,
    )
    model = torch.nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 0
    for epoch in range(3):
        s.set_epoch(epoch)
        assert len(loader) == 10
        for ids, (xb, yb) in loader:
            losses = torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
            s.update(ids, losses.detach())
            losses.mean().backward()
            opt.step()
            opt.zero_grad()
            steps += 1
    assert steps == 30 == s.total_steps()
    scores, step = s.batch_losses()
    assert np.isfinite(scores).all() and step.max() == 29


def test_bad_input():
    for delta in (0.0, 1.5):
        with pytest.raises(ValueError, match="delta"):
            HardBatchSampler(100, 10, delta=delta, num_epochs=1)
    with pytest.raises(ValueError, match="divisible by world_size 4"):
        HardBatchSampler(100, 10, delta=0.5, num_epochs=1, rank=0, world_size=4)
    with pytest.raises(ValueError, match="larger than the dataset"):
        HardBatchSampler(5, 10, delta=0.5, num_epochs=1)
    s = HardBatchSampler(100, 10, delta=0.5, num_epochs=2)
    with pytest.raises(ValueError, match="no batch is awaiting"):
        s.update(torch.arange(10), torch.zeros(10))
    ids = next(iter(s))
    with pytest.raises(ValueError, match="match none"):
        s.update(torch.arange(10) + 1000, torch.zeros(10))
    with pytest.raises(ValueError, match="already reduced"):
        s.update(torch.tensor(ids), torch.tensor(1.0))
    with pytest.raises(ValueError, match="9 losses for a slice of 10"):
        s.update(torch.tensor(ids), torch.zeros(9))
    with pytest.raises(ValueError, match="sequential"):
        s.set_epoch(1)
    with pytest.raises(ValueError, match="NaN"):
        s.update(torch.tensor(ids), torch.full((10,), float("nan")))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    calls = []
    for name in ("all_reduce", "all_gather", "broadcast", "all_gather_into_tensor"):
        real = getattr(torch.distributed, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(torch.distributed, name, counted)
    try:
        s = HardBatchSampler(96, 8, delta=0.5, num_epochs=3, seed=7)
        losses = Losses(96)
        got, _ = drive(s, losses, 3)
        scores, step = s.batch_losses()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(
                {"got": got, "scores": scores.tolist(), "step": step.tolist(), "calls": calls,
                 "rounds": s.rounds_started},
                fh,
            )  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_process_gloo_run_keeps_one_global_schedule(tmp_path):
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["scores"] == r1["scores"] and r0["step"] == r1["step"]
    single = HardBatchSampler(96, 8, delta=0.5, num_epochs=3, seed=7)
    expected, _ = drive(single, Losses(96), 3)
    assert len(r0["got"]) == len(r1["got"]) == 36
    for a, c, full in zip(r0["got"], r1["got"], expected, strict=True):
        assert len(a) == len(c) == 4 and not set(a) & set(c)
        assert sorted(a + c) == sorted(full)  # each rank's slice of the same global batch
    np.testing.assert_allclose(r0["scores"], single.batch_losses()[0])
    # one round of collectives (two small all-reduces) per round chosen, none per step: the
    # 36 steps (12 warm-up + 4 rounds of 6) cost at most 2 x 6 collectives instead of 3 x 36
    assert r0["rounds"] == 5
    assert r0["calls"] == ["all_reduce"] * len(r0["calls"])
    assert len(r0["calls"]) <= 2 * (r0["rounds"] + 1)
