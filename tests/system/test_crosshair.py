"""The CrossHair check bites: it finds a counterexample in every core mutant.

``tests/crosshair_mutants/broken_core.py`` holds broken copies of core
functions, each driven exactly like the real function in ``.ci/crosshair``
(from reachable records, held to the real function's contracts). CrossHair
must exit 1 and name every driver in a counterexample.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
CROSSHAIR = shutil.which("crosshair", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(CROSSHAIR is None, reason="crosshair-tool is not installed")


def test_crosshair_finds_every_mutant() -> None:
    """CrossHair exits 1 with a counterexample naming every mutant driver."""
    from crosshair_mutants.broken_core import DRIVERS

    assert CROSSHAIR is not None
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            CROSSHAIR,
            "check",
            "--analysis_kind=icontract",
            "--per_condition_timeout=5",
            "--per_path_timeout=2",
            *(f"crosshair_mutants.broken_core.{name}" for name in DRIVERS),
        ],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    found = set(re.findall(r": error: .* when calling (drive_\w+)\(", output))
    assert found == set(DRIVERS), output
