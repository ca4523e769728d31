"""``make test`` sets up what its tests need: the venv (rebuilt when the pins change) and Chromium.

``.ci/setup-chromium`` runs against a PATH of stand-ins (``id`` says who we are, ``apt-get``
logs what it was asked and "installs" a ``chromium``), so every branch is exercised without
touching the machine. The Makefile is asked with ``make -n`` in a copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "setup-chromium"
BASH = shutil.which("bash")
CHMOD = shutil.which("chmod")


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def _setup_chromium(tmp_path: Path, *, uid: int, chromium: bool, install_fails: bool = False):
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    _stub(bin_dir / "id", f"echo {uid}")
    install = "exit 100" if install_fails else f"printf '#!{BASH}\\n' > {bin_dir}/chromium"
    _stub(
        bin_dir / "apt-get",
        f'echo "$DEBIAN_FRONTEND $*" >> {log}\n'
        f'if [ "$1" = install ]; then {install}; {CHMOD} +x {bin_dir}/chromium; fi',
    )
    if chromium:
        _stub(bin_dir / "chromium", "exit 0")
    done = subprocess.run(
        [BASH, str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls, (bin_dir / "chromium").exists()


def test_present_chromium_is_left_alone(tmp_path):
    done, calls, _ = _setup_chromium(tmp_path, uid=0, chromium=True)
    assert done.returncode == 0 and calls == []


def test_root_installs_the_debian_package(tmp_path):
    done, calls, installed = _setup_chromium(tmp_path, uid=0, chromium=False)
    assert done.returncode == 0, done.stderr
    assert calls == ["noninteractive update -qq", "noninteractive install -y -qq chromium"]
    assert installed


def test_failed_install_fails(tmp_path):
    done, calls, _ = _setup_chromium(tmp_path, uid=0, chromium=False, install_fails=True)
    assert done.returncode != 0 and len(calls) == 2


def test_non_root_gets_the_exact_command(tmp_path):
    done, calls, _ = _setup_chromium(tmp_path, uid=1000, chromium=False)
    assert done.returncode == 1 and calls == []
    assert "\n  sudo apt-get install -y chromium\n" in done.stderr


@pytest.mark.parametrize("changed", ["pyproject.toml", "constraints.txt", None])
def test_make_test_rebuilds_the_venv_when_the_pins_change(tmp_path, changed):
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    now = (tmp_path / ".venv" / ".installed").stat().st_mtime
    for name in ("pyproject.toml", "constraints.txt"):
        when = now + 60 if name == changed else now - 60
        os.utime(tmp_path / name, (when, when))
    # Under `make test` itself, MAKEFLAGS and MAKELEVEL would make this make chatty.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    plan = subprocess.run(
        ["make", "-n", "--no-print-directory", "test"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert plan[0] == ".ci/setup-chromium"
    assert plan[-1].endswith("python -m pytest")
    rebuild = [line for line in plan if "pip install" in line]
    if changed:
        assert rebuild == [
            ".venv/bin/python -m pip install torch==2.13.0",
            '.venv/bin/python -m pip install -c constraints.txt -e ".[dev]"',
        ]
    else:
        assert rebuild == []
