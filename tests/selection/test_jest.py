"""JEST's samplers against exact enumeration of their target distributions (tiny B)."""

import itertools
import math

import numpy as np
import pytest
import torch

from winnow.selection.choose_torch import gumbel_top_k_torch
from winnow.selection.jest import (
    batch_size_for,
    chunk_sizes,
    frozen_pair_losses,
    jest_scores,
    joint_learnability,
    joint_sample,
    sample_per_example,
)
from winnow.selection.losses import sigmoid_pair_losses

DRAWS = 12_000


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def plackett_luce_sets(s: np.ndarray, b: int) -> dict[frozenset, float]:
    """P(set) for b successive draws without replacement ∝ exp(s), by enumerating orders."""
    out: dict[frozenset, float] = {}
    for seq in itertools.permutations(range(len(s)), b):
        p, left = 1.0, list(range(len(s)))
        for i in seq:
            p *= _softmax(s[left])[left.index(i)]
            left.remove(i)
        out[frozenset(seq)] = out.get(frozenset(seq), 0.0) + p
    return out


def sequential_joint_sets(S: np.ndarray, b: int) -> dict[frozenset, float]:
    """P(set) of the chunked sampler with chunks of one: each draw ∝ exp(conditional gain)."""
    n = S.shape[0]
    out: dict[frozenset, float] = {}
    for seq in itertools.permutations(range(n), b):
        p, sel = 1.0, []
        for i in seq:
            left = [k for k in range(n) if k not in sel]
            logits = np.array([S[k, k] + sum(S[k, j] + S[j, k] for j in sel) for k in left])
            p *= _softmax(logits)[left.index(i)]
            sel.append(i)
        out[frozenset(seq)] = out.get(frozenset(seq), 0.0) + p
    return out


def empirical_sets(draw, n_draws: int = DRAWS) -> dict[frozenset, float]:
    counts: dict[frozenset, int] = {}
    for _ in range(n_draws):
        key = frozenset(draw().tolist())
        counts[key] = counts.get(key, 0) + 1
    return {k: v / n_draws for k, v in counts.items()}


def total_variation(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def conditional_poisson_sets(s: np.ndarray, b: int) -> dict[frozenset, float]:
    """The *other* natural target, P(set) ∝ prod exp(s_i): the test must tell them apart."""
    sets = [frozenset(c) for c in itertools.combinations(range(len(s)), b)]
    w = np.array([math.exp(sum(s[i] for i in c)) for c in sets])
    return dict(zip(sets, w / w.sum(), strict=True))


S_VEC = np.array([2.0, 1.2, 0.5, 0.0, -0.7, -1.5])


def test_per_example_matches_exact_plackett_luce():
    gen = torch.Generator().manual_seed(1)
    scores = torch.tensor(S_VEC, dtype=torch.float32)
    emp = empirical_sets(lambda: sample_per_example(scores, 3, generator=gen))
    target = plackett_luce_sets(S_VEC, 3)
    assert total_variation(emp, target) < 0.03
    # The test has power: the conditional-Poisson distribution is measurably different.
    other = conditional_poisson_sets(S_VEC, 3)
    assert total_variation(target, other) > 0.06
    assert total_variation(emp, other) > 0.04


def test_per_example_temperature_scales_logits():
    gen = torch.Generator().manual_seed(2)
    scores = torch.tensor(S_VEC, dtype=torch.float32)
    emp = empirical_sets(lambda: sample_per_example(scores, 2, temperature=2.5, generator=gen))
    assert total_variation(emp, plackett_luce_sets(S_VEC / 2.5, 2)) < 0.03
    assert total_variation(emp, plackett_luce_sets(S_VEC, 2)) > 0.05


def test_temperature_limits_are_greedy_and_uniform():
    scores = torch.tensor(S_VEC, dtype=torch.float32)
    assert sample_per_example(scores, 3, temperature=0.0).tolist() == [0, 1, 2]
    gen = torch.Generator().manual_seed(3)
    emp = empirical_sets(lambda: sample_per_example(scores, 2, temperature=math.inf, generator=gen))
    assert total_variation(emp, plackett_luce_sets(np.zeros(6), 2)) < 0.03


def test_joint_sampler_with_single_row_chunks_matches_exact_sequential_law():
    rng = np.random.default_rng(4)
    S = rng.normal(0, 0.8, size=(5, 5))
    St = torch.tensor(S, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    emp = empirical_sets(lambda: joint_sample(St, 3, n_chunks=3, generator=gen))
    target = sequential_joint_sets(S, 3)
    assert total_variation(emp, target) < 0.03
    # Ignoring the off-diagonal terms would be a different law.
    assert total_variation(emp, plackett_luce_sets(np.diag(S), 3)) > 0.05


def test_joint_sampler_on_diagonal_scores_reduces_to_per_example():
    gen = torch.Generator().manual_seed(6)
    S = torch.diag(torch.tensor(S_VEC))
    emp = empirical_sets(lambda: joint_sample(S, 4, n_chunks=2, generator=gen))
    assert total_variation(emp, plackett_luce_sets(S_VEC, 4)) < 0.03


def test_uniform_first_chunk():
    # A diagonal that strongly prefers row 0; with a uniform first chunk of 1 and nothing
    # else, every row is equally likely to be picked.
    S = torch.diag(torch.tensor([8.0, 0, 0, 0]))
    gen = torch.Generator().manual_seed(7)
    counts = np.zeros(4)
    for _ in range(4000):
        counts[joint_sample(S, 1, n_chunks=1, first_chunk="uniform", generator=gen)[0]] += 1
    assert np.all(np.abs(counts / 4000 - 0.25) < 0.03)
    soft = [int(joint_sample(S, 1, generator=gen)[0]) for _ in range(200)]
    assert soft.count(0) > 190


def _greedy_from_scratch(S: np.ndarray, b: int) -> list[int]:
    sel: list[int] = []
    for _ in range(b):
        logits = np.array(
            [
                -np.inf if k in sel else S[k, k] + S[k, sel].sum() + S[sel, k].sum()
                for k in range(S.shape[0])
            ]
        )
        sel.append(int(np.argmax(logits)))
    return sel


def test_incremental_gain_equals_recomputation():
    rng = np.random.default_rng(8)
    S = rng.normal(size=(60, 60))
    rows = joint_sample(torch.tensor(S), 25, n_chunks=25, temperature=0.0)
    assert rows.tolist() == _greedy_from_scratch(S, 25)


def _two_tower(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.8 * torch.randn(n, d, generator=g), dim=1)
    return x, y


def test_pairwise_selection_beats_random_on_joint_learnability():
    x_l, y_l = _two_tower(64, 8, 0)
    x_r, y_r = _two_tower(64, 8, 1)
    learner = sigmoid_pair_losses(x_l, y_l, temperature=10.0, bias=-5.0)
    reference = sigmoid_pair_losses(x_r, y_r, temperature=10.0, bias=-5.0)
    S = jest_scores(learner, reference)
    b = batch_size_for(64, 0.75)
    gen = torch.Generator().manual_seed(9)
    jest = torch.stack(
        [joint_learnability(S, joint_sample(S, b, generator=gen)) for _ in range(200)]
    )
    rand = torch.stack(
        [joint_learnability(S, torch.randperm(64, generator=gen)[:b]) for _ in range(200)]
    )
    gap = (jest.mean() - rand.mean()) / rand.std()
    assert gap > 2.0, f"JEST {jest.mean():.2f} vs random {rand.mean():.2f} (gap {gap:.2f} sd)"


def test_large_and_half_precision_scores_stay_finite_and_distinct():
    rng = np.random.default_rng(10)
    big = torch.tensor(rng.normal(0, 1e6, size=(40, 40)), dtype=torch.float32)
    rows = joint_sample(big, 20, n_chunks=4, generator=torch.Generator().manual_seed(0))
    assert len(set(rows.tolist())) == 20
    half = torch.tensor(rng.normal(size=(40, 40)), dtype=torch.float16)
    rows = joint_sample(half, 20, generator=torch.Generator().manual_seed(0))
    assert len(set(rows.tolist())) == 20 and rows.dtype == torch.int64


def test_batch_size_and_chunks():
    assert batch_size_for(320, 0.9) == 32  # 320 * 0.1 rounds just below 32 in floating point
    assert batch_size_for(160, 0.8) == 32
    assert chunk_sizes(32, 16) == [2] * 16
    assert chunk_sizes(10, 16) == [1] * 10
    assert chunk_sizes(35, 16) == [3, 3, 3] + [2] * 13 and sum(chunk_sizes(35, 16)) == 35
    for f in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="filter_ratio"):
            batch_size_for(100, f)
    with pytest.raises(ValueError, match="too small"):
        batch_size_for(3, 0.8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="square"):
        joint_sample(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="smaller than the batch"):
        joint_sample(torch.zeros(4, 4), 5)
    with pytest.raises(ValueError, match="1-D"):
        sample_per_example(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="temperature"):
        sample_per_example(torch.zeros(4), 2, temperature=-1.0)
    with pytest.raises(TypeError, match="floating"):
        joint_sample(torch.zeros(3, 3, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="mode"):
        jest_scores(torch.zeros(3), torch.zeros(3), "best")
    with pytest.raises(ValueError, match="shape"):
        jest_scores(torch.zeros(3), torch.zeros(4))


def test_masked_rows_are_never_drawn():
    logits = torch.tensor([0.0, -math.inf, 1.0, -math.inf, 2.0])
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        assert set(gumbel_top_k_torch(logits, 3, generator=gen).tolist()) == {0, 2, 4}


def test_frozen_pair_losses_equal_the_siglip_loss():
    x, y = _two_tower(50, 8, 3)
    expected = sigmoid_pair_losses(x, y, temperature=7.0, bias=-3.0)
    torch.testing.assert_close(frozen_pair_losses(x, y, temperature=7.0, bias=-3.0), expected)
    with pytest.raises(ValueError, match="equal shapes"):
        frozen_pair_losses(x, y[:10], temperature=1.0, bias=0.0)
