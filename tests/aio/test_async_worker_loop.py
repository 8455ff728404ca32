"""AsyncWorker's loop in one process, on the async memory store: one claimer
fills every free slot in one call, an idle worker asks the store once per wake-up
whatever its concurrency, ``max_tasks`` never claims more than it works, and a
bug outside the handler stops the worker and is raised.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from sagalease import NewTask
from sagalease.aio import AsyncLeaseContext, AsyncSagaStore, AsyncWorker, open_async_store
from sagalease.records import TaskState

TTL = timedelta(seconds=30)


class Counting:
    """An async store that records each claim call's name and limit."""

    def __init__(self, store: AsyncSagaStore) -> None:
        self.store = store
        self.claims: list[tuple[str, int]] = []

    async def claim_next(self, **kwargs: Any) -> Any:
        self.claims.append(("claim_next", 1))
        return await self.store.claim_next(**kwargs)

    async def claim_batch(self, **kwargs: Any) -> Any:
        self.claims.append(("claim_batch", kwargs["limit"]))
        return await self.store.claim_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def _store(tasks: int) -> Counting:
    store = await open_async_store("memory://")
    if tasks:
        await store.create_many([NewTask(f"t{i:03}") for i in range(tasks)])
    return Counting(store)


def test_free_slots_are_claimed_in_one_call_and_concurrency_is_never_exceeded() -> None:
    """30 tasks, concurrency 10: the first claim asks for 10 at once, never more
    than 10 handlers run together, and every task completes.
    """

    async def main() -> None:
        counting = await _store(30)
        now = {"running": 0, "most": 0}

        async def handler(ctx: AsyncLeaseContext) -> None:
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
            await asyncio.sleep(0.02)
            now["running"] -= 1

        worker = AsyncWorker(counting, handler, ttl=TTL, concurrency=10)
        outcomes = await worker.run(until=lambda: True)
        assert len(outcomes) == 30
        assert now["most"] == 10
        assert counting.claims[0] == ("claim_batch", 10)
        assert len(counting.claims) < 30  # not one claim per task
        counts = await counting.store.counts()
        assert counts[TaskState.COMPLETED] == 30

    asyncio.run(main())


def test_an_idle_worker_asks_the_store_once_per_interval_whatever_its_concurrency() -> None:
    """Nothing to claim, concurrency 50, poll_interval 100 ms, stopped after
    300 ms: a handful of claims (one per interval), not one per slot.
    """

    async def main() -> None:
        counting = await _store(0)

        async def handler(ctx: AsyncLeaseContext) -> None:
            raise AssertionError("nothing is claimable")

        worker = AsyncWorker(
            counting,
            handler,
            ttl=TTL,
            concurrency=50,
            poll_interval=timedelta(milliseconds=100),
        )
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)
        worker.stop()
        assert await running == []
        assert 1 <= len(counting.claims) <= 6, counting.claims
        assert {name for name, _ in counting.claims} == {"claim_batch"}

    asyncio.run(main())


def test_max_tasks_claims_no_more_than_it_works() -> None:
    """10 tasks, concurrency 4, max_tasks 6: six outcomes, six completed tasks,
    four never claimed (still pending, attempts 0).
    """

    async def main() -> None:
        counting = await _store(10)

        async def handler(ctx: AsyncLeaseContext) -> None:
            await asyncio.sleep(0.01)

        worker = AsyncWorker(counting, handler, ttl=TTL, concurrency=4)
        outcomes = await worker.run(max_tasks=6)
        assert len(outcomes) == 6
        assert sum(limit for _, limit in counting.claims) <= 6
        tasks = await counting.store.list_tasks(limit=100)
        assert sorted(t.state.value for t in tasks) == ["completed"] * 6 + ["pending"] * 4
        assert all(t.attempts == 0 for t in tasks if t.state is TaskState.PENDING)

    asyncio.run(main())


def test_a_bug_outside_the_handler_stops_the_worker_and_is_raised() -> None:
    """An ``on_outcome`` that raises: ``run`` raises that error, no further task
    is claimed after it, and the task's own outcome was recorded first.
    """

    async def main() -> None:
        counting = await _store(5)

        async def handler(ctx: AsyncLeaseContext) -> None:
            return None

        def on_outcome(_outcome: Any) -> None:
            raise RuntimeError("the callback is broken")

        worker = AsyncWorker(
            counting,
            handler,
            ttl=TTL,
            concurrency=1,
            on_outcome=on_outcome,
        )
        with pytest.raises(RuntimeError, match="the callback is broken"):
            await worker.run(until=lambda: True)
        assert counting.claims == [("claim_next", 1)]
        counts = await counting.store.counts()
        assert (counts[TaskState.COMPLETED], counts[TaskState.PENDING]) == (1, 4)

    asyncio.run(main())
