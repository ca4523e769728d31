"""Static pruning from stored scores (docs/static-pruning.md): choice rules, per-epoch shuffles."""

import numpy as np
import pytest

from winnow.samplers import PrunedSampler


def scores_100():
    return np.random.default_rng(0).permutation(100).astype(np.float32)  # score == rank


def test_top_bottom_and_offset():
    s = scores_100()
    top = PrunedSampler(s, 0.2)
    np.testing.assert_array_equal(np.sort(s[top.kept_ids]), np.arange(80, 100))
    bottom = PrunedSampler(s, 20, largest=False)
    np.testing.assert_array_equal(np.sort(s[bottom.kept_ids]), np.arange(20))
    offset = PrunedSampler(s, 0.2, offset=5)  # skip the 5 hardest
    np.testing.assert_array_equal(np.sort(s[offset.kept_ids]), np.arange(75, 95))


def test_random_mix_and_stochastic_choice():
    s = scores_100()
    mix = PrunedSampler(s, 20, alpha=0.25, seed=1)
    by_score = s[mix.kept_ids] >= 85
    assert by_score.sum() >= 15 and len(mix.kept_ids) == 20
    hot = PrunedSampler(s, 20, beta=1e6, seed=1)  # very cold: top-k
    np.testing.assert_array_equal(np.sort(s[hot.kept_ids]), np.arange(80, 100))
    warm = [PrunedSampler(s, 20, beta=0.05, seed=seed).kept_ids for seed in range(30)]
    mean_score = np.mean([s[k].mean() for k in warm])
    assert 55 < mean_score < 85  # favours high scores without being top-k
    low = PrunedSampler(s, 20, beta=1e6, largest=False, kind="softrank")
    assert s[low.kept_ids].max() < 20


def test_stratified_choice_respects_class_budgets():
    s = scores_100()
    labels = np.arange(100) % 4
    p = PrunedSampler(s, 0.2, labels=labels)
    np.testing.assert_array_equal(np.bincount(labels[p.kept_ids]), [5, 5, 5, 5])
    for c in range(4):
        members = np.flatnonzero(labels == c)
        best = members[np.argsort(s[members])[-5:]]
        assert set(best) == set(p.kept_ids[labels[p.kept_ids] == c])


def test_each_epoch_is_a_new_shuffle_of_the_same_subset():
    p = PrunedSampler(scores_100(), 0.3, seed=4)
    orders = []
    for epoch in range(3):
        p.set_epoch(epoch)
        orders.append(list(p))
        assert sorted(orders[-1]) == p.kept_ids.tolist()
    assert orders[0] != orders[1] != orders[2]
    assert p.total_steps(8, 3) == 3 * 4


def test_bad_arguments():
    s = scores_100()
    with pytest.raises(ValueError, match="keep fraction must be in"):
        PrunedSampler(s, 1.5)
    with pytest.raises(ValueError, match="keep count must be in"):
        PrunedSampler(s, 0)
    with pytest.raises(ValueError, match="alternatives"):
        PrunedSampler(s, 0.5, offset=3, alpha=0.1)
    bad = s.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match=r"finite; 1 are not \(ids \[7\]\)"):
        PrunedSampler(bad, 0.5)
    with pytest.raises(ValueError, match="1-D numeric"):
        PrunedSampler(s.reshape(10, 10), 0.5)
