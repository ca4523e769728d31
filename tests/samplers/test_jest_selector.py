"""JESTSelector: reference scores by example_id (dense arrays and a real store), errors, resume."""

import numpy as np
import pytest
import torch

from winnow.pipelines.toydata import MLP
from winnow.samplers.jest import JESTSelector, score_super_batch
from winnow.selection.jest import jest_scores, joint_learnability
from winnow.selection.losses import per_example_cross_entropy, sigmoid_pair_losses
from winnow.store import ScoreStore


def test_select_reads_reference_by_example_id():
    n = 1000
    reference = np.linspace(0.0, 5.0, n).astype(np.float32)
    ids = torch.tensor([901, 3, 450, 999, 17, 600, 2, 750, 120, 333])
    learner = torch.full((10,), 5.0)
    sel = JESTSelector(reference, filter_ratio=0.7, temperature=0.0)
    rows, weights = sel.select(ids, learner)
    # Greedy learnability = 5 - reference[id]: the three smallest ids win, best first.
    assert ids[rows].tolist() == [2, 3, 17]
    assert weights.tolist() == [1.0, 1.0, 1.0] and rows.dtype == torch.int64
    easy = JESTSelector(reference, filter_ratio=0.7, temperature=0.0, mode="easy_reference")
    assert ids[easy.select(ids, torch.rand(10))[0]].tolist() == [2, 3, 17]
    hard = JESTSelector(None, filter_ratio=0.7, temperature=0.0, mode="hard_learner")
    assert hard.select(ids, torch.arange(10.0))[0].tolist() == [9, 8, 7]


def test_stochastic_selection_prefers_learnable_rows():
    reference = np.zeros(64, dtype=np.float32)
    learner = torch.zeros(64)
    learner[:8] = 4.0  # exp(4) ≈ 55x more likely per draw
    sel = JESTSelector(reference, filter_ratio=0.875, seed=1)
    hits = sum(int((sel.select(torch.arange(64), learner)[0] < 8).sum()) for _ in range(200))
    assert hits / (200 * 8) > 0.7


def test_errors_name_missing_ids_and_source():
    reference = np.arange(20, dtype=np.float32)
    reference[[4, 7]] = np.nan
    sel = JESTSelector(reference, filter_ratio=0.5, source="store run 'ref-v1'")
    with pytest.raises(
        ValueError, match=r"2 of 6 ids have no reference loss in store run 'ref-v1'.*4, 7"
    ):
        sel.select(torch.tensor([1, 4, 7, 8, 9, 10]), torch.zeros(6))
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        sel.select(torch.tensor([1, 25]), torch.zeros(2))
    with pytest.raises(ValueError, match="5 values for 6 ids"):
        sel.select(torch.arange(6), torch.zeros(5))
    with pytest.raises(ValueError, match="already reduced"):
        sel.select(torch.arange(6), torch.tensor(1.0))
    with pytest.raises(ValueError, match="NaN"):
        sel.select(torch.arange(6), torch.tensor([0.0, 1, 2, float("nan"), 1, 1]))
    # floor(1 * (1 - 0.5)) = 0 rows: every selector keeps at least one row
    rows, _ = sel.select(torch.arange(1, 2), torch.zeros(1))
    assert rows.tolist() == [0]
    with pytest.raises(ValueError, match=r"\[B, B\]"):
        sel.select_pairwise(torch.arange(6), torch.zeros(6, 5), torch.zeros(6, 6))
    with pytest.raises(ValueError, match="needs reference_losses"):
        JESTSelector(None).select(torch.arange(10), torch.zeros(10))
    for f in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match="filter_ratio"):
            JESTSelector(reference, filter_ratio=f)
    with pytest.raises(ValueError, match="smaller than the batch of 8"):
        JESTSelector(reference, batch_size=8).select(torch.arange(6), torch.zeros(6))
    with pytest.raises(ValueError, match="reference_temperature"):
        JESTSelector(
            reference_image=(np.arange(3), np.zeros((3, 2))),
            reference_text=(np.arange(3), np.zeros((3, 2))),
        )


def test_state_dict_resumes_the_noise_stream():
    reference = np.zeros(50, dtype=np.float32)
    a = JESTSelector(reference, seed=3)
    losses = torch.rand(50, generator=torch.Generator().manual_seed(0))
    a.select(torch.arange(50), losses)
    state = a.state_dict()
    expected = [a.select(torch.arange(50), losses)[0].tolist() for _ in range(3)]
    b = JESTSelector(reference, seed=3)
    b.load_state_dict(state)
    assert [b.select(torch.arange(50), losses)[0].tolist() for _ in range(3)] == expected
    assert b.steps == a.steps == 4
    with pytest.raises(ValueError, match="seed"):
        JESTSelector(reference, seed=4).load_state_dict(state)
    # Different ranks draw different noise from the same seed.
    r1 = JESTSelector(reference, seed=3, rank=1)
    assert (
        r1.select(torch.arange(50), losses)[0].tolist()
        != JESTSelector(reference, seed=3).select(torch.arange(50), losses)[0].tolist()
    )


def _embeddings(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.7 * torch.randn(n, d, generator=g), dim=1)
    return x, y


def test_contrastive_reference_rebuilt_from_store_embeddings(tmp_path):
    n, d = 200, 16
    ref_x, ref_y = _embeddings(n, d, 0)
    store = ScoreStore(tmp_path / "store")
    shuffled = np.random.default_rng(0).permutation(n)
    store.write_vectors("ref-v1", "image", shuffled, ref_x[shuffled].numpy())
    store.write_vectors("ref-v1", "text", np.arange(n), ref_y.numpy())
    sel = JESTSelector(
        filter_ratio=0.8,
        seed=5,
        reference_image=store.read_vectors("ref-v1", "image"),
        reference_text=store.read_vectors("ref-v1", "text"),
        reference_temperature=10.0,
        reference_bias=-5.0,
        source="store run 'ref-v1'",
    )
    ids = torch.tensor(np.random.default_rng(1).choice(n, 60, replace=False))
    rebuilt = sel.reference_pair_losses(ids)
    # float16 storage: the rebuilt matrix matches the exact one to storage precision.
    exact = sigmoid_pair_losses(ref_x[ids], ref_y[ids], temperature=10.0, bias=-5.0)
    torch.testing.assert_close(rebuilt, exact, atol=2e-2, rtol=1e-2)
    learn_x, learn_y = _embeddings(n, d, 1)
    learner = sigmoid_pair_losses(learn_x[ids], learn_y[ids], temperature=10.0, bias=-5.0)
    state = sel.state_dict()
    rows_store, w = sel.select_pairwise(ids, learner)
    sel.load_state_dict(state)
    rows_explicit, _ = sel.select_pairwise(ids, learner, rebuilt)
    assert rows_store.tolist() == rows_explicit.tolist() and len(rows_store) == 12
    S = jest_scores(learner, rebuilt)
    rand = torch.stack([joint_learnability(S, torch.randperm(60)[:12]) for _ in range(100)])
    assert joint_learnability(S, rows_store) > rand.mean()
    with pytest.raises(
        ValueError, match=r"1 of 2 ids have no reference image embedding in store run 'ref-v1'"
    ):
        sel.reference_pair_losses(torch.tensor([0, n + 5]))


def test_select_through_a_real_store_run(tmp_path):
    store = ScoreStore(tmp_path / "store")
    store.write("ref-v1", "loss", np.arange(0, 100, 2), np.full(50, 0.5, np.float32))
    values, _ = store.read("ref-v1", "loss", num_examples=100)
    sel = JESTSelector(values, filter_ratio=0.5, source="store run 'ref-v1'")
    rows, _ = sel.select(torch.arange(0, 20, 2), torch.rand(10))
    assert len(rows) == 5
    with pytest.raises(
        ValueError, match="5 of 10 ids have no reference loss in store run 'ref-v1'"
    ):
        sel.select(torch.arange(10), torch.rand(10))


def test_score_super_batch_restores_mode_and_micro_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(40, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 10)
    )
    model.train()
    x = torch.randn(100, 40)
    y = torch.randint(0, 10, (100,))
    full = score_super_batch(model, x, y, loss_fn=per_example_cross_entropy, train_mode=False)
    chunked = score_super_batch(
        model, x, y, loss_fn=per_example_cross_entropy, train_mode=False, micro_batch_size=33
    )
    assert model.training and not full.requires_grad and full.shape == (100,)
    torch.testing.assert_close(full, chunked)
    train_scored = score_super_batch(
        model, x, y, loss_fn=per_example_cross_entropy, train_mode=True
    )
    assert not torch.allclose(train_scored, full)  # dropout active in train mode

    class Towers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.img, self.txt = MLP(40, 16, 8), MLP(40, 16, 8)

        def forward(self, batch):
            return self.img(batch[0]), self.txt(batch[1])

    towers = Towers()
    pair = score_super_batch(
        towers,
        (x, x.flip(1)),
        loss_fn=lambda out: sigmoid_pair_losses(*out, temperature=1.0, bias=0.0, normalize=True),
    )
    assert pair.shape == (100, 100)
    chunked_pair = score_super_batch(
        towers,
        (x, x.flip(1)),
        loss_fn=lambda out: sigmoid_pair_losses(*out, temperature=1.0, bias=0.0, normalize=True),
        micro_batch_size=30,
    )
    torch.testing.assert_close(pair, chunked_pair)
    with pytest.raises(ValueError, match="per-example"):
        score_super_batch(model, x, y, loss_fn=lambda out, t: out.sum())


def test_learnability_is_computed_in_float32_with_bf16_learner_losses():
    """A bf16 learner, float32 reference losses that differ by 0.001: rounding the reference to
    bf16 (step 0.0156 near 2.5) would merge them into 3 values; the scores keep all 32."""
    reference = (2.5 - 0.001 * np.arange(32)).astype(np.float32)
    sel = JESTSelector(reference, keep=0.25, temperature=0.0)
    learner = torch.full((32,), 2.5, dtype=torch.bfloat16)
    scores = sel.selection_scores(np.arange(32), learner)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, 2.5 - torch.from_numpy(reference), rtol=0, atol=0)
    assert len(set(scores.tolist())) == 32
    rows, _ = sel.select(torch.arange(32), learner)
    assert sorted(rows.tolist()) == list(range(24, 32))  # the 8 largest learnabilities
