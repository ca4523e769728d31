"""Exact shuffles and exact-size subsets behind every plan (samplers._permute)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from winnow.samplers import _permute
from winnow.samplers._permute import choose_in_mask, permutation, permuted, permuted_nonzero


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1))
def test_permutation_is_a_permutation(n, seed):
    p = permutation(n, np.random.default_rng(seed))
    assert p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(n))


@settings(max_examples=40, deadline=None)
@given(mask=st.lists(st.booleans(), max_size=500), seed=st.integers(0, 1000), frac=st.floats(0, 1))
def test_subset_has_exact_size_and_lies_in_mask(mask, seed, frac):
    mask = np.array(mask, dtype=bool)
    k = int(frac * mask.sum())
    chosen = choose_in_mask(mask, k, np.random.default_rng(seed))
    assert chosen.sum() == k and not (chosen & ~mask).any()
    order = permuted_nonzero(mask, np.random.default_rng(seed))
    np.testing.assert_array_equal(np.sort(order), np.flatnonzero(mask))


def test_large_path_is_exact_and_uniform(monkeypatch):
    # Shrink the small-array cut-off so the bucketed (Rao-Sandelius) path runs on small inputs.
    monkeypatch.setattr(_permute, "_SMALL", 4)
    monkeypatch.setattr(_permute, "_CHUNK", 7)
    rng = np.random.default_rng(0)
    index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.zeros(len(index))
    for _ in range(12000):
        counts[index[tuple(permutation(4, rng).tolist())]] += 1
    expected = 12000 / len(index)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60  # 23 dof: P(chi2 > 60) ~ 4e-5; a biased shuffle fails by far
    values = np.arange(100, 160)
    np.testing.assert_array_equal(np.sort(permuted(values, rng)), values)
    mask = rng.random(50) < 0.5
    np.testing.assert_array_equal(np.sort(permuted_nonzero(mask, rng)), np.flatnonzero(mask))


def test_subset_is_uniform_over_positions():
    mask = np.zeros(12, dtype=bool)
    mask[[0, 2, 3, 7, 8, 11]] = True
    hits = np.zeros(12)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        hits += choose_in_mask(mask, 2, rng)
    # each of the 6 members is chosen with probability 2/6
    np.testing.assert_allclose(hits[mask] / 3000, 1 / 3, atol=0.04)
    assert hits[~mask].sum() == 0


def test_subset_fix_up_path_at_scale():
    rng = np.random.default_rng(2)
    mask = rng.random(3_000_000) < 0.4
    k = 777_777
    chosen = choose_in_mask(mask, k, rng)
    assert chosen.sum() == k and not (chosen & ~mask).any()
    # spread evenly: first and second halves get their share
    half = len(mask) // 2
    share = chosen[:half].sum() / mask[:half].sum()
    assert abs(share - k / mask.sum()) < 0.005


def test_large_permutation_covers_all_ids():
    p = permutation(3_000_000, np.random.default_rng(3))
    np.testing.assert_array_equal(np.bincount(p, minlength=3_000_000), 1)
    # not the identity nor block-structured: ids of the first block are spread out
    assert np.abs(np.flatnonzero(p < 1000).mean() - 1_500_000) < 100_000


def test_bad_subset_size():
    with pytest.raises(ValueError, match="k must be in"):
        choose_in_mask(np.ones(3, dtype=bool), 4, np.random.default_rng(0))
