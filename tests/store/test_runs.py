"""Run manifests: begin, finish (recount from files), listing, resume."""

import json

import pytest

from winnow.store import StoreWarning, UnknownRunError


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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a winnow manifest"),
        ('{"name": "b", "num_examples": "ten"}', "num_examples"),
        ('{"name": "b", "row_counts": {"loss": 1.5}}', "row_counts"),
        ('{"name": "b", "metrics": "loss"}', "metrics"),
        ('{"name": 7}', "name"),
    ],
)
def test_a_bad_manifest_is_skipped_with_a_warning_naming_it(store, text, reason):
    for run in ("a", "b"):
        store.begin_run(run, num_examples=2)
        store.write(run, "loss", [0, 1], [1.0, 2.0])
        store.finish_run(run)
    path = f"{store.root}/runs/b.json"
    with open(path, "w") as f:
        f.write(text)
    with pytest.warns(StoreWarning, match=rf"skipping run manifest {path}: .*{reason}"):
        runs = store.runs()
    # b still has data, so it is listed like a run without a manifest.
    assert [(r["name"], r["status"]) for r in runs] == [("a", "complete"), ("b", "unknown")]
    with pytest.warns(StoreWarning, match="b.json"):
        counted = store.sql(
            "SELECT run, status, count(*) AS n FROM runs JOIN scores USING (run) "
            "GROUP BY ALL ORDER BY run"
        )
    assert counted.to_pylist() == [
        {"run": "a", "status": "complete", "n": 2},
        {"run": "b", "status": "unknown", "n": 2},
    ]
    with pytest.raises(ValueError, match=reason):
        store.manifest("b")
