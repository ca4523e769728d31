"""`winnow sql`, `winnow runs`, `winnow shell` against a real store."""

import csv
import io
import json
import os
import shutil
import signal
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
    monkeypatch.chdir(tmp_path / "store")  # no ./winnow-store here: an error, not "no runs"
    assert main(["runs"]) == 1
    assert "winnow-store does not exist; pass --store" in capsys.readouterr().err
    (tmp_path / "store" / "winnow-store").mkdir()
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


def _winnow(*args, input=None, prefix=(), timeout=120):
    """Run the real `winnow` command in a fresh process."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "winnow.pipelines.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def _without_root_powers():
    """A command prefix under which chmod 000 really denies access, or None if there is none.

    Root reads any file; dropping the two capabilities that let it do so makes it obey the
    permission bits like any user.
    """
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "true"], capture_output=True
    )
    return (
        None
        if probe.returncode
        else (
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
        )
    )


def _one_error_line(done, command):
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"winnow {command}: error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["sql", "runs", "shell", "report"])
def test_missing_root_or_a_file_as_root_is_an_error(tmp_path, command):
    extra = {"sql": ["SELECT 1"], "report": ["--out", str(tmp_path / "r.html")]}.get(command, [])
    missing = tmp_path / "no-such-store"
    done = _winnow(command, "--store", str(missing), *extra, input="")
    assert done.returncode == 1
    line = _one_error_line(done, command)
    assert str(missing) in line and "does not exist" in line
    a_file = tmp_path / "scores.csv"
    a_file.write_text("a,b\n")
    done = _winnow(command, "--store", str(a_file), *extra, input="")
    assert done.returncode == 1
    line = _one_error_line(done, command)
    assert str(a_file) in line and "not a directory" in line
    assert a_file.read_text() == "a,b\n" and not (tmp_path / "r.html").exists()


def test_an_os_error_is_one_line_naming_the_path(filled, tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    done = _winnow("sql", "--store", str(filled), "-o", str(directory), "SELECT 1")
    assert done.returncode == 1
    assert str(directory) in _one_error_line(done, "sql")
    done = _winnow("report", "--store", str(filled), "--out", str(directory))
    assert done.returncode == 1
    assert str(directory) in _one_error_line(done, "report")


def test_permission_denied_is_one_line_naming_the_path(filled):
    prefix = _without_root_powers()
    if prefix is None:
        pytest.skip("running as root without a way to drop its file-access capabilities")
    scores = filled / "scores"
    scores.chmod(0)
    try:
        done = _winnow("sql", "--store", str(filled), "SELECT count(*) FROM scores", prefix=prefix)
        assert done.returncode == 1
        line = _one_error_line(done, "sql")
        assert "Permission denied" in line and str(scores) in line
        done = _winnow("runs", "--store", str(filled), prefix=prefix)
        assert done.returncode == 1
        line = _one_error_line(done, "runs")
        assert "Permission denied" in line and str(scores) in line
    finally:
        scores.chmod(0o755)


def test_shell_survives_errors_inside_dot_commands(filled):
    (filled / "runs" / "broken.json").write_text("{not json")
    script = ".runs\n.tables\nSELECT 41 + 1 AS answer;\n"
    done = _winnow("shell", "--store", str(filled), input=script)
    assert done.returncode == 0, done.stderr
    assert "skipping run manifest" in done.stderr and "broken.json" in done.stderr
    assert "base" in done.stdout and "42" in done.stdout
    prefix = _without_root_powers()
    if prefix is None:
        return
    (filled / "runs").chmod(0)  # every command needs the manifests: each fails, the shell stays
    try:
        done = _winnow("shell", "--store", str(filled), input=script, prefix=prefix)
    finally:
        (filled / "runs").chmod(0o755)
    assert done.returncode == 0, done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 3, done.stderr
    assert all(e.startswith("Error: ") and str(filled / "runs") in e for e in errors)
    assert all("Permission denied" in e for e in errors)


def test_sql_streams_and_stops_at_max_rows(filled):
    """The table format fetches only the rows it shows: 5e7 rows of ~12 bytes would take
    ~600 MB as one Arrow table."""
    query = "SELECT range AS example_id, random()::FLOAT AS value FROM range(50000000)"
    measure = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stdout.write(done.stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "winnow.pipelines.cli", "sql"]
        + ["--store", str(filled), "--max-rows", "3", query],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    peak_kib, *lines = done.stdout.splitlines()
    assert lines[0].split() == ["example_id", "value"] and len(lines) == 2 + 3 + 1
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    assert lines[-1] == "(more than 3 rows, first 3 shown)"
    assert int(peak_kib) < 350 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_sql_into_a_closed_pipe_exits_quietly(filled):
    """Like `cat big | head -1`: no traceback, the status of a process killed by SIGPIPE."""
    child = subprocess.Popen(
        [sys.executable, "-m", "winnow.pipelines.cli", "sql", "--store", str(filled)]
        + ["--format", "csv", "SELECT range AS i FROM range(3000000)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert child.stdout.readline() == b'"i"\n'
    child.stdout.close()
    assert child.wait(timeout=60) == 128 + signal.SIGPIPE
    assert child.stderr.read() == b""


def test_report_skips_a_corrupt_shard_and_a_bad_manifest_with_warnings(filled, tmp_path):
    shard = filled / "scores" / "run=base" / "metric=loss" / "shard-00000.parquet"
    with open(shard, "r+b") as f:
        f.truncate(10)
    ScoreStore(filled).write("base", "margin", [0, 1], [0.5, 0.25])
    (filled / "runs" / "live.json").write_text("{not json")
    out = tmp_path / "page.html"
    done = _winnow("report", "--store", str(filled), "--out", str(out))
    assert done.returncode == 0, done.stderr
    warned = done.stderr.splitlines()
    assert any(
        line.startswith("winnow report: warning: skipping unreadable file") and str(shard) in line
        for line in warned
    ), done.stderr
    assert any("skipping run manifest" in line and "live.json" in line for line in warned)
    page = out.read_text()
    assert "Run base" in page and "Run live" in page and str(shard) in page
