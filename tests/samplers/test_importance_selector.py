"""ImportanceSelector: the tau gate, last-layer scores, errors, resume."""

import math

import pytest
import torch

from winnow.samplers.importance import ImportanceSelector
from winnow.selection import last_layer_bound


def test_importance_gate_stays_uniform_until_tau_exceeds_threshold():
    sel = ImportanceSelector(batch_size=8, seed=0)
    flat = torch.ones(24)
    rows, weights = sel.select(torch.arange(24), flat)
    assert len(set(rows.tolist())) == 8 and weights.tolist() == [1.0] * 8  # uniform w/o replacement
    assert sel.tau == pytest.approx(1.0)
    spiky = torch.zeros(24)
    spiky[:2] = 1.0  # tau = sqrt(12) ≈ 3.46 > tau_th = (24 + 24) / 24 = 2
    opened_at = None
    for step in range(40):
        rows, weights = sel.select(torch.arange(24), spiky)
        if set(rows.tolist()) <= {0, 1}:
            opened_at = step
            break
    assert opened_at is not None and opened_at > 2  # the EMA needs a few steps to cross
    assert sel.tau > 2.0
    torch.testing.assert_close(weights, torch.full((8,), 1.0 / (24 * 0.5)))


def test_importance_select_logits_and_errors():
    sel = ImportanceSelector(batch_size=4, tau_th=0.0, seed=1)
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [5.0, 5.0], [0.0, 3.0]])
    targets = torch.tensor([0, 1, 1, 0, 1])
    rows, weights = sel.select_logits(torch.arange(5), logits, targets)
    assert set(rows.tolist()) <= {2, 3, 4}  # rows 0 and 1 are fitted: bound ~ 0
    assert torch.all(weights > 0) and torch.isfinite(weights).all()
    with pytest.raises(ValueError, match="smaller than the batch of 4"):
        sel.select(None, torch.ones(3))
    with pytest.raises(ValueError, match="momentum"):
        ImportanceSelector(4, momentum=1.0)
    state = sel.state_dict()
    again = ImportanceSelector(batch_size=4, tau_th=0.0, seed=1)
    again.load_state_dict(state)
    assert again.tau == pytest.approx(sel.tau) and not math.isnan(again.tau)
    assert (
        again.select(None, torch.arange(5.0))[0].tolist()
        == sel.select(None, torch.arange(5.0))[0].tolist()
    )


def test_closed_gate_needs_no_scoring_forward_and_learns_tau_from_training_rows():
    """Upstream's loop: while the gate is closed, train on a plain uniform batch (no forward
    over the super-batch) and estimate tau from the rows trained on; score only once open."""
    sel = ImportanceSelector(keep=1 / 3, seed=0)
    assert not sel.sampling  # tau starts at 1 < (B + 3b) / (3b) = 2
    rows, weights = sel.uniform(24)
    assert len(set(rows.tolist())) == 8 and weights.tolist() == [1.0] * 8
    spiky = torch.zeros(8)
    spiky[0] = 1.0  # tau_now = 1 / sqrt(1 - 0.875) = 2.83 on the 8 training rows
    opened = None
    for step in range(20):
        sel.observe(spiky)
        if sel.sampling:
            opened = step
            break
    assert opened == 7  # 2.83 - 1.83 * 0.9^8 > 2 first at the 8th observation
    assert sel.tau == pytest.approx(2.8284 - 1.8284 * 0.9**8, rel=1e-3)
    with pytest.raises(ValueError, match="observe"):
        sel.observe(torch.ones(8, 2))


def test_training_loop_scores_the_super_batch_only_while_the_gate_is_open():
    torch.manual_seed(0)
    x = torch.randn(960, 5)
    y = (x[:, 0] > 1.6).long()  # rare positives: skewed gradient bounds once the model learns
    model = torch.nn.Linear(5, 2)
    forwards = []
    model.register_forward_hook(lambda m, inp, out: forwards.append(inp[0].shape[0]))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sel = ImportanceSelector(keep=1 / 3, seed=1)
    gates = []
    for _ in range(80):
        ids = torch.randint(0, 960, (48,))
        xb, yb = x[ids], y[ids]
        gates.append(sel.sampling)
        if gates[-1]:
            with torch.no_grad():
                scores = last_layer_bound(model(xb), yb)
            rows, w = sel.select(ids, scores)
        else:
            rows, w = sel.uniform(len(ids))
        logits = model(xb[rows])
        if not gates[-1]:
            sel.observe(last_layer_bound(logits.detach(), yb[rows]))
        loss = (w * torch.nn.functional.cross_entropy(logits, yb[rows], reduction="none")).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not gates[0] and any(gates)  # closed at first, opened once the bounds skewed
    scoring = [n for n in forwards if n == 48]
    assert len(scoring) == sum(gates)  # a super-batch forward exactly on the open steps
    assert len(forwards) == 80 + sum(gates)
