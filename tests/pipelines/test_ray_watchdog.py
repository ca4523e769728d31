"""The watchdog that ends a job's local Ray when the job dies (no Ray here: stand-in processes).

A "job" process starts the watchdog, then, with the token in its environment, a child (the
stand-in for the raylet) which starts a grandchild without any environment (a worker whose
environment setproctitle overwrote); it also starts an unrelated child without the token. After
a SIGKILL of the job, the first two must end within seconds, the unrelated one must survive.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from winnow.pipelines.ray_watchdog import supported

pytestmark = pytest.mark.skipif(not supported(), reason="the watchdog reads /proc (Linux)")

_JOB = """
import json, os, subprocess, sys
from winnow.pipelines.ray_watchdog import Watchdog
dog = Watchdog.start()
with dog.token_in_environ():
    ray_like = subprocess.Popen(
        ["sh", "-c", "env -i sleep 300 & echo $!; exec sleep 300"], stdout=subprocess.PIPE,
        text=True)
grandchild = int(ray_like.stdout.readline())
other = subprocess.Popen(["sleep", "300"])
print(json.dumps({"ray": [ray_like.pid, grandchild], "other": other.pid}), flush=True)
if sys.argv[1] == "finish":
    dog.close()  # a job that ends normally: Ray shut down, stragglers removed
    print("closed", flush=True)
sys.stdin.read()  # until killed (or its stdin closes)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _start(mode: str) -> tuple[subprocess.Popen, dict]:
    job = subprocess.Popen(
        [sys.executable, "-c", _JOB, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    pids = json.loads(job.stdout.readline())
    time.sleep(1.2)  # the watchdog notes the job's Ray processes every 0.5 s
    return job, pids


def _wait_gone(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.timeout(60)
def test_sigkill_of_the_job_ends_its_ray_processes_and_nothing_else():
    job, pids = _start("wait")
    try:
        assert all(map(_alive, pids["ray"]))
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
        assert _wait_gone(pids["ray"], 5.0) == []
        assert _alive(pids["other"])
    finally:
        for pid in [*pids["ray"], pids["other"]]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_job_that_closes_the_watchdog_has_its_stragglers_removed():
    job, pids = _start("finish")
    try:
        assert job.stdout.readline().strip() == "closed"
        assert [pid for pid in pids["ray"] if _alive(pid)] == []
        assert _alive(pids["other"]) and job.poll() is None
    finally:
        job.kill()
        job.wait()
        for pid in [*pids["ray"], pids["other"]]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
