"""The worker runtime in one process on a memory store: timing settings, heartbeats,
lost leases, fencing, compensation, the retry policy and retries, finishing writes
whose answer was lost, queues, wake-ups, the run loop and stop() (on SQLite with threads:
tests/stores/test_sqlite.py; worker processes signalled and killed:
tests/system/test_worker.py).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, cast

import pytest

from _fleet_workers import LostAnswer
from conftest import T0
from sagalease import (
    Compensation,
    CompensationStatus,
    InvalidInputError,
    LeaseContext,
    LeaseLostError,
    ManualClock,
    MemoryStore,
    NewTask,
    PermanentCompensationError,
    PermanentTaskError,
    Retry,
    RetryPolicy,
    SagaLeaseError,
    SagaStore,
    ShutdownRequestedError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskSaga,
    TaskState,
    Worker,
)
from sagalease.store import WakeUps

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
        ({"retry": "exponential"}, "retry"),
        ({"rng": 42}, "rng"),
        ({"queues": ""}, "queue"),
        ({"queues": []}, "queue"),
        ({"queues": ["fast", "bad\nname"]}, "queue"),
        ({"queues": 7}, "queue"),
    ],
)
def test_worker_settings_that_cannot_work_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Unworkable timing (TTL <= 0, heartbeat > TTL/3, ...), a retry that is not a
    RetryPolicy, an rng that is not a random.Random, malformed queues: InvalidInputError,
    store untouched.
    """
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
    """A handler that registers a compensation and raises on its last attempt: fail →
    COMPENSATING, one pending.
    """
    store = MemoryStore()
    store.create("t", max_attempts=1)

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


def test_handler_exception_without_compensations_fails_without_a_retry_policy() -> None:
    """retry=None: a handler that raises with nothing owed fails at once (attempts left):
    FAILED with the exception as reason.
    """
    store = MemoryStore()
    store.create("t")

    def handler(_ctx: LeaseContext) -> None:
        raise ValueError("bad input")

    outcome = Worker(store, handler, retry=None).run_one()
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
    assert outcome.result == "retried"
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


def _stop_once_started(started: threading.Event, worker: Worker) -> None:
    started.wait(GUARD)
    worker.stop()


class SlowRelease(MemoryStore):
    """A memory store whose release commits, then answers after ``pause`` seconds."""

    pause = 2.0

    def release(self, task_id: str, **kwargs: Any) -> TaskSaga:
        task = super().release(task_id, **kwargs)
        time.sleep(self.pause)
        return task


def test_a_release_still_in_flight_after_the_grace_period_is_waited_for() -> None:
    """stop() with a grace period shorter than the handler's release: run() returns only
    after that release answered (a process exiting then never leaves a write half done),
    and the runtime does not release the lease a second time.
    """
    store = SlowRelease()
    store.create("t")
    started = threading.Event()

    def handler(ctx: LeaseContext) -> None:
        started.set()
        ctx.sleep(GUARD)

    # The grace period outlasts the handler's checkpoint (ctx.sleep looks every 50 ms),
    # not its release.
    worker = Worker(store, handler, owner="w1", shutdown_grace=timedelta(milliseconds=500))
    stopper = threading.Thread(target=_stop_once_started, args=(started, worker))
    stopper.start()
    outcomes = worker.run()
    stopper.join()
    assert [(o.result, o.detail) for o in outcomes] == [("released", "shutdown")]
    assert [e.event for e in store.history("t")] == ["create", "acquire", "release"]


def test_a_handler_that_ignores_shutdown_is_released_after_the_grace_period() -> None:
    """A handler that never reaches a checkpoint: after the grace period the runtime
    releases its lease (the reason says why), marks it lost, and run() returns without
    waiting for the handler.
    """
    store = MemoryStore()
    store.create("t")
    started, done = threading.Event(), threading.Event()
    seen_lost: list[bool] = []

    def handler(ctx: LeaseContext) -> None:
        started.set()
        done.wait(GUARD)
        seen_lost.append(ctx.lost)

    worker = Worker(store, handler, owner="w1", shutdown_grace=timedelta(milliseconds=50))
    stopper = threading.Thread(target=_stop_once_started, args=(started, worker))
    stopper.start()
    assert worker.run() == []
    stopper.join()
    task = store.get("t")
    assert task is not None
    assert (task.state, task.lease) == (TaskState.PENDING, None)
    last = store.history("t")[-1]
    assert (last.event, last.owner, last.token) == ("release", "w1", 1)
    assert last.args["reason"] == "shutdown: the handler did not stop within the grace period"
    done.set()
    _wait_for(lambda: seen_lost, "the handler to return")
    assert seen_lost == [True]


class StopsWhileClaiming(MemoryStore):
    """A memory store whose claim asks the worker to stop before it answers."""

    worker: Worker

    def claim_next(self, **kwargs: Any) -> TaskSaga | None:
        task = super().claim_next(**kwargs)
        self.worker.stop()
        return task


def test_a_task_claimed_while_shutting_down_is_handed_back_without_running_it() -> None:
    """A claim that answers after stop(): the handler never runs, the lease is released."""
    store = StopsWhileClaiming()
    store.create("t")
    ran: list[str] = []
    store.worker = Worker(store, lambda ctx: ran.append(ctx.task_id), owner="w1")
    outcomes = store.worker.run()
    assert ran == []
    assert [(o.result, o.detail) for o in outcomes] == [("released", "shutdown")]
    assert [e.event for e in store.history("t")] == ["create", "acquire", "release"]


# ---------------------------------------------------------------- the retry policy

SECOND = timedelta(seconds=1)


def test_retry_policy_defaults() -> None:
    """The default backoff: from 1 s, doubling, capped at 5 minutes, ±10 % jitter."""
    policy = RetryPolicy()
    assert (policy.initial, policy.factor, policy.maximum, policy.jitter) == (
        SECOND,
        2.0,
        timedelta(minutes=5),
        0.1,
    )
    assert Worker(MemoryStore(), _noop).retry == policy


def test_retry_policy_without_jitter_doubles_up_to_the_cap() -> None:
    """jitter=0: attempt n waits initial * factor**(n-1), capped at maximum (huge attempt
    numbers included: no overflow).
    """
    policy = RetryPolicy(jitter=0.0)
    rng = random.Random(0)
    delays = [policy.delay(n, rng) for n in range(1, 12)]
    assert delays == [SECOND * 2**k for k in range(9)] + [timedelta(minutes=5)] * 2
    assert policy.delay(10_000, rng) == timedelta(minutes=5)
    assert RetryPolicy(initial=timedelta(0), jitter=0.5).delay(3, rng) == timedelta(0)
    assert RetryPolicy(factor=1.0, jitter=0.0).delay(50, rng) == SECOND


def test_retry_policy_jitter_stays_within_its_range_around_the_capped_delay() -> None:
    """Every delay lies within ±jitter of min(initial * factor**(n-1), maximum): the cap
    applies before the jitter; the delays vary, and one seed gives one sequence.
    """
    policy = RetryPolicy(initial=timedelta(milliseconds=100), factor=3.0, jitter=0.25)
    rng = random.Random(1)
    seen: set[timedelta] = set()
    for attempt in (1, 2, 3, 5, 8, 20):
        base = min(timedelta(milliseconds=100) * 3 ** (attempt - 1), policy.maximum)
        for _ in range(200):
            delay = policy.delay(attempt, rng)
            assert base * 0.75 <= delay <= base * 1.25, (attempt, delay)
            seen.add(delay)
    assert len(seen) > 100
    assert [policy.delay(2, random.Random(5)) for _ in range(3)] == [
        policy.delay(2, random.Random(5))
    ] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": timedelta(seconds=-1)}, "initial"),
        ({"initial": 1}, "initial"),
        ({"maximum": timedelta(milliseconds=500)}, "maximum"),
        ({"maximum": 300}, "maximum"),
        ({"factor": 0.5}, "factor"),
        ({"factor": math.nan}, "factor"),
        ({"factor": math.inf}, "factor"),
        ({"factor": True}, "factor"),
        ({"factor": "2"}, "factor"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
        ({"jitter": False}, "jitter"),
    ],
)
def test_retry_policy_settings_that_cannot_work_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    """Negative or non-timedelta times, a maximum below initial, a factor below 1 or not
    finite, a jitter outside [0, 1): InvalidInputError naming the setting.
    """
    with pytest.raises(InvalidInputError, match=message):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("attempt", [0, -1, True, 1.5, "1"])
def test_retry_policy_delay_of_a_bad_attempt_is_refused(attempt: Any) -> None:
    """delay(attempt) needs a positive integer: else InvalidInputError."""
    with pytest.raises(InvalidInputError, match="attempt"):
        RetryPolicy().delay(attempt, random.Random(0))


# ---------------------------------------------------------------- retries


def _flaky(failures: int, exc: Callable[[], BaseException]) -> Callable[[LeaseContext], None]:
    """A handler that raises ``exc()`` on its first ``failures`` calls, then returns."""
    calls = [0]

    def handler(_ctx: LeaseContext) -> None:
        calls[0] += 1
        if calls[0] <= failures:
            raise exc()

    return handler


def test_ordinary_exception_is_retried_with_the_backoff_then_the_last_attempt_fails() -> None:
    """A handler that always raises: attempts 1 and 2 release the lease with the policy's
    delays (the history's delay_us and reason, the outcome's retry_in), the task is not
    claimable before the delay passed, and attempt 3 of 3 fails it.
    """
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    store.create("t", max_attempts=3)
    policy = RetryPolicy(initial=timedelta(seconds=2), factor=3.0, jitter=0.1)
    expected_rng = random.Random(11)
    expected = [policy.delay(1, expected_rng), policy.delay(2, expected_rng)]
    worker = Worker(
        store, _flaky(99, lambda: RuntimeError("flaky")), retry=policy, rng=random.Random(11)
    )
    for attempt, delay in enumerate(expected, start=1):
        outcome = worker.run_one()
        assert outcome is not None
        reason = f"retry {attempt}/3 in {delay.total_seconds():.3f}s: RuntimeError: flaky"
        assert (outcome.result, outcome.retry_in, outcome.detail) == ("retried", delay, reason)
        last = store.history("t")[-1]
        assert (last.event, last.reason, last.args["delay_us"]) == (
            "release",
            reason,
            delay // timedelta(microseconds=1),
        )
        task = store.get("t")
        assert task is not None
        assert (task.state, task.attempts, task.available_at) == (
            TaskState.PENDING,
            attempt,
            clock.now() + delay,
        )
        clock.advance(delay - timedelta(microseconds=1))
        assert worker.run_one() is None  # not yet
        clock.advance(timedelta(microseconds=1))
    outcome = worker.run_one()
    assert outcome is not None
    assert (outcome.result, outcome.detail, outcome.retry_in) == (
        "failed",
        "RuntimeError: flaky",
        None,
    )
    task = store.get("t")
    assert task is not None
    assert (task.state, task.attempts) == (TaskState.FAILED, 3)
    assert [e.event for e in store.history("t")] == [
        "create",
        *["acquire", "release"] * 2,
        "acquire",
        "fail",
    ]


def test_a_retried_handler_that_then_succeeds_completes() -> None:
    """Two transient errors, then success: retried, retried, completed."""
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    store.create("t")
    worker = Worker(store, _flaky(2, lambda: ConnectionError("reset")), rng=random.Random(0))
    results = []
    for _ in range(3):
        outcome = worker.run_one()
        assert outcome is not None
        results.append(outcome.result)
        clock.advance(timedelta(minutes=6))  # past any default delay
    assert results == ["retried", "retried", "completed"]
    assert store.get("t").state is TaskState.COMPLETED  # type: ignore[union-attr]


def test_last_attempt_failure_with_compensations_owed_compensates() -> None:
    """The last attempt's error fails the task into COMPENSATING; a compensating worker
    then applies the compensation the first attempt registered: COMPENSATED.
    """
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    store.create("t", max_attempts=2)

    def handler(ctx: LeaseContext) -> None:
        if not ctx.task.compensations:
            ctx.register_compensation(Compensation("refund", "order-1"))
        raise RuntimeError("card declined")

    applied: list[str] = []
    worker = Worker(
        store,
        handler,
        compensator=lambda _ctx, comp: applied.append(comp.target),
        rng=random.Random(0),
    )
    first = worker.run_one()
    clock.advance(timedelta(minutes=6))
    second = worker.run_one()
    third = worker.run_one()
    assert [o.result for o in (first, second, third) if o is not None] == [
        "retried",
        "compensating",
        "compensated",
    ]
    assert applied == ["order-1"]
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.COMPENSATED
    assert len(task.compensations) == 1


def test_raise_retry_chooses_the_delay_exactly_even_without_a_policy() -> None:
    """Retry(after=...) releases with exactly that delay and its reason (retry=None too);
    on the last attempt it fails the task instead.
    """
    store = MemoryStore(clock=ManualClock(T0))
    store.create("t", max_attempts=2)
    after = timedelta(seconds=3, microseconds=123_457)
    worker = Worker(store, _flaky(99, lambda: Retry("rate limited", after=after)), retry=None)
    outcome = worker.run_one()
    assert outcome is not None
    assert (outcome.result, outcome.retry_in) == ("retried", after)
    last = store.history("t")[-1]
    assert last.args["delay_us"] == 3_123_457
    assert last.reason == "retry 1/2 in 3.123s: Retry: rate limited"
    store.clock.advance(after)  # type: ignore[attr-defined]
    outcome = worker.run_one()
    assert outcome is not None
    assert (outcome.result, outcome.detail) == ("failed", "Retry: rate limited")
    assert store.get("t").state is TaskState.FAILED  # type: ignore[union-attr]


def test_permanent_task_error_fails_at_once_with_attempts_left() -> None:
    """PermanentTaskError on attempt 1 of 5: fail at once, no release, no retry."""
    store = MemoryStore()
    store.create("t", max_attempts=5)
    worker = Worker(store, _flaky(99, lambda: PermanentTaskError("no such account")))
    outcome = worker.run_one()
    assert outcome is not None
    assert (outcome.result, outcome.retry_in) == ("failed", None)
    task = store.get("t")
    assert task is not None
    assert (task.state, task.attempts) == (TaskState.FAILED, 1)
    assert task.terminal_reason == "PermanentTaskError: no such account"
    assert [e.event for e in store.history("t")] == ["create", "acquire", "fail"]


def test_a_retry_reason_is_cut_to_500_characters_and_made_storable() -> None:
    """An error with a 5,000-character message holding a NUL and a lone surrogate: the
    release's reason is at most 500 characters, starts with the retry line, and is stored.
    """
    store = MemoryStore()
    store.create("t")
    message = "\x00\udc80" + "x" * 5000
    outcome = Worker(store, _flaky(1, lambda: RuntimeError(message))).run_one()
    assert outcome is not None
    assert outcome.result == "retried"
    reason = store.history("t")[-1].reason
    assert reason is not None
    assert reason == outcome.detail
    assert len(reason) == 500
    assert reason.startswith("retry 1/5 in ")
    assert "RuntimeError: \\x00\\udc80xxx" in reason


def test_transient_compensation_errors_use_the_backoff_and_the_last_one_hands_back() -> None:
    """A compensator's transient error releases with the policy's delay for the attempt;
    on the phase's last attempt the lease is released at once (no retry promised) and
    the reaper quarantines the task with the compensation still pending.
    """
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    store.create("t", compensations=[Compensation("refund", "a")], max_attempts=2)
    lease = store.acquire("t", owner="fwd", ttl=timedelta(seconds=30))
    store.fail("t", owner="fwd", token=lease.token, reason="boom")
    policy = RetryPolicy(initial=timedelta(seconds=5), jitter=0.2)

    def compensator(_ctx: LeaseContext, _comp: Compensation) -> None:
        raise ConnectionError("timeout")

    worker = Worker(store, _noop, compensator=compensator, retry=policy, rng=random.Random(3))
    first = worker.run_one()
    expected = policy.delay(1, random.Random(3))
    assert first is not None
    assert (first.result, first.retry_in) == ("retried", expected)
    assert store.history("t")[-1].args["delay_us"] == expected // timedelta(microseconds=1)
    clock.advance(expected)
    last = worker.run_one()
    assert last is not None
    assert (last.result, last.retry_in) == ("released", None)
    assert last.detail == "attempt 2/2, none left: ConnectionError: timeout"
    assert store.history("t")[-1].args["delay_us"] == 0
    store.reap()
    task = store.get("t")
    assert task is not None
    assert task.state is TaskState.QUARANTINED
    assert task.pending_compensations == (0,)


# ---------------------------------------------------------------- queues


def test_worker_claims_only_from_its_queues() -> None:
    """queues="fast": the worker takes the fast task, never the slow one (older and of a
    higher priority); queues=None takes any.
    """
    store = MemoryStore()
    store.create("slow-1", queue="slow", priority=10)
    store.create("fast-1", queue="fast")
    fast = Worker(store, _noop, queues="fast")
    assert fast.queues == ("fast",)
    outcome = fast.run_one()
    assert outcome is not None
    assert outcome.task_id == "fast-1"
    assert fast.run_one() is None
    assert store.get("slow-1").state is TaskState.PENDING  # type: ignore[union-attr]
    both = Worker(store, _noop, queues=["slow", "fast"])
    assert both.queues == ("fast", "slow")
    anywhere = Worker(store, _noop).run_one()
    assert anywhere is not None
    assert anywhere.task_id == "slow-1"


# ---------------------------------------------------------------- finishing writes


def _permanent(_ctx: LeaseContext) -> None:
    raise PermanentTaskError("no such account")


def _transient(_ctx: LeaseContext) -> None:
    raise ConnectionError("reset")


def _refuse(_ctx: LeaseContext, _comp: Compensation) -> None:
    raise PermanentCompensationError("account closed")


def _apply(_ctx: LeaseContext, _comp: Compensation) -> None:
    return None


# event whose first answer is lost -> (handler, compensator, compensations owed, result)
LOST_ANSWERS: dict[str, tuple[Any, Any, int, str]] = {
    "complete": (_noop, None, 0, "completed"),
    "fail": (_permanent, None, 0, "failed"),
    "release": (_transient, None, 0, "retried"),
    "compensation_applied": (_noop, _apply, 2, "compensated"),
    "compensation_failed": (_noop, _refuse, 1, "quarantined"),
}


@pytest.mark.parametrize("commits", [True, False], ids=["answer-lost", "before-write"])
@pytest.mark.parametrize("event", sorted(LOST_ANSWERS))
def test_a_finishing_write_whose_answer_is_lost_is_repeated_and_applied_once(
    event: str, commits: bool
) -> None:
    """The first call of a finishing write raises StoreUnavailableError, after committing
    (the answer was lost) or before writing: the runtime repeats it, the outcome is the
    write's own, and the history holds exactly one entry of it by this lease (for
    compensation_applied: one per index, the first one's repeat refused as not pending).
    """
    store = MemoryStore()
    handler, compensator, owed, result = LOST_ANSWERS[event]
    if owed:
        _compensating(store, "t", *(Compensation("refund", f"c{i}") for i in range(owed)))
    else:
        store.create("t")
    wrapper = LostAnswer(store, event, commits=commits)
    outcome = Worker(wrapper.store(), handler, compensator=compensator, owner="w").run_one()
    assert outcome is not None
    assert outcome.result == result, outcome
    assert wrapper.calls == (1 + owed if event == "compensation_applied" else 2)
    mine = [
        e
        for e in store.history("t")
        if e.event == event and (e.owner, e.token) == ("w", outcome.token)
    ]
    if event == "compensation_applied":
        assert [e.args["index"] for e in mine] == [0, 1]
    else:
        assert len(mine) == 1


def test_a_repeat_refused_because_the_lease_was_lost_meanwhile_is_fenced() -> None:
    """Complete's first call goes unanswered without writing and an operator quarantines the
    task meanwhile: the repeat is refused, the history holds no complete, outcome "fenced".
    """
    store = MemoryStore()
    store.create("t")
    wrapper = LostAnswer(
        store,
        "complete",
        commits=False,
        meanwhile=lambda: store.quarantine("t", reason="operator stop", by="ops"),
    )
    outcome = Worker(wrapper.store(), _noop, owner="w").run_one()
    assert outcome is not None
    assert outcome.result == "fenced"
    assert (outcome.detail or "").startswith("complete: refused")
    assert [e.event for e in store.history("t")] == ["create", "acquire", "quarantine"]
    assert store.get("t").state is TaskState.QUARANTINED  # type: ignore[union-attr]


class Unreachable:
    """Wraps a store: the named methods answer StoreUnavailableError, the rest pass."""

    def __init__(self, inner: MemoryStore, names: set[str]) -> None:
        self.inner = inner
        self.names = names
        self.refused: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name not in self.names:
            return getattr(self.inner, name)

        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            self.refused.append(name)
            raise StoreUnavailableError(f"{name}: the database is away")

        return refuse


@pytest.mark.parametrize(
    ("away", "detail"),
    [
        ({"complete", "heartbeat"}, "complete: not applied"),
        ({"complete", "heartbeat", "history"}, "complete: outcome unknown"),
    ],
    ids=["history-read", "history-away"],
)
def test_a_finishing_write_unanswered_until_the_known_expiry_gives_up(
    away: set[str], detail: str
) -> None:
    """Complete (and the heartbeats) stay unreachable: the runtime repeats complete until
    the lease's known expiry, then one look at the history decides ("not applied": no
    complete there), or, the history away too, reports the outcome as unknown. Either
    way the outcome is "fenced" and nothing was written.
    """
    store = MemoryStore()
    store.create("t")
    wrapper = Unreachable(store, away)
    outcome = Worker(cast(SagaStore, wrapper), _noop, owner="w", ttl=SHORT).run_one()
    assert outcome is not None
    assert outcome.result == "fenced"
    assert (outcome.detail or "").startswith(detail), outcome.detail
    assert wrapper.refused.count("complete") >= 2
    assert [e.event for e in store.history("t")] == ["create", "acquire"]


# ---------------------------------------------------------------- wake-ups


class WatchedWakeUps(MemoryStore):
    """A memory store that records its idle waiters: each wait_for_work call sets
    ``waiting`` while holding the store's lock, which the wait releases only once it
    has started, so that no write can slip in between (the interleaving tests need).
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.waits: list[tuple[Any, timedelta]] = []
        self.claims_after_stop = 0
        self.worker: Worker | None = None

    def wait_for_work(
        self, *, queues: str | Collection[str] | None = None, timeout: timedelta
    ) -> bool:
        with self._lock:
            self.waits.append((queues, timeout))
            self.waiting.set()
            return super().wait_for_work(queues=queues, timeout=timeout)

    def claim_next(self, **kwargs: Any) -> TaskSaga | None:
        if self.worker is not None and self.worker.stopping:
            self.claims_after_stop += 1
        return super().claim_next(**kwargs)


def test_an_idle_worker_wakes_on_a_new_task_well_before_its_poll_interval() -> None:
    """An idle worker (poll_interval 10 minutes) waits on the store's wake-ups with its
    queues and the poll interval as the timeout; a task created from another thread
    wakes it: run(max_tasks=1) ends within a join timeout far below the poll interval.
    """
    store = WatchedWakeUps()
    poll = timedelta(minutes=10)
    worker = Worker(store, _noop, owner="w", poll_interval=poll, queues="fast")
    outcomes: list[Any] = []
    runner = threading.Thread(target=lambda: outcomes.extend(worker.run(max_tasks=1)))
    runner.start()
    assert store.waiting.wait(GUARD)
    store.create("t", queue="fast")
    runner.join(GUARD)
    alive = runner.is_alive()
    worker.stop()
    assert not alive
    assert poll.total_seconds() > GUARD
    assert [(o.task_id, o.result) for o in outcomes] == [("t", "completed")]
    assert store.waits[0] == (("fast",), poll)


def test_stop_ends_an_idle_wait_without_another_claim() -> None:
    """stop() while the only worker thread waits for work: run() returns and the thread
    makes no claim after the stop (the wait ends within the poll interval).
    """
    store = WatchedWakeUps()
    worker = Worker(store, _noop, poll_interval=timedelta(milliseconds=200))
    store.worker = worker
    outcomes: list[Any] = []
    runner = threading.Thread(target=lambda: outcomes.extend(worker.run()))
    runner.start()
    assert store.waiting.wait(GUARD)
    worker.stop()
    runner.join(GUARD)
    assert not runner.is_alive()
    assert outcomes == []
    assert store.claims_after_stop == 0


class PollingStore(MemoryStore):
    """A memory store without wake-ups (as SQLite): idle workers sleep instead."""

    wait_for_work = None  # type: ignore[assignment]


def test_without_wake_ups_an_idle_worker_sleeps_and_stop_ends_the_sleep() -> None:
    """A store that is not WakeUps: the idle worker sleeps its poll interval (one hour);
    stop() ends that sleep at once: run() returns within a join timeout far below it.
    """
    store = PollingStore()
    assert not isinstance(store, WakeUps)
    claimed = threading.Event()
    original = store.claim_next

    def claim_next(**kwargs: Any) -> TaskSaga | None:
        claimed.set()
        return original(**kwargs)

    store.claim_next = claim_next  # type: ignore[method-assign]
    worker = Worker(store, _noop, poll_interval=timedelta(hours=1))
    runner = threading.Thread(target=worker.run)
    runner.start()
    assert claimed.wait(GUARD)
    worker.stop()
    runner.join(GUARD)
    assert not runner.is_alive()


def test_an_idle_worker_takes_its_own_retry_when_due_not_after_the_poll_interval() -> None:
    """A retry becoming available wakes nobody; the worker that released it bounds its idle
    wait by the delay (poll_interval 10 minutes): run(max_tasks=2) retries and completes
    within a join timeout far below the poll interval, its wait no longer than the delay.
    """
    store = WatchedWakeUps()
    store.create("t")
    delay = timedelta(milliseconds=50)
    worker = Worker(
        store,
        _flaky(1, lambda: ConnectionError("reset")),
        poll_interval=timedelta(minutes=10),
        retry=RetryPolicy(initial=delay, jitter=0.0),
    )
    outcomes: list[Any] = []
    runner = threading.Thread(target=lambda: outcomes.extend(worker.run(max_tasks=2)))
    runner.start()
    runner.join(GUARD)
    alive = runner.is_alive()
    worker.stop()
    assert not alive
    assert [o.result for o in outcomes] == ["retried", "completed"]
    assert store.waits
    assert all(timeout <= delay for _queues, timeout in store.waits)


class CountedClaims(MemoryStore):
    """A memory store without wake-ups that counts ``claim_next`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self._claims_lock = threading.Lock()

    def claim_next(self, **kwargs: Any) -> TaskSaga | None:
        with self._claims_lock:
            self.claims += 1
        return super().claim_next(**kwargs)


def test_an_idle_worker_claims_once_per_interval_whatever_its_concurrency() -> None:
    """50 threads, nothing to claim, poll_interval 100 ms, stopped after 300 ms:
    a handful of claims (one thread polls, the others wait for a find), not one
    per thread per interval.
    """
    store = CountedClaims()
    worker = Worker(store, _noop, concurrency=50, poll_interval=timedelta(milliseconds=100))
    outcomes: list[Any] = []
    runner = threading.Thread(target=lambda: outcomes.extend(worker.run()))
    runner.start()
    time.sleep(0.3)
    worker.stop()
    runner.join(GUARD)
    assert not runner.is_alive()
    assert outcomes == []
    assert 50 <= store.claims <= 50 + 6  # each thread's first claim, then one per interval


def test_work_found_by_the_idle_poller_wakes_the_other_threads() -> None:
    """Ten idle threads, then 30 tasks of 200 ms each: the poller's find wakes the
    others one after the other, so all ten work at once and every task completes.
    """
    store = CountedClaims()
    now = {"running": 0, "most": 0}
    lock = threading.Lock()

    def handler(_ctx: LeaseContext) -> None:
        with lock:
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
        time.sleep(0.2)
        with lock:
            now["running"] -= 1

    worker = Worker(store, handler, concurrency=10, poll_interval=timedelta(milliseconds=50))
    outcomes: list[Any] = []
    runner = threading.Thread(target=lambda: outcomes.extend(worker.run(max_tasks=30)))
    runner.start()
    _wait_for(lambda: store.claims >= 10, "every thread's first claim")
    store.create_many([NewTask(f"t{i:02}") for i in range(30)])
    runner.join(GUARD)
    assert not runner.is_alive()
    assert sorted(o.task_id for o in outcomes) == [f"t{i:02}" for i in range(30)]
    assert now["most"] == 10
    assert store.counts()[TaskState.COMPLETED] == 30


class CountedWaits(CountedClaims):
    """A memory store that counts ``claim_next`` and ``wait_for_work`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self._waits_lock = threading.Lock()

    def wait_for_work(self, **kwargs: Any) -> bool:
        with self._waits_lock:
            self.waits += 1
        return super().wait_for_work(**kwargs)


def test_idle_threads_wait_for_work_once_between_them_and_max_tasks_ends_them() -> None:
    """50 idle threads, then 5 tasks, run(max_tasks=5): after the tasks arrive
    the threads wait for work through one poller at a time (a few waits, not one
    or more each), and once the 5 claims are made the waiting ones end too
    (instead of taking turns as the poller): run() returns five outcomes.
    """
    store = CountedWaits()
    worker = Worker(store, _noop, concurrency=50, poll_interval=timedelta(milliseconds=100))
    outcomes: list[Any] = []
    runner = threading.Thread(target=lambda: outcomes.extend(worker.run(max_tasks=5)))
    runner.start()
    # a poll interval gone by: every thread has claimed nothing and waits, or ended
    # (a thread that finds the max_tasks budget taken by claims in flight ends)
    _wait_for(lambda: store.waits >= 2, "a second wait for work")
    before = store.waits  # one per interval so far
    store.create_many([NewTask(f"t{i}") for i in range(5)])
    runner.join(GUARD)
    alive = runner.is_alive()
    worker.stop()
    assert not alive
    assert sorted(o.task_id for o in outcomes) == [f"t{i}" for i in range(5)]
    assert store.waits - before <= 5, (before, store.waits)
