"""Shared fixtures: one ``store`` fixture over every backend."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sagalease import MemoryStore, SagaStore, SQLiteStore

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


BACKENDS: dict[str, Callable[[Path], SagaStore]] = {
    "memory": _memory,
    "sqlite": lambda tmp: SQLiteStore(tmp / "store.db"),
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
