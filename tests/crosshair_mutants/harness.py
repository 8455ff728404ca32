"""CrossHair drivers: every event of the core, over reachable records.

CrossHair checks a function's *own* contracts; when a contracted function is
called from the one under analysis, its icontract violations are not reported
(measured here: a core mutant called from a driver went unnoticed). So each
driver here calls the core function *without* its icontract wrapper and
carries, as its own postcondition, the conjunction of that function's real
pre- and postconditions (:func:`holds`, read from icontract at run time, so
they cannot drift from :mod:`sagalease.core`).

Pointed at :mod:`sagalease.core` directly, CrossHair draws arbitrary
``TaskSaga`` values and spends nearly every iteration failing ``well_formed``.
These drivers instead start from *reachable* records (:data:`SEEDS`, built at
import by concrete core calls) and make the rest symbolic and bounded: the
seed, the caller (the holder, another worker, an impostor), the token it
presents, the TTL, and the clock (one of the instants where a seed's guards
change their answer, nudged by -1/0/+1 µs). The bounds make the path space
finite, so "Confirmed over all paths" is a proof over that space
(:data:`DOMAIN`; ``tests/system/test_crosshair.py`` checks that the
preconditions state exactly it and that it reaches every declared transition).
:func:`drive_create` does the same for :func:`sagalease.core.create` from
bounded arguments.

Run with ``--analysis_kind=icontract`` (``.ci/crosshair`` says why).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import icontract

from sagalease import core
from sagalease.core import Step
from sagalease.errors import SagaLeaseError  # noqa: F401  (named by the ":raises" lines)
from sagalease.records import Compensation, TaskSaga

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
S = 1_000_000
TTL = 30 * S
OWNERS = ("w1", "w2", "impostor")
# The instants where the seeds' guards change their answer: creation, the
# delayed availability, lease expiries (30 s; 50 s after the heartbeat; 61 s
# for the takeover), the deadline (60 s), and points between and beyond.
CLOCK = tuple(T0 + s * S for s in (-5, 0, 10, 20, 30, 31, 50, 60, 61, 90))
TTLS = (S, 30 * S, 90 * S)


def _seeds() -> tuple[TaskSaga, ...]:
    comps = (Compensation("refund", "order-1"), Compensation("release", "seat-7"))
    fresh = core.create(
        "t", now_us=T0, compensations=comps, max_attempts=2, deadline_us=T0 + 60 * S
    ).task
    bare = core.create("t", now_us=T0, max_attempts=1).task
    running = core.acquire(fresh, owner="w1", ttl_us=TTL, now_us=T0).task
    beaten = core.heartbeat(running, owner="w1", token=1, ttl_us=TTL, now_us=T0 + 20 * S).task
    taken = core.acquire(running, owner="w2", ttl_us=TTL, now_us=T0 + 31 * S).task
    bare_running = core.acquire(bare, owner="w1", ttl_us=TTL, now_us=T0).task
    delayed = core.release(running, owner="w1", token=1, delay_us=10 * S, now_us=T0 + S).task
    failing = core.fail(running, owner="w1", token=1, reason="boom", now_us=T0 + S).task
    compensating = core.acquire(failing, owner="w2", ttl_us=TTL, now_us=T0 + S).task
    half = core.compensation_applied(compensating, owner="w2", token=2, index=0, now_us=T0 + S).task
    completed = core.complete(bare_running, owner="w1", token=1, now_us=T0 + S).task
    quarantined = core.quarantine(running, reason="op", by="op", now_us=T0 + S).task
    # The reaper's remaining moves: past the deadline with nothing to compensate
    # (pending and running → FAILED), no attempt left (pending and compensating
    # → QUARANTINED).
    doomed = core.create("t", now_us=T0, max_attempts=1, deadline_us=T0 + 60 * S).task
    doomed_running = core.acquire(doomed, owner="w1", ttl_us=TTL, now_us=T0).task
    spent = core.release(bare_running, owner="w1", token=1, now_us=T0 + S).task
    comp_spent = core.acquire(
        core.release(compensating, owner="w2", token=2, now_us=T0 + S).task,
        owner="w1",
        ttl_us=TTL,
        now_us=T0 + S,
    ).task
    # Every terminal state (annotate is allowed in each, nothing else is).
    failed = core.fail(doomed_running, owner="w1", token=1, reason="boom", now_us=T0 + S).task
    compensated = core.compensation_applied(half, owner="w2", token=2, index=1, now_us=T0 + S).task
    return (
        fresh,
        bare,
        running,
        beaten,
        taken,
        bare_running,
        delayed,
        failing,
        compensating,
        half,
        completed,
        quarantined,
        doomed,
        doomed_running,
        spent,
        comp_spent,
        failed,
        compensated,
    )


SEEDS = _seeds()
N = len(SEEDS)

DOMAIN: dict[str, range] = {
    "seed": range(N),
    "who": range(len(OWNERS)),
    "token": range(4),  # 0 (never granted) .. 3 (the highest token a seed holds)
    "ttl": range(len(TTLS)),
    "delay": range(2),  # none, or 10 s
    "index": range(-1, 3),  # one before and one past the two compensations
    "clock": range(len(CLOCK)),
    "micros": range(-1, 2),
    "instant": range(3),
    "attempts": range(3),
    "deadline": range(4),
    "comps": range(3),
}
"""Each driver parameter's bounds, as its preconditions state them
(``tests/system/test_crosshair.py`` checks that they agree and runs every
driver over the whole box concretely)."""


COMPS = (Compensation("refund", "order-1"), Compensation("release", "seat-7"))
INSTANTS = (0, T0, core.MAX_INSTANT_US)
"""The creation instants: the first, an ordinary one, and the last there is."""
DEADLINES = (None, 0, 1, 60 * S)
"""A creation deadline: none, or this long after creation (0: refused)."""


def now_at(clock: int, micros: int) -> int:
    """The clock: one of :data:`CLOCK`, nudged by ``micros`` (-1, 0, +1 µs)."""
    return CLOCK[clock] + micros


def holds(real: Callable[..., Any], kwargs: dict[str, Any], result: Step) -> bool:
    """Whether every pre- and postcondition icontract declares on ``real`` holds
    for a call with ``kwargs`` that returned ``result``.
    """
    checker: Any = icontract._checkers.find_checker(real)
    for group in checker.__preconditions__:
        for pre in group:
            if not pre.condition(**{name: kwargs[name] for name in pre.condition_args}):
                return False
    for post in checker.__postconditions__:
        args = {name: result if name == "result" else kwargs[name] for name in post.condition_args}
        if not post.condition(**args):
            return False
    return True


RAW: dict[str, Callable[..., Step]] = {
    event: inspect.unwrap(fn) for event, fn in {**core._HANDLERS, "create": core.create}.items()
}
"""The core's event functions without their icontract wrappers."""


def acquire_args(seed: int, who: int, ttl: int, clock: int, micros: int) -> dict[str, Any]:
    """Keyword arguments of an acquire call."""
    return {
        "task": SEEDS[seed],
        "owner": OWNERS[who],
        "ttl_us": TTLS[ttl],
        "now_us": now_at(clock, micros),
    }


def holder_args(seed: int, who: int, token: int, clock: int, micros: int) -> dict[str, Any]:
    """Keyword arguments shared by the holder calls."""
    return {
        "task": SEEDS[seed],
        "owner": OWNERS[who],
        "token": token,
        "now_us": now_at(clock, micros),
    }


def create_args(
    attempts: int, deadline: int, comps: int, delay: int, instant: int
) -> dict[str, Any]:
    """Keyword arguments of a create call (``attempts`` 0 is refused; a deadline
    or availability past year 9999 too).
    """
    now = INSTANTS[instant]
    offset = DEADLINES[deadline]
    return {
        "task_id": "t",
        "now_us": now,
        "compensations": COMPS[:comps],
        "max_attempts": attempts,
        "deadline_us": None if offset is None else now + offset,
        "available_us": None if delay == 0 else now + delay * 10 * S,
    }


def plain_args(seed: int, clock: int, micros: int) -> dict[str, Any]:
    """Keyword arguments of reap."""
    return {"task": SEEDS[seed], "now_us": now_at(clock, micros)}


@icontract.require(lambda instant: 0 <= instant < len(INSTANTS))
@icontract.require(lambda attempts, deadline: 0 <= attempts <= 2 and 0 <= deadline < len(DEADLINES))
@icontract.require(lambda comps, delay: 0 <= comps <= len(COMPS) and 0 <= delay <= 1)
@icontract.ensure(
    lambda attempts, deadline, comps, delay, instant, result: holds(
        core.create, create_args(attempts, deadline, comps, delay, instant), result
    )
)
def drive_create(attempts: int, deadline: int, comps: int, delay: int, instant: int) -> Step:
    """:func:`sagalease.core.create` from bounded arguments.

    :raises SagaLeaseError: bad input (InvalidInputError).
    """
    return RAW["create"](**create_args(attempts, deadline, comps, delay, instant))


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, ttl: 0 <= who < 3 and 0 <= ttl < len(TTLS))
@icontract.ensure(
    lambda seed, who, ttl, clock, micros, result: holds(
        core.acquire, acquire_args(seed, who, ttl, clock, micros), result
    )
)
def drive_acquire(seed: int, who: int, ttl: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.acquire` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["acquire"](**acquire_args(seed, who, ttl, clock, micros))


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
def drive_heartbeat(seed: int, who: int, token: int, ttl: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.heartbeat` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["heartbeat"](**holder_args(seed, who, token, clock, micros), ttl_us=TTLS[ttl])


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.require(lambda delay: 0 <= delay <= 1)
@icontract.ensure(
    lambda seed, who, token, delay, clock, micros, result: holds(
        core.release,
        {**holder_args(seed, who, token, clock, micros), "delay_us": delay * 10 * S},
        result,
    )
)
def drive_release(seed: int, who: int, token: int, delay: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.release` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["release"](**holder_args(seed, who, token, clock, micros), delay_us=delay * 10 * S)


UNDO = Compensation("undo", "x")


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.ensure(
    lambda seed, who, token, clock, micros, result: holds(
        core.register_compensation,
        {**holder_args(seed, who, token, clock, micros), "compensation": UNDO},
        result,
    )
)
def drive_register_compensation(seed: int, who: int, token: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.register_compensation` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["register_compensation"](
        **holder_args(seed, who, token, clock, micros), compensation=UNDO
    )


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.ensure(
    lambda seed, who, token, clock, micros, result: holds(
        core.complete, holder_args(seed, who, token, clock, micros), result
    )
)
def drive_complete(seed: int, who: int, token: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.complete` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["complete"](**holder_args(seed, who, token, clock, micros))


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.ensure(
    lambda seed, who, token, clock, micros, result: holds(
        core.fail, {**holder_args(seed, who, token, clock, micros), "reason": "boom"}, result
    )
)
def drive_fail(seed: int, who: int, token: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.fail` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["fail"](**holder_args(seed, who, token, clock, micros), reason="boom")


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.require(lambda index: -1 <= index <= 2)
@icontract.ensure(
    lambda seed, who, token, index, clock, micros, result: holds(
        core.compensation_applied,
        {**holder_args(seed, who, token, clock, micros), "index": index},
        result,
    )
)
def drive_compensation_applied(
    seed: int, who: int, token: int, index: int, clock: int, micros: int
) -> Step:
    """:func:`sagalease.core.compensation_applied` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["compensation_applied"](**holder_args(seed, who, token, clock, micros), index=index)


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.require(lambda who, token: 0 <= who < 3 and 0 <= token <= 3)
@icontract.require(lambda index: -1 <= index <= 2)
@icontract.ensure(
    lambda seed, who, token, index, clock, micros, result: holds(
        core.compensation_failed,
        {**holder_args(seed, who, token, clock, micros), "index": index, "reason": "gone"},
        result,
    )
)
def drive_compensation_failed(
    seed: int, who: int, token: int, index: int, clock: int, micros: int
) -> Step:
    """:func:`sagalease.core.compensation_failed` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["compensation_failed"](
        **holder_args(seed, who, token, clock, micros), index=index, reason="gone"
    )


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.ensure(
    lambda seed, clock, micros, result: holds(
        core.quarantine, {**plain_args(seed, clock, micros), "reason": "op", "by": "op"}, result
    )
)
def drive_quarantine(seed: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.quarantine` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["quarantine"](**plain_args(seed, clock, micros), reason="op", by="op")


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.ensure(
    lambda seed, clock, micros, result: holds(core.reap, plain_args(seed, clock, micros), result)
)
def drive_reap(seed: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.reap` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["reap"](**plain_args(seed, clock, micros))


@icontract.require(lambda seed: 0 <= seed < N)
@icontract.require(lambda clock, micros: 0 <= clock < len(CLOCK) and -1 <= micros <= 1)
@icontract.ensure(
    lambda seed, clock, micros, result: holds(
        core.annotate, {**plain_args(seed, clock, micros), "text": "note", "by": "op"}, result
    )
)
def drive_annotate(seed: int, clock: int, micros: int) -> Step:
    """:func:`sagalease.core.annotate` from a reachable record.

    :raises SagaLeaseError: a refusal (the lifecycle's typed errors).
    """
    return RAW["annotate"](**plain_args(seed, clock, micros), text="note", by="op")
