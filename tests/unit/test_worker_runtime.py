"""The worker runtime in one process on a memory store: timing settings, heartbeats,
lost leases, fencing, compensation, the run loop and stop() (on SQLite with threads:
tests/stores/test_sqlite.py; worker processes signalled and killed:
tests/system/test_worker.py).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from sagalease import (
    Compensation,
    CompensationStatus,
    InvalidInputError,
    LeaseContext,
    LeaseLostError,
    MemoryStore,
    PermanentCompensationError,
    SagaLeaseError,
    ShutdownRequestedError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskSaga,
    TaskState,
    Worker,
)

GUARD = 60.0
"""Seconds after which a wait is a hang, not an answer (never a tested threshold)."""

SHORT = timedelta(milliseconds=300)


def _noop(_ctx: LeaseContext) -> None:
    return None


def _wait_for(predicate: Any, what: str) -> None:
    end = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


class PartitionedStore(MemoryStore):
    """A memory store whose heartbeats never get through (a network partition)."""

    def heartbeat(
        self,
        task_id: str,
        *,
        owner: str,
        token: int,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> TaskSaga:
        raise StoreUnavailableError("partitioned", task_id=task_id)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": timedelta(0)}, "ttl"),
        ({"ttl": timedelta(seconds=-1)}, "ttl"),
        ({"ttl": 30}, "ttl"),
        ({"ttl": timedelta(seconds=30), "heartbeat_interval": timedelta(seconds=11)}, "third"),
        ({"ttl": timedelta(seconds=30), "heartbeat_interval": timedelta(seconds=30)}, "third"),
        ({"ttl": timedelta(seconds=30), "heartbeat_interval": timedelta(seconds=45)}, "third"),
        ({"heartbeat_interval": timedelta(0)}, "heartbeat_interval"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"poll_interval": timedelta(0)}, "poll_interval"),
        ({"shutdown_grace": timedelta(seconds=-1)}, "shutdown_grace"),
    ],
)
def test_timing_settings_that_cannot_work_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Unworkable timing (TTL <= 0, heartbeat > TTL/3, ...): InvalidInputError, store untouched."""
    store = MemoryStore()
    store.create("t")
    before = store.history("t")
    with pytest.raises(InvalidInputError, match=message):
        Worker(store, _noop, **kwargs)
    assert store.history("t") == before
    assert store.get("t") is not None
    assert store.get("t").state is TaskState.PENDING  # type: ignore[union-attr]


def test_heartbeat_interval_of_exactly_a_third_is_accepted() -> None:
    """TTL/3 is the largest accepted heartbeat interval; the default is TTL/3."""
    store = MemoryStore()
    ttl = timedelta(seconds=30)
    assert Worker(store, _noop, ttl=ttl, heartbeat_interval=ttl / 3).heartbeat_interval == ttl / 3
    assert Worker(store, _noop, ttl=ttl).heartbeat_interval == ttl / 3


# ---------------------------------------------------------------- one task


def test_handler_gets_the_fencing_token_and_return_completes() -> None:
    """The handler sees the task and its current token; returning completes the task."""
    store = MemoryStore()
    store.create("t")
    seen: list[tuple[str, int, str]] = []

    def handler(ctx: LeaseContext) -> None:
        seen.append((ctx.task_id, ctx.token, ctx.owner))
        ctx.check()

    outcome = Worker(store, handler, owner="w1").run_one()
    assert outcome is not None
    assert seen == [("t", 1, "w1")]
    assert (outcome.task_id, outcome.token, outcome.result) == ("t", 1, "completed")
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.COMPLETED
    assert [e.event for e in store.history("t")] == ["create", "acquire", "complete"]


def test_run_one_returns_none_when_nothing_is_claimable() -> None:
    """With no leaseable task, run_one claims nothing and returns None."""
    assert Worker(MemoryStore(), _noop).run_one() is None


def test_run_one_by_id_and_unknown_id() -> None:
    """run_one(task_id) works that task; an unknown id: TaskNotFoundError, nothing created."""
    store = MemoryStore()
    store.create("a")
    store.create("b")
    outcome = Worker(store, _noop, owner="w").run_one("b")
    assert outcome is not None
    assert outcome.task_id == "b"
    assert store.get("a").state is TaskState.PENDING  # type: ignore[union-attr]
    with pytest.raises(TaskNotFoundError):
        Worker(store, _noop).run_one("nope")
    assert store.get("nope") is None


def test_handler_that_outlives_its_lease_learns_before_it_can_complete() -> None:
    """Heartbeats cannot get through: the handler's checkpoint raises LeaseLostError once the
    lease ran out, another worker takes over, and the runtime's complete is refused (fenced).
    """
    store = PartitionedStore()
    store.create("t")
    learned: list[SagaLeaseError] = []
    taken_over: list[TaskSaga] = []

    def handler(ctx: LeaseContext) -> None:
        end = time.monotonic() + GUARD
        while time.monotonic() < end:
            try:
                ctx.sleep(0.02)
            except LeaseLostError as exc:
                learned.append(exc)
                break
        assert ctx.lost
        assert ctx.lost_event.is_set()
        # Another worker takes the task over as soon as the store sees the lease expired.
        _wait_for(lambda: _try_acquire(store, "t", "w2", taken_over), "the takeover")
        # The handler ignores what it learned and returns: the runtime tries to complete.

    outcome = Worker(store, handler, owner="w1", ttl=SHORT).run_one()
    assert outcome is not None
    assert len(learned) == 1
    assert isinstance(learned[0], LeaseLostError)
    assert learned[0].token == 1
    assert (outcome.result, outcome.token) == ("fenced", 1)
    task = store.get("t")
    assert task == taken_over[0]
    assert task is not None
    assert task.state is TaskState.RUNNING
    assert task.lease is not None
    assert (task.lease.owner, task.token) == ("w2", 2)
    assert [e.event for e in store.history("t")] == ["create", "acquire", "acquire"]


def _try_acquire(store: MemoryStore, task_id: str, owner: str, into: list[TaskSaga]) -> bool:
    try:
        into.append(store.acquire(task_id, owner=owner, ttl=timedelta(seconds=30)))
    except SagaLeaseError:
        return False
    return True


def test_refused_heartbeat_sets_the_lost_flag_and_the_write_is_fenced() -> None:
    """Quarantined mid-handler: the next heartbeat is refused, the lost event is set with a
    reason, check() raises LeaseLostError, and the late complete changes nothing.
    """
    store = MemoryStore()
    store.create("t")
    errors: list[BaseException] = []

    def handler(ctx: LeaseContext) -> None:
        store.quarantine("t", reason="operator stop", by="ops")
        assert ctx.lost_event.wait(GUARD)
        assert "heartbeat refused" in ctx.lost_reason
        try:
            ctx.check()
        except LeaseLostError as exc:
            errors.append(exc)

    before: list[Any] = []
    outcome = Worker(
        store,
        handler,
        owner="w1",
        ttl=SHORT,
        on_outcome=lambda _o: before.extend(store.history("t")),
    ).run_one()
    assert outcome is not None
    assert len(errors) == 1
    assert outcome.result == "fenced"
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.QUARANTINED
    assert store.history("t")[-1].event == "quarantine"
    assert store.history("t") == before


def test_handler_raising_lease_lost_writes_nothing() -> None:
    """A handler that stops on LeaseLostError: outcome "lost", no write by the runtime."""
    store = PartitionedStore()
    store.create("t")

    def handler(ctx: LeaseContext) -> None:
        while True:
            ctx.sleep(0.02)

    outcome = Worker(store, handler, owner="w1", ttl=SHORT).run_one()
    assert outcome is not None
    assert outcome.result == "lost"
    assert [e.event for e in store.history("t")] == ["create", "acquire"]


def test_register_compensation_after_the_lease_is_lost_raises_and_changes_nothing() -> None:
    """ctx.register_compensation under a lost lease: LeaseLostError, the plan is unchanged."""
    store = MemoryStore()
    store.create("t")
    raised: list[BaseException] = []

    def handler(ctx: LeaseContext) -> None:
        store.quarantine("t", reason="stop", by="ops")
        history = store.history("t")
        try:
            ctx.register_compensation(Compensation("refund", "o1"))
        except LeaseLostError as exc:
            raised.append(exc)
        assert store.history("t") == history

    Worker(store, handler, owner="w1").run_one()
    assert len(raised) == 1
    assert store.get("t").compensations == ()  # type: ignore[union-attr]


def test_handler_exception_fails_the_task_and_registered_compensations_are_owed() -> None:
    """A handler that registers a compensation and raises: fail → COMPENSATING, one pending."""
    store = MemoryStore()
    store.create("t")

    def handler(ctx: LeaseContext) -> None:
        ctx.register_compensation(Compensation("refund", "order-1"))
        raise RuntimeError("card declined")

    outcome = Worker(store, handler, owner="w1").run_one()
    assert outcome is not None
    assert outcome.result == "compensating"
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.COMPENSATING
    assert task.pending_compensations == (0,)
    assert store.history("t")[-1].reason == "RuntimeError: card declined"


def test_handler_exception_without_compensations_fails() -> None:
    """A handler that raises with nothing owed: FAILED with the exception as reason."""
    store = MemoryStore()
    store.create("t")

    def handler(_ctx: LeaseContext) -> None:
        raise ValueError("bad input")

    outcome = Worker(store, handler).run_one()
    assert outcome is not None
    assert outcome.result == "failed"
    assert store.get("t").terminal_reason == "ValueError: bad input"  # type: ignore[union-attr]


def _compensating(store: MemoryStore, task_id: str, *comps: Compensation) -> None:
    store.create(task_id, compensations=comps)
    t = store.acquire(task_id, owner="fwd", ttl=timedelta(seconds=30))
    store.fail(task_id, owner="fwd", token=t.token, reason="boom")


def test_compensating_worker_applies_every_compensation() -> None:
    """A compensating task: the compensator runs for each pending one, in order → COMPENSATED."""
    store = MemoryStore()
    _compensating(store, "t", Compensation("refund", "a"), Compensation("unhold", "b"))
    applied: list[tuple[str, int]] = []

    def compensator(ctx: LeaseContext, comp: Compensation) -> None:
        applied.append((comp.kind, ctx.token))

    outcome = Worker(store, _noop, compensator=compensator, owner="c").run_one()
    assert outcome is not None
    assert outcome.result == "compensated"
    assert applied == [("refund", 2), ("unhold", 2)]
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.COMPENSATED
    assert all(c.status is CompensationStatus.APPLIED for c in task.compensations)


def test_permanent_compensation_failure_quarantines() -> None:
    """PermanentCompensationError from the compensator: compensation_failed → QUARANTINED."""
    store = MemoryStore()
    _compensating(store, "t", Compensation("refund", "a"))

    def compensator(_ctx: LeaseContext, _comp: Compensation) -> None:
        raise PermanentCompensationError("account closed")

    outcome = Worker(store, _noop, compensator=compensator).run_one()
    assert outcome is not None
    assert outcome.result == "quarantined"
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.QUARANTINED
    assert task.compensations[0].status is CompensationStatus.FAILED


def test_transient_compensation_error_releases_for_a_retry() -> None:
    """Any other compensator error: the lease is released, the compensation stays pending."""
    store = MemoryStore()
    _compensating(store, "t", Compensation("refund", "a"))

    def compensator(_ctx: LeaseContext, _comp: Compensation) -> None:
        raise ConnectionError("timeout")

    outcome = Worker(store, _noop, compensator=compensator).run_one()
    assert outcome is not None
    assert outcome.result == "released"
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.COMPENSATING
    assert task.lease is None
    assert task.pending_compensations == (0,)


def test_worker_without_compensator_hands_compensating_tasks_back() -> None:
    """A worker with no compensator releases a compensating task it claimed; nothing is dropped."""
    store = MemoryStore()
    _compensating(store, "t", Compensation("refund", "a"))
    outcome = Worker(store, _noop).run_one()
    assert outcome is not None
    assert outcome.result == "released"
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.COMPENSATING
    assert task.pending_compensations == (0,)


# ---------------------------------------------------------------- the loop


def test_run_respects_max_tasks() -> None:
    """run(max_tasks=2) works two tasks and leaves the rest pending."""
    store = MemoryStore()
    for i in range(4):
        store.create(f"t{i}")
    outcomes = Worker(store, _noop, concurrency=2).run(max_tasks=2)
    assert len(outcomes) == 2
    assert store.counts()[TaskState.PENDING] == 2


def test_stop_makes_handlers_unwind_and_releases_the_lease() -> None:
    """stop() while a handler waits: ShutdownRequestedError at its checkpoint, lease released."""
    store = MemoryStore()
    store.create("t")
    started = threading.Event()
    raised: list[BaseException] = []

    def handler(ctx: LeaseContext) -> None:
        started.set()
        try:
            ctx.sleep(GUARD)
        except ShutdownRequestedError as exc:
            raised.append(exc)
            raise

    worker = Worker(store, handler, owner="w1")

    def stop_when_started() -> None:
        started.wait(GUARD)
        worker.stop()

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    outcomes = worker.run()
    stopper.join()
    assert len(raised) == 1
    assert [o.result for o in outcomes] == ["released"]
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.PENDING
    assert task.lease is None
    assert store.history("t")[-1].event == "release"
