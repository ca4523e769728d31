"""Per-step traces of in-step selectors and batch samplers, written to a real score store."""

import gc

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from winnow.pipelines.cli import main
from winnow.samplers import (
    HardBatchSampler,
    ImportanceSelector,
    JESTSelector,
    ODMSampler,
    RhoLossSelector,
    TopLossSelector,
    score_super_batch,
)
from winnow.store import ScoreStore

N, BIG, KEEP = 600, 60, 0.2


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    return x, y


def test_what_rho_loss_trained_on_at_step_10_and_their_scores(tmp_path, capsys):
    """A real training loop; SQL answers which rows step 10 trained on and why."""
    x, y = _data()
    il = np.random.default_rng(1).random(N).astype(np.float32)
    store = ScoreStore(tmp_path / "store")
    rho = RhoLossSelector(il, keep=KEEP, trace=store.trace_writer("rho"))
    model = nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    seen = {}
    for step in range(20):
        ids = order[(step * BIG) % N :][:BIG]
        losses = score_super_batch(
            model, x[ids], y[ids], loss_fn=nn.CrossEntropyLoss(reduction="none")
        )
        rows, w = rho.select(ids, losses)
        seen[step] = (ids[rows].tolist(), (losses - torch.from_numpy(il[ids]))[rows], losses)
        (w * F.cross_entropy(model(x[ids[rows]]), y[ids[rows]], reduction="none")).mean().backward()
        opt.step()
        opt.zero_grad()
    rho.close()

    query = (
        "SELECT example_id, score, loss FROM trace WHERE run = 'rho' AND step = 10 AND kept "
        "ORDER BY score DESC"
    )
    got = store.sql(query).to_pydict()
    assert got["example_id"] == seen[10][0]  # top-k by reducible loss, highest first
    np.testing.assert_allclose(got["score"], seen[10][1].numpy(), rtol=1e-6)
    # learner loss minus the traced score is the irreducible loss the selector read by id
    ref = np.array(got["loss"]) - np.array(got["score"])
    np.testing.assert_allclose(ref, il[got["example_id"]], atol=1e-6)
    step10 = store.sql(
        "SELECT count(*) AS n, count(*) FILTER (WHERE kept) AS k, sum(weight) AS w FROM trace "
        "WHERE run = 'rho' AND step = 10"
    ).to_pylist()[0]
    assert step10 == {"n": BIG, "k": int(BIG * KEEP), "w": BIG * KEEP}
    assert main(["runs", "--store", str(tmp_path / "store"), "--format", "csv"]) == 0
    listed = capsys.readouterr().out
    assert '"rho","trace","complete"' in listed and listed.endswith(f",{20 * BIG}\n")


def test_selection_and_trace_never_read_a_device_value_until_flush(tmp_path):
    """On the meta device any read of a value raises: select + trace run there untouched,
    and only the flush (one copy) needs the data."""
    store = ScoreStore(tmp_path / "store")
    il = np.random.default_rng(0).random(N).astype(np.float32)
    for selector in (
        TopLossSelector(keep=KEEP, trace=store.trace_writer("top")),
        RhoLossSelector(il, keep=KEEP, trace=store.trace_writer("rho")),
        JESTSelector(il, keep=KEEP, temperature=0.0, trace=store.trace_writer("jest")),
    ):
        selector.generator = lambda device: None  # top-k draws nothing; meta has no generator
        for step in range(5):
            selector.select(np.arange(step, step + BIG), torch.rand(BIG, device="meta"))
        assert selector._trace.buffered_steps == 5
        assert all(block.device.type == "meta" for block in selector._trace.buffer)
        with pytest.raises(NotImplementedError, match="meta"):
            selector._trace.flush()
    assert store.sql("SELECT count(*) AS n FROM trace")["n"][0].as_py() == 0


def test_trace_every_records_one_step_in_k_and_flushes_by_steps_and_bytes(tmp_path):
    store = ScoreStore(tmp_path / "store")
    sel = TopLossSelector(
        keep=KEEP, trace=store.trace_writer("k3", flush_steps=2), trace_every=3, seed=1
    )
    for step in range(10):
        sel.select(np.arange(BIG), torch.rand(BIG))
        if step == 6:  # steps 0, 3 flushed as one file once two were buffered; 6 waits
            got = store.sql("SELECT DISTINCT step FROM trace ORDER BY step")["step"]
            assert got.to_pylist() == [0, 3]
    sel.close()
    steps = store.sql("SELECT step, count(*) AS n FROM trace GROUP BY step ORDER BY step")
    assert steps["step"].to_pylist() == [0, 3, 6, 9] and set(steps["n"].to_pylist()) == {BIG}
    tiny = TopLossSelector(keep=KEEP, trace=store.trace_writer("b", flush_bytes=100))
    tiny.select(np.arange(BIG), torch.rand(BIG))  # 60 rows > 100 bytes: written at once
    assert store.sql("SELECT count(*) AS n FROM trace WHERE run = 'b'")["n"][0].as_py() == BIG


def _run(selector, start, stop, seed=0):
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(seed * 1000 + step)
        selector.select(np.arange(step, step + BIG), torch.rand(BIG, generator=gen))


def _rows(store, run):
    return store.sql(
        f"SELECT step, example_id, kept, weight, score FROM trace WHERE run = '{run}' "
        "ORDER BY step, example_id"
    ).to_pydict()


def test_checkpoint_flushes_and_resume_does_not_duplicate_rows(tmp_path):
    store = ScoreStore(tmp_path / "store")
    whole = TopLossSelector(keep=KEEP, beta=1.0, trace=store.trace_writer("whole"))
    _run(whole, 0, 12)
    whole.close()

    first = TopLossSelector(keep=KEEP, beta=1.0, trace=store.trace_writer("resumed"))
    _run(first, 0, 6)
    state = first.state_dict()  # a checkpoint flushes: steps 0-5 are stored
    assert store.sql("SELECT max(step) AS m FROM trace WHERE run = 'resumed'")["m"][0].as_py() == 5
    _run(first, 6, 10)
    first.state_dict()  # steps 6-9 stored too, then the process "crashes"
    _run(first, 10, 11)
    del first
    gc.collect()  # a dying owner flushes what it held (step 10)
    assert (
        store.sql("SELECT count(DISTINCT step) AS n FROM trace WHERE run = 'resumed'")["n"][
            0
        ].as_py()
        == 11
    )

    again = TopLossSelector(keep=KEEP, beta=1.0, trace=store.trace_writer("resumed"))
    again.load_state_dict(state)
    _run(again, 6, 12)
    again.close()
    assert _rows(store, "resumed") == _rows(store, "whole")
    assert store.manifest("resumed")["trace_rows"] == 12 * BIG


def test_jest_pairwise_and_importance_uniform_are_traced(tmp_path):
    store = ScoreStore(tmp_path / "store")
    ref = np.zeros(N, dtype=np.float32)
    jest = JESTSelector(ref, keep=0.25, n_chunks=2, trace=store.trace_writer("jest"))
    pair = torch.rand(8, 8)
    rows, _ = jest.select_pairwise(np.arange(8), pair, torch.zeros(8, 8))
    imp = ImportanceSelector(batch_size=4, trace=store.trace_writer("imp"))
    urows, _ = imp.uniform(12, ids=np.arange(100, 112))
    srows, sweights = imp.select(np.arange(12), torch.rand(12) + 0.1)
    jest.close()
    imp.close()
    got = store.sql("SELECT example_id, loss FROM trace WHERE run = 'jest' AND kept").to_pydict()
    assert sorted(got["example_id"]) == sorted(rows.tolist())
    np.testing.assert_allclose(sorted(got["loss"]), sorted(pair.diagonal()[rows].tolist()))
    imp_rows = store.sql(
        "SELECT step, example_id, score, weight FROM trace WHERE run = 'imp' AND kept "
        "ORDER BY step, example_id"
    ).to_pydict()
    steps = np.array(imp_rows["step"])
    assert sorted(np.array(imp_rows["example_id"])[steps == 0]) == sorted((100 + urows).tolist())
    assert np.isnan(np.array(imp_rows["score"], dtype=float)[steps == 0]).all()
    # a row drawn twice carries both draws' weights
    total = store.sql("SELECT sum(weight) AS w FROM trace WHERE run = 'imp' AND step = 1")
    assert total["w"][0].as_py() == pytest.approx(float(sweights.sum()), rel=1e-6)
    with pytest.raises(ValueError, match="needs the example ids"):
        imp.uniform(12)


def test_hard_batches_record_each_trained_batch_with_its_score(tmp_path):
    store = ScoreStore(tmp_path / "store")
    sampler = HardBatchSampler(40, 10, 0.5, 3, trace=store.trace_writer("hb"))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            ids = torch.tensor(batch)
            sampler.update(ids, (ids % 7).float())
    sampler.close()
    per_step = store.sql(
        "SELECT step, any_value(epoch) AS epoch, count(*) AS n, bool_and(kept) AS kept, "
        "any_value(score) AS score, avg(loss) AS mean_loss FROM trace WHERE run = 'hb' "
        "GROUP BY step ORDER BY step"
    ).to_pydict()
    assert per_step["step"] == list(range(12)) and set(per_step["n"]) == {10}
    assert per_step["epoch"] == [0] * 4 + [1] * 4 + [2] * 4 and all(per_step["kept"])
    assert np.isnan(per_step["score"][:4]).all()  # warm-up: nothing scored yet
    # after warm-up a batch's score is its last mean loss: round 2 trains the hardest two
    hardest = sorted(per_step["mean_loss"][:4])[-2:]
    assert sorted(per_step["score"][4:6]) == pytest.approx(hardest, rel=1e-6)


def test_odm_records_batches_and_the_mixture_per_step(tmp_path):
    store = ScoreStore(tmp_path / "store")
    domains = np.arange(100) % 4
    sampler = ODMSampler(domains, 8, 30, trace=store.trace_writer("odm"))
    for batch in sampler:
        sampler.update(batch, torch.tensor(domains[batch], dtype=torch.float32))
    sampler.close()
    mix = store.sql(
        "SELECT step, sum(pi) AS total, count(*) FILTER (WHERE drawn) AS drawn, "
        "any_value(domain) FILTER (WHERE drawn) AS domain FROM mixture WHERE run = 'odm' "
        "GROUP BY step ORDER BY step"
    ).to_pydict()
    assert mix["step"] == list(range(30)) and set(mix["drawn"]) == {1}
    np.testing.assert_allclose(mix["total"], 1.0)
    np.testing.assert_allclose(
        sampler.mixture_history()[:, 0],
        store.sql("SELECT pi FROM mixture WHERE domain = 0 ORDER BY step")["pi"].to_numpy(),
    )
    traced = store.sql(
        "SELECT step, min(example_id % 4) AS lo, max(example_id % 4) AS hi FROM trace "
        "WHERE run = 'odm' GROUP BY step ORDER BY step"
    ).to_pydict()
    assert traced["lo"] == traced["hi"] == mix["domain"]  # one domain per batch, the drawn one


def test_bad_trace_arguments(tmp_path):
    writer = ScoreStore(tmp_path / "store").trace_writer("r")
    with pytest.raises(TypeError, match="write_steps"):
        TopLossSelector(trace=object())
    with pytest.raises(ValueError, match="trace_every must be an int >= 1"):
        TopLossSelector(trace=writer, trace_every=0)
    sel = TopLossSelector(trace=writer)
    with pytest.raises(ValueError, match="needs the example ids"):
        sel.select(None, torch.rand(10))


def test_hard_batch_resume_stores_each_step_once(tmp_path):
    store = ScoreStore(tmp_path / "store")

    def train(sampler, stop=None):
        done = sampler.steps_done
        for epoch in range(done // sampler.num_batches, 3):
            sampler.set_epoch(epoch)
            for batch in sampler:
                ids = torch.tensor(batch)
                sampler.update(ids, (ids % 7).float() / (1 + done))
                done += 1
                if done == stop:
                    return

    whole = HardBatchSampler(40, 10, 0.5, 3, trace=store.trace_writer("whole"))
    train(whole)
    whole.close()
    first = HardBatchSampler(40, 10, 0.5, 3, trace=store.trace_writer("resumed"))
    train(first, stop=5)
    state = first.state_dict()
    train(first, stop=9)
    first.state_dict()  # steps 5-8 stored, then the process "crashes"
    del first
    gc.collect()
    again = HardBatchSampler(40, 10, 0.5, 3, trace=store.trace_writer("resumed"))
    again.load_state_dict(state)
    train(again)
    again.close()
    query = (
        "SELECT step, example_id, loss, score, epoch FROM trace WHERE run = '{}' "
        "ORDER BY step, example_id"
    )
    got, want = (store.sql(query.format(run)) for run in ("resumed", "whole"))
    assert got.num_rows == want.num_rows == 3 * 4 * 10
    for column in want.column_names:  # NaN scores (warm-up) compare equal here
        np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy())
