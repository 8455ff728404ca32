"""The async PostgreSQL store: :class:`~sagalease.stores.postgres.PostgresStore`'s
own logic, its I/O awaited through psycopg 3's :class:`psycopg.AsyncConnection`
and :class:`psycopg_pool.AsyncConnectionPool`.

There is no second copy of the store: every call runs the sync store's method
(argument checks, the engine, the SQL, the row codec, the core), in a mode
(:data:`~sagalease.stores.postgres._store._driving`) where the store's hot path
does not touch a connection but hands over a *plan* (the statements of the call,
as a generator: :data:`~sagalease.stores.postgres._store.Plan`). This module
runs the plan on a connection of the async pool, then runs the method again
with the plan's result as its answer. That covers ``create``, ``create_many``,
``get``, every holder and operator event written by the engine's one statement
(``acquire``, ``heartbeat``, ``release``, ``complete``, ``fail``, ...),
``complete_many``'s batch statement, the one-statement claim (``claim_next``,
``claim_batch``) and the server clock (``?clock=database``), contracts mode
included: one or two awaited round trips, nothing on a thread.

What the plans do not cover runs the sync store's method on a worker thread
(one of at most the sync pool's size), never on the event loop: the slow paths
(a compare-and-set that lost a race or met a stale cached record, the core's
claim of the rows the one statement left to it, batch writes that did not all
apply), ``reap``, ``list_stale``, ``list_tasks``, ``history``, ``counts`` and
``queue_stats``, and opening (migrations) and closing. Those use the sync
store's own pool.

Wake-ups: :meth:`AsyncPostgresStore.wait_for_work` awaits a notification on the
schema's channel (the sync store's channel and payloads) on one ``LISTEN``
connection per store, read by an asyncio task; no polling.

The driver's warnings about the async pool's connections are the sync store's
incidents: one WARNING line per incident on ``sagalease.postgres``, the rest at
DEBUG (the pool is opened, and each connection used, under the store's
incidents; the pool's own tasks inherit them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sagalease import core
from sagalease.aio._store import install_forwarding
from sagalease.clock import Clock, duration_us
from sagalease.errors import StoreUnavailableError
from sagalease.stores.postgres._store import (
    Plan,
    PostgresStore,
    _current,
    _Driving,
    _driving,
    _OffLoop,
    _Planned,
    _PlanStepper,
    _using,
    scratch_store,
)

__all__ = ["AsyncPostgresStore", "open_async_postgres"]

_PLANNED: Final = frozenset(
    {
        "create",
        "create_many",
        "get",
        "acquire",
        "claim_next",
        "claim_batch",
        "heartbeat",
        "release",
        "register_compensation",
        "complete",
        "complete_many",
        "fail",
        "compensation_applied",
        "compensation_failed",
        "quarantine",
        "annotate",
    }
)
"""The methods tried on the event loop first (their plans); the others go to a thread."""

_POOL_SIZE: Final = 8


def _under(driving: _Driving, call: Callable[[], Any]) -> Any:
    _driving.set(driving)
    return call()


def _replayable(value: object) -> object:
    """``value``, or the list of its items if it is a one-shot iterator (a generator)."""
    return list(value) if isinstance(value, Iterator) else value


async def _steps(conn: psycopg.AsyncConnection[Any], plan: Plan[Any]) -> Any:
    """Run ``plan``'s statements on ``conn`` (rolling back what an error leaves open)."""
    stepper = _PlanStepper(plan)
    try:
        while (op := stepper.op) is not None:
            try:
                cursor = await conn.execute(op.query, op.params, prepare=op.prepare)
            except psycopg.Error as exc:
                stepper.settle(exc)
                continue
            stepper.settle(await cursor.fetchall() if cursor.rownumber is not None else [])
    except BaseException:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(b"ROLLBACK")
        raise
    return stepper.result


class _AsyncListener:
    """The ``LISTEN`` connection of one async store, read by one asyncio task
    (started by the first wait, started again by the first wait after it was
    lost): the notifications' payloads (queue names) are counted, and each count
    sets the event the waiters await.
    """

    def __init__(self, connect: Callable[[], Any], channel: str) -> None:
        self._connect = connect
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel)).as_bytes(None)
        self._counts: Counter[str] = Counter()
        self._any = 0
        self._news = asyncio.Event()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._seen: weakref.WeakKeyDictionary[asyncio.Task[Any], dict[Any, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False

    def heard(self, queues: tuple[str, ...] | None) -> int:
        """Notifications received for ``queues`` (``None``: any queue) so far."""
        return self._any if queues is None else sum(self._counts[q] for q in queues)

    def _tell(self) -> None:
        news, self._news = self._news, asyncio.Event()
        news.set()

    async def _read(self) -> None:
        try:
            conn = await self._connect()
            try:
                await conn.execute(self._listen)
                self._ready.set()
                self._tell()
                async for note in conn.notifies():
                    if note.payload:  # an empty one: a store closing
                        self._counts[note.payload] += 1
                        self._any += 1
                        self._tell()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
        except Exception:  # the waiters learn of it (False); nothing is printed
            pass
        finally:
            self._ready.clear()
            self._reader = None
            self._tell()

    async def wait(self, queues: tuple[str, ...] | None, seconds: float) -> bool:
        """Wait up to ``seconds`` for a notification of ``queues`` heard after this
        task's previous wait on them ended (its first: after it began).
        """
        if self._reader is None and not self._closed:
            self._reader = asyncio.create_task(self._read(), name="sagalease-listener")
        task = asyncio.current_task()
        seen = self._seen.setdefault(task, {}) if task is not None else {}
        start = seen.get(queues, self.heard(queues))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._closed and self.heard(queues) == start:
                    if self._reader is None:  # lost, or never connected: as polling
                        await asyncio.sleep(seconds)
                    else:
                        await self._news.wait()
        seen[queues] = self.heard(queues)
        return seen[queues] != start

    async def close(self) -> None:
        """Stop listening; the waiters return ``False``."""
        self._closed = True
        self._tell()
        reader = self._reader
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


@install_forwarding
class AsyncPostgresStore:
    """An :class:`~sagalease.aio.AsyncSagaStore` over a
    :class:`~sagalease.stores.postgres.PostgresStore` (:attr:`inner`), its
    planned calls awaited on an async pool (see the module). Open it with
    :func:`~sagalease.aio.open_async_store` (``postgresql://...``).
    """

    def __init__(self, inner: PostgresStore, pool: AsyncConnectionPool[Any]) -> None:
        self.inner = inner
        """The sync store whose logic every call runs (and whose pool its threaded calls use)."""
        self._pool = pool
        self._threads = ThreadPoolExecutor(
            max_workers=max(1, inner._pool.max_size), thread_name_prefix="sagalease-pg-async"
        )
        self._listener = _AsyncListener(
            functools.partial(
                psycopg.AsyncConnection.connect, inner._dsn.dsn, **inner._listener_kwargs
            ),
            inner.channel,
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"async {self.inner!r}"

    @property
    def clock(self) -> object:
        """The sync store's clock."""
        return self.inner.clock

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of the store."""
        return self.inner.schema

    async def _execute(self, planned: _Planned) -> tuple[bool, Any]:
        """Run a plan on a connection of the async pool: ``(True, result)``, or
        ``(False, error)`` with the error the sync store raises for it (driver and
        pool errors through its ``_failure``; a broken connection has the pool
        checked). The pool's ``getconn``/``putconn`` directly, not its
        ``connection()`` context (which would commit an autocommit connection).
        """
        inner, pool = self.inner, self._pool
        token = _current.set(inner._incidents)
        try:
            inner._check_usable()
            conn = await pool.getconn(timeout=inner.timeout)
            try:
                result = await _steps(conn, planned.plan)
            finally:
                await pool.putconn(conn)
            inner._incidents.worked()
            return True, result
        except (PoolTimeout, psycopg.Error) as exc:
            error, broken = inner._failure(planned.action, exc)
            if broken:
                with contextlib.suppress(Exception):
                    await pool.check()
            error.__cause__ = exc
            return False, error
        except Exception as exc:
            return False, exc
        finally:
            _current.reset(token)

    async def _threaded(self, driving: _Driving, call: Callable[[], Any]) -> Any:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, context.run, _under, driving, call)

    async def _forward(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the sync store's ``name``: on the loop, its plans awaited, and on a
        thread from the first I/O that no plan covers.
        """
        # A call may run more than once (once per plan): one-shot iterators made lists.
        args = tuple(_replayable(arg) for arg in args)
        kwargs = {key: _replayable(value) for key, value in kwargs.items()}
        call = functools.partial(getattr(self.inner, name), *args, **kwargs)
        answers: list[tuple[bool, Any]] = []
        while name in _PLANNED:
            context = contextvars.copy_context()
            try:
                return context.run(_under, _Driving(list(answers), threaded=False), call)
            except _Planned as planned:
                answers.append(await self._execute(planned))
            except _OffLoop:
                break
        return await self._threaded(_Driving(answers, threaded=True), call)

    async def wait_for_work(
        self, *, queues: str | Collection[str] | None = None, timeout: timedelta
    ) -> bool:
        """``PostgresStore.wait_for_work`` awaited: ``True`` once a notification
        of one of ``queues`` (``None``: any) arrives on the schema's channel, from
        any process; ``False`` after ``timeout``. A closed store:
        :class:`~sagalease.errors.StoreUnavailableError`.
        """
        names = core.check_queues(queues)
        seconds = duration_us(timeout, "timeout", allow_zero=True) / 1_000_000
        self.inner._check_usable()
        return await self._listener.wait(names, seconds)

    async def close(self) -> None:
        """Stop listening, close the async pool, then the sync store (on a thread);
        a repeat does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self._listener.close()
            with contextlib.suppress(Exception):
                await self._pool.close(timeout=5.0)
            await self._threaded(_Driving([], threaded=True), self.inner.close)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown)

    def reopener(self) -> Callable[[], Any]:
        """A picklable callable returning the coroutine that opens another async
        store on this store's database and schema (for worker processes).
        """
        return functools.partial(_reopen, self.inner._dsn.dsn, self.inner.schema)


async def over(opening: Callable[[], PostgresStore]) -> AsyncPostgresStore:
    """The async store over the sync store that ``opening`` opens (on a thread:
    it connects and migrates), with its own async pool on the same database.
    """
    loop = asyncio.get_running_loop()
    inner = await loop.run_in_executor(None, opening)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        inner._dsn.dsn,
        kwargs=dict(inner._kwargs),
        min_size=1,
        max_size=_POOL_SIZE,
        open=False,
        timeout=inner.timeout,
        name=f"sagalease-async-{inner.schema}",
        reconnect_timeout=4.0,
    )
    try:
        with _using(inner._incidents):  # the pool's own tasks inherit it
            await pool.open(wait=True, timeout=inner.connect_timeout + inner.timeout)
    except (PoolTimeout, psycopg.Error) as exc:
        with contextlib.suppress(Exception):
            await pool.close(timeout=1.0)
        await loop.run_in_executor(None, inner.close)
        raise StoreUnavailableError(
            f"cannot open an async connection pool to {inner._dsn.display}: {inner._scrub(exc)}"
        ) from exc
    return AsyncPostgresStore(inner, pool)


async def open_async_postgres(
    url: str, *, clock: Clock | None = None, connect_timeout: float | None = None
) -> AsyncPostgresStore:
    """The async store for a ``postgresql://`` URL (the sync store's URL and options)."""
    from sagalease.stores import open_store

    def opening() -> PostgresStore:
        store = open_store(url, clock=clock, connect_timeout=connect_timeout)
        assert isinstance(store, PostgresStore)
        return store

    return await over(opening)


async def _reopen(dsn: str, schema: str) -> AsyncPostgresStore:
    return await over(functools.partial(PostgresStore, dsn, schema=schema, max_size=2))


async def open_scratch() -> AsyncPostgresStore:
    """A fresh async store in a new schema (the sync :func:`scratch_store`'s),
    dropped on ``close()`` (tests and the conformance suite).
    """
    return await over(scratch_store)
