"""Choosers: sizes, no repeats, order, the beta limits, budgets, and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from winnow.selection import choose
from winnow.selection._ranking import order_by_score
from winnow.selection.choose import (
    bottom_k,
    class_budgets,
    gumbel_top_k,
    offset_window,
    random_mix,
    stratified,
    subsample_top_k,
    threshold,
    top_k,
    uniform,
)

# Mostly distinct scores, with a share of a few repeated values so that ties are common.
finite = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=32), st.sampled_from([0.0, 1.0, -2.0])
)


@st.composite
def scores_and_k(draw, min_n=1, max_n=200):
    s = draw(arrays(np.float32, st.integers(min_n, max_n), elements=finite))
    k = draw(st.integers(0, s.shape[0]))
    return s, k


def _is_selection(pos, n, k):
    return (
        pos.dtype == np.int64
        and pos.shape == (k,)
        and len(np.unique(pos)) == k
        and (k == 0 or (pos.min() >= 0 and pos.max() < n))
    )


def _reference_order(s, largest):
    """Rank order by score, ties by ascending position (the documented rule)."""
    key = -s.astype(np.float64) if largest else s.astype(np.float64)
    return np.lexsort((np.arange(len(s)), key))


@settings(max_examples=150, deadline=None)
@given(scores_and_k())
def test_top_and_bottom_k_are_the_extremes_in_order(data):
    s, k = data
    top = top_k(s, k)
    assert _is_selection(top, len(s), k)
    np.testing.assert_array_equal(top, _reference_order(s, True)[:k])
    bot = bottom_k(s, k)
    assert _is_selection(bot, len(s), k)
    np.testing.assert_array_equal(bot, _reference_order(s, False)[:k])


@settings(max_examples=100, deadline=None)
@given(scores_and_k(), st.integers(0, 50), st.booleans())
def test_offset_window_is_the_rank_slice(data, offset, largest):
    s, k = data
    offset = min(offset, len(s) - k)
    pos = offset_window(s, k, offset=offset, largest=largest)
    assert _is_selection(pos, len(s), k)
    np.testing.assert_array_equal(pos, _reference_order(s, largest)[offset : offset + k])


@settings(max_examples=150, deadline=None)
@given(
    scores_and_k(),
    st.sampled_from(["softmax", "power", "softrank"]),
    st.floats(0, 50),
    st.integers(0, 2**32),
)
def test_gumbel_top_k_draws_k_distinct_positions(data, kind, beta, seed):
    s, k = data
    if kind == "power":
        s = np.abs(s)
    pos = gumbel_top_k(s, k, beta=beta, kind=kind, rng=np.random.default_rng(seed))
    assert _is_selection(pos, len(s), k)
    if kind == "power" and beta > 0 and np.count_nonzero(s) >= k:
        assert np.all(s[pos] > 0), "zero scores have no mass under kind='power'"


@settings(max_examples=100, deadline=None)
@given(scores_and_k(), st.sampled_from(["softmax", "power", "softrank"]))
def test_gumbel_top_k_with_infinite_beta_is_top_k(data, kind):
    s, k = data
    if kind == "power":
        s = np.abs(s)
    pos = gumbel_top_k(s, k, beta=np.inf, kind=kind, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(pos, top_k(s, k))


@pytest.mark.parametrize("kind", ["softmax", "power", "softrank"])
def test_gumbel_top_k_large_beta_approaches_top_k(kind):
    s = np.linspace(1.0, 2.0, 50)
    pos = gumbel_top_k(s, 10, beta=1e5, kind=kind, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(pos, top_k(s, 10))


def _first_draw_frequencies(s, beta, kind, draws=20000):
    rng = np.random.default_rng(123)
    first = [gumbel_top_k(s, 1, beta=beta, kind=kind, rng=rng)[0] for _ in range(draws)]
    return np.bincount(first, minlength=len(s)) / draws


@pytest.mark.parametrize(
    ("kind", "beta", "weights"),
    [
        ("softmax", 1.0, np.exp([0.0, 1.0, 2.0, -1.0])),
        ("softmax", 0.0, np.ones(4)),
        ("power", 2.0, np.array([0.0, 1.0, 2.0, 0.5]) ** 2),
        ("softrank", 1.0, 1.0 / np.array([3.0, 2.0, 1.0, 4.0])),
    ],
)
def test_gumbel_top_k_first_draw_follows_the_distribution(kind, beta, weights):
    base = np.array([0.0, 1.0, 2.0, -1.0]) if kind != "power" else np.array([0.0, 1.0, 2.0, 0.5])
    freq = _first_draw_frequencies(base, beta, kind)
    expected = weights / weights.sum()
    # 20000 draws: binomial standard error <= 0.0036, so 0.015 is > 4 sigma.
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_gumbel_top_k_is_without_replacement_in_distribution():
    # Second draw from {a: e^0, b: e^1, c: e^2} given c first: P(b) = e/(1+e).
    s = np.array([0.0, 1.0, 2.0])
    rng = np.random.default_rng(7)
    pairs = np.array([gumbel_top_k(s, 2, beta=1.0, rng=rng) for _ in range(20000)])
    after_c = pairs[pairs[:, 0] == 2, 1]
    assert abs(np.mean(after_c == 1) - np.e / (1 + np.e)) < 0.02


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.5, 2.5, 1e4, -1e4]), min_size=1, max_size=100),
    st.sampled_from([np.float16, np.float32, np.float64, np.int32]),
)
def test_order_by_score_breaks_ties_by_position(values, dtype):
    s = np.array(values).astype(dtype)
    for descending in (True, False):
        key = -s.astype(np.float64) if descending else s.astype(np.float64)
        expected = np.lexsort((np.arange(len(s)), key))
        np.testing.assert_array_equal(order_by_score(s, descending), expected)


def test_power_fills_uniformly_when_too_few_positive_scores():
    s = np.array([0.0, 3.0, 0.0, 0.0, 1.0])
    pos = gumbel_top_k(s, 4, beta=1.0, kind="power", rng=np.random.default_rng(0))
    assert _is_selection(pos, 5, 4)
    assert set(pos[:2]) == {1, 4}


@settings(max_examples=100, deadline=None)
@given(scores_and_k(), st.floats(0, 1), st.booleans(), st.integers(0, 2**32))
def test_random_mix_keeps_the_score_block_and_fills_from_the_rest(data, alpha, largest, seed):
    s, k = data
    pos = random_mix(s, k, alpha=alpha, rng=np.random.default_rng(seed), largest=largest)
    assert _is_selection(pos, len(s), k)
    n_score = k - int(round(alpha * k))
    expected = top_k(s, n_score) if largest else bottom_k(s, n_score)
    np.testing.assert_array_equal(pos[:n_score], expected)


def test_random_mix_random_block_is_uniform_over_the_rest():
    s = np.arange(10, dtype=np.float64)
    rng = np.random.default_rng(3)
    picks = np.concatenate([random_mix(s, 4, alpha=0.5, rng=rng)[2:] for _ in range(5000)])
    freq = np.bincount(picks, minlength=10) / len(picks)
    assert freq[8] == 0 and freq[9] == 0  # the two chosen by score
    np.testing.assert_allclose(freq[:8], 1 / 8, atol=0.015)


def test_subsample_top_k_limits():
    s = np.random.default_rng(0).normal(size=100)
    np.testing.assert_array_equal(
        subsample_top_k(s, 7, subset_size=100, rng=np.random.default_rng(1)), top_k(s, 7)
    )
    pos = subsample_top_k(s, 7, subset_size=20, rng=np.random.default_rng(1))
    assert _is_selection(pos, 100, 7)
    assert np.all(np.diff(s[pos]) <= 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=20), st.data())
def test_class_budgets_largest_remainder(counts, data):
    counts = np.array(counts)
    k = data.draw(st.integers(0, int(counts.sum())))
    budget = class_budgets(counts, k)
    assert budget.sum() == k
    assert np.all(budget <= counts)
    if counts.sum():
        exact = k * counts / counts.sum()
        assert np.all(budget >= np.floor(exact)) and np.all(budget <= np.ceil(exact))


def test_stratified_applies_the_chooser_per_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=1000)
    s = rng.normal(size=1000)
    pos = stratified(labels, 100, "top_k", scores=s)
    assert _is_selection(pos, 1000, 100)
    budgets = class_budgets(np.bincount(labels), 100)
    np.testing.assert_array_equal(np.bincount(labels[pos], minlength=4), budgets)
    for c in range(4):
        members = np.flatnonzero(labels == c)
        expected = members[top_k(s[members], budgets[c])]
        np.testing.assert_array_equal(np.sort(pos[labels[pos] == c]), np.sort(expected))
    stochastic = stratified(labels, 100, gumbel_top_k, scores=s, beta=1.0, kind="softmax", rng=rng)
    np.testing.assert_array_equal(np.bincount(labels[stochastic], minlength=4), budgets)


def test_threshold_directions():
    s = np.array([0.5, 1.0, 2.0, 1.0])
    np.testing.assert_array_equal(threshold(s, 1.0), [2])
    np.testing.assert_array_equal(threshold(s, 1.0, inclusive=True), [1, 2, 3])
    np.testing.assert_array_equal(threshold(s, 1.0, above=False), [0])


def test_accepts_cpu_torch_tensors_and_ints():
    t = torch.tensor([0.1, 3.0, 2.0])
    np.testing.assert_array_equal(top_k(t, 2), [1, 2])
    np.testing.assert_array_equal(bottom_k(np.array([5, 1, 3]), 2), [1, 2])


def test_global_rng_untouched():
    before = np.random.get_state()[1].copy()  # noqa: NPY002 (checking it is not used)
    s = np.random.default_rng(0).random(1000)
    gumbel_top_k(s, 10, rng=np.random.default_rng(1))
    random_mix(s, 10, alpha=0.5, rng=np.random.default_rng(1))
    uniform(s, 10, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: top_k(np.array([1.0, np.nan, np.nan]), 1), ValueError, "2 NaN"),
        (lambda: top_k(np.arange(3.0), 4), ValueError, "k=4 is larger .* n=3"),
        (lambda: top_k(np.arange(3.0), -1), ValueError, "k must be >= 0"),
        (lambda: top_k(np.arange(3.0), 1.5), TypeError, "integer"),
        (lambda: top_k(np.empty(0), 0), ValueError, "empty"),
        (lambda: top_k(np.ones((2, 2)), 1), ValueError, r"1-D, got shape \(2, 2\)"),
        (lambda: top_k(np.array([True, False]), 1), TypeError, "bool"),
        (
            lambda: gumbel_top_k(np.ones(3), 1, beta=-0.5, rng=np.random.default_rng()),
            ValueError,
            "beta .* -0.5",
        ),
        (
            lambda: gumbel_top_k(np.ones(3), 1, kind="boltzmann", rng=np.random.default_rng()),
            ValueError,
            "boltzmann",
        ),
        (
            lambda: gumbel_top_k(
                np.array([1.0, -2.0]), 1, kind="power", rng=np.random.default_rng()
            ),
            ValueError,
            "1 negative",
        ),
        (lambda: gumbel_top_k(np.ones(3), 1, rng=None), TypeError, "Generator"),
        (
            lambda: random_mix(np.ones(3), 1, alpha=1.5, rng=np.random.default_rng()),
            ValueError,
            "alpha .* 1.5",
        ),
        (lambda: offset_window(np.ones(5), 3, offset=3), ValueError, "k=3 .* offset=3"),
        (lambda: stratified(np.zeros(3, int), 1, scores=np.ones(4)), ValueError, "3 .* 4"),
        (lambda: stratified(np.zeros(3, int), 1, "best", scores=np.ones(3)), ValueError, "best"),
        (lambda: threshold(np.ones(3), float("nan")), ValueError, "nan"),
    ],
)
def test_bad_input_names_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_registry_names_match_functions():
    assert choose.CHOOSERS["top_k"] is top_k
    assert set(choose.CHOOSERS) >= {"top_k", "bottom_k", "gumbel_top_k", "random_mix", "uniform"}
