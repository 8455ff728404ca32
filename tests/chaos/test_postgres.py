"""PostgreSQL server faults on a private server (conftest.private_postgres): restarts
and a 10 s stop, pg_terminate_backend of the fleet's connections twice a second, and
the connection slots exhausted by idle connections (docs/chaos.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from chaos import _scenarios as sc
from chaos._fleet import LONG, run_plan
from sagalease import StoreUnavailableError, open_store

STORM_SECONDS = 20.0 if LONG else 4.0
"""How long the pg_terminate_backend storm lasts (the issue's 20 s in the long form)."""

PROBE_TIMEOUT = 2.0
"""The connect_timeout of the store opened while every slot is taken."""


def test_restarts_and_stop(private_postgres: Any, tmp_path: Path, chaos_table: list[Any]) -> None:
    """Three restarts and a 10 s stop mid-run: nothing lost, every write fenced."""
    fleet = sc.postgres_fleet(private_postgres, tmp_path, "restarts")
    result = run_plan(fleet, sc.pg_restarts(private_postgres), "PostgreSQL restarts + 10 s stop")
    sc.conclude(result, chaos_table)


def test_terminate_backend_storm(
    private_postgres: Any, tmp_path: Path, chaos_table: list[Any]
) -> None:
    """The fleet's connections killed twice a second."""
    fleet = sc.postgres_fleet(private_postgres, tmp_path, "terminate")
    plan = sc.terminate_storm(private_postgres, STORM_SECONDS)
    result = run_plan(fleet, plan, f"pg_terminate_backend 2/s for {STORM_SECONDS:g}s")
    sc.conclude(result, chaos_table)


def test_connection_slots_exhausted(
    private_postgres: Any, tmp_path: Path, chaos_table: list[Any]
) -> None:
    """max_connections reached: opening a store fails with StoreUnavailableError within
    its connect_timeout (one line, the host named), and the fleet recovers after.
    """
    fleet = sc.postgres_fleet(private_postgres, tmp_path, "slots")
    waited: list[float] = []
    errors: list[str] = []

    def probe() -> None:
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            open_store(
                f"{private_postgres.url}&schema={fleet.base['schema']}",
                connect_timeout=PROBE_TIMEOUT,
            )
        waited.append(time.monotonic() - start)
        errors.append(str(caught.value))

    plan = sc.pool_exhaustion(private_postgres, probe)
    result = run_plan(fleet, plan, "max_connections exhausted")
    print(f"open_store while the slots are taken: {errors[0]!r} after {waited[0]:.2f}s")
    assert "\n" not in errors[0]
    assert "127.0.0.1" in errors[0]
    assert waited[0] < PROBE_TIMEOUT + 30  # a hang guard: it gave up, it did not wait forever
    sc.conclude(result, chaos_table)
