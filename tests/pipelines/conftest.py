"""Fixtures shared by the scoring-job tests."""

import sys

import pytest


@pytest.fixture
def ray_forbidden(monkeypatch):
    """The job fails the test if it reaches Ray: what is checked must be checked before."""

    def no_ray(*args, **kwargs):
        raise AssertionError("the job reached Ray")

    monkeypatch.setattr("winnow.pipelines.job.ray_pool", no_ray)  # starts or joins Ray
    if sys.modules.get("ray") is not None:  # as a fresh process: the job would start its Ray
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)


@pytest.fixture
def cli_refusals():
    """``run(argv, runs, preload)``: ``winnow <argv> <run>`` for each run in one fresh process
    (after importing ``preload``), as ``[(exit code, ray imported)]`` and its stderr."""
    import json
    import subprocess
    from pathlib import Path

    code = (
        "import json, sys\n"
        "from winnow.pipelines.cli import main\n"
        "out = []\n"
        "for extra in json.loads(sys.argv[1]):\n"
        "    rc = main(sys.argv[2:] + extra)\n"
        "    out.append([rc, 'ray' in sys.modules])\n"
        "print(json.dumps(out))\n"
    )

    def run(argv: list[str], runs: list[list[str]], preload: str = "torch"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {preload}\n" + code, json.dumps(runs), *argv],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=110,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout), done.stderr

    return run
