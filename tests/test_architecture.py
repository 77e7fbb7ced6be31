"""The layers point one way: ``sim_backend`` ← ``drivers`` ← ``programming`` ← ``predictor`` ←
``service``, and routers never import routers. The contracts live in ``pyproject.toml``
(``[tool.importlinter]``) and ``make lint`` runs them; these tests run the real ``lint-imports``
on the tree, and on a copy of it with one upward import added, which must break the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sim_backend", "drivers", "programming", "predictor", "service")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def copy_tree(to: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", to / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, to / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "static"))
    return to


def test_the_tree_keeps_its_contracts():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("sim_backend/jart.py", "import drivers.base"),
        ("drivers/sim.py", "from service import config"),
        ("programming/__init__.py", "import predictor"),
        ("predictor/runtime.py", "import service.app"),
        ("service/routers/reads.py", "from service.routers import jobs"),
    ],
)
def test_an_upward_import_breaks_the_build(tmp_path, module, upward):
    tree = copy_tree(tmp_path)
    target = tree / module
    # inside a function too: a lazy import is an import all the same
    target.write_text(target.read_text() + f"\n\ndef _upward():\n    {upward}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
