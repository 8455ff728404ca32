"""Clock skew: one worker's clock 10 s behind and one 10 s ahead (injected clocks, see
sagalease.clock), on SQLite and PostgreSQL with the machines' clocks, and on
PostgreSQL with ``clock="database"``.

What each mode guarantees (docs/chaos.md): with the machines' clocks, a lease's expiry
is judged by whoever reads it, so a fast worker takes leases over early and a slow
worker's leases look expired to the others at once -- fencing still refuses every
write of the lease that was taken over (no stale write accepted, verify PASS), but
work is done twice. With ``clock="database"`` every instant is the server's: no
early takeover, whatever the workers' clocks say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos import _scenarios as sc
from chaos._fleet import run_plan

SKEWS = (0.0, -10.0, 10.0)


def test_skew_sqlite(tmp_path: Path, chaos_table: list[Any]) -> None:
    """Machine clocks on SQLite: early takeovers happen, fencing makes them safe."""
    fleet = sc.sqlite_fleet(tmp_path, "skew-sqlite", skews=SKEWS, work=(0.2, 0.4))
    result = run_plan(fleet, sc.skew, "clock skew ±10 s (sqlite, machine clocks)")
    sc.conclude(result, chaos_table, early_ok=True)
    assert result.early_drops, "a worker 10 s ahead took no lease over early"


def test_skew_postgres_local(private_postgres: Any, tmp_path: Path, chaos_table: list[Any]) -> None:
    """Machine clocks on PostgreSQL: as on SQLite."""
    fleet = sc.postgres_fleet(
        private_postgres, tmp_path, "skew-local", skews=SKEWS, work=(0.2, 0.4)
    )
    result = run_plan(fleet, sc.skew, "clock skew ±10 s (postgres, machine clocks)")
    sc.conclude(result, chaos_table, early_ok=True)
    assert result.early_drops, "a worker 10 s ahead took no lease over early"


def test_skew_postgres_database_clock(
    private_postgres: Any, tmp_path: Path, chaos_table: list[Any]
) -> None:
    """clock="database": the same skewed workers take no lease over early."""
    fleet = sc.postgres_fleet(
        private_postgres, tmp_path, "skew-db", clock="database", skews=SKEWS, work=(0.2, 0.4)
    )
    result = run_plan(fleet, sc.skew, 'clock skew ±10 s (postgres, clock="database")')
    sc.conclude(result, chaos_table)
