"""InfoBatch rules (docs/infobatch.md): plan multiset, weights, annealing, unbiasedness, budget."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from winnow.samplers import IndexedDataset, InfoBatchSampler, ScoreTable


def seeded(values, **kwargs):
    table = ScoreTable(len(values), initial=3.0)
    table.seed(values)
    return InfoBatchSampler(len(values), scores=table, **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0, 10, width=32), min_size=1, max_size=300),
    r=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9]),
    seed=st.integers(0, 10_000),
)
def test_plan_keeps_all_of_d2_and_exactly_floor_of_d1(values, r, seed):
    values = np.array(values, dtype=np.float32)
    s = seeded(values, num_epochs=4, prune_ratio=r, seed=seed)
    s.set_epoch(1)
    plan = s.plan.ids
    assert len(np.unique(plan)) == len(plan) == len(s)
    below = values < values.mean(dtype=np.float64)
    kept = np.zeros(len(values), dtype=bool)
    kept[plan] = True
    assert kept[~below].all()  # D2 is always kept
    assert kept[below].sum() == math.floor(round((1 - r) * below.sum(), 6))
    w = s.weights_of(plan)
    np.testing.assert_allclose(w[below[plan]], 1 / (1 - r), rtol=1e-6)
    np.testing.assert_array_equal(w[~below[plan]], 1.0)


def test_reweight_returns_the_plain_weighted_mean_and_records_raw_losses():
    values = np.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 1.0])  # mean 2.5: D1 = {0, 1, 2, 7}
    s = seeded(values, num_epochs=4, prune_ratio=0.5)
    s.set_epoch(1)
    ids = torch.tensor(sorted(s.plan.ids.tolist()))
    assert len(ids) == 4 + 2
    losses = torch.arange(1.0, 7.0, requires_grad=True)
    out = s.reweight(ids, losses)
    w = torch.where(torch.from_numpy(values[ids.numpy()] < 2.5), 2.0, 1.0)
    torch.testing.assert_close(out, (w * losses).mean())  # not divided by sum(w)
    out.backward()
    torch.testing.assert_close(losses.grad, w / 6)
    s.set_epoch(2)  # settles the *unweighted* losses
    np.testing.assert_allclose(s.scores.values[ids.numpy()], np.arange(1.0, 7.0))


def test_epoch_zero_never_prunes_and_annealing_resets_weights():
    n, epochs = 200, 10  # E * delta = 8.75: epochs 0..8 prune, epoch 9 is full
    s = InfoBatchSampler(n, num_epochs=epochs, prune_ratio=0.5, delta=0.875, seed=3)
    rng = np.random.default_rng(0)
    lengths = []
    for epoch in range(epochs):
        s.set_epoch(epoch)
        lengths.append(len(s))
        ids = torch.from_numpy(s.rank_plan().astype(np.int64))
        losses = torch.from_numpy(rng.exponential(size=len(ids)).astype(np.float32))
        out = s.reweight(ids, losses)
        if epoch in (0, 9):
            torch.testing.assert_close(out, losses.mean())  # all weights 1
    assert lengths[0] == n and lengths[9] == n
    assert all(length < n for length in lengths[1:9])
    assert [s.policy.is_pruned_epoch(e) for e in range(epochs)] == [True] * 9 + [False]


def test_expected_epoch_gradient_is_unbiased_on_a_quadratic():
    # l_i(theta) = a_i/2 (theta - c_i)^2; the epoch's summed gradient, averaged over seeds,
    # must equal the full-data sum. Without the 1/(1-r) weights it is clearly biased.
    n, r, seeds = 40, 0.7, 3000
    gen = np.random.default_rng(0)
    a = torch.from_numpy(gen.uniform(0.5, 2.0, n))
    c = torch.from_numpy(gen.normal(size=n))
    scores = gen.exponential(size=n)  # about 60 % below the mean
    theta0 = 0.3
    full = float((a * (theta0 - c)).sum())
    weighted, unweighted = [], []
    for seed in range(seeds):
        s = seeded(scores, num_epochs=2, prune_ratio=r, delta=1.0, seed=seed)
        s.set_epoch(1)
        theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
        total = 0.0
        for batch in np.array_split(s.rank_plan().astype(np.int64), 3):
            ids = torch.from_numpy(batch)
            losses = 0.5 * a[ids] * (theta - c[ids]) ** 2
            total = total + s.reweight(ids, losses) * len(ids)
            unweighted.append(float((a[ids] * (theta0 - c[ids])).sum()))
        (g,) = torch.autograd.grad(total, theta)
        weighted.append(float(g))
    weighted = np.array(weighted)
    plain = np.array(unweighted).reshape(seeds, 3).sum(axis=1)
    se = weighted.std() / math.sqrt(seeds)
    assert abs(weighted.mean() - full) < 4 * se
    assert abs(plain.mean() - full) > 10 * plain.std() / math.sqrt(seeds)


def test_global_rngs_are_untouched():
    np_state = np.random.get_state()  # noqa: NPY002 (checking that nobody touches it)
    torch_state = torch.get_rng_state()
    s = seeded(np.random.default_rng(1).random(5000), num_epochs=3)
    for epoch in range(3):
        s.set_epoch(epoch)
        list(s)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_same_seed_same_plan_and_epochs_differ():
    values = np.random.default_rng(2).random(1000)
    a, b = seeded(values, num_epochs=5), seeded(values, num_epochs=5)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(2)  # no feedback in between: same snapshot, new draw
    assert list(a) != first


def test_target_saving_meets_the_budget():
    n, epochs, target = 3000, 10, 0.3
    s = InfoBatchSampler(n, num_epochs=epochs, delta=0.9, target_saving=target, seed=0)
    rng = np.random.default_rng(5)
    scale = rng.uniform(0.2, 3.0, size=n)  # per-example difficulty, noisy each epoch
    steps = 0
    projected = [s.total_steps(1)]  # examples trained over the run, projected from the budget
    for epoch in range(epochs):
        s.set_epoch(epoch)
        projected.append(s.total_steps(1))
        ids = s.rank_plan().astype(np.int64)
        steps += s.steps_per_epoch(64)
        s.update(ids, (scale[ids] * rng.exponential(size=len(ids))).astype(np.float32))
    assert abs(s.saved_fraction() - target) < 1 / n
    ratios = s.ratio_per_epoch
    assert ratios[0] == 0.0 and ratios[9] == 0.0  # nothing below mean / annealing
    assert all(0 < ratios[e] <= 0.9 for e in range(1, 9))
    assert len(set(np.round(list(ratios.values()), 6))) > 2  # r adapts per epoch
    assert s.total_steps(64) == steps  # exact once every epoch is planned
    realised = s.total_steps(1)
    assert realised == round((1 - s.saved_fraction()) * epochs * n)
    # the realised total, not the full-data bound, at every point of the run
    assert all(abs(p - realised) <= 2 * epochs for p in projected), (projected, realised)
    with pytest.raises(ValueError, match="target_saving must be in"):
        InfoBatchSampler(n, num_epochs=10, delta=0.9, target_saving=0.75)


def test_len_of_loader_is_right_before_the_epoch_and_total_steps_bounds_it():
    values = np.random.default_rng(3).random(500).astype(np.float32)
    s = seeded(values, num_epochs=4, prune_ratio=0.5, delta=0.5)
    bound = s.total_steps(32)
    assert bound == 4 * math.ceil(500 / 32)  # nothing planned yet: pruned epochs count full
    loader = DataLoader(IndexedDataset(torch.arange(500)), batch_size=32, sampler=s)
    realised = 0
    for epoch in range(4):
        s.set_epoch(epoch)
        expected = len(loader)
        assert expected == math.ceil(len(s) / 32)
        got = sum(1 for _ in loader)
        assert got == expected
        realised += got
    assert realised == s.total_steps(32) < bound
    assert s.schedule_progress(0, 32) == pytest.approx(3 / 4)


def test_ranks_take_disjoint_equal_shards_of_one_plan():
    values = np.random.default_rng(4).random(1001)
    world = 3
    shards = []
    for rank in range(world):
        s = seeded(values, num_epochs=3, rank=rank, world_size=world, seed=9)
        s.set_epoch(1)
        shards.append(list(s))
    plan = s.plan.ids.tolist()
    assert len({len(x) for x in shards}) == 1
    merged = [shards[r][i] for i in range(len(shards[0])) for r in range(world)]
    assert merged[: len(plan)] == plan and merged[len(plan) :] == plan[: len(merged) - len(plan)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="prune_ratio must be in"):
        InfoBatchSampler(10, 5, prune_ratio=0.95)
    with pytest.raises(ValueError, match="delta must be in"):
        InfoBatchSampler(10, 5, delta=1.5)
    with pytest.raises(ValueError, match="num_epochs must be >= 1"):
        InfoBatchSampler(10, 0)
    with pytest.raises(TypeError, match="num_examples must be an int"):
        InfoBatchSampler(10.0, 5)
    with pytest.raises(ValueError, match="scores has 4 examples"):
        InfoBatchSampler(10, 5, scores=ScoreTable(4))
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        InfoBatchSampler(10, 5).set_epoch(-1)


def test_forgetting_set_epoch_warns():
    s = InfoBatchSampler(50, num_epochs=3)
    s.set_epoch(0)
    ids = list(s)
    s.update(ids, np.ones(len(ids), dtype=np.float32))
    with pytest.warns(UserWarning, match=r"call sampler.set_epoch\(epoch\) before every epoch"):
        list(s)


def test_reweight_refuses_out_of_range_ids_and_records_nothing():
    s = InfoBatchSampler(10, num_epochs=4, prune_ratio=0.5, seed=0)
    s.set_epoch(0)
    for bad in (torch.tensor([3, 10]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match=r"ids must be in \[0, 10\)"):
            s.reweight(bad, torch.ones(2))
        with pytest.raises(ValueError, match=r"ids must be in \[0, 10\)"):
            s.update(bad, torch.ones(2))
    assert s.scores.num_pending == 0  # the bad feedback is not left behind
    s.set_epoch(1)  # and settling is not poisoned by it
