"""Last-layer bound, unbiased sampling with replacement, and the tau rule."""

import math

import pytest
import torch

from winnow.selection.importance import (
    last_layer_bound,
    sample_with_replacement,
    tau_threshold,
    variance_reduction,
)


def test_bound_is_the_logit_gradient_norm():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (16,), generator=g)
    losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), logits)
    expected = grad.norm(dim=1)
    torch.testing.assert_close(last_layer_bound(logits.detach(), y), expected)


def test_bound_with_features_is_the_exact_last_linear_layer_norm():
    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(7, 4)
    h = torch.randn(6, 7, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    norms = []
    for i in range(6):
        layer.zero_grad()
        torch.nn.functional.cross_entropy(layer(h[i : i + 1]), y[i : i + 1]).backward()
        sq = layer.weight.grad.square().sum() + layer.bias.grad.square().sum()
        norms.append(sq.sqrt())
    with torch.no_grad():
        got = last_layer_bound(layer(h), y, features=h)
    torch.testing.assert_close(got, torch.stack(norms), rtol=1e-5, atol=1e-6)


def test_weights_make_the_sampled_mean_unbiased():
    g = torch.Generator().manual_seed(2)
    scores = torch.tensor([5.0, 1.0, 0.5, 0.5, 3.0, 0.0, 2.0, 1.0])
    losses = torch.tensor([4.0, 1.0, 2.0, 0.1, 3.0, 9.0, 0.5, 1.5])
    # Row 5 has score 0 and is never drawn, so give it weight in the target only through
    # rows that can be drawn: the estimator is unbiased for the mean over rows with p > 0.
    target = (losses * (scores > 0)).sum() / len(losses)
    ests, plain = [], []
    for _ in range(20_000):
        rows, w = sample_with_replacement(scores, 4, generator=g)
        ests.append((w * losses[rows]).mean())
        plain.append(losses[rows].mean())
    ests = torch.stack(ests)
    stderr = ests.std() / math.sqrt(len(ests))
    assert abs(ests.mean() - target) < 4 * stderr
    assert abs(torch.stack(plain).mean() - target) > 10 * stderr  # the weights matter
    rows, w = sample_with_replacement(scores, 4, generator=g)
    p = scores / scores.sum()
    torch.testing.assert_close(w, 1.0 / (len(scores) * p[rows]))


def test_zero_scores_sample_uniformly_with_unit_weights():
    g = torch.Generator().manual_seed(3)
    rows, w = sample_with_replacement(torch.zeros(10), 2000, generator=g)
    torch.testing.assert_close(w, torch.ones(2000))
    counts = torch.bincount(rows, minlength=10).float() / 2000
    assert torch.all((counts - 0.1).abs() < 0.03)


def test_tau_bounds_and_threshold():
    torch.testing.assert_close(variance_reduction(torch.ones(50)), torch.tensor(1.0))
    one_hot = torch.zeros(50)
    one_hot[3] = 1.0
    torch.testing.assert_close(variance_reduction(one_hot), torch.tensor(math.sqrt(50)))
    skew = torch.linspace(0.1, 3.0, 50)
    assert 1.0 < float(variance_reduction(skew)) < math.sqrt(50)
    assert tau_threshold(96, 32) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="batch_size"):
        tau_threshold(10, 20)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        last_layer_bound(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        last_layer_bound(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        last_layer_bound(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="features"):
        last_layer_bound(
            torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), features=torch.zeros(2, 4)
        )
    with pytest.raises(ValueError, match="1-D"):
        sample_with_replacement(torch.zeros(3, 3), 2)
