"""Every example in the README runs as written, in order, from an empty folder: each Python block
in a fresh interpreter, each shell block with bash (`set -e`), all in one working directory, so
later blocks use what earlier ones wrote (the Parquet file, the store, the checkpoint).

Left out, and only these (the test checks the list): the set-up commands (`make demo`,
`make test`: CI itself runs them), `pip install` lines (the wheel test installs winnow into a
fresh venv), and the three commands that reproduce the published benchmark results (12 minutes and
more; their outputs are committed in benchmarks/results/)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = (
    re.compile(r"^make (demo|test)\b"),
    re.compile(r"^pip install "),
    re.compile(r"^winnow bench (--task lm )?--out benchmarks/results\b"),
)


def _blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _runnable(code: str) -> tuple[str, list[str]]:
    kept, left_out = [], []
    for line in code.splitlines():
        (left_out if any(p.match(line) for p in NOT_RUN) else kept).append(line)
    return "\n".join(kept) + "\n", left_out


def test_only_the_named_commands_are_left_out():
    left_out = [line for _, code in _blocks() for line in _runnable(code)[1]]
    assert [line.split("#")[0].strip() for line in left_out] == [
        "make demo",
        "make test",
        'pip install "winnow[demo]"',
        "winnow bench --out benchmarks/results",
        "winnow bench --out benchmarks/results --label-noise 0.2 --models cnn --seeds 2 "
        "--tag noise20",
        "winnow bench --task lm --out benchmarks/results --seeds 3",
    ]


@pytest.mark.timeout(1500)
def test_every_readme_example_runs_as_written(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("WINNOW_STORE", None)
    for number, (language, code) in enumerate(_blocks()):
        script, _ = _runnable(code)
        if not script.strip():
            continue
        cmd = [sys.executable, "-c", script] if language == "python" else ["bash", "-ec", script]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=900)  # fmt: skip
        first = script.strip().splitlines()[0]
        assert done.returncode == 0, (
            f"README block {number} ({language}, starting {first!r}) failed:\n{done.stderr[-4000:]}"
        )
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "winnow-bench").is_dir()
