"""The handlers part: one process, 200 concurrent handlers that each sleep 50 ms,
as :class:`~sagalease.aio.AsyncWorker` (200 asyncio tasks) against the sync
:class:`~sagalease.Worker` (200 threads), on an SQLite file and on PostgreSQL,
interleaved in one run (``python -m bench.run --part handlers``). Each run is a
fresh spawned process that drains the same number of fresh tasks; it reports its
throughput, the CPU it used (user + system, all threads) and its peak RSS.
"""

from __future__ import annotations

import asyncio
import resource
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import CTX, WORKDIR, median

IMPLS = ("threads", "async")
CONCURRENCY = 200
SLEEP = 0.05
POLL = timedelta(milliseconds=20)


def _url(backend: str, dsn: str, impl: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{WORKDIR / f'handlers-{impl}.db'}"
    return f"{dsn}?schema=bench_handlers_{impl}"


def prepare(backend: str, dsn: str, impl: str, tasks: int) -> str:
    """A fresh store (an emptied file or schema) holding ``tasks`` pending tasks."""
    from sagalease import NewTask
    from sagalease.stores import open_store

    url = _url(backend, dsn, impl)
    if backend == "sqlite":
        WORKDIR.mkdir(parents=True, exist_ok=True)
        for path in Path(WORKDIR).glob(f"handlers-{impl}.db*"):
            path.unlink()
    else:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS bench_handlers_{impl} CASCADE")
    store = open_store(url)
    try:
        for start in range(0, tasks, 500):
            ids = range(start, min(tasks, start + 500))
            store.create_many([NewTask(f"h{i:06d}") for i in ids])
    finally:
        store.close()
    return url


def _child(impl: str, url: str, tasks: int, out: Any) -> None:
    """Drain ``url`` with one worker of ``impl``; put (done, seconds, cpu, peak KiB)."""
    from sagalease import LeaseContext, Worker
    from sagalease.aio import AsyncLeaseContext, AsyncWorker, open_async_store
    from sagalease.stores import open_store

    before = resource.getrusage(resource.RUSAGE_SELF)
    if impl == "threads":
        store = open_store(url)

        def handle(ctx: LeaseContext) -> None:
            time.sleep(SLEEP)

        worker = Worker(store, handle, concurrency=CONCURRENCY, poll_interval=POLL, retry=None)
        started = time.monotonic()
        done = len(worker.run(max_tasks=tasks))
        seconds = time.monotonic() - started
        store.close()
    else:

        async def handle_async(ctx: AsyncLeaseContext) -> None:
            await asyncio.sleep(SLEEP)

        async def main() -> tuple[int, float]:
            astore = await open_async_store(url)
            worker = AsyncWorker(
                astore, handle_async, concurrency=CONCURRENCY, poll_interval=POLL, retry=None
            )
            started = time.monotonic()
            outcomes = await worker.run(max_tasks=tasks)
            seconds = time.monotonic() - started
            await astore.close()
            return len(outcomes), seconds

        done, seconds = asyncio.run(main())
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out.put((done, seconds, cpu, after.ru_maxrss))


def measure(impl: str, backend: str, tasks: int, dsn: str) -> dict[str, Any]:
    """One spawned process of ``impl`` draining ``tasks`` fresh tasks on ``backend``."""
    url = prepare(backend, dsn, impl, tasks)
    out = CTX.Queue()
    proc = CTX.Process(target=_child, args=(impl, url, tasks, out), daemon=True)
    proc.start()
    done, seconds, cpu, peak_kib = out.get(timeout=600)
    proc.join(30)
    if done != tasks:
        raise RuntimeError(f"handlers part {impl} on {backend}: {done} of {tasks} tasks done")
    return {
        "impl": impl,
        "backend": backend,
        "count": done,
        "seconds": seconds,
        "rate": done / seconds,
        "cpu_s": cpu,
        "cpu_ms_per_task": 1000 * cpu / done,
        "peak_rss_mb": peak_kib / 1024,
    }


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per backend and implementation (medians over the repetitions), and
    the async / threads ratios of throughput and CPU per task.
    """
    lines = []
    for backend in sorted({row["backend"] for row in rows}):
        med: dict[str, dict[str, float]] = {}
        for impl in IMPLS:
            mine = [r for r in rows if r["impl"] == impl and r["backend"] == backend]
            med[impl] = {
                key: median([r[key] for r in mine])
                for key in ("rate", "cpu_ms_per_task", "peak_rss_mb")
            }
            lines.append(
                f"{backend} {impl:7} x{CONCURRENCY}: {med[impl]['rate']:.0f} tasks/s,"
                f" CPU {med[impl]['cpu_ms_per_task']:.2f} ms/task,"
                f" peak RSS {med[impl]['peak_rss_mb']:.0f} MB"
            )
        rate = med["async"]["rate"] / med["threads"]["rate"] if med["threads"]["rate"] else 0.0
        cpu = (
            med["async"]["cpu_ms_per_task"] / med["threads"]["cpu_ms_per_task"]
            if med["threads"]["cpu_ms_per_task"]
            else 0.0
        )
        lines.append(f"{backend} async/threads: throughput {rate:.2f}, CPU per task {cpu:.2f}")
    return lines
