"""Deliberately broken async backends, each breaking one rule; factories as a
third party would hand them to ``sagalease conformance``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sagalease import MemoryStore, core
from sagalease.errors import LeaseConflictError
from sagalease.records import TaskSaga


class _Broken:
    """An async store over a MemoryStore: every method awaits the sync one, but
    for those a subclass breaks.
    """

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return method(*args, **kwargs)

        return call

    async def close(self) -> None:
        """Close the memory store."""
        self.inner.close()


class HeartbeatIgnoresOwner(_Broken):
    """An awaited heartbeat that checks the token but not the owner."""

    async def heartbeat(
        self, task_id: str, *, owner: str, token: int, ttl: timedelta, now: datetime | None = None
    ) -> TaskSaga:
        """Extend whoever holds the token."""
        rec = self.inner.get(task_id)
        await asyncio.sleep(0)
        if rec is not None and rec.lease is not None and rec.lease.token == token:
            owner = rec.lease.owner
        return self.inner.heartbeat(task_id, owner=owner, token=token, ttl=ttl, now=now)


class ClaimYieldsBetweenReadAndWrite(_Broken):
    """claim_next reads the candidate, yields, then writes from what it read."""

    async def claim_next(
        self, *, owner: str, ttl: timedelta, queues: Any = None, now: datetime | None = None
    ) -> TaskSaga | None:
        """Read, yield to the loop, write the stale read back (no compare-and-set)."""
        now_us = self.inner._now(now)
        names = core.check_queues(queues)
        ttl_us = ttl // timedelta(microseconds=1)
        tasks = self.inner.list_tasks(limit=10_000)
        for task in sorted(tasks, key=lambda t: -t.priority):  # stable: then creation order
            if names is not None and task.queue not in names:
                continue
            try:
                step = core.acquire(task, owner=owner, ttl_us=ttl_us, now_us=now_us)
            except Exception:
                continue
            await asyncio.sleep(0.001)  # another task claims meanwhile

            def stale(_current: TaskSaga, step: core.Step = step) -> core.Step:
                return step

            return self.inner._mutate(task.task_id, stale)
        return None


class CompleteWritesBeforeChecking(_Broken):
    """complete writes as the lease's holder, then checks the caller's token."""

    async def complete(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> TaskSaga:
        """Write first, refuse after."""
        rec = self.inner.get(task_id)
        if rec is None or rec.lease is None:
            return self.inner.complete(task_id, owner=owner, token=token, reason=reason, now=now)
        holder = rec.lease
        done = self.inner.complete(
            task_id, owner=holder.owner, token=holder.token, reason=reason, now=now
        )
        await asyncio.sleep(0)
        if (owner, token) != (holder.owner, holder.token):
            raise LeaseConflictError("not the holder", task_id=task_id, state=rec.state)
        return replace(done)


def heartbeat_ignores_owner() -> Any:
    """Factory."""
    return HeartbeatIgnoresOwner()


async def claim_yields() -> Any:
    """Factory (a coroutine function)."""
    return ClaimYieldsBetweenReadAndWrite()


def complete_writes_first() -> Any:
    """Factory."""
    return CompleteWritesBeforeChecking()
