"""Per-example gradient norms against the micro-batch oracle: one ``torch.autograd.grad`` of
each example's loss alone. The models here use a parameter in ways the per-layer rules do not
see (tied weights, functional reuse), need the fallback for layers vmap cannot batch (RNNs), or
call a layer with a keyword input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from winnow.selection.gradnorm import per_example_grad_norms
from winnow.selection.losses import per_example_cross_entropy, sequence_loss

# Tolerances of the brief: float32 to ~1e-5 relative, float64 to 1e-9.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def ce(outputs, targets):
    return per_example_cross_entropy(outputs, targets)


def lm_sum(outputs, targets):
    return sequence_loss(outputs, targets, reduce="sum")


def oracle(model, loss_fn, inputs, targets):
    """``||grad l_i||`` from one backward per example, each on that example alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for i in range(inputs.shape[0]):
        loss = loss_fn(model(inputs[i : i + 1]), targets[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norms.append(torch.sqrt(sum(g.square().sum() for g in grads if g is not None)))
    return torch.stack(norms)


def assert_matches_oracle(model, loss_fn, inputs, targets, dtype, **kwargs):
    got = per_example_grad_norms(model, loss_fn, inputs, targets, **kwargs)
    ref = oracle(model, loss_fn, inputs, targets)
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref, rtol=RTOL[dtype], atol=0.0)


class TiedLM(nn.Module):
    """GPT-style weight tying: the output logits reuse the token embedding, ``h @ emb.weight.T``."""

    def __init__(self, vocab=30, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.ln = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, ids):
        h = self.ln(self.emb(ids))
        h = h + torch.tanh(self.mlp(h))
        return h @ self.emb.weight.T


class FunctionalReuse(nn.Module):
    """A Linear's weight used again through ``F.linear`` outside the layer's own call."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.l(x))
        return self.out(torch.tanh(F.linear(h, self.l.weight)))


class Recurrent(nn.Module):
    """A batch-first RNN/GRU/LSTM with a Linear head on the last step."""

    def __init__(self, cell, dtype):
        super().__init__()
        self.rnn = cell(4, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 3)
        self.to(dtype)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(h[:, -1])


class KeywordInput(nn.Module):
    """Hooked layers called as ``layer(input=x)``."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 8)
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.l(input=x))
        return self.out(torch.tanh(self.conv(input=h[:, None])).flatten(1))


@DTYPES
def test_embedding_tied_to_the_output_logits(dtype):
    torch.manual_seed(0)
    model = TiedLM().to(dtype)
    ids, targets = torch.randint(0, 30, (6, 7)), torch.randint(0, 30, (6, 7))
    assert_matches_oracle(model, lm_sum, ids, targets, dtype)


@DTYPES
def test_weight_reused_through_functional_linear(dtype):
    torch.manual_seed(0)
    model = FunctionalReuse().to(dtype)
    x, y = torch.randn(6, 6, dtype=dtype), torch.randint(0, 3, (6,))
    assert_matches_oracle(model, ce, x, y, dtype)


def _tied_batch():
    return torch.randint(0, 30, (4, 5)), torch.randint(0, 30, (4, 5))


def _vector_batch():
    return torch.randn(4, 6), torch.randint(0, 3, (4,))


@pytest.mark.parametrize(
    ("make", "batch", "loss_fn", "name"),
    [
        (TiedLM, _tied_batch, lm_sum, "'emb.weight'"),
        (FunctionalReuse, _vector_batch, ce, "'l.weight'"),
    ],
    ids=["tied", "functional"],
)
def test_ghost_refuses_a_parameter_used_outside_its_layer(make, batch, loss_fn, name):
    with pytest.raises(ValueError, match=f"{name}: used 1 time.*outside its"):
        per_example_grad_norms(make(), loss_fn, *batch(), method="ghost")


def test_untracked_use_sends_only_that_parameter_to_the_fallback():
    """The other parameters of the tied model keep their ghost norms: per-layer values for
    them match the vmap reference, and the tied weight matches too."""
    torch.manual_seed(0)
    model = TiedLM().double()
    ids, targets = torch.randint(0, 30, (5, 7)), torch.randint(0, 30, (5, 7))
    _, layers = per_example_grad_norms(model, lm_sum, ids, targets, per_layer=True)
    _, ref = per_example_grad_norms(model, lm_sum, ids, targets, per_layer=True, method="vmap")
    for name in ref:
        torch.testing.assert_close(layers[name], ref[name], rtol=1e-9, atol=0.0)


class _Square(torch.autograd.Function):
    """Runs its forward under no_grad, yet sends gradient to its input."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w):
        return w * w

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        return 2 * ctx.saved_tensors[0] * grad


class HiddenUse(nn.Module):
    """``l.weight`` reaches the output a second time by the way ``how`` names."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.l = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.l(x))
        w = self.l.weight
        if self.how == "index":
            h = h * w[0]
        elif self.how == "autograd_function":
            h = h @ _Square.apply(w)
        elif self.how == "aten":
            h = torch.ops.aten.mm(h, w)
        elif self.how == "inplace_copy":
            buf = torch.zeros(6, 6, dtype=h.dtype)
            buf[:3] = w[:3]
            h = h @ buf
        elif self.how == "list":
            h = torch.cat([h, w[:1].expand_as(h)], 1)[:, ::2]
        return self.out(h)


@pytest.mark.parametrize("how", ["index", "autograd_function", "aten", "inplace_copy", "list"])
def test_other_untracked_uses_are_caught(how):
    torch.manual_seed(0)
    model = HiddenUse(how).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    assert_matches_oracle(model, ce, x, y, torch.float64)
    with pytest.raises(ValueError, match="'l.weight'.*outside"):
        per_example_grad_norms(model, ce, x, y, method="ghost")


class DeadCallLiveReuse(nn.Module):
    """The layer's own output never reaches the loss, its weight does through ``F.linear``."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        self.l(x)
        return self.out(torch.tanh(F.linear(x, self.l.weight)))


def test_a_dead_layer_call_does_not_hide_a_live_reuse():
    torch.manual_seed(0)
    model = DeadCallLiveReuse().double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    assert_matches_oracle(model, ce, x, y, torch.float64)
    _, layers = per_example_grad_norms(model, ce, x, y, per_layer=True)
    assert torch.all(layers["l.bias"] == 0)  # no path to the loss: an exact zero


def test_parameter_used_in_the_loss_function():
    torch.manual_seed(0)
    model = FunctionalReuse().double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))

    def regularised(outputs, targets):
        return ce(outputs, targets) + 0.1 * model.out.weight.square().sum()

    assert_matches_oracle(model, regularised, x, y, torch.float64)


class GradientFreeReads(nn.Module):
    """Reads of ``l.weight`` that cannot pass gradient: metadata, ``detach``, ``no_grad``
    statistics. They must not cost the ghost norm."""

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 3)

    def forward(self, x):
        w = self.l.weight
        assert w.shape == (3, 6) and w.dtype == x.dtype and w.requires_grad
        scale = w.detach().abs().max()
        return self.l(x) / scale


def test_reads_that_cannot_pass_gradient_keep_the_ghost_norm():
    torch.manual_seed(0)
    model = GradientFreeReads().double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    assert_matches_oracle(model, ce, x, y, torch.float64, method="ghost")


@pytest.mark.parametrize(
    ("cell", "dtype"),
    [
        (nn.GRU, torch.float32),
        (nn.RNN, torch.float32),
        (nn.LSTM, torch.float32),
        (nn.LSTM, torch.float64),
        (nn.GRU, torch.float64),
    ],
    ids=["GRU-f32", "RNN-f32", "LSTM-f32", "LSTM-f64", "GRU-f64"],
)
def test_recurrent_layers_are_exact(cell, dtype):
    torch.manual_seed(0)
    model = Recurrent(cell, dtype)
    x, y = torch.randn(5, 4, 4, dtype=dtype), torch.randint(0, 3, (5,))
    assert_matches_oracle(model, ce, x, y, dtype)
    assert_matches_oracle(model, ce, x, y, dtype, method="vmap", chunk_size=2)


@DTYPES
def test_layer_called_with_a_keyword_input(dtype):
    torch.manual_seed(0)
    model = KeywordInput().to(dtype)
    x, y = torch.randn(5, 6, dtype=dtype), torch.randint(0, 3, (5,))
    assert_matches_oracle(model, ce, x, y, dtype)
    per_example_grad_norms(model, ce, x, y, method="ghost")  # keyword calls keep ghost norms
