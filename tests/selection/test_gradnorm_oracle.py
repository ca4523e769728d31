"""Per-example gradient norms against the micro-batch oracle: one ``torch.autograd.grad`` of
each example's loss alone. The models here use a parameter in ways the per-layer rules do not
see (tied weights, functional reuse), need the fallback for layers vmap cannot batch (RNNs), or
call a layer with a keyword input."""

import pytest
import torch
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
