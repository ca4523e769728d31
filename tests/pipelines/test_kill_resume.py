"""Exactly-once: SIGKILL the job's driver (with its embedded Ray) part-way, resume, compare.

The driver runs as ``python -m winnow.pipelines.job`` in its own session, so that every Ray
process it started (GCS, raylet, workers, agents) can be found by session id: after each SIGKILL
the job's own watchdog must have ended all of them within a few seconds. The test only kills
what is left after it has failed.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.pipelines.scoring_fixtures import make_arrays, write_parquet
from winnow import pipelines
from winnow.store import ScoreStore

N, SHARD = 1800, 100  # 18 shards
REPO = Path(__file__).resolve().parents[2]


def _job_args(data: Path, store: Path, run: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "winnow.pipelines.job",
        "--data", str(data), "--feature-columns", "x",
        "--model", "tests.pipelines.scoring_fixtures:slow_mlp",
        "--metrics", "loss,el2n", "--store", str(store), "--run", run,
        "--shard-size", str(SHARD), "--batch-size", "50",
        "--num-cpus", "2", "--actors", "2", "--quiet", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    return env


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``: what the killed driver left behind."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True
    ).stdout
    rows = (line.split() for line in out.splitlines())
    return [int(pid) for pid, s, stat in rows if int(s) == sid and not stat.startswith("Z")]


def _start(cmd: list[str]) -> subprocess.Popen:
    # stderr goes to a file: an unread pipe could fill up and stall the driver.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=log
    )
    proc.log = log
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()[-3000:]


def _watchdogs(driver: int) -> list[int]:
    """The job's Ray watchdog (in a session of its own), while it lives."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    rows = (line.split(None, 2) for line in out.splitlines())
    return [
        int(pid)
        for pid, stat, args in rows
        if "ray_watchdog.py" in args and f" {driver} " in f" {args} " and not stat.startswith("Z")
    ]


def _assert_nothing_left(proc: subprocess.Popen, within_s: float = 10.0) -> None:
    """Every process of the driver's session, and its watchdog, ends within ``within_s``."""
    deadline = time.monotonic() + within_s
    while (_session_pids(proc.pid) or _watchdogs(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.25)
    left = _session_pids(proc.pid) + _watchdogs(proc.pid)
    if left:
        names = subprocess.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, left))],
                               capture_output=True, text=True).stdout  # fmt: skip
        for pid in left:  # clean up for the tests that follow, then fail
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.log.close()
    assert not left, f"still running {within_s:g} s after the driver ended:\n{names}"


def _run_to_end(cmd: list[str], timeout_s: float) -> tuple[int, str]:
    proc = _start(cmd)
    try:
        proc.wait(timeout=timeout_s)
        return proc.returncode, _stderr(proc)
    finally:
        proc.kill()  # no-op unless it timed out
        proc.wait()
        _assert_nothing_left(proc)


def _kill_driver_when(store: ScoreStore, cmd: list[str], min_shards: int, deadline_s: float):
    """Start the driver; SIGKILL it once ``min_shards`` shards are committed."""
    proc = _start(cmd)
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and proc.poll() is None:
            if len(_committed(store)) >= min_shards:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"job ended before the kill: {_stderr(proc)}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
        _assert_nothing_left(proc)


def _committed(store: ScoreStore) -> set[int]:
    """Shards with both metrics committed: a SIGKILL can land between a shard's loss file and
    its el2n file, and the job counts (and resume skips) only shards with every metric."""
    return store.completed_shards("run", "loss") & store.completed_shards("run", "el2n")


@pytest.mark.timeout(300)
def test_sigkill_driver_then_resume_gives_exactly_the_uninterrupted_result(ray_session, tmp_path):
    x, y = make_arrays(N, seed=3)
    data = write_parquet(tmp_path / "data", x, y, files=2, row_group_size=64)
    # Uninterrupted reference: the same job and actor set-up, on the session's Ray.
    pipelines.score(
        str(data), "tests.pipelines.scoring_fixtures:slow_mlp", feature_columns="x",
        metrics="loss,el2n", store=tmp_path / "ref", run="run", shard_size=SHARD,
        batch_size=50, actors=2, progress=False,
    )  # fmt: skip
    ref = ScoreStore(tmp_path / "ref")

    store = ScoreStore(tmp_path / "store")
    rng = np.random.default_rng(7)
    first = int(rng.integers(1, 5))
    _kill_driver_when(store, _job_args(data, tmp_path / "store", "run"), first, 120)
    after_first = _committed(store)
    assert 0 < len(after_first) < N // SHARD
    assert store.manifest("run")["status"] == "running"

    second = len(after_first) + int(rng.integers(1, 4))
    resume = _job_args(data, tmp_path / "store", "run", "--resume")
    _kill_driver_when(store, resume, second, 120)
    after_second = _committed(store)
    assert after_first < after_second and len(after_second) < N // SHARD

    code, err = _run_to_end(resume, 100)
    assert code == 0, err

    manifest = store.manifest("run")
    assert manifest["status"] == "complete"
    assert manifest["row_counts"] == {"loss": N, "el2n": N}
    assert manifest["extra"]["shards_skipped"] == len(after_second)
    assert manifest["resumed"] == 2
    for metric in ("loss", "el2n"):
        table = store.sql(
            f"SELECT count(*) AS n, count(DISTINCT example_id) AS d FROM scores "
            f"WHERE run = 'run' AND metric = '{metric}'"
        )
        assert table.column("n")[0].as_py() == N and table.column("d")[0].as_py() == N
        values, present = store.read("run", metric)
        expected, _ = ref.read("run", metric)
        assert present.all() and len(values) == N
        np.testing.assert_array_equal(values, expected)
