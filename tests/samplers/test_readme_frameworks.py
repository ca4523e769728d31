"""The README's framework section runs as written: each of its Python blocks, in a fresh
process on the CPU, from an empty folder (nothing is downloaded)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Train in your framework"


def blocks() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    found = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {name: code for name, code in zip(("lightning", "trainer", "accelerate"), found,
                                              strict=True)}  # fmt: skip


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["lightning", "trainer", "accelerate"])
def test_the_readme_block_runs_as_written(tmp_path, name):
    pytest.importorskip({"lightning": "lightning", "trainer": "transformers"}.get(name, name))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-c", blocks()[name]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
