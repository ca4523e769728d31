"""The house stays one-way (DESIGN.md): who may import whom, read from the source with ``ast``.

- ``pipelines`` imports ``samplers``, ``store`` and ``selection``; ``samplers`` imports
  ``selection``; ``store`` and ``selection`` import none of the other three.
- Nothing installed imports ``benchmarks``, and nothing imports the bare folder names
  (``store``, ``pipelines``, ...): only ``winnow.*``, so a user's own ``store.py`` never
  shadows ours and no module is loaded twice.
- ``ray`` is imported only in ``pipelines`` and only inside functions (lazily), so training
  with a sampler never imports Ray.
- The training frameworks winnow adapts to (Lightning, transformers, accelerate, datasets) are
  optional: imported only inside functions, so ``import winnow.samplers`` (and the adapter
  modules themselves) import none of them.

Relative imports are resolved against the installed names; ``importlib.import_module("...")``
counts as an import, and so does a string that names a winnow module (the lazy ``_LAZY`` maps).
Imports under ``if TYPE_CHECKING:`` and inside functions are lazy.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Folder in the repository -> the name it installs as (pyproject.toml's package-dir).
PACKAGES = {
    "selection": "winnow.selection",
    "samplers": "winnow.samplers",
    "store": "winnow.store",
    "pipelines": "winnow.pipelines",
    "winnow": "winnow",
}
# What each of the four may import from its siblings; the facade ``winnow`` may import them all.
ALLOWED = {
    "winnow.pipelines": {"winnow.samplers", "winnow.store", "winnow.selection"},
    "winnow.samplers": {"winnow.selection"},
    "winnow.store": set(),
    "winnow.selection": set(),
}
BARE = ("selection", "samplers", "store", "pipelines")
FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate", "datasets")
_MODULE_STRING = re.compile(r"winnow(\.\w+)+")


def _module_name(folder: str, relative: Path) -> str:
    parts = [PACKAGES[folder], *relative.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _owner(target: str) -> str | None:
    """The winnow package a dotted name belongs to (``winnow`` for the facade itself)."""
    parts = target.split(".")
    if parts[0] != "winnow":
        return None
    if len(parts) > 1 and parts[1] in BARE:
        return f"winnow.{parts[1]}"
    return "winnow"


class _Checker(ast.NodeVisitor):
    def __init__(self, where: str, module: str, is_package: bool):
        self.where, self.module = where, module
        self.package = module if is_package else module.rpartition(".")[0]
        self.owner = _owner(module)
        self.lazy = 0  # depth of function bodies / TYPE_CHECKING blocks around the node
        self.handled: set[int] = set()  # string constants already checked as import_module args
        self.violations: list[str] = []

    def _fail(self, node: ast.AST, message: str) -> None:
        self.violations.append(f"{self.where}:{node.lineno}: {message}")

    def _check(self, node: ast.AST, target: str, *, layering_only: bool = False) -> None:
        top = target.split(".")[0]
        if not layering_only:
            if top in BARE:
                self._fail(node, f"imports the bare name {target!r}; use 'winnow.{target}'")
            if top == "benchmarks":
                self._fail(node, f"imports {target!r}: benchmarks/ is not installed")
            if top in FRAMEWORKS and not self.lazy:
                self._fail(node, f"imports {target!r} at module level; import it lazily")
            if top == "ray":
                if self.owner != "winnow.pipelines":
                    self._fail(node, f"imports {target!r} outside pipelines/")
                elif not self.lazy:
                    self._fail(node, f"imports {target!r} at module level; import it lazily")
        owner = _owner(target)
        if owner and owner != "winnow" and owner != self.owner and self.owner in ALLOWED:
            if owner not in ALLOWED[self.owner]:
                self._fail(node, f"{self.owner} must not import {target!r}")

    def _lazy_block(self, node: ast.AST) -> None:
        self.lazy += 1
        self.generic_visit(node)
        self.lazy -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _lazy_block

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name != "TYPE_CHECKING":
            self.generic_visit(node)
            return
        self.lazy += 1
        for child in node.body:
            self.visit(child)
        self.lazy -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if node.level and not node.module:  # `from . import x`: x may be a submodule
            for alias in node.names:
                self._check(node, f"{module}.{alias.name}")
            return
        if module == "winnow" and self.owner in ALLOWED:
            for alias in node.names:
                if alias.name in BARE:
                    self._check(node, f"winnow.{alias.name}")
                elif alias.name != "__version__":
                    self._fail(
                        node,
                        f"imports {alias.name!r} through the winnow facade; "
                        "import it from its own package",
                    )
            return
        self._check(node, module)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                self.handled.add(id(arg))
                self._check(node, arg.value)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and id(node) not in self.handled:
            if _MODULE_STRING.fullmatch(node.value):
                self._check(node, node.value, layering_only=True)


def import_violations(root: Path) -> tuple[list[str], list[str]]:
    """Every rule broken under ``root``'s package folders, and the files that were checked."""
    violations, checked = [], []
    for folder in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root / folder)
            where = str(path.relative_to(root))
            checker = _Checker(where, _module_name(folder, relative), path.name == "__init__.py")
            checker.visit(ast.parse(path.read_text(encoding="utf-8"), filename=where))
            violations += checker.violations
            checked.append(where)
    return violations, checked


def test_the_repository_keeps_the_rules():
    violations, checked = import_violations(REPO)
    assert violations == []
    folders = {Path(p).parts[0] for p in checked}
    assert folders == set(PACKAGES)
    assert "pipelines/bench/outcomes.py" in checked and "pipelines/executors.py" in checked


# (file under a fake tree, its source, the violation expected or None when it is allowed)
CASES = {
    "pipelines-uses-all-three": (
        "pipelines/job.py",
        "from winnow.samplers import x\nfrom winnow.store import y\n"
        "import winnow.selection.losses\nfrom . import sources\n",
        None,
    ),
    "samplers-uses-selection": (
        "samplers/a.py",
        "from winnow.selection.choose import top_k\nfrom ..selection import losses\n",
        None,
    ),
    "lazy-ray-in-pipelines": (
        "pipelines/ex.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n"
        "def f():\n    import ray.data\n",
        None,
    ),
    "samplers-imports-store": (
        "samplers/a.py",
        "from winnow.store import ScoreStore\n",
        "winnow.samplers must not import 'winnow.store'",
    ),
    "store-imports-selection-relatively": (
        "store/sub/b.py",
        "from ...selection import losses\n",
        "winnow.store must not import 'winnow.selection'",
    ),
    "selection-imports-samplers-lazily": (
        "selection/c.py",
        "def f():\n    from winnow.samplers import x\n",
        "winnow.selection must not import 'winnow.samplers'",
    ),
    "samplers-imports-pipelines-by-string": (
        "samplers/__init__.py",
        "_LAZY = {'score': 'winnow.pipelines.job'}\n",
        "winnow.samplers must not import 'winnow.pipelines.job'",
    ),
    "store-through-facade": (
        "samplers/d.py",
        "from winnow import ScoreStore\n",
        "imports 'ScoreStore' through the winnow facade",
    ),
    "bare-name": (
        "pipelines/e.py",
        "import store.layout\n",
        "imports the bare name 'store.layout'",
    ),
    "bare-name-in-facade": (
        "winnow/__init__.py",
        "import importlib\nimportlib.import_module('samplers')\n",
        "imports the bare name 'samplers'",
    ),
    "benchmarks": (
        "pipelines/cli_x.py",
        "def f():\n    from benchmarks import outcomes\n",
        "imports 'benchmarks': benchmarks/ is not installed",
    ),
    "ray-at-module-level": (
        "pipelines/f.py",
        "try:\n    import ray\nexcept ImportError:\n    ray = None\n",
        "imports 'ray' at module level",
    ),
    "ray-outside-pipelines": (
        "samplers/g.py",
        "def f():\n    import ray\n",
        "imports 'ray' outside pipelines/",
    ),
    "framework-at-module-level": (
        "samplers/lightning.py",
        "from lightning.pytorch import Callback\n",
        "imports 'lightning.pytorch' at module level",
    ),
    "framework-lazily": (
        "samplers/huggingface.py",
        "def f():\n    from transformers import Trainer\n    import datasets\n",
        None,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_checker_catches_each_rule(tmp_path, case):
    file, source, expected = CASES[case]
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
    path = tmp_path / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    violations, checked = import_violations(tmp_path)
    assert checked == [file]
    if expected is None:
        assert violations == []
    else:
        assert len(violations) == 1 and violations[0].startswith(f"{file}:")
        assert expected in violations[0]


def test_importing_every_module_loads_one_copy_under_winnow_only():
    """From the repository root, where the bare folder names *are* importable by accident."""
    modules = []
    for folder in PACKAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name != "__main__.py":  # running it would start the benchmark
                modules.append(_module_name(folder, path.relative_to(REPO / folder)))
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in sys.modules.items()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout.splitlines()[-1])
    assert [n for n in BARE if n in files] == []
    folders = [REPO / folder for folder in PACKAGES]
    ours = {n: f for n, f in files.items() if f and any(map(Path(f).is_relative_to, folders))}
    assert set(modules) <= set(ours)
    assert sorted(n for n in ours if n != "winnow" and not n.startswith("winnow.")) == []
    for name in modules:
        top = next(folder for folder, pkg in PACKAGES.items() if name.startswith(pkg))
        assert Path(ours[name]).is_relative_to(REPO / top), (name, ours[name])


def test_importing_winnow_samplers_and_its_adapters_imports_no_framework():
    code = (
        "import sys\n"
        "import winnow.samplers, winnow.samplers.lightning, winnow.samplers.huggingface\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
