"""Mutants of :mod:`sagalease.core`, for showing that the CrossHair check bites.

Each mutant is the real function's body with one deliberate bug. Its driver is
the same as in :mod:`.harness`: its postcondition is the conjunction of the
*real* function's icontract contracts, so the mutant is held to exactly what
``.ci/crosshair`` proves of the core. ``tests/system/test_crosshair.py`` runs
``crosshair check`` on the drivers in :data:`DRIVERS` and expects a
counterexample naming each.
"""

from __future__ import annotations

import icontract

from sagalease import core
from sagalease.core import (
    Step,
    _add,
    _advance,
    _check_duration,
    _expired_lease_note,
    _holder_ctx,
    check_id,
    check_text,
)
from sagalease.errors import SagaLeaseError  # noqa: F401  (named by the ":raises" lines)
from sagalease.lifecycle import GuardContext, resolve
from sagalease.records import Lease, TaskSaga, TaskState

from .harness import CLOCK, TTLS, N, acquire_args, holder_args, holds, plain_args


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


DRIVERS = (
    "drive_acquire_without_token_bump",
    "drive_complete_ignoring_token",
    "drive_reap_live_lease",
)
"""What CrossHair checks here; it must report a counterexample in each."""
