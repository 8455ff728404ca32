"""Shared fixtures: one ``store`` fixture over every backend."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sagalease import MemoryStore, SagaStore, SQLiteStore

# Stores in the test suite (and the worker processes it starts) check the core's
# contracts on every event; production stores skip them unless asked.
os.environ.setdefault("SAGALEASE_CONTRACTS", "1")

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep", max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""The instant tests start from (every call passes an explicit ``now``)."""


def _memory(_tmp: Path) -> SagaStore:
    return MemoryStore()


POSTGRES_URL = os.environ.get(
    "SAGALEASE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server the postgres tests use (each test gets its own schema)."""

_postgres_problem: list[str] = []


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here (``None``: they can); checked once."""
    if not _postgres_problem:
        try:
            import psycopg

            with psycopg.connect(POSTGRES_URL, connect_timeout=3):
                pass
            _postgres_problem.append("")
        except ImportError:
            _postgres_problem.append("psycopg is not installed (the 'postgres' extra)")
        except Exception as exc:  # any failure to connect
            _postgres_problem.append(f"PostgreSQL at $SAGALEASE_TEST_POSTGRES_URL: {exc}")
    return _postgres_problem[0] or None


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable; fail instead when
    ``SAGALEASE_REQUIRE_POSTGRES=1`` (CI).
    """
    problem = postgres_unavailable()
    if problem is None:
        return
    if os.environ.get("SAGALEASE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (SAGALEASE_REQUIRE_POSTGRES=1): {problem}")
    pytest.skip(f"no PostgreSQL: {problem}")


def _postgres(_tmp: Path) -> SagaStore:
    require_postgres()
    from sagalease.stores.postgres import scratch_store

    return scratch_store(POSTGRES_URL)


BACKENDS: dict[str, Callable[[Path], SagaStore]] = {
    "memory": _memory,
    "sqlite": lambda tmp: SQLiteStore(tmp / "store.db"),
    "postgres": _postgres,
}
"""Backend name → factory taking a fresh temporary directory."""


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    """A fresh, empty store of each backend."""
    s = BACKENDS[request.param](tmp_path)
    try:
        yield s
    finally:
        s.close()
