"""The import contracts in pyproject.toml (`uv run lint-imports`) hold on the real
tree and catch a deliberate wrong import in a copy of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the project's contracts on the package below ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of src/sagalease to break (the copy shadows the installed package)."""
    shutil.copytree(
        ROOT / "src" / "sagalease",
        tmp_path / "sagalease",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tmp_path


def test_the_tree_keeps_every_import_contract(tmp_path: Path) -> None:
    """Every contract is kept by the code as it is."""
    result = _lint(ROOT / "src", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "reported"),
    [
        # The core importing a store breaks the layers.
        ("core.py", "from sagalease.stores import memory", "sagalease.core -> sagalease.stores"),
        # A store importing the conformance suite (a tool) breaks the layers.
        (
            "stores/memory.py",
            "from sagalease.conformance import _common",
            "sagalease.stores.memory -> sagalease.conformance",
        ),
        # The worker and the stores are independent siblings.
        ("worker.py", "from sagalease.stores import _rows", "sagalease.worker -> sagalease.stores"),
        # requeue works over the public protocol only: no store of its own.
        (
            "operations.py",
            "from sagalease.stores import memory",
            "sagalease.operations -> sagalease.stores",
        ),
        # The records may import nothing of the package above them.
        ("records.py", "from sagalease import core", "sagalease.records -> sagalease.core"),
        # The core needs no extra.
        ("lifecycle.py", "import psycopg", "sagalease.lifecycle -> psycopg"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tree: Path, module: str, wrong_import: str, reported: str
) -> None:
    """Adding one import that points the wrong way fails the check and names it."""
    path = tree / "sagalease" / module
    text = path.read_text(encoding="utf-8")
    marker = "from __future__ import annotations\n"
    assert marker in text
    path.write_text(text.replace(marker, f"{marker}\n{wrong_import}  # noqa\n", 1), "utf-8")
    result = _lint(tree, tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout
    assert reported in result.stdout.replace("\n", " ")
