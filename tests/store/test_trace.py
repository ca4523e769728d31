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
