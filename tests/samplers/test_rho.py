"""RhoLossSelector and the irreducible-loss helpers: rules, errors, resume, twin IL."""

import numpy as np
import pytest
import torch

from winnow.pipelines.toydata import MLP
from winnow.samplers.rho import (
    RhoLossSelector,
    holdout_split,
    score_irreducible_losses,
    train_irreducible_model,
    train_twin_irreducible,
)
from winnow.store import ScoreStore


def test_top_k_of_reducible_loss_by_example_id():
    il = np.zeros(1000, dtype=np.float32)
    il[[10, 20]] = 9.0  # noisy: high irreducible loss
    ids = torch.tensor([500, 10, 20, 7, 8, 9, 11, 12, 13, 14])
    learner = torch.tensor([1.0, 5.0, 5.0, 0.1, 0.2, 0.3, 0.4, 0.5, 3.0, 0.6])
    rows, weights = RhoLossSelector(il, keep=0.3).select(ids, learner)
    # rho = learner - IL: the high-loss-but-noisy ids 10 and 20 drop to the bottom.
    assert ids[rows].tolist() == [13, 500, 14]
    assert weights.tolist() == [1.0, 1.0, 1.0]
    assert RhoLossSelector(il, keep=0.1).select(torch.arange(320), torch.rand(320))[0].shape == (
        32,
    )


def test_stochastic_and_boltzmann_variants():
    il = np.zeros(100, dtype=np.float32)
    learner = torch.linspace(0.0, 1.0, 100)
    cold = RhoLossSelector(il, keep=0.1, kind="stochastic", beta=500.0, seed=1)
    assert sorted(cold.select(torch.arange(100), learner)[0].tolist()) == list(range(90, 100))
    warm = RhoLossSelector(il, keep=0.1, kind="stochastic", beta=0.0, seed=1)
    picks = torch.cat([warm.select(torch.arange(100), learner)[0] for _ in range(100)])
    assert len(set(picks.tolist())) > 80  # uniform: nearly every row gets picked
    boltz = RhoLossSelector(il, keep=0.5, kind="boltzmann", temperature=0.05, seed=2)
    rows, _ = boltz.select(torch.arange(100), learner)
    assert rows.shape == (50,) and len(set(rows.tolist())) < 50  # with replacement
    assert float(learner[rows].mean()) > 0.85


def test_errors():
    il = np.arange(10, dtype=np.float32)
    il[3] = np.nan
    sel = RhoLossSelector(il, source="store run 'il-v1'")
    with pytest.raises(
        ValueError, match=r"1 of 4 ids have no irreducible loss in store run 'il-v1'"
    ):
        sel.select(torch.tensor([0, 1, 2, 3]), torch.zeros(4))
    with pytest.raises(ValueError, match="keep"):
        RhoLossSelector(il, keep=1.5)
    with pytest.raises(ValueError, match="kind"):
        RhoLossSelector(il, kind="greedy")
    with pytest.raises(ValueError, match="smaller than the batch of 5"):
        RhoLossSelector(il, batch_size=5).select(torch.arange(3), torch.zeros(3))
    with pytest.raises(ValueError, match="2 values for 3 ids"):
        sel.select(torch.arange(3), torch.zeros(2))
    with pytest.raises(TypeError, match="float"):
        RhoLossSelector(np.arange(10))


def test_resume_and_store_round_trip(tmp_path):
    store = ScoreStore(tmp_path / "store")
    store.write(
        "il-v1", "irreducible_loss", np.arange(200), np.linspace(0, 1, 200).astype(np.float32)
    )
    il, _ = store.read("il-v1", "irreducible_loss")
    a = RhoLossSelector(il, keep=0.2, kind="stochastic", seed=3, source="store run 'il-v1'")
    losses = torch.rand(100, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(50, 150)
    a.select(ids, losses)
    state = a.state_dict()
    expected = a.select(ids, losses)[0].tolist()
    b = RhoLossSelector(il, keep=0.2, kind="stochastic", seed=3)
    b.load_state_dict(state)
    assert b.select(ids, losses)[0].tolist() == expected


def test_holdout_split():
    train, ho = holdout_split(11)
    assert train.tolist() == [0, 2, 4, 6, 8, 10] and ho.tolist() == [1, 3, 5, 7, 9]
    train, ho = holdout_split(1000, method="random", holdout_fraction=0.3, seed=1)
    assert len(ho) == 300 and not set(train) & set(ho) and len(train) + len(ho) == 1000
    with pytest.raises(ValueError, match="holdout_fraction"):
        holdout_split(10, method="random", holdout_fraction=1.0)


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 40, generator=g) * 0.5
    x[:, :3] += 2.0 * torch.nn.functional.one_hot(y, 3)
    return x, y


def test_train_keeps_lowest_validation_loss_checkpoint():
    x, y = _blobs(300, 0)
    torch.manual_seed(0)
    model, hist = train_irreducible_model(MLP(40, 16, 3), x, y, epochs=8, batch_size=32, lr=1e-2)
    assert len(hist["val_loss"]) == 8 and not model.training
    # The returned weights are the best epoch's: recompute the validation loss on the same split.
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    xv, yv = x[perm[:30]], y[perm[:30]]
    with torch.no_grad():
        val = float(torch.nn.functional.cross_entropy(model(xv), yv))
    assert val == pytest.approx(min(hist["val_loss"]), rel=1e-5)


def test_score_irreducible_fills_a_dense_array_by_id():
    x, y = _blobs(40, 1)
    model = MLP(40, 8, 3)
    ids = np.arange(100, 140)[::-1].copy()
    out = score_irreducible_losses(model, x, y, ids, 200, batch_size=16)
    assert out.shape == (200,) and np.isnan(out[:100]).all() and np.isnan(out[140:]).all()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), y, reduction="none").numpy()
    np.testing.assert_allclose(out[ids], expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 120\)"):
        score_irreducible_losses(model, x, y, ids, 120)


def test_twin_models_score_the_half_they_did_not_see():
    x, y = _blobs(200, 2)
    ids = np.arange(1000, 1200)
    torch.manual_seed(0)
    il, models = train_twin_irreducible(
        lambda: MLP(40, 16, 3), x, y, ids, 1200, seed=5, epochs=3, batch_size=32, lr=1e-2
    )
    assert np.isfinite(il[1000:]).all() and np.isnan(il[:1000]).all()
    perm = np.random.default_rng(5).permutation(200)
    first, second = perm[:100], perm[100:]
    with torch.no_grad():
        by_second = torch.nn.functional.cross_entropy(
            models[1](x[first]), y[first], reduction="none"
        )
        by_first = torch.nn.functional.cross_entropy(
            models[0](x[second]), y[second], reduction="none"
        )
    np.testing.assert_allclose(il[ids[first]], by_second.numpy(), rtol=1e-5)
    np.testing.assert_allclose(il[ids[second]], by_first.numpy(), rtol=1e-5)


def _train_on_stream(x, y, train_ids, x_test, y_test, *, selector, steps, seed, eval_every):
    """AdamW on a SmallCNN; each step draws ``n_B`` ids (320 with a selector, else 32) without
    replacement from a reshuffled stream and trains on the selected 32. Returns the test
    accuracy every ``eval_every`` steps and the ids trained on."""
    from winnow.pipelines.toydata import SmallCNN
    from winnow.samplers.jest import score_super_batch
    from winnow.selection.losses import per_example_cross_entropy

    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    big = 320 if selector is not None else 32
    order, pos, accs, trained = rng.permutation(train_ids), 0, [], []
    for step in range(steps):
        if pos + big > len(order):
            order, pos = rng.permutation(train_ids), 0
        ids = order[pos : pos + big]
        pos += big
        xb, yb = x[ids], y[ids]
        if selector is not None:
            losses = score_super_batch(
                model, xb, yb, loss_fn=per_example_cross_entropy, train_mode=True
            )
            rows, _ = selector.select(torch.from_numpy(ids), losses)
            xb, yb, ids = xb[rows], yb[rows], ids[rows.numpy()]
        trained.append(ids)
        loss = per_example_cross_entropy(model(xb), yb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0:
            with torch.no_grad():
                accs.append(float((model(x_test).argmax(1) == y_test).float().mean()))
    return np.array(accs), np.concatenate(trained)


@pytest.mark.timeout(180)
def test_rho_loss_on_noisy_mnist1d_avoids_noise_and_learns_faster():
    """The RHO-LOSS paper's noisy-label experiment at CPU scale: MNIST-1D (8000 generated,
    6400 train), 20 % symmetric label noise, parity holdout, the same small CNN as IL model and
    learner, n_B=320, n_b=32."""
    from winnow.pipelines.toydata import SmallCNN, add_label_noise, make_mnist1d

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only contend on shared CI cores
    try:
        data = make_mnist1d(8000, seed=42)
        x = torch.from_numpy(data["x"])
        noisy_y, is_noisy = add_label_noise(data["y"], 0.2, seed=0)
        y = torch.from_numpy(noisy_y)
        x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
        train_ids, holdout_ids = holdout_split(len(x))
        torch.manual_seed(0)
        il_model, _ = train_irreducible_model(
            SmallCNN(), x[holdout_ids], y[holdout_ids], epochs=40, batch_size=64, seed=0
        )
        il = score_irreducible_losses(il_model, x[train_ids], y[train_ids], train_ids, len(x))
        assert np.isnan(il[holdout_ids]).all()
        kw = dict(steps=1600, seed=1, eval_every=40)
        acc_u, ids_u = _train_on_stream(x, y, train_ids, x_test, y_test, selector=None, **kw)
        rho = RhoLossSelector(il, keep=0.1, seed=1, source="IL model on the parity holdout")
        acc_r, ids_r = _train_on_stream(x, y, train_ids, x_test, y_test, selector=rho, **kw)
    finally:
        torch.set_num_threads(threads)

    noisy_u, noisy_r = is_noisy[ids_u].mean(), is_noisy[ids_r].mean()
    assert noisy_r < noisy_u - 0.04, f"noisy share: RHO {noisy_r:.3f} vs uniform {noisy_u:.3f}"

    def smooth(a):  # 3-evaluation moving average: one evaluation on 1600 test rows is noisy
        return np.convolve(a, np.ones(3) / 3, mode="valid")

    s_u, s_r = smooth(acc_u), smooth(acc_r)
    target, steps_u = s_u.max(), (int(s_u.argmax()) + 3) * 40
    reached = np.nonzero(s_r >= target)[0]
    assert reached.size, f"RHO never reached uniform's best {target:.3f} (best {s_r.max():.3f})"
    steps_r = (int(reached[0]) + 3) * 40
    assert steps_r < steps_u, f"RHO took {steps_r} steps to reach {target:.3f}, uniform {steps_u}"
