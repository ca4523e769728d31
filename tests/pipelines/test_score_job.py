"""The scoring job on the session's real local Ray, checked against direct torch computations."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.pipelines.scoring_fixtures import BAD_MARKER, make_arrays, mlp, write_parquet
from winnow import pipelines
from winnow.pipelines.scorer import ShardError
from winnow.store import ScoreStore

FIX = "tests.pipelines.scoring_fixtures"
REPO = Path(__file__).resolve().parents[2]
# Ray's own C++ log lines ("[date time E pid tid] core_worker.cc:2465: ..."), which would cut
# through the progress bar.
RAY_LOG_LINE = re.compile(r"^\[[\d-]+ [\d:,]+ \w \d+ \d+\] \w+\.cc:\d+", re.M)


def _expected_loss(x, y, seed=0):
    model = mlp(seed).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    return F.cross_entropy(logits, torch.from_numpy(y), reduction="none").numpy(), logits


def test_import_pipelines_imports_neither_ray_nor_torch():
    """Nor DuckDB: building the `winnow` parser (with the metric registry) stays fast."""
    code = (
        "import sys, winnow.pipelines.cli as cli; cli.build_parser(); "
        "from winnow.pipelines import ScoreJob, register_metric, registered_metrics; "
        "print(sorted(m for m in ('ray', 'torch', 'duckdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.timeout(120)
def test_ray_job_on_parquet_matches_direct_computation(ray_session, tmp_path):
    n = 700
    x, y = make_arrays(n, seed=1)
    ids = np.arange(n, dtype=np.int64)[::-1] * 2 + 5  # sparse, descending: never positions
    data = write_parquet(tmp_path / "data", x, y, ids, files=3, row_group_size=50)
    manifest = pipelines.score(
        str(data),
        f"{FIX}:mlp",
        feature_columns="x",
        metrics="loss,el2n,entropy,margin,grad_norm,embedding",
        store=tmp_path / "store",
        run="r1",
        shard_size=128,
        batch_size=50,
        actors=2,
        num_clusters=4,
        progress=False,
    )
    assert manifest["status"] == "complete"
    expected = {"loss": n, "el2n": n, "entropy": n, "margin": n, "grad_norm": n}
    assert {k: manifest["row_counts"][k] for k in expected} == expected
    assert manifest["vector_rows"]["embedding"] == n
    assert manifest["extra"]["shards"] == 6 and manifest["extra"]["rows_scored"] == n
    assert manifest["config"]["shard_size"] == 128

    store = ScoreStore(tmp_path / "store")
    loss, logits = _expected_loss(x, y)
    values, present = store.read("r1", "loss")
    assert present.sum() == n and set(np.flatnonzero(present)) == set(ids)
    np.testing.assert_allclose(values[ids], loss, rtol=1e-5, atol=1e-6)
    probs = logits.softmax(1).numpy()
    el2n = np.linalg.norm(probs - np.eye(10)[y], axis=1)
    np.testing.assert_allclose(store.read("r1", "el2n")[0][ids], el2n, rtol=1e-5, atol=1e-6)
    entropy = -(probs * np.log(probs)).sum(1)
    np.testing.assert_allclose(store.read("r1", "entropy")[0][ids], entropy, rtol=1e-4)
    gn = store.read("r1", "grad_norm")[0][ids]
    model = mlp(0).eval()
    for row in (0, 333, n - 1):  # exact per-example gradient norm, one backward each
        model.zero_grad()
        F.cross_entropy(
            model(torch.from_numpy(x[row : row + 1])), torch.tensor(y[row : row + 1])
        ).backward()
        norm = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
        np.testing.assert_allclose(gn[row], norm.item(), rtol=1e-4)
    vec_ids, vectors = store.read_vectors("r1", "embedding")
    assert vectors.dtype == np.float16 and vectors.shape == (n, 32)
    with torch.no_grad():
        emb = model.embed(torch.from_numpy(x)).numpy()
    order = np.argsort(ids)
    np.testing.assert_array_equal(vec_ids, ids[order])
    np.testing.assert_allclose(vectors.astype(np.float32), emb[order], rtol=2e-3, atol=2e-3)
    cluster = store.read("r1", "cluster")[0][ids]
    assert set(np.unique(cluster)) <= set(range(4))
    hardest = (
        store.sql(
            "SELECT example_id FROM scores WHERE run = 'r1' AND metric = 'loss' "
            "ORDER BY value DESC LIMIT 5"
        )
        .column("example_id")
        .to_pylist()
    )
    assert hardest == ids[np.argsort(-loss, kind="stable")[:5]].tolist()


@pytest.mark.timeout(120)
def test_failing_model_names_shard_and_id_and_keeps_other_shards(ray_session, tmp_path):
    n, bad_row = 400, 250  # shard 2 of 100-row shards
    x, y = make_arrays(n, seed=2)
    x[bad_row, 0] = BAD_MARKER
    data = write_parquet(tmp_path / "data", x, y, files=1)
    flag = tmp_path / "broken"
    flag.touch()
    args = dict(
        feature_columns="x",
        store=tmp_path / "store",
        run="fails",
        shard_size=100,
        batch_size=32,
        actors=2,
        progress=False,
    )
    model = pipelines.ModelSpec(f"{FIX}:exploding_mlp", kwargs={"flag": str(flag)})
    with pytest.raises(ShardError, match=rf"shard 2 failed, first failing example_id {bad_row}"):
        pipelines.score(str(data), model, **args)
    store = ScoreStore(tmp_path / "store")
    committed = store.completed_shards("fails", "loss")
    assert 2 not in committed
    manifest = store.manifest("fails")
    assert manifest["status"] == "failed" and manifest["extra"]["failed_id"] == bad_row
    loss, _ = _expected_loss(x, y)
    values, present = store.read("fails", "loss", num_examples=n)
    assert present.sum() == 100 * len(committed)
    np.testing.assert_allclose(values[present], loss[present], rtol=1e-5, atol=1e-6)

    # Each actor's first shard is 0 or 1, so shard 2 failed after one of them committed.
    with pytest.raises(ValueError, match=r"failed after committing \d of 4 shards; pass --resume"):
        pipelines.score(str(data), model, **args)
    flag.unlink()  # "fix" the model, then continue the run without redoing committed shards
    manifest = pipelines.score(str(data), model, resume=True, executor="inline", **args)
    assert manifest["status"] == "complete" and manifest["row_counts"]["loss"] == n
    assert manifest["extra"]["shards_skipped"] == len(committed)
    assert manifest["extra"]["error"] is None and manifest["extra"]["failed_id"] is None
    values, present = store.read("fails", "loss")
    assert present.all()
    np.testing.assert_allclose(values, loss, rtol=1e-5, atol=1e-6)


def test_model_that_builds_on_the_driver_but_not_where_it_runs_is_a_shard_error(tmp_path):
    """The driver checks the model before anything runs (tests/pipelines/test_preflight.py);
    a factory that still fails where the shards are scored is reported as a ShardError."""
    source = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 200})
    with pytest.raises(ShardError, match="could not build the model.*weights file missing"):
        pipelines.score(
            source, f"{FIX}:mlp_only_on_meta", store=tmp_path / "s", run="r", shard_size=100,
            executor="inline", progress=False,
        )  # fmt: skip
    assert ScoreStore(tmp_path / "s").manifest("r")["status"] == "failed"


def test_resume_rescores_only_missing_shards_and_checks_identity(tmp_path):
    args = dict(
        store=tmp_path / "store", run="r", shard_size=100, executor="inline", progress=False
    )
    source = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 300})
    first = pipelines.score(source, f"{FIX}:mlp", **args)
    store = ScoreStore(tmp_path / "store")
    before, _ = store.read("r", "loss")
    shard_file = tmp_path / "store/scores/run=r/metric=loss/shard-00001.parquet"
    assert shard_file.exists()
    shard_file.unlink()  # as if the job died before committing shard 1
    again = pipelines.score(source, f"{FIX}:mlp", resume=True, **args)
    assert again["extra"]["shards_skipped"] == 2 and again["extra"]["rows_scored"] == 100
    assert again["row_counts"]["loss"] == 300 and again["created"] == first["created"]
    np.testing.assert_array_equal(store.read("r", "loss")[0], before)
    with pytest.raises(ValueError, match="model differs"):
        pipelines.score(source, f"{FIX}:mlp_with_loss", resume=True, **args)
    with pytest.raises(ValueError, match="metrics differs"):
        pipelines.score(source, f"{FIX}:mlp", resume=True, metrics=["el2n"], **args)
    with pytest.raises(ValueError, match="embed_layer differs"):
        pipelines.score(source, f"{FIX}:mlp", resume=True, embed_layer="body", **args)
    with pytest.raises(ValueError, match="source differs"):
        other = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 300, "seed": 1})
        pipelines.score(other, f"{FIX}:mlp", resume=True, **args)
    with pytest.raises(ValueError, match=r"the data changed since the run began \(rows 300 -> "):
        bigger = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 301})
        pipelines.score(bigger, f"{FIX}:mlp", resume=True, **args)
    # What may change on resume: execution options (not part of the resume identity)
    again = pipelines.score(source, f"{FIX}:mlp", resume=True, **{**args, "shard_size": None},
                            batch_size=7)  # fmt: skip
    assert again["config"]["shard_size"] == 100 and again["extra"]["rows_scored"] == 0


def test_unlabelled_parquet_allows_only_label_free_metrics(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, _ = make_arrays(20)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 40)
    pq.write_table(pa.table({"example_id": np.arange(20), "x": flat}), tmp_path / "u.parquet")
    args = dict(feature_columns="x", label_column=None, store=tmp_path / "s", executor="inline")
    with pytest.raises(ValueError, match="need labels"):
        pipelines.score(str(tmp_path / "u.parquet"), f"{FIX}:mlp", run="a", **args)
    assert not (tmp_path / "s").exists()  # refused before anything is written
    manifest = pipelines.score(
        str(tmp_path / "u.parquet"),
        f"{FIX}:mlp",
        run="b",
        metrics="entropy",
        progress=False,
        **args,
    )
    assert manifest["row_counts"] == {"entropy": 20}


@pytest.mark.timeout(120)
def test_cli_job_joins_a_running_cluster_with_address(ray_session, tmp_path):
    """`--address` joins an existing Ray (here the session's) and leaves it running; the data
    is a map-style Dataset built by a factory inside each actor."""
    import os

    x, y = make_arrays(300, seed=0)  # = tensor_dataset(300): a map-style Dataset source
    address = ray_session.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [
        sys.executable, "-m", "winnow.pipelines.job", "--data", f"{FIX}:tensor_dataset",
        "--model", f"{FIX}:mlp", "--store", str(tmp_path / "store"), "--run", "joined",
        "--address", address, "--shard-size", "100",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "300 rows scored on 2 Ray actors (1 node) in" in done.stderr and "rows/s" in done.stderr
    # (Ray Data's restartable actors made Ray log "Actor with class name ... has constructor
    # arguments in the object store" on every run.)
    assert not RAY_LOG_LINE.search(done.stderr), done.stderr[-3000:]
    assert ray_session.is_initialized() and ray_session.cluster_resources()["CPU"] == 2
    store = ScoreStore(tmp_path / "store")
    manifest = store.manifest("joined")
    assert manifest["status"] == "complete" and "ray_start_s" in manifest["extra"]
    loss, _ = _expected_loss(x, y)
    np.testing.assert_allclose(store.read("joined", "loss")[0], loss, rtol=1e-5, atol=1e-6)


def _run_script(script: str, store: Path, timeout: float) -> tuple[Any, dict]:
    """Run ``script`` (with ``store`` as its argument) in a fresh Python, from the repository;
    returns the finished process and the JSON object on its last line of output."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(store)], cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(done.stdout.strip().splitlines()[-1])


_OWN_RAY_JOB = """
import json, sys
import ray
import ray._private.node as node
from winnow import pipelines

monitor_at_shutdown = []
kill_all = node.Node.kill_all_processes

def spy(self, *args, **kwargs):
    monitor_at_shutdown.extend(i.process.poll() for i in self.all_processes.get("monitor", ()))
    return kill_all(self, *args, **kwargs)

node.Node.kill_all_processes = spy
source = pipelines.DatasetSource("tests.pipelines.scoring_fixtures:tensor_dataset", {"n": 200})
manifest = pipelines.score(
    source, "tests.pipelines.scoring_fixtures:mlp", store=sys.argv[1], run="own",
    shard_size=100, executor="ray", progress=False,
)
print(json.dumps({"monitor": monitor_at_shutdown, "rows": manifest["row_counts"]["loss"],
                  "shutdown_s": manifest["extra"]["ray_shutdown_s"],
                  "still_up": ray.is_initialized()}))
"""


@pytest.mark.timeout(120)
def test_a_job_that_starts_its_own_ray_ends_the_autoscaler_monitor_before_shutdown(tmp_path):
    """Ray's shutdown stops the GCS, then gives the monitor a one-second grace period that its
    SIGTERM handler (reporting to that GCS) always uses up; the job ends the monitor first."""
    done, report = _run_script(_OWN_RAY_JOB, tmp_path / "store", timeout=110)
    # -9: killed by the job before Ray's own shutdown reached it (Ray's SIGTERM would be -15)
    assert report["monitor"] == [-9], report
    assert report["rows"] == 200 and report["shutdown_s"] >= 0 and not report["still_up"]
    assert not RAY_LOG_LINE.search(done.stderr), done.stderr[-3000:]


_TWO_NODE_JOB = """
import json, sys
from ray.cluster_utils import Cluster
from winnow import pipelines

# A head without CPUs and two worker nodes of one CPU each, all on this machine: each actor
# of one CPU can only be placed on a node of its own.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
for _ in range(2):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    source = pipelines.DatasetSource("tests.pipelines.scoring_fixtures:tensor_dataset", {"n": 600})
    manifest = pipelines.score(
        source, "tests.pipelines.scoring_fixtures:mlp", store=sys.argv[1], run="two-nodes",
        shard_size=50, address=cluster.address, actors=2, cpus_per_actor=1.0,
    )
finally:
    cluster.shutdown()
print(json.dumps(manifest["extra"]))
"""


@pytest.mark.timeout(180)
def test_a_job_on_a_two_node_cluster_scores_each_shard_once_on_both_nodes(tmp_path):
    """A real multi-node Ray (head + two worker nodes on this machine, ``ray.cluster_utils``)
    joined with ``address``: the actors land on both nodes, the store gets every row once."""
    done, extra = _run_script(_TWO_NODE_JOB, tmp_path / "store", timeout=170)
    assert extra["actors"] == 2 and extra["ray_nodes"] == 2, extra
    assert extra["rows_scored"] == 600 and extra["shards"] == 12
    assert "600 rows scored on 2 Ray actors (2 nodes) in" in done.stderr
    assert not RAY_LOG_LINE.search(done.stderr), done.stderr[-3000:]
    x, y = make_arrays(600, seed=0)
    loss, _ = _expected_loss(x, y)
    store = ScoreStore(tmp_path / "store")
    values, present = store.read("two-nodes", "loss")
    assert present.all()
    np.testing.assert_allclose(values, loss, rtol=1e-5, atol=1e-6)
    counts = store.sql(
        "SELECT count(*) AS n, count(DISTINCT example_id) AS ids FROM scores "
        "WHERE run = 'two-nodes' AND metric = 'loss'"
    ).to_pylist()
    assert counts == [{"n": 600, "ids": 600}]


@pytest.mark.timeout(120)
def test_a_pool_the_user_sized_to_every_cpu_scores_everything(ray_session, tmp_path):
    """2 actors x 1 CPU on the session's 2-CPU Ray: the plain actor pool does not deadlock
    (the Ray Data pool this job used before did, so such a pool used to be refused)."""
    x, y = make_arrays(400, seed=0)
    source = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 400})
    manifest = pipelines.score(
        source, f"{FIX}:mlp", store=tmp_path / "s", run="all-cpus", shard_size=50, actors=2,
        cpus_per_actor=1.0, progress=False,
    )  # fmt: skip
    assert manifest["status"] == "complete" and manifest["extra"]["shards"] == 8
    loss, _ = _expected_loss(x, y)
    values, present = ScoreStore(tmp_path / "s").read("all-cpus", "loss")
    assert present.all()
    np.testing.assert_allclose(values, loss, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_a_pool_larger_than_the_joined_cluster_is_refused_before_anything_is_written(
    ray_session, tmp_path
):
    """A joined Ray's CPUs are known only once joined; the refusal still comes before the
    store is touched: ``overwrite`` keeps the old run, a new run leaves no manifest."""
    source = pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 200})
    args = dict(store=tmp_path / "s", shard_size=100, progress=False)
    first = pipelines.score(source, f"{FIX}:mlp", run="kept", executor="inline", **args)
    store = ScoreStore(tmp_path / "s")
    before = store.read("kept", "loss")[0]
    too_big = dict(actors=3, cpus_per_actor=1.0, executor="ray")
    with pytest.raises(ValueError, match="3 actors x 1 CPUs need 3 CPUs; the Ray cluster has 2"):
        pipelines.score(source, f"{FIX}:mlp", run="kept", overwrite=True, **too_big, **args)
    assert store.manifest("kept") == first
    np.testing.assert_array_equal(store.read("kept", "loss")[0], before)
    with pytest.raises(ValueError, match="need 3 CPUs"):
        pipelines.score(source, f"{FIX}:mlp", run="new", **too_big, **args)
    assert "new" not in {row["name"] for row in store.runs()}
    assert ray_session.is_initialized()  # the session's Ray: used, left running


@pytest.mark.timeout(120)
def test_an_actor_runs_the_torch_threads_it_is_given_not_what_ray_set(ray_session, tmp_path):
    """run_ray gives each actor ceil(its CPUs) threads; Ray alone would set 1 for 0.5 CPU."""
    from winnow.pipelines.jobspec import ScoreJob, ShardPlan
    from winnow.pipelines.scorer import ShardScorer

    job = ScoreJob(
        data=pipelines.DatasetSource(f"{FIX}:tensor_dataset", {"n": 10}), model=f"{FIX}:mlp",
        store=tmp_path / "s", run="r", progress=False,
    )  # fmt: skip
    plan = ShardPlan(job=job, num_rows=10, shard_size=10)
    actor = ray_session.remote(ShardScorer).options(num_cpus=0.5).remote(plan, threads=2)
    try:
        ready = ray_session.get(actor.ready.remote())
        assert ready["threads"] == 2
        assert ready["node"] == ray_session.get_runtime_context().get_node_id()
    finally:
        ray_session.kill(actor)


def test_parquet_without_id_column_is_scored_by_row_position(tmp_path):
    x, y = make_arrays(150, seed=6)
    data = write_parquet(tmp_path / "data", x, y, files=2, row_group_size=40, with_ids=False)
    manifest = pipelines.score(
        str(data), f"{FIX}:mlp", feature_columns="x", store=tmp_path / "s", run="r",
        shard_size=64, executor="inline", progress=False,
    )  # fmt: skip
    assert manifest["num_examples"] == 150 and manifest["row_counts"] == {"loss": 150}
    values, present = ScoreStore(tmp_path / "s").read("r", "loss")
    assert present.all()
    np.testing.assert_allclose(values, _expected_loss(x, y)[0], rtol=1e-5, atol=1e-6)


def test_resume_is_refused_when_the_data_changed_since_the_run_began(tmp_path):
    """Shards are row positions: had the resume gone on, shard 2 would score rows of the
    reordered file, some ids twice and others never, and the run would end "complete"."""
    import pyarrow.parquet as pq

    x, y = make_arrays(300, seed=8)
    data = write_parquet(tmp_path / "data", x, y, files=2, row_group_size=50)
    args = dict(feature_columns="x", store=tmp_path / "s", run="r", shard_size=100,
                executor="inline", progress=False)  # fmt: skip
    pipelines.score(str(data), f"{FIX}:mlp", **args)
    store = ScoreStore(tmp_path / "s")
    shard_2 = tmp_path / "s/scores/run=r/metric=loss/shard-00002.parquet"
    shard_2.unlink()  # as if the job was killed before committing shard 2
    part = data / "part-001.parquet"
    table = pq.read_table(part)
    pq.write_table(table.take(np.arange(table.num_rows)[::-1]), part, row_group_size=50)
    with pytest.raises(ValueError) as info:
        pipelines.score(str(data), f"{FIX}:mlp", resume=True, **args)
    message = str(info.value)
    assert "cannot resume run 'r': the data changed since the run began" in message
    assert "part-001.parquet: " in message and "part-000.parquet" not in message
    assert "without --resume under a new --run name, or with --overwrite" in message
    assert not shard_2.exists() and store.manifest("r")["status"] == "complete"
