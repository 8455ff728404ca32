"""The store port: what every backend offers, shaped around lifecycle events.

Every mutating method takes a keyword ``now`` (an aware datetime; default:
the store's clock), applies one event of :mod:`sagalease.lifecycle` through
the pure core atomically, appends exactly one history entry and returns the
task's new record (the batch methods: one event per task, all in one atomic
write, and the list of new records). A call that raises changed nothing. Every error is a
:class:`~sagalease.errors.SagaLeaseError`; an unknown ``task_id`` is a
:class:`~sagalease.errors.TaskNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sagalease.lifecycle import EVENTS
from sagalease.records import (
    Compensation,
    HistoryEntry,
    NewTask,
    TaskSaga,
    TaskState,
    from_us,
)

__all__ = ["EVENT_OF_METHOD", "READERS", "QueueStats", "SagaStore", "WakeUps"]

Queues = str | Collection[str] | None
"""The queues a claim takes from: ``None`` (every queue), one name, or several."""

States = TaskState | Collection[TaskState] | None
"""The states a listing shows: ``None`` (every state), one state, or several."""


_STATES: tuple[TaskState, ...] = tuple(TaskState)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What one queue holds at one instant (``at_us``), as
    :meth:`SagaStore.queue_stats` reads it.

    ``state_counts``: the number of tasks in each state, one integer per
    :class:`TaskState` in declaration order (see :attr:`counts`). ``stale``: the
    tasks that have not ended whose lease had expired at ``at_us`` (what
    :meth:`SagaStore.list_stale` lists). ``oldest_available_us``: the earliest
    ``available_at`` of the tasks waiting to be claimed at ``at_us``: not ended,
    holding no lease and available (PENDING ones, and COMPENSATING ones between two
    compensation attempts); ``None`` when none waits. :attr:`lag` is how long the
    oldest of them has waited.
    Times are integer UTC microseconds, as in :mod:`sagalease.records`.
    """

    queue: str
    at_us: int
    state_counts: tuple[int, ...]
    stale: int = 0
    oldest_available_us: int | None = None

    @classmethod
    def of(
        cls,
        queue: str,
        at_us: int,
        counts: Mapping[TaskState, int],
        *,
        stale: int = 0,
        oldest_available_us: int | None = None,
    ) -> QueueStats:
        """The stats of ``queue`` from counts by state (a state left out counts 0)."""
        return cls(
            queue,
            at_us,
            tuple(int(counts.get(s, 0)) for s in _STATES),
            stale,
            oldest_available_us,
        )

    @property
    def counts(self) -> dict[TaskState, int]:
        """Tasks per state, every state present (a fresh dict)."""
        return dict(zip(_STATES, self.state_counts, strict=True))

    @property
    def total(self) -> int:
        """Every task of the queue, in any state."""
        return sum(self.state_counts)

    @property
    def at(self) -> datetime:
        """The instant the stats describe."""
        return from_us(self.at_us)

    @property
    def oldest_available(self) -> datetime | None:
        """The earliest ``available_at`` of the tasks waiting at :attr:`at` (see above)."""
        return None if self.oldest_available_us is None else from_us(self.oldest_available_us)

    @property
    def lag(self) -> timedelta | None:
        """``at - oldest_available``: how long the oldest waiting task has waited
        (``None``: none waits).
        """
        if self.oldest_available_us is None:
            return None
        return timedelta(microseconds=self.at_us - self.oldest_available_us)


@runtime_checkable
class SagaStore(Protocol):
    """The public store protocol (memory, SQLite, PostgreSQL, third parties)."""

    def create(
        self,
        task_id: str,
        *,
        saga_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        compensations: Iterable[Compensation] = (),
        max_attempts: int = 5,
        deadline: datetime | None = None,
        available_at: datetime | None = None,
        queue: str = "default",
        priority: int = 0,
        requeued_from: str | None = None,
        now: datetime | None = None,
    ) -> TaskSaga:
        """A new PENDING task in ``queue`` (an id: 1..200 characters) with
        ``priority`` (-1000..1000, higher runs first). An id in use:
        :class:`DuplicateTaskError`, and the existing task is kept as it was (a
        repeat is never merged).
        """
        ...

    def create_many(
        self, tasks: Iterable[NewTask], *, now: datetime | None = None
    ) -> list[TaskSaga]:
        """:meth:`create` every task (at most 1000), atomically: all of them or
        none. An id in use, or given twice in ``tasks``: :class:`DuplicateTaskError`
        and nothing is stored. Returns the new records in the order given.
        """
        ...

    def get(self, task_id: str) -> TaskSaga | None:
        """The task, or ``None`` when there is none with this id."""
        ...

    def acquire(
        self, task_id: str, *, owner: str, ttl: timedelta, now: datetime | None = None
    ) -> TaskSaga:
        """Lease this task to ``owner`` under the next fencing token. A live lease
        (even the caller's own): :class:`LeaseConflictError`; a repeat after
        success therefore conflicts.
        """
        ...

    def claim_next(
        self,
        *,
        owner: str,
        ttl: timedelta,
        queues: Queues = None,
        now: datetime | None = None,
    ) -> TaskSaga | None:
        """Acquire the first leaseable task (pending and available, or with an
        expired lease) of ``queues`` (``None``: every queue): the highest
        priority first, then the oldest by creation; ``None`` when there is none.
        Concurrent callers never get the same (task, token).
        """
        ...

    def claim_batch(
        self,
        *,
        owner: str,
        ttl: timedelta,
        limit: int,
        queues: Queues = None,
        now: datetime | None = None,
    ) -> list[TaskSaga]:
        """Acquire up to ``limit`` (1..1000) leaseable tasks of ``queues``, each under
        its own next token, in one atomic write: what ``limit`` calls of
        :meth:`claim_next` at the same ``now`` would return, stopping at the first
        ``None``. An empty list when nothing is leaseable.
        """
        ...

    def heartbeat(
        self, task_id: str, *, owner: str, token: int, ttl: timedelta, now: datetime | None = None
    ) -> TaskSaga:
        """Extend the caller's live lease to ``now + ttl`` (never past the deadline).
        A stale token, another owner, an expired lease or no extension:
        :class:`LeaseConflictError`.
        """
        ...

    def release(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        delay: timedelta = ...,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> TaskSaga:
        """Give the lease back (RUNNING → PENDING; COMPENSATING stays, unleased);
        available again after ``delay``; ``reason`` goes into the history entry.
        A repeat: :class:`LeaseConflictError`.
        """
        ...

    def register_compensation(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        compensation: Compensation,
        now: datetime | None = None,
    ) -> TaskSaga:
        """Add a pending compensation (RUNNING, holder only). A repeat adds it again."""
        ...

    def complete(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> TaskSaga:
        """RUNNING → COMPLETED (holder only). A repeat: :class:`TerminalTaskError`."""
        ...

    def complete_many(
        self,
        tasks: Iterable[tuple[str, int]],
        *,
        owner: str,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> list[TaskSaga]:
        """:meth:`complete` every ``(task_id, token)`` (at most 1000) held by
        ``owner``, atomically: all of them, or, on the first refusal (raised as
        :meth:`complete` raises it), none. A task id given twice:
        :class:`InvalidInputError`. Complete them one by one to learn which were
        refused.
        """
        ...

    def fail(
        self, task_id: str, *, owner: str, token: int, reason: str, now: datetime | None = None
    ) -> TaskSaga:
        """RUNNING → COMPENSATING if a compensation is pending (the lease is
        dropped and a fresh attempt count starts), else → FAILED.
        """
        ...

    def compensation_applied(
        self, task_id: str, *, owner: str, token: int, index: int, now: datetime | None = None
    ) -> TaskSaga:
        """Mark one compensation applied; the last one → COMPENSATED. A repeat:
        :class:`InvalidTransitionError` (or :class:`TerminalTaskError` once ended).
        """
        ...

    def compensation_failed(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        index: int,
        reason: str,
        now: datetime | None = None,
    ) -> TaskSaga:
        """A permanent compensation failure: → QUARANTINED, pending ones listed."""
        ...

    def quarantine(
        self, task_id: str, *, reason: str, by: str, now: datetime | None = None
    ) -> TaskSaga:
        """Operator: any non-terminal task → QUARANTINED. Terminal: :class:`TerminalTaskError`."""
        ...

    def annotate(
        self, task_id: str, *, text: str, by: str, now: datetime | None = None
    ) -> TaskSaga:
        """Append a note (terminal tasks included); nothing else changes. A repeat
        appends another note.
        """
        ...

    def reap(self, *, now: datetime | None = None, limit: int | None = None) -> list[TaskSaga]:
        """Drop expired leases, quarantine tasks out of attempts, fail tasks past
        their deadline; returns the records it changed (at most ``limit``).
        """
        ...

    def list_stale(self, *, now: datetime | None = None) -> list[TaskSaga]:
        """Non-terminal tasks whose lease expired, in creation order."""
        ...

    def list_tasks(
        self,
        *,
        state: States = None,
        saga_id: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: str | None = None,
        newest_first: bool = False,
    ) -> list[TaskSaga]:
        """A page of tasks in creation order (``newest_first``: the newest first), in
        ``state`` (one state or several; ``None``: all), of ``saga_id`` and of ``queue``
        when given; ``after`` is the last task_id of the previous page in the order
        asked (exclusive; unknown: :class:`TaskNotFoundError`).
        """
        ...

    def history(self, task_id: str) -> list[HistoryEntry]:
        """The task's history, oldest first. Unknown task: :class:`TaskNotFoundError`."""
        ...

    def counts(self, *, queue: str | None = None) -> dict[TaskState, int]:
        """Number of tasks in each state (every state present), of ``queue`` if given."""
        ...

    def queue_stats(self, *, now: datetime | None = None) -> dict[str, QueueStats]:
        """Per queue that holds any task (sorted by name): its tasks by state (every
        state present), its stale leases at ``now`` (as :meth:`list_stale` counts
        them) and the earliest ``available_at`` of its tasks waiting to be claimed at
        ``now`` (unended, unleased and available: see :class:`QueueStats`), all read
        from one snapshot.
        """
        ...

    def close(self) -> None:
        """Release connections; closing twice is harmless."""
        ...


@runtime_checkable
class WakeUps(Protocol):
    """What a store offers idle workers besides polling (memory and PostgreSQL do).

    A store whose writes can make a task claimable (``create``, ``create_many``,
    ``release``, ``reap``, ...) wakes the waiters of that task's queue.
    """

    def wait_for_work(self, *, queues: Queues = None, timeout: timedelta) -> bool:
        """Block until a task of ``queues`` may have become claimable, or ``timeout``
        (wall-clock) passes. ``True`` when woken; a wake-up is a hint, never a
        promise: the claim that follows may find nothing.
        """
        ...


EVENT_OF_METHOD: Mapping[str, str] = {
    "create": "create",
    "create_many": "create",
    **{event: event for event in EVENTS},
    "annotate": "annotate",
    "claim_next": "acquire",
    "claim_batch": "acquire",
    "complete_many": "complete",
}
"""Each mutating method of :class:`SagaStore` and the lifecycle event it applies
(``create`` enters the initial state; ``annotate`` only appends a note)."""

READERS: frozenset[str] = frozenset(
    {"get", "list_stale", "list_tasks", "history", "counts", "queue_stats", "close"}
)
"""The methods of :class:`SagaStore` that change nothing."""
