"""Shared fixtures: one ``store`` fixture over every backend."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sagalease import MemoryStore, SagaStore, SQLiteStore
from sagalease.conformance import Capabilities, StoreFactory
from sagalease.conformance import factories as shipped_factories

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


class _SQLiteConformanceFactory:
    """A fresh SQLite store in a new file under one pytest temporary directory per call;
    declares cross-process sharing exactly as the shipped ``factories:sqlite`` does.
    """

    conformance_capabilities: Capabilities = shipped_factories.sqlite.conformance_capabilities

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._counter = itertools.count()

    def __call__(self) -> SQLiteStore:
        return SQLiteStore(self._directory / f"conformance-{next(self._counter)}.db")

    def __repr__(self) -> str:
        return f"SQLite stores in {self._directory}"


class _PostgresConformanceFactory:
    """A fresh PostgreSQL store in a new schema on :data:`POSTGRES_URL` per call (dropped
    on ``close()``); declares what the shipped ``factories:postgres`` declares.
    """

    conformance_capabilities: Capabilities = shipped_factories.postgres.conformance_capabilities

    def __call__(self) -> SagaStore:
        from sagalease.stores.postgres import scratch_store

        return scratch_store(POSTGRES_URL)

    def __repr__(self) -> str:
        return f"PostgreSQL scratch schemas on {POSTGRES_URL}"


def conformance_factory(backend: str, tmp_path: Path) -> StoreFactory:
    """The conformance-suite factory (fresh, empty store per call) of a bundled backend;
    for ``postgres``, skips or fails through :func:`require_postgres` first.
    """
    if backend == "memory":
        return shipped_factories.memory
    if backend == "sqlite":
        return _SQLiteConformanceFactory(tmp_path)
    if backend == "postgres":
        require_postgres()
        return _PostgresConformanceFactory()
    raise ValueError(f"unknown backend {backend!r}")
