"""The built wheel, installed into a fresh venv, works beside a user's own files.

The wheel is built from a copy of the sources (``pip wheel --no-build-isolation``, offline) and
installed with ``--no-deps`` into a new venv that sees this venv's third-party packages through
a ``.pth`` line naming their directory. A directory added that way is only appended to
``sys.path``: the ``.pth`` files inside it are not run, so this venv's editable winnow (an
import hook started by such a file) stays out. Everything then runs in a directory that also
holds a user's ``store.py``, ``samplers.py``, ``selection.py`` and ``pipelines.py``, each of
which raises if imported: ``winnow score`` (inline and on a local Ray, whose workers get that
directory on their path) and ``winnow bench --quick``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BARE = ("store", "samplers", "selection", "pipelines")
ROWS = 300

pytestmark = pytest.mark.timeout(300)

# A user's model module next to the data: records, in every process that builds the model
# (the CLI itself, Ray actors), which winnow it sees and whether a bare name got imported.
_USER_MODEL = """\
import json, os, sys

import torch
import winnow
from winnow.pipelines.toydata import MLP


def build():
    record = {"argv0": sys.argv[0], "winnow": winnow.__file__,
              "bare": [n for n in ("store", "samplers", "selection", "pipelines")
                       if n in sys.modules]}
    with open(os.path.join(os.path.dirname(__file__), "factory-calls.jsonl"), "a") as fh:
        fh.write(json.dumps(record) + "\\n")
    torch.manual_seed(0)
    return MLP(in_features=8, hidden=16)
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site: Path  # the new venv's site-packages
    user: Path  # the working directory with the user's own files
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=self.user, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def winnow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.run(str(self.venv / "bin" / "winnow"), *args, timeout=timeout)

    def factory_calls(self) -> list[dict]:
        path = self.user / "factory-calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _build_wheel(out: Path) -> Path:
    """Build from a copy, so the checkout gets no build/ or egg-info from the test."""
    src = out / "src"
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    for folder in sorted(set(config["tool"]["setuptools"]["package-dir"].values())):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", config["project"]["readme"]):
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "-q", "-w", str(out / "dist"), str(src)], check=True, timeout=240)
    (wheel,) = (out / "dist").glob("winnow-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    done = subprocess.run([python, "-c", purelib], capture_output=True, text=True, check=True)
    site = Path(done.stdout.strip())
    (site / "outer-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # --ignore-installed: pip sees this venv's editable winnow through the .pth line and would
    # otherwise try to uninstall it.
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=120)
    user = root / "user"
    user.mkdir()
    for name in BARE:
        (user / f"{name}.py").write_text(f"raise RuntimeError('user file {name}.py imported')\n")
    (user / "mymodel.py").write_text(_USER_MODEL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 8)).astype(np.float32)
    table = pa.table(
        {
            "example_id": pa.array(np.arange(ROWS) * 3 + 1, pa.int64()),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8),
            "label": pa.array(rng.integers(0, 10, ROWS), pa.int64()),
        }
    )
    pq.write_table(table, user / "data.parquet")
    drop = ("PYTHONPATH", "PYTHONHOME", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return Installed(wheel, venv, site, user, env)


def test_wheel_has_one_top_level_name(installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        top_level = wheel.read(f"{dist_info}/top_level.txt").decode().split()
    assert {n.split("/")[0] for n in names} == {"winnow", dist_info}
    assert top_level == ["winnow"]
    for module in ("store/__init__.py", "pipelines/cli.py", "pipelines/bench/outcomes.py"):
        assert f"winnow/{module}" in names
    record = (installed.site / dist_info / "RECORD").read_text().splitlines()
    assert {line.split("/")[0] for line in record} == {"winnow", dist_info, ".."}


def test_imports_come_from_the_wheel_never_from_user_files(installed):
    modules = sorted(
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for n in zipfile.ZipFile(installed.wheel).namelist()
        if n.startswith("winnow/") and n.endswith(".py") and not n.endswith("__main__.py")
    )
    code = (
        "import importlib, json, sys\n"
        "import winnow, winnow.store, winnow.samplers, winnow.selection, winnow.pipelines\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({\n"
        "    'files': {n: m.__file__ for n, m in sys.modules.items() if n.split('.')[0] in\n"
        f"              ('winnow', *{BARE!r})}},\n"
        "    'path': sys.path,\n"
        "    'hooks': [m for m in sys.modules if m.startswith('__editable__')],\n"
        "}))\n"
    )
    # `python -c` puts the working directory first on sys.path: the user's files are importable.
    done = installed.run(str(installed.venv / "bin" / "python"), "-c", code)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert [n for n in BARE if n in seen["files"]] == []
    assert set(modules) <= set(seen["files"])
    assert all(Path(f).is_relative_to(installed.site / "winnow") for f in seen["files"].values())
    assert seen["hooks"] == []
    assert sysconfig.get_path("purelib") in seen["path"]  # third-party packages stay visible
    # The control: this venv, with its editable hook, imports winnow from the checkout.
    here = installed.run(sys.executable, "-c", "import winnow; print(winnow.__file__)")
    assert Path(here.stdout.strip()).is_relative_to(REPO / "winnow")


def _score(installed: Installed, run: str, *executor: str) -> dict:
    done = installed.winnow(
        "score", "--data", "data.parquet", "--feature-columns", "x", "--model", "mymodel:build",
        "--store", "scores", "--run", run, "--quiet", *executor,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads((installed.user / "scores" / "runs" / f"{run}.json").read_text())


def test_winnow_score_inline(installed):
    before = len(installed.factory_calls())
    manifest = _score(installed, "inline", "--executor", "inline")
    assert manifest["status"] == "complete" and manifest["row_counts"] == {"loss": ROWS}
    calls = installed.factory_calls()[before:]
    assert calls and all(c["bare"] == [] for c in calls)
    assert all(Path(c["winnow"]).is_relative_to(installed.site) for c in calls)


def test_winnow_score_on_local_ray(installed):
    before = len(installed.factory_calls())
    manifest = _score(installed, "ray", "--actors", "1")
    assert manifest["status"] == "complete" and manifest["row_counts"] == {"loss": ROWS}
    assert manifest["extra"]["executor"] == "ray"
    calls = installed.factory_calls()[before:]
    # the model was built in a Ray worker process, from the installed winnow
    assert any(Path(c["argv0"]).name == "default_worker.py" for c in calls), calls
    assert all(c["bare"] == [] for c in calls)
    assert all(Path(c["winnow"]).is_relative_to(installed.site) for c in calls)


def test_winnow_bench_quick(installed):
    done = installed.winnow(
        "bench", "--quick", "--methods", "full,infobatch", "--models", "mlp",
        "--num-train", "800", "--epochs", "2", "--cache-dir", str(installed.user / "cache"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads((installed.user / "winnow-bench" / "outcomes_quick.json").read_text())
    assert doc["config"]["num_train"] == 800 and doc["config"]["methods"] == ["full", "infobatch"]
    assert list(doc["models"]) == ["mlp"]
    assert set(doc["models"]["mlp"]["runs"]) == {"full", "infobatch"}
