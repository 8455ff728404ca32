"""The async part: the lease cycle (``claim_next`` + ``heartbeat`` + ``complete``)
of the async PostgreSQL store (``sagalease.aio``, one asyncio task per process
awaiting each call) against the sync :class:`PostgresStore`, at 1 and 8
processes, measured interleaved in one run (``python -m bench.run --part async``).
Each process drains the same kind of prepared schema as ``cycles``' ``lib``.

The driver's own ceiling beside it: ``raw-sync`` and ``raw-async`` run
``cycles``' ``raw+history`` statements on psycopg's ``ConnectionPool`` and
``AsyncConnectionPool`` (one connection each), so ``raw-async / raw-sync`` is
what psycopg's asyncio path costs with no library around it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import TTL_US, Work, median, percentile, run_processes
from bench.cycles import (
    TTL,
    _now_us,
    _timed_loop,
    pg_lib_prepare,
    pg_lib_worker,
    pg_raw_prepare,
    pg_raw_statements,
)

IMPLS = ("sync", "async", "raw-sync", "raw-async")
PAIRS = (("async", "sync"), ("raw-async", "raw-sync"))


def _looped(
    loop: asyncio.AbstractEventLoop,
    cycle: Callable[[], Awaitable[bool]],
    close: Callable[[], Awaitable[None]],
) -> Work:
    """``cycles``' ``_timed_loop`` for an awaited ``cycle`` on ``loop``, then ``close()``."""

    async def timed() -> tuple[int, list[float]]:
        latencies: list[float] = []
        clock = time.perf_counter_ns
        while True:
            started = clock()
            if not await cycle():
                return len(latencies), latencies
            latencies.append((clock() - started) / 1000)

    def work() -> tuple[int, list[float]]:
        try:
            return loop.run_until_complete(timed())
        finally:
            loop.run_until_complete(close())
            loop.close()

    return work


def pg_async_worker(dsn: str, schema: str, owner: str, mode: str) -> Work:
    """Set up one async worker process: its own event loop and async store."""
    from sagalease.aio._postgres import AsyncPostgresStore, over
    from sagalease.stores.postgres import PostgresStore

    loop = asyncio.new_event_loop()
    store: AsyncPostgresStore = loop.run_until_complete(
        over(lambda: PostgresStore(dsn, schema=schema, min_size=1, max_size=1))
    )
    loop.run_until_complete(store.get("tpl-pending"))  # warm a pooled connection

    async def cycle() -> bool:
        task = await store.claim_next(owner=owner, ttl=TTL)
        if task is None:
            return False
        await store.heartbeat(task.task_id, owner=owner, token=task.token, ttl=TTL)
        await store.complete(task.task_id, owner=owner, token=task.token)
        return True

    return _looped(loop, cycle, store.close)


def pg_raw_pool_worker(dsn: str, schema: str, owner: str, mode: str) -> Work:
    """One raw+history worker on psycopg's pool: ``mode`` ``sync`` or ``async``."""
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    q = pg_raw_statements(schema, hist=True)
    kwargs = {"autocommit": True}

    def lost(cursor: Any, what: str) -> None:
        if cursor.rowcount != 1:
            raise RuntimeError(f"raw {what} lost the lease")

    if mode == "sync":
        pool = ConnectionPool(dsn, min_size=1, max_size=1, kwargs=kwargs)
        pool.wait()

        def cycle() -> bool:
            now = _now_us()
            with pool.connection() as conn:
                cur = conn.execute(q["claim"], (owner, now + TTL_US, now, owner), prepare=True)
                row = cur.fetchone()
            if row is None:
                return False
            job, token = row
            now = _now_us()
            with pool.connection() as conn:
                beat = (now + TTL_US, job, owner, token, now, owner)
                lost(conn.execute(q["heartbeat"], beat, prepare=True), "heartbeat")
            with pool.connection() as conn:
                done = (job, owner, token, _now_us(), owner)
                lost(conn.execute(q["complete"], done, prepare=True), "complete")
            return True

        def work_sync() -> tuple[int, list[float]]:
            try:
                return _timed_loop(cycle)
            finally:
                pool.close()

        return work_sync

    loop = asyncio.new_event_loop()
    apool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=1, kwargs=kwargs, open=False
    )
    loop.run_until_complete(apool.open(wait=True))

    async def cycle_async() -> bool:
        now = _now_us()
        async with apool.connection() as conn:
            params = (owner, now + TTL_US, now, owner)
            row = await (await conn.execute(q["claim"], params, prepare=True)).fetchone()
        if row is None:
            return False
        job, token = row
        now = _now_us()
        async with apool.connection() as conn:
            beat = (now + TTL_US, job, owner, token, now, owner)
            lost(await conn.execute(q["heartbeat"], beat, prepare=True), "heartbeat")
        async with apool.connection() as conn:
            done = (job, owner, token, _now_us(), owner)
            lost(await conn.execute(q["complete"], done, prepare=True), "complete")
        return True

    return _looped(loop, cycle_async, apool.close)


def measure(impl: str, workers: int, tasks: int, dsn: str) -> dict[str, Any]:
    """``workers`` processes of ``impl`` (``sync`` or ``async``) drain ``tasks``."""
    schema = f"bench_aio_{impl.replace('-', '_')}"
    if impl.startswith("raw-"):
        pg_raw_prepare(dsn, schema, tasks)
        target, mode = pg_raw_pool_worker, impl.removeprefix("raw-")
    else:
        pg_lib_prepare(dsn, schema, tasks)
        target, mode = (pg_async_worker if impl == "async" else pg_lib_worker), "full"
    result = run_processes(target, [(dsn, schema, f"w{i}", mode) for i in range(workers)])
    if result.count != tasks:
        raise RuntimeError(f"async part {impl} x{workers}: {result.count} of {tasks} tasks done")
    return {
        "impl": impl,
        "workers": workers,
        "count": result.count,
        "seconds": result.seconds,
        "rate": result.rate,
        "p50_us": percentile(result.latencies_us, 0.5),
        "p99_us": percentile(result.latencies_us, 0.99),
    }


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """One line per worker count and pair: the median rate of each and their ratio
    (the library's ``async / sync``, then the driver's ``raw-async / raw-sync``).
    """
    lines = []
    for workers in sorted({row["workers"] for row in rows}):
        rate = {
            impl: median([r["rate"] for r in rows if r["impl"] == impl and r["workers"] == workers])
            for impl in {r["impl"] for r in rows}
        }
        for fast, base in PAIRS:
            if fast in rate and base in rate:
                ratio = rate[fast] / rate[base] if rate[base] else 0.0
                lines.append(
                    f"postgres x{workers}: {base} {rate[base]:.0f}/s, {fast} {rate[fast]:.0f}/s,"
                    f" {fast}/{base} {ratio:.2f}"
                )
    return lines
