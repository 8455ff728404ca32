"""Factories for the bundled backends (memory, SQLite, PostgreSQL).

CI runs the suite through the CLI on them exactly as a third party would::

    sagalease conformance sagalease.conformance.factories:memory
    sagalease conformance sagalease.conformance.factories:sqlite
    sagalease conformance sagalease.conformance.factories:postgres
    sagalease conformance sagalease.conformance.factories:async_memory
    sagalease conformance sagalease.conformance.factories:async_sqlite
    sagalease conformance sagalease.conformance.factories:async_postgres
"""

from __future__ import annotations

import atexit
import functools
import itertools
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sagalease.conformance._common import Capabilities
from sagalease.store import SagaStore
from sagalease.stores.memory import MemoryStore
from sagalease.stores.sqlite import SQLiteStore

__all__ = [
    "async_memory",
    "async_postgres",
    "async_sqlite",
    "memory",
    "postgres",
    "sqlite",
    "temp_path",
]

_dir: Path | None = None
_lock = threading.Lock()
_counter = itertools.count()


def temp_path(suffix: str = ".db") -> Path:
    """A fresh path in a temporary directory removed when the process exits."""
    global _dir
    with _lock:
        if _dir is None:
            _dir = Path(tempfile.mkdtemp(prefix="sagalease-conformance-"))
            atexit.register(shutil.rmtree, _dir, ignore_errors=True)
        return _dir / f"store-{next(_counter)}{suffix}"


def memory() -> MemoryStore:
    """A fresh, empty memory store."""
    return MemoryStore()


def _reopen_sqlite(store: SagaStore) -> Callable[[], SagaStore]:
    if not isinstance(store, SQLiteStore):  # pragma: no cover - wrong factory
        raise TypeError(f"expected an SQLiteStore, got {type(store).__name__}")
    return functools.partial(SQLiteStore, store.path)


class _SQLiteFactory:
    """A fresh SQLite store in a new temporary file per call."""

    conformance_capabilities = Capabilities(reopen=_reopen_sqlite)

    def __call__(self) -> SQLiteStore:
        return SQLiteStore(temp_path())

    def __repr__(self) -> str:
        return "sagalease.conformance.factories:sqlite"


sqlite = _SQLiteFactory()
"""A fresh SQLite store in a new temporary file per call; declares cross-process sharing."""


def _reopen_postgres(store: SagaStore) -> Callable[[], SagaStore]:
    from sagalease.stores.postgres import PostgresStore

    if not isinstance(store, PostgresStore):  # pragma: no cover - wrong factory
        raise TypeError(f"expected a PostgresStore, got {type(store).__name__}")
    return store.reopener()


class _PostgresFactory:
    """A fresh store per call in a new schema on ``$SAGALEASE_TEST_POSTGRES_URL``
    (dropped on ``close()``). Claims use ``FOR UPDATE SKIP LOCKED``; worker
    processes open their own store on the same schema.
    """

    conformance_capabilities = Capabilities(reopen=_reopen_postgres, skip_locked_claims=True)

    def __call__(self) -> SagaStore:
        from sagalease.stores.postgres import scratch_store

        return scratch_store()

    def __repr__(self) -> str:
        return "sagalease.conformance.factories:postgres"


postgres = _PostgresFactory()
"""A fresh PostgreSQL store in a new schema per call (needs the ``postgres`` extra)."""


# ---------------------------------------------------------------- async stores


async def async_memory() -> Any:
    """A fresh, empty async memory store (a coroutine function, as the suite accepts)."""
    from sagalease.aio import open_async_store

    return await open_async_store("memory://")


def _reopen_async_sqlite(store: Any) -> Callable[[], Any]:
    from sagalease.aio import open_async_store

    return functools.partial(open_async_store, f"sqlite:///{store.inner.path}")


class _AsyncSQLiteFactory:
    """A fresh async SQLite store in a new temporary file per call: returns the
    coroutine that opens it; declares cross-process sharing.
    """

    conformance_capabilities = Capabilities(reopen=_reopen_async_sqlite)

    def __call__(self) -> Any:
        from sagalease.aio import open_async_store

        return open_async_store(f"sqlite:///{temp_path()}")

    def __repr__(self) -> str:
        return "sagalease.conformance.factories:async_sqlite"


async_sqlite = _AsyncSQLiteFactory()
"""A fresh async SQLite store per call (its calls on the store's own thread)."""


def _reopen_async_postgres(store: Any) -> Callable[[], Any]:
    return cast(Callable[[], Any], store.reopener())


class _AsyncPostgresFactory:
    """A fresh async PostgreSQL store per call in a new schema on
    ``$SAGALEASE_TEST_POSTGRES_URL`` (as :data:`postgres`; dropped on ``close()``):
    returns the coroutine that opens it. Claims use ``FOR UPDATE SKIP LOCKED``;
    worker processes open their own async store on the same schema.
    """

    conformance_capabilities = Capabilities(reopen=_reopen_async_postgres, skip_locked_claims=True)

    def __call__(self) -> Any:
        from sagalease.aio._postgres import open_scratch

        return open_scratch()

    def __repr__(self) -> str:
        return "sagalease.conformance.factories:async_postgres"


async_postgres = _AsyncPostgresFactory()
"""A fresh async PostgreSQL store per call (needs the ``postgres`` extra)."""
