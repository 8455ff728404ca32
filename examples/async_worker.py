"""An asyncio worker: fifty handler tasks over an SQLite store, one process.

Run: ``uv run python examples/async_worker.py`` (Ctrl-C or SIGTERM stops it
gracefully; here it stops by itself after 200 outcomes).
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path

from sagalease import Compensation
from sagalease.aio import AsyncLeaseContext, AsyncWorker, open_async_store


async def charge(ctx: AsyncLeaseContext) -> None:
    """Register the undo first, then do the work with the fencing token."""
    await ctx.register_compensation(Compensation("refund", ctx.task_id))
    await ctx.sleep(0.05)  # an HTTP call would go here, passing ctx.token
    await ctx.check()  # LeaseLostError if the lease is gone, ShutdownRequestedError on stop


async def refund(ctx: AsyncLeaseContext, compensation: Compensation) -> None:
    """Undo one charge."""
    await asyncio.sleep(0.01)


async def main() -> None:
    """Create 200 tasks, work them with 50 handler tasks, print the counts."""
    path = Path(tempfile.mkdtemp()) / "tasks.db"
    store = await open_async_store(f"sqlite:///{path}")
    for i in range(200):
        await store.create(f"order-{i}")
    worker = AsyncWorker(
        store, charge, compensator=refund, ttl=timedelta(seconds=30), concurrency=50
    )
    outcomes = await worker.run(signals=True, max_tasks=200)
    print(
        f"{len(outcomes)} outcomes;", {s.value: n for s, n in (await store.counts()).items() if n}
    )
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
