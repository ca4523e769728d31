"""Smoke test of the time-to-accuracy benchmark: it runs end to end and its outputs are
well-formed. Outcome numbers belong in the benchmark run, not here."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import outcomes
from benchmarks._outcomes_methods import method_names

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--num-train", "800", "--epochs", "2", "--seeds", "2"]
    argv += ["--out", str(out), "--cache-dir", str(out / "cache"), "--tag", "smoke"]
    assert outcomes.main(argv) == 0
    return out


def test_json_is_complete_and_consistent(quick_run):
    doc = json.loads((quick_run / "outcomes_smoke.json").read_text())
    assert doc["config"]["num_train"] == 800 and doc["config"]["seeds"] == 2
    assert set(doc["models"]) == {"cnn", "mlp"}
    for entry in doc["models"].values():
        summary, runs = entry["summary"], entry["runs"]
        assert list(runs) == method_names()
        assert 0.0 < summary["target"] <= summary["baseline_final_acc"] <= 1.0
        for name, seeds in runs.items():
            assert len(seeds) == 2
            for res in seeds:
                hist = res["history"]
                assert len(hist) >= 3
                for key in ("backward", "forward", "steps", "wall_s", "cpu_s"):
                    values = [h[key] for h in hist]
                    assert values == sorted(values), (name, key)
                assert hist[-1]["backward"] == res["cost"]["backward"]
                assert res["cost"]["forward"] >= res["cost"]["backward"] > 0
                assert res["setup"]["backward"] <= res["cost"]["backward"]
                assert all(0.0 <= h["acc"] <= 1.0 for h in hist)
            row = summary["methods"][name]
            assert row["seeds"] == 2 and 0 <= row["reached"] <= 2
            assert math.isfinite(row["final_acc_std"])
        assert summary["methods"]["full"]["backward_saved"] == 0.0


def test_markdown_and_plots(quick_run):
    table = (quick_run / "outcomes_smoke.md").read_text()
    for model in ("cnn", "mlp"):
        assert f"## {model}" in table
        png = (quick_run / f"outcomes_smoke_{model}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = rows[0].count("|")
    assert all(r.count("|") == header for r in rows)
    for name in method_names():
        assert sum(r.startswith(f"| {name} |") for r in rows) == 2  # one row per model


def test_cli_reports_bad_arguments_and_missing_package(tmp_path):
    with pytest.raises(SystemExit) as exc:
        outcomes.main(["--methods", "full,nonsense", "--out", str(tmp_path)])
    assert exc.value.code == 2
    # from a directory without the source checkout, `winnow bench` explains what to do
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from winnow.pipelines.cli import main; sys.exit(main())",
            "bench",
            "--quick",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 2
    assert "benchmarks package is not importable" in done.stderr
