"""The shared shell of the bundled stores.

:class:`StoreBase` implements the public :class:`~sagalease.store.SagaStore`
methods once: it checks and converts arguments at the boundary (aware
datetimes to integer microseconds, ``timedelta`` to microseconds), builds the
core call, and hands it to the backend's few primitives, which load, apply
and write atomically. Backends differ only in storage and concurrency.
"""

from __future__ import annotations

import abc
import inspect
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any, Final, Self

from sagalease import core, telemetry
from sagalease.clock import Clock, SystemClock, duration_us, to_us
from sagalease.errors import DuplicateTaskError, InvalidInputError, LeaseConflictError
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.records import Compensation, HistoryEntry, NewTask, TaskSaga, TaskState

Mutation = Callable[[TaskSaga], core.Step]

MAX_BATCH: Final = 1000
"""The most tasks one ``claim_batch``, ``complete_many`` or ``create_many`` call may touch."""

_NEW_TASK_FIELDS: Final = frozenset(f.name for f in fields(NewTask))

_HOLDER_EVENTS: Final = frozenset(HOLDER_EVENTS)
"""The events that present a lease's ``(owner, token)`` (from the declaration): a
LeaseConflictError refusing one is a fenced write (telemetry)."""


def _noting_refusals(mutation: Mutation, queues: list[str]) -> Mutation:
    """``mutation``, noting the queue of a task it refuses with LeaseConflictError."""

    def noted(task: TaskSaga) -> core.Step:
        try:
            return mutation(task)
        except LeaseConflictError:
            queues.append(task.queue)
            raise

    return noted


def check_states(state: object) -> frozenset[TaskState] | None:
    """The states a listing shows (``None``: all), from one state or several."""
    if state is None:
        return None
    values = [state] if isinstance(state, str) else state
    if not isinstance(values, Collection) or isinstance(values, bytes):
        raise InvalidInputError("state must be a TaskState, a collection of them, or None")
    try:
        states = frozenset(TaskState(v) for v in values)
    except ValueError as exc:
        raise InvalidInputError(f"unknown state: {exc}") from None
    if not states:
        raise InvalidInputError("state must name at least one state (None: every state)")
    return states


def contracts_from_environment() -> bool:
    """Whether ``$SAGALEASE_CONTRACTS`` asks stores to check the core's contracts."""
    return os.environ.get("SAGALEASE_CONTRACTS", "").strip().lower() in ("1", "true", "yes", "on")


class StoreBase(abc.ABC):
    """Argument handling shared by the bundled backends.

    ``contracts``: run the core's event functions with their icontract checks
    (``None``: as ``$SAGALEASE_CONTRACTS`` says; off by default, on in the test
    suite). The checks never change a result; they only re-verify the core,
    at a price on every call.
    """

    def __init__(self, *, clock: Clock | None = None, contracts: bool | None = None) -> None:
        self.clock: Clock = SystemClock() if clock is None else clock
        self.contracts = contracts_from_environment() if contracts is None else bool(contracts)
        self._core = core.handlers(contracts=self.contracts)
        if telemetry.AVAILABLE:  # acquisitions that replace an expired lease are counted
            self._core = telemetry.watch_reclaims(self._core)
        self._create = core.create if self.contracts else inspect.unwrap(core.create)
        self._fast_events: frozenset[str] = frozenset()
        """The events :meth:`_fast` writes (none by default)."""

    # ------------------------------------------------------------ primitives

    @abc.abstractmethod
    def _insert(self, step: core.Step) -> TaskSaga:
        """Store a new task and its first entry; an id in use: DuplicateTaskError."""

    @abc.abstractmethod
    def _insert_many(self, steps: list[core.Step]) -> list[TaskSaga]:
        """Store new tasks (distinct ids, at least one) and their first entries in
        one atomic write; an id in use: DuplicateTaskError and none is stored.
        """

    @abc.abstractmethod
    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        """Atomically load ``task_id``, apply ``mutation`` and write the step."""

    @abc.abstractmethod
    def _mutate_many(self, mutations: list[tuple[str, Mutation]]) -> list[TaskSaga]:
        """Like :meth:`_mutate` for several distinct tasks, in one atomic write: all
        steps are written, or (the first refusal raised) none.
        """

    @abc.abstractmethod
    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        """Acquire the first ``limit`` leaseable tasks of ``queues`` (``None``: all) by
        priority (highest first), then creation order (fewer if there are fewer).
        """

    @abc.abstractmethod
    def _reap(self, now_us: int, limit: int | None) -> list[TaskSaga]:
        """Apply ``core.reap`` to every task that needs it."""

    @abc.abstractmethod
    def _stale(self, now_us: int) -> list[TaskSaga]:
        """Non-terminal tasks whose lease expired, in creation order."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskSaga | None:
        """The task, or ``None``."""

    @abc.abstractmethod
    def _list(
        self,
        states: frozenset[TaskState] | None,
        saga_id: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> list[TaskSaga]:
        """A page of tasks in creation order, or newest first; ``after`` (exclusive)
        in the order asked.
        """

    @abc.abstractmethod
    def history(self, task_id: str) -> list[HistoryEntry]:
        """The task's history, oldest first."""

    @abc.abstractmethod
    def _counts(self, queue: str | None) -> dict[TaskState, int]:
        """Tasks per state (every state present), of ``queue`` if given."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources."""

    # ------------------------------------------------------------ boundary

    def _now(self, now: datetime | None) -> int:
        if now is None:
            now_us = getattr(self.clock, "now_us", None)
            if now_us is not None:
                return int(now_us())
            now = self.clock.now()
        return to_us(now, "now")

    def _fast(
        self, task_id: str, event: str, now_us: int, args: Mapping[str, Any]
    ) -> TaskSaga | None:
        """Apply ``event`` in one statement rendered from the declaration (the SQL
        stores, :mod:`sagalease.stores._engine`): the new record, or ``None`` when it
        did not apply there (the core then decides through :meth:`_mutate`). The
        default has no such statement.
        """
        return None

    def _fast_many(
        self, event: str, items: list[tuple[str, Mapping[str, Any]]], now_us: int
    ) -> list[TaskSaga] | None:
        """Apply ``event`` to every ``(task_id, arguments)`` of ``items`` in one
        rendered statement per table, all or nothing: the new records in the items'
        order, or ``None`` when it did not apply to all of them (nothing was
        written; the core then decides through :meth:`_mutate_many`). The default
        has no such statement.
        """
        return None

    def _event(self, task_id: str, event: str, now_us: int, **args: Any) -> TaskSaga:
        """Apply the core's ``event`` to ``task_id`` at ``now_us``: first as one
        rendered statement (:meth:`_fast`), else through :meth:`_mutate`.
        """
        if event in self._fast_events:
            done = self._fast(task_id, event, now_us, args)
            if done is not None:
                return done
        step = self._core[event]

        def mutation(t: TaskSaga) -> core.Step:
            return step(t, now_us=now_us, **args)

        if not (telemetry.AVAILABLE and event in _HOLDER_EVENTS):
            return self._mutate(task_id, mutation)
        refused: list[str] = []
        try:
            return self._mutate(task_id, _noting_refusals(mutation, refused))
        except LeaseConflictError:
            telemetry.fenced_write(event, refused[-1] if refused else None)
            raise

    # ------------------------------------------------------------ public API
    #
    # The signatures are the SagaStore protocol's (sagalease.store), written again:
    # the protocol is the typed contract third-party stores are checked against,
    # these are the implementation (defaults spelt out where the protocol has "...").
    # Each method converts its own arguments, then hands the event to _event.

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
        """See :meth:`SagaStore.create`."""
        if isinstance(compensations, (str, bytes)) or not isinstance(compensations, Iterable):
            raise InvalidInputError("compensations must be an iterable of Compensation")
        new = NewTask(
            task_id,
            saga_id=saga_id,
            metadata=metadata,
            compensations=tuple(compensations),
            max_attempts=max_attempts,
            deadline=deadline,
            available_at=available_at,
            queue=queue,
            priority=priority,
            requeued_from=requeued_from,
        )
        return self._insert(self._created(new, self._now(now)))

    def create_many(
        self, tasks: Iterable[NewTask | Mapping[str, Any]], *, now: datetime | None = None
    ) -> list[TaskSaga]:
        """See :meth:`SagaStore.create_many` (an item may also be a mapping of
        :class:`NewTask`'s fields).
        """
        now_us = self._now(now)
        if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Iterable):
            raise InvalidInputError("tasks must be an iterable of NewTask")
        items = list(tasks)
        if len(items) > MAX_BATCH:
            raise InvalidInputError(f"at most {MAX_BATCH} tasks per call, not {len(items)}")
        steps = [self._created(self._new_task(item), now_us) for item in items]
        seen: set[str] = set()
        for step in steps:
            if step.task.task_id in seen:
                raise DuplicateTaskError(
                    "the task id is given twice in one create_many", task_id=step.task.task_id
                )
            seen.add(step.task.task_id)
        return self._insert_many(steps) if steps else []

    @staticmethod
    def _new_task(item: object) -> NewTask:
        if isinstance(item, NewTask):
            return item
        if isinstance(item, Mapping):
            unknown = set(item) - _NEW_TASK_FIELDS
            if unknown or "task_id" not in item:
                raise InvalidInputError(
                    f"a task needs a task_id and only NewTask's fields; unknown: {sorted(unknown)}"
                )
            return NewTask(**item)
        raise InvalidInputError(f"a task must be a NewTask or a mapping, not {type(item).__name__}")

    def _created(self, new: NewTask, now_us: int) -> core.Step:
        """The core's create step for ``new`` at ``now_us`` (bad input: InvalidInputError)."""
        comps = new.compensations
        if isinstance(comps, (str, bytes)) or not isinstance(comps, Iterable):
            raise InvalidInputError("compensations must be an iterable of Compensation")
        return self._create(
            new.task_id,
            now_us=now_us,
            saga_id=new.saga_id,
            metadata_json=core.encode_metadata(new.metadata),
            compensations=tuple(comps),
            max_attempts=new.max_attempts,
            deadline_us=None if new.deadline is None else to_us(new.deadline, "deadline"),
            available_us=(
                None if new.available_at is None else to_us(new.available_at, "available_at")
            ),
            queue=new.queue,
            priority=new.priority,
            requeued_from=new.requeued_from,
        )

    def acquire(
        self, task_id: str, *, owner: str, ttl: timedelta, now: datetime | None = None
    ) -> TaskSaga:
        """See :meth:`SagaStore.acquire`."""
        now_us, ttl_us = self._now(now), duration_us(ttl, "ttl")
        core.check_id("owner", owner)
        if not telemetry.AVAILABLE:
            return self._event(task_id, "acquire", now_us, owner=owner, ttl_us=ttl_us)
        return telemetry.count_reclaims(
            "acquire", lambda: [self._event(task_id, "acquire", now_us, owner=owner, ttl_us=ttl_us)]
        )[0]

    def claim_next(
        self,
        *,
        owner: str,
        ttl: timedelta,
        queues: str | Collection[str] | None = None,
        now: datetime | None = None,
    ) -> TaskSaga | None:
        """See :meth:`SagaStore.claim_next`."""
        now_us, ttl_us = self._now(now), duration_us(ttl, "ttl")
        core.check_id("owner", owner)
        names = core.check_queues(queues)
        claimed = telemetry.count_reclaims(
            "claim_next", lambda: self._claim(owner, ttl_us, now_us, 1, names)
        )
        return claimed[0] if claimed else None

    def claim_batch(
        self,
        *,
        owner: str,
        ttl: timedelta,
        limit: int,
        queues: str | Collection[str] | None = None,
        now: datetime | None = None,
    ) -> list[TaskSaga]:
        """See :meth:`SagaStore.claim_batch`."""
        now_us, ttl_us = self._now(now), duration_us(ttl, "ttl")
        core.check_id("owner", owner)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH:
            raise InvalidInputError(f"limit must be an integer between 1 and {MAX_BATCH}")
        names = core.check_queues(queues)
        return telemetry.count_reclaims(
            "claim_batch", lambda: self._claim(owner, ttl_us, now_us, limit, names)
        )

    def heartbeat(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> TaskSaga:
        """See :meth:`SagaStore.heartbeat`."""
        now_us, ttl_us = self._now(now), duration_us(ttl, "ttl")
        return self._event(task_id, "heartbeat", now_us, owner=owner, token=token, ttl_us=ttl_us)

    def release(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        delay: timedelta = timedelta(0),
        reason: str | None = None,
        now: datetime | None = None,
    ) -> TaskSaga:
        """See :meth:`SagaStore.release`."""
        now_us = self._now(now)
        delay_us = duration_us(delay, "delay", allow_zero=True)
        return self._event(
            task_id, "release", now_us, owner=owner, token=token, delay_us=delay_us, reason=reason
        )

    def register_compensation(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        compensation: Compensation,
        now: datetime | None = None,
    ) -> TaskSaga:
        """See :meth:`SagaStore.register_compensation`."""
        return self._event(
            task_id,
            "register_compensation",
            self._now(now),
            owner=owner,
            token=token,
            compensation=compensation,
        )

    def complete(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> TaskSaga:
        """See :meth:`SagaStore.complete`."""
        return self._event(
            task_id, "complete", self._now(now), owner=owner, token=token, reason=reason
        )

    def complete_many(
        self,
        tasks: Iterable[tuple[str, int]],
        *,
        owner: str,
        reason: str | None = None,
        now: datetime | None = None,
    ) -> list[TaskSaga]:
        """See :meth:`SagaStore.complete_many`."""
        now_us = self._now(now)
        core.check_id("owner", owner)
        if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
            raise InvalidInputError("tasks must be an iterable of (task_id, token) pairs")
        items = list(tasks)
        if len(items) > MAX_BATCH:
            raise InvalidInputError(f"at most {MAX_BATCH} tasks per call")
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise InvalidInputError("tasks must be (task_id, token) pairs")
            task_id = core.check_id("task_id", item[0])
            if task_id in seen:
                raise InvalidInputError("a task id is given twice", task_id=task_id)
            seen.add(task_id)
        if items and "complete" in self._fast_events:
            calls: list[tuple[str, Mapping[str, Any]]] = [
                (i, {"owner": owner, "token": token, "reason": reason}) for i, token in items
            ]
            done = self._fast_many("complete", calls, now_us)
            if done is not None:
                return done
        event = self._core["complete"]

        def completing(token: int) -> Mutation:
            return lambda t: event(t, owner=owner, token=token, reason=reason, now_us=now_us)

        mutations = [(task_id, completing(token)) for task_id, token in items]
        if not telemetry.AVAILABLE:
            return self._mutate_many(mutations)
        refused: list[str] = []
        try:
            return self._mutate_many([(i, _noting_refusals(m, refused)) for i, m in mutations])
        except LeaseConflictError:
            telemetry.fenced_write("complete_many", refused[-1] if refused else None)
            raise

    def fail(
        self, task_id: str, *, owner: str, token: int, reason: str, now: datetime | None = None
    ) -> TaskSaga:
        """See :meth:`SagaStore.fail`."""
        return self._event(task_id, "fail", self._now(now), owner=owner, token=token, reason=reason)

    def compensation_applied(
        self, task_id: str, *, owner: str, token: int, index: int, now: datetime | None = None
    ) -> TaskSaga:
        """See :meth:`SagaStore.compensation_applied`."""
        return self._event(
            task_id, "compensation_applied", self._now(now), owner=owner, token=token, index=index
        )

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
        """See :meth:`SagaStore.compensation_failed`."""
        task = self._event(
            task_id,
            "compensation_failed",
            self._now(now),
            owner=owner,
            token=token,
            index=index,
            reason=reason,
        )
        telemetry.quarantines("compensation_failed", (task,))
        return task

    def quarantine(
        self, task_id: str, *, reason: str, by: str, now: datetime | None = None
    ) -> TaskSaga:
        """See :meth:`SagaStore.quarantine`."""
        task = self._event(task_id, "quarantine", self._now(now), reason=reason, by=by)
        telemetry.quarantines("quarantine", (task,))
        return task

    def annotate(
        self, task_id: str, *, text: str, by: str, now: datetime | None = None
    ) -> TaskSaga:
        """See :meth:`SagaStore.annotate`."""
        return self._event(task_id, "annotate", self._now(now), text=text, by=by)

    def reap(self, *, now: datetime | None = None, limit: int | None = None) -> list[TaskSaga]:
        """See :meth:`SagaStore.reap`."""
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InvalidInputError("limit must be a positive integer or None")
        changed = self._reap(self._now(now), limit)
        telemetry.quarantines("reap", changed)
        return changed

    def list_stale(self, *, now: datetime | None = None) -> list[TaskSaga]:
        """See :meth:`SagaStore.list_stale`."""
        return self._stale(self._now(now))

    def list_tasks(
        self,
        *,
        state: TaskState | Collection[TaskState] | None = None,
        saga_id: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: str | None = None,
        newest_first: bool = False,
    ) -> list[TaskSaga]:
        """See :meth:`SagaStore.list_tasks`."""
        states = check_states(state)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise InvalidInputError("limit must be an integer between 1 and 10000")
        if not isinstance(newest_first, bool):
            raise InvalidInputError("newest_first must be True or False")
        if saga_id is not None:
            core.check_id("saga_id", saga_id)
        if queue is not None:
            core.check_id("queue", queue)
        if after is not None:
            core.check_id("after", after)
        return self._list(states, saga_id, queue, limit, after, newest_first)

    def counts(self, *, queue: str | None = None) -> dict[TaskState, int]:
        """See :meth:`SagaStore.counts`."""
        if queue is not None:
            core.check_id("queue", queue)
        return self._counts(queue)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
