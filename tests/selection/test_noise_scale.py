"""Noise-scale estimators: unbiased on synthetic gradients, consistent with each other."""

import io
import math

import numpy as np
import pytest
import torch

from winnow.pipelines.toydata import MLP
from winnow.selection.gradnorm import per_example_grad_norms
from winnow.selection.losses import per_example_cross_entropy
from winnow.selection.noise_scale import (
    NoiseScaleEstimate,
    NoiseScaleTracker,
    grad_sq_norm,
    noise_scale_from_per_example,
    noise_scale_two_batches,
)


def _synthetic(rng, batches, b, d=20, sigma=2.0):
    g_true = np.linspace(0.5, 1.5, d)
    per_example = g_true + sigma * rng.standard_normal((batches, b, d))
    return g_true, per_example, d * sigma**2


def test_per_example_estimator_is_unbiased():
    rng = np.random.default_rng(0)
    g_true, grads, trace_true = _synthetic(rng, 3000, 16)
    est = [
        noise_scale_from_per_example(np.linalg.norm(g, axis=1), float(np.sum(g.mean(0) ** 2)))
        for g in grads
    ]
    assert np.mean([e.trace_cov for e in est]) == pytest.approx(trace_true, rel=0.02)
    assert np.mean([e.grad_sq for e in est]) == pytest.approx(np.sum(g_true**2), rel=0.05)


def test_two_batch_estimator_is_unbiased():
    rng = np.random.default_rng(1)
    g_true, grads, trace_true = _synthetic(rng, 3000, 32)
    est = [
        noise_scale_two_batches(
            float(np.sum(g[:4].mean(0) ** 2)), float(np.sum(g.mean(0) ** 2)), 4, 32
        )
        for g in grads
    ]
    assert np.mean([e.trace_cov for e in est]) == pytest.approx(trace_true, rel=0.03)
    assert np.mean([e.grad_sq for e in est]) == pytest.approx(np.sum(g_true**2), rel=0.05)


def test_per_example_equals_two_batch_with_b_small_one_on_a_real_model():
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    norms = per_example_grad_norms(model, per_example_cross_entropy, x, y)
    per_example_cross_entropy(model(x), y).mean().backward()
    g_mean_sq = grad_sq_norm(model.parameters())
    a = noise_scale_from_per_example(norms, g_mean_sq)
    b = noise_scale_two_batches(float((norms.double() ** 2).mean()), g_mean_sq, 1, 64)
    assert a.trace_cov == pytest.approx(b.trace_cov, rel=1e-9)
    assert a.grad_sq == pytest.approx(b.grad_sq, rel=1e-9)
    assert a.trace_cov > 0 and a.b_simple > 0


def test_tracker_keeps_separate_bias_corrected_emas():
    tr = NoiseScaleTracker(beta=0.9)
    assert math.isnan(tr.b_simple)
    tr.update(NoiseScaleEstimate(grad_sq=2.0, trace_cov=10.0))
    assert tr.b_simple == pytest.approx(5.0)  # bias correction: no pull towards 0
    tr.update(NoiseScaleEstimate(grad_sq=-1.0, trace_cov=30.0))
    ema_g = (0.9 * 0.1 * 2.0 + 0.1 * -1.0) / (1 - 0.81)
    ema_t = (0.9 * 0.1 * 10.0 + 0.1 * 30.0) / (1 - 0.81)
    assert tr.b_simple == pytest.approx(ema_t / ema_g)  # ratio of EMAs, not EMA of ratios
    tr.update(NoiseScaleEstimate(grad_sq=math.nan, trace_cov=1.0))
    assert tr.skipped == 1 and tr.steps == 2
    buffer = io.BytesIO()
    torch.save(tr.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()))  # torch's defaults: weights_only
    other = NoiseScaleTracker(beta=0.9)
    other.load_state_dict(state)
    assert other.b_simple == tr.b_simple
    with pytest.raises(ValueError, match="beta: stored 0.9, here 0.99"):
        NoiseScaleTracker().load_state_dict(state)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: noise_scale_from_per_example(np.ones(1), 1.0), "B >= 2"),
        (lambda: noise_scale_from_per_example(np.array([1.0, np.nan]), 1.0), "non-finite"),
        (lambda: noise_scale_from_per_example(np.ones(3), -1.0), "mean_grad_sq"),
        (lambda: noise_scale_two_batches(1.0, 0.5, 8, 8), "b_small=8, b_big=8"),
        (lambda: NoiseScaleTracker(beta=1.0), "beta"),
        (lambda: grad_sq_norm(MLP().parameters()), "backward"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
