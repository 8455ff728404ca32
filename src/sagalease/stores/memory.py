"""The in-memory store: the reference implementation.

It applies the same pure core as the database stores under one lock, so it
is linearizable and never weaker than them: the conformance suite and the
model checker compare every backend against it. Claims take the highest
priority first, then creation order; idle workers in this process wait for
a write to wake them (:class:`~sagalease.store.WakeUps`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection
from datetime import datetime, timedelta

from sagalease import core
from sagalease.clock import Clock, duration_us
from sagalease.errors import DuplicateTaskError, SagaLeaseError, TaskNotFoundError
from sagalease.records import HistoryEntry, TaskSaga, TaskState
from sagalease.store import QueueStats
from sagalease.stores._base import Mutation, StoreBase

__all__ = ["MemoryStore"]


class MemoryStore(StoreBase):
    """A thread-safe store in this process's memory (``memory://``)."""

    def __init__(self, *, clock: Clock | None = None, contracts: bool | None = None) -> None:
        super().__init__(clock=clock, contracts=contracts)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._wakes: Counter[str] = Counter()  # per queue: writes that may free a task
        self._seen = threading.local()  # per thread: the wakes its last wait saw
        self._tasks: dict[str, TaskSaga] = {}  # insertion order is creation order
        self._history: dict[str, list[HistoryEntry]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(tasks={len(self._tasks)})"

    def _insert(self, step: core.Step) -> TaskSaga:
        return self._insert_many([step])[0]

    def _insert_many(self, steps: list[core.Step]) -> list[TaskSaga]:
        with self._lock:
            for step in steps:  # every id first: a duplicate stores none
                existing = self._tasks.get(step.task.task_id)
                if existing is not None:
                    raise DuplicateTaskError(
                        "a task with this id already exists",
                        task_id=existing.task_id,
                        state=existing.state,
                    )
            for step in steps:
                self._tasks[step.task.task_id] = step.task
                self._history[step.task.task_id] = [step.entry]
                self._woke(step.task)
            return [step.task for step in steps]

    def _woke(self, task: TaskSaga) -> None:
        """Wake the waiters of ``task``'s queue if it may be claimable (lock held)."""
        if task.lease is None and not task.state.is_terminal:
            self._wakes[task.queue] += 1
            self._wake.notify_all()

    def wait_for_work(
        self, *, queues: str | Collection[str] | None = None, timeout: timedelta
    ) -> bool:
        """See :meth:`WakeUps.wait_for_work`: woken by this store's own writes,
        including those since this thread's previous wait for the same queues
        returned (a task created while the caller's claim found nothing is not
        missed).
        """
        names = core.check_queues(queues)
        seconds = duration_us(timeout, "timeout", allow_zero=True) / 1_000_000
        seen: dict[tuple[str, ...] | None, int] = self._seen.__dict__.setdefault("ticks", {})

        def ticks() -> int:
            if names is None:
                return self._wakes.total()
            return sum(self._wakes[q] for q in names)

        with self._wake:
            start = seen.get(names, ticks())
            woken = self._wake.wait_for(lambda: ticks() != start, seconds)
            seen[names] = ticks()
            return woken

    def _apply(self, task: TaskSaga, mutation: Mutation) -> TaskSaga:
        step = mutation(task)
        self._tasks[task.task_id] = step.task
        self._history[task.task_id].append(step.entry)
        self._woke(step.task)
        return step.task

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        core.check_id("task_id", task_id)
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise TaskNotFoundError("no such task", task_id=task_id)
            return self._apply(task, mutation)

    def _mutate_many(self, mutations: list[tuple[str, Mutation]]) -> list[TaskSaga]:
        with self._lock:
            steps = []
            for task_id, mutation in mutations:  # every step first: a refusal applies none
                task = self._tasks.get(task_id)
                if task is None:
                    raise TaskNotFoundError("no such task", task_id=task_id)
                steps.append(mutation(task))
            for step in steps:
                self._tasks[step.task.task_id] = step.task
                self._history[step.task.task_id].append(step.entry)
                self._woke(step.task)
            return [step.task for step in steps]

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        acquire = self._core["acquire"]
        claimed: list[TaskSaga] = []
        with self._lock:
            candidates = [
                t
                for t in self._tasks.values()
                if not t.state.is_terminal and (queues is None or t.queue in queues)
            ]
            candidates.sort(key=lambda t: -t.priority)  # stable: creation order within
            for task in candidates:
                if len(claimed) == limit:
                    break
                try:
                    claimed.append(
                        self._apply(
                            task, lambda t: acquire(t, owner=owner, ttl_us=ttl_us, now_us=now_us)
                        )
                    )
                except SagaLeaseError:
                    continue
        return claimed

    def _reap(self, now_us: int, limit: int | None) -> list[TaskSaga]:
        changed: list[TaskSaga] = []
        reap = self._core["reap"]
        with self._lock:
            for task in list(self._tasks.values()):
                if limit is not None and len(changed) >= limit:
                    break
                if not task.state.is_terminal and core.needs_reap(task, now_us):
                    changed.append(self._apply(task, lambda t: reap(t, now_us=now_us)))
        return changed

    def _stale(self, now_us: int) -> list[TaskSaga]:
        with self._lock:
            return [
                t
                for t in self._tasks.values()
                if not t.state.is_terminal and t.lease is not None and now_us >= t.lease.expires_us
            ]

    def get(self, task_id: str) -> TaskSaga | None:
        """The task, or ``None``."""
        core.check_id("task_id", task_id)
        with self._lock:
            return self._tasks.get(task_id)

    def _list(
        self,
        states: frozenset[TaskState] | None,
        saga_id: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> list[TaskSaga]:
        with self._lock:
            tasks = list(self._tasks.values())
            if newest_first:
                tasks.reverse()
            if after is not None:
                ids = [t.task_id for t in tasks]
                try:
                    tasks = tasks[ids.index(after) + 1 :]
                except ValueError:
                    raise TaskNotFoundError("unknown 'after' task", task_id=after) from None
        return [
            t
            for t in tasks
            if (states is None or t.state in states)
            and (saga_id is None or t.saga_id == saga_id)
            and (queue is None or t.queue == queue)
        ][:limit]

    def history(self, task_id: str) -> list[HistoryEntry]:
        """The task's history, oldest first."""
        core.check_id("task_id", task_id)
        with self._lock:
            entries = self._history.get(task_id)
            if entries is None:
                raise TaskNotFoundError("no such task", task_id=task_id)
            return list(entries)

    def _counts(self, queue: str | None) -> dict[TaskState, int]:
        result = dict.fromkeys(TaskState, 0)
        with self._lock:
            for task in self._tasks.values():
                if queue is None or task.queue == queue:
                    result[task.state] += 1
        return result

    def queue_stats(self, *, now: datetime | None = None) -> dict[str, QueueStats]:
        """See :meth:`SagaStore.queue_stats`: one pass over the tasks under the lock."""
        now_us = self._now(now)
        counts: dict[str, dict[TaskState, int]] = {}
        stale: Counter[str] = Counter()
        oldest: dict[str, int] = {}
        with self._lock:
            for t in self._tasks.values():
                by_state = counts.setdefault(t.queue, dict.fromkeys(TaskState, 0))
                by_state[t.state] += 1
                if t.state.is_terminal:
                    continue
                if t.lease is not None and now_us >= t.lease.expires_us:
                    stale[t.queue] += 1
                if t.lease is None and t.available_us <= now_us:
                    oldest[t.queue] = min(oldest.get(t.queue, t.available_us), t.available_us)
        return {
            queue: QueueStats.of(
                queue,
                now_us,
                counts[queue],
                stale=stale[queue],
                oldest_available_us=oldest.get(queue),
            )
            for queue in sorted(counts)
        }

    def close(self) -> None:
        """Nothing to release."""
