"""Torch Gumbel-top-k: same laws as the numpy chooser, on the scores' device."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from winnow.selection.choose_torch import gumbel_top_k_torch


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=60),
    st.sampled_from(["softmax", "power", "softrank"]),
    st.sampled_from([0.0, 0.5, 1.0, 8.0, math.inf]),
    st.data(),
)
def test_draws_k_distinct_positions(values, kind, beta, data):
    s = torch.tensor(values)
    k = data.draw(st.integers(0, len(values)))
    pos = gumbel_top_k_torch(s, k, beta=beta, kind=kind, generator=torch.Generator().manual_seed(0))
    assert pos.dtype == torch.int64 and pos.shape == (k,)
    assert len(set(pos.tolist())) == k
    if kind == "power" and 0 < beta and (s > 0).sum() >= k:
        assert bool((s[pos] > 0).all())
    if math.isinf(beta):
        np.testing.assert_array_equal(np.sort(s[pos].numpy()), np.sort(s.numpy())[::-1][:k][::-1])


@pytest.mark.parametrize(
    ("kind", "beta", "weights"),
    [
        ("softmax", 1.0, np.exp([0.0, 1.0, 2.0, 0.5])),
        ("softmax", 0.0, np.ones(4)),
        ("power", 2.0, np.array([0.0, 1.0, 2.0, 0.5]) ** 2),
        ("softrank", 1.0, 1.0 / np.array([4.0, 2.0, 1.0, 3.0])),
    ],
)
def test_first_draw_follows_the_distribution(kind, beta, weights):
    s = torch.tensor([0.0, 1.0, 2.0, 0.5])
    gen = torch.Generator().manual_seed(0)
    first = [
        gumbel_top_k_torch(s, 1, beta=beta, kind=kind, generator=gen).item() for _ in range(20000)
    ]
    freq = np.bincount(first, minlength=4) / 20000
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.015)


def test_power_zero_scores_come_last_and_uniformly():
    s = torch.tensor([0.0, 3.0, 0.0, 0.0, 1.0])
    gen = torch.Generator().manual_seed(1)
    tails = []
    for _ in range(3000):
        pos = gumbel_top_k_torch(s, 3, beta=1.0, kind="power", generator=gen)
        assert set(pos[:2].tolist()) == {1, 4}
        tails.append(pos[2].item())
    freq = np.bincount(tails, minlength=5)[[0, 2, 3]] / 3000
    np.testing.assert_allclose(freq, 1 / 3, atol=0.04)


def test_generator_makes_it_reproducible():
    s = torch.randn(100)
    a = gumbel_top_k_torch(s, 10, generator=torch.Generator().manual_seed(5))
    b = gumbel_top_k_torch(s, 10, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 5}, r"n=3\], got 5"),
        ({"beta": -1.0}, "-1.0"),
        ({"kind": "gibbs"}, "gibbs"),
        ({"scores": torch.tensor([1.0, float("nan"), 0.0]), "check": True}, "1 NaN"),
        ({"scores": torch.tensor([1.0, -1.0, 0.0]), "kind": "power", "check": True}, "negative"),
        ({"scores": torch.zeros(0)}, "non-empty"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"scores": torch.tensor([1.0, 2.0, 3.0]), "k": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gumbel_top_k_torch(**args)
