"""pgqueuer and procrastinate processing no-op jobs on the same PostgreSQL.

Jobs are enqueued before the workers start; each worker process runs the queue's
own worker until the queue is empty (pgqueuer ``mode=drain``, procrastinate
``wait=False``). The time runs from the release of all (already imported) worker
processes to the last exit, so it includes each worker's start-up and final
flush: a few milliseconds per run.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bench.common import Work, run_processes

DSN_ENV = "SAGALEASE_BENCH_QUEUE_DSN"


def reset(dsn: str) -> None:
    """Drop whatever pgqueuer and procrastinate installed in ``dsn`` (a bench database)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if "bench" not in str(conninfo_to_dict(dsn).get("dbname", "")):
        raise RuntimeError(f"refusing to reset the public schema of {dsn!r}: not a bench database")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


# ---------------------------------------------------------------- pgqueuer


async def _pgq_queries(dsn: str) -> tuple[Any, Any]:
    import psycopg
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    return conn, Queries(PsycopgDriver(conn))


def pgqueuer_prepare(dsn: str, jobs: int) -> None:
    """Install pgqueuer (fresh) and enqueue ``jobs`` no-op jobs."""

    async def main() -> None:
        conn, queries = await _pgq_queries(dsn)
        try:
            await queries.install()
            await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
        finally:
            await conn.close()

    reset(dsn)
    asyncio.run(main())


def pgqueuer_worker(dsn: str, batch: int) -> Work:
    """One pgqueuer worker process (``QueueManager.run(mode=drain)``)."""
    from pgqueuer.qm import QueueManager
    from pgqueuer.types import QueueExecutionMode

    done = 0

    async def main() -> None:
        nonlocal done
        conn, queries = await _pgq_queries(dsn)
        qm = QueueManager(queries)

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

        try:
            await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
        finally:
            await conn.close()

    def work() -> tuple[int, list[float]]:
        asyncio.run(main())
        return done, []

    return work


# ---------------------------------------------------------------- procrastinate


def _procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    return app


def procrastinate_prepare(dsn: str, jobs: int) -> None:
    """Apply procrastinate's schema (fresh) and defer ``jobs`` no-op jobs."""
    app = _procrastinate_app(dsn)

    async def main() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            task = app.tasks["noop"]
            for start in range(0, jobs, 1000):
                await task.batch_defer_async(*[{} for _ in range(min(1000, jobs - start))])

    reset(dsn)
    asyncio.run(main())


def procrastinate_worker(dsn: str) -> Work:
    """One procrastinate worker process (``run_worker_async(wait=False)``)."""
    import logging

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app = _procrastinate_app(dsn)

    async def main() -> None:
        async with app.open_async():
            await app.run_worker_async(
                queues=["bench"],
                wait=False,
                concurrency=1,
                install_signal_handlers=False,
                listen_notify=False,
                delete_jobs="never",
            )

    def work() -> tuple[int, list[float]]:
        asyncio.run(main())
        return 0, []

    return work


def count_done(dsn: str, kind: str) -> int:
    """Jobs the queue recorded as done (the workers' own counts are not trusted)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if kind == "procrastinate":
            row = conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
            ).fetchone()
    return int(row[0]) if row else 0


def _last_ack(dsn: str) -> float:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(created))::float8 FROM pgqueuer_log"
            " WHERE status = 'successful'"
        ).fetchone()
    if row is None or row[0] is None:
        raise RuntimeError("pgqueuer recorded no successful job")
    return float(row[0])


def measure(kind: str, workers: int, jobs: int, dsn: str) -> dict[str, object]:
    """``kind``: ``pgqueuer-b1``, ``pgqueuer-b10`` or ``procrastinate``."""
    os.environ[DSN_ENV] = dsn
    if kind.startswith("pgqueuer"):
        batch = int(kind.split("-b", 1)[1])
        pgqueuer_prepare(dsn, jobs)
        result = run_processes(pgqueuer_worker, [(dsn, batch)] * workers)
    else:
        procrastinate_prepare(dsn, jobs)
        result = run_processes(procrastinate_worker, [(dsn,)] * workers)
    done = count_done(dsn, kind)
    seconds = result.seconds
    if kind.startswith("pgqueuer"):
        done = max(done, result.count)
        # pgqueuer's drain exit idles ~5 s after the queue is empty: time the work to
        # the last recorded acknowledgement instead.
        seconds = _last_ack(dsn) - result.wall_start
    if done < jobs:
        raise RuntimeError(f"{kind} x{workers}: {done} of {jobs} jobs done")
    return {
        "backend": "postgres",
        "impl": kind,
        "mode": "noop",
        "workers": workers,
        "count": jobs,
        "seconds": seconds,
        "rate": jobs / seconds,
        "seconds_to_exit": result.seconds,
    }
