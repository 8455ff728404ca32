"""Each chaos scenario seen failing on a deliberately broken variant (chaos.broken).

A broken run is the scenario itself -- its fleet builder and fault plan from
chaos._scenarios, its checks from chaos._fleet.check -- on a fleet whose workers, store
or reaper is the variant; it must fail, and on the check that names the breakage, not
merely somewhere: a write believed done and missing (``lost``), a write answered under
a superseded token (``stale``), a live lease refused before its granted expiry
(``early``), or the history's own verification (``verify``).

Every run is small in both forms (the plans' SCALE pinned to 1 and their waits to
GUARD: a variant has to be caught once, not ten times). The bounded form runs the
SQLite ones (every check kind) and clock="database" on PostgreSQL; the long form
(``SAGALEASE_CHAOS=long``) adds the PostgreSQL server faults (restarts and a stop, the
pg_terminate_backend storm, the connection slots exhausted) and the process faults on
PostgreSQL. Each prints one ``broken ...`` line, and the run ends with their table
(conftest.pytest_terminal_summary; docs/chaos.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos import _fleet
from chaos import _scenarios as sc
from chaos._fleet import LONG, ChaosResult, Fleet, run_plan
from chaos.test_clocks import SKEWS

LONG_ONLY = pytest.mark.skipif(not LONG, reason="long form only (SAGALEASE_CHAOS=long)")

GUARD = 90.0
"""Seconds a broken fleet's plan waits for progress, and for the end of its tasks (a
hang is then counted as lost tasks), in both forms.
"""

CHECKS: dict[str, tuple[str, str, Callable[[ChaosResult], int]]] = {
    "lost": ("tasks lost", "lost write: ", lambda r: len(r.lost_writes)),
    "stale": ("stale writes accepted", "stale write accepted: ", lambda r: len(r.stale_accepted)),
    "early": ("early takeovers", "lease dropped while live: ", lambda r: len(r.early_drops)),
    "verify": ("verify FAIL", "verify: ", lambda r: len(r.verification.problems)),
}
"""Check kind -> its name in the table, its lines in ChaosResult.problems, its count."""


@pytest.fixture(autouse=True)
def _one_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc, "SCALE", 1)
    monkeypatch.setattr(_fleet, "GUARD", GUARD)


def broken_run(
    fleet: Fleet,
    plan: Callable[[Fleet], None],
    scenario: str,
    check: str,
    table: list[dict[str, Any]],
    *,
    naming: str = "",
) -> ChaosResult:
    """Run ``plan`` on the broken ``fleet``, record the row, and assert that the
    ``check`` kind caught it: a count above 0 and its lines among the problems the
    scenario test would fail with (one holding ``naming``, when given).
    """
    assert fleet.variant is not None
    result = run_plan(fleet, plan, scenario)
    label, prefix, count = CHECKS[check]
    row = result.table_row()
    found = count(result)
    table.append({**row, "variant": fleet.variant, "caught": f"{label}: {found}"})
    print(
        f"broken {scenario} [{fleet.variant}]: {label}={found} (lost={row['lost']}"
        f" stale={row['stale']} early={row['early']} verify={row['verify']})"
    )
    problems = result.problems()
    named = [p for p in problems if p.startswith(prefix) and naming in p]
    missed = (
        f"{scenario} on the {fleet.variant!r} variant: the {label} check did not catch it"
        f" ({found}); the problems found: {problems[:10]}"
    )
    assert found > 0, missed
    assert named, missed
    return result


# ---------------------------------------------------------------- process faults

BACKENDS = ["sqlite", pytest.param("postgres", marks=LONG_ONLY)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zombies_on_an_unfenced_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, broken_table: list[Any]
) -> None:
    """A store that answers a zombie's fenced writes as done: stale writes accepted."""
    fleet = sc.fleet_on(backend, request, tmp_path, f"b-zombies-{backend}", variant="unfenced")
    broken_run(fleet, sc.zombies, f"SIGSTOP past TTL ({backend})", "stale", broken_table)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_write_of_a_worker_acking_early(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, broken_table: list[Any]
) -> None:
    """A worker that reports a task done before its finishing write, killed in
    between: a write believed done that the history does not hold.
    """
    fleet = sc.fleet_on(
        backend, request, tmp_path, f"b-kills-{backend}", variant="ack-before-write"
    )
    broken_run(fleet, sc.kills_mid_write, f"SIGKILL mid-write ({backend})", "lost", broken_table)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_reaper_dropping_live_leases(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, broken_table: list[Any]
) -> None:
    """A reaper that drops leases before they expire: live holders refused early.

    The work, 0.1-0.2 s, is most of the reaper's period (so that most rounds meet a
    live lease) and short enough that most attempts still end; 40 more tasks after the
    plan give the last reaper leases to meet (the plan kills each reaper soon after it
    starts, and on PostgreSQL the fleet could end its tasks before a reaper's round
    met one: early takeovers 0, seen once).
    """
    fleet = sc.fleet_on(
        backend, request, tmp_path, f"b-reaper-{backend}", variant="drops-live", work=(0.1, 0.2)
    )

    def plan(f: Fleet) -> None:
        sc.reaper_kills(f)
        f.feed(40)

    scenario = f"SIGKILL reaper + workers ({backend})"
    broken_run(fleet, plan, scenario, "early", broken_table)


# ---------------------------------------------------------------- PostgreSQL server faults


@LONG_ONLY
def test_restarts_with_a_worker_not_retrying_its_finishing_write(
    private_postgres: Any, tmp_path: Path, broken_table: list[Any]
) -> None:
    """Restarts and a stop: finishing writes that met the outage, believed done."""
    fleet = sc.postgres_fleet(private_postgres, tmp_path, "b-restarts", variant="no-finish-retry")
    plan = sc.pg_restarts(private_postgres)
    broken_run(fleet, plan, "PostgreSQL restarts + 10 s stop", "lost", broken_table)


@LONG_ONLY
def test_terminate_storm_with_a_worker_not_retrying_its_finishing_write(
    private_postgres: Any, tmp_path: Path, broken_table: list[Any]
) -> None:
    """The fleet's connections cut twice a second: cut finishing writes believed done."""
    fleet = sc.postgres_fleet(private_postgres, tmp_path, "b-terminate", variant="no-finish-retry")
    plan = sc.terminate_storm(private_postgres, 4.0)
    broken_run(fleet, plan, "pg_terminate_backend 2/s for 4s", "lost", broken_table)


@LONG_ONLY
def test_slots_exhausted_with_a_worker_not_retrying_its_finishing_write(
    private_postgres: Any, tmp_path: Path, broken_table: list[Any]
) -> None:
    """No connection slot left: the finishing writes meanwhile believed done."""
    fleet = sc.postgres_fleet(private_postgres, tmp_path, "b-slots", variant="no-finish-retry")
    plan = sc.pool_exhaustion(private_postgres, probe=lambda: None)
    broken_run(fleet, plan, "max_connections exhausted", "lost", broken_table)


def test_database_clock_on_a_store_using_the_local_clock(
    private_postgres: Any, tmp_path: Path, broken_table: list[Any]
) -> None:
    """clock="database" ignored: the skewed workers take leases over early."""
    fleet = sc.postgres_fleet(
        private_postgres,
        tmp_path,
        "b-skew-db",
        clock="database",
        skews=SKEWS,
        work=(0.2, 0.4),
        variant="local-clock",
    )
    scenario = 'clock skew ±10 s (postgres, clock="database")'
    broken_run(fleet, sc.skew, scenario, "early", broken_table)


# ---------------------------------------------------------------- SQLite file faults


def test_disk_full_with_a_worker_swallowing_the_error(
    small_disk: tuple[Path, str], tmp_path: Path, broken_table: list[Any]
) -> None:
    """SQLITE_FULL on a finishing write swallowed and the write reported done."""
    where, method = small_disk
    fleet = sc.sqlite_fleet(
        where, "b-diskfull", logs=tmp_path / "b-diskfull-logs", variant="no-finish-retry"
    )
    plan = sc.disk_full(where, method)
    broken_run(fleet, plan, f"SQLite disk full ({method})", "lost", broken_table)


def test_read_only_with_a_worker_swallowing_the_error(
    tmp_path: Path, broken_table: list[Any]
) -> None:
    """A read-only database's refusal of a finishing write swallowed, reported done."""
    fleet = sc.sqlite_fleet(tmp_path, "b-readonly", variant="no-finish-retry")
    db = Path(fleet.base["path"])
    if not sc.immutable([db], True):
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE on ext4/xfs)")
    sc.immutable([db], False)
    plan = sc.read_only(db, [])
    broken_run(fleet, plan, "SQLite database read-only", "lost", broken_table)


def test_writer_lock_removed_under_a_store_relying_on_it(
    tmp_path: Path, broken_table: list[Any]
) -> None:
    """A store whose only mutual exclusion is the lock file: once it is removed, a
    lease is granted twice, which the history's verification names.
    """
    fleet = sc.sqlite_fleet(tmp_path, "b-lockfile", variant="lock-only")
    plan = sc.lock_removed(Path(f"{fleet.base['path']}.lock"))
    scenario = "SQLite writer-lock file removed"
    broken_run(fleet, plan, scenario, "verify", broken_table, naming="while the lease of")
