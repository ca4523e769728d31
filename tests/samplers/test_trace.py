"""Per-epoch decisions flushed to the real score store, answerable with `winnow sql`."""

import csv
import io

import numpy as np
import torch

from winnow.pipelines.cli import main
from winnow.samplers import InfoBatchSampler, PrunedSampler
from winnow.store import ScoreStore


def test_which_examples_were_pruned_in_epoch_3(tmp_path, capsys):
    n = 400
    store = ScoreStore(tmp_path / "store")
    s = InfoBatchSampler(n, 6, prune_ratio=0.5, seed=1, trace=store.trace_writer("ib"))
    rng = np.random.default_rng(0)
    plans, snapshots = {}, {}
    for epoch in range(6):
        s.set_epoch(epoch)
        plans[epoch] = set(s.plan.ids.tolist())
        snapshots[epoch] = s.scores.values.copy()
        ids = torch.from_numpy(s.rank_plan().astype(np.int64))
        s.update(ids, torch.from_numpy(rng.exponential(size=len(ids)).astype(np.float32)))
    query = "SELECT example_id FROM trace WHERE run = 'ib' AND epoch = 3 AND NOT kept"
    assert main(["sql", "--store", str(tmp_path / "store"), "--format", "csv", query]) == 0
    pruned = {int(r["example_id"]) for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert pruned == set(range(n)) - plans[3] and len(pruned) > 50

    rows = store.sql(
        "SELECT epoch, example_id, kept, weight, loss FROM trace WHERE run = 'ib' "
        "ORDER BY epoch, example_id"
    ).to_pydict()
    epoch = np.array(rows["epoch"])
    assert np.bincount(epoch).tolist() == [n] * 6  # every example, every epoch
    weight, loss = np.array(rows["weight"]), np.array(rows["loss"], dtype=float)
    assert np.isnan(loss[epoch == 0]).all()  # no score before any feedback
    e3 = epoch == 3
    np.testing.assert_allclose(loss[e3], snapshots[3])  # the score the decision used
    below = snapshots[3] < snapshots[3].mean(dtype=np.float64)
    kept = np.array(rows["kept"])[e3]
    np.testing.assert_array_equal(weight[e3][kept & below], 2.0)
    np.testing.assert_array_equal(weight[e3][kept & ~below], 1.0)
    np.testing.assert_array_equal(weight[e3][~kept], 0.0)


def test_static_pruning_trace_records_the_stored_scores(tmp_path):
    store = ScoreStore(tmp_path / "store")
    scores = np.linspace(0, 1, 50)
    p = PrunedSampler(scores, 10, trace=store.trace_writer("static"))
    p.set_epoch(0)
    got = store.sql(
        "SELECT example_id, loss FROM trace WHERE run = 'static' AND kept ORDER BY example_id"
    ).to_pydict()
    assert got["example_id"] == list(range(40, 50))
    np.testing.assert_allclose(got["loss"], scores[40:], rtol=1e-6)
