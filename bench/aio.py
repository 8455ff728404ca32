"""The async part: the lease cycle (``claim_next`` + ``heartbeat`` + ``complete``)
of the async PostgreSQL store (``sagalease.aio``, one asyncio task per process
awaiting each call) against the sync :class:`PostgresStore`, at 1 and 8
processes, measured interleaved in one run (``python -m bench.run --part async``).
Each process drains the same kind of prepared schema as ``cycles``' ``lib``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import Work, median, percentile, run_processes
from bench.cycles import TTL, pg_lib_prepare, pg_lib_worker

IMPLS = ("sync", "async")


def pg_async_worker(dsn: str, schema: str, owner: str, mode: str) -> Work:
    """Set up one async worker process: its own event loop and async store."""
    from sagalease.aio._postgres import AsyncPostgresStore, over
    from sagalease.stores.postgres import PostgresStore

    loop = asyncio.new_event_loop()
    store: AsyncPostgresStore = loop.run_until_complete(
        over(lambda: PostgresStore(dsn, schema=schema, min_size=1, max_size=1))
    )
    loop.run_until_complete(store.get("tpl-pending"))  # warm a pooled connection

    async def drain() -> tuple[int, list[float]]:
        latencies: list[float] = []
        clock = time.perf_counter_ns
        while True:
            started = clock()
            task = await store.claim_next(owner=owner, ttl=TTL)
            if task is None:
                return len(latencies), latencies
            await store.heartbeat(task.task_id, owner=owner, token=task.token, ttl=TTL)
            await store.complete(task.task_id, owner=owner, token=task.token)
            latencies.append((clock() - started) / 1000)

    def work() -> tuple[int, list[float]]:
        try:
            return loop.run_until_complete(drain())
        finally:
            loop.run_until_complete(store.close())
            loop.close()

    return work


def measure(impl: str, workers: int, tasks: int, dsn: str) -> dict[str, Any]:
    """``workers`` processes of ``impl`` (``sync`` or ``async``) drain ``tasks``."""
    schema = f"bench_aio_{impl}"
    pg_lib_prepare(dsn, schema, tasks)
    target = pg_async_worker if impl == "async" else pg_lib_worker
    result = run_processes(target, [(dsn, schema, f"w{i}", "full") for i in range(workers)])
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
    """One line per worker count: the median rate of each and async / sync."""
    lines = []
    for workers in sorted({row["workers"] for row in rows}):
        rate = {
            impl: median([r["rate"] for r in rows if r["impl"] == impl and r["workers"] == workers])
            for impl in IMPLS
        }
        ratio = rate["async"] / rate["sync"] if rate["sync"] else 0.0
        lines.append(
            f"postgres x{workers}: sync {rate['sync']:.0f}/s, async {rate['async']:.0f}/s,"
            f" async/sync {ratio:.2f}"
        )
    return lines
