"""Mutants of :mod:`sagalease.core`, for showing that the CrossHair check bites.

Each mutant is the real function's body (or the real function followed by a
change to its result) with one deliberate bug. Its driver is
the same as in :mod:`.harness`: its postcondition is the conjunction of the
*real* function's icontract contracts, so the mutant is held to exactly what
``.ci/crosshair`` proves of the core. ``tests/system/test_crosshair.py`` runs
``crosshair check`` on the drivers in :data:`DRIVERS` and expects a
counterexample naming each.
"""

from __future__ import annotations

from dataclasses import replace

import icontract

from sagalease import core
from sagalease.core import (
    Step,
    _add,
    _advance,
    _advance_held,
    _check_duration,
    _expired_lease_note,
    _holder_ctx,
    check_id,
    check_text,
)
from sagalease.errors import SagaLeaseError  # noqa: F401  (named by the ":raises" lines)
from sagalease.lifecycle import GuardContext, resolve
from sagalease.records import Lease, TaskSaga, TaskState

from .harness import (
    CLOCK,
    DEADLINES,
    INSTANTS,
    RAW,
    TTLS,
    N,
    acquire_args,
    create_args,
    holder_args,
    holds,
    plain_args,
)


def acquire_without_token_bump(task: TaskSaga, *, owner: str, ttl_us: int, now_us: int) -> Step:  # noqa: D103
    check_id("owner", owner)
    ttl = _check_duration("ttl", ttl_us, allow_zero=False)
    transition = resolve("acquire", GuardContext(task, now_us))
    expiry = _add(now_us, ttl, task)
    if transition.target is TaskState.RUNNING and task.deadline_us is not None:
        expiry = min(expiry, task.deadline_us)
    token = task.token  # BUG: the real acquire grants ``task.token + 1``
    expired, reason = _expired_lease_note(task, now_us)
    return _advance(
        task,
        transition,
        now_us,
        actor=owner,
        actor_token=token,
        reason=reason,
        args={"owner": owner, "ttl_us": ttl},
        token=token,
        attempts=task.attempts + 1,
        expirations=task.expirations + expired,
        lease=Lease(owner, token, now_us, expiry, now_us),
    )


def complete_ignoring_token(  # noqa: D103
    task: TaskSaga, *, owner: str, token: int, reason: str | None = None, now_us: int
) -> Step:
    if reason is not None:
        check_text("reason", reason)
    # BUG: the holder check is made with the current token, not the caller's,
    # so a zombie holding an older token under the same owner id gets through.
    transition = resolve("complete", _holder_ctx(task, owner, task.token, now_us))
    return _advance(
        task,
        transition,
        now_us,
        actor=owner,
        actor_token=token,
        reason=reason or "completed",
        args={"owner": owner, "token": token, "reason": reason},
    )


def reap_live_lease(task: TaskSaga, *, now_us: int) -> Step:  # noqa: D103
    # BUG: the guards are asked one microsecond late, so a lease that is still
    # live at ``now_us`` (expiring at ``now_us + 1``) is reaped.
    transition = resolve("reap", GuardContext(task, now_us + 1))
    expired, note = _expired_lease_note(task, now_us + 1)
    if transition.target in (TaskState.FAILED, TaskState.COMPENSATING) and (
        task.state is not TaskState.COMPENSATING
    ):
        reason: str | None = "deadline exceeded"
    elif transition.target is TaskState.QUARANTINED:
        reason = f"attempts exhausted ({task.attempts} of {task.max_attempts})"
    else:
        reason = note
    return _advance(
        task,
        transition,
        now_us,
        actor=None,
        actor_token=None,
        reason=reason,
        args={},
        lease=None,
        expirations=task.expirations + expired,
    )


def heartbeat_moving_heartbeat_back(  # noqa: D103
    task: TaskSaga, *, owner: str, token: int, ttl_us: int, now_us: int
) -> Step:
    ttl = _check_duration("ttl", ttl_us, allow_zero=False)
    ctx = _holder_ctx(task, owner, token, now_us)
    expiry = _add(now_us, ttl, task)
    if task.state is TaskState.RUNNING and task.deadline_us is not None:
        expiry = min(expiry, task.deadline_us)
    ctx = replace(ctx, new_expiry_us=expiry)
    transition = resolve("heartbeat", ctx)
    assert task.lease is not None
    return _advance_held(
        ctx,
        transition,
        reason=None,
        args={"ttl_us": ttl},
        # BUG: a caller whose clock lags moves the last heartbeat back (before
        # the lease was acquired): the bug CrossHair found in the real core.
        lease=replace(task.lease, expires_us=expiry, heartbeat_us=now_us),
    )


def fail_forgetting_compensations(  # noqa: D103
    task: TaskSaga, *, owner: str, token: int, reason: str, now_us: int
) -> Step:
    check_text("reason", reason)
    ctx = _holder_ctx(task, owner, token, now_us)
    # BUG: the task fails outright even when compensations are pending.
    transition = replace(resolve("fail", ctx), target=TaskState.FAILED)
    return _advance_held(ctx, transition, reason=reason, args={"reason": reason})


def annotate_touching_updated(task: TaskSaga, *, text: str, by: str, now_us: int) -> Step:  # noqa: D103
    step = RAW["annotate"](task, text=text, by=by, now_us=now_us)
    # BUG: a note moves ``updated_at`` (annotate must change nothing else).
    return Step(replace(step.task, updated_us=now_us), step.entry)


def create_numbering_from_zero(**kwargs: object) -> Step:  # noqa: D103
    step = RAW["create"](**kwargs)
    # BUG: the first history entry is numbered 0 (histories start at 1).
    return Step(step.task, replace(step.entry, seq=0))


# ---------------------------------------------------------------- drivers
# Exactly the drivers of ``harness``, pointed at the mutants: the postcondition
# is the conjunction of the *real* function's contracts.


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, ttl: 0 <= who < 3 and 0 <= ttl < len(TTLS))
@icontract.ensure(
    lambda seed, who, ttl, clock, micros, result: holds(
        core.acquire, acquire_args(seed, who, ttl, clock, micros), result
    )
)
def drive_acquire_without_token_bump(
    seed: int, who: int, ttl: int, clock: int, micros: int
) -> Step:
    """Drive :func:`acquire_without_token_bump`.

    :raises SagaLeaseError: a refusal.
    """
    return acquire_without_token_bump(**acquire_args(seed, who, ttl, clock, micros))


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.ensure(
    lambda seed, who, token, clock, micros, result: holds(
        core.complete, holder_args(seed, who, token, clock, micros), result
    )
)
def drive_complete_ignoring_token(seed: int, who: int, token: int, clock: int, micros: int) -> Step:
    """Drive :func:`complete_ignoring_token`.

    :raises SagaLeaseError: a refusal.
    """
    return complete_ignoring_token(**holder_args(seed, who, token, clock, micros))


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.ensure(
    lambda seed, clock, micros, result: holds(core.reap, plain_args(seed, clock, micros), result)
)
def drive_reap_live_lease(seed: int, clock: int, micros: int) -> Step:
    """Drive :func:`reap_live_lease`.

    :raises SagaLeaseError: a refusal.
    """
    return reap_live_lease(**plain_args(seed, clock, micros))


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.require(lambda ttl: 0 <= ttl < len(TTLS))
@icontract.ensure(
    lambda seed, who, token, ttl, clock, micros, result: holds(
        core.heartbeat,
        {**holder_args(seed, who, token, clock, micros), "ttl_us": TTLS[ttl]},
        result,
    )
)
def drive_heartbeat_moving_heartbeat_back(
    seed: int, who: int, token: int, ttl: int, clock: int, micros: int
) -> Step:
    """Drive :func:`heartbeat_moving_heartbeat_back`.

    :raises SagaLeaseError: a refusal.
    """
    return heartbeat_moving_heartbeat_back(
        **holder_args(seed, who, token, clock, micros), ttl_us=TTLS[ttl]
    )


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.ensure(
    lambda seed, who, token, clock, micros, result: holds(
        core.fail, {**holder_args(seed, who, token, clock, micros), "reason": "boom"}, result
    )
)
def drive_fail_forgetting_compensations(
    seed: int, who: int, token: int, clock: int, micros: int
) -> Step:
    """Drive :func:`fail_forgetting_compensations`.

    :raises SagaLeaseError: a refusal.
    """
    return fail_forgetting_compensations(
        **holder_args(seed, who, token, clock, micros), reason="boom"
    )


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.ensure(
    lambda seed, clock, micros, result: holds(
        core.annotate, {**plain_args(seed, clock, micros), "text": "note", "by": "op"}, result
    )
)
def drive_annotate_touching_updated(seed: int, clock: int, micros: int) -> Step:
    """Drive :func:`annotate_touching_updated`.

    :raises SagaLeaseError: a refusal.
    """
    return annotate_touching_updated(**plain_args(seed, clock, micros), text="note", by="op")


@icontract.require(lambda instant: 0 <= instant < len(INSTANTS))
@icontract.require(lambda attempts, deadline: 0 <= attempts <= 2 and 0 <= deadline < len(DEADLINES))
@icontract.require(lambda comps, delay: 0 <= comps <= 2 and 0 <= delay <= 1)
@icontract.ensure(
    lambda attempts, deadline, comps, delay, instant, result: holds(
        core.create, create_args(attempts, deadline, comps, delay, instant), result
    )
)
def drive_create_numbering_from_zero(
    attempts: int, deadline: int, comps: int, delay: int, instant: int
) -> Step:
    """Drive :func:`create_numbering_from_zero`.

    :raises SagaLeaseError: bad input.
    """
    return create_numbering_from_zero(**create_args(attempts, deadline, comps, delay, instant))


DRIVERS = (
    "drive_acquire_without_token_bump",
    "drive_complete_ignoring_token",
    "drive_reap_live_lease",
    "drive_heartbeat_moving_heartbeat_back",
    "drive_fail_forgetting_compensations",
    "drive_annotate_touching_updated",
    "drive_create_numbering_from_zero",
)
"""What CrossHair checks here; it must report a counterexample in each."""
