"""Run manifests: begin, finish (recount from files), listing, resume."""

import json

import pytest

from winnow.store import UnknownRunError


def test_begin_then_finish_records_counts_from_files(store):
    begun = store.begin_run(
        "r",
        config={"batch_size": 256},
        model={"name": "SmallCNN", "sha": "abc"},
        num_examples=100,
        metrics=["loss"],
    )
    assert begun["status"] == "running" and begun["row_counts"] == {}
    assert store.manifest("r") == begun
    store.write("r", "loss", range(10), [0.5] * 10, shard=0)
    store.write("r", "loss", range(10, 15), [0.5] * 5, shard=1)
    store.write("r", "margin", range(3), [0.1] * 3)
    store.trace_writer("r").write(0, [1, 2], [True, False])
    store.write_vectors("r", "embedding", [0, 1], [[1.0, 0.0], [0.0, 1.0]])
    done = store.finish_run("r", extra={"seconds": 1.5})
    assert done["status"] == "complete" and done["finished"] is not None
    assert done["row_counts"] == {"loss": 15, "margin": 3}
    assert done["shards"] == {"loss": 2, "margin": 1}
    assert done["trace_rows"] == 2 and done["trace_epochs"] == 1
    assert done["vector_rows"] == {"embedding": 2}
    assert done["metrics"] == ["loss", "margin"]
    assert done["extra"] == {"seconds": 1.5}
    assert done["config"] == {"batch_size": 256} and done["model"]["sha"] == "abc"
    with open(f"{store.root}/runs/r.json") as f:
        assert json.load(f) == done


def test_resumed_run_keeps_created_and_counts_rewrites_once(store):
    first = store.begin_run("r")
    store.write("r", "loss", [0, 1], [1.0, 2.0], shard=0)
    store.finish_run("r", status="failed")
    again = store.begin_run("r")
    assert again["created"] == first["created"] and again["resumed"] == 1
    store.write("r", "loss", [0, 1], [1.0, 2.0], shard=0)  # the retried shard
    assert store.finish_run("r")["row_counts"] == {"loss": 2}


def test_runs_lists_manifests_and_data_only_runs(store):
    store.begin_run("b", kind="training")
    store.write("a", "loss", [0], [1.0])
    runs = store.runs()
    assert [r["name"] for r in runs] == ["a", "b"]
    assert runs[0]["status"] == "unknown" and runs[1]["status"] == "running"
    assert store.finish_run("a")["row_counts"] == {"loss": 1}  # adopts a data-only run


def test_bad_run_arguments(store):
    with pytest.raises(ValueError, match="run kind must be one of"):
        store.begin_run("r", kind="weird")
    with pytest.raises(ValueError, match="num_examples must be >= 0"):
        store.begin_run("r", num_examples=-1)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.begin_run("r", config={"f": object()})
    with pytest.raises(ValueError, match="invalid metric name"):
        store.begin_run("r", metrics=["bad/name"])
    with pytest.raises(UnknownRunError):
        store.finish_run("never")
    store.begin_run("r")
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_run("r", status="done")
    assert store.manifest("r")["status"] == "running"


def test_completed_shards_of_a_new_run_is_empty(store):
    assert store.completed_shards("fresh", "loss") == set()
    store.write("fresh", "loss", [0], [1.0], shard=4)
    store.write("fresh", "loss", [1], [1.0], shard=11)
    assert store.completed_shards("fresh", "loss") == {4, 11}
    assert store.completed_shards("fresh", "margin") == set()
