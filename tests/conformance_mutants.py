"""Deliberately broken backends: each breaks exactly one rule of the brief.

Each factory is what a third party would hand to ``sagalease conformance``; the
tests in test_conformance.py run the CLI against every one and expect a non-zero
exit naming the invariant in :data:`MUTANTS`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sagalease import MemoryStore, SQLiteStore, core
from sagalease.conformance.factories import temp_path
from sagalease.errors import LeaseConflictError, SagaLeaseError
from sagalease.records import NewTask, TaskSaga, TaskState
from sagalease.store import QueueStats
from sagalease.stores._base import Mutation


class LastWriterWinsAcquire(SQLiteStore):
    """acquire takes over a live lease (no "no live lease" guard)."""

    def acquire(
        self, task_id: str, *, owner: str, ttl: timedelta, now: datetime | None = None
    ) -> TaskSaga:
        now_us = self._now(now)

        def takeover(t: TaskSaga) -> core.Step:
            lease = t.lease
            if lease is not None and now_us < lease.expires_us:
                past = now_us - 1
                t = replace(
                    t,
                    lease=replace(
                        lease,
                        acquired_us=min(lease.acquired_us, past),
                        heartbeat_us=min(lease.heartbeat_us, past),
                        expires_us=now_us,
                    ),
                )
            return core.acquire(
                t, owner=owner, ttl_us=ttl // timedelta(microseconds=1), now_us=now_us
            )

        return self._mutate(task_id, takeover)


class HeartbeatIgnoresOwner(MemoryStore):
    """heartbeat checks the token but not the owner id."""

    def heartbeat(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> TaskSaga:
        rec = self.get(task_id)
        if rec is not None and rec.lease is not None and rec.lease.token == token:
            owner = rec.lease.owner
        return super().heartbeat(task_id, owner=owner, token=token, ttl=ttl, now=now)


class TokenNotBumpedOnReclaim(MemoryStore):
    """Taking over an expired lease keeps the old token."""

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        def keep_token(t: TaskSaga) -> core.Step:
            step = mutation(t)
            new = step.task
            if step.entry.event == "acquire" and t.lease is not None and new.lease is not None:
                new = replace(new, token=t.token, lease=replace(new.lease, token=t.token))
                return core.Step(new, replace(step.entry, token=t.token))
            return step

        return super()._mutate(task_id, keep_token)


class ExpiryOffByOne(MemoryStore):
    """A lease counts as live at ``now == expires_at`` for holder calls and acquire."""

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        def shifted(t: TaskSaga) -> core.Step:
            lease = t.lease
            if lease is None:
                return mutation(t)
            step = mutation(replace(t, lease=replace(lease, expires_us=lease.expires_us + 1)))
            new_lease = step.task.lease
            if new_lease is not None and new_lease.expires_us == lease.expires_us + 1:
                fixed = replace(step.task, lease=replace(new_lease, expires_us=lease.expires_us))
                return core.Step(fixed, step.entry)
            return step

        return super()._mutate(task_id, shifted)


class TerminalMutable(MemoryStore):
    """An operator may quarantine a COMPLETED/FAILED/COMPENSATED task again."""

    def quarantine(
        self, task_id: str, *, reason: str, by: str, now: datetime | None = None
    ) -> TaskSaga:
        now_us = self._now(now)

        def requarantine(t: TaskSaga) -> core.Step:
            if t.state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.COMPENSATED):
                step = core.annotate(t, text=reason, by=by, now_us=now_us)
                new = replace(
                    step.task,
                    state=TaskState.QUARANTINED,
                    terminal_reason=reason,
                    notes=t.notes,
                    updated_us=now_us,
                )
                entry = replace(step.entry, event="quarantine", to_state=TaskState.QUARANTINED)
                return core.Step(new, entry)
            return core.quarantine(t, reason=reason, by=by, now_us=now_us)

        return self._mutate(task_id, requarantine)


class FailDropsCompensations(SQLiteStore):
    """fail forgets the compensations still pending and ends FAILED."""

    def fail(
        self, task_id: str, *, owner: str, token: int, reason: str, now: datetime | None = None
    ) -> TaskSaga:
        now_us = self._now(now)
        return self._mutate(
            task_id,
            lambda t: core.fail(
                replace(t, compensations=()) if t.state is TaskState.RUNNING else t,
                owner=owner,
                token=token,
                reason=reason,
                now_us=now_us,
            ),
        )


class StaleListsTerminal(MemoryStore):
    """list_stale also returns tasks that have ended."""

    def _stale(self, now_us: int) -> list[TaskSaga]:
        with self._lock:
            return [
                t
                for t in self._tasks.values()
                if t.state.is_terminal or (t.lease is not None and now_us >= t.lease.expires_us)
            ]


class QueueStatsStaleWithoutExpiry(MemoryStore):
    """queue_stats counts every leased task that has not ended as stale, expired or not."""

    def queue_stats(self, *, now: datetime | None = None) -> dict[str, QueueStats]:
        stats = super().queue_stats(now=now)
        with self._lock:
            leased = [t for t in self._tasks.values() if not t.is_terminal and t.lease]
        return {
            q: replace(one, stale=sum(t.queue == q for t in leased)) for q, one in stats.items()
        }


class PartialWriteOnConflict(SQLiteStore):
    """A refused heartbeat still stamps ``heartbeat_at`` on the stored lease."""

    def heartbeat(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> TaskSaga:
        try:
            return super().heartbeat(task_id, owner=owner, token=token, ttl=ttl, now=now)
        except LeaseConflictError:
            conn = self._conn()
            with self._writing(conn):
                conn.execute(
                    "UPDATE tasks SET lease_heartbeat_us = ? WHERE task_id = ?"
                    " AND lease_owner IS NOT NULL",
                    (self._now(now), task_id),
                )
            raise


class NaiveAsUTC(MemoryStore):
    """A naive ``now`` is silently taken as UTC."""

    def _now(self, now: datetime | None) -> int:
        if now is not None and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return super()._now(now)


class HeartbeatNotInHistory(MemoryStore):
    """Heartbeats change the record but append no history entry."""

    def _apply(self, task: TaskSaga, mutation: Mutation) -> TaskSaga:
        step = mutation(task)
        self._tasks[task.task_id] = step.task
        if step.entry.event != "heartbeat":
            self._history[task.task_id].append(step.entry)
        return step.task


class AttemptsUnbounded(MemoryStore):
    """acquire ignores max_attempts."""

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        def unbounded(t: TaskSaga) -> core.Step:
            step = mutation(replace(t, max_attempts=max(t.max_attempts, t.attempts + 1)))
            return core.Step(replace(step.task, max_attempts=t.max_attempts), step.entry)

        return super()._mutate(task_id, unbounded)


class FencingByOwnerOnly(MemoryStore):
    """Holder calls check the owner id but accept any token from it (zombies win)."""

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        def owner_only(t: TaskSaga) -> core.Step:
            try:
                return mutation(t)
            except LeaseConflictError as exc:
                lease = t.lease
                if lease is None or exc.owner != lease.owner or exc.token is None:
                    raise
                # Pretend the caller's token is the current one.
                fake = replace(t, token=exc.token, lease=replace(lease, token=exc.token))
                step = mutation(fake)
                if step.task.lease is not None:
                    new = replace(
                        step.task, token=t.token, lease=replace(step.task.lease, token=t.token)
                    )
                else:
                    new = replace(step.task, token=t.token)
                return core.Step(new, step.entry)

        return super()._mutate(task_id, owner_only)


class NoCompareAndSet(SQLiteStore):
    """Select-then-update: the write does not check the row's version (races lose).
    Every event takes that path (not the engine's one-statement writes).
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._fast_events = frozenset()
        self._before_write = lambda _task_id: time.sleep(0.001)

    @staticmethod
    def _write(conn: object, old: object, step: core.Step) -> bool:
        import sqlite3

        from sagalease.stores import _rows
        from sagalease.stores.sqlite import _store as sq

        assert isinstance(conn, sqlite3.Connection)
        every = ", ".join(f"{column} = ?" for column in _rows.TASK_COLUMNS[1:])
        conn.execute(
            f"UPDATE tasks SET {every} WHERE task_id = ?",
            (*_rows.task_values(step.task), step.task.task_id),
        )
        conn.execute(sq._INSERT_HISTORY, (step.task.task_id, *_rows.entry_values(step.entry)))
        return True


class CompleteManyOneByOne(SQLiteStore):
    """complete_many completes each task in its own transaction: a refusal part-way
    leaves the earlier ones completed.
    """

    def _mutate_many(self, mutations: list[tuple[str, Mutation]]) -> list[TaskSaga]:
        return [self._mutate(task_id, mutation) for task_id, mutation in mutations]


class ClaimBatchIgnoresLiveLeases(MemoryStore):
    """claim_batch takes the oldest unfinished tasks, live leases or not."""

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        if limit == 1:
            return super()._claim(owner, ttl_us, now_us, limit, queues)
        taken = []
        unfinished = [
            t
            for t in self._tasks.values()
            if not t.state.is_terminal and (queues is None or t.queue in queues)
        ]
        for task in unfinished[:limit]:
            lease = task.lease
            if lease is not None and now_us < lease.expires_us:
                lease = replace(lease, expires_us=now_us)
                task = replace(
                    task,
                    lease=replace(
                        lease,
                        heartbeat_us=min(lease.heartbeat_us, now_us - 1),
                        acquired_us=min(lease.acquired_us, now_us - 1),
                    ),
                )
            try:
                step = core.acquire(task, owner=owner, ttl_us=ttl_us, now_us=now_us)
            except Exception:
                continue
            self._tasks[task.task_id] = step.task
            self._history[task.task_id].append(step.entry)
            taken.append(step.task)
        return taken


class ClaimIgnoresQueues(MemoryStore):
    """claim_next and claim_batch take from every queue, whatever queues they name."""

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        return super()._claim(owner, ttl_us, now_us, limit, None)


class PriorityIgnored(MemoryStore):
    """Claims take the oldest leaseable task of the queues named, whatever its priority."""

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        def take(task: TaskSaga) -> core.Step:
            return core.acquire(task, owner=owner, ttl_us=ttl_us, now_us=now_us)

        taken: list[TaskSaga] = []
        with self._lock:
            for task in list(self._tasks.values()):  # creation order only
                wanted = queues is None or task.queue in queues
                if len(taken) < limit and wanted and not task.state.is_terminal:
                    with contextlib.suppress(SagaLeaseError):
                        taken.append(self._apply(task, take))
        return taken


class NewestFirstIgnored(MemoryStore):
    """list_tasks ignores newest_first: always creation order (``after`` read forwards)."""

    def _list(
        self,
        states: frozenset[TaskState] | None,
        saga_id: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> list[TaskSaga]:
        return super()._list(states, saga_id, queue, limit, after, False)


class CreateManyOneByOne(MemoryStore):
    """create_many creates its items one call at a time: a duplicate (stored, or given
    twice) or a bad item part-way leaves the items before it stored.
    """

    def create_many(
        self, tasks: Iterable[NewTask | Mapping[str, Any]], *, now: datetime | None = None
    ) -> list[TaskSaga]:
        made: list[TaskSaga] = []
        for item in tasks:  # each its own atomic write: the earlier ones stay
            made += super().create_many([item], now=now)
        return made


def _sqlite(cls: type[SQLiteStore]) -> SQLiteStore:
    return cls(str(temp_path()))


# --------------------------------------------------------------- factories


def lww_acquire() -> SQLiteStore:
    """Factory: last writer wins on acquire."""
    return _sqlite(LastWriterWinsAcquire)


def heartbeat_ignores_owner() -> MemoryStore:
    """Factory: heartbeat ignores the owner."""
    return HeartbeatIgnoresOwner()


def token_not_bumped() -> MemoryStore:
    """Factory: token not bumped on reclaim (in SQLite the schema's CHECK refuses it)."""
    return TokenNotBumpedOnReclaim()


def expiry_off_by_one() -> MemoryStore:
    """Factory: expiry boundary off by one."""
    return ExpiryOffByOne()


def terminal_mutable() -> MemoryStore:
    """Factory: terminal task mutable."""
    return TerminalMutable()


def fail_drops_compensations() -> SQLiteStore:
    """Factory: a failure that drops pending compensations."""
    return _sqlite(FailDropsCompensations)


def stale_lists_terminal() -> MemoryStore:
    """Factory: list_stale includes terminal tasks."""
    return StaleListsTerminal()


def queue_stats_stale_without_expiry() -> MemoryStore:
    """Factory: queue_stats counts live leases as stale."""
    return QueueStatsStaleWithoutExpiry()


def partial_write() -> SQLiteStore:
    """Factory: a failed call leaves a partial write."""
    return _sqlite(PartialWriteOnConflict)


def naive_accepted() -> MemoryStore:
    """Factory: naive datetimes accepted."""
    return NaiveAsUTC()


def history_not_written() -> MemoryStore:
    """Factory: history not written (for heartbeats)."""
    return HeartbeatNotInHistory()


def attempts_unbounded() -> MemoryStore:
    """Factory: attempts not bounded."""
    return AttemptsUnbounded()


def fencing_by_owner_only() -> MemoryStore:
    """Factory: stale tokens accepted from the same owner id."""
    return FencingByOwnerOnly()


def no_compare_and_set() -> SQLiteStore:
    """Factory: select-then-update without a compare-and-set."""
    return _sqlite(NoCompareAndSet)


def complete_many_one_by_one() -> SQLiteStore:
    """Factory: complete_many is not atomic."""
    return _sqlite(CompleteManyOneByOne)


def claim_batch_ignores_live_leases() -> MemoryStore:
    """Factory: claim_batch takes over live leases."""
    return ClaimBatchIgnoresLiveLeases()


def claim_ignores_queues() -> MemoryStore:
    """Factory: claims ignore the queues they name."""
    return ClaimIgnoresQueues()


def priority_ignored() -> MemoryStore:
    """Factory: claims in creation order, priorities ignored."""
    return PriorityIgnored()


def newest_first_ignored() -> MemoryStore:
    """Factory: list_tasks ignores newest_first."""
    return NewestFirstIgnored()


def create_many_half_writes() -> MemoryStore:
    """Factory: create_many stores the items before a duplicate."""
    return CreateManyOneByOne()


@dataclass(frozen=True)
class Mutant:
    """A broken backend and the invariant the suite must name when rejecting it."""

    factory: str
    invariant: str
    broken_rule: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant("lww_acquire", "INV-1", "last writer wins on acquire"),
    Mutant("heartbeat_ignores_owner", "INV-1", "heartbeat ignores the owner"),
    Mutant("token_not_bumped", "INV-2", "token not bumped on reclaim"),
    Mutant("expiry_off_by_one", "INV-1", "expiry boundary off by one"),
    Mutant("terminal_mutable", "INV-3", "terminal task mutable"),
    Mutant("fail_drops_compensations", "INV-4", "a failure that drops pending compensations"),
    Mutant("stale_lists_terminal", "INV-3", "list_stale includes terminal tasks"),
    Mutant(
        "queue_stats_stale_without_expiry",
        "INV-12",
        "queue_stats counts live leases as stale (no expiry test)",
    ),
    Mutant("partial_write", "INV-8", "a failed call leaves a partial write"),
    Mutant("naive_accepted", "INV-8", "naive datetimes accepted"),
    Mutant("history_not_written", "INV-7", "history not written"),
    Mutant("attempts_unbounded", "INV-5", "attempts not bounded"),
    Mutant("fencing_by_owner_only", "INV-2", "stale token accepted from the same owner"),
    Mutant("no_compare_and_set", "INV-1", "select-then-update without compare-and-set"),
    Mutant("complete_many_one_by_one", "INV-8", "complete_many completes some of its tasks"),
    Mutant("claim_batch_ignores_live_leases", "INV-1", "claim_batch takes over live leases"),
    Mutant("claim_ignores_queues", "INV-9", "claims ignore the queues they name"),
    Mutant("priority_ignored", "INV-10", "claims ignore priorities (creation order only)"),
    Mutant("create_many_half_writes", "INV-11", "create_many stores the items before a duplicate"),
    Mutant("newest_first_ignored", "INV-12", "list_tasks ignores newest_first (creation order)"),
)
