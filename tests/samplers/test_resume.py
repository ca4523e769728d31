"""Resume: stopping anywhere (mid-epoch included) and restarting from the checkpointed states
gives exactly the rest of the uninterrupted run, for every sampler, through a real DataLoader.

Checkpoints go through ``torch.save`` and ``torch.load`` with its defaults (``weights_only=True``),
as a user's training script would write them."""

import io

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from winnow.samplers import IndexedDataset, InfoBatchSampler, PrunedSampler, RS2Sampler

N, EPOCHS, BATCH = 300, 6, 32
LABELS = np.arange(N) % 3

SAMPLERS = {
    "infobatch": lambda: InfoBatchSampler(N, EPOCHS, prune_ratio=0.5, delta=0.8, seed=11),
    "infobatch_budget": lambda: InfoBatchSampler(N, EPOCHS, delta=0.9, target_saving=0.25),
    "rs2": lambda: RS2Sampler(N, 0.3, seed=5),
    "rs2_replacement_strata": lambda: RS2Sampler(N, 0.2, replacement=True, labels=LABELS),
    "pruned": lambda: PrunedSampler(np.cos(np.arange(N)), 0.6, alpha=0.2, seed=2),
}


def loss_of(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """A deterministic stand-in for training losses, different per epoch."""
    return ((ids * 2654435761 + epoch * 97) % 1000).float() / 1000 + 0.01


def run(make, *, stop_at=None, checkpoint=None, workers=0, explicit_position=False):
    """Train-loop skeleton; returns the batches seen and, at ``stop_at``, a checkpoint."""
    sampler = make()
    start = 0
    if checkpoint is not None:
        state = torch.load(io.BytesIO(checkpoint))
        sampler.scores.load_state_dict(state["scores"])
        sampler.load_state_dict(state["sampler"])
        start = state["sampler"]["epoch"]
    loader = DataLoader(
        IndexedDataset(range(N)), batch_size=BATCH, sampler=sampler, num_workers=workers
    )
    seen = []
    for epoch in range(start, EPOCHS):
        sampler.set_epoch(epoch)
        consumed = sampler.position  # 0, or where a resumed epoch left off
        for ids, _ in loader:
            weighted = sampler.reweight(ids, loss_of(ids, epoch))
            seen.append((epoch, ids.tolist(), round(float(weighted), 6)))
            consumed += len(ids)
            if len(seen) == stop_at:
                position = consumed if explicit_position else None
                state = {
                    "sampler": sampler.state_dict(position=position),
                    "scores": sampler.scores.state_dict(),
                }
                buffer = io.BytesIO()
                torch.save(state, buffer)
                return seen, buffer.getvalue()
    sampler.set_epoch(EPOCHS)  # settle the last epoch's feedback
    return seen, sampler.scores.values.copy()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_resume_from_ten_random_points_matches_the_uninterrupted_run(name):
    make = SAMPLERS[name]
    full, final_scores = run(make)
    epochs_seen = {e for e, _, _ in full}
    assert epochs_seen == set(range(EPOCHS))
    stops = np.random.default_rng(len(name)).choice(np.arange(1, len(full)), 10, replace=False)
    for stop in stops:
        head, checkpoint = run(make, stop_at=int(stop))
        assert head == full[:stop]
        tail, scores = run(make, checkpoint=checkpoint)
        assert tail == full[stop:], f"{name}: resume after batch {stop} diverged"
        np.testing.assert_array_equal(scores, final_scores)


def test_resume_with_prefetching_workers_needs_the_consumed_position():
    make = SAMPLERS["infobatch"]
    full, final_scores = run(make)
    for stop in (3, 14, 25):  # mid-epoch stops while two workers prefetch ahead
        head, checkpoint = run(make, stop_at=stop, workers=2, explicit_position=True)
        assert head == full[:stop]
        tail, scores = run(make, checkpoint=checkpoint, workers=2)
        assert tail == full[stop:]
        np.testing.assert_array_equal(scores, final_scores)


def test_the_iterator_position_runs_ahead_under_prefetch():
    # Why the explicit position exists: with workers the sampler has handed out more ids
    # than the loop consumed, so its own position must not be checkpointed as "consumed".
    s = SAMPLERS["rs2"]()
    loader = DataLoader(
        IndexedDataset(range(N)), batch_size=8, sampler=s, num_workers=2, prefetch_factor=2
    )
    it = iter(loader)
    next(it)
    assert s.position > 8
    del it


def test_load_rejects_foreign_states():
    s = SAMPLERS["rs2"]()
    state = s.state_dict()
    with pytest.raises(ValueError, match="num_examples: stored 300, here 301"):
        RS2Sampler(301, 0.3, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="keep: stored 0.3, here 0.4"):
        RS2Sampler(300, 0.4, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="seed: stored 5, here 6"):
        RS2Sampler(300, 0.3, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="'RS2Sampler' state; expected a 'InfoBatchSampler'"):
        InfoBatchSampler(300, 4, seed=5).load_state_dict(state)
    moved = dict(state, position=5, world_size=2)
    with pytest.raises(ValueError, match="cannot resume mid-epoch"):
        s.load_state_dict(moved)
    with pytest.raises(ValueError, match="lacks keys"):
        s.load_state_dict({"epoch": 1})
