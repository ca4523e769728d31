"""Real processes: concurrent writers of one run, and a writer SIGKILLed mid-write."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from winnow.store import ScoreStore

_ROWS_PER_SHARD = 50_000


def _write_shards(root: str, shards: list[int], barrier) -> None:
    store = ScoreStore(root)
    barrier.wait()
    for shard in shards:
        ids = np.arange(shard * _ROWS_PER_SHARD, (shard + 1) * _ROWS_PER_SHARD)
        store.write_table(
            "job",
            {"example_id": ids, "loss": ids * 0.5, "margin": -ids.astype(np.float32)},
            shard=shard,
        )
        store.trace_writer("job", shard=shard).write(0, ids, ids % 2 == 0)


@pytest.mark.timeout(60)
def test_two_processes_write_shards_of_one_run_concurrently(tmp_path):
    root = str(tmp_path / "store")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_write_shards, args=(root, shards, barrier))
        for shards in ([0, 2, 4], [1, 3, 5])
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=50)
        assert worker.exitcode == 0
    store = ScoreStore(root)
    total = 6 * _ROWS_PER_SHARD
    assert store.completed_shards("job", "loss") == set(range(6))
    loss, present = store.read("job", "loss")
    assert present.all() and loss.size == total
    np.testing.assert_array_equal(loss, np.arange(total) * 0.5)
    counts = store.finish_run("job")
    assert counts["row_counts"] == {"loss": total, "margin": total}
    assert counts["trace_rows"] == total
    kept = store.sql("SELECT count(*) AS n FROM trace WHERE kept")["n"][0].as_py()
    assert kept == total // 2
    leftovers = [p for p in Path(root).rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


_KILLED_WRITER = """
import sys
import numpy as np
from winnow.store import ScoreStore
n = int(sys.argv[2])
rng = np.random.default_rng(0)
values = rng.random(n, dtype=np.float32)
ScoreStore(sys.argv[1]).write("r", "loss", rng.permutation(n), values, shard=0)
"""


@pytest.mark.timeout(60)
def test_writer_killed_mid_write_leaves_nothing_visible(tmp_path):
    root = tmp_path / "store"
    store = ScoreStore(root)
    store.write("r", "loss", [0, 1, 2], [1.0, 2.0, 3.0], shard=0)
    store.write("r", "loss", [3], [4.0], shard=1)
    directory = root / "scores" / "run=r" / "metric=loss"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(root), str(20_000_000)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 45
    while not any(p.name.startswith(".tmp-") for p in directory.iterdir()):
        assert child.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    # The interrupted rewrite of shard 0 left only a temporary file; the old shard 0 stands.
    assert [p.name for p in directory.iterdir() if p.name.startswith(".tmp-")]
    assert store.completed_shards("r", "loss") == {0, 1}
    values, present = store.read("r", "loss")
    np.testing.assert_array_equal(values, [1.0, 2.0, 3.0, 4.0])
    assert store.sql("SELECT count(*) AS n FROM scores")["n"][0].as_py() == 4
    assert store.finish_run("r")["row_counts"] == {"loss": 4}
    assert store.remove_temporary_files(older_than_s=3600) == []  # might be a live writer
    removed = store.remove_temporary_files(older_than_s=0)
    assert len(removed) == 1 and ".tmp-" in removed[0]
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
    assert store.read("r", "loss")[1].sum() == 4
