"""RS2 (docs/rs2.md): rounds cut from permutations, independent rounds, strata, schedule."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from winnow.samplers import RS2Sampler, compressed_cosine, cosine_lambda


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), ratio=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_without_replacement_covers_everything_before_repeating(n, ratio, seed):
    s = RS2Sampler(n, ratio, seed=seed)
    k = s.round_size
    assert k == max(1, round(ratio * n))
    per_cycle = n // k
    rounds = []
    for epoch in range(2 * per_cycle):
        s.set_epoch(epoch)
        rounds.append(list(s))
        assert len(rounds[-1]) == k == len(s)
    for cycle in range(2):
        ids = sum(rounds[cycle * per_cycle : (cycle + 1) * per_cycle], [])
        assert len(set(ids)) == len(ids) == per_cycle * k  # no id twice within a cycle
    if n >= 8:  # a fresh permutation for the next cycle (equal by chance w.p. <= 1/8!)
        assert rounds[:per_cycle] != rounds[per_cycle:]


def test_with_replacement_rounds_are_independent_uniform_subsets():
    n, k = 50, 10
    s = RS2Sampler(n, k / n, replacement=True, seed=1)
    counts = np.zeros(n)
    overlaps = []
    previous = set()
    for epoch in range(2000):
        s.set_epoch(epoch)
        ids = list(s)
        assert len(set(ids)) == len(ids) == k  # without replacement inside a round
        counts[ids] += 1
        overlaps.append(len(previous & set(ids)))
        previous = set(ids)
    np.testing.assert_allclose(counts / 2000, k / n, atol=0.03)
    assert np.mean(overlaps[1:]) == pytest.approx(k * k / n, rel=0.1)  # rounds independent


@pytest.mark.parametrize("replacement", [False, True])
def test_stratified_rounds_take_round_ratio_times_class_size(replacement):
    labels = np.repeat([0, 1, 2], [100, 40, 10])
    np.random.default_rng(0).shuffle(labels)
    s = RS2Sampler(150, 0.2, replacement=replacement, labels=labels, seed=2)
    seen = np.zeros(150, dtype=int)
    for epoch in range(5):
        s.set_epoch(epoch)
        ids = np.array(list(s))
        np.testing.assert_array_equal(np.bincount(labels[ids], minlength=3), [20, 8, 2])
        assert len(np.unique(ids)) == len(ids)
        seen[ids] += 1
    if not replacement:
        assert seen.max() == 1 and seen.sum() == 150  # 5 rounds of 20 % cover every id once
    with pytest.raises(ValueError, match="labels must have shape"):
        RS2Sampler(150, 0.2, labels=labels[:10])


def test_steps_and_compressed_cosine():
    s = RS2Sampler(1000, 0.1)
    assert s.steps_per_epoch(32, drop_last=True) == 3  # floor(100 / 32), upstream's loader
    assert RS2Sampler(1000, 0.1, replacement=True).steps_per_epoch(32) == 4
    assert s.total_steps(32, 50) == 200  # exact before any round is planned
    total = s.total_steps(32, 50, drop_last=True)
    assert total == 150
    with pytest.raises(ValueError, match="pass num_epochs"):
        s.total_steps(32)
    lrs = [compressed_cosine(t, total, lr_max=0.1, lr_min=1e-4) for t in range(total + 1)]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(1e-4)
    assert lrs[total // 2] == pytest.approx((0.1 + 1e-4) / 2)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, lr_max=0.1, lr_min=1e-4))
    for _ in range(total):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert math.isclose(compressed_cosine(10 * total, total), 1e-4)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        compressed_cosine(0, 0)


def test_bad_arguments():
    for ratio in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep must be a fraction in"):
            RS2Sampler(10, ratio)
    with pytest.raises(ValueError, match="rounds every class to 0"):
        RS2Sampler(10, 0.01, labels=np.arange(10))
    with pytest.raises(TypeError, match="labels must be integers"):
        RS2Sampler(3, 0.5, labels=np.array([0.5, 1.0, 2.0]))
