"""Unknown names, corrupt or foreign files, and duplicate ids across shards."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.store import CorruptFileError, UnknownMetricError, UnknownRunError


@pytest.fixture
def two_runs(store):
    store.write("good", "loss", [0, 1, 2], [1.0, 2.0, 3.0])
    store.write("bad", "loss", [0, 1], [1.0, 2.0], shard=0)
    store.write("bad", "loss", [2, 3], [1.0, 2.0], shard=1)
    return store


def _shard_path(store, run, metric, shard):
    return f"{store.root}/scores/run={run}/metric={metric}/shard-{shard:05d}.parquet"


def test_unknown_run_and_metric(two_runs):
    with pytest.raises(UnknownRunError, match=r"unknown run 'nope'.*\['bad', 'good'\]"):
        two_runs.read("nope", "loss")
    with pytest.raises(UnknownMetricError, match=r"run 'good' has no metric 'margin'.*\['loss'\]"):
        two_runs.read("good", "margin")
    # Both are lookups and bad input: callers may catch either.
    with pytest.raises(KeyError):
        two_runs.read_table("nope")
    with pytest.raises(ValueError):
        two_runs.read_vectors("good", "embedding")
    with pytest.raises(UnknownRunError, match="no manifest"):
        two_runs.manifest("nope")


def test_truncated_file_names_file_and_other_runs_stay_readable(two_runs):
    path = _shard_path(two_runs, "bad", "loss", 1)
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(CorruptFileError, match="shard-00001.parquet") as info:
        two_runs.read("bad", "loss")
    assert info.value.path == path
    np.testing.assert_array_equal(two_runs.read("good", "loss")[0], [1.0, 2.0, 3.0])
    with pytest.raises(CorruptFileError, match="shard-00001.parquet"):
        two_runs.row_counts("bad")


def test_foreign_parquet_file_is_rejected_by_schema(two_runs):
    path = _shard_path(two_runs, "bad", "loss", 1)
    pq.write_table(pa.table({"id": [1, 2], "score": [0.1, 0.2]}), path)
    with pytest.raises(CorruptFileError, match="shard-00001.parquet"):
        two_runs.read("bad", "loss")
    pq.write_table(pa.table({"example_id": [1, 2], "value": [0.1, 0.2]}), path)  # float64
    with pytest.raises(CorruptFileError, match="expected columns"):
        two_runs.read("bad", "loss")
    assert two_runs.read("good", "loss")[1].all()


def test_schema_valid_file_with_negative_ids_is_refused(two_runs):
    path = _shard_path(two_runs, "bad", "loss", 1)
    table = pa.table({"example_id": [-4, 2], "value": pa.array([0.1, 0.2], pa.float32())})
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=r"shard-00001.parquet stores example_ids in \[-4, 2\]"):
        two_runs.read("bad", "loss")


def test_not_parquet_at_all(two_runs):
    with open(_shard_path(two_runs, "bad", "loss", 1), "wb") as f:
        f.write(b"hello, I am a CSV file\n1,2,3\n")
    with pytest.raises(CorruptFileError, match="shard-00001.parquet"):
        two_runs.read_table("bad", "loss")


def test_same_id_in_two_shards_is_reported(store):
    store.write("r", "loss", [0, 1, 2], [1.0, 2.0, 3.0], shard=0)
    store.write("r", "loss", [2, 3], [4.0, 5.0], shard=1)
    with pytest.raises(ValueError, match=r"1 example_id\(s\) are stored by more than one"):
        store.read("r", "loss")
    store.write_vectors("r", "emb", [0, 1], np.ones((2, 2)), shard=0)
    store.write_vectors("r", "emb", [1], np.ones((1, 2)), shard=1)
    with pytest.raises(ValueError, match=r"\[1\] stored by more than one shard"):
        store.read_vectors("r", "emb")


def test_leftover_temporary_files_are_invisible(store):
    store.write("r", "loss", [0, 1], [1.0, 2.0])
    directory = f"{store.root}/scores/run=r/metric=loss"
    pq.write_table(
        pa.table({"example_id": [5], "value": pa.array([9.0], pa.float32())}),
        f"{directory}/.tmp-deadbeef-shard-00001.parquet",
    )
    with open(f"{directory}/.tmp-cafe-shard-00002.parquet", "wb") as f:
        f.write(b"PAR1 half a file")
    assert store.completed_shards("r", "loss") == {0}
    assert store.read("r", "loss")[1].sum() == 2
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 2
