"""The async PostgreSQL store: opened from a ``postgresql://`` URL, its hot path
awaited on the event loop (no thread), the rest on threads, wake-ups awaited.
Skipped without a server; failed with ``SAGALEASE_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from conftest import POSTGRES_URL, require_postgres
from sagalease.aio import AsyncSagaStore, open_async_store
from sagalease.aio._postgres import AsyncPostgresStore
from sagalease.errors import LeaseConflictError, StoreUnavailableError
from sagalease.records import TaskState

TTL = timedelta(seconds=30)


@pytest.fixture
def url() -> Iterator[str]:
    """A ``postgresql://`` URL naming a fresh schema, dropped after the test."""
    require_postgres()
    schema = f"sagalease_test_{secrets.token_hex(6)}"
    yield f"{POSTGRES_URL}?schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_open_async_store_opens_the_postgres_store_and_keeps_the_hot_path_on_the_loop(
    url: str,
) -> None:
    """A lease cycle (create, claim, heartbeat, complete, get) runs no store call on a
    thread; a refused write (the slow path) does, and raises the sync store's error.
    """

    async def main() -> None:
        store = await open_async_store(url)
        assert isinstance(store, AsyncSagaStore)
        assert isinstance(store, AsyncPostgresStore)
        used: list[str] = []
        threaded = store._threaded

        async def spy(driving, call):  # type: ignore[no-untyped-def]
            used.append(getattr(call, "func", call).__name__)
            return await threaded(driving, call)

        store._threaded = spy  # type: ignore[method-assign]
        try:
            await store.create("a", queue="q")
            task = await store.claim_next(owner="w", ttl=TTL, queues="q")
            assert task is not None
            assert task.lease is not None
            token = task.lease.token
            await store.heartbeat("a", owner="w", token=token, ttl=TTL)
            assert used == []
            with pytest.raises(LeaseConflictError):
                await store.heartbeat("a", owner="w", token=token + 1, ttl=TTL)
            assert used == ["heartbeat"]  # the engine's statement did not apply: the core's path
            done = await store.complete("a", owner="w", token=token)
            assert done.state is TaskState.COMPLETED
            assert (await store.get("a")) == done
            assert used == ["heartbeat"]
            assert len(await store.history("a")) == 4
        finally:
            await store.close()
        with pytest.raises(StoreUnavailableError):
            await store.get("a")

    asyncio.run(main())


def test_wait_for_work_is_woken_by_a_create_in_another_store(url: str) -> None:
    """Another store's create (here: the sync store on the same schema) wakes the
    awaiting task well within its timeout; a wait for another queue is not woken.
    """
    from sagalease.stores import open_store

    async def main() -> None:
        store = await open_async_store(url)
        assert isinstance(store, AsyncPostgresStore)
        try:
            assert not await store.wait_for_work(queues="q", timeout=timedelta(seconds=0.3))
            other = open_store(url)
            try:
                waiting = asyncio.create_task(
                    store.wait_for_work(queues="q", timeout=timedelta(seconds=20))
                )
                unwoken = asyncio.create_task(
                    store.wait_for_work(queues="elsewhere", timeout=timedelta(seconds=1))
                )
                await asyncio.sleep(0.5)  # the listener is connected
                start = time.monotonic()
                await asyncio.to_thread(other.create, "t", queue="q")
                assert await waiting
                woken_after = time.monotonic() - start
                assert not await unwoken
            finally:
                other.close()
            assert woken_after < 2.0, woken_after
        finally:
            await store.close()

    asyncio.run(main())


def test_the_server_clock_is_read_on_the_loop(url: str) -> None:
    """``?clock=database``: the clock's statement is a plan too (no thread)."""

    async def main() -> None:
        store = await open_async_store(url + "&clock=database")
        assert isinstance(store, AsyncPostgresStore)
        before = threading.active_count()
        try:
            task = await store.create("c")
            assert abs(task.created_us - time.time() * 1e6) < 60e6
        finally:
            await store.close()
        assert threading.active_count() <= before + 1

    asyncio.run(main())


def test_killed_async_connections_are_one_warning_and_the_pool_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every connection of the async pool killed under claims: the calls raise
    StoreUnavailableError, the driver's warnings become one WARNING line on
    sagalease.postgres (the sync store's logger, the rest at DEBUG), none is left on
    psycopg's loggers, and the next calls work on fresh connections.
    """
    from sagalease.aio._postgres import over
    from sagalease.stores.postgres import PostgresStore
    from sagalease.stores.postgres import _store as postgres

    require_postgres()
    schema = f"sagalease_test_{secrets.token_hex(6)}"
    app = f"ares_{schema}"
    dsn = f"{POSTGRES_URL}?application_name={app}"
    caplog.set_level(logging.DEBUG, logger=postgres.LOGGER_NAME)

    def kill() -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (app,),
            )

    async def main() -> None:
        opened = await over(lambda: PostgresStore(dsn, schema=schema, min_size=1, max_size=2))
        assert isinstance(opened, AsyncSagaStore)
        store = opened
        try:
            for i in range(4):
                await store.create(f"t{i}")
            claims = [store.claim_next(owner=f"w{i}", ttl=TTL) for i in range(2)]
            assert None not in await asyncio.gather(*claims)  # both pooled connections used
            await asyncio.to_thread(kill)
            failures = 0
            for _ in range(4):  # at most one failure per dead pooled connection
                try:
                    await store.claim_next(owner="w", ttl=TTL)
                except StoreUnavailableError:
                    failures += 1
                else:
                    break
            assert failures >= 1
            assert await store.claim_next(owner="w2", ttl=TTL) is not None  # works again
            await asyncio.sleep(0.5)  # the pool's own tasks have reconnected meanwhile
        finally:
            await store.close()
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )

    asyncio.run(main())
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == postgres.LOGGER_NAME and r.levelno >= logging.WARNING
    ]
    driver = [
        r.getMessage()
        for r in caplog.records
        if r.name in ("psycopg", "psycopg.pool") and r.levelno >= logging.WARNING
    ]
    assert driver == []
    assert len(lines) == 1, lines
    assert "connection trouble" in lines[0]
