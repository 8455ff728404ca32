"""The scenarios' plans, shared by the tests and the broken-variant tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chaos._fleet import FINISHING, SCALE, ChaosResult, Child, Fault, Fleet, report, wall_us
from sagalease import SagaStore, SQLiteStore


def sqlite_fleet(tmp_path: Path, name: str, **options: Any) -> Fleet:
    """A fleet over a fresh SQLite file in ``tmp_path``."""
    db = tmp_path / f"{name}.db"
    SQLiteStore(db).close()
    return Fleet(
        name,
        {"backend": "sqlite", "path": str(db)},
        lambda: SQLiteStore(db, timeout=2.0),
        logs=tmp_path / f"{name}-logs",
        **options,
    )


def postgres_fleet(
    server: Any, tmp_path: Path, name: str, *, clock: str = "local", **options: Any
) -> Fleet:
    """A fleet over a fresh schema of the private PostgreSQL server."""
    from sagalease.stores.postgres import PostgresStore

    schema = f"chaos_{name.replace('-', '_')}_{int(time.time() * 1000) % 10**8}"

    def parent() -> SagaStore:
        return PostgresStore(server.dsn, schema=schema, connect_timeout=5, max_size=2)

    parent().close()  # the schema, before any child opens it
    return Fleet(
        name,
        {"backend": "postgresql", "dsn": server.dsn, "schema": schema, "clock": clock},
        parent,
        logs=tmp_path / f"{name}-logs",
        **options,
    )


def conclude(result: ChaosResult, table: list[dict[str, Any]], *, early_ok: bool = False) -> None:
    """Print the scenario's figures, add its row, and fail on any problem."""
    print(report(result))
    table.append(result.table_row())
    problems = result.problems(early_ok=early_ok)
    assert not problems, "\n".join(problems)


def _holder(fleet: Fleet) -> tuple[Child, str] | None:
    held = fleet.holders()
    for child in fleet.live():
        if child.owner in held:
            return child, held[child.owner]
    return None


def zombies(fleet: Fleet) -> None:
    """SIGSTOP a worker holding a lease for 2.5 TTLs, then SIGCONT: it wakes a zombie."""
    fleet.feed(30 * SCALE)
    for _ in range(2 * SCALE):
        fleet.wait_progress(3)
        found = None
        while found is None:
            found = _holder(fleet)
            time.sleep(0.01)
        child, task = found
        fleet.faults.append(Fault("sigstop", wall_us(), frozenset([task]), after=child.owner))
        fleet.pause(child, 2.5 * fleet.ttl)
        fleet.feed(5)


def kills_mid_write(fleet: Fleet, kills: int | None = None) -> None:
    """SIGKILL a worker the moment it sends a finishing write."""
    armed = [3 * SCALE if kills is None else kills]

    def on_event(child: Child, event: dict[str, Any]) -> None:
        if event["ev"] == "begin" and event["event"] in FINISHING and armed[0] > 0:
            armed[0] -= 1
            fleet.kill(child)
            fleet.faults.append(
                Fault("sigkill-mid-write", wall_us(), frozenset([event["task"]]), child.owner)
            )

    fleet.listeners.append(on_event)
    fleet.feed(30 * SCALE)
    end = time.monotonic() + 60 * SCALE
    while armed[0] > 0 and time.monotonic() < end:
        fleet.feed(3)
        time.sleep(0.3)


def reaper_kills(fleet: Fleet) -> None:
    """SIGKILL the reaper (it is replaced) while workers are SIGKILLed too: the
    expired leases of the killed workers are dropped by the next reaper.
    """
    fleet.feed(30 * SCALE)
    for _ in range(2 * SCALE):
        fleet.wait_progress(3)
        reapers = fleet.live("reaper")
        if reapers:
            fleet.kill(reapers[0])
            fleet.faults.append(Fault("sigkill-reaper", wall_us(), reaper=True))
        found = _holder(fleet)
        if found is not None:
            fleet.kill(found[0])
        time.sleep(fleet.ttl)
        fleet.feed(5)


def skew(fleet: Fleet) -> None:
    """Workers 10 s behind and 10 s ahead: work that outlasts the pending tasks so
    that every worker meets leases of the others.
    """
    fleet.feed(25 * SCALE)
    fleet.wait_progress(5)
    fleet.feed(10 * SCALE)
