"""The scoring benchmark runs end to end on a small data set: both executors, the overhead and
shutdown columns, and the scaling run on a real local multi-node Ray. Speed belongs in the
benchmark run, not here: only the shape and the counts are checked."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_score_runs_both_executors_and_a_two_node_cluster(tmp_path):
    out = tmp_path / "bench_score.json"
    committed = REPO / "benchmarks/results/bench_score.json"
    before = committed.read_bytes()
    cmd = [sys.executable, "-m", "benchmarks.bench_score", "--rows", "6000", "--repeats", "1",
           "--metrics", "loss+grad_norm", "--nodes", "2", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=290)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray adds s" in done.stdout and "local multi-node Ray" in done.stdout
    results = json.loads(out.read_text())
    (job,) = results["jobs"]
    assert job["metrics"] == "loss,grad_norm" and job["ratio"] > 0
    ray_run = job["all"]["ray"][0]
    assert ray_run["rows"] == 6000 and ray_run["ray_nodes"] == 1
    overhead = job["ray_end_to_end_s"] - job["inline_end_to_end_s"]
    assert job["ray_overhead_s"] == pytest.approx(overhead, abs=0.011)
    assert 0 <= job["ray_shutdown_s"] < job["ray_end_to_end_s"]
    cluster = results["cluster"]
    assert cluster["worker_nodes"] == 2 and cluster["metrics"] == "loss,grad_norm"
    assert [(r["actors"], r["ray_nodes"]) for r in cluster["scaling"]] == [(1, 1), (2, 2)]
    assert cluster["scaling"][0]["speedup"] == 1.0
    assert all(run["rows"] == 6000 for run in cluster["all"])
    assert committed.read_bytes() == before  # --out: the committed results are left alone
