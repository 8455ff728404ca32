"""INV-1..8 as Hypothesis properties over random event sequences on the pure core, and
the queue, priority and reason arguments of create and release (INV-7, INV-8, INV-9).

Every property drives :mod:`sagalease.core` directly: a task is created with a
random attempt cap, optional deadline and compensations, then a random mix of
three workers, zombies (old ``(owner, token)`` pairs), impostors (the current
token under another owner id), a reaper and an operator act on it while the
clock advances by random amounts and jumps to exactly one microsecond before,
on and after the lease expiry, the deadline and the availability instant.
Calls that raise are part of the sequence: they must change nothing.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagalease import MemoryStore, NewTask, core
from sagalease.errors import (
    AttemptsExhaustedError,
    InvalidInputError,
    InvalidTransitionError,
    LeaseConflictError,
    SagaLeaseError,
    TerminalTaskError,
)
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.records import (
    Compensation,
    CompensationStatus,
    HistoryEntry,
    TaskSaga,
    TaskState,
    from_us,
)
from sagalease.verification.calls import Chosen, core_args, new_task, store_args, store_form

T0_US = int(
    (datetime(2026, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
    / timedelta(microseconds=1)
)
TASK = "task-1"
WORKERS = ("w1", "w2", "w3")
OPERATOR = "operator"
TTLS = (1, 50, 1_000, 5_000)
# Weighted alphabets (the first entry is what Hypothesis shrinks towards): holder calls
# are frequent while a lease is live, acquisitions and the clock while none is.
LEASED_ACTIONS = (
    "tick",
    *["jump"] * 2,
    "acquire",
    *["heartbeat"] * 3,
    *["release"] * 2,
    *["register_compensation"] * 3,
    *["complete"] * 2,
    *["fail"] * 3,
    *["compensation_applied"] * 6,
    *["compensation_failed"] * 2,
    "reap",
    "annotate",
)
FREE_ACTIONS = (
    *["tick"] * 2,
    *["jump"] * 2,
    *["acquire"] * 6,
    "heartbeat",
    "complete",
    "compensation_applied",
    *["reap"] * 2,
    "annotate",
)
# Once the task has ended every event is tried alike: all but annotate must be refused.
TERMINAL_ACTIONS = (
    "tick",
    "jump",
    "acquire",
    "heartbeat",
    "release",
    "register_compensation",
    "complete",
    "fail",
    "compensation_applied",
    "compensation_failed",
    "reap",
    "annotate",
    "quarantine",
)

Cred = tuple[str, int]

compensations = st.builds(
    Compensation,
    kind=st.sampled_from(["refund", "unlock"]),
    target=st.sampled_from(["order-1", "order-2"]),
    reason=st.sampled_from(["", "undo"]),
)


@dataclass(frozen=True)
class Call:
    """One attempted event: its arguments, the record before, and the outcome."""

    event: str
    args: dict[str, Any]
    now_us: int
    before: TaskSaga
    after: TaskSaga | None
    entry: HistoryEntry | None
    error: SagaLeaseError | None

    @property
    def cred(self) -> Cred:
        """The (owner, token) a holder call presented."""
        return (self.args["owner"], self.args["token"])


@dataclass
class Run:
    """A random event sequence and everything it produced."""

    start: TaskSaga
    task: TaskSaga
    now_us: int
    entries: list[HistoryEntry]
    calls: list[Call] = field(default_factory=list)
    granted: list[Cred] = field(default_factory=list)
    store: MemoryStore | None = None

    @property
    def snapshots(self) -> list[TaskSaga]:
        """The record after creation and after every successful call."""
        return [self.start, *(c.after for c in self.calls if c.after is not None)]

    def call(self, event: str, **args: Any) -> Call:
        """Apply ``event`` to the current record; a raising call must change nothing."""
        before = self.task
        frozen_copy = copy.deepcopy(before)
        store_before = self._store_state()
        try:
            step = core.apply(before, event, self.now_us, **args)
        except SagaLeaseError as exc:
            assert before == frozen_copy
            call = Call(event, args, self.now_us, before, None, None, exc)
        else:
            assert step.entry.seq == len(self.entries) + 1
            self.task = step.task
            self.entries.append(step.entry)
            if event == "acquire":
                assert step.task.lease is not None
                self.granted.append((step.task.lease.owner, step.task.lease.token))
            call = Call(event, args, self.now_us, before, step.task, step.entry, None)
        self.calls.append(call)
        if self.store is not None:
            self._mirror(call, store_before)
        return call

    def _store_state(self) -> tuple[TaskSaga | None, list[HistoryEntry]] | None:
        if self.store is None:
            return None
        return self.store.get(TASK), self.store.history(TASK)

    def _mirror(
        self, call: Call, before: tuple[TaskSaga | None, list[HistoryEntry]] | None
    ) -> None:
        """Make the same call on a MemoryStore: same outcome; a raising call changes nothing."""
        assert self.store is not None
        assert before is not None
        raised: SagaLeaseError | None = None
        if call.event == "reap":
            changed = self.store.reap(now=from_us(call.now_us))
            assert (changed == []) == (call.error is not None)
        else:
            try:
                _store_call(self.store, call.event, call.now_us, call.args)
            except SagaLeaseError as exc:
                raised = exc
            assert type(raised) is type(call.error), (raised, call.error)
        after = self._store_state()
        if call.error is not None:
            assert after == before
        else:
            assert after == (self.task, self.entries)


def _store_call(store: MemoryStore, event: str, now_us: int, args: dict[str, Any]) -> None:
    getattr(store, event)(TASK, **store_form({**args, "now_us": now_us}))


def _credential(data: st.DataObject, run: Run) -> Cred:
    """The current holder (often), a zombie, or an impostor with the current token."""
    task = run.task
    options: list[Cred] = []
    if task.lease is not None:
        options += [(task.lease.owner, task.lease.token)] * 6
    options += run.granted
    options += [(w, task.token) for w in WORKERS]
    options.append((WORKERS[0], task.token + 1))
    return data.draw(st.sampled_from(options))


def _boundaries(run: Run) -> list[int]:
    task = run.task
    points = [task.available_us]
    if task.lease is not None:
        points.append(task.lease.expires_us)
    if task.deadline_us is not None:
        points.append(task.deadline_us)
    return points


def explore(data: st.DataObject, *, store: bool = False, max_steps: int = 40) -> Run:
    """Create a random task and apply a random event sequence to it."""
    max_attempts = data.draw(st.integers(1, 4), label="max_attempts")
    deadline = data.draw(
        st.sampled_from([None, None, 5_000, 20_000]) | st.integers(1, 20_000),
        label="deadline offset",
    )
    available = data.draw(st.sampled_from([None, 0, 1, 1_000]), label="available offset")
    comps = data.draw(
        st.sampled_from([0, 1, 2]).flatmap(
            lambda n: st.lists(compensations, min_size=n, max_size=n)
        ),
        label="compensations",
    )
    chosen = Chosen(
        max_attempts=max_attempts,
        compensations=tuple(comps),
        deadline_us=None if deadline is None else T0_US + deadline,
        available_us=None if available is None else T0_US + available,
    )
    step = core.create(TASK, now_us=T0_US, **core_args("create", chosen))
    run = Run(start=step.task, task=step.task, now_us=T0_US, entries=[step.entry])
    if store:
        run.store = MemoryStore()
        run.store.create(TASK, now=from_us(T0_US), **store_args("create", chosen))
        assert run.store.get(TASK) == run.task
        assert run.store.history(TASK) == run.entries
    tail: int | None = None  # steps still to take once the task has ended
    for _ in range(data.draw(st.integers(10, max_steps), label="steps")):
        if run.task.is_terminal:
            if tail is None:
                tail = data.draw(st.integers(0, 8), label="steps after the end")
            if tail == 0:
                break
            tail -= 1
        lease = run.task.lease
        alphabet: tuple[str, ...]
        if run.task.is_terminal:
            alphabet = TERMINAL_ACTIONS
        elif lease is None:
            alphabet = FREE_ACTIONS
        elif run.now_us < lease.expires_us or data.draw(st.booleans()):
            alphabet = LEASED_ACTIONS  # also once it expired: its holder still tries
        else:
            alphabet = FREE_ACTIONS
        action = data.draw(st.sampled_from(alphabet))
        if action == "annotate" and data.draw(st.integers(0, 3)) == 3:
            action = "quarantine"  # the operator, rarely
        if action == "tick":
            run.now_us += data.draw(st.sampled_from([0, 1, 49, 500, 999, 1_000, 4_000]))
        elif action == "jump":
            target = data.draw(st.sampled_from(_boundaries(run))) + data.draw(
                st.sampled_from([-1, 0, 1])
            )
            run.now_us = max(run.now_us, target)
        elif action == "acquire":
            owner = data.draw(st.sampled_from(WORKERS))
            run.call("acquire", owner=owner, ttl_us=data.draw(st.sampled_from(TTLS)))
        elif action in ("reap",):
            run.call("reap")
        elif action == "annotate":
            run.call("annotate", text="looked at it", by=OPERATOR)
        elif action == "quarantine":
            run.call("quarantine", reason="operator decision", by=OPERATOR)
        else:
            owner, token = _credential(data, run)
            chosen = Chosen(owner, token, reason="boom")
            if action == "heartbeat":
                chosen = replace(chosen, ttl_us=data.draw(st.sampled_from([10_000, 1_000, 1])))
            elif action == "release":
                chosen = replace(
                    chosen,
                    delay_us=data.draw(st.sampled_from([0, 1, 700])),
                    release_reason=data.draw(st.sampled_from([None, "retry 2 of 5: boom"])),
                )
            elif action == "register_compensation":
                chosen = replace(chosen, compensation=data.draw(compensations))
            elif action in ("compensation_applied", "compensation_failed"):
                pending = list(run.task.pending_compensations)
                index = data.draw(
                    st.sampled_from([*pending * 4, -1, 0, len(run.task.compensations)])
                )
                chosen = replace(chosen, index=index, reason="gone")
            run.call(action, **core_args(action, chosen))
    return run


# ---------------------------------------------------------------- INV-1


@given(st.data())
def test_single_holder(data: st.DataObject) -> None:
    """INV-1: every successful holder call used the then-current live lease; at most one
    (owner, token) ever believes it holds a live lease.
    """
    run = explore(data)
    believed: dict[Cred, int] = {}  # what each credential was last told its lease runs until
    for call in run.calls:
        live_believers = {c for c, until in believed.items() if call.now_us < until}
        assert len(live_believers) <= 1
        lease = call.before.lease
        if lease is not None and call.now_us < lease.expires_us:
            assert live_believers == {(lease.owner, lease.token)}
        if call.after is None:
            continue
        if call.event in HOLDER_EVENTS:
            assert lease is not None
            assert call.cred == (lease.owner, lease.token)
            assert call.cred[1] == call.before.token
            assert call.now_us < lease.expires_us
            assert live_believers == {call.cred}
            if call.after.lease is None:
                believed[call.cred] = call.now_us  # the caller knows it gave the lease up
        if call.event == "acquire":
            assert lease is None or call.now_us >= lease.expires_us
            assert not live_believers
        new = call.after.lease
        if new is not None and call.event in ("acquire", "heartbeat"):
            believed[(new.owner, new.token)] = new.expires_us
    for snapshot in run.snapshots:
        if snapshot.lease is not None:
            assert snapshot.lease.token == snapshot.token


# ---------------------------------------------------------------- INV-2


@given(st.data())
def test_tokens_increase_and_stale_tokens_change_nothing(data: st.DataObject) -> None:
    """INV-2: each acquisition adds exactly one to the token, nothing lowers it, and a call
    with another token (or another owner) is refused and changes nothing.
    """
    run = explore(data)
    acquired_tokens = [e.token for e in run.entries if e.event == "acquire"]
    assert acquired_tokens == list(range(1, len(acquired_tokens) + 1))
    for call in run.calls:
        if call.after is not None:
            if call.event == "acquire":
                assert call.after.token == call.before.token + 1
                assert call.after.lease is not None
                assert call.after.lease.token == call.after.token
            else:
                assert call.after.token == call.before.token
        if call.event not in HOLDER_EVENTS:
            continue
        lease = call.before.lease
        current = None if lease is None else (lease.owner, lease.token)
        if call.cred != current:
            assert call.after is None, f"{call.event} with {call.cred} succeeded over {current}"
            state = call.before.state
            if state.is_terminal:
                assert isinstance(call.error, TerminalTaskError)
            else:  # in every non-terminal state, even one without a row for the event
                assert isinstance(call.error, LeaseConflictError)
    # A refused call appended nothing and the next call saw the same record.
    for earlier, later in zip(run.calls, run.calls[1:], strict=False):
        assert later.before is (earlier.after if earlier.after is not None else earlier.before)


# ---------------------------------------------------------------- INV-3


def _same_but_notes(before: TaskSaga, after: TaskSaga) -> bool:
    return replace(after, notes=before.notes, version=before.version) == before


@given(st.data())
def test_terminal_is_absorbing(data: st.DataObject) -> None:
    """INV-3: once terminal, every call but annotate raises TerminalTaskError, and annotate
    only appends a note.
    """
    run = explore(data, max_steps=50)
    ended: TaskSaga | None = None
    for call in run.calls:
        if ended is None:
            if call.after is not None and call.after.is_terminal:
                ended = call.after
            continue
        assert call.before.state is ended.state
        if call.event == "annotate":
            assert call.after is not None
            assert _same_but_notes(call.before, call.after)
            assert call.after.notes[:-1] == call.before.notes
            assert len(call.after.notes) == len(call.before.notes) + 1
        else:
            assert call.after is None
            assert isinstance(call.error, TerminalTaskError), call.error
    if ended is not None:
        assert _same_but_notes(ended, run.task)
        assert run.task.notes[: len(ended.notes)] == ended.notes


# ---------------------------------------------------------------- INV-4


def _compensations_ok(task: TaskSaga) -> None:
    statuses = [c.status for c in task.compensations]
    if task.state is TaskState.FAILED:
        assert statuses == []
    if task.state is TaskState.COMPENSATED:
        assert statuses
        assert all(s is CompensationStatus.APPLIED for s in statuses)
    if task.state is not TaskState.QUARANTINED:
        assert CompensationStatus.FAILED not in statuses


@given(st.data())
def test_no_dropped_compensation(data: st.DataObject) -> None:
    """INV-4: compensations are never dropped or un-done; a failure with pending ones goes to
    COMPENSATING and ends only COMPENSATED or QUARANTINED (still listing them).
    """
    run = explore(data)
    for snapshot in run.snapshots:
        _compensations_ok(snapshot)
    for call in run.calls:
        if call.after is None:
            continue
        old, new = call.before.compensations, call.after.compensations
        assert len(new) >= len(old)
        for a, b in zip(old, new, strict=False):
            assert (a.kind, a.target, a.reason) == (b.kind, b.target, b.reason)
            assert a.status is CompensationStatus.PENDING or b.status is a.status
        left_forward = call.before.state in (TaskState.PENDING, TaskState.RUNNING) and (
            call.after.state in (TaskState.FAILED, TaskState.COMPENSATING)
        )
        if left_forward:
            expected = (
                TaskState.COMPENSATING if call.before.pending_compensations else TaskState.FAILED
            )
            assert call.after.state is expected
        if call.before.state is TaskState.COMPENSATING and call.after.is_terminal:
            assert call.after.state in (TaskState.COMPENSATED, TaskState.QUARANTINED)


# ---------------------------------------------------------------- INV-5


@given(st.data())
def test_attempts_bounded(data: st.DataObject) -> None:
    """INV-5: 0 <= attempts <= max_attempts; only acquire adds one; entering COMPENSATING
    starts the count again; an acquisition beyond the cap is refused.
    """
    run = explore(data)
    for snapshot in run.snapshots:
        assert 0 <= snapshot.attempts <= snapshot.max_attempts
    per_phase = 0
    for call in run.calls:
        if call.event == "acquire" and call.before.attempts >= call.before.max_attempts:
            assert call.after is None
        if call.after is None:
            continue
        entering = (
            call.after.state is TaskState.COMPENSATING
            and call.before.state is not TaskState.COMPENSATING
        )
        if entering:
            assert call.after.attempts == 0
            per_phase = 0
        elif call.event == "acquire":
            assert call.after.attempts == call.before.attempts + 1
            per_phase += 1
            assert per_phase <= call.after.max_attempts
        else:
            assert call.after.attempts == call.before.attempts


# ---------------------------------------------------------------- INV-6

FAIR = "fair-worker"
FAIR_TTL = 1_000
MAX_HEARTBEATS = 3


NO_VALUES = Chosen()


def _must(task: TaskSaga, event: str, now_us: int, chosen: Chosen = NO_VALUES) -> TaskSaga:
    return core.apply(task, event, now_us, **core_args(event, chosen)).task


def fair_finish(data: st.DataObject, task: TaskSaga, now_us: int) -> tuple[TaskSaga, int]:
    """Run a fair schedule from ``task``: the reaper whenever it has work, a stranger's
    lease runs out, and the fair worker claims, heartbeats a bounded number of times and
    then completes, fails, releases, compensates or crashes. Returns the record and the
    number of steps taken (stopping at a terminal state or the bound).
    """
    comps = len(task.compensations)
    bound = (2 * task.max_attempts + 2) * (MAX_HEARTBEATS + comps + 6) + 5
    heartbeats_left = 0
    plan = "complete"
    for steps in range(bound):
        if task.is_terminal:
            return task, steps
        lease = task.lease
        if core.needs_reap(task, now_us):
            task = _must(task, "reap", now_us)
        elif lease is not None and now_us < lease.expires_us:
            if lease.owner != FAIR:
                now_us = lease.expires_us  # a stranger (or zombie-to-be) stops
            elif heartbeats_left > 0:
                heartbeats_left -= 1
                try:
                    task = _must(task, "heartbeat", now_us, Chosen(FAIR, lease.token, FAIR_TTL))
                except LeaseConflictError:
                    heartbeats_left = 0  # capped at the deadline: cannot extend any more
                now_us += FAIR_TTL // 2
            elif plan == "crash":
                now_us = lease.expires_us
            elif plan == "release":
                task = _must(task, "release", now_us, Chosen(FAIR, lease.token))
            elif task.state is TaskState.RUNNING:
                event = "complete" if plan == "complete" else "fail"
                task = _must(task, event, now_us, Chosen(FAIR, lease.token, reason="boom"))
            else:
                index = task.pending_compensations[0]
                event = (
                    "compensation_failed"
                    if plan == "compensation_failed"
                    else "compensation_applied"
                )
                task = _must(
                    task, event, now_us, Chosen(FAIR, lease.token, index=index, reason="gone")
                )
        elif now_us < task.available_us:
            now_us = task.available_us
        else:
            task = _must(task, "acquire", now_us, Chosen(FAIR, ttl_us=FAIR_TTL))
            heartbeats_left = data.draw(st.integers(0, MAX_HEARTBEATS))
            plan = data.draw(
                st.sampled_from(
                    ["complete", "fail", "release", "crash", "compensation_failed", "apply"]
                )
            )
    return task, bound


@given(st.data())
def test_fair_reaper_ends_every_task(data: st.DataObject) -> None:
    """INV-6: from any reachable state a fair worker plus the reaper end the task within a
    bound; a worker that only heartbeats cannot keep a task with a deadline forever.
    """
    run = explore(data)
    task, steps = fair_finish(data, run.task, run.now_us)
    assert task.is_terminal, f"not ended after {steps} fair steps: {task}"

    # A worker that heartbeats forever, against a deadline.
    deadline = T0_US + data.draw(st.integers(1, 20)) * FAIR_TTL
    comps = data.draw(st.lists(compensations, max_size=2))
    task = core.create(
        TASK,
        now_us=T0_US,
        deadline_us=deadline,
        compensations=comps,
        max_attempts=data.draw(st.integers(1, 4)),
    ).task
    now_us = T0_US
    bound = 2 * (deadline - T0_US) // (FAIR_TTL // 2) + 4 * task.max_attempts + 10
    for _ in range(bound):
        if task.state not in (TaskState.PENDING, TaskState.RUNNING):
            break
        lease = task.lease
        if core.needs_reap(task, now_us):
            task = _must(task, "reap", now_us)
        elif lease is not None and now_us < lease.expires_us:
            with contextlib.suppress(LeaseConflictError):  # capped at the deadline
                task = _must(task, "heartbeat", now_us, Chosen("hb", lease.token, FAIR_TTL))
            assert task.lease is not None
            assert task.lease.expires_us <= deadline
        elif lease is None:
            task = _must(task, "acquire", now_us, Chosen("hb", ttl_us=FAIR_TTL))
            assert task.lease is not None
            assert task.lease.expires_us <= deadline
        now_us += data.draw(st.sampled_from([FAIR_TTL // 2, FAIR_TTL - 1, FAIR_TTL, FAIR_TTL + 1]))
    assert task.state not in (TaskState.PENDING, TaskState.RUNNING), task
    task, steps = fair_finish(data, task, now_us)
    assert task.is_terminal, f"not ended after {steps} fair steps: {task}"


# ---------------------------------------------------------------- INV-7


@given(st.data())
def test_history_replays_to_record(data: st.DataObject) -> None:
    """INV-7: one history entry per successful change, numbered 1..n, and replaying any
    prefix of the history rebuilds the record of that moment.
    """
    run = explore(data)
    successes = [c for c in run.calls if c.after is not None]
    assert len(run.entries) == 1 + len(successes)
    assert [e.seq for e in run.entries] == list(range(1, len(run.entries) + 1))
    assert [e.event for e in run.entries[1:]] == [c.event for c in successes]
    for n, snapshot in enumerate(run.snapshots, start=1):
        assert snapshot.version == n
        assert core.replay(run.entries[:n]) == snapshot
    assert core.replay(run.entries) == run.task


# ---------------------------------------------------------------- INV-8


@given(st.data())
def test_failed_calls_change_nothing(data: st.DataObject) -> None:
    """INV-8: a raising call returns nothing and leaves the record, and a MemoryStore's
    record and history, exactly as they were.
    """
    run = explore(data, store=True)
    # The checks run inside Run.call / Run._mirror at every step; here we only make sure
    # the store and the core agree at the end.
    assert run.store is not None
    assert run.store.get(TASK) == run.task
    assert run.store.history(TASK) == run.entries
    for call in run.calls:
        assert (call.after is None) == (call.error is not None)


# ---------------------------------------------------------------- boundaries

D = T0_US + 10_000  # a deadline for the examples


def _leased(ttl: int = 1_000, *, deadline: int | None = None) -> TaskSaga:
    task = core.create(TASK, now_us=T0_US, deadline_us=deadline, max_attempts=3).task
    return _must(task, "acquire", T0_US, Chosen("w1", ttl_us=ttl))


def test_lease_live_until_the_instant_before_expiry() -> None:
    """A lease is live at expires - 1: the holder may heartbeat, another worker may not acquire."""
    task = _leased()
    assert task.lease is not None
    expiry = task.lease.expires_us
    with pytest.raises(LeaseConflictError):
        core.acquire(task, owner="w2", ttl_us=1_000, now_us=expiry - 1)
    step = core.heartbeat(task, owner="w1", token=1, ttl_us=1_000, now_us=expiry - 1)
    assert step.task.lease is not None
    assert step.task.lease.expires_us == expiry - 1 + 1_000


def test_lease_expired_at_expiry() -> None:
    """At expires the lease is expired: every holder call fails, another worker acquires."""
    task = _leased()
    assert task.lease is not None
    expiry = task.lease.expires_us
    holder: dict[str, Any] = {"owner": "w1", "token": 1}
    for event, extra in (
        ("heartbeat", {"ttl_us": 1_000}),
        ("release", {}),
        ("register_compensation", {"compensation": Compensation("refund", "order-1")}),
        ("complete", {}),
        ("fail", {"reason": "boom"}),
    ):
        with pytest.raises(LeaseConflictError):
            core.apply(task, event, expiry, **holder, **extra)
    step = core.acquire(task, owner="w2", ttl_us=1_000, now_us=expiry)
    assert step.task.token == 2
    assert step.task.expirations == 1
    assert step.task.lease is not None
    assert step.task.lease.owner == "w2"
    with pytest.raises(LeaseConflictError):
        core.complete(step.task, owner="w1", token=1, now_us=expiry)
    with pytest.raises(LeaseConflictError):  # the same owner id with a stale token
        core.complete(step.task, owner="w2", token=1, now_us=expiry)


def test_acquire_and_heartbeat_capped_at_the_deadline_in_the_forward_phase() -> None:
    """In RUNNING the lease never reaches past the deadline; a heartbeat that cannot extend
    is refused; acquire at the deadline is refused, one microsecond before it is allowed.
    """
    task = core.create(TASK, now_us=T0_US, deadline_us=D).task
    long = core.acquire(task, owner="w1", ttl_us=50_000, now_us=D - 100).task
    assert long.lease is not None
    assert long.lease.expires_us == D
    with pytest.raises(LeaseConflictError):
        core.heartbeat(long, owner="w1", token=1, ttl_us=50_000, now_us=D - 50)
    short = core.acquire(task, owner="w1", ttl_us=50, now_us=D - 200).task
    beat = core.heartbeat(short, owner="w1", token=1, ttl_us=50_000, now_us=D - 190).task
    assert beat.lease is not None
    assert beat.lease.expires_us == D
    with pytest.raises(InvalidTransitionError):
        core.acquire(task, owner="w1", ttl_us=1_000, now_us=D)
    edge = core.acquire(task, owner="w1", ttl_us=1_000, now_us=D - 1).task
    assert edge.lease is not None
    assert edge.lease.expires_us == D


def test_compensating_leases_are_not_capped_at_the_deadline() -> None:
    """In COMPENSATING (entered by the reaper at the deadline) acquire and heartbeat may
    reach past the old deadline.
    """
    task = core.create(
        TASK, now_us=T0_US, deadline_us=D, compensations=[Compensation("refund", "order-1")]
    ).task
    comp = core.reap(task, now_us=D).task
    assert comp.state is TaskState.COMPENSATING
    assert comp.terminal_reason is None
    leased = core.acquire(comp, owner="w2", ttl_us=5_000, now_us=D + 1).task
    assert leased.lease is not None
    assert leased.lease.expires_us == D + 5_001
    beat = core.heartbeat(leased, owner="w2", token=1, ttl_us=9_000, now_us=D + 2).task
    assert beat.lease is not None
    assert beat.lease.expires_us == D + 9_002


def test_entering_compensating_resets_attempts_and_drops_the_lease() -> None:
    """Fail with a pending compensation: COMPENSATING, no lease, attempts 0, same token,
    and the failing worker's old credential no longer works.
    """
    task = core.create(
        TASK, now_us=T0_US, max_attempts=2, compensations=[Compensation("refund", "order-1")]
    ).task
    task = core.acquire(task, owner="w1", ttl_us=1_000, now_us=T0_US).task
    task = core.release(task, owner="w1", token=1, now_us=T0_US + 1).task
    task = core.acquire(task, owner="w1", ttl_us=1_000, now_us=T0_US + 2).task
    assert task.attempts == 2
    failed = core.fail(task, owner="w1", token=2, reason="boom", now_us=T0_US + 3).task
    assert failed.state is TaskState.COMPENSATING
    assert failed.lease is None
    assert failed.attempts == 0
    assert failed.token == 2
    with pytest.raises(LeaseConflictError):
        core.compensation_applied(failed, owner="w1", token=2, index=0, now_us=T0_US + 4)
    again = core.acquire(failed, owner="w1", ttl_us=1_000, now_us=T0_US + 4).task
    assert (again.token, again.attempts) == (3, 1)


def test_reap_at_the_deadline_enters_compensating_unleased() -> None:
    """The reaper at exactly the deadline fails a leased task with a pending compensation
    into COMPENSATING: lease dropped, attempts 0; one microsecond earlier it has nothing to do.
    """
    task = core.create(
        TASK, now_us=T0_US, deadline_us=D, compensations=[Compensation("refund", "order-1")]
    ).task
    task = core.acquire(task, owner="w1", ttl_us=500, now_us=D - 2_000).task
    task = core.heartbeat(task, owner="w1", token=1, ttl_us=50_000, now_us=D - 1_900).task
    with pytest.raises(InvalidTransitionError):
        core.reap(task, now_us=D - 1)
    reaped = core.reap(task, now_us=D).task
    assert reaped.state is TaskState.COMPENSATING
    assert reaped.lease is None
    assert reaped.attempts == 0


def test_reap_quarantines_when_attempts_are_exhausted() -> None:
    """With no attempt left, an expired lease is reaped to QUARANTINED; acquire is refused."""
    task = core.create(TASK, now_us=T0_US, max_attempts=1).task
    task = core.acquire(task, owner="w1", ttl_us=100, now_us=T0_US).task
    with pytest.raises(AttemptsExhaustedError):
        core.acquire(task, owner="w2", ttl_us=100, now_us=T0_US + 100)
    reaped = core.reap(task, now_us=T0_US + 100).task
    assert reaped.state is TaskState.QUARANTINED
    assert reaped.expirations == 1


# ---------------------------------------------------------------- queues, priorities, reasons

ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=200
).filter(str.strip)
"""Valid ids (queue names, requeue links): 1..200 characters, not blank, no control."""
reasons = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"),
    min_size=1,
    max_size=60,
).filter(str.strip)
"""Valid free text (a release's reason): not blank, no NUL."""
priorities = st.integers(-core.MAX_PRIORITY, core.MAX_PRIORITY)
OLD_CREATE_ARGS = {
    "saga_id",
    "metadata_json",
    "compensations",
    "max_attempts",
    "deadline_us",
    "available_us",
}
"""The arguments of a create entry written before queues and priorities existed."""
DEFAULTS = {"queue": "default", "priority": 0, "requeued_from": None}


@given(queue=ids, priority=priorities, link=st.none() | ids)
def test_create_records_queue_priority_and_link(
    queue: str, priority: int, link: str | None
) -> None:
    """INV-9: core.create keeps the queue, priority and requeue link it is given; the
    store's create and create_many record the same task and entry, and the entry replays.
    """
    chosen = Chosen(queue=queue, priority=priority, requeued_from=link)
    step = core.create(TASK, now_us=T0_US, **core_args("create", chosen))
    assert (step.task.queue, step.task.priority, step.task.requeued_from) == (queue, priority, link)
    assert core.replay([step.entry]) == step.task
    one, many = MemoryStore(), MemoryStore()
    assert one.create(TASK, now=from_us(T0_US), **store_args("create", chosen)) == step.task
    assert many.create_many([new_task(TASK, chosen)], now=from_us(T0_US)) == [step.task]
    assert one.history(TASK) == many.history(TASK) == [step.entry]


@given(
    queue=st.none() | st.just("default") | ids,
    priority=st.none() | st.just(0) | priorities,
    link=st.none() | ids,
)
def test_create_names_only_what_differs_from_the_defaults(
    queue: str | None, priority: int | None, link: str | None
) -> None:
    """INV-7: the create entry's arguments name queue, priority and requeued_from only
    when they differ from the defaults (a default given explicitly is left out too), so
    an entry written before they existed replays to a task in the default queue.
    """
    chosen = Chosen(queue=queue, priority=priority, requeued_from=link)
    step = core.create(TASK, now_us=T0_US, **core_args("create", chosen))
    given_values = {"queue": queue, "priority": priority, "requeued_from": link}
    differing = {k for k, v in given_values.items() if v is not None and v != DEFAULTS[k]}
    assert set(json.loads(step.entry.args_json)) == OLD_CREATE_ARGS | differing
    assert core.replay([step.entry]) == step.task
    old = core.create(TASK, now_us=T0_US).entry
    assert set(json.loads(old.args_json)) == OLD_CREATE_ARGS
    replayed = core.replay([old])
    assert (replayed.queue, replayed.priority, replayed.requeued_from) == ("default", 0, None)


bad_ids = st.one_of(
    st.sampled_from(["", " ", "\t\n", "a\x00b", "a\nb", "q\x1b[0m", "a\ud800"]),
    st.text(min_size=201, max_size=260),
    st.builds(
        lambda s: f"q{s}",
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1),
    ),
    st.integers() | st.none() | st.binary(max_size=3) | st.lists(st.just("q"), max_size=2),
)
bad_priorities = st.one_of(
    st.integers(max_value=-core.MAX_PRIORITY - 1),
    st.integers(min_value=core.MAX_PRIORITY + 1),
    st.booleans(),
    st.floats(allow_nan=False, min_value=-10, max_value=10),
    st.sampled_from(["1", None, b"1"]),
)
bad_reasons = st.one_of(
    st.sampled_from(["", "   ", "\n\t", "a\x00b", "a\ud800"]),
    st.integers(1, 3).map(lambda n: "r" * (core.MAX_TEXT_LENGTH + n)),
    st.integers() | st.binary(max_size=2),
)


@given(data=st.data())
def test_bad_queue_priority_or_reason_changes_nothing(data: st.DataObject) -> None:
    """INV-8: a malformed queue name or requeue link, a priority outside -1000..1000 or
    not an int, a bad release reason: InvalidInputError from the core and from a
    MemoryStore, which stores and changes nothing.
    """
    field_name = data.draw(st.sampled_from(["queue", "priority", "requeued_from", "reason"]))
    strategy = {"priority": bad_priorities, "reason": bad_reasons}.get(field_name, bad_ids)
    bad: Any = data.draw(strategy.filter(lambda v: v is not None or field_name == "priority"))
    bad_kwargs: dict[str, Any] = {field_name: bad}
    store = MemoryStore()
    store.create("keep", now=from_us(T0_US))
    store.acquire("keep", owner="w1", ttl=timedelta(seconds=5), now=from_us(T0_US))
    before = (store.list_tasks(), store.history("keep"))
    if field_name == "reason":
        task = store.get("keep")
        assert task is not None
        with pytest.raises(InvalidInputError):
            core.release(task, owner="w1", token=1, reason=bad, now_us=T0_US + 1)
        with pytest.raises(InvalidInputError):
            store.release("keep", owner="w1", token=1, reason=bad, now=from_us(T0_US + 1))
    else:
        with pytest.raises(InvalidInputError):
            core.create(TASK, now_us=T0_US, **bad_kwargs)
        with pytest.raises(InvalidInputError):
            store.create(TASK, now=from_us(T0_US), **bad_kwargs)
        with pytest.raises(InvalidInputError):
            store.create_many([NewTask("ok"), NewTask(TASK, **bad_kwargs)], now=from_us(T0_US))
    assert (store.list_tasks(), store.history("keep")) == before


@given(reason=st.none() | reasons, delay=st.sampled_from([0, 1, 700]))
def test_release_records_its_reason(reason: str | None, delay: int) -> None:
    """INV-7: release records its reason in the entry (``reason`` and among the arguments)
    only when given; core and store write the same entry, and the history replays.
    """
    chosen = Chosen("w1", 1, delay_us=delay, release_reason=reason)
    created = core.create(TASK, now_us=T0_US)
    leased = core.acquire(created.task, owner="w1", ttl_us=5_000, now_us=T0_US)
    step = core.apply(leased.task, "release", T0_US + 1, **core_args("release", chosen))
    assert step.entry.reason == reason
    assert ("reason" in json.loads(step.entry.args_json)) == (reason is not None)
    assert core.replay([created.entry, leased.entry, step.entry]) == step.task
    store = MemoryStore()
    store.create(TASK, now=from_us(T0_US))
    store.acquire(TASK, owner="w1", ttl=timedelta(microseconds=5_000), now=from_us(T0_US))
    store.release(TASK, now=from_us(T0_US + 1), **store_args("release", chosen))
    assert store.history(TASK)[-1] == step.entry
