"""`winnow` exit codes: 2 for argparse usage errors, 1 and one line for bad input, and a bug
keeps its traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.scoring_fixtures import make_arrays, write_parquet
from winnow.pipelines.cli import main
from winnow.store import ScoreStore

FIX = "tests.pipelines.scoring_fixtures"
REPO = Path(__file__).resolve().parents[2]


def _score_argv(tmp_path, *extra: str) -> list[str]:
    return ["score", "--data", f"{FIX}:tensor_dataset", "--model", f"{FIX}:mlp",
            "--store", str(tmp_path / "s"), "--run", "r", "--executor", "inline", "--quiet",
            *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "/nonexistent/train.parquet", "--feature-columns", "x"],
         "Parquet source '/nonexistent/train.parquet' does not exist"),
        (["--metrics", "loss,nope"], "unknown metric(s) ['nope']; registered metrics: ['loss'"),
        (["--metrics", "learnability"], "metric 'learnability' needs a reference model"),
        (["--batch-size", "0"], "batch_size must be a positive int, got 0"),
        (["--run", "a/b"], "invalid run name 'a/b'"),
        (["--dedup-eps", "2"], "dedup_eps values must be in (0, 1), got 2.0"),
        (["--checkpoint", "/nonexistent/ckpt.pt"], "checkpoint '/nonexistent/ckpt.pt' does not"),
        (["--import", "no_such_module_xyz"], "--import 'no_such_module_xyz': no module named"),
    ],
)  # fmt: skip
def test_bad_input_exits_1_with_one_line(tmp_path, capsys, extra, message):
    assert main(_score_argv(tmp_path, *extra)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("winnow score: error: "), err
    assert message in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--model", f"{FIX}:mlp", "--run", "r"],  # --data missing
        ["score", "--data", "d", "--model", "m:f", "--run", "r", "--bogus"],
        ["score", "--data", "d", "--model", "m:f", "--run", "r", "--batch-size", "abc"],
        ["score", "--data", "d", "--model", "m:f", "--run", "r", "--executor", "spark"],
        ["score", "--data", "d", "--model", "m:f", "--run", "r", "--dedup-eps", "x"],
        ["sql"],  # query missing
        ["nosuchcommand"],
    ],
)
def test_usage_error_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: winnow" in capsys.readouterr().err


def test_no_command_exits_2(capsys):
    assert main([]) == 2
    assert "usage: winnow" in capsys.readouterr().out


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("a bug")])
def test_unexpected_exception_keeps_its_traceback(tmp_path, capsys, monkeypatch, error):
    def broken(job):
        raise error

    monkeypatch.setattr("winnow.pipelines.job.run_job", broken)
    with pytest.raises(type(error), match="a bug"):
        main(_score_argv(tmp_path))
    assert "error:" not in capsys.readouterr().err  # not turned into a one-liner


def test_store_commands_follow_the_same_rule(tmp_path, capsys, monkeypatch):
    store = ScoreStore(tmp_path / "s")
    store.write("r", "loss", [0, 1], [0.5, 0.25])
    root = str(tmp_path / "s")
    assert main(["sql", "--store", root, "COPY scores TO 'x.csv'"]) == 1
    assert capsys.readouterr().err.startswith("winnow sql: error: ")
    assert main(["report", "--store", root, "--run", "nope", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("winnow report: error: ")

    def broken(self, query, **kwargs):
        raise RuntimeError("a bug in the store")

    monkeypatch.setattr(ScoreStore, "sql_reader", broken)  # `winnow sql` streams its results
    with pytest.raises(RuntimeError, match="a bug in the store"):
        main(["sql", "--store", root, "SELECT 1"])


@pytest.mark.timeout(60)
def test_winnow_script_prints_a_traceback_for_a_bug_and_one_line_for_bad_input(tmp_path):
    """The console script itself: a bug's traceback reaches the terminal (exit 1 from Python)."""
    write_parquet(tmp_path / "data", *make_arrays(10))
    code = (
        "import sys, winnow.pipelines.job as job\n"
        "def broken(j): raise RuntimeError('a bug')\n"
        "job.run_job = broken\n"
        "from winnow.pipelines.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    base = [sys.executable, "-c", code, "score", "--data", "data", "--feature-columns", "x",
            "--model", f"{FIX}:mlp", "--store", "s", "--run", "r"]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "PATH": ""}
    bug = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "RuntimeError: a bug" in bug.stderr
    bad = subprocess.run([*base, "--metrics", "nope"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=50)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("winnow score: error: unknown metric(s) ['nope']")
    assert "Traceback" not in bad.stderr
