"""`winnow sql`, `winnow runs`, `winnow shell` against a real store."""

import csv
import io
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from winnow.pipelines.cli import main
from winnow.store import ScoreStore


@pytest.fixture
def filled(tmp_path):
    root = tmp_path / "store"
    store = ScoreStore(root)
    store.begin_run("base", num_examples=4, metrics=["loss"], config={"lr": 0.1})
    store.write("base", "loss", [0, 1, 2, 3], [0.5, 2.5, 1.5, float("nan")], allow_nan=True)
    store.finish_run("base")
    store.begin_run("live")
    store.write("live", "margin", [7], [0.25])
    return root


def test_sql_table_format(filled, capsys):
    query = "SELECT example_id, value FROM scores WHERE run='base' ORDER BY example_id"
    assert main(["sql", "--store", str(filled), query]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["example_id", "value"]
    assert lines[2].split() == ["0", "0.5"] and lines[5].split() == ["3", "nan"]
    assert lines[-1] == "(4 rows)"


def test_sql_csv_json_parquet(filled, capsys, tmp_path):
    query = "SELECT run, example_id, value FROM scores ORDER BY run, example_id"
    assert main(["sql", "--store", str(filled), "--format", "csv", query]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["example_id"] for r in rows] == ["0", "1", "2", "3", "7"]
    assert main(["sql", "--store", str(filled), "--format", "json", query]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[3] == {"run": "base", "example_id": 3, "value": None}  # NaN is not JSON
    assert records[4]["run"] == "live"
    out = tmp_path / "top.parquet"
    assert main(["sql", "--store", str(filled), "--format", "parquet", "-o", str(out), query]) == 0
    assert pq.read_table(out).num_rows == 5
    assert main(["sql", "--store", str(filled), "--format", "json", "SELECT * FROM runs"]) == 0
    base = json.loads(capsys.readouterr().out.splitlines()[0])
    assert base["row_counts"] == {"loss": 4} and json.loads(base["config"]) == {"lr": 0.1}


def test_sql_errors_are_reported_not_raised(filled, capsys):
    assert main(["sql", "--store", str(filled), "DROP VIEW scores"]) == 1  # bad input
    assert "refused a DROP statement" in capsys.readouterr().err
    assert main(["sql", "--store", str(filled), "SELECT nope FROM scores"]) == 1
    assert 'winnow sql: error: Binder Error: Referenced column "nope"' in capsys.readouterr().err


def test_runs_lists_status_and_live_row_counts(filled, capsys):
    assert main(["runs", "--store", str(filled)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    base = dict(zip(header, lines[2].split(), strict=True))
    assert base["run"] == "base" and base["status"] == "complete" and base["rows"] == "4"
    assert lines[3].split()[:3] == ["live", "scores", "running"]
    assert "margin:1" in lines[3]
    assert main(["runs", "--store", str(filled), "--format", "json"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["rows"]) for r in runs] == [("base", 4), ("live", 1)]


def test_store_defaults_to_env_then_cwd(filled, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WINNOW_STORE", str(filled))
    assert main(["sql", "SELECT count(*) AS n FROM scores"]) == 0
    assert capsys.readouterr().out.splitlines()[2].strip() == "5"
    monkeypatch.delenv("WINNOW_STORE")
    monkeypatch.chdir(tmp_path)
    ScoreStore("winnow-store").write("here", "loss", [0, 1], [1.0, 2.0])
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "here"
    monkeypatch.chdir(tmp_path / "store")
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.startswith("no runs in")


def test_shell_reads_piped_statements_and_survives_errors(filled):
    script = "\n".join(
        [
            ".tables",
            "SELECT run, count(*) AS n",
            "FROM scores GROUP BY run ORDER BY run;",
            "SELECT * FROM missing_view;",
            "COPY (SELECT 1) TO 'x.csv';",
            ".format csv",
            "SELECT max(value) AS top FROM scores WHERE run = 'base';",
            ".nonsense",
            "SELECT 41 + 1 AS answer",  # unterminated at EOF: still runs
        ]
    )
    done = subprocess.run(
        [sys.executable, "-m", "winnow.pipelines.cli", "shell", "--store", str(filled)],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "scores" in out and "run, metric, example_id, value" in out
    assert "base  4\nlive  1\n(2 rows)" in out
    assert '"top"\n2.5\n' in out and '"answer"\n42\n' in out
    assert "missing_view does not exist" in done.stderr
    assert "refused a COPY statement" in done.stderr
    assert "unknown command '.nonsense'" in done.stderr
    assert not (filled / "x.csv").exists()


def test_runs_reports_a_corrupt_file_and_lists_the_other_runs(filled, capsys):
    path = filled / "scores" / "run=live" / "metric=margin" / "shard-00000.parquet"
    path.write_bytes(b"not parquet")
    assert main(["runs", "--store", str(filled)]) == 0
    captured = capsys.readouterr()
    assert f"corrupt or foreign file in the score store: {path}" in captured.err
    lines = captured.out.splitlines()
    assert lines[2].split()[:3] == ["base", "scores", "complete"] and "loss:4" in lines[2]
    assert lines[3].split()[:3] == ["live", "scores", "running"]
