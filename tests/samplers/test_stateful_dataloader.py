"""Resume through torchdata's ``StatefulDataLoader``: a checkpoint of ``loader.state_dict()`` and
``sampler.scores.state_dict()`` taken after any batch (mid-epoch included), restored into fresh
objects, gives exactly the rest of the uninterrupted run: ids, InfoBatch weights, weighted losses,
the plans of every later epoch and the final scores, with and without worker processes.
Checkpoints round-trip through ``torch.save``/``torch.load`` with its defaults."""

import io

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from winnow.samplers import IndexedDataset, InfoBatchSampler, PrunedSampler, RS2Sampler

# torchdata 0.11 calls a deprecated torch API in StatefulDataLoader.__init__.
pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")

N, EPOCHS, BATCH = 200, 5, 16

SAMPLERS = {
    "infobatch": lambda: InfoBatchSampler(N, EPOCHS, prune_ratio=0.5, delta=0.8, seed=3),
    "rs2": lambda: RS2Sampler(N, 0.3, seed=5),
    "pruned": lambda: PrunedSampler(np.sin(np.arange(N)), 0.6, alpha=0.2, seed=2),
}


def _save(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _load(checkpoint: bytes):
    return torch.load(io.BytesIO(checkpoint))  # weights_only=True, torch's default


def loss_of(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """A deterministic stand-in for training losses, different per epoch."""
    return ((ids * 2654435761 + epoch * 97) % 1000).float() / 1000 + 0.01


def run(make, *, stop_at=None, stop_after_epoch=None, checkpoint=None, workers=0, **loader_kw):
    """The usage-example loop on a StatefulDataLoader.

    Returns ``(batches, plans, final scores)``, or ``(batches, checkpoint bytes)`` when it stops
    after batch ``stop_at`` (inside the epoch loop) or after the inner loop of epoch
    ``stop_after_epoch`` (the loader's iterator finished). A batch is ``(epoch, ids, weights,
    weighted loss)``; ``plans[e]`` is epoch e's full plan as the sampler holds it at its end.
    """
    sampler = make()
    loader = StatefulDataLoader(
        IndexedDataset(range(N)),
        batch_size=BATCH,
        sampler=sampler,
        num_workers=workers,
        **loader_kw,
    )
    start = 0
    if checkpoint is not None:
        state = _load(checkpoint)
        sampler.scores.load_state_dict(state["scores"])  # scores first, then the loader
        loader.load_state_dict(state["loader"])
        start = state["epoch"]  # the training loop's own counter
    seen, plans = [], {}
    for epoch in range(start, EPOCHS):
        sampler.set_epoch(epoch)
        for ids, _ in loader:
            weighted = sampler.reweight(ids, loss_of(ids, epoch))
            weights = sampler.weights_of(ids.numpy()).tolist()
            seen.append((epoch, ids.tolist(), weights, round(float(weighted), 6)))
            if len(seen) == stop_at:
                state = {
                    "loader": loader.state_dict(),
                    "scores": sampler.scores.state_dict(),
                    "epoch": epoch,
                }
                return seen, _save(state)
        plans[epoch] = sampler.plan.ids.tolist()
        if epoch == stop_after_epoch:
            state = {
                "loader": loader.state_dict(),
                "scores": sampler.scores.state_dict(),
                "epoch": epoch + 1,
            }
            return seen, _save(state)
    sampler.set_epoch(EPOCHS)  # settle the last epoch's feedback
    return seen, plans, sampler.scores.values.copy()


def ten_stops(name, full):
    """Ten seeded stop points: after the last batch of epoch 0, after the first batch of epoch 1,
    and eight random ones (mostly mid-epoch, spread over all epochs)."""
    end_of_first = sum(1 for e, *_ in full if e == 0)
    rng = np.random.default_rng(sum(map(ord, name)))
    rest = np.setdiff1d(np.arange(1, len(full)), [end_of_first, end_of_first + 1])
    return [end_of_first, end_of_first + 1, *rng.choice(rest, 8, replace=False).tolist()]


def check_resumes(name, workers, **loader_kw):
    make = SAMPLERS[name]
    full, full_plans, final_scores = run(make, workers=workers, **loader_kw)
    assert {e for e, *_ in full} == set(range(EPOCHS))
    for stop in ten_stops(name, full):
        head, checkpoint = run(make, stop_at=int(stop), workers=workers, **loader_kw)
        assert head == full[:stop]
        tail, plans, scores = run(make, checkpoint=checkpoint, workers=workers, **loader_kw)
        assert tail == full[stop:], f"{name}: resume after batch {stop} diverged"
        stopped_in = full[stop - 1][0]
        assert plans == {e: p for e, p in full_plans.items() if e >= stopped_in}
        np.testing.assert_array_equal(scores, final_scores)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_resume_from_ten_random_points_matches_the_uninterrupted_run(name):
    check_resumes(name, workers=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_resume_with_two_prefetching_workers(name):
    # Workers prefetch ahead, so the sampler's live position exceeds what the loop consumed;
    # StatefulDataLoader's per-batch snapshot of sampler.state_dict() must give the consumed one.
    check_resumes(name, workers=2)


@pytest.mark.timeout(60)
def test_resume_with_persistent_workers():
    check_resumes("infobatch", workers=2, persistent_workers=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_checkpoint_taken_after_an_epoch_finished(workers):
    make = SAMPLERS["infobatch"]
    full, full_plans, final_scores = run(make, workers=workers)
    for epoch in (0, 2):
        head, checkpoint = run(make, stop_after_epoch=epoch, workers=workers)
        assert head == [b for b in full if b[0] <= epoch]
        tail, plans, scores = run(make, checkpoint=checkpoint, workers=workers)
        assert tail == full[len(head) :]
        assert plans == {e: p for e, p in full_plans.items() if e > epoch}
        np.testing.assert_array_equal(scores, final_scores)


def test_the_loader_state_holds_the_consumed_position_while_workers_prefetch():
    sampler = SAMPLERS["rs2"]()
    loader = StatefulDataLoader(
        IndexedDataset(range(N)), batch_size=8, sampler=sampler, num_workers=2, prefetch_factor=2
    )
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)
    next(it)
    assert sampler.position > 2 * 8  # the live iterator has run ahead
    # torchdata's layout (pinned version): the sampler state snapshotted with the last yielded batch
    main = loader.state_dict()["_snapshot"]["_main_snapshot"]
    assert main["_sampler_iter_state"]["sampler_state"]["position"] == 2 * 8
    del it


def test_set_epoch_before_the_loader_state_is_applied_rejects_an_earlier_epoch():
    make = SAMPLERS["rs2"]
    _, checkpoint = run(make, stop_at=10)
    state = _load(checkpoint)
    assert state["epoch"] > 0
    sampler = make()
    loader = StatefulDataLoader(IndexedDataset(range(N)), batch_size=BATCH, sampler=sampler)
    sampler.scores.load_state_dict(state["scores"])
    loader.load_state_dict(state["loader"])
    sampler.set_epoch(0)  # the loop forgot to start at the checkpoint's epoch
    with pytest.raises(ValueError, match=f"epoch {state['epoch']}"):
        next(iter(loader))
