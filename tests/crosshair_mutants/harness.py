"""CrossHair drivers: the core's contracts checked over well-formed records.

Pointed at :mod:`sagalease.core` directly, CrossHair draws arbitrary
``TaskSaga`` values and spends nearly every iteration failing the
``well_formed`` precondition (about 20 comparisons that must all come out
right). These drivers instead *build* a well-formed record from a handful of
integers, enums and booleans (``abs``/``min`` keep every field in range, so
no branch is wasted) and call the real, icontract-wrapped core function:
CrossHair then enforces that function's postconditions on every path it runs
(a violation is reported as a counterexample naming the driver). The scope is
bounded on purpose: fixed ids (``"t"``, owners ``"a"``/``"b"``), at most two
compensations; integers (instants, tokens, attempts) are unbounded symbols.

``broken_core`` uses the same builder for its mutants.
"""

from __future__ import annotations

import icontract

from sagalease import core
from sagalease.core import MAX_INSTANT_US, Step, well_formed
from sagalease.errors import SagaLeaseError  # noqa: F401  (named by the ":raises" lines)
from sagalease.records import Compensation, CompensationStatus, Lease, TaskSaga, TaskState

_LEASING = (TaskState.RUNNING, TaskState.COMPENSATING)


def instant(raw: int) -> int:
    """An instant in 1970..9999 from any integer."""
    return min(abs(raw), MAX_INSTANT_US)


def _status(state: TaskState, status: CompensationStatus) -> CompensationStatus:
    if state is TaskState.COMPENSATED:
        return CompensationStatus.APPLIED
    if status is CompensationStatus.FAILED and state is not TaskState.QUARANTINED:
        return CompensationStatus.APPLIED
    if status is CompensationStatus.PENDING and state in (TaskState.FAILED, TaskState.COMPENSATED):
        return CompensationStatus.APPLIED
    return status


def build_task(
    state: TaskState,
    *,
    attempts: int,
    spare: int,
    extra_token: int,
    leased: bool,
    acquired: int,
    life: int,
    available: int,
    deadline: int | None,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
) -> TaskSaga:
    """A record that satisfies :func:`sagalease.core.well_formed` by construction."""
    used = min(abs(attempts), core.MAX_ATTEMPTS)
    token = used + abs(extra_token)
    lease = None
    if state is TaskState.RUNNING or (state is TaskState.COMPENSATING and leased):
        start = min(abs(acquired), MAX_INSTANT_US - 1)
        lease = Lease("a", token, start, min(start + 1 + abs(life), MAX_INSTANT_US), start)
    comps: tuple[Compensation, ...] = ()
    if state is not TaskState.FAILED:
        comps = tuple(
            Compensation("k", "x", status=_status(state, s)) for s in (c0, c1) if s is not None
        )
    return TaskSaga(
        "t",
        state,
        0,
        0,
        compensations=comps,
        lease=lease,
        token=token,
        attempts=used,
        max_attempts=used + min(abs(spare), 3),
        available_us=instant(available),
        deadline_us=None if deadline is None else instant(deadline),
        terminal_reason="r" if state.is_terminal else None,
    )


def _owner(same: bool) -> str:
    return "a" if same else "b"


@icontract.ensure(lambda result: well_formed(result.task))
def drive_acquire(
    state: TaskState,
    attempts: int,
    spare: int,
    extra_token: int,
    leased: bool,
    acquired: int,
    life: int,
    available: int,
    deadline: int | None,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    ttl: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.acquire` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = build_task(
        state, attempts=attempts, spare=spare, extra_token=extra_token, leased=leased,
        acquired=acquired, life=life, available=available, deadline=deadline, c0=c0, c1=c1,
    )  # fmt: skip
    return core.acquire(task, owner=_owner(same_owner), ttl_us=1 + abs(ttl), now_us=instant(now))


def _task(
    state: TaskState, n: tuple[int, int, int, int, int, int, int | None], leased: bool,
    c0: CompensationStatus | None, c1: CompensationStatus | None,
) -> TaskSaga:  # fmt: skip
    attempts, spare, extra_token, acquired, life, available, deadline = n
    return build_task(
        state, attempts=attempts, spare=spare, extra_token=extra_token, leased=leased,
        acquired=acquired, life=life, available=available, deadline=deadline, c0=c0, c1=c1,
    )  # fmt: skip


@icontract.ensure(lambda result: well_formed(result.task))
def drive_heartbeat(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    ttl: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.heartbeat` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.heartbeat(
        task, owner=_owner(same_owner), token=token, ttl_us=1 + abs(ttl), now_us=instant(now)
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_release(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    delay: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.release` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.release(
        task, owner=_owner(same_owner), token=token, delay_us=abs(delay), now_us=instant(now)
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_register_compensation(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.register_compensation` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.register_compensation(
        task,
        owner=_owner(same_owner),
        token=token,
        compensation=Compensation("k", "y"),
        now_us=instant(now),
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_complete(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.complete` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.complete(task, owner=_owner(same_owner), token=token, now_us=instant(now))


@icontract.ensure(lambda result: well_formed(result.task))
def drive_fail(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.fail` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.fail(
        task, owner=_owner(same_owner), token=token, reason="boom", now_us=instant(now)
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_compensation_applied(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    index: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.compensation_applied` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.compensation_applied(
        task, owner=_owner(same_owner), token=token, index=index, now_us=instant(now)
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_compensation_failed(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    index: int,
    now: int,
) -> Step:
    """:func:`sagalease.core.compensation_failed` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.compensation_failed(
        task, owner=_owner(same_owner), token=token, index=index, reason="x", now_us=instant(now)
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_quarantine(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    now: int,
) -> Step:
    """:func:`sagalease.core.quarantine` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.quarantine(task, reason="op", by="o", now_us=instant(now))


@icontract.ensure(lambda result: well_formed(result.task))
def drive_reap(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    now: int,
) -> Step:
    """:func:`sagalease.core.reap` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.reap(task, now_us=instant(now))


@icontract.ensure(lambda result: well_formed(result.task))
def drive_annotate(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    now: int,
) -> Step:
    """:func:`sagalease.core.annotate` on a built record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    task = _task(state, n, leased, c0, c1)
    return core.annotate(task, text="n", by="o", now_us=instant(now))
