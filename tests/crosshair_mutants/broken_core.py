"""Mutants of :mod:`sagalease.core`, each carrying the real function's contracts.

Each mutant is the real function's body with one deliberate bug; its pre- and
postconditions are copied from the real function at import
(:func:`same_contracts`), so they cannot drift from what ``.ci/crosshair``
checks. ``tests/test_crosshair.py`` runs ``crosshair check`` on this module and
expects a counterexample naming every mutant listed in :data:`MUTANTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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
    well_formed,
)
from sagalease.errors import SagaLeaseError  # noqa: F401  (the copied ":raises" docstrings name it)
from sagalease.lifecycle import GuardContext, resolve
from sagalease.records import CompensationStatus, Lease, TaskSaga, TaskState

from .harness import _owner, _task, instant

F = TypeVar("F", bound=Callable[..., Any])


def same_contracts(real: Callable[..., Any]) -> Callable[[F], F]:
    """Give the decorated function ``real``'s icontract pre/postconditions and
    docstring (whose ``:raises SagaLeaseError:`` line tells CrossHair which
    exceptions are refusals rather than bugs).
    """
    checker: Any = icontract._checkers.find_checker(real)
    assert checker is not None, f"{real.__name__} has no contracts"

    def decorate(fn: F) -> F:
        fn.__doc__ = real.__doc__
        wrapped: Any = fn
        for post in checker.__postconditions__:
            wrapped = icontract.ensure(post.condition, post.description)(wrapped)
        (conjunction,) = checker.__preconditions__
        for pre in conjunction:
            wrapped = icontract.require(pre.condition, pre.description)(wrapped)
        result: F = wrapped
        return result

    return decorate


@same_contracts(core.acquire)
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


@same_contracts(core.complete)
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


@same_contracts(core.reap)
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
# CrossHair is pointed at these (see ``harness``): a record built well-formed,
# then the mutant, whose copied postconditions CrossHair enforces.


@icontract.ensure(lambda result: well_formed(result.task))
def drive_acquire_without_token_bump(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    ttl: int,
    now: int,
) -> Step:
    """Drive :func:`acquire_without_token_bump`.

    :raises SagaLeaseError: a refusal.
    """
    task = _task(state, n, leased, c0, c1)
    return acquire_without_token_bump(
        task, owner=_owner(same_owner), ttl_us=1 + abs(ttl), now_us=instant(now)
    )


@icontract.ensure(lambda result: well_formed(result.task))
def drive_complete_ignoring_token(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    same_owner: bool,
    token: int,
    now: int,
) -> Step:
    """Drive :func:`complete_ignoring_token`.

    :raises SagaLeaseError: a refusal.
    """
    task = _task(state, n, leased, c0, c1)
    return complete_ignoring_token(task, owner=_owner(same_owner), token=token, now_us=instant(now))


@icontract.ensure(lambda result: well_formed(result.task))
def drive_reap_live_lease(
    state: TaskState,
    n: tuple[int, int, int, int, int, int, int | None],
    leased: bool,
    c0: CompensationStatus | None,
    c1: CompensationStatus | None,
    now: int,
) -> Step:
    """Drive :func:`reap_live_lease`.

    :raises SagaLeaseError: a refusal.
    """
    task = _task(state, n, leased, c0, c1)
    return reap_live_lease(task, now_us=instant(now))


DRIVERS = (
    "drive_acquire_without_token_bump",
    "drive_complete_ignoring_token",
    "drive_reap_live_lease",
)
"""What CrossHair checks here; it must report a counterexample in each."""
