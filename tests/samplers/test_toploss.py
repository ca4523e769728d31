"""TopLossSelector: top-k and stochastic selection, errors, resume."""

import numpy as np
import pytest
import torch

from winnow.samplers import RhoLossSelector
from winnow.samplers.toploss import TopLossSelector


def test_top_loss_keeps_the_largest_losses():
    losses = torch.tensor([0.1, 3.0, 0.2, 2.0, 5.0, 0.0, 1.0, 0.3, 0.4, 0.5])
    rows, weights = TopLossSelector(keep=0.3).select(torch.arange(10), losses)
    assert rows.tolist() == [4, 1, 3] and weights.tolist() == [1.0, 1.0, 1.0]
    rows, _ = TopLossSelector(batch_size=2).select(None, losses)
    assert rows.tolist() == [4, 1]


def test_stochastic_top_loss_interpolates_uniform_and_greedy():
    losses = torch.linspace(0.0, 1.0, 50)
    cold = TopLossSelector(keep=0.2, beta=200.0, seed=0)
    assert sorted(cold.select(None, losses)[0].tolist()) == list(range(40, 50))
    flat = TopLossSelector(keep=0.2, beta=0.0, seed=0)
    picks = torch.cat([flat.select(None, losses)[0] for _ in range(300)])
    low_share = float((picks < 25).float().mean())
    assert 0.4 < low_share < 0.6  # uniform: half of the picks from the lower half


def test_top_loss_errors_and_resume():
    with pytest.raises(ValueError, match="keep"):
        TopLossSelector(keep=0.0)
    with pytest.raises(ValueError, match="smaller than the batch of 20"):
        TopLossSelector(batch_size=20).select(None, torch.zeros(10))
    with pytest.raises(ValueError, match="3 values for 4 ids"):
        TopLossSelector().select(torch.arange(4), torch.zeros(3))
    a = TopLossSelector(keep=0.5, beta=1.0, seed=4)
    losses = torch.rand(40, generator=torch.Generator().manual_seed(1))
    a.select(None, losses)
    state = a.state_dict()
    expected = a.select(None, losses)[0].tolist()
    b = TopLossSelector(keep=0.5, beta=1.0, seed=4)
    b.load_state_dict(state)
    assert b.select(None, losses)[0].tolist() == expected


def test_empty_super_batch_is_refused_clearly():
    for selector in (TopLossSelector(), RhoLossSelector(np.zeros(4, np.float32))):
        with pytest.raises(ValueError, match="empty super-batch"):
            selector.select(torch.zeros(0, dtype=torch.int64), torch.zeros(0))
