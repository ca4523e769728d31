"""Per-example losses agree with their definitions; bad shapes and reduced losses are refused."""

import math

import pytest
import torch
import torch.nn.functional as F

from winnow.selection.losses import (
    as_per_example,
    per_example_cross_entropy,
    per_example_mse,
    sequence_loss,
    sigmoid_pair_losses,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_one_example_at_a_time(gen, smoothing):
    logits = torch.randn(6, 5, generator=gen)
    y = torch.randint(0, 5, (6,), generator=gen)
    got = per_example_cross_entropy(logits, y, label_smoothing=smoothing)
    assert got.shape == (6,)
    for i in range(6):
        one = F.cross_entropy(logits[i : i + 1], y[i : i + 1], label_smoothing=smoothing)
        torch.testing.assert_close(got[i], one)
    # The mean of per-example losses is the usual batch loss.
    torch.testing.assert_close(got.mean(), F.cross_entropy(logits, y, label_smoothing=smoothing))


def test_cross_entropy_by_hand_with_smoothing():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    eps = 0.3
    expected = -((1 - eps) * logp[0] + eps * logp.mean())
    got = per_example_cross_entropy(logits, torch.tensor([0]), label_smoothing=eps)
    torch.testing.assert_close(got[0], expected)


def test_sequence_loss_masks_padding(gen):
    logits = torch.randn(3, 4, 7, generator=gen)
    y = torch.randint(0, 7, (3, 4), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    token = F.cross_entropy(logits.reshape(12, 7), y.reshape(12), reduction="none").reshape(3, 4)
    mean = sequence_loss(logits, y, mask)
    torch.testing.assert_close(mean[0], token[0].mean())
    torch.testing.assert_close(mean[1], token[1, :2].mean())
    assert mean[2] == 0.0
    total = sequence_loss(logits, y, mask, reduce="sum")
    torch.testing.assert_close(total[1], token[1, :2].sum())
    # Padding given as ignore_index is equivalent to a mask.
    y_pad = y.masked_fill(~mask, -100)
    torch.testing.assert_close(sequence_loss(logits, y_pad), mean)


def test_sequence_loss_padding_values_do_not_matter(gen):
    logits = torch.randn(2, 5, 4, generator=gen, requires_grad=True)
    y = torch.randint(0, 4, (2, 5), generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 3:] = False
    a = sequence_loss(logits, y, mask)
    other = logits.detach().clone()
    other[:, 3:] = 100.0
    torch.testing.assert_close(sequence_loss(other, y, mask), a.detach())
    a.sum().backward()
    assert torch.all(logits.grad[:, 3:] == 0)


def test_mse_per_example(gen):
    out = torch.randn(4, 2, 3, generator=gen)
    tgt = torch.randn(4, 2, 3, generator=gen)
    got = per_example_mse(out, tgt)
    torch.testing.assert_close(got, ((out - tgt) ** 2).mean(dim=(1, 2)))
    torch.testing.assert_close(
        per_example_mse(out[:, 0, 0], tgt[:, 0, 0]), (out - tgt)[:, 0, 0] ** 2
    )


def test_sigmoid_pair_losses_formula(gen):
    x = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    y = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    t, b = 10.0, -10.0
    a = sigmoid_pair_losses(x, y, temperature=t, bias=b)
    assert a.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            expected = math.log1p(math.exp(-z * (t * float(x[i] @ y[j]) + b)))
            assert a[i, j].item() == pytest.approx(expected, rel=1e-5)
    # Extreme logits stay finite (log-sigmoid, not log(1 + exp)).
    big = sigmoid_pair_losses(x, y, temperature=1e4, bias=0.0)
    assert torch.isfinite(big).all()
    # normalize=True equals normalising first.
    raw_x, raw_y = 3 * x, 0.5 * y
    torch.testing.assert_close(
        sigmoid_pair_losses(raw_x, raw_y, temperature=t, bias=b, normalize=True), a
    )


def test_as_per_example_passes_vectors_and_refuses_scalars(gen):
    logits = torch.randn(5, 3, generator=gen)
    y = torch.randint(0, 3, (5,), generator=gen)
    ok = as_per_example(torch.nn.CrossEntropyLoss(reduction="none"))
    assert ok(logits, y).shape == (5,)
    with pytest.raises(ValueError, match="reduction='mean'"):
        as_per_example(torch.nn.CrossEntropyLoss())
    scalar = as_per_example(lambda o, t: F.cross_entropy(o, t))
    with pytest.raises(ValueError, match=r"scalar .* shape \[5\]"):
        scalar(logits, y)
    wrong = as_per_example(lambda o, t: F.cross_entropy(o, t, reduction="none")[:4])
    with pytest.raises(ValueError, match=r"\(4,\).* \[5\]"):
        wrong(logits, y)
    with pytest.raises(TypeError, match="callable"):
        as_per_example(3)


def _ints(*shape):
    return torch.zeros(*shape, dtype=torch.long)


ce, rn = per_example_cross_entropy, torch.randn


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ce(rn(3), _ints(3)), ValueError, r"\[B, C\]"),
        (lambda: ce(rn(3, 2), _ints(4)), ValueError, "B=3"),
        (lambda: ce(rn(3, 2), torch.zeros(3, dtype=torch.bool)), TypeError, "bool"),
        (lambda: ce(rn(3, 2), _ints(3), label_smoothing=2.0), ValueError, "2.0"),
        (lambda: sequence_loss(rn(2, 3, 4), _ints(2, 4)), ValueError, r"\(2, 3\)"),
        (lambda: sequence_loss(rn(2, 3, 4), _ints(2, 3), rn(2, 2)), ValueError, "mask"),
        (lambda: sequence_loss(rn(2, 3, 4), _ints(2, 3), reduce="max"), ValueError, "max"),
        (lambda: per_example_mse(rn(3, 2), rn(3)), ValueError, r"\(3, 2\) and \(3,\)"),
        (
            lambda: sigmoid_pair_losses(rn(3, 2), rn(4, 2), temperature=1.0, bias=0.0),
            ValueError,
            r"\(3, 2\) and \(4, 2\)",
        ),
        (lambda: per_example_mse([1.0], rn(1)), TypeError, "list"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
