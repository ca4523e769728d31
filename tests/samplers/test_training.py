"""Short real training runs on MNIST-1D (SmallCNN): each sampler against full data.

Stated tolerances (test accuracy, 1000 examples, 30 epochs, one fixed seed):
- InfoBatch r=0.5, delta=0.875: within 2.5 points of full data (the paper's "lossless"),
  saving >= 20 % of backward examples;
- RS2 r=0.5 without replacement, 30 rounds, compressed cosine: half the backward examples,
  within 10 points (it trains on half the steps; docs/rs2.md);
- static pruning keeping the hardest 70 % by the full model's loss (alpha=0.2 random mix):
  within 6 points, saving 30 %.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from winnow.pipelines.toydata import SmallCNN
from winnow.samplers import (
    IndexedDataset,
    InfoBatchSampler,
    PrunedSampler,
    RS2Sampler,
    cosine_lambda,
)

EPOCHS, BATCH, LR = 30, 128, 1e-2


@pytest.fixture
def one_thread():
    # Two intra-op threads on a shared 2-core box can make small convolutions 50x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(data, sampler=None, total_steps=None):
    """Returns (test accuracy, examples through backward, trained model)."""
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN()
        loader = DataLoader(
            IndexedDataset(TensorDataset(x, y)),
            batch_size=BATCH,
            sampler=sampler,
            shuffle=sampler is None,
        )
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        total = total_steps or EPOCHS * len(loader)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_lambda(total, lr_max=LR, lr_min=LR / 100)
        )
        backward = 0
        for epoch in range(EPOCHS):
            if sampler is not None:
                sampler.set_epoch(epoch)
            for ids, (xb, yb) in loader:
                losses = F.cross_entropy(model(xb), yb, reduction="none")
                loss = losses.mean() if sampler is None else sampler.reweight(ids, losses)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                backward += len(ids)
    with torch.no_grad():
        pred = model(torch.from_numpy(data["x_test"])).argmax(1).numpy()
    return float((pred == data["y_test"]).mean()), backward, model


@pytest.fixture(scope="module")
def full_run(mnist1d_small):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(mnist1d_small)
    finally:
        torch.set_num_threads(before)


def test_infobatch_is_lossless_and_saves_backward_passes(
    mnist1d_small, full_run, one_thread, record_property
):
    full_acc, full_backward, _ = full_run
    n = len(mnist1d_small["y"])
    sampler = InfoBatchSampler(n, EPOCHS, prune_ratio=0.5, delta=0.875, seed=0)
    acc, backward, _ = train(mnist1d_small, sampler, total_steps=sampler.total_steps(BATCH))
    saved = 1 - backward / full_backward
    record_property("infobatch_accuracy", acc)
    record_property("infobatch_backward_saved", saved)
    assert full_acc > 0.8
    assert acc >= full_acc - 0.025, (acc, full_acc)
    assert saved >= 0.2
    assert saved == pytest.approx(sampler.saved_fraction())


def test_rs2_trains_on_half_the_examples(mnist1d_small, full_run, one_thread, record_property):
    full_acc, full_backward, _ = full_run
    sampler = RS2Sampler(len(mnist1d_small["y"]), 0.5, seed=0)
    acc, backward, _ = train(
        mnist1d_small, sampler, total_steps=sampler.total_steps(BATCH, EPOCHS, drop_last=False)
    )
    saved = 1 - backward / full_backward
    record_property("rs2_accuracy", acc)
    record_property("rs2_backward_saved", saved)
    assert saved == pytest.approx(0.5)
    assert acc >= full_acc - 0.10, (acc, full_acc)


def test_static_pruning_by_loss(mnist1d_small, full_run, one_thread, record_property):
    full_acc, full_backward, model = full_run
    with torch.no_grad():
        x, y = torch.from_numpy(mnist1d_small["x"]), torch.from_numpy(mnist1d_small["y"])
        scores = F.cross_entropy(model(x), y, reduction="none").numpy()
    sampler = PrunedSampler(scores, 0.7, largest=True, alpha=0.2, seed=0)
    acc, backward, _ = train(mnist1d_small, sampler)
    saved = 1 - backward / full_backward
    record_property("pruned_accuracy", acc)
    record_property("pruned_backward_saved", saved)
    assert saved == pytest.approx(0.3, abs=0.001)
    assert acc >= full_acc - 0.06, (acc, full_acc)
    assert np.isin(np.argsort(scores)[-50:], sampler.kept_ids).all()  # hardest are kept
