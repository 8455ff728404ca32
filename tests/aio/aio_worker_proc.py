"""A worker process for tests/aio: ``python aio_worker_proc.py DB MODE`` (DB: an
SQLite file, or a ``postgresql://`` URL).

Prints one JSON line per outcome (and ``{"ready": ...}`` once a handler runs);
asyncio runs in debug mode, its slow-callback warnings go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import timedelta

from sagalease.aio import AsyncLeaseContext, AsyncWorker, open_async_store
from sagalease.worker import Outcome


def say(**data: object) -> None:
    """One JSON line on stdout."""
    print(json.dumps(data), flush=True)


async def stall(ctx: AsyncLeaseContext) -> None:
    """Runs until stopped; checks only after its first long nap (stall mode)."""
    say(ready=ctx.task_id, token=ctx.token)
    await asyncio.sleep(3.0)  # no checkpoint: the process is stopped meanwhile
    await ctx.check()  # the lease is known lost here: no complete follows


async def checkpoints(ctx: AsyncLeaseContext) -> None:
    """Runs until stopped, with a checkpoint every 50 ms."""
    say(ready=ctx.task_id, token=ctx.token)
    while True:
        await ctx.sleep(0.05)


async def no_checkpoints(ctx: AsyncLeaseContext) -> None:
    """Sleeps a minute without a checkpoint (cancel-on-loss mode)."""
    say(ready=ctx.task_id, token=ctx.token)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        say(cancelled=ctx.task_id, lost=ctx.lost.is_set())
        raise


async def quick(ctx: AsyncLeaseContext) -> None:
    """A short piece of work."""
    await ctx.check()
    await ctx.sleep(0.01)


async def listening(ctx: AsyncLeaseContext) -> None:
    """A short piece of work, its outcome printed (idle mode: the poll interval is 30 s)."""
    await ctx.check()


HANDLERS = {
    "stall": stall,
    "checkpoints": checkpoints,
    "cancel": no_checkpoints,
    "quick": quick,
    "idle": listening,
}


async def main(db: str, mode: str) -> None:
    """Run one AsyncWorker over the database in the mode given."""
    store = await open_async_store(db if "://" in db else f"sqlite:///{db}")
    if mode == "idle":
        say(idle=True)
    ttl = timedelta(seconds=1.5) if mode in ("stall", "cancel") else timedelta(seconds=6)
    worker = AsyncWorker(
        store,
        HANDLERS[mode],
        ttl=ttl,
        concurrency=10 if mode == "quick" else 1,
        poll_interval=timedelta(seconds=30) if mode == "idle" else timedelta(milliseconds=50),
        shutdown_grace=timedelta(seconds=2),
        cancel_on_loss=mode == "cancel",
        retry=None,
        on_outcome=lambda o: say(
            task=o.task_id, token=o.token, result=o.result, detail=o.detail, at=time.time()
        ),
    )
    until = (lambda: True) if mode in ("quick", "stall", "cancel") else None
    outcomes: list[Outcome] = await worker.run(
        signals=True, until=until, max_tasks=1 if mode in ("stall", "cancel", "idle") else None
    )
    say(done=len(outcomes))
    await store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], sys.argv[2]), debug=True)
