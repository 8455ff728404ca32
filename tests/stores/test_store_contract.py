"""Store-level contract tests (issue 2), run against every backend through the public
``SagaStore`` API only.

The shipped conformance suite's contract checks (``sagalease.conformance._contract``:
every event, guard and error, each refusal checked for its exact error type and for
changing nothing) run here on the bundled stores, one test per check and backend
(:class:`TestShippedContractChecks`); its stateful and concurrency stages run on the
same stores in ``tests/system/test_conformance.py``. The tests below the class pin
what those checks do not: error attributes and messages, the values a call records
(times, reasons, lease fields), boundaries and inputs they do not try, threads
racing on one task, and ids that could break an SQL store.

Every call passes an explicit aware ``now``; tokens are deterministic (the first
acquisition of a task gets token 1), so the tables below hard-code them.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS, T0, conformance_factory
from sagalease import (
    AttemptsExhaustedError,
    Compensation,
    CompensationStatus,
    DuplicateTaskError,
    HistoryEntry,
    InvalidInputError,
    InvalidTransitionError,
    LeaseConflictError,
    NewTask,
    SagaLeaseError,
    SagaStore,
    TaskNotFoundError,
    TaskSaga,
    TaskState,
    TerminalTaskError,
)
from sagalease.conformance import StoreFactory, checks
from sagalease.conformance.testing import StoreConformanceTests

CONTRACT_CHECKS = [c.name for c in checks() if c.name.startswith("contract/")]
"""The shipped suite's contract checks (the stateful and concurrency stages are slow:
tests/system)."""


class TestShippedContractChecks(StoreConformanceTests):
    """The shipped contract checks on memory, SQLite (a fresh file) and PostgreSQL (a
    fresh schema; mandatory with ``SAGALEASE_REQUIRE_POSTGRES=1``, else skipped).
    """

    @pytest.fixture(params=sorted(BACKENDS))
    def store_factory(self, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
        """A factory of fresh, empty stores of each bundled backend."""
        return conformance_factory(request.param, tmp_path)

    @pytest.mark.parametrize("check", CONTRACT_CHECKS)
    def test_conformance(
        self, store_factory: Callable[[], Any], check: str, request: pytest.FixtureRequest
    ) -> None:
        """The bundled store passes this contract check of the shipped suite."""
        super().test_conformance(store_factory, check, request)


TTL = timedelta(seconds=30)
US = timedelta(microseconds=1)
COMP_A = Compensation("refund", "order-1", "charged the card")
COMP_B = Compensation("release-stock", "sku-9", "reserved stock")
COMP_C = Compensation("notify", "user-7")

Snapshot = tuple[list[TaskSaga], list[list[HistoryEntry]], dict[TaskState, int]]
Setup = Callable[[SagaStore], object]
Call = Callable[[SagaStore], object]


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def snapshot(store: SagaStore) -> Snapshot:
    """Every record, every history and the counts: what "nothing changed" compares."""
    tasks = store.list_tasks(limit=10_000)
    return tasks, [store.history(t.task_id) for t in tasks], store.counts()


def expect_error(
    store: SagaStore, error: type[SagaLeaseError], call: Callable[[], object]
) -> SagaLeaseError:
    """Run ``call``; it must raise exactly ``error`` and leave the whole store as it was."""
    before = snapshot(store)
    with pytest.raises(SagaLeaseError) as info:
        call()
    assert type(info.value) is error, f"expected {error.__name__}, got {info.value!r}"
    assert snapshot(store) == before
    return info.value


def absent(store: SagaStore, task_id: str) -> bool:
    """No task is stored under ``task_id`` (a malformed id may also be refused outright)."""
    try:
        return store.get(task_id) is None
    except InvalidInputError:
        return True


def without_notes(task: TaskSaga | None) -> TaskSaga:
    """The record with its notes (and internal version counter) blanked out."""
    assert task is not None
    return replace(task, notes=(), version=0)


# ------------------------------------------------------------------ setups
# Each builds task "t" in one shape. Tokens: first acquisition 1, second 2.


def s_pending(s: SagaStore) -> object:
    """PENDING, available now, no deadline."""
    return s.create("t", now=T0)


def s_pending_later(s: SagaStore) -> object:
    """PENDING, not available before at(10)."""
    return s.create("t", available_at=at(10), now=T0)


def s_pending_deadline(s: SagaStore) -> object:
    """PENDING, deadline at(10)."""
    return s.create("t", deadline=at(10), now=T0)


def s_pending_exhausted(s: SagaStore) -> object:
    """PENDING with its only attempt used (acquired and released)."""
    s.create("t", max_attempts=1, now=T0)
    s.acquire("t", owner="w1", ttl=TTL, now=T0)
    return s.release("t", owner="w1", token=1, now=at(1))


def s_running(s: SagaStore) -> object:
    """RUNNING, w1 holds token 1 until at(30)."""
    s.create("t", now=T0)
    return s.acquire("t", owner="w1", ttl=TTL, now=T0)


def s_running_capped(s: SagaStore) -> object:
    """RUNNING, deadline at(20): w1's token-1 lease is capped at at(20)."""
    s.create("t", deadline=at(20), now=T0)
    return s.acquire("t", owner="w1", ttl=TTL, now=T0)


def s_running_one_attempt(s: SagaStore) -> object:
    """RUNNING on its only attempt (max_attempts=1), w1 token 1 until at(30)."""
    s.create("t", max_attempts=1, now=T0)
    return s.acquire("t", owner="w1", ttl=TTL, now=T0)


def s_comp(s: SagaStore, max_attempts: int = 5) -> object:
    """COMPENSATING, unleased, compensations A and B pending (failed at at(1))."""
    s.create("t", compensations=[COMP_A, COMP_B], max_attempts=max_attempts, now=T0)
    s.acquire("t", owner="w1", ttl=TTL, now=T0)
    return s.fail("t", owner="w1", token=1, reason="boom", now=at(1))


def s_comp_leased(s: SagaStore) -> object:
    """COMPENSATING, c1 holds token 2 until at(32)."""
    s_comp(s)
    return s.acquire("t", owner="c1", ttl=TTL, now=at(2))


def s_comp_one_applied(s: SagaStore) -> object:
    """COMPENSATING, c1 token 2, compensation 0 applied, 1 pending."""
    s_comp_leased(s)
    return s.compensation_applied("t", owner="c1", token=2, index=0, now=at(3))


def s_comp_delayed(s: SagaStore) -> object:
    """COMPENSATING, released by c1 with a delay: not available before at(13)."""
    s_comp_leased(s)
    return s.release("t", owner="c1", token=2, delay=timedelta(seconds=10), now=at(3))


def s_comp_exhausted(s: SagaStore) -> object:
    """COMPENSATING, unleased, its only compensation-phase attempt used."""
    s_comp(s, max_attempts=1)
    s.acquire("t", owner="c1", ttl=TTL, now=at(2))
    return s.release("t", owner="c1", token=2, now=at(3))


def s_completed(s: SagaStore) -> object:
    """COMPLETED by w1 (token 1)."""
    s_running(s)
    return s.complete("t", owner="w1", token=1, now=at(1))


def race_acquire(
    store: SagaStore, task_id: str, workers: int
) -> tuple[list[TaskSaga], list[BaseException]]:
    """``workers`` threads released by one barrier all acquire ``task_id`` at ``T0``."""
    barrier = threading.Barrier(workers)
    wins: list[TaskSaga] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait()
        try:
            result = store.acquire(task_id, owner=f"w{n}", ttl=TTL, now=T0)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                wins.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return wins, errors


# ------------------------------------------------------------------ races


def test_two_workers_race_one_wins(store: SagaStore) -> None:
    """Eight threads released by one barrier acquire one fresh task, 25 times over:
    exactly one wins (token 1, one attempt, one acquire entry), the rest get exactly
    LeaseConflictError (one call at a time: contract/live_lease_blocks_acquire).
    """
    workers, rounds = 8, 25
    for r in range(rounds):
        task_id = f"race-{r}"
        store.create(task_id, now=T0)
        wins, errors = race_acquire(store, task_id, workers)
        assert len(wins) == 1, f"round {r}: {len(wins)} winners"
        assert len(errors) == workers - 1
        assert all(type(e) is LeaseConflictError for e in errors), errors
        final = store.get(task_id)
        assert final is not None
        assert final == wins[0]
        assert final.token == 1
        assert final.attempts == 1
        assert [e.event for e in store.history(task_id)] == ["create", "acquire"]


def test_concurrent_claim_next_never_hands_out_a_task_twice(store: SagaStore) -> None:
    """Eight threads draining claim_next: every task claimed exactly once, under token 1."""
    n_tasks, workers = 40, 8
    for i in range(n_tasks):
        store.create(f"q{i:02d}", now=T0 + i * US)
    barrier = threading.Barrier(workers)
    claimed: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait()
        while True:
            try:
                got = store.claim_next(owner=f"w{n}", ttl=TTL, now=at(1))
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            if got is None:
                return
            assert got.lease is not None
            with lock:
                claimed.append((got.task_id, got.token, got.lease.owner))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(c[0] for c in claimed) == [f"q{i:02d}" for i in range(n_tasks)]
    assert {c[1] for c in claimed} == {1}
    for task_id, _token, owner in claimed:
        rec = store.get(task_id)
        assert rec is not None
        assert rec.lease is not None
        assert rec.lease.owner == owner
    assert store.counts()[TaskState.RUNNING] == n_tasks


# ------------------------------------------------------------------ fencing


def test_takeover_counts_the_expiry_and_names_the_expired_holder(store: SagaStore) -> None:
    """An acquire over an expired lease counts one expiration and its history entry names
    the holder and token it replaced (claim_next: test_claim_next_picks_oldest_leaseable).
    """
    store.create("a", now=T0)
    store.acquire("a", owner="zombie", ttl=TTL, now=T0)
    taken = store.acquire("a", owner="w2", ttl=TTL, now=at(31))
    assert (taken.token, taken.attempts, taken.expirations) == (2, 2, 1)
    entry = store.history("a")[-1]
    assert (entry.event, entry.owner, entry.token) == ("acquire", "w2", 2)
    assert entry.reason is not None
    assert "zombie" in entry.reason
    assert "1" in entry.reason


# ------------------------------------------------------------------ heartbeats


def test_heartbeat_extends_and_records(store: SagaStore) -> None:
    """A valid heartbeat sets expires_at to now + ttl and heartbeat_at to now; acquired_at,
    token, attempts and state stay (the 1 µs boundary: contract/holder_calls_stop_at_expiry).
    """
    s_running(store)
    rec = store.heartbeat("t", owner="w1", token=1, ttl=TTL, now=at(29))
    assert rec.lease is not None
    assert rec.lease.expires_at == at(59)
    assert rec.lease.heartbeat_at == at(29)
    assert rec.lease.acquired_at == T0
    assert rec.token == 1
    assert rec.attempts == 1
    assert rec.state is TaskState.RUNNING


def test_heartbeat_capped_at_deadline(store: SagaStore) -> None:
    """Forward-phase leases and heartbeats stop at the deadline; a capped lease cannot extend."""
    store.create("t", deadline=at(60), now=T0)
    rec = store.acquire("t", owner="w1", ttl=TTL, now=T0)
    assert rec.lease is not None
    assert rec.lease.expires_at == at(30)
    rec = store.heartbeat("t", owner="w1", token=1, ttl=timedelta(hours=1), now=at(20))
    assert rec.lease is not None
    assert rec.lease.expires_at == at(60)
    expect_error(
        store,
        LeaseConflictError,
        lambda: store.heartbeat("t", owner="w1", token=1, ttl=timedelta(hours=1), now=at(30)),
    )
    # acquire is capped the same way
    store.create("u", deadline=at(10), now=T0)
    rec = store.acquire("u", owner="w1", ttl=TTL, now=T0)
    assert rec.lease is not None
    assert rec.lease.expires_at == at(10)


def test_compensation_phase_is_not_bound_by_deadline(store: SagaStore) -> None:
    """In COMPENSATING the deadline is lifted: leases go past it and reap leaves the task alone."""
    store.create("t", compensations=[COMP_A], deadline=at(20), now=T0)
    store.acquire("t", owner="w1", ttl=TTL, now=T0)
    store.fail("t", owner="w1", token=1, reason="boom", now=at(1))
    rec = store.acquire("t", owner="c1", ttl=TTL, now=at(25))
    assert rec.lease is not None
    assert rec.lease.expires_at == at(55)
    rec = store.heartbeat("t", owner="c1", token=2, ttl=TTL, now=at(50))
    assert rec.lease is not None
    assert rec.lease.expires_at == at(80)
    assert store.reap(now=at(60)) == []
    after = store.get("t")
    assert after == rec


# ------------------------------------------------------------------ terminal


def _path_complete(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s.create("t", now=T0)
    s.acquire("t", owner="w1", ttl=TTL, now=T0)
    s.complete("t", owner="w1", token=1, reason="all done", now=at(1))
    return "w1", 1, TaskState.COMPLETED, "all done"


def _path_complete_no_reason(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s.create("t", now=T0)
    s.acquire("t", owner="w1", ttl=TTL, now=T0)
    s.complete("t", owner="w1", token=1, now=at(1))
    return "w1", 1, TaskState.COMPLETED, ""


def _path_fail(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s.create("t", now=T0)
    s.acquire("t", owner="w1", ttl=TTL, now=T0)
    s.fail("t", owner="w1", token=1, reason="upstream said no", now=at(1))
    return "w1", 1, TaskState.FAILED, "upstream said no"


def _path_compensated(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s_comp_one_applied(s)
    s.compensation_applied("t", owner="c1", token=2, index=1, now=at(4))
    return "c1", 2, TaskState.COMPENSATED, ""


def _path_compensation_failed(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s_comp_leased(s)
    s.compensation_failed("t", owner="c1", token=2, index=1, reason="stock api gone", now=at(3))
    return "c1", 2, TaskState.QUARANTINED, "stock api gone"


def _path_quarantine(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s_running(s)
    s.quarantine("t", reason="poison message", by="ops", now=at(1))
    return "w1", 1, TaskState.QUARANTINED, "poison message"


def _path_reap_deadline(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s_running_capped(s)
    s.reap(now=at(20))
    return "w1", 1, TaskState.FAILED, "deadline exceeded"


def _path_reap_exhausted(s: SagaStore) -> tuple[str, int, TaskState, str]:
    s_running_one_attempt(s)
    s.reap(now=at(30))
    return "w1", 1, TaskState.QUARANTINED, "attempts"


TERMINAL_PATHS = [
    pytest.param(_path_complete, id="complete"),
    pytest.param(_path_complete_no_reason, id="complete-no-reason"),
    pytest.param(_path_fail, id="fail-no-compensations"),
    pytest.param(_path_compensated, id="last-compensation-applied"),
    pytest.param(_path_compensation_failed, id="compensation-failed"),
    pytest.param(_path_quarantine, id="quarantine"),
    pytest.param(_path_reap_deadline, id="reap-deadline"),
    pytest.param(_path_reap_exhausted, id="reap-attempts-exhausted"),
]


@pytest.mark.parametrize("path", TERMINAL_PATHS)
def test_terminal_markers_reject_every_later_mutation(
    store: SagaStore, path: Callable[[SagaStore], tuple[str, int, TaskState, str]]
) -> None:
    """Each terminal path writes state and reason; any later mutation: TerminalTaskError."""
    owner, token, state, reason = path(store)
    rec = store.get("t")
    assert rec is not None
    assert rec.state is state
    assert rec.is_terminal
    assert rec.terminal_reason, "a terminal task records why it ended"
    assert reason in rec.terminal_reason
    assert rec.lease is None
    last = store.history("t")[-1]
    assert last.to_state is state

    later = at(100)
    calls: list[Callable[[], object]] = [
        lambda: store.acquire("t", owner="w9", ttl=TTL, now=later),
        lambda: store.acquire("t", owner=owner, ttl=TTL, now=later),
        lambda: store.heartbeat("t", owner=owner, token=token, ttl=TTL, now=later),
        lambda: store.heartbeat("t", owner=owner, token=token, ttl=TTL, now=at(2)),
        lambda: store.release("t", owner=owner, token=token, now=later),
        lambda: store.complete("t", owner=owner, token=token, now=later),
        lambda: store.fail("t", owner=owner, token=token, reason="again", now=later),
        lambda: store.register_compensation(
            "t", owner=owner, token=token, compensation=COMP_C, now=later
        ),
        lambda: store.compensation_applied("t", owner=owner, token=token, index=0, now=later),
        lambda: store.compensation_failed(
            "t", owner=owner, token=token, index=0, reason="x", now=later
        ),
        lambda: store.quarantine("t", reason="again", by="ops", now=later),
        lambda: store.complete("t", owner="w9", token=token + 1, now=later),
    ]
    for call in calls:
        err = expect_error(store, TerminalTaskError, call)
        assert err.task_id == "t"
        assert err.state is state
    # Nor does time, the reaper or claim_next touch it.
    before = snapshot(store)
    assert store.reap(now=at(10_000)) == []
    assert store.claim_next(owner="w9", ttl=TTL, now=at(10_000)) is None
    assert store.list_stale(now=at(10_000)) == []
    assert snapshot(store) == before

    # annotate still works and changes only the notes.
    history_before = store.history("t")
    noted = store.annotate("t", text="checked by on-call", by="ops", now=at(200))
    assert without_notes(noted) == without_notes(rec)
    assert noted.updated_at == rec.updated_at
    assert noted.notes[:-1] == rec.notes
    assert (noted.notes[-1].text, noted.notes[-1].author, noted.notes[-1].at) == (
        "checked by on-call",
        "ops",
        at(200),
    )
    assert store.get("t") == noted
    history_after = store.history("t")
    assert history_after[:-1] == history_before
    assert history_after[-1].event == "annotate"
    assert history_after[-1].from_state is state
    assert history_after[-1].to_state is state


def test_annotate_changes_only_notes_in_every_state(store: SagaStore) -> None:
    """Annotate appends a note (not even updated_at moves) on a live task too; notes only grow."""
    s_running(store)
    before = store.get("t")
    once = store.annotate("t", text="first", by="ops", now=at(5))
    twice = store.annotate("t", text="first", by="ops", now=at(6))
    assert without_notes(twice) == without_notes(before)
    assert [n.text for n in twice.notes] == ["first", "first"]
    assert twice.notes[:1] == once.notes
    expect_error(store, InvalidInputError, lambda: store.annotate("t", text="", by="ops", now=T0))
    expect_error(store, InvalidInputError, lambda: store.annotate("t", text="x", by="", now=T0))


# ------------------------------------------------------------------ compensations


def test_failure_with_compensations_ends_compensated_or_quarantined(store: SagaStore) -> None:
    """Fail owing compensations → COMPENSATING (unleased, 0 attempts) → COMPENSATED/QUARANTINED."""

    def start(task_id: str) -> TaskSaga:
        store.create(task_id, compensations=[COMP_A], deadline=at(500), now=T0)
        store.acquire(task_id, owner="w1", ttl=TTL, now=T0)
        store.register_compensation(task_id, owner="w1", token=1, compensation=COMP_B, now=at(1))
        store.register_compensation(task_id, owner="w1", token=1, compensation=COMP_C, now=at(1))
        rec = store.fail(task_id, owner="w1", token=1, reason="boom", now=at(2))
        assert rec.state is TaskState.COMPENSATING
        assert rec.lease is None
        assert rec.attempts == 0
        assert rec.token == 1
        assert rec.terminal_reason is None
        assert rec.pending_compensations == (0, 1, 2)
        assert [c.kind for c in rec.compensations] == ["refund", "release-stock", "notify"]
        last = store.history(task_id)[-1]
        assert (last.event, last.from_state, last.to_state, last.reason) == (
            "fail",
            TaskState.RUNNING,
            TaskState.COMPENSATING,
            "boom",
        )
        # No forward-phase exit exists from COMPENSATING: the old holder lost its
        # lease (LeaseConflictError), a new holder is refused by the lifecycle.
        for call in (
            lambda: store.complete(task_id, owner="w1", token=1, now=at(3)),
            lambda: store.fail(task_id, owner="w1", token=1, reason="again", now=at(3)),
            lambda: store.register_compensation(
                task_id, owner="w1", token=1, compensation=COMP_A, now=at(3)
            ),
        ):
            expect_error(store, LeaseConflictError, call)
        leased = store.acquire(task_id, owner="c1", ttl=TTL, now=at(4))
        assert leased.state is TaskState.COMPENSATING
        assert leased.token == 2
        assert leased.attempts == 1
        for call in (
            lambda: store.complete(task_id, owner="c1", token=2, now=at(5)),
            lambda: store.fail(task_id, owner="c1", token=2, reason="again", now=at(5)),
            lambda: store.register_compensation(
                task_id, owner="c1", token=2, compensation=COMP_A, now=at(5)
            ),
        ):
            expect_error(store, InvalidTransitionError, call)
        return leased

    # All applied → COMPENSATED.
    start("ok")
    for i in (2, 0):
        rec = store.compensation_applied("ok", owner="c1", token=2, index=i, now=at(6))
        assert rec.state is TaskState.COMPENSATING
    rec = store.compensation_applied("ok", owner="c1", token=2, index=1, now=at(7))
    assert rec.state is TaskState.COMPENSATED
    assert rec.lease is None
    assert all(c.status is CompensationStatus.APPLIED for c in rec.compensations)
    assert rec.terminal_reason

    # A permanent failure → QUARANTINED, listing the one still pending.
    start("bad")
    store.compensation_applied("bad", owner="c1", token=2, index=0, now=at(6))
    rec = store.compensation_failed("bad", owner="c1", token=2, index=1, reason="gone", now=at(7))
    assert rec.state is TaskState.QUARANTINED
    assert [c.status for c in rec.compensations] == [
        CompensationStatus.APPLIED,
        CompensationStatus.FAILED,
        CompensationStatus.PENDING,
    ]
    assert rec.pending_compensations == (2,)
    assert rec.terminal_reason is not None
    assert "gone" in rec.terminal_reason

    # Operator quarantine keeps the pending list.
    start("ops")
    rec = store.quarantine("ops", reason="manual", by="ops", now=at(6))
    assert rec.state is TaskState.QUARANTINED
    assert rec.pending_compensations == (0, 1, 2)

    # Compensators that keep vanishing: the reaper quarantines when the phase's attempts run out.
    store.create("lost", compensations=[COMP_A], max_attempts=2, now=T0)
    store.acquire("lost", owner="w1", ttl=TTL, now=T0)
    store.fail("lost", owner="w1", token=1, reason="boom", now=at(1))
    store.acquire("lost", owner="c1", ttl=TTL, now=at(2))
    store.acquire("lost", owner="c2", ttl=TTL, now=at(40))  # c1 vanished
    assert [t.task_id for t in store.reap(now=at(80))] == ["lost"]
    lost = store.get("lost")
    assert lost is not None
    assert lost.state is TaskState.QUARANTINED
    assert lost.pending_compensations == (0,)
    assert lost.expirations == 2

    # Past the deadline the reaper fails the task: with compensations owed that is COMPENSATING.
    store.create("late", compensations=[COMP_A], deadline=at(20), now=T0)
    store.acquire("late", owner="w1", ttl=TTL, now=T0)
    changed = store.reap(now=at(20))
    assert [t.task_id for t in changed] == ["late"]
    late = store.get("late")
    assert late is not None
    assert late.state is TaskState.COMPENSATING
    assert late.lease is None
    assert late.attempts == 0
    assert late.pending_compensations == (0,)
    assert store.history("late")[-1].reason == "deadline exceeded"

    # Nothing in this saga ever ended FAILED or COMPLETED.
    counts = store.counts()
    assert counts[TaskState.FAILED] == 0
    assert counts[TaskState.COMPLETED] == 0


# ------------------------------------------------------------------ guards


@dataclass(frozen=True)
class GuardCase:
    """A task shape, a call that violates one guard, and the error it must raise."""

    setup: Setup
    call: Call
    error: type[SagaLeaseError]


def _hb(owner: str, token: int, now: datetime, ttl: timedelta = TTL) -> Call:
    return lambda s: s.heartbeat("t", owner=owner, token=token, ttl=ttl, now=now)


def _rel(owner: str, token: int, now: datetime) -> Call:
    return lambda s: s.release("t", owner=owner, token=token, now=now)


def _reg(owner: str, token: int, now: datetime) -> Call:
    return lambda s: s.register_compensation(
        "t", owner=owner, token=token, compensation=COMP_C, now=now
    )


def _done(owner: str, token: int, now: datetime) -> Call:
    return lambda s: s.complete("t", owner=owner, token=token, now=now)


def _fail(owner: str, token: int, now: datetime) -> Call:
    return lambda s: s.fail("t", owner=owner, token=token, reason="r", now=now)


def _applied(owner: str, token: int, now: datetime, index: int = 0) -> Call:
    return lambda s: s.compensation_applied("t", owner=owner, token=token, index=index, now=now)


def _cfailed(owner: str, token: int, now: datetime, index: int = 0) -> Call:
    return lambda s: s.compensation_failed(
        "t", owner=owner, token=token, index=index, reason="r", now=now
    )


def _acq(owner: str, now: datetime) -> Call:
    return lambda s: s.acquire("t", owner=owner, ttl=TTL, now=now)


def _quarantine(now: datetime) -> Call:
    return lambda s: s.quarantine("t", reason="r", by="ops", now=now)


LCE, ITE, TTE, AEE = (
    LeaseConflictError,
    InvalidTransitionError,
    TerminalTaskError,
    AttemptsExhaustedError,
)

_HOLDER_CALLS: dict[str, Callable[[str, int, datetime], Call]] = {
    "release": _rel,
    "register_compensation": _reg,
    "complete": _done,
    "fail": _fail,
}

GUARD_CASES: dict[str, GuardCase] = {
    # acquire
    "acquire/pending/available": GuardCase(s_pending_later, _acq("w1", at(10) - US), ITE),
    "acquire/pending/before_deadline": GuardCase(s_pending_deadline, _acq("w1", at(10)), ITE),
    "acquire/pending/attempts_left": GuardCase(s_pending_exhausted, _acq("w1", at(2)), AEE),
    "acquire/running/no_live_lease-other": GuardCase(s_running, _acq("w2", at(5)), LCE),
    "acquire/running/no_live_lease-self": GuardCase(s_running, _acq("w1", at(5)), LCE),
    "acquire/running/no_live_lease-last-us": GuardCase(s_running, _acq("w2", at(30) - US), LCE),
    "acquire/running/before_deadline": GuardCase(s_running_capped, _acq("w2", at(20)), ITE),
    "acquire/running/attempts_left": GuardCase(s_running_one_attempt, _acq("w2", at(30)), AEE),
    "acquire/compensating/no_live_lease": GuardCase(s_comp_leased, _acq("c2", at(5)), LCE),
    "acquire/compensating/available": GuardCase(s_comp_delayed, _acq("c2", at(13) - US), ITE),
    "acquire/compensating/attempts_left": GuardCase(s_comp_exhausted, _acq("c2", at(4)), AEE),
    "acquire/terminal": GuardCase(s_completed, _acq("w2", at(5)), TTE),
    # heartbeat
    "heartbeat/running/holder-owner": GuardCase(s_running, _hb("w2", 1, at(5)), LCE),
    "heartbeat/running/holder-token": GuardCase(s_running, _hb("w1", 2, at(5)), LCE),
    "heartbeat/running/holder-expired": GuardCase(s_running, _hb("w1", 1, at(30)), LCE),
    "heartbeat/running/extends": GuardCase(
        s_running, _hb("w1", 1, at(5), timedelta(seconds=25)), LCE
    ),
    "heartbeat/running/extends-shorter": GuardCase(
        s_running, _hb("w1", 1, at(10), timedelta(seconds=5)), LCE
    ),
    "heartbeat/running/extends-capped": GuardCase(
        s_running_capped, _hb("w1", 1, at(5), timedelta(hours=1)), LCE
    ),
    "heartbeat/compensating/holder-no-lease": GuardCase(s_comp, _hb("w1", 1, at(2)), LCE),
    "heartbeat/compensating/holder-token": GuardCase(s_comp_leased, _hb("c1", 1, at(5)), LCE),
    "heartbeat/compensating/holder-owner": GuardCase(s_comp_leased, _hb("w1", 2, at(5)), LCE),
    "heartbeat/compensating/holder-expired": GuardCase(s_comp_leased, _hb("c1", 2, at(32)), LCE),
    "heartbeat/compensating/extends": GuardCase(
        s_comp_leased, _hb("c1", 2, at(5), timedelta(seconds=27)), LCE
    ),
    "heartbeat/pending/no_lease": GuardCase(s_pending, _hb("w1", 0, at(1)), LCE),
    "heartbeat/terminal": GuardCase(s_completed, _hb("w1", 1, at(5)), TTE),
    # release
    "release/compensating/holder-no-lease": GuardCase(s_comp, _rel("w1", 1, at(2)), LCE),
    "release/compensating/holder-token": GuardCase(s_comp_leased, _rel("c1", 3, at(5)), LCE),
    "release/compensating/holder-expired": GuardCase(s_comp_leased, _rel("c1", 2, at(40)), LCE),
    "release/pending/no_lease": GuardCase(s_pending, _rel("w1", 0, at(1)), LCE),
    "release/terminal": GuardCase(s_completed, _rel("w1", 1, at(5)), TTE),
    # register_compensation / complete / fail in states without the event
    "register_compensation/compensating/state": GuardCase(s_comp_leased, _reg("c1", 2, at(5)), ITE),
    "register_compensation/pending/no_lease": GuardCase(s_pending, _reg("w1", 0, at(1)), LCE),
    "register_compensation/terminal": GuardCase(s_completed, _reg("w1", 1, at(5)), TTE),
    "complete/compensating/state": GuardCase(s_comp_leased, _done("c1", 2, at(5)), ITE),
    "complete/pending/no_lease": GuardCase(s_pending, _done("w1", 0, at(1)), LCE),
    "complete/terminal": GuardCase(s_completed, _done("w1", 1, at(5)), TTE),
    "fail/compensating/state": GuardCase(s_comp_leased, _fail("c1", 2, at(5)), ITE),
    "fail/pending/no_lease": GuardCase(s_pending, _fail("w1", 0, at(1)), LCE),
    "fail/terminal": GuardCase(s_completed, _fail("w1", 1, at(5)), TTE),
    # compensation_applied / compensation_failed
    "compensation_applied/holder-no-lease": GuardCase(s_comp, _applied("w1", 1, at(2)), LCE),
    "compensation_applied/holder-owner": GuardCase(s_comp_leased, _applied("w1", 2, at(5)), LCE),
    "compensation_applied/holder-token": GuardCase(s_comp_leased, _applied("c1", 1, at(5)), LCE),
    "compensation_applied/holder-expired": GuardCase(s_comp_leased, _applied("c1", 2, at(32)), LCE),
    "compensation_applied/index_pending-out-of-range": GuardCase(
        s_comp_leased, _applied("c1", 2, at(5), index=2), ITE
    ),
    "compensation_applied/index_pending-negative": GuardCase(
        s_comp_leased, _applied("c1", 2, at(5), index=-1), ITE
    ),
    "compensation_applied/index_pending-already-applied": GuardCase(
        s_comp_one_applied, _applied("c1", 2, at(5), index=0), ITE
    ),
    "compensation_applied/running/state": GuardCase(s_running, _applied("w1", 1, at(5)), ITE),
    "compensation_applied/pending/no_lease": GuardCase(s_pending, _applied("w1", 0, at(1)), LCE),
    "compensation_applied/terminal": GuardCase(s_completed, _applied("w1", 1, at(5)), TTE),
    "compensation_failed/holder-no-lease": GuardCase(s_comp, _cfailed("w1", 1, at(2)), LCE),
    "compensation_failed/holder-owner": GuardCase(s_comp_leased, _cfailed("x", 2, at(5)), LCE),
    "compensation_failed/holder-token": GuardCase(s_comp_leased, _cfailed("c1", 3, at(5)), LCE),
    "compensation_failed/holder-expired": GuardCase(s_comp_leased, _cfailed("c1", 2, at(33)), LCE),
    "compensation_failed/index_pending-out-of-range": GuardCase(
        s_comp_leased, _cfailed("c1", 2, at(5), index=7), ITE
    ),
    "compensation_failed/index_pending-negative": GuardCase(
        s_comp_leased, _cfailed("c1", 2, at(5), index=-2), ITE
    ),
    "compensation_failed/index_pending-already-applied": GuardCase(
        s_comp_one_applied, _cfailed("c1", 2, at(5), index=0), ITE
    ),
    "compensation_failed/running/state": GuardCase(s_running, _cfailed("w1", 1, at(5)), ITE),
    "compensation_failed/terminal": GuardCase(s_completed, _cfailed("w1", 1, at(5)), TTE),
    # quarantine
    "quarantine/terminal": GuardCase(s_completed, _quarantine(at(5)), TTE),
}
# The holder guard of every RUNNING holder call: wrong owner, wrong token, expired, no lease.
for _event, _make in _HOLDER_CALLS.items():
    GUARD_CASES[f"{_event}/running/holder-owner"] = GuardCase(s_running, _make("w2", 1, at(5)), LCE)
    GUARD_CASES[f"{_event}/running/holder-token"] = GuardCase(s_running, _make("w1", 2, at(5)), LCE)
    GUARD_CASES[f"{_event}/running/holder-token-zero"] = GuardCase(
        s_running, _make("w1", 0, at(5)), LCE
    )
    GUARD_CASES[f"{_event}/running/holder-expired"] = GuardCase(
        s_running, _make("w1", 1, at(30)), LCE
    )
    GUARD_CASES[f"{_event}/running/holder-expired-capped"] = GuardCase(
        s_running_capped, _make("w1", 1, at(20)), LCE
    )


@pytest.mark.parametrize("case", list(GUARD_CASES.values()), ids=list(GUARD_CASES))
def test_guard_failures_change_nothing(store: SagaStore, case: GuardCase) -> None:
    """Every failing guard raises its exact error; the record and its history stay as they were."""
    case.setup(store)
    before, history = store.get("t"), store.history("t")
    assert before is not None
    with pytest.raises(SagaLeaseError) as info:
        case.call(store)
    assert type(info.value) is case.error, f"expected {case.error.__name__}, got {info.value!r}"
    assert info.value.task_id == "t"
    assert info.value.state is before.state
    # The message names the task, its state and the reason.
    assert "'t'" in str(info.value)
    assert before.state.value in str(info.value)
    assert info.value.reason
    assert store.get("t") == before
    assert store.history("t") == history


def test_reap_with_nothing_to_do_changes_nothing(store: SagaStore) -> None:
    """Reap over live, pending and unexpired tasks returns [] and changes nothing."""
    s_running(store)
    store.create("p", deadline=at(100), now=T0)
    s_before = snapshot(store)
    assert store.reap(now=at(29)) == []
    assert snapshot(store) == s_before


# ------------------------------------------------------------------ create


def test_duplicate_create_rejected_original_kept(store: SagaStore) -> None:
    """Create with an id in use: DuplicateTaskError; the original record and history are kept."""
    store.create("t", saga_id="s1", metadata={"v": 1}, compensations=[COMP_A], now=T0)
    err = expect_error(
        store,
        DuplicateTaskError,
        lambda: store.create("t", saga_id="s2", metadata={"v": 2}, now=at(1)),
    )
    assert err.task_id == "t"
    rec = store.get("t")
    assert rec is not None
    assert rec.metadata == {"v": 1}
    assert rec.saga_id == "s1"
    # Also once running and once terminal; an identical repeat is not merged either.
    store.acquire("t", owner="w1", ttl=TTL, now=at(2))
    expect_error(
        store,
        DuplicateTaskError,
        lambda: store.create("t", saga_id="s1", metadata={"v": 1}, compensations=[COMP_A], now=T0),
    )
    store.complete("t", owner="w1", token=1, now=at(3))
    expect_error(store, DuplicateTaskError, lambda: store.create("t", now=at(4)))
    assert store.counts()[TaskState.COMPLETED] == 1


def test_create_many_duplicate_names_the_task_and_its_state(store: SagaStore) -> None:
    """create_many with an id in use: DuplicateTaskError naming it and the state it is in
    (as create's does), or, for an id given twice in the batch, naming that id; the other
    items are not stored and the stored task keeps its record and history
    (contract/create_many_is_all_or_nothing checks that nothing changed, not the error).
    """
    s_running(store)  # "t": RUNNING, w1 token 1
    batch = [NewTask("new1"), NewTask("t", queue="elsewhere", priority=5), NewTask("new2")]
    err = expect_error(store, DuplicateTaskError, lambda: store.create_many(batch, now=at(1)))
    assert isinstance(err, DuplicateTaskError)
    assert (err.task_id, err.state) == ("t", TaskState.RUNNING)
    twice = [NewTask("new1"), NewTask("new1", priority=1)]
    err = expect_error(store, DuplicateTaskError, lambda: store.create_many(twice, now=at(1)))
    assert err.task_id == "new1"
    assert absent(store, "new1")
    assert absent(store, "new2")
    rec = store.get("t")
    assert rec is not None
    assert (rec.queue, rec.priority) == ("default", 0)


def test_create_records_inputs(store: SagaStore) -> None:
    """A new task is PENDING with the given fields, no lease, token 0, one create history entry."""
    rec = store.create(
        "t",
        saga_id="s",
        metadata={"a": [1, 2, {"b": None}], "ü": "✓"},
        compensations=[COMP_A],
        max_attempts=3,
        deadline=at(100),
        available_at=at(5),
        now=T0,
    )
    assert rec == store.get("t")
    assert rec.state is TaskState.PENDING
    assert rec.lease is None
    assert (rec.token, rec.attempts, rec.expirations, rec.max_attempts) == (0, 0, 0, 3)
    assert rec.metadata == {"a": [1, 2, {"b": None}], "ü": "✓"}
    assert rec.compensations == (COMP_A,)
    assert (rec.created_at, rec.updated_at, rec.available_at, rec.deadline) == (
        T0,
        T0,
        at(5),
        at(100),
    )
    assert rec.terminal_reason is None
    assert rec.notes == ()
    default = store.create("d", now=T0)
    assert default.max_attempts == 5
    assert default.available_at == T0
    assert default.deadline is None
    assert default.saga_id is None
    assert default.metadata == {}
    assert default.compensations == ()


def test_aware_non_utc_datetimes_are_normalised(store: SagaStore) -> None:
    """An aware datetime in another zone means the same instant and comes back in UTC."""
    plus5 = timezone(timedelta(hours=5))
    rec = store.create("t", deadline=at(100).astimezone(plus5), now=T0.astimezone(plus5))
    assert rec.created_at == T0
    assert rec.created_at.utcoffset() == timedelta(0)
    assert rec.deadline == at(100)
    got = store.acquire("t", owner="w", ttl=TTL, now=at(1).astimezone(plus5))
    assert got.lease is not None
    assert got.lease.acquired_at == at(1)
    assert got.lease.expires_at.utcoffset() == timedelta(0)


NAIVE = datetime(2026, 1, 1, 0, 0, 10)  # no tzinfo


NAIVE_CALLS: dict[str, Callable[[SagaStore], object]] = {
    # create, acquire, claim_next, the forward holder calls, quarantine and annotate with
    # a naive datetime: contract/naive_datetimes_are_refused. Here the compensation-phase
    # holder calls, and reap/list_stale with expired work they could otherwise do.
    "compensation_applied": lambda s: s.compensation_applied(
        "c", owner="c1", token=2, index=0, now=NAIVE
    ),
    "compensation_failed": lambda s: s.compensation_failed(
        "c", owner="c1", token=2, index=0, reason="r", now=NAIVE
    ),
    "reap": lambda s: s.reap(now=NAIVE),
    "list_stale": lambda s: s.list_stale(now=NAIVE),
}


@pytest.mark.parametrize("call", list(NAIVE_CALLS.values()), ids=list(NAIVE_CALLS))
def test_naive_datetimes_rejected(store: SagaStore, call: Callable[[SagaStore], object]) -> None:
    """A naive now is InvalidInputError (a ValueError) and changes nothing, also where the
    call would otherwise have work to do.
    """
    store.create("p", now=T0)
    s_running(store)  # "t", w1 token 1 until at(30)
    store.create("c", compensations=[COMP_A], now=T0)
    store.acquire("c", owner="w1", ttl=TTL, now=T0)
    store.fail("c", owner="w1", token=1, reason="boom", now=at(1))
    store.acquire("c", owner="c1", ttl=TTL, now=at(2))
    # Give reap/list_stale work to do, so that refusing is the only reason nothing moves.
    store.create("e", now=T0)
    store.acquire("e", owner="w1", ttl=timedelta(seconds=1), now=T0)
    err = expect_error(store, InvalidInputError, lambda: call(store))
    assert isinstance(err, ValueError)
    assert absent(store, "new")


# ------------------------------------------------------------------ bad input

BAD_CREATES: dict[str, tuple[str, dict[str, Any]]] = {
    # An empty id, 201 characters, a NaN or a non-string metadata key, max_attempts=0
    # and deadline == now: contract/bad_input_is_refused; bad queue names, priorities and
    # requeue links: contract/queues_and_priorities_refuse_bad_input.
    "blank-id": ("   ", {}),
    "id-10000-chars": ("x" * 10_000, {}),
    "id-with-nul": ("a\x00b", {}),
    "id-with-newline": ("a\nb", {}),
    "id-with-escape": ("a\x1b[31mb", {}),
    "id-with-del": ("a\x7fb", {}),
    "id-lone-surrogate": ("a\ud800b", {}),
    "id-not-a-string": (123, {}),  # type: ignore[dict-item]
    "metadata-set": ("m", {"metadata": {1, 2}}),
    "metadata-list": ("m", {"metadata": [1, 2]}),
    "metadata-nested-set": ("m", {"metadata": {"a": {1, 2}}}),
    "metadata-inf": ("m", {"metadata": {"a": [math.inf]}}),
    "metadata-bytes": ("m", {"metadata": {"a": b"x"}}),
    "metadata-object": ("m", {"metadata": {"a": object()}}),
    "metadata-none-key": ("m", {"metadata": {None: "a"}}),
    "metadata-tuple-key": ("m", {"metadata": {(1, 2): "a"}}),
    "metadata-mixed-keys": ("m", {"metadata": {"a": 1, 2: "b"}}),
    "metadata-over-64KiB": ("m", {"metadata": {"blob": "x" * (64 * 1024 + 1)}}),
    "metadata-nul": ("m", {"metadata": {"a": "x\x00y"}}),
    "saga-id-empty": ("m", {"saga_id": ""}),
    "saga-id-too-long": ("m", {"saga_id": "s" * 201}),
    "deadline-before-now": ("m", {"deadline": T0 - timedelta(seconds=1)}),
    "deadline-not-datetime": ("m", {"deadline": "2026-02-01T00:00:00Z"}),
    "available-at-not-datetime": ("m", {"available_at": 0}),
    "max-attempts-negative": ("m", {"max_attempts": -1}),
    "max-attempts-true": ("m", {"max_attempts": True}),
    "max-attempts-false": ("m", {"max_attempts": False}),
    "max-attempts-float": ("m", {"max_attempts": 2.0}),
    "max-attempts-str": ("m", {"max_attempts": "3"}),
    "compensations-not-compensation": ("m", {"compensations": [("refund", "x")]}),
    "compensations-a-string": ("m", {"compensations": "refund"}),
    "compensation-empty-kind": ("m", {"compensations": [Compensation("", "x")]}),
    "compensation-not-pending": (
        "m",
        {"compensations": [Compensation("k", "x", status=CompensationStatus.APPLIED)]},
    ),
    "now-not-datetime": ("m", {"now": "2026-01-01T00:00:00+00:00"}),
    "now-before-1970": ("m", {"now": datetime(1969, 12, 31, tzinfo=UTC)}),
}


@pytest.mark.parametrize(("task_id", "kwargs"), list(BAD_CREATES.values()), ids=list(BAD_CREATES))
def test_bad_create_input_rejected_nothing_stored(
    store: SagaStore, task_id: str, kwargs: dict[str, Any]
) -> None:
    """Malformed create input: InvalidInputError (ValueError, SagaLeaseError); nothing stored."""
    store.create("keep", now=T0)
    call_kwargs: dict[str, Any] = {"now": T0, **kwargs}
    err = expect_error(store, InvalidInputError, lambda: store.create(task_id, **call_kwargs))
    assert isinstance(err, ValueError)
    assert isinstance(err, SagaLeaseError)
    if isinstance(task_id, str):
        assert absent(store, task_id)
    counts = store.counts()
    assert counts[TaskState.PENDING] == 1
    assert sum(counts.values()) == 1


def test_id_length_boundary(store: SagaStore) -> None:
    """A 200-character id is accepted; 201 is not."""
    rec = store.create("y" * 200, now=T0)
    assert rec.task_id == "y" * 200
    assert store.get("y" * 200) == rec
    expect_error(store, InvalidInputError, lambda: store.create("y" * 201, now=T0))


def test_metadata_is_a_copy_and_input_is_not_aliased(store: SagaStore) -> None:
    """Mutating the dict passed to create, or the one a record returns, never changes the store."""
    given: dict[str, Any] = {"a": {"b": [1]}}
    store.create("t", metadata=given, now=T0)
    given["a"]["b"].append(2)
    given["new"] = True
    rec = store.get("t")
    assert rec is not None
    assert rec.metadata == {"a": {"b": [1]}}
    got = rec.metadata
    got["a"]["b"].append(3)
    got.clear()
    assert rec.metadata == {"a": {"b": [1]}}
    again = store.get("t")
    assert again is not None
    assert again.metadata == {"a": {"b": [1]}}


def test_records_are_frozen(store: SagaStore) -> None:
    """TaskSaga, Lease, Compensation and HistoryEntry are frozen; history lists are copies."""
    store.create("t", compensations=[COMP_A], now=T0)
    rec = store.acquire("t", owner="w1", ttl=TTL, now=T0)
    assert rec.lease is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.state = TaskState.COMPLETED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.token = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.lease.owner = "mallory"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.compensations[0].status = CompensationStatus.APPLIED  # type: ignore[misc]
    assert isinstance(rec.compensations, tuple)
    assert isinstance(rec.notes, tuple)
    hist = store.history("t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hist[0].event = "forged"  # type: ignore[misc]
    hist.clear()
    assert len(store.history("t")) == 2
    assert store.get("t") == rec


BAD_CALLS: dict[str, Callable[[SagaStore], object]] = {
    # A zero or negative ttl on acquire, a zero heartbeat ttl, a negative delay, an empty
    # owner, complete/fail/quarantine reason or annotate text, and limit=0 on
    # list_tasks (on reap with nothing to reap): contract/bad_input_is_refused.
    "acquire-ttl-int": lambda s: s.acquire("t", owner="w2", ttl=30, now=at(40)),  # type: ignore[arg-type]
    "acquire-ttl-float": lambda s: s.acquire("t", owner="w2", ttl=30.0, now=at(40)),  # type: ignore[arg-type]
    "acquire-ttl-past-year-9999": lambda s: s.acquire(
        "t", owner="w2", ttl=timedelta(days=999_999_999), now=at(40)
    ),
    "acquire-owner-control": lambda s: s.acquire("t", owner="w\n2", ttl=TTL, now=at(40)),
    "acquire-owner-too-long": lambda s: s.acquire("t", owner="w" * 201, ttl=TTL, now=at(40)),
    "claim_next-ttl-zero": lambda s: s.claim_next(owner="w2", ttl=timedelta(0), now=at(40)),
    "claim_next-ttl-int": lambda s: s.claim_next(owner="w2", ttl=30, now=at(40)),  # type: ignore[arg-type]
    "claim_next-owner-empty": lambda s: s.claim_next(owner="", ttl=TTL, now=at(40)),
    "heartbeat-ttl-negative": lambda s: s.heartbeat("t", owner="w1", token=1, ttl=-TTL, now=at(5)),
    "heartbeat-ttl-int": lambda s: s.heartbeat("t", owner="w1", token=1, ttl=60, now=at(5)),  # type: ignore[arg-type]
    "heartbeat-token-bool": lambda s: s.heartbeat(
        "t",
        owner="w1",
        token=True,
        ttl=TTL,
        now=at(5),
    ),
    "heartbeat-token-str": lambda s: s.heartbeat("t", owner="w1", token="1", ttl=TTL, now=at(5)),  # type: ignore[arg-type]
    "release-delay-int": lambda s: s.release("t", owner="w1", token=1, delay=5, now=at(5)),  # type: ignore[arg-type]
    "complete-token-float": lambda s: s.complete("t", owner="w1", token=1.0, now=at(5)),  # type: ignore[arg-type]
    "fail-reason-blank": lambda s: s.fail("t", owner="w1", token=1, reason="  ", now=at(5)),
    "register-not-a-compensation": lambda s: s.register_compensation(
        "t",
        owner="w1",
        token=1,
        compensation=("refund", "x"),  # type: ignore[arg-type]
        now=at(5),
    ),
    "register-applied-compensation": lambda s: s.register_compensation(
        "t",
        owner="w1",
        token=1,
        compensation=Compensation("k", "x", status=CompensationStatus.APPLIED),
        now=at(5),
    ),
    "compensation_applied-index-bool": lambda s: s.compensation_applied(
        "c", owner="c1", token=2, index=False, now=at(5)
    ),
    "compensation_applied-index-str": lambda s: s.compensation_applied(
        "c",
        owner="c1",
        token=2,
        index="0",  # type: ignore[arg-type]
        now=at(5),
    ),
    "compensation_failed-reason-empty": lambda s: s.compensation_failed(
        "c", owner="c1", token=2, index=0, reason="", now=at(5)
    ),
    "quarantine-by-empty": lambda s: s.quarantine("t", reason="r", by="", now=at(5)),
    "reap-limit-zero": lambda s: s.reap(now=at(40), limit=0),  # with expired work to do
    "reap-limit-negative": lambda s: s.reap(now=at(40), limit=-1),
    "list_tasks-bad-state": lambda s: s.list_tasks(state="running!"),  # type: ignore[arg-type]
    "acquire-empty-id": lambda s: s.acquire("", owner="w2", ttl=TTL, now=at(40)),
}


@pytest.mark.parametrize("call", list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_call_input_rejected_nothing_changed(
    store: SagaStore, call: Callable[[SagaStore], object]
) -> None:
    """Malformed ttl, delay, token, index, reason, owner or limit: InvalidInputError."""
    s_running(store)  # "t": w1 token 1 until at(30)
    store.create("c", compensations=[COMP_A], now=T0)
    store.acquire("c", owner="w1", ttl=TTL, now=T0)
    store.fail("c", owner="w1", token=1, reason="boom", now=at(1))
    store.acquire("c", owner="c1", ttl=TTL, now=at(2))
    store.create("p", now=T0)  # something claim_next could take
    err = expect_error(store, InvalidInputError, lambda: call(store))
    assert isinstance(err, ValueError)


HOSTILE_IDS = [
    "'; DROP TABLE tasks; --",
    '" OR "1"="1',
    "Robert'); DELETE FROM history WHERE ('1'='1",
    "x' UNION SELECT * FROM tasks --",
    "%",
    "_",
    "a%b_c",
    "\\",
    "\\'",
    "SELECT",
    "null",
    "NULL",
    "task",
    "Task",
    "TASK ",
    " task",
    "e\u0301",  # e + combining acute
    "\u00e9",  # precomposed é
    "任务-😀-✓",
    "\u202eevil",  # right-to-left override (a format char, not a control char)
    "\uff46\uff55\uff4c\uff4c",  # fullwidth "full"
    "$1 ?1 :name @p",
    "{}[]\"'`",
]


def test_hostile_ids_round_trip_unchanged(store: SagaStore) -> None:
    """Ids with quotes, SQL, wildcards, case and Unicode variants are stored and matched exactly."""
    for i, tid in enumerate(HOSTILE_IDS):
        rec = store.create(tid, saga_id=tid, metadata={tid: tid, "n": i}, now=T0 + i * US)
        assert rec.task_id == tid
    assert [t.task_id for t in store.list_tasks()] == HOSTILE_IDS
    assert store.counts()[TaskState.PENDING] == len(HOSTILE_IDS)
    for i, tid in enumerate(HOSTILE_IDS):
        rec2 = store.get(tid)
        assert rec2 is not None
        assert (rec2.task_id, rec2.saga_id, rec2.metadata) == (tid, tid, {tid: tid, "n": i})
        assert [t.task_id for t in store.list_tasks(saga_id=tid)] == [tid]
        page = store.list_tasks(after=tid, limit=1)
        assert page == ([] if i + 1 == len(HOSTILE_IDS) else [store.get(HOSTILE_IDS[i + 1])])
        got = store.acquire(tid, owner=tid, ttl=TTL, now=at(1))
        assert got.lease is not None
        assert got.lease.owner == tid
        noted = store.annotate(tid, text=tid, by=tid, now=at(2))
        assert noted.notes[-1].text == tid
        assert noted.notes[-1].author == tid
        done = store.complete(tid, owner=tid, token=1, reason=tid, now=at(3))
        assert done.terminal_reason == tid
        assert {e.task_id for e in store.history(tid)} == {tid}
        assert store.history(tid)[1].owner == tid
    assert store.counts()[TaskState.COMPLETED] == len(HOSTILE_IDS)
    assert absent(store, "tasks")


# ------------------------------------------------------------------ release / claim


def test_release_with_delay_sets_available_at(store: SagaStore) -> None:
    """release(delay) returns the task to PENDING, unleased, not acquirable before now + delay."""
    s_running(store)
    rec = store.release("t", owner="w1", token=1, delay=timedelta(seconds=10), now=at(5))
    assert rec.state is TaskState.PENDING
    assert rec.lease is None
    assert rec.available_at == at(15)
    assert rec.token == 1
    assert rec.attempts == 1
    expect_error(
        store,
        InvalidTransitionError,
        lambda: store.acquire("t", owner="w2", ttl=TTL, now=at(15) - US),
    )
    assert store.claim_next(owner="w2", ttl=TTL, now=at(15) - US) is None
    # A repeated release finds the task PENDING: the caller no longer holds a lease.
    expect_error(
        store,
        LeaseConflictError,
        lambda: store.release("t", owner="w1", token=1, now=at(6)),
    )
    got = store.acquire("t", owner="w2", ttl=TTL, now=at(15))
    assert got.token == 2
    assert got.attempts == 2
    # Without a delay it is available at once.
    back = store.release("t", owner="w2", token=2, now=at(16))
    assert back.available_at == at(16)


def test_release_in_compensating_stays_compensating(store: SagaStore) -> None:
    """Releasing a compensation lease keeps COMPENSATING, unleased; a repeat: LeaseConflictError."""
    s_comp_leased(store)
    rec = store.release("t", owner="c1", token=2, now=at(5))
    assert rec.state is TaskState.COMPENSATING
    assert rec.lease is None
    expect_error(
        store, LeaseConflictError, lambda: store.release("t", owner="c1", token=2, now=at(6))
    )


def test_claim_next_picks_oldest_leaseable(store: SagaStore) -> None:
    """claim_next: oldest leaseable first, expired leases reclaimed, others skipped, else None."""
    store.create("live", now=T0)
    store.acquire("live", owner="w1", ttl=timedelta(hours=1), now=T0)
    store.create("later", available_at=at(1000), now=T0 + 1 * US)
    store.create("spent", max_attempts=1, now=T0 + 2 * US)
    store.acquire("spent", owner="w1", ttl=TTL, now=at(1))
    store.release("spent", owner="w1", token=1, now=at(2))
    store.create("done", now=T0 + 3 * US)
    store.acquire("done", owner="w1", ttl=TTL, now=at(1))
    store.complete("done", owner="w1", token=1, now=at(2))
    store.create("expired", now=T0 + 4 * US)
    store.acquire("expired", owner="ghost", ttl=TTL, now=at(1))
    store.create("overdue", deadline=at(10), now=T0 + 5 * US)
    store.create("fresh", now=T0 + 5 * US)
    store.create("fresher", now=T0 + 6 * US)

    first = store.claim_next(owner="w2", ttl=TTL, now=at(60))
    assert first is not None
    assert first.task_id == "expired"
    assert first.lease is not None
    assert first.lease.owner == "w2"
    assert first.token == 2
    assert first.expirations == 1
    assert first.state is TaskState.RUNNING
    entry = store.history("expired")[-1]
    assert entry.event == "acquire"
    assert entry.owner == "w2"
    assert entry.token == 2
    assert entry.reason is not None
    assert "ghost" in entry.reason
    assert "1" in entry.reason

    second = store.claim_next(owner="w2", ttl=TTL, now=at(60))
    assert second is not None
    assert second.task_id == "fresh"
    assert second.token == 1
    third = store.claim_next(owner="w2", ttl=TTL, now=at(60))
    assert third is not None
    assert third.task_id == "fresher"
    before = snapshot(store)
    assert store.claim_next(owner="w2", ttl=TTL, now=at(60)) is None
    assert snapshot(store) == before


def test_claim_next_on_empty_store_returns_none(store: SagaStore) -> None:
    """claim_next with no tasks at all returns None and stores nothing."""
    assert store.claim_next(owner="w", ttl=TTL, now=T0) is None
    assert sum(store.counts().values()) == 0


def test_claim_next_takes_compensating_work(store: SagaStore) -> None:
    """An unleased COMPENSATING task is leaseable by claim_next and stays COMPENSATING."""
    s_comp(store)
    got = store.claim_next(owner="c9", ttl=TTL, now=at(2))
    assert got is not None
    assert got.task_id == "t"
    assert got.state is TaskState.COMPENSATING
    assert got.token == 2
    assert got.lease is not None
    assert got.lease.owner == "c9"


# ------------------------------------------------------------------ reap / stale


def test_reap_handles_expired_exhausted_and_deadlines(store: SagaStore) -> None:
    """Reap: expired → PENDING, exhausted → QUARANTINED, late → FAILED/COMPENSATING; live kept."""
    store.create("expired", now=T0)
    store.acquire("expired", owner="w1", ttl=TTL, now=T0)
    store.create("exhausted", max_attempts=1, now=T0)
    store.acquire("exhausted", owner="w1", ttl=TTL, now=T0)
    store.create("late", deadline=at(40), now=T0)
    store.acquire("late", owner="w1", ttl=timedelta(seconds=35), now=T0)
    store.heartbeat("late", owner="w1", token=1, ttl=TTL, now=at(30))  # capped at at(40)
    store.create("late-owing", compensations=[COMP_A], deadline=at(40), now=T0)
    store.create("live", now=T0)
    live = store.acquire("live", owner="w1", ttl=timedelta(hours=1), now=T0)
    store.create("idle", now=T0)
    store.create("spent", max_attempts=1, now=T0)
    store.acquire("spent", owner="w1", ttl=TTL, now=T0)
    store.release("spent", owner="w1", token=1, now=at(1))
    idle = store.get("idle")
    store.create("comp-expired", compensations=[COMP_A], now=T0)
    store.acquire("comp-expired", owner="w1", ttl=TTL, now=T0)
    store.fail("comp-expired", owner="w1", token=1, reason="boom", now=at(1))
    store.acquire("comp-expired", owner="c1", ttl=TTL, now=at(2))

    changed = store.reap(now=at(45))
    by_id = {t.task_id: t for t in changed}
    assert set(by_id) == {"expired", "exhausted", "late", "late-owing", "comp-expired", "spent"}
    for tid, rec in by_id.items():
        assert store.get(tid) == rec

    assert by_id["expired"].state is TaskState.PENDING
    assert by_id["expired"].lease is None
    assert by_id["expired"].expirations == 1
    assert by_id["spent"].state is TaskState.QUARANTINED
    assert by_id["spent"].expirations == 0
    assert by_id["exhausted"].state is TaskState.QUARANTINED
    assert by_id["exhausted"].terminal_reason is not None
    assert by_id["late"].state is TaskState.FAILED
    assert by_id["late"].terminal_reason == "deadline exceeded"
    assert by_id["late-owing"].state is TaskState.COMPENSATING
    assert by_id["late-owing"].lease is None
    assert store.history("late-owing")[-1].reason == "deadline exceeded"
    assert by_id["comp-expired"].state is TaskState.COMPENSATING
    assert by_id["comp-expired"].lease is None
    assert by_id["comp-expired"].expirations == 1
    assert store.get("live") == live
    assert store.get("idle") == idle

    for tid in by_id:
        last = store.history(tid)[-1]
        assert last.event == "reap"
        assert last.at == at(45)
    # A second pass at the same instant has nothing left to do.
    assert store.reap(now=at(45)) == []


def test_reap_respects_limit(store: SagaStore) -> None:
    """reap(limit=n) changes at most n tasks; the rest are handled by the next pass."""
    for i in range(5):
        store.create(f"t{i}", now=T0 + i * US)
        store.acquire(f"t{i}", owner="w", ttl=TTL, now=at(1))
    first = store.reap(now=at(31), limit=2)
    assert len(first) == 2
    assert len(store.list_stale(now=at(31))) == 3
    second = store.reap(now=at(31), limit=2)
    assert len(second) == 2
    third = store.reap(now=at(31), limit=2)
    assert len(third) == 1
    assert {t.task_id for t in first + second + third} == {f"t{i}" for i in range(5)}
    assert store.counts()[TaskState.PENDING] == 5


def test_list_stale_lists_expired_non_terminal_leases(store: SagaStore) -> None:
    """list_stale: non-terminal tasks whose lease expired (now >= expires_at), creation order."""
    store.create("b", now=T0)
    store.acquire("b", owner="w", ttl=TTL, now=at(1))
    store.create("a", now=T0 + US)
    store.acquire("a", owner="w", ttl=TTL, now=at(1))
    store.create("live", now=T0 + 2 * US)
    store.acquire("live", owner="w", ttl=timedelta(hours=1), now=at(1))
    store.create("done", now=T0 + 3 * US)
    store.acquire("done", owner="w", ttl=TTL, now=at(1))
    store.complete("done", owner="w", token=1, now=at(2))
    store.create("pending", now=T0 + 4 * US)
    before = snapshot(store)
    assert store.list_stale(now=at(31) - US) == []
    assert [t.task_id for t in store.list_stale(now=at(31))] == ["b", "a"]
    assert snapshot(store) == before


# ------------------------------------------------------------------ listing / counts / history


def test_list_tasks_pages_and_filters(store: SagaStore) -> None:
    """list_tasks pages in creation order with `after` (exclusive), filters by state and saga_id."""
    ids = [f"t{i}" for i in range(7)]
    for i, tid in enumerate(ids):
        store.create(tid, saga_id="even" if i % 2 == 0 else "odd", now=T0 + i * US)
    store.acquire("t2", owner="w", ttl=TTL, now=at(1))
    store.acquire("t3", owner="w", ttl=TTL, now=at(1))

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = store.list_tasks(limit=3, after=after)
        if not page:
            break
        pages.append([t.task_id for t in page])
        after = page[-1].task_id
    assert pages == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]

    assert [t.task_id for t in store.list_tasks(state=TaskState.RUNNING)] == ["t2", "t3"]
    assert [t.task_id for t in store.list_tasks(saga_id="even")] == ["t0", "t2", "t4", "t6"]
    assert [t.task_id for t in store.list_tasks(saga_id="even", state=TaskState.RUNNING)] == ["t2"]
    assert [t.task_id for t in store.list_tasks(saga_id="odd", after="t1", limit=1)] == ["t3"]
    assert store.list_tasks(saga_id="nobody") == []
    assert store.list_tasks(state=TaskState.COMPLETED) == []
    err = expect_error(store, TaskNotFoundError, lambda: store.list_tasks(after="missing"))
    assert err.task_id == "missing"


def test_list_tasks_newest_first_pages_backwards(store: SagaStore) -> None:
    """list_tasks(newest_first=True) is the creation-order listing reversed, for every
    filter (states, queue, saga, combined); `after` is the last id of the previous page
    in that order (exclusive, any task, whether the filter takes it or not); an unknown
    `after` is TaskNotFoundError and a newest_first that is not a bool InvalidInputError,
    both changing nothing.
    """
    layout = [("q1", "even"), ("q2", "odd"), ("q1", "even"), ("q2", "odd")]
    layout += [("q1", "even"), ("q1", "odd"), ("q2", "even")]
    for i, (queue, saga) in enumerate(layout):
        store.create(f"t{i}", queue=queue, saga_id=saga, now=T0 + i * US)
    for tid in ("t1", "t2", "t3"):
        store.acquire(tid, owner="w", ttl=TTL, now=at(1))
    store.fail("t1", owner="w", token=1, reason="boom", now=at(2))
    store.quarantine("t5", reason="poison", by="ops", now=at(2))

    pages: list[list[str]] = []
    after: str | None = None
    while page := store.list_tasks(limit=3, after=after, newest_first=True):
        pages.append([t.task_id for t in page])
        after = page[-1].task_id
    assert pages == [["t6", "t5", "t4"], ["t3", "t2", "t1"], ["t0"]]

    ended = {TaskState.FAILED, TaskState.QUARANTINED}
    filters: list[dict[str, Any]] = [
        {},
        {"state": TaskState.RUNNING},
        {"state": ended},
        {"state": {TaskState.PENDING, TaskState.FAILED}},
        {"queue": "q1"},
        {"queue": "q2", "state": [TaskState.RUNNING, TaskState.FAILED]},
        {"saga_id": "odd"},
        {"saga_id": "even", "queue": "q1", "state": TaskState.PENDING},
    ]
    for kwargs in filters:
        oldest = [t.task_id for t in store.list_tasks(**kwargs)]
        newest = [t.task_id for t in store.list_tasks(newest_first=True, **kwargs)]
        assert newest == oldest[::-1], kwargs
        assert store.list_tasks(newest_first=True, **kwargs) == store.list_tasks(**kwargs)[::-1]
    newest_ended = store.list_tasks(state=ended, limit=1, newest_first=True)
    assert [t.task_id for t in newest_ended] == ["t5"]
    assert [t.task_id for t in store.list_tasks(newest_first=True, after="t4")] == [
        "t3",
        "t2",
        "t1",
        "t0",
    ]
    running_before_t5 = store.list_tasks(state=TaskState.RUNNING, after="t5", newest_first=True)
    assert [t.task_id for t in running_before_t5] == ["t3", "t2"]
    odd_q1 = store.list_tasks(saga_id="odd", after="t3", limit=1, newest_first=True)
    assert [t.task_id for t in odd_q1] == ["t1"]
    assert store.list_tasks(newest_first=True, after="t0") == []
    assert store.list_tasks(queue="nobody", newest_first=True) == []
    err = expect_error(
        store, TaskNotFoundError, lambda: store.list_tasks(after="missing", newest_first=True)
    )
    assert err.task_id == "missing"
    for bad in ("yes", 1, None):
        expect_error(
            store,
            InvalidInputError,
            lambda bad=bad: store.list_tasks(newest_first=bad),  # type: ignore[misc]
        )


def test_history_records_every_change(store: SagaStore) -> None:
    """History: seq 1.., event, from/to state, owner, token, time; one entry per change."""
    store.create("t", compensations=[COMP_A], now=T0)
    store.acquire("t", owner="w1", ttl=TTL, now=at(1))
    store.heartbeat("t", owner="w1", token=1, ttl=TTL, now=at(2))
    store.register_compensation("t", owner="w1", token=1, compensation=COMP_B, now=at(3))
    store.fail("t", owner="w1", token=1, reason="boom", now=at(4))
    store.acquire("t", owner="c1", ttl=TTL, now=at(5))
    store.compensation_applied("t", owner="c1", token=2, index=0, now=at(6))
    store.compensation_applied("t", owner="c1", token=2, index=1, now=at(7))
    store.annotate("t", text="ok", by="ops", now=at(8))
    hist = store.history("t")
    assert [e.seq for e in hist] == list(range(1, 10))
    assert {e.task_id for e in hist} == {"t"}
    S = TaskState
    assert [(e.event, e.from_state, e.to_state, e.owner, e.token, e.at) for e in hist] == [
        ("create", None, S.PENDING, None, None, T0),
        ("acquire", S.PENDING, S.RUNNING, "w1", 1, at(1)),
        ("heartbeat", S.RUNNING, S.RUNNING, "w1", 1, at(2)),
        ("register_compensation", S.RUNNING, S.RUNNING, "w1", 1, at(3)),
        ("fail", S.RUNNING, S.COMPENSATING, "w1", 1, at(4)),
        ("acquire", S.COMPENSATING, S.COMPENSATING, "c1", 2, at(5)),
        ("compensation_applied", S.COMPENSATING, S.COMPENSATING, "c1", 2, at(6)),
        ("compensation_applied", S.COMPENSATING, S.COMPENSATED, "c1", 2, at(7)),
        ("annotate", S.COMPENSATED, S.COMPENSATED, "ops", None, at(8)),
    ]
    assert hist[4].reason == "boom"
    rec = store.get("t")
    assert rec is not None
    assert rec.updated_at == at(7)


# ------------------------------------------------------------------ unknown ids

UNKNOWN_CALLS: dict[str, Callable[[SagaStore], object]] = {
    "acquire": lambda s: s.acquire("missing", owner="w", ttl=TTL, now=T0),
    "heartbeat": lambda s: s.heartbeat("missing", owner="w", token=1, ttl=TTL, now=T0),
    "release": lambda s: s.release("missing", owner="w", token=1, now=T0),
    "register_compensation": lambda s: s.register_compensation(
        "missing", owner="w", token=1, compensation=COMP_A, now=T0
    ),
    "complete": lambda s: s.complete("missing", owner="w", token=1, now=T0),
    "fail": lambda s: s.fail("missing", owner="w", token=1, reason="r", now=T0),
    "compensation_applied": lambda s: s.compensation_applied(
        "missing", owner="w", token=1, index=0, now=T0
    ),
    "compensation_failed": lambda s: s.compensation_failed(
        "missing", owner="w", token=1, index=0, reason="r", now=T0
    ),
    "quarantine": lambda s: s.quarantine("missing", reason="r", by="ops", now=T0),
    "annotate": lambda s: s.annotate("missing", text="x", by="ops", now=T0),
    "history": lambda s: s.history("missing"),
    "list_tasks-after": lambda s: s.list_tasks(after="missing"),
}


@pytest.mark.parametrize("call", list(UNKNOWN_CALLS.values()), ids=list(UNKNOWN_CALLS))
def test_unknown_task_is_not_found(store: SagaStore, call: Callable[[SagaStore], object]) -> None:
    """Every per-task method on an unknown id: TaskNotFoundError (LookupError); nothing created."""
    store.create("other", now=T0)
    err = expect_error(store, TaskNotFoundError, lambda: call(store))
    assert isinstance(err, LookupError)
    assert err.task_id == "missing"
    assert store.get("missing") is None
