"""ImportanceSelector: the tau gate, last-layer scores, errors, resume."""

import math

import pytest
import torch

from winnow.samplers.importance import ImportanceSelector


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
