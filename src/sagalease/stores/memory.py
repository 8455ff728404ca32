"""The in-memory store: the reference implementation.

It applies the same pure core as the database stores under one lock, so it
is linearizable and never weaker than them: the conformance suite and the
model checker compare every backend against it.
"""

from __future__ import annotations

import threading

from sagalease import core
from sagalease.clock import Clock
from sagalease.errors import DuplicateTaskError, SagaLeaseError, TaskNotFoundError
from sagalease.records import HistoryEntry, TaskSaga, TaskState
from sagalease.stores._base import Mutation, StoreBase

__all__ = ["MemoryStore"]


class MemoryStore(StoreBase):
    """A thread-safe store in this process's memory (``memory://``)."""

    def __init__(self, *, clock: Clock | None = None, contracts: bool | None = None) -> None:
        super().__init__(clock=clock, contracts=contracts)
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskSaga] = {}  # insertion order is creation order
        self._history: dict[str, list[HistoryEntry]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(tasks={len(self._tasks)})"

    def _insert(self, step: core.Step) -> TaskSaga:
        with self._lock:
            existing = self._tasks.get(step.task.task_id)
            if existing is not None:
                raise DuplicateTaskError(
                    "a task with this id already exists",
                    task_id=existing.task_id,
                    state=existing.state,
                )
            self._tasks[step.task.task_id] = step.task
            self._history[step.task.task_id] = [step.entry]
            return step.task

    def _apply(self, task: TaskSaga, mutation: Mutation) -> TaskSaga:
        step = mutation(task)
        self._tasks[task.task_id] = step.task
        self._history[task.task_id].append(step.entry)
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
            return [step.task for step in steps]

    def _claim(self, owner: str, ttl_us: int, now_us: int, limit: int) -> list[TaskSaga]:
        acquire = self._core["acquire"]
        claimed: list[TaskSaga] = []
        with self._lock:
            for task in self._tasks.values():  # values change, keys do not
                if len(claimed) == limit:
                    break
                if task.state.is_terminal:
                    continue
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
        self, state: TaskState | None, saga_id: str | None, limit: int, after: str | None
    ) -> list[TaskSaga]:
        with self._lock:
            tasks = list(self._tasks.values())
            if after is not None:
                ids = list(self._tasks)
                try:
                    tasks = tasks[ids.index(after) + 1 :]
                except ValueError:
                    raise TaskNotFoundError("unknown 'after' task", task_id=after) from None
        return [
            t
            for t in tasks
            if (state is None or t.state is state) and (saga_id is None or t.saga_id == saga_id)
        ][:limit]

    def history(self, task_id: str) -> list[HistoryEntry]:
        """The task's history, oldest first."""
        core.check_id("task_id", task_id)
        with self._lock:
            entries = self._history.get(task_id)
            if entries is None:
                raise TaskNotFoundError("no such task", task_id=task_id)
            return list(entries)

    def counts(self) -> dict[TaskState, int]:
        """Tasks per state."""
        result = dict.fromkeys(TaskState, 0)
        with self._lock:
            for task in self._tasks.values():
                result[task.state] += 1
        return result

    def close(self) -> None:
        """Nothing to release."""
