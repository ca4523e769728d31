"""Scores from logits, learnability aligned by id, and the forgetting counter."""

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from winnow.selection.gradnorm import per_example_grad_norms
from winnow.selection.losses import per_example_cross_entropy
from winnow.selection.scores import (
    ForgettingTracker,
    el2n,
    entropy,
    last_layer_grad_norm,
    learnability,
    margin,
)


def test_el2n_by_hand_and_equals_the_logit_gradient_norm():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    expected0 = math.sqrt((p[0, 0] - 1) ** 2 + p[0, 1] ** 2 + p[0, 2] ** 2)
    got = el2n(logits, y)
    assert got[0].item() == pytest.approx(expected0)
    assert got[1].item() == pytest.approx(math.sqrt(2 / 9 + (2 / 3) ** 2))
    # EL2N is the norm of d CE / d logits.
    z = logits.clone().requires_grad_(True)
    per_example_cross_entropy(z, y).sum().backward()
    torch.testing.assert_close(got, z.grad.norm(dim=1))


def test_last_layer_grad_norm_is_exact_for_a_linear_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(7, 4)
    h = torch.randn(9, 7)
    y = torch.randint(0, 4, (9,))
    exact = per_example_grad_norms(head, per_example_cross_entropy, h, y)
    torch.testing.assert_close(last_layer_grad_norm(head(h), y, h), exact, rtol=1e-5, atol=1e-6)


def test_entropy_and_margin():
    uniform = torch.zeros(1, 4)
    assert entropy(uniform).item() == pytest.approx(math.log(4))
    sure = torch.tensor([[50.0, 0.0, 0.0, 0.0]])
    assert entropy(sure).item() == pytest.approx(0.0, abs=1e-6)
    assert margin(sure).item() == pytest.approx(1.0)
    assert margin(uniform).item() == pytest.approx(0.0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    got = margin(logits, torch.tensor([0, 0]))
    torch.testing.assert_close(got, torch.tensor([0.2, -0.5]))


def test_learnability_is_aligned_by_id_not_position():
    reference = np.full(10, np.nan)
    reference[[2, 5, 7]] = [1.0, 2.0, 3.0]
    ids = np.array([7, 2, 5])
    losses = torch.tensor([10.0, 20.0, 30.0])
    got = learnability(ids, losses, reference)
    torch.testing.assert_close(got, torch.tensor([7.0, 19.0, 28.0]))
    # numpy learner losses, torch reference and torch ids
    got_np = learnability(torch.tensor(ids), np.array([1.0, 1.0, 1.0]), torch.tensor(reference))
    np.testing.assert_allclose(got_np, [-2.0, 0.0, -1.0])


def test_learnability_names_missing_and_out_of_range_ids():
    reference = np.array([1.0, np.nan, np.nan, 4.0])
    with pytest.raises(ValueError, match=r"2 of 3 ids have no reference value.*\[1, 2\]"):
        learnability(np.array([1, 2, 3]), np.zeros(3), reference)
    with pytest.raises(ValueError, match=r"1 id\(s\) outside \[0, 4\)"):
        learnability(np.array([0, 4]), np.zeros(2), reference)
    with pytest.raises(ValueError, match="length 2 .* length 3"):
        learnability(np.array([0, 3]), np.zeros(3), reference)


def test_forgetting_counts_events_between_appearances():
    tr = ForgettingTracker(5)
    tr.update(np.array([0, 1, 2]), np.array([True, False, True]))
    tr.update(np.array([0, 1, 2]), np.array([False, True, True]))
    tr.update(torch.tensor([0, 1]), torch.tensor([True, False]))
    tr.update(np.array([0]), np.array([0]))
    np.testing.assert_array_equal(tr.forgetting_counts, [2, 1, 0, 0, 0])
    scores = tr.scores()
    np.testing.assert_array_equal(scores[:3], [2, 1, 0])
    assert np.isnan(scores[3]) and np.isnan(scores[4])  # never presented


def test_forgetting_never_learned_handling():
    tr = ForgettingTracker(3)
    for _ in range(4):
        tr.update(np.array([0, 1]), np.array([False, True]))
    tr.update(np.array([1]), np.array([False]))
    np.testing.assert_array_equal(tr.never_learned, [True, False, False])
    assert tr.scores()[0] == 4  # presentations
    assert tr.scores(never_learned="max")[0] == 2  # max count (1) + 1
    assert np.isinf(tr.scores(never_learned="inf")[0])
    assert tr.scores(unseen=0.0)[2] == 0.0
    with pytest.raises(ValueError, match="'sometimes'"):
        tr.scores(never_learned="sometimes")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=60),
    st.integers(1, 7),
)
def test_forgetting_batched_update_equals_one_at_a_time(events, batch):
    ids = np.array([e[0] for e in events])
    ok = np.array([e[1] for e in events])
    batched, single = ForgettingTracker(6), ForgettingTracker(6)
    for s in range(0, len(ids), batch):
        batched.update(ids[s : s + batch], ok[s : s + batch])
    for i, c in zip(ids, ok, strict=True):
        single.update(np.array([i]), np.array([c]))
    np.testing.assert_array_equal(batched.forgetting_counts, single.forgetting_counts)
    np.testing.assert_array_equal(batched.scores(unseen=-1), single.scores(unseen=-1))


def test_forgetting_state_round_trip_and_errors():
    tr = ForgettingTracker(4)
    tr.update(np.array([0, 1]), np.array([True, True]))
    other = ForgettingTracker(4)
    buffer = io.BytesIO()
    torch.save(tr.state_dict(), buffer)
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))  # weights_only default
    tr.update(np.array([0]), np.array([False]))
    other.update(np.array([0]), np.array([False]))
    np.testing.assert_array_equal(tr.forgetting_counts, other.forgetting_counts)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        tr.update(np.array([4]), np.array([True]))
    with pytest.raises(ValueError, match="shape"):
        tr.update(np.array([0, 1]), np.array([True]))
    with pytest.raises(ValueError, match="num_examples: stored 4, here 3"):
        ForgettingTracker(3).load_state_dict(tr.state_dict())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: el2n(torch.zeros(3), torch.zeros(3).long()), ValueError, r"\[B, C\]"),
        (lambda: el2n(torch.zeros(3, 2), torch.zeros(4).long()), ValueError, "B=3"),
        (lambda: entropy(np.zeros((2, 2))), TypeError, "ndarray"),
        (lambda: margin(torch.zeros(2, 3), torch.zeros(2, 3)), TypeError, "probabilities"),
        (lambda: ForgettingTracker(0), ValueError, "got 0"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
