"""Smoke test of the time-to-accuracy benchmark: it runs end to end and its outputs are
well-formed. Outcome numbers belong in the benchmark run, not here."""

import json
import math
import subprocess
import sys

import pytest

from winnow.pipelines import cli
from winnow.pipelines.bench import outcomes
from winnow.pipelines.bench._methods import method_names
from winnow.pipelines.report import render_report
from winnow.store import ScoreStore


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--num-train", "800", "--epochs", "2", "--seeds", "2"]
    argv += ["--out", str(out), "--cache-dir", str(out / "cache"), "--tag", "smoke"]
    argv += ["--store", str(out / "store")]
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


def test_store_holds_every_methods_trace_and_the_noise_scale(quick_run):
    store = ScoreStore(quick_run / "store")
    runs = {r["name"]: r for r in store.runs()}
    for model in ("cnn", "mlp"):
        for method in method_names():
            manifest = runs[f"{model}-{method}"]
            assert manifest["status"] == "complete" and manifest["trace_rows"] > 0, manifest
    shape = store.sql(
        "SELECT run, bool_or(step IS NULL) AS per_epoch, bool_or(step IS NOT NULL) AS per_step "
        "FROM trace WHERE run LIKE 'mlp-%' GROUP BY run ORDER BY run"
    ).to_pylist()
    per_step = {r["run"] for r in shape if r["per_step"] and not r["per_epoch"]}
    assert per_step == {
        f"mlp-{m}" for m in ("full", "hard_batch", "rho_loss", "jest", "importance")
    }
    noise = store.sql(
        "SELECT run, count(*) AS n, max(step) AS last, min(b_simple) AS lo FROM noise_scale "
        "GROUP BY run ORDER BY run"
    ).to_pylist()
    assert [r["run"] for r in noise] == ["cnn-full", "mlp-full"]
    steps = 2 * -(-800 // 128)  # two epochs of full data
    assert all(r["last"] == steps - 1 and r["lo"] > 0 for r in noise)
    page = render_report(store, ["mlp-full", "mlp-rho_loss"])
    assert "Gradient noise scale" in page and "Selection trace" in page


def test_bad_arguments_exit_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        outcomes.main(["--methods", "full,nonsense", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_module_runs_from_any_directory_into_cwd(quick_run, tmp_path):
    """No source checkout needed; the default output is ./winnow-bench."""
    saved = quick_run / "outcomes_smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "winnow.pipelines.bench", "--from-json", str(saved)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "winnow-bench" / "outcomes.json").read_text())
    assert doc["config"]["num_train"] == 800 and set(doc["models"]) == {"cnn", "mlp"}
    assert (tmp_path / "winnow-bench" / "outcomes_mlp.png").is_file()


def test_winnow_bench_hands_its_arguments_to_the_benchmark(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: winnow bench" in out and "./winnow-bench" in out
