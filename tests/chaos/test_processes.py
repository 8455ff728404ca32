"""Process faults on SQLite and on a private PostgreSQL: zombies (SIGSTOP past the
TTL, then SIGCONT), SIGKILL in the middle of finishing writes, SIGKILL of the reaper.
Each ends with every task terminal, verify PASS, no stale write accepted, no lost
write, the recovery printed (docs/chaos.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos import _scenarios as sc
from chaos._fleet import run_plan

BACKENDS = ["sqlite", "postgres"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zombies(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, chaos_table: list[Any]
) -> None:
    """Zombies wake past their lease: their writes are fenced, the tasks reclaimed."""
    fleet = sc.fleet_on(backend, request, tmp_path, f"zombies-{backend}")
    sc.conclude(run_plan(fleet, sc.zombies, f"SIGSTOP past TTL ({backend})"), chaos_table)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_write(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, chaos_table: list[Any]
) -> None:
    """A worker killed as it sends a finishing write: the write is whole or absent."""
    fleet = sc.fleet_on(backend, request, tmp_path, f"kills-{backend}")
    result = run_plan(fleet, sc.kills_mid_write, f"SIGKILL mid-write ({backend})")
    sc.conclude(result, chaos_table)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_reaper(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, chaos_table: list[Any]
) -> None:
    """The reaper killed (and replaced) while workers die: their leases are dropped."""
    fleet = sc.fleet_on(backend, request, tmp_path, f"reaper-{backend}")
    result = run_plan(fleet, sc.reaper_kills, f"SIGKILL reaper + workers ({backend})")
    sc.conclude(result, chaos_table)
