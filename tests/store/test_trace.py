"""TraceWriter: per-epoch sampler decisions, as samplers call it (duck-typed)."""

import numpy as np
import pytest
import torch


def test_epochs_and_shards_accumulate_and_rewrites_replace(store):
    rank0 = store.trace_writer("train", shard=0)
    rank1 = store.trace_writer("train", shard=1)
    assert rank0.write(0, [0, 2], [True, False], [1.5, 0.0], [0.3, 0.1]) == 2
    rank1.write(0, np.array([1, 3]), np.array([True, True]))
    rank0.write(1, torch.tensor([0, 2]), torch.tensor([False, True]), loss=torch.tensor([0.2, 0.4]))
    rank0.write(1, [0, 2], [True, True])  # a resumed epoch replaces its file
    table = store.read_trace("train").sort_by([("epoch", "ascending"), ("example_id", "ascending")])
    assert table.column_names == ["epoch", "example_id", "loss", "kept", "weight"]
    assert table["epoch"].to_pylist() == [0, 0, 0, 0, 1, 1]
    assert table["kept"].to_pylist() == [True, True, False, True, True, True]
    assert table["weight"].to_pylist() == [1.5, 1.0, 0.0, 1.0, 1.0, 1.0]
    loss = table["loss"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(loss[[0, 2]], [0.3, 0.1], rtol=1e-6)
    assert np.isnan(loss[[1, 3, 4, 5]]).all()
    assert store.row_counts("train")["trace_rows"] == 6


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epoch": -1}, ValueError, "epoch must be a non-negative int, got -1"),
        ({"epoch": 1.0}, TypeError, "epoch must be a non-negative int"),
        ({"example_id": [0, 0]}, ValueError, "duplicated"),
        ({"kept": [0.5, 1.0]}, TypeError, "kept must be booleans"),
        ({"kept": [2, 1]}, TypeError, "kept must be booleans"),
        ({"weight": [np.nan, 1.0]}, ValueError, "weight has 1 non-finite"),
        ({"loss": [1.0, 2.0, 3.0]}, ValueError, "loss has 3"),
    ],
)
def test_bad_trace_input(store, kwargs, error, match):
    args = {"epoch": 0, "example_id": [0, 1], "kept": [True, False], "weight": None, "loss": None}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        store.trace_writer("train").write(**args)
    assert store.runs() == []


def test_trace_writer_validates_run_and_shard(store):
    with pytest.raises(ValueError, match="invalid run name"):
        store.trace_writer("no/slash")
    with pytest.raises(ValueError, match="shard must be a non-negative int"):
        store.trace_writer("train", shard=-2)


def _step_rows(store, run="sel"):
    return store.sql(
        f"SELECT step, epoch, example_id, score, loss, kept, weight FROM trace "
        f"WHERE run = '{run}' AND step IS NOT NULL ORDER BY step, example_id"
    ).to_pydict()


def test_step_records_share_the_trace_view_with_epoch_records(store):
    writer = store.trace_writer("sel")
    steps = np.repeat([0, 1], 3)
    ids = np.array([5, 6, 7, 5, 8, 9])  # id 5 is a candidate in both steps
    kept = np.array([True, False, False, False, True, True])
    writer.write_steps(steps, ids, kept, weight=[1.0, 0, 0, 0, 2.0, 1.0], score=np.arange(6.0))
    writer.write_steps([2, 2], torch.tensor([1, 1]), [True, True], loss=[0.5, 0.5], epoch=3)
    writer.write(0, [0, 1], [True, False])  # an epoch record in the same run
    got = _step_rows(store)
    assert got["step"] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert got["example_id"] == [5, 6, 7, 5, 8, 9, 1, 1]
    assert got["epoch"] == [None] * 6 + [3, 3]
    assert got["weight"] == [1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0]
    assert got["score"][:6] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    epoch_rows = store.sql("SELECT step, score, loss FROM trace WHERE epoch = 0").to_pylist()
    assert [r["step"] for r in epoch_rows] == [None, None]  # epoch samplers: no step
    assert store.row_counts("sel")["trace_rows"] == 10


def test_the_writer_begins_and_finishes_the_runs_manifest(store):
    with store.trace_writer("sel") as writer:
        writer.write_steps([0, 0], [1, 2], [True, False])
        assert store.manifest("sel")["status"] == "running"
        assert store.manifest("sel")["kind"] == "trace"
        writer.write_noise_scale([9], [12.5], [1.0], [12.5], [64], "two_batch")
        writer.write_mixture([0, 0], [0, 1], [0.25, 0.75], [False, True])
    done = store.manifest("sel")
    assert done["status"] == "complete" and done["trace_rows"] == 2
    assert done["noise_scale_rows"] == 1 and done["mixture_rows"] == 2
    assert store.sql("SELECT status FROM runs WHERE run = 'sel'")["status"].to_pylist() == [
        "complete"
    ]
    writer.write_steps([1], [3], [True])  # written again: running again, counted as resumed
    assert store.manifest("sel")["status"] == "running" and store.manifest("sel")["resumed"] == 1
    with pytest.raises(RuntimeError), store.trace_writer("boom") as failing:
        failing.write_steps([0], [1], [True])
        raise RuntimeError("training crashed")
    assert store.manifest("boom")["status"] == "failed"
    # a run begun by its owner keeps its kind; shard 1 never touches the manifest
    store.begin_run("owned", kind="training", num_examples=10)
    store.trace_writer("owned").write_steps([0], [1], [True])
    store.trace_writer("ranked", shard=1).write_steps([0], [1], [True])
    assert store.manifest("owned")["kind"] == "training"
    assert [r["status"] for r in store.runs() if r["name"] == "ranked"] == ["unknown"]


def test_discard_removes_only_this_shards_files_from_a_step_on(store):
    rank0, rank1 = store.trace_writer("sel", shard=0), store.trace_writer("sel", shard=1)
    for start in (0, 10, 20):
        rank0.write_steps(np.arange(start, start + 10), np.arange(10), [True] * 10)
        rank1.write_steps(np.arange(start, start + 10), np.arange(10), [True] * 10)
    rank0.write_noise_scale([19], [1.0], [1.0], [1.0], [8], "per_example")
    assert rank0.discard("steps", 10) == 2
    assert rank0.discard("steps", 10) == 0
    per_rank = store.sql("SELECT count(*) AS n FROM trace WHERE step >= 10")["n"][0].as_py()
    assert per_rank == 20  # rank 1's steps 10..29 only
    assert store.sql("SELECT count(*) AS n FROM noise_scale")["n"][0].as_py() == 1
    with pytest.raises(ValueError, match="kind must be one of"):
        rank0.discard("scores", 0)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda w: w.write_steps([1, 0], [0, 1], [True, True]), ValueError, "non-decreasing"),
        (lambda w: w.write_steps([0], [-1], [True]), ValueError, "non-negative"),
        (lambda w: w.write_steps([0, 0], [0, 1], [True]), ValueError, "mismatched lengths"),
        (lambda w: w.write_steps([0], [0], [True], epoch=-1), ValueError, "epoch"),
        (lambda w: w.write_mixture([0], [0], [1.5], [True]), ValueError, "probabilities"),
        (lambda w: w.write_noise_scale([0], [1.0], [1.0], [1.0], [8], ""), TypeError, "estimator"),
    ],
)
def test_bad_step_input_writes_nothing(store, call, error, match):
    with pytest.raises(error, match=match):
        call(store.trace_writer("sel"))
    assert store.runs() == []


def test_step_views_off_the_local_disk(tmp_path):
    import pyarrow.fs as pafs

    from winnow.store import ScoreStore

    (tmp_path / "fs").mkdir()
    store = ScoreStore((pafs.SubTreeFileSystem(str(tmp_path / "fs"), pafs.LocalFileSystem()), "s"))
    writer = store.trace_writer("sel")
    writer.write_steps([0, 0, 1], [3, 4, 3], [True, False, True], score=[0.5, 0.1, 0.7])
    writer.write_noise_scale([0], [np.inf], [-1.0], [3.0], [4], "two_batch")
    got = store.sql("SELECT step, example_id, score FROM trace ORDER BY step, example_id")
    assert got["example_id"].to_pylist() == [3, 4, 3]
    assert store.sql("SELECT b_simple FROM noise_scale")["b_simple"].to_pylist() == [np.inf]
