"""Contract checks: every event, guard and error of the store contract, as plain functions.

Each check gets a fresh store wrapped in a :class:`~sagalease.conformance._common.Trace`
and raises :class:`~sagalease.conformance._common.ConformanceFailure` naming the
invariant it pins. Every refused call is checked for its exact error type and for
leaving every record, history and count as it was (INV-8). Tokens are deterministic:
the first acquisition of a task gets token 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sagalease import core
from sagalease.conformance._common import (
    SEC,
    T0,
    T0_US,
    Trace,
    at,
    first_difference,
    record_difference,
    snapshot,
    violated,
)
from sagalease.errors import (
    AttemptsExhaustedError,
    DuplicateTaskError,
    InvalidInputError,
    InvalidTransitionError,
    LeaseConflictError,
    SagaLeaseError,
    TaskNotFoundError,
    TerminalTaskError,
)
from sagalease.lifecycle import CHART, HOLDER_EVENTS, LEASE_STATES
from sagalease.records import (
    Compensation,
    CompensationStatus,
    HistoryEntry,
    NewTask,
    TaskSaga,
    TaskState,
)
from sagalease.store import Queues, QueueStats, SagaStore
from sagalease.verification.calls import Chosen, new_task, store_args

__all__ = ["CONTRACT_CHECKS", "ContractCheck"]

R = TypeVar("R")

TTL = timedelta(seconds=30)
US = timedelta(microseconds=1)
COMP_A = Compensation("refund", "order-1", "charged the card")
COMP_B = Compensation("release-stock", "sku-9", "reserved stock")
COMP_C = Compensation("notify", "user-7")

LCE, ITE, TTE, AEE, IIE = (
    LeaseConflictError,
    InvalidTransitionError,
    TerminalTaskError,
    AttemptsExhaustedError,
    InvalidInputError,
)


@dataclass(frozen=True)
class ContractCheck:
    """One named contract check and the invariant it pins."""

    name: str
    invariant: str
    doc: str
    run: Callable[[Trace], None]


# ---------------------------------------------------------------- helpers


def _last(t: Trace) -> str:
    return t.steps[-1] if t.steps else "the start"


def expect(
    t: Trace,
    inv: str,
    error: type[SagaLeaseError],
    call: Callable[[], object],
    *,
    changed: str = "INV-8",
) -> SagaLeaseError:
    """``call`` must raise exactly ``error`` and change nothing (else ``changed``: INV-8,
    or the invariant that says what a refusal of that call must leave, as INV-11 does
    for ``create_many``).
    """
    before = snapshot(t.store)
    try:
        call()
    except SagaLeaseError as exc:
        if type(exc) is not error:
            raise violated(
                inv, _last(t), f"expected {error.__name__}, got {type(exc).__name__}: {exc}"
            ) from None
        after = snapshot(t.store)
        if after != before:
            raise violated(
                changed,
                _last(t),
                f"the call raised {error.__name__} but changed the store:"
                f" {first_difference(before, after)}",
            ) from None
        return exc
    except Exception as exc:
        raise violated(
            inv,
            _last(t),
            f"expected {error.__name__}, got {type(exc).__name__} (not a SagaLeaseError): {exc}",
        ) from None
    raise violated(inv, _last(t), f"expected {error.__name__}, but the call succeeded")


def must(t: Trace, inv: str, call: Callable[[], R]) -> R:
    """``call`` is legal and must succeed."""
    try:
        return call()
    except Exception as exc:
        raise violated(
            inv, _last(t), f"a legal call was refused: {type(exc).__name__}: {exc}"
        ) from None


def same(t: Trace, inv: str, actual: object, expected: object, what: str) -> None:
    """``actual == expected``, else the invariant ``inv`` is broken."""
    if actual != expected:
        if isinstance(actual, TaskSaga) and isinstance(expected, TaskSaga):
            detail = record_difference(actual, expected)
        else:
            detail = f"{actual!r} != {expected!r}"
        raise violated(inv, _last(t), f"{what}: got {detail} (expected {expected!r})")


def holds(t: Trace, inv: str, condition: bool, what: str) -> None:
    """``condition`` holds, else the invariant ``inv`` is broken."""
    if not condition:
        raise violated(inv, _last(t), what)


def got(t: Trace, task_id: str) -> TaskSaga:
    """The stored record (it must exist)."""
    rec = t.store.get(task_id)
    if rec is None:
        raise violated("INV-7", _last(t), f"task {task_id!r} is missing")
    return rec


def holder_calls(
    s: SagaStore,
    task_id: str,
    owner: str,
    token: int,
    now: datetime,
    events: Iterable[str] = HOLDER_EVENTS,
) -> list[Callable[[], object]]:
    """Every holder call (owner, token) could make at ``now`` (or those of ``events``)."""
    chosen = Chosen(owner, token, TTL // US, compensation=COMP_C, reason="late")
    return [
        partial(getattr(s, event), task_id, **store_args(event, chosen), now=now)
        for event in events
    ]


_ON_EVERY_LEASE_STATE = tuple(
    event for event in HOLDER_EVENTS if all((state, event) in CHART for state in LEASE_STATES)
)
"""The holder calls declared from every state a lease can be held in (heartbeat and
release): the ones a compensating-phase holder makes on its own task."""

_FROM_RUNNING = tuple(event for event in HOLDER_EVENTS if (TaskState.RUNNING, event) in CHART)
"""The holder calls declared from RUNNING: on a running task the only reason left to
refuse them is the argument under test."""


def running(s: SagaStore, task_id: str, **create: Any) -> TaskSaga:
    """Create ``task_id`` at T0 and lease it to w1 (token 1) until T0+30s (or the deadline)."""
    s.create(task_id, now=T0, **create)
    return s.acquire(task_id, owner="w1", ttl=TTL, now=T0)


def compensating(s: SagaStore, task_id: str, *, max_attempts: int = 5) -> TaskSaga:
    """COMPENSATING, leased to c1 (token 2) until T0+32s; compensations A, B pending."""
    s.create(task_id, compensations=[COMP_A, COMP_B], max_attempts=max_attempts, now=T0)
    s.acquire(task_id, owner="w1", ttl=TTL, now=T0)
    s.fail(task_id, owner="w1", token=1, reason="boom", now=at(1))
    return s.acquire(task_id, owner="c1", ttl=TTL, now=at(2))


# ---------------------------------------------------------------- INV-1


def live_lease_blocks_acquire(t: Trace) -> None:
    """A live lease blocks every acquire (its holder's too) up to the last µs; at expiry
    the next acquire succeeds.
    """
    s = t.store
    running(s, "t")
    for owner, now in (("w2", T0), ("w1", at(5)), ("w2", at(30) - US)):
        expect(t, "INV-1", LCE, partial(s.acquire, "t", owner=owner, ttl=TTL, now=now))
    rec = must(t, "INV-1", lambda: s.acquire("t", owner="w2", ttl=TTL, now=at(30)))
    same(t, "INV-1", (rec.lease and rec.lease.owner, rec.token), ("w2", 2), "takeover at expiry")
    expect(t, "INV-1", LCE, lambda: s.acquire("t", owner="w3", ttl=TTL, now=at(30)))
    # The same in the compensation phase.
    compensating(s, "c")
    expect(t, "INV-1", LCE, lambda: s.acquire("c", owner="c2", ttl=TTL, now=at(32) - US))
    rec = must(t, "INV-1", lambda: s.acquire("c", owner="c2", ttl=TTL, now=at(32)))
    same(t, "INV-1", rec.token, 3, "compensation-phase takeover token")


def holder_calls_stop_at_expiry(t: Trace) -> None:
    """Holder calls succeed 1 µs before expiry and are refused at expiry and 1 µs after."""
    s = t.store
    running(s, "t")
    rec = must(t, "INV-1", lambda: s.heartbeat("t", owner="w1", token=1, ttl=TTL, now=at(30) - US))
    expiry = at(60) - US
    same(t, "INV-1", rec.lease and rec.lease.expires_at, expiry, "heartbeat expiry")
    for now in (expiry, expiry + US):
        for call in holder_calls(s, "t", "w1", 1, now):
            expect(t, "INV-1", LCE, call)
    # A capped lease ends at the deadline.
    running(s, "d", deadline=at(20))
    for call in holder_calls(s, "d", "w1", 1, at(20)):
        expect(t, "INV-1", LCE, call)
    must(t, "INV-1", lambda: s.complete("d", owner="w1", token=1, now=at(20) - US))
    # Compensation phase.
    compensating(s, "c")
    for call in holder_calls(s, "c", "c1", 2, at(32), _ON_EVERY_LEASE_STATE):
        expect(t, "INV-1", LCE, call)


def impostor_with_the_right_token_is_refused(t: Trace) -> None:
    """Another owner id presenting the current token is refused by every holder call."""
    s = t.store
    running(s, "t")
    for impostor in ("w2", "W1", "w1 "):
        for call in holder_calls(s, "t", impostor, 1, at(5)):
            expect(t, "INV-1", LCE, call)
    compensating(s, "c")
    for call in holder_calls(s, "c", "w1", 2, at(5)):
        expect(t, "INV-1", LCE, call)
    rec = got(t, "t")
    same(t, "INV-1", rec.lease and rec.lease.owner, "w1", "lease owner after impostors")


def claim_next_skips_live_leases(t: Trace) -> None:
    """claim_next hands out the oldest leaseable task, never one with a live lease."""
    s = t.store
    for i, task_id in enumerate(("a", "b", "c")):
        s.create(task_id, now=T0 + i * US)
    s.quarantine("c", reason="poison", by="ops", now=at(1))
    first = must(t, "INV-1", lambda: s.claim_next(owner="w1", ttl=TTL, now=at(1)))
    second = must(t, "INV-1", lambda: s.claim_next(owner="w2", ttl=TTL, now=at(1)))
    same(t, "INV-1", (first and first.task_id, second and second.task_id), ("a", "b"), "claims")
    none = must(t, "INV-1", lambda: s.claim_next(owner="w3", ttl=TTL, now=at(31) - US))
    same(t, "INV-1", none, None, "claim_next while every lease is live")
    again = must(t, "INV-1", lambda: s.claim_next(owner="w3", ttl=TTL, now=at(31)))
    holds(
        t,
        "INV-1",
        again is not None and again.task_id == "a" and again.token == 2,
        f"claim_next at the first expiry must take over 'a' under token 2, got {again!r}",
    )


def claim_batch_takes_what_repeated_claims_would(t: Trace) -> None:
    """claim_batch leases the oldest leaseable tasks, each under its own next token,
    exactly as repeated claim_next calls at the same instant would; never a live lease.
    """
    s = t.store
    for i, task_id in enumerate(("a", "b", "c", "d", "e")):
        s.create(task_id, now=T0 + i * US)
    s.acquire("b", owner="w0", ttl=TTL, now=at(1))
    s.quarantine("d", reason="poison", by="ops", now=at(1))
    batch = must(t, "INV-1", lambda: s.claim_batch(owner="w1", ttl=TTL, limit=2, now=at(2)))
    same(t, "INV-1", [(r.task_id, r.token) for r in batch], [("a", 1), ("c", 1)], "first batch")
    holds(
        t,
        "INV-1",
        all(r.lease is not None and r.lease.owner == "w1" for r in batch),
        f"every claimed task is leased to w1: {batch!r}",
    )
    rest = must(t, "INV-1", lambda: s.claim_batch(owner="w2", ttl=TTL, limit=5, now=at(2)))
    same(t, "INV-1", [r.task_id for r in rest], ["e"], "second batch (only e is left)")
    empty = must(t, "INV-1", lambda: s.claim_batch(owner="w3", ttl=TTL, limit=3, now=at(31) - US))
    same(t, "INV-1", empty, [], "claim_batch while every lease is live")
    again = must(t, "INV-1", lambda: s.claim_batch(owner="w3", ttl=TTL, limit=2, now=at(31)))
    same(t, "INV-1", [(r.task_id, r.token) for r in again], [("b", 2)], "takeover at expiry")
    claimed = [*batch, *rest, *again]
    same(t, "INV-7", [got(t, r.task_id) for r in claimed], claimed, "stored records")
    same(
        t,
        "INV-7",
        [e.event for e in s.history("a")],
        ["create", "acquire"],
        "one acquire entry per claimed task",
    )


def complete_many_is_all_or_nothing(t: Trace) -> None:
    """complete_many completes every task it is given, or, when one of them is refused
    (a stale token, another owner, an expired lease, a terminal task, an unknown id),
    raises that refusal and completes none.
    """
    s = t.store
    for task_id in ("a", "b", "c"):
        running(s, task_id)
    s.acquire("c", owner="w2", ttl=TTL, now=at(31))
    refusals: list[tuple[tuple[str, int], type[SagaLeaseError]]] = [
        (("c", 1), LCE),  # a stale token
        (("c", 2), LCE),  # another owner's lease
        (("zz", 1), TaskNotFoundError),
    ]
    for bad, error in refusals:
        expect(t, "INV-8", error, partial(s.complete_many, [("a", 1), bad], owner="w1", now=at(20)))
    expect(t, "INV-1", LCE, lambda: s.complete_many([("a", 1), ("b", 1)], owner="w1", now=at(30)))
    expect(t, "INV-8", IIE, lambda: s.complete_many([("a", 1), ("a", 1)], owner="w1", now=at(20)))
    done = must(t, "INV-8", lambda: s.complete_many([("a", 1), ("b", 1)], owner="w1", now=at(20)))
    same(
        t,
        "INV-8",
        [(r.task_id, r.state) for r in done],
        [("a", TaskState.COMPLETED), ("b", TaskState.COMPLETED)],
        "completed together",
    )
    same(t, "INV-7", [got(t, "a"), got(t, "b")], done, "stored records")
    expect(t, "INV-3", TTE, lambda: s.complete_many([("a", 1)], owner="w1", now=at(21)))
    same(t, "INV-8", must(t, "INV-8", lambda: s.complete_many([], owner="w1")), [], "empty")


# ---------------------------------------------------------------- INV-2


def zombie_cannot_write(t: Trace) -> None:
    """A worker whose lease was taken over (by another, by itself, after reap) cannot write."""
    s = t.store
    running(s, "a")
    s.acquire("a", owner="w2", ttl=TTL, now=at(31))
    running(s, "b")
    s.acquire("b", owner="w1", ttl=TTL, now=at(30))
    running(s, "c")
    s.reap(now=at(40))
    s.acquire("c", owner="w2", ttl=TTL, now=at(41))
    for task_id in ("a", "b", "c"):
        for call in holder_calls(s, task_id, "w1", 1, at(45)):
            expect(t, "INV-2", LCE, call)
    for call in holder_calls(s, "a", "w1", 2, at(45)) + holder_calls(s, "b", "w1", 3, at(45)):
        expect(t, "INV-2", LCE, call)
    # Compensation phase: c1's lease was taken over by c2 (token 3).
    compensating(s, "d")
    s.acquire("d", owner="c2", ttl=TTL, now=at(32))
    for call in holder_calls(s, "d", "c1", 2, at(40)) + holder_calls(s, "d", "w1", 1, at(40)):
        expect(t, "INV-2", LCE, call)
    done = must(
        t, "INV-2", lambda: s.compensation_applied("d", owner="c2", token=3, index=0, now=at(41))
    )
    same(t, "INV-2", done.token, 3, "token after a holder call")


def tokens_grow_by_one(t: Trace) -> None:
    """Every acquisition (fresh, after release, after expiry, after reap, claim_next,
    compensation phase) raises the token by exactly one; holder calls never change it.
    """
    s = t.store
    s.create("t", max_attempts=10, compensations=[COMP_A], now=T0)
    tokens = [must(t, "INV-2", lambda: s.acquire("t", owner="w", ttl=TTL, now=T0)).token]
    s.heartbeat("t", owner="w", token=1, ttl=TTL, now=at(1))
    s.release("t", owner="w", token=1, now=at(2))
    tokens.append(must(t, "INV-2", lambda: s.acquire("t", owner="w", ttl=TTL, now=at(2))).token)
    tokens.append(must(t, "INV-2", lambda: s.acquire("t", owner="w", ttl=TTL, now=at(40))).token)
    s.reap(now=at(80))
    claimed = must(t, "INV-2", lambda: s.claim_next(owner="w", ttl=TTL, now=at(81)))
    tokens.append(-1 if claimed is None else claimed.token)
    s.fail("t", owner="w", token=tokens[-1], reason="boom", now=at(82))
    tokens.append(must(t, "INV-2", lambda: s.acquire("t", owner="c", ttl=TTL, now=at(83))).token)
    same(t, "INV-2", tokens, [1, 2, 3, 4, 5], "tokens of successive acquisitions")
    entries = [e for e in s.history("t") if e.event == "acquire"]
    same(t, "INV-2", [e.token for e in entries], [1, 2, 3, 4, 5], "tokens in the history")


# ---------------------------------------------------------------- INV-3


def _end_complete(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    running(s, tid)
    s.complete(tid, owner="w1", token=1, reason="all done", now=at(1))
    return "w1", 1, TaskState.COMPLETED


def _end_fail(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    running(s, tid)
    s.fail(tid, owner="w1", token=1, reason="upstream said no", now=at(1))
    return "w1", 1, TaskState.FAILED


def _end_compensated(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    compensating(s, tid)
    s.compensation_applied(tid, owner="c1", token=2, index=1, now=at(3))
    s.compensation_applied(tid, owner="c1", token=2, index=0, now=at(4))
    return "c1", 2, TaskState.COMPENSATED


def _end_compensation_failed(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    compensating(s, tid)
    s.compensation_failed(tid, owner="c1", token=2, index=1, reason="gone", now=at(3))
    return "c1", 2, TaskState.QUARANTINED


def _end_quarantine(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    running(s, tid)
    s.quarantine(tid, reason="poison message", by="ops", now=at(1))
    return "w1", 1, TaskState.QUARANTINED


def _end_deadline(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    running(s, tid, deadline=at(20))
    s.reap(now=at(20))
    return "w1", 1, TaskState.FAILED


def _end_exhausted(s: SagaStore, tid: str) -> tuple[str, int, TaskState]:
    running(s, tid, max_attempts=1)
    s.reap(now=at(30))
    return "w1", 1, TaskState.QUARANTINED


_ENDINGS = (
    _end_complete,
    _end_fail,
    _end_compensated,
    _end_compensation_failed,
    _end_quarantine,
    _end_deadline,
    _end_exhausted,
)


def terminal_tasks_are_immutable(t: Trace) -> None:
    """Every terminal path: each later call is TerminalTaskError; reap, claim_next and
    list_stale ignore the task; annotate changes only the notes.
    """
    s = t.store
    ended: dict[str, tuple[str, int, TaskState]] = {}
    for i, end in enumerate(_ENDINGS):
        tid = f"t{i}"
        ended[tid] = must(t, "INV-3", partial(end, s, tid))
    later = at(100)
    for tid, (owner, token, state) in ended.items():
        rec = got(t, tid)
        same(t, "INV-3", rec.state, state, f"state of {tid}")
        holds(t, "INV-3", rec.lease is None, f"terminal {tid} still holds a lease")
        holds(t, "INV-3", bool(rec.terminal_reason), f"terminal {tid} records no reason")
        calls: list[Callable[[], object]] = [
            partial(s.acquire, tid, owner="w9", ttl=TTL, now=later),
            partial(s.acquire, tid, owner=owner, ttl=TTL, now=later),
            partial(s.quarantine, tid, reason="again", by="ops", now=later),
            partial(s.complete, tid, owner="w9", token=token + 1, now=later),
            *holder_calls(s, tid, owner, token, later),
            *holder_calls(s, tid, owner, token, at(2)),
        ]
        for call in calls:
            err = expect(t, "INV-3", TTE, call)
            holds(t, "INV-3", err.task_id == tid, f"error names task {err.task_id!r}")
    before = snapshot(s)
    same(t, "INV-3", s.list_stale(now=at(10_000)), [], "list_stale over terminal tasks")
    same(t, "INV-3", s.reap(now=at(10_000)), [], "reap over terminal tasks")
    same(t, "INV-3", s.claim_next(owner="w9", ttl=TTL, now=at(10_000)), None, "claim_next")
    after = snapshot(s)
    holds(t, "INV-3", after == before, f"terminal tasks changed: {first_difference(before, after)}")
    for tid in ended:
        rec = got(t, tid)
        noted = must(t, "INV-3", partial(s.annotate, tid, text="seen", by="ops", now=at(200)))
        same(t, "INV-3", replace(noted, notes=rec.notes, version=rec.version), rec, "annotate")
        same(t, "INV-3", noted.notes[:-1], rec.notes, "notes only grow")
        same(t, "INV-3", got(t, tid), noted, "the stored record after annotate")


# ---------------------------------------------------------------- INV-4


def compensations_are_never_dropped(t: Trace) -> None:
    """Fail owing compensations → COMPENSATING (unleased, fresh attempts) → COMPENSATED
    only when all are applied, QUARANTINED listing the pending ones otherwise; a failure
    without compensations → FAILED.
    """
    s = t.store
    running(s, "t", compensations=[COMP_A])
    s.register_compensation("t", owner="w1", token=1, compensation=COMP_B, now=at(1))
    rec = must(t, "INV-4", lambda: s.fail("t", owner="w1", token=1, reason="boom", now=at(2)))
    same(t, "INV-4", rec.state, TaskState.COMPENSATING, "state after fail with compensations")
    same(t, "INV-4", rec.pending_compensations, (0, 1), "pending compensations")
    same(t, "INV-4", (rec.lease, rec.attempts), (None, 0), "lease and attempts after fail")
    s.acquire("t", owner="c1", ttl=TTL, now=at(3))
    for call in (
        lambda: s.complete("t", owner="c1", token=2, now=at(4)),
        lambda: s.fail("t", owner="c1", token=2, reason="again", now=at(4)),
        lambda: s.register_compensation("t", owner="c1", token=2, compensation=COMP_C, now=at(4)),
        lambda: s.compensation_applied("t", owner="c1", token=2, index=2, now=at(4)),
        lambda: s.compensation_applied("t", owner="c1", token=2, index=-1, now=at(4)),
    ):
        expect(t, "INV-4", ITE, call)
    rec = must(
        t, "INV-4", lambda: s.compensation_applied("t", owner="c1", token=2, index=1, now=at(4))
    )
    same(t, "INV-4", rec.state, TaskState.COMPENSATING, "state with one compensation left")
    expect(
        t,
        "INV-4",
        ITE,
        lambda: s.compensation_applied("t", owner="c1", token=2, index=1, now=at(4)),
    )
    rec = must(
        t, "INV-4", lambda: s.compensation_applied("t", owner="c1", token=2, index=0, now=at(5))
    )
    same(t, "INV-4", rec.state, TaskState.COMPENSATED, "state when every compensation applied")
    holds(
        t,
        "INV-4",
        all(c.status is CompensationStatus.APPLIED for c in rec.compensations),
        "COMPENSATED with a compensation not applied",
    )
    # A permanent failure quarantines, listing what is still pending.
    compensating(s, "q")
    rec = must(
        t,
        "INV-4",
        lambda: s.compensation_failed("q", owner="c1", token=2, index=0, reason="gone", now=at(3)),
    )
    same(t, "INV-4", rec.state, TaskState.QUARANTINED, "state after compensation_failed")
    same(
        t,
        "INV-4",
        [c.status for c in rec.compensations],
        [CompensationStatus.FAILED, CompensationStatus.PENDING],
        "statuses after compensation_failed",
    )
    # The reaper past the deadline fails the task the same way.
    running(s, "late", compensations=[COMP_A], deadline=at(20))
    reaps = must(t, "INV-4", lambda: s.reap(now=at(20)))
    reaped = reaps[0] if len(reaps) == 1 else None
    holds(
        t,
        "INV-4",
        reaped is not None
        and reaped.state is TaskState.COMPENSATING
        and reaped.pending_compensations == (0,),
        f"reap past the deadline owing a compensation must enter COMPENSATING, got {reaped!r}",
    )
    # Without compensations a failure is FAILED.
    running(s, "plain")
    rec = must(t, "INV-4", lambda: s.fail("plain", owner="w1", token=1, reason="no", now=at(1)))
    same(t, "INV-4", (rec.state, rec.compensations), (TaskState.FAILED, ()), "fail without")


# ---------------------------------------------------------------- INV-5


def attempts_are_bounded(t: Trace) -> None:
    """No acquisition beyond max_attempts (released or expired alike); the reaper
    quarantines a task out of attempts; the compensation phase counts afresh.
    """
    s = t.store
    s.create("t", max_attempts=2, now=T0)
    for i in range(2):
        s.acquire("t", owner="w1", ttl=TTL, now=at(i))
        s.release("t", owner="w1", token=i + 1, now=at(i) + US)
    expect(t, "INV-5", AEE, lambda: s.acquire("t", owner="w1", ttl=TTL, now=at(5)))
    same(t, "INV-5", s.claim_next(owner="w1", ttl=TTL, now=at(5)), None, "claim_next")
    running(s, "x", max_attempts=1)
    expect(t, "INV-5", AEE, lambda: s.acquire("x", owner="w2", ttl=TTL, now=at(30)))
    reaped = must(t, "INV-5", lambda: s.reap(now=at(30)))
    same(
        t,
        "INV-5",
        sorted((r.task_id, r.state) for r in reaped),
        [("t", TaskState.QUARANTINED), ("x", TaskState.QUARANTINED)],
        "reap of exhausted tasks",
    )
    rec = got(t, "x")
    same(t, "INV-5", (rec.attempts, rec.expirations), (1, 1), "attempts and expirations")
    compensating(s, "c", max_attempts=1)
    expect(t, "INV-5", AEE, lambda: s.acquire("c", owner="c2", ttl=TTL, now=at(32)))


# ---------------------------------------------------------------- INV-6


def fair_reaper_ends_every_task(t: Trace) -> None:
    """Workers that keep crashing, a reaper and one finishing worker: every task ends."""
    s = t.store
    s.create("crashy", max_attempts=3, now=T0)
    s.create("deadline", deadline=at(100), max_attempts=50, now=T0 + US)
    s.create("comp", compensations=[COMP_A], max_attempts=2, now=T0 + 2 * US)
    s.create("fine", now=T0 + 3 * US)
    now = at(1)
    for _round in range(20):
        s.reap(now=now)
        while True:
            claimed = s.claim_next(owner="w", ttl=TTL, now=now)
            if claimed is None:
                break
            lease = claimed.lease
            assert lease is not None
            if claimed.task_id == "fine":
                s.complete("fine", owner="w", token=lease.token, now=now)
            elif claimed.task_id == "comp" and claimed.state is TaskState.RUNNING:
                s.fail("comp", owner="w", token=lease.token, reason="boom", now=now)
            # every other lease: the worker crashes and the lease expires
        now += TTL
    s.reap(now=now)
    left = [r.task_id for r in s.list_tasks(limit=100) if not r.is_terminal]
    holds(t, "INV-6", not left, f"tasks never ended under a fair reaper: {left}")


# ---------------------------------------------------------------- INV-7


def history_records_every_change(t: Trace) -> None:
    """Each change appends exactly one entry naming event, states, owner and token;
    replaying the history reproduces the record; returned records are the stored ones.
    """
    s = t.store
    expected = 0

    def changed(rec: TaskSaga, event: str, owner: str | None, token: int | None) -> None:
        nonlocal expected
        expected += 1
        entries = s.history("t")
        same(t, "INV-7", len(entries), expected, "number of history entries")
        last = entries[-1]
        same(t, "INV-7", (last.event, last.owner, last.token), (event, owner, token), "entry")
        same(t, "INV-7", last.to_state, rec.state, "entry's to_state")
        same(t, "INV-7", [e.seq for e in entries], list(range(1, expected + 1)), "seq numbers")
        same(t, "INV-7", got(t, "t"), rec, "the stored record vs the returned one")
        try:
            replayed = core.replay(entries)
        except Exception as exc:  # AssertionError, or the event refused on replay
            raise violated("INV-7", _last(t), f"the history does not replay: {exc}") from None
        same(t, "INV-7", replayed, rec, "the record replayed from its history")

    rec = s.create("t", saga_id="s", metadata={"k": [1, "v"]}, compensations=[COMP_A], now=T0)
    changed(rec, "create", None, None)
    changed(s.acquire("t", owner="w1", ttl=TTL, now=at(1)), "acquire", "w1", 1)
    changed(s.heartbeat("t", owner="w1", token=1, ttl=TTL, now=at(2)), "heartbeat", "w1", 1)
    rec = s.register_compensation("t", owner="w1", token=1, compensation=COMP_B, now=at(3))
    changed(rec, "register_compensation", "w1", 1)
    changed(s.annotate("t", text="note", by="ops", now=at(4)), "annotate", "ops", None)
    changed(s.release("t", owner="w1", token=1, now=at(5)), "release", "w1", 1)
    changed(s.acquire("t", owner="w2", ttl=TTL, now=at(6)), "acquire", "w2", 2)
    (reaped,) = s.reap(now=at(36))
    changed(reaped, "reap", None, None)
    claimed = s.claim_next(owner="w3", ttl=TTL, now=at(37))
    holds(t, "INV-7", claimed is not None, "claim_next found nothing to claim")
    assert claimed is not None
    changed(claimed, "acquire", "w3", 3)
    changed(s.fail("t", owner="w3", token=3, reason="boom", now=at(38)), "fail", "w3", 3)
    changed(s.acquire("t", owner="c1", ttl=TTL, now=at(39)), "acquire", "c1", 4)
    rec = s.compensation_applied("t", owner="c1", token=4, index=0, now=at(40))
    changed(rec, "compensation_applied", "c1", 4)
    rec = s.compensation_applied("t", owner="c1", token=4, index=1, now=at(41))
    changed(rec, "compensation_applied", "c1", 4)
    changed(s.annotate("t", text="after", by="ops", now=at(42)), "annotate", "ops", None)


def listings_agree_with_records(t: Trace) -> None:
    """list_tasks pages and filters in creation order, counts cover every state,
    list_stale lists exactly the non-terminal tasks whose lease expired.
    """
    s = t.store
    for i in range(5):
        s.create(f"t{i}", saga_id="even" if i % 2 == 0 else "odd", now=T0 + i * US)
    s.acquire("t1", owner="w", ttl=TTL, now=at(1))
    s.acquire("t2", owner="w", ttl=timedelta(seconds=60), now=at(1))
    s.acquire("t3", owner="w", ttl=TTL, now=at(1))
    s.complete("t3", owner="w", token=1, now=at(2))
    every = [r.task_id for r in s.list_tasks()]
    same(t, "INV-12", every, ["t0", "t1", "t2", "t3", "t4"], "list_tasks order")
    page1 = [r.task_id for r in s.list_tasks(limit=2)]
    page2 = [r.task_id for r in s.list_tasks(limit=2, after="t1")]
    same(t, "INV-12", (page1, page2), (["t0", "t1"], ["t2", "t3"]), "pages")
    running_ids = [r.task_id for r in s.list_tasks(state=TaskState.RUNNING)]
    same(t, "INV-12", running_ids, ["t1", "t2"], "list_tasks(state=RUNNING)")
    even = [r.task_id for r in s.list_tasks(saga_id="even", after="t0")]
    same(t, "INV-12", even, ["t2", "t4"], "list_tasks(saga_id='even', after='t0')")
    for rec in s.list_tasks():
        same(t, "INV-12", rec, s.get(rec.task_id), "a listed record vs get()")
    expect(t, "INV-12", TaskNotFoundError, lambda: s.list_tasks(after="nope"))
    counts = s.counts()
    same(t, "INV-12", set(counts), set(TaskState), "counts keys")
    want = dict.fromkeys(TaskState, 0) | {
        TaskState.PENDING: 2,
        TaskState.RUNNING: 2,
        TaskState.COMPLETED: 1,
    }
    same(t, "INV-12", counts, want, "counts")
    same(t, "INV-1", [r.task_id for r in s.list_stale(now=at(31) - US)], [], "list_stale early")
    same(t, "INV-1", [r.task_id for r in s.list_stale(now=at(31))], ["t1"], "list_stale at expiry")
    same(t, "INV-1", [r.task_id for r in s.list_stale(now=at(61))], ["t1", "t2"], "list_stale")


def queue_stats_agree_with_records(t: Trace) -> None:
    """queue_stats(now) gives, per queue holding a task (and no other), its counts by
    state (those of counts(queue=)), its stale leases (a lease is stale from its expiry
    on, a task that ended never is) and the earliest available_at of its tasks waiting
    at now: not ended, unleased (PENDING, or COMPENSATING between attempts) and
    available (a future one from its instant on); a leased or ended task never waits.
    """
    s = t.store
    same(t, "INV-12", s.queue_stats(now=T0), {}, "queue_stats of an empty store")
    s.create("e", queue="q1", compensations=[COMP_A], now=T0)
    s.acquire("e", owner="w1", ttl=TTL, now=T0)
    s.fail("e", owner="w1", token=1, reason="boom", now=at(1))  # COMPENSATING, waits
    s.create("h", queue="q2", compensations=[COMP_A], now=T0)
    s.acquire("h", owner="w1", ttl=TTL, now=T0)
    s.fail("h", owner="w1", token=1, reason="boom", now=at(1))
    s.acquire("h", owner="c1", ttl=TTL, now=at(1))  # COMPENSATING, leased: not waiting
    s.create("c", queue="q1", now=at(2))
    s.acquire("c", owner="w1", ttl=TTL, now=at(2))  # its lease expires at at(32)
    s.create("a", queue="q1", now=at(3))
    s.create("d", queue="q1", now=at(3))
    s.acquire("d", owner="w2", ttl=TTL, now=at(3))
    s.complete("d", owner="w2", token=1, now=at(4))
    s.create("b", queue="q3", available_at=at(5), now=at(3))
    s.create("g", queue="q2", now=at(3))
    s.acquire("g", owner="w3", ttl=TTL, now=at(3))
    s.quarantine("g", reason="poison", by="ops", now=at(4))  # ended while leased

    def stats(now: datetime) -> dict[str, QueueStats]:
        got_stats = must(t, "INV-12", lambda: s.queue_stats(now=now))
        same(t, "INV-12", list(got_stats), sorted(got_stats), "queue_stats in queue order")
        return got_stats

    q1 = {TaskState.PENDING: 1, TaskState.RUNNING: 1, TaskState.COMPENSATING: 1}
    q1 |= {TaskState.COMPLETED: 1}
    q2 = {TaskState.COMPENSATING: 1, TaskState.QUARANTINED: 1}
    counts = {"q1": q1, "q2": q2, "q3": {TaskState.PENDING: 1}}
    # (now, then per queue: stale, oldest waiting); h's lease expires at at(31)
    cases: list[tuple[datetime, dict[str, tuple[int, datetime | None]]]] = [
        (at(5) - US, {"q1": (0, at(1)), "q2": (0, None), "q3": (0, None)}),
        (at(5), {"q1": (0, at(1)), "q2": (0, None), "q3": (0, at(5))}),
        (at(31), {"q1": (0, at(1)), "q2": (1, None), "q3": (0, at(5))}),
        (at(32) - US, {"q1": (0, at(1)), "q2": (1, None), "q3": (0, at(5))}),
        (at(32), {"q1": (1, at(1)), "q2": (1, None), "q3": (0, at(5))}),
    ]
    for now, want in cases:
        now_us = T0_US + (now - T0) // US
        expected = {
            queue: QueueStats.of(
                queue,
                now_us,
                counts[queue],
                stale=stale,
                oldest_available_us=None if oldest is None else T0_US + (oldest - T0) // US,
            )
            for queue, (stale, oldest) in want.items()
        }
        got_stats = stats(now)
        same(t, "INV-12", got_stats, expected, f"queue_stats(now={now.isoformat()})")
    s.acquire("e", owner="c2", ttl=TTL, now=at(33))  # leased: e waits no more, a does
    s.quarantine("b", reason="poison", by="ops", now=at(33))  # ends after a count
    per_queue = stats(at(34))
    same(t, "INV-12", per_queue["q1"].oldest_available, at(3), "q1's oldest once e is leased")
    q3 = dict.fromkeys(TaskState, 0) | {TaskState.QUARANTINED: 1}
    same(t, "INV-12", per_queue["q3"].counts, q3, "q3's counts once b is quarantined")
    for queue, one in per_queue.items():
        same(t, "INV-12", one.counts, s.counts(queue=queue), f"queue_stats vs counts({queue!r})")
    total = {state: sum(q.counts[state] for q in per_queue.values()) for state in TaskState}
    same(t, "INV-12", total, s.counts(), "counts() vs the sum of queue_stats over queues")
    stale = sum(q.stale for q in stats(at(40)).values())
    same(t, "INV-12", stale, len(s.list_stale(now=at(40))), "queue_stats vs list_stale")


def _replays(t: Trace, s: SagaStore, task_id: str) -> list[HistoryEntry]:
    """The history of ``task_id``, which must replay to the stored record (else INV-7)."""
    entries = s.history(task_id)
    try:
        replayed = core.replay(entries)
    except Exception as exc:  # AssertionError, or the event refused on replay
        raise violated("INV-7", _last(t), f"the history does not replay: {exc}") from None
    same(t, "INV-7", replayed, got(t, task_id), f"the record of {task_id!r} replayed")
    return entries


def release_reasons_and_requeue_links_are_recorded(t: Trace) -> None:
    """release(reason=) records the reason in its entry (no reason: none); the queue, the
    priority and requeued_from (create and create_many) round-trip through the record,
    get, list_tasks and the history's replay.
    """
    s = t.store
    running(s, "t")
    why = "retry 1 of 5 after TimeoutError: upstream\ttook too long"
    s.release("t", owner="w1", token=1, delay=timedelta(seconds=5), reason=why, now=at(1))
    last = _replays(t, s, "t")[-1]
    same(t, "INV-7", (last.event, last.reason), ("release", why), "the release entry")
    s.acquire("t", owner="w2", ttl=TTL, now=at(6))
    s.release("t", owner="w2", token=2, now=at(7))
    last = _replays(t, s, "t")[-1]
    same(t, "INV-7", (last.event, last.reason), ("release", None), "a release without reason")
    copy = s.create("copy", requeued_from="t", queue="retries", priority=-3, now=at(8))
    (bulk,) = s.create_many([NewTask("copy2", requeued_from="t", priority=1000)], now=at(9))
    for rec, want in ((copy, ("t", "retries", -3)), (bulk, ("t", "default", 1000))):
        fields = (rec.requeued_from, rec.queue, rec.priority)
        same(t, "INV-7", fields, want, f"requeued_from, queue and priority of {rec.task_id}")
        same(t, "INV-7", got(t, rec.task_id), rec, "the stored record vs the returned one")
        _replays(t, s, rec.task_id)
    listed = s.list_tasks(queue="retries")
    same(t, "INV-7", listed, [copy], "list_tasks(queue='retries')")
    same(t, "INV-7", got(t, "t").requeued_from, None, "requeued_from of the original")


# ---------------------------------------------------------------- INV-8


_GuardSetup = Callable[[SagaStore, str], object]
_GuardCall = Callable[[SagaStore, str], object]


def _guard_cases() -> list[tuple[_GuardSetup, _GuardCall, type[SagaLeaseError]]]:
    def pending_later(s: SagaStore, tid: str) -> object:
        return s.create(tid, available_at=at(10), now=T0)

    def pending_deadline(s: SagaStore, tid: str) -> object:
        return s.create(tid, deadline=at(10), now=T0)

    def run(s: SagaStore, tid: str) -> object:
        return running(s, tid)

    def capped(s: SagaStore, tid: str) -> object:
        return running(s, tid, deadline=at(20))

    def comp(s: SagaStore, tid: str) -> object:
        return compensating(s, tid)

    def comp_delayed(s: SagaStore, tid: str) -> object:
        compensating(s, tid)
        return s.release(tid, owner="c1", token=2, delay=timedelta(seconds=10), now=at(3))

    def comp_one_applied(s: SagaStore, tid: str) -> object:
        compensating(s, tid)
        return s.compensation_applied(tid, owner="c1", token=2, index=0, now=at(3))

    def hb(owner: str, token: int, now: datetime, ttl: timedelta = TTL) -> _GuardCall:
        return lambda s, tid: s.heartbeat(tid, owner=owner, token=token, ttl=ttl, now=now)

    def acq(owner: str, now: datetime) -> _GuardCall:
        return lambda s, tid: s.acquire(tid, owner=owner, ttl=TTL, now=now)

    def applied(owner: str, token: int, index: int) -> _GuardCall:
        return lambda s, tid: s.compensation_applied(
            tid, owner=owner, token=token, index=index, now=at(5)
        )

    def cfailed(owner: str, token: int, index: int) -> _GuardCall:
        return lambda s, tid: s.compensation_failed(
            tid, owner=owner, token=token, index=index, reason="r", now=at(5)
        )

    return [
        (pending_later, acq("w1", at(10) - US), ITE),
        (pending_deadline, acq("w1", at(10)), ITE),
        (capped, acq("w2", at(20)), ITE),
        (comp_delayed, acq("c2", at(13) - US), ITE),
        (run, hb("w1", 1, at(5), timedelta(seconds=25)), LCE),
        (run, hb("w1", 0, at(5)), LCE),
        (capped, hb("w1", 1, at(5), timedelta(hours=1)), LCE),
        (comp, hb("c1", 2, at(32)), LCE),
        (comp_delayed, hb("c1", 2, at(4)), LCE),
        (run, lambda s, tid: s.release(tid, owner="w1", token=2, now=at(5)), LCE),
        (pending_later, lambda s, tid: s.release(tid, owner="w1", token=0, now=at(5)), LCE),
        (comp_one_applied, applied("c1", 2, 0), ITE),
        (comp_one_applied, cfailed("c1", 2, 0), ITE),
        (comp, applied("c1", 2, 2), ITE),
        (comp, cfailed("c1", 2, -1), ITE),
        (run, applied("w1", 1, 0), ITE),
        (run, cfailed("w1", 1, 0), ITE),
        (
            comp,
            lambda s, tid: s.register_compensation(
                tid, owner="c1", token=2, compensation=COMP_C, now=at(5)
            ),
            ITE,
        ),
        (comp, lambda s, tid: s.complete(tid, owner="c1", token=2, now=at(5)), ITE),
    ]


def guard_failures_change_nothing(t: Trace) -> None:
    """Each failing guard raises its exact error and leaves every record and history as
    they were.
    """
    s = t.store
    for i, (setup, call, error) in enumerate(_guard_cases()):
        tid = f"g{i}"
        setup(s, tid)
        expect(t, "INV-8", error, partial(call, s, tid))


def naive_datetimes_are_refused(t: Trace) -> None:
    """A naive datetime anywhere is InvalidInputError and nothing is stored."""
    s = t.store
    naive = datetime(2026, 1, 1, 0, 0, 5)
    running(s, "t")
    s.create("p", now=T0)
    for call in [
        lambda: s.create("n1", now=naive),
        lambda: s.create("n2", deadline=naive, now=T0),
        lambda: s.create("n3", available_at=naive, now=T0),
        lambda: s.acquire("p", owner="w2", ttl=TTL, now=naive),
        lambda: s.claim_next(owner="w2", ttl=TTL, now=naive),
        lambda: s.reap(now=naive),
        lambda: s.list_stale(now=naive),
        lambda: s.queue_stats(now=naive),
        lambda: s.quarantine("p", reason="r", by="ops", now=naive),
        lambda: s.annotate("p", text="x", by="ops", now=naive),
        *holder_calls(s, "t", "w1", 1, naive, _FROM_RUNNING),
    ]:
        expect(t, "INV-8", IIE, call)


def bad_input_is_refused(t: Trace) -> None:
    """Bad ids, ttl/delay, metadata and limits are InvalidInputError; a duplicate create
    is DuplicateTaskError and keeps the original; unknown tasks are TaskNotFoundError.
    """
    s = t.store
    original = running(s, "t")
    bad_calls: list[Callable[[], object]] = [
        lambda: s.create("", now=T0),
        lambda: s.create("x" * 201, now=T0),
        lambda: s.create("ctl\x00", now=T0),
        lambda: s.create("m", metadata={"k": float("nan")}, now=T0),
        lambda: s.create("m", metadata={1: "non-str key"}, now=T0),  # type: ignore[dict-item]
        lambda: s.create("m", max_attempts=0, now=T0),
        lambda: s.create("m", deadline=T0, now=T0),
        lambda: s.acquire("t", owner="", ttl=TTL, now=at(40)),
        lambda: s.acquire("t", owner="w2", ttl=timedelta(0), now=at(40)),
        lambda: s.acquire("t", owner="w2", ttl=-TTL, now=at(40)),
        lambda: s.heartbeat("t", owner="w1", token=1, ttl=timedelta(0), now=at(1)),
        lambda: s.release("t", owner="w1", token=1, delay=-TTL, now=at(1)),
        lambda: s.complete("t", owner="w1", token=1, reason="", now=at(1)),
        lambda: s.fail("t", owner="w1", token=1, reason="", now=at(1)),
        lambda: s.quarantine("t", reason="", by="ops", now=at(1)),
        lambda: s.annotate("t", text="", by="ops", now=at(1)),
        lambda: s.list_tasks(limit=0),
        lambda: s.reap(now=at(1), limit=0),
    ]
    for call in bad_calls:
        expect(t, "INV-8", IIE, call)
    expect(t, "INV-8", DuplicateTaskError, lambda: s.create("t", saga_id="other", now=at(1)))
    same(t, "INV-8", got(t, "t"), original, "the original task after a duplicate create")
    for call in [
        *holder_calls(s, "nope", "w1", 1, at(1)),
        lambda: s.acquire("nope", owner="w1", ttl=TTL, now=at(1)),
        lambda: s.quarantine("nope", reason="r", by="ops", now=at(1)),
        lambda: s.annotate("nope", text="x", by="ops", now=at(1)),
        lambda: s.history("nope"),
    ]:
        expect(t, "INV-8", TaskNotFoundError, call)
    same(t, "INV-8", s.get("nope"), None, "get of an unknown task")


def repeats_are_not_merged(t: Trace) -> None:
    """A repeated holder call after success reports the state it finds and changes nothing."""
    s = t.store
    running(s, "t")
    s.complete("t", owner="w1", token=1, now=at(1))
    expect(t, "INV-8", TTE, lambda: s.complete("t", owner="w1", token=1, now=at(1)))
    running(s, "r")
    s.release("r", owner="w1", token=1, now=at(1))
    expect(t, "INV-8", LCE, lambda: s.release("r", owner="w1", token=1, now=at(1)))
    running(s, "a")
    expect(t, "INV-8", LCE, lambda: s.acquire("a", owner="w1", ttl=TTL, now=at(1)))


HOSTILE_QUEUES = ("q'; DROP TABLE tasks; --", 'q"x', "ünïcødé-队列", "q" * 200)
"""Queue names that are data, never SQL; the last is as long as a name may be."""


def queues_and_priorities_refuse_bad_input(t: Trace) -> None:
    """Malformed queue names (empty, blank, 201 characters, control characters, not a
    string), priorities out of -1000..1000 or not an int (bool, float, str), an empty
    queues collection, bad listing filters, a bad release reason and a bad create_many
    (not a collection of NewTask, one bad item) are InvalidInputError and change nothing;
    priorities ±1000 and hostile queue names of up to 200 characters are accepted as data.
    """
    s = t.store
    loose: Any = s  # the calls below are wrong on purpose
    running(s, "t")
    s.create("p", queue="q", now=T0)
    bad_queues: list[object] = ["", "   ", "x" * 201, "a\x00b", "a\nb", "a\x1bb", 5, None, b"q"]
    bad_priorities: list[object] = [1001, -1001, True, False, 1.0, "1", None, 10**20]
    claim_filters: list[object] = [[], set(), frozenset(), (), "", [""], ["q", 5], b"q", 5]
    calls: list[Callable[[], object]] = [
        *(partial(loose.create, "n", queue=q, now=T0) for q in bad_queues),
        *(partial(loose.create, "n", priority=p, now=T0) for p in bad_priorities),
        partial(loose.create, "n", requeued_from="", now=T0),
        partial(loose.create, "n", requeued_from="x" * 201, now=T0),
        *(
            partial(loose.claim_next, owner="w", ttl=TTL, queues=q, now=at(1))
            for q in claim_filters
        ),
        partial(loose.claim_next, owner="w", ttl=TTL, queues=["q", "x" * 201], now=at(1)),
        partial(loose.claim_batch, owner="w", ttl=TTL, limit=2, queues=[], now=at(1)),
        partial(loose.claim_batch, owner="w", ttl=TTL, limit=2, queues=["q", "a\x00"], now=at(1)),
        partial(loose.list_tasks, queue=""),
        partial(loose.list_tasks, queue=5),
        partial(loose.list_tasks, state=[]),
        partial(loose.list_tasks, state=["nope"]),
        partial(loose.list_tasks, state=[TaskState.RUNNING, "nope"]),
        *(partial(loose.list_tasks, newest_first=v) for v in ("yes", 1, None)),
        partial(loose.counts, queue=""),
        partial(loose.counts, queue="x" * 201),
        *(
            partial(loose.release, "t", owner="w1", token=1, reason=r, now=at(1))
            for r in ("", "   ", 5, "a\x00b")
        ),
    ]
    for call in calls:
        expect(t, "INV-8", IIE, call)
    bad_batches: list[object] = [
        "abc",
        ["n"],
        [NewTask("n", queue="")],
        [NewTask("n"), NewTask("n2", priority=2000)],
        [NewTask("n"), NewTask("")],
    ]
    for batch in bad_batches:  # a refused create_many that stored some breaks INV-11
        expect(t, "INV-8", IIE, partial(loose.create_many, batch, now=T0), changed="INV-11")
    for priority in (1000, -1000):
        rec = must(t, "INV-8", partial(s.create, f"edge{priority}", priority=priority, now=T0))
        same(t, "INV-8", rec.priority, priority, "a priority at the edge of the range")
    for i, queue in enumerate(HOSTILE_QUEUES):
        rec = must(t, "INV-9", partial(s.create, f"h{i}", queue=queue, now=T0))
        same(t, "INV-9", rec.queue, queue, "a hostile queue name, stored")
        listed = [r.task_id for r in s.list_tasks(queue=queue)]
        same(t, "INV-12", listed, [f"h{i}"], f"list_tasks(queue={queue!r})")
        claimed = _claim(t, "INV-9", queue, at(1))
        same(t, "INV-9", claimed, [(f"h{i}", queue)], f"claim_next(queues={queue!r})")


# ---------------------------------------------------------------- INV-9


def _claim(
    t: Trace, inv: str, queues: Queues, now: datetime, limit: int | None = None
) -> list[tuple[str, str]]:
    """claim_next (``limit`` None) or claim_batch for w at ``now`` over ``queues``: the
    (task_id, queue) pairs it leased. A task of a queue not named breaks INV-9, a task
    that held a live lease INV-1; which tasks and in what order is for ``inv`` to judge.
    """
    s = t.store
    held = {r.task_id: r.lease for r in s.list_tasks(limit=10_000) if r.lease is not None}
    if limit is None:
        one = must(t, inv, lambda: s.claim_next(owner="w", ttl=TTL, queues=queues, now=now))
        claimed = [] if one is None else [one]
    else:
        claimed = must(
            t, inv, lambda: s.claim_batch(owner="w", ttl=TTL, limit=limit, queues=queues, now=now)
        )
    named = None if queues is None else {queues} if isinstance(queues, str) else set(queues)
    for rec in claimed:
        holds(
            t,
            "INV-9",
            named is None or rec.queue in named,
            f"leased {rec.task_id!r} of queue {rec.queue!r}; the claim named {queues!r}",
        )
        lease = held.get(rec.task_id)
        holds(
            t,
            "INV-1",
            lease is None or now >= lease.expires_at,
            f"leased {rec.task_id!r} while {lease and lease.owner!r} held it until"
            f" {lease and lease.expires_at}",
        )
    return [(r.task_id, r.queue) for r in claimed]


def claims_route_by_queue(t: Trace) -> None:
    """A claim naming queues (one name, a list, a tuple, a set) leases only tasks of those
    queues, a string being one queue (not its letters); None leases from any queue; a
    queue no task is in leases nothing and changes nothing; each task keeps its queue.
    """
    s = t.store
    layout = (
        ("a1", "a"),
        ("b1", "b"),
        ("ab1", "ab"),
        ("d1", "default"),
        ("a2", "a"),
        ("b2", "b"),
        ("c1", "c"),
    )
    for i, (task_id, queue) in enumerate(layout):
        kwargs: dict[str, Any] = {} if queue == "default" else {"queue": queue}
        rec = must(t, "INV-9", partial(s.create, task_id, now=T0 + i * US, **kwargs))
        same(t, "INV-9", rec.queue, queue, f"the queue of {task_id}")
    now = at(1)
    claims: list[tuple[Queues, int | None, list[tuple[str, str]]]] = [
        ("ab", None, [("ab1", "ab")]),
        ("ab", 3, []),  # one queue, whose only task is leased: not 'a' and 'b'
        ("b", None, [("b1", "b")]),
        (["c", "b"], None, [("b2", "b")]),
        (("c",), None, [("c1", "c")]),
        (frozenset({"b", "c", "ab"}), None, []),
        ("zz", 2, []),
        (["zz", "b"], None, []),
        (None, None, [("a1", "a")]),
        ({"default", "a"}, 5, [("d1", "default"), ("a2", "a")]),
        (None, 3, []),
    ]
    for queues, limit, want in claims:
        before = snapshot(s)
        got_back = _claim(t, "INV-9", queues, now, limit)
        same(t, "INV-9", got_back, want, f"claim over queues={queues!r} (limit {limit})")
        if not want:
            after = snapshot(s)
            holds(t, "INV-9", after == before, f"an empty claim: {first_difference(before, after)}")
    stored = [(r.task_id, r.queue) for r in s.list_tasks()]
    same(t, "INV-9", stored, list(layout), "every task's queue after the claims")


# ---------------------------------------------------------------- INV-10


def claims_take_the_highest_priority_first(t: Trace) -> None:
    """Claims lease the highest priority first across the queues they name, equal
    priorities in creation order, passing over what is not leaseable (a live lease, not
    yet available); an expired lease of a higher priority goes before a pending lower
    one; claim_batch leases what as many successive claim_next calls would.
    """
    s = t.store
    layout = (
        ("p0", "x", 0),
        ("lo", "y", -5),
        ("hi", "y", 5),
        ("p0b", "x", 0),
        ("top", "x", 1000),
        ("bottom", "y", -1000),
        ("hi2", "x", 5),
    )
    for i, (task_id, queue, priority) in enumerate(layout):
        s.create(task_id, queue=queue, priority=priority, now=T0 + i * US)
    s.create("later", queue="x", priority=999, available_at=at(100), now=T0 + 7 * US)
    s.create("live", queue="y", priority=900, now=T0 + 8 * US)
    s.acquire("live", owner="w0", ttl=TTL, now=T0 + 8 * US)  # until at(30) + 8 µs
    claims: list[tuple[Queues, datetime, int | None, list[str]]] = [
        (None, at(1), None, ["top"]),
        (None, at(1), None, ["hi"]),  # 5, created before hi2
        (None, at(1), None, ["hi2"]),
        (["x", "y"], at(1), 3, ["p0", "p0b", "lo"]),
        ("y", at(1), None, ["bottom"]),
        (None, at(1), 2, []),  # 'later' is not available, 'live' is held
        ("y", at(30) + 8 * US, None, ["live"]),  # at its expiry; the others run to at(31)
        (("x",), at(100), 3, ["top", "later", "hi2"]),  # an expired 1000 before a pending 999
    ]
    for queues, now, limit, want in claims:
        taken = [task_id for task_id, _ in _claim(t, "INV-10", queues, now, limit)]
        same(t, "INV-10", taken, want, f"claim over queues={queues!r} (limit {limit})")
    # claim_batch is successive claim_next calls, ties included: the same tasks in two queues.
    priorities = (1, 0, 1, -1, 0, 2, 1, 0)
    for queue in ("m", "n"):
        for i, priority in enumerate(priorities):
            s.create(f"{queue}{i}", queue=queue, priority=priority, now=at(200) + i * US)
    one_call = [task_id[1:] for task_id, _ in _claim(t, "INV-10", "m", at(201), 6)]
    singles = [task_id[1:] for _ in range(6) for task_id, _ in _claim(t, "INV-10", "n", at(201))]
    same(t, "INV-10", one_call, singles, "claim_batch(limit=6) vs six claim_next calls")
    same(t, "INV-10", one_call, ["5", "0", "2", "6", "1", "4"], "the order of the batch")


# ---------------------------------------------------------------- INV-11


def create_many_is_all_or_nothing(t: Trace) -> None:
    """create_many returns, in order, the records (and writes the entries) create gives
    for the same items; an id already stored or given twice in the batch is
    DuplicateTaskError naming it, a bad item or 1,001 items InvalidInputError, and then
    no task and no history entry is stored; 1,000 items are accepted.
    """
    s = t.store
    hour = 3_600 * SEC
    choices = (
        Chosen(),
        Chosen(
            saga_id="s",
            queue="bulk",
            priority=-7,
            max_attempts=2,
            compensations=(COMP_A, COMP_B),
            deadline_us=T0_US + hour,
            available_us=T0_US + SEC,
        ),
        Chosen(requeued_from="old", queue="bulk", priority=1000),
    )
    solo = [s.create(f"solo{i}", now=T0, **store_args("create", c)) for i, c in enumerate(choices)]
    items = (new_task(f"bulk{i}", c) for i, c in enumerate(choices))  # any iterable will do
    made = must(t, "INV-11", lambda: s.create_many(items, now=T0))
    same(t, "INV-11", [r.task_id for r in made], ["bulk0", "bulk1", "bulk2"], "the records' order")
    for one, alone in zip(made, solo, strict=True):
        same(t, "INV-11", replace(one, task_id=alone.task_id), alone, "a record vs create's")
        same(t, "INV-11", got(t, one.task_id), one, "the stored record vs the returned one")
        entries = [replace(e, task_id=alone.task_id) for e in s.history(one.task_id)]
        same(t, "INV-11", entries, s.history(alone.task_id), "the history vs create's")
    refused: list[tuple[list[NewTask], type[SagaLeaseError], str | None]] = [
        ([NewTask("n1"), NewTask("solo1"), NewTask("n2")], DuplicateTaskError, "solo1"),
        ([NewTask("n1"), NewTask("n2"), NewTask("n1")], DuplicateTaskError, "n1"),
        ([NewTask("n1"), NewTask("n2"), NewTask("n3"), NewTask("n3")], DuplicateTaskError, "n3"),
        ([NewTask("n1"), NewTask("bulk2", queue="other")], DuplicateTaskError, "bulk2"),
        ([NewTask("n1"), NewTask("n2", priority=1001)], IIE, None),
        ([NewTask(f"x{i}") for i in range(1_001)], IIE, None),
    ]
    for batch, error, named in refused:
        err = expect(t, "INV-11", error, partial(s.create_many, batch, now=at(1)), changed="INV-11")
        if named is not None:
            same(t, "INV-11", err.task_id, named, "the id the DuplicateTaskError names")
    same(t, "INV-11", must(t, "INV-11", lambda: s.create_many([], now=at(1))), [], "no items")
    again = must(t, "INV-11", lambda: s.create_many([NewTask("n1"), NewTask("n3")], now=at(2)))
    same(t, "INV-11", [r.task_id for r in again], ["n1", "n3"], "the refused ids, later")
    full = [NewTask(f"big{i:04}", queue="big") for i in range(1_000)]
    big = must(t, "INV-11", lambda: s.create_many(full, now=at(3)))
    ids = [f"big{i:04}" for i in range(1_000)]
    same(t, "INV-11", [r.task_id for r in big], ids, "1,000 items (the most one call takes)")
    listed = [r.task_id for r in s.list_tasks(queue="big", limit=1_000)]
    same(t, "INV-11", listed, ids, "list_tasks(queue='big') after 1,000 items")


# ---------------------------------------------------------------- INV-12


def listings_filter_by_state_queue_and_saga(t: Trace) -> None:
    """list_tasks filters by one state or a collection of them (set, list, tuple), by
    queue and by saga, combined, paged with after and limit, in creation order whatever
    the priorities, and newest first (``after`` then the last id of the previous page
    in that order; unknown: TaskNotFoundError); counts(queue=) counts that queue's
    tasks by state (every state present, all zero for a queue no task is in).
    """
    s = t.store
    layout = (
        ("t0", "q1", "s1", 0),
        ("t1", "q2", "s1", 0),
        ("t2", "q1", None, 0),
        ("t3", "q2", None, -4),
        ("t4", "q1", "s1", 9),
        ("t5", "q1", "s1", 0),
        ("t6", "default", "s1", 0),
    )
    for i, (task_id, queue, saga, priority) in enumerate(layout):
        s.create(task_id, queue=queue, saga_id=saga, priority=priority, now=T0 + i * US)
    for task_id in ("t1", "t2", "t3", "t4"):
        s.acquire(task_id, owner="w", ttl=TTL, now=at(1))
    s.complete("t2", owner="w", token=1, now=at(2))
    s.quarantine("t5", reason="poison", by="ops", now=at(2))
    live = {TaskState.PENDING, TaskState.RUNNING}
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"state": live}, ["t0", "t1", "t3", "t4", "t6"]),
        ({"state": [TaskState.RUNNING]}, ["t1", "t3", "t4"]),
        ({"state": (TaskState.COMPLETED, TaskState.QUARANTINED)}, ["t2", "t5"]),
        ({"state": frozenset(TaskState)}, [r[0] for r in layout]),
        ({"queue": "q1"}, ["t0", "t2", "t4", "t5"]),
        ({"queue": "q1", "state": live}, ["t0", "t4"]),
        (
            {"queue": "q1", "saga_id": "s1", "state": [*live, TaskState.QUARANTINED]},
            ["t0", "t4", "t5"],
        ),
        ({"queue": "q1", "saga_id": "s1", "state": frozenset(live), "limit": 1}, ["t0"]),
        ({"queue": "q1", "saga_id": "s1", "after": "t0", "limit": 1}, ["t4"]),
        ({"queue": "q1", "saga_id": "s1", "after": "t4"}, ["t5"]),
        ({"queue": "q1", "after": "t5"}, []),
        ({"queue": "q2", "saga_id": "s1"}, ["t1"]),
        ({"queue": "nobody"}, []),
        ({"queue": "q2", "state": TaskState.PENDING}, []),
    ]
    newest: list[tuple[dict[str, Any], list[str]]] = [
        ({}, [r[0] for r in reversed(layout)]),
        ({"state": live}, ["t6", "t4", "t3", "t1", "t0"]),
        ({"state": live, "limit": 2}, ["t6", "t4"]),
        ({"state": (TaskState.COMPLETED, TaskState.QUARANTINED)}, ["t5", "t2"]),
        ({"state": [TaskState.RUNNING], "after": "t4"}, ["t3", "t1"]),
        ({"queue": "q1", "state": live}, ["t4", "t0"]),
        ({"queue": "q1", "after": "t4"}, ["t2", "t0"]),
        ({"queue": "q1", "saga_id": "s1", "after": "t5", "limit": 1}, ["t4"]),
        ({"queue": "q1", "after": "t0"}, []),
        ({"saga_id": "s1", "after": "t6", "limit": 2}, ["t5", "t4"]),
    ]
    cases += [({**kwargs, "newest_first": True}, want) for kwargs, want in newest]
    for kwargs, want in cases:
        listed = s.list_tasks(**kwargs)
        same(t, "INV-12", [r.task_id for r in listed], want, f"list_tasks({kwargs})")
        for rec in listed:
            same(t, "INV-12", rec, s.get(rec.task_id), "a listed record vs get()")
    expect(t, "INV-12", TaskNotFoundError, lambda: s.list_tasks(after="nope", newest_first=True))
    zero = dict.fromkeys(TaskState, 0)
    q1 = zero | {
        TaskState.PENDING: 1,
        TaskState.RUNNING: 1,
        TaskState.COMPLETED: 1,
        TaskState.QUARANTINED: 1,
    }
    same(t, "INV-12", s.counts(queue="q1"), q1, "counts(queue='q1')")
    same(t, "INV-12", s.counts(queue="nobody"), zero, "counts(queue='nobody')")
    per_queue = [s.counts(queue=q) for q in ("q1", "q2", "default")]
    total = {state: sum(c[state] for c in per_queue) for state in TaskState}
    same(t, "INV-12", s.counts(), total, "counts() vs the sum of counts(queue=) over queues")


CONTRACT_CHECKS: tuple[ContractCheck, ...] = tuple(
    ContractCheck(fn.__name__, inv, (fn.__doc__ or "").split("\n\n")[0].replace("\n", " "), fn)
    for fn, inv in (
        (live_lease_blocks_acquire, "INV-1"),
        (holder_calls_stop_at_expiry, "INV-1"),
        (impostor_with_the_right_token_is_refused, "INV-1"),
        (claim_next_skips_live_leases, "INV-1"),
        (claim_batch_takes_what_repeated_claims_would, "INV-1"),
        (claims_route_by_queue, "INV-9"),
        (claims_take_the_highest_priority_first, "INV-10"),
        (zombie_cannot_write, "INV-2"),
        (tokens_grow_by_one, "INV-2"),
        (terminal_tasks_are_immutable, "INV-3"),
        (compensations_are_never_dropped, "INV-4"),
        (attempts_are_bounded, "INV-5"),
        (fair_reaper_ends_every_task, "INV-6"),
        (history_records_every_change, "INV-7"),
        (release_reasons_and_requeue_links_are_recorded, "INV-7"),
        (listings_agree_with_records, "INV-12"),
        (listings_filter_by_state_queue_and_saga, "INV-12"),
        (queue_stats_agree_with_records, "INV-12"),
        (guard_failures_change_nothing, "INV-8"),
        (naive_datetimes_are_refused, "INV-8"),
        (bad_input_is_refused, "INV-8"),
        (repeats_are_not_merged, "INV-8"),
        (complete_many_is_all_or_nothing, "INV-8"),
        (queues_and_priorities_refuse_bad_input, "INV-8"),
        (create_many_is_all_or_nothing, "INV-11"),
    )
)
"""Every contract check, in the order they run."""
