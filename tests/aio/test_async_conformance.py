"""The async stores pass the conformance suite through the CLI; async broken
backends are rejected naming the invariant they break, at every seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def conformance(*args: str) -> subprocess.CompletedProcess[str]:
    """``sagalease conformance ...`` in a child process, this folder importable."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.run(
        [sys.executable, "-m", "sagalease.cli", "conformance", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


@pytest.mark.parametrize("factory", ["async_memory", "async_sqlite", "async_postgres"])
def test_the_async_stores_pass_the_suite(factory: str) -> None:
    """Every check passes (the SQLite and PostgreSQL ones across processes too).
    PostgreSQL: skipped without a server, failed with ``SAGALEASE_REQUIRE_POSTGRES=1``.
    """
    if factory == "async_postgres":
        from conftest import require_postgres

        require_postgres()
    done = conformance(f"sagalease.conformance.factories:{factory}", "--examples", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 failed" in done.stdout


@pytest.mark.parametrize(
    ("factory", "only", "invariant"),
    [
        ("heartbeat_ignores_owner", "contract/", "INV-1"),
        (
            "claim_yields",
            "concurrency/threads",
            "INV-1|INV-7",
        ),  # two holders, or a history the record contradicts
        ("complete_writes_first", "contract/", "INV-8"),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_an_async_broken_backend_is_rejected(
    factory: str, only: str, invariant: str, seed: int
) -> None:
    """The suite fails it and names the invariant."""
    done = conformance(
        f"broken_async:{factory}",
        "--examples",
        "10",
        "--no-shrink",
        "--seed",
        str(seed),
        "--only",
        only,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert failed
    assert any(f" {i} (" in line for i in invariant.split("|") for line in failed), failed
