"""The pure core: one function per lifecycle event.

Each function takes a :class:`TaskSaga` (or nothing, for :func:`create`), the
event's arguments with times as integer UTC microseconds, and returns a
:class:`Step`: the new record and the one :class:`HistoryEntry` that records
the change. It never mutates anything, never reads a clock, and raises the
typed error (:mod:`sagalease.errors`) when the lifecycle (:data:`sagalease.lifecycle.CHART`)
refuses the event. Stores only load a record, call one of these, and write
the result atomically.

The contracts (icontract) state the invariants each function keeps; CrossHair
checks them over all paths (``crosshair check sagalease.core``).
"""

from __future__ import annotations

import inspect
import json
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar, cast

import icontract

from sagalease.errors import (
    InvalidInputError,
    SagaLeaseError,
)
from sagalease.lifecycle import (
    EVENTS,
    HOLDER_EVENTS,
    LEASE_STATES,
    CompiledTransition,
    GuardContext,
    resolve,
)
from sagalease.records import (
    Compensation,
    CompensationStatus,
    HistoryEntry,
    Lease,
    Note,
    TaskSaga,
    TaskState,
)

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_COMPENSATIONS",
    "MAX_ID_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_PRIORITY",
    "MAX_TEXT_LENGTH",
    "Step",
    "acquire",
    "annotate",
    "apply",
    "check_queues",
    "compensation_applied",
    "compensation_failed",
    "complete",
    "create",
    "dump_args",
    "encode_metadata",
    "fail",
    "handlers",
    "heartbeat",
    "needs_reap",
    "quarantine",
    "reap",
    "register_compensation",
    "release",
    "replay",
    "well_formed",
]

MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 10_000
MAX_METADATA_BYTES = 64 * 1024
MAX_COMPENSATIONS = 256
MAX_ATTEMPTS = 1_000
MAX_PRIORITY = 1_000  # priorities lie in -MAX_PRIORITY..MAX_PRIORITY; higher runs first
DEFAULT_QUEUE = "default"
MAX_INSTANT_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


class Step(NamedTuple):
    """The result of one event: the new record and its history entry."""

    task: TaskSaga
    entry: HistoryEntry


# ---------------------------------------------------------------- invariants


def well_formed(task: TaskSaga) -> bool:
    """The per-record invariants (INV-3..5 and the lease/state coupling).

    A lease only in RUNNING (always leased) or COMPENSATING (maybe);
    the lease carries the current token; ``0 <= attempts <= max_attempts``;
    ``attempts <= token``; FAILED has no compensation, COMPENSATED has all
    applied, no terminal state but QUARANTINED and COMPLETED keeps one pending,
    a failed compensation only in QUARANTINED; a terminal task has a reason.
    """
    lease = task.lease
    statuses = [c.status for c in task.compensations]
    state = task.state
    return (
        (lease is None or (state in LEASE_STATES and lease.token == task.token))
        and (state is not TaskState.RUNNING or lease is not None)
        and (lease is None or lease.acquired_us <= lease.heartbeat_us < lease.expires_us)
        and 0 <= task.attempts <= task.max_attempts
        and task.attempts <= task.token
        and task.expirations >= 0
        and task.version >= 1
        and (state is not TaskState.FAILED or not statuses)
        and (
            state is not TaskState.COMPENSATED
            or all(s is CompensationStatus.APPLIED for s in statuses)
        )
        and (
            state not in (TaskState.FAILED, TaskState.COMPENSATED)
            or CompensationStatus.PENDING not in statuses
        )
        and (state is TaskState.QUARANTINED or CompensationStatus.FAILED not in statuses)
        and (not state.is_terminal or task.terminal_reason is not None)
        and (state.is_terminal or task.terminal_reason is None)
    )


def _recorded(task: TaskSaga, step: Step, event: str) -> bool:
    """INV-7: one entry, numbered after the last, naming the event and states."""
    return (
        step.entry.seq == task.version + 1
        and step.task.version == step.entry.seq
        and step.entry.task_id == task.task_id == step.task.task_id
        and step.entry.event == event
        and step.entry.from_state is task.state
        and step.entry.to_state is step.task.state
    )


def _unchanged_identity(task: TaskSaga, new: TaskSaga) -> bool:
    """What no event changes."""
    return (
        new.task_id == task.task_id
        and new.saga_id == task.saga_id
        and new.queue == task.queue
        and new.priority == task.priority
        and new.requeued_from == task.requeued_from
        and new.metadata_json == task.metadata_json
        and new.max_attempts == task.max_attempts
        and new.deadline_us == task.deadline_us
        and new.created_us == task.created_us
        and new.notes == task.notes
        and new.token >= task.token
        and new.expirations >= task.expirations
        and len(new.compensations) >= len(task.compensations)
    )


def _held(task: TaskSaga, owner: str, token: int, now_us: int) -> bool:
    """INV-1/2: the caller held the live lease with the current token."""
    lease = task.lease
    return (
        lease is not None
        and lease.owner == owner
        and lease.token == token == task.token
        and now_us < lease.expires_us
    )


def _in_range(task: TaskSaga, now_us: int) -> bool:
    """What the boundary guarantees about instants (``clock.to_us``, :func:`create`,
    ``_add``): ``now`` and the instants the guards print lie in 1970..9999, so that
    turning them back into datetimes (error messages) cannot overflow.
    """
    lease = task.lease
    return (
        0 <= now_us <= MAX_INSTANT_US
        and 0 <= task.available_us <= MAX_INSTANT_US
        and (task.deadline_us is None or 0 <= task.deadline_us <= MAX_INSTANT_US)
        and (lease is None or 0 <= lease.expires_us <= MAX_INSTANT_US)
    )


# ---------------------------------------------------------------- input checks


def _bad(
    message: str, task_id: str | None = None, task: TaskSaga | None = None
) -> InvalidInputError:
    return InvalidInputError(
        message,
        task_id=task.task_id if task is not None else task_id,
        state=task.state if task is not None else None,
    )


def check_text(
    name: str,
    value: object,
    *,
    max_length: int = MAX_TEXT_LENGTH,
    identifier: bool = False,
    required: bool = True,
) -> str:
    """``value`` if it is an acceptable string, else :class:`InvalidInputError`.

    Identifiers are 1..``MAX_ID_LENGTH`` characters without control characters;
    free text may hold newlines and tabs but no NUL; no string may hold a lone
    surrogate (it could not be stored as UTF-8).
    """
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string, not {type(value).__name__}")
    if (
        value.isascii()
        and value.isprintable()
        and 0 < len(value) <= max_length
        and (not required or value.strip())
    ):
        return value  # the common case: nothing below can object
    if required and not value.strip():
        raise _bad(f"{name} must not be empty")
    if len(value) > max_length:
        raise _bad(f"{name} is {len(value)} characters long; the limit is {max_length}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{name} is not valid Unicode (lone surrogate)") from None
    if identifier:
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise _bad(f"{name} must not contain control characters")
    elif "\x00" in value:
        raise _bad(f"{name} must not contain NUL characters")
    return value


def check_id(name: str, value: object) -> str:
    """A task, saga, owner or author id."""
    return check_text(name, value, max_length=MAX_ID_LENGTH, identifier=True)


def check_priority(value: object, task_id: str | None = None) -> int:
    """A priority: an integer in ``-MAX_PRIORITY..MAX_PRIORITY`` (higher runs first)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"priority must be an integer, not {type(value).__name__}", task_id)
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise _bad(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}", task_id)
    return value


def check_queues(queues: object) -> tuple[str, ...] | None:
    """The queues a claim may take from, as a sorted tuple of distinct names
    (``None``: every queue; a single string: that one queue). An empty
    collection or a bad name: :class:`InvalidInputError`.
    """
    if queues is None:
        return None
    if isinstance(queues, str):
        return (check_id("queue", queues),)
    if isinstance(queues, bytes) or not isinstance(queues, (list, tuple, set, frozenset)):
        raise _bad("queues must be None, a queue name or a collection of queue names")
    names = tuple(sorted({check_id("queue", q) for q in queues}))
    if not names:
        raise _bad("queues must name at least one queue (None: every queue)")
    return names


def check_instant(name: str, value: object) -> int:
    """An instant in microseconds within the datetime range."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{name} must be an integer instant")
    if not 0 <= value <= MAX_INSTANT_US:
        raise _bad(f"{name} is out of range")
    return value


def encode_metadata(metadata: object) -> str:
    """Canonical JSON text of a metadata object, or :class:`InvalidInputError`."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise _bad(f"metadata must be a JSON object (a mapping), not {type(metadata).__name__}")
    try:
        text = json.dumps(
            metadata, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise _bad(f"metadata is not JSON: {exc}") from None
    if json.loads(text) != metadata:
        raise _bad("metadata must be plain JSON: string keys, lists not tuples")
    if "\\u0000" in text:
        raise _bad("metadata must not contain NUL characters")
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise _bad(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return text


def check_compensation(value: object) -> Compensation:
    """A new (pending) compensation."""
    if not isinstance(value, Compensation):
        raise _bad(f"compensation must be a Compensation, not {type(value).__name__}")
    check_text("compensation kind", value.kind, max_length=MAX_ID_LENGTH, identifier=True)
    check_text("compensation target", value.target, max_length=MAX_TEXT_LENGTH)
    check_text("compensation reason", value.reason, required=False)
    if value.status is not CompensationStatus.PENDING:
        raise _bad("a new compensation must be pending")
    return value


def _check_duration(name: str, value: object, *, allow_zero: bool) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{name} must be an integer number of microseconds")
    if value < 0 or (value == 0 and not allow_zero):
        raise _bad(f"{name} must be {'non-negative' if allow_zero else 'positive'}")
    if value > MAX_INSTANT_US:
        raise _bad(f"{name} is out of range")
    return value


def _add(now_us: int, duration_us: int, task: TaskSaga) -> int:
    total = now_us + duration_us
    if total > MAX_INSTANT_US:
        raise _bad("the resulting instant is past year 9999", task=task)
    return total


# ---------------------------------------------------------------- helpers


_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""``json.dumps`` with these options builds an encoder per call; this one is built once."""


def dump_args(args: Mapping[str, Any]) -> str:
    """A history entry's ``args_json``: canonical JSON (sorted keys, no spaces)."""
    return _CANONICAL.encode(args)


def _advance(
    task: TaskSaga,
    transition: CompiledTransition,
    now_us: int,
    *,
    actor: str | None,
    actor_token: int | None,
    reason: str | None,
    args: Mapping[str, Any],
    **changes: Any,
) -> Step:
    """Move ``task`` along ``transition`` with the effects every move shares:
    a terminal target drops the lease and records the reason; entering
    PENDING drops the lease; entering COMPENSATING from the forward phase
    drops the lease and starts a fresh attempt count.
    """
    target = transition.target
    if target.is_terminal:
        changes["lease"] = None
        changes["terminal_reason"] = reason or target.value
    elif target is TaskState.PENDING:
        changes["lease"] = None
    elif target is TaskState.COMPENSATING and task.state is not TaskState.COMPENSATING:
        changes["lease"] = None
        changes["attempts"] = 0
        changes["available_us"] = now_us
    seq = task.version + 1
    new = replace(task, state=target, updated_us=now_us, version=seq, **changes)
    entry = HistoryEntry(
        seq=seq,
        task_id=task.task_id,
        event=transition.event,
        from_state=task.state,
        to_state=target,
        at_us=now_us,
        owner=actor,
        token=actor_token,
        reason=reason,
        args_json=dump_args(args),
    )
    return Step(new, entry)


def _holder_ctx(task: TaskSaga, owner: object, token: object, now_us: int) -> GuardContext:
    if not isinstance(token, int) or isinstance(token, bool):
        raise _bad("token must be an integer", task=task)
    return GuardContext(task, now_us, owner=check_id("owner", owner), token=token)


def _advance_held(
    ctx: GuardContext,
    transition: CompiledTransition,
    *,
    reason: str | None,
    args: Mapping[str, Any],
    **changes: Any,
) -> Step:
    """:func:`_advance` for a holder call (``ctx`` from :func:`_holder_ctx`): the
    caller is the actor, and its owner and token are recorded with ``args``.
    """
    return _advance(
        ctx.task,
        transition,
        ctx.now_us,
        actor=ctx.owner,
        actor_token=ctx.token,
        reason=reason,
        args={"owner": ctx.owner, "token": ctx.token, **args},
        **changes,
    )


def _expired_lease_note(task: TaskSaga, now_us: int) -> tuple[int, str | None]:
    lease = task.lease
    if lease is not None and now_us >= lease.expires_us:
        return 1, f"lease of {lease.owner!r} (token {lease.token}) expired"
    return 0, None


# ---------------------------------------------------------------- contracts


_Event = TypeVar("_Event", bound=Callable[..., Step])


def _ends_well_formed(result: Step) -> bool:
    """The new record keeps the per-record invariants."""
    return well_formed(result.task)


def _event(name: str) -> Callable[[_Event], _Event]:
    """The contracts every event function after :func:`create` shares: from a
    well-formed record with instants in range to a well-formed record and the one
    history entry recording ``name``; a holder call (:data:`HOLDER_EVENTS`) was
    made by the live holder with the current token. The function's own contracts
    are written below this decorator.

    The conditions are named functions, not lambdas: icontract reads a lambda's
    text back from an ``@`` decorator line to word a violation.
    """

    def recorded(task: TaskSaga, result: Step) -> bool:
        return _recorded(task, result, name)

    recorded.__name__ = recorded.__qualname__ = f"_recorded_as_{name}"

    def decorate(fn: _Event) -> _Event:
        checked: Any = fn
        if name in HOLDER_EVENTS:
            checked = icontract.ensure(_held)(checked)
        checked = icontract.ensure(recorded)(checked)
        checked = icontract.ensure(_ends_well_formed)(checked)
        checked = icontract.require(_in_range)(checked)
        checked = icontract.require(well_formed)(checked)
        return cast(_Event, checked)

    return decorate


# ---------------------------------------------------------------- events


@icontract.ensure(_ends_well_formed)
@icontract.ensure(lambda result: result.task.state is TaskState.PENDING)
@icontract.ensure(lambda result: result.entry.seq == 1 and result.task.version == 1)
def create(
    task_id: str,
    *,
    now_us: int,
    saga_id: str | None = None,
    metadata_json: str = "{}",
    compensations: Sequence[Compensation] = (),
    max_attempts: int = 5,
    deadline_us: int | None = None,
    available_us: int | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    requeued_from: str | None = None,
) -> Step:
    """A new PENDING task. Bad input: :class:`InvalidInputError`.

    The entry's arguments name ``queue``, ``priority`` and ``requeued_from``
    only when they differ from the defaults, so that histories written before
    they existed replay unchanged.

    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_id("task_id", task_id)
    check_instant("now", now_us)
    if saga_id is not None:
        check_id("saga_id", saga_id)
    check_id("queue", queue)
    check_priority(priority, task_id)
    if requeued_from is not None:
        check_id("requeued_from", requeued_from)
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool):
        raise _bad("max_attempts must be an integer", task_id)
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise _bad(f"max_attempts must be between 1 and {MAX_ATTEMPTS}", task_id)
    comps = tuple(compensations)
    if len(comps) > MAX_COMPENSATIONS:
        raise _bad(f"at most {MAX_COMPENSATIONS} compensations", task_id)
    for comp in comps:
        check_compensation(comp)
    if deadline_us is not None:
        check_instant("deadline", deadline_us)
        if deadline_us <= now_us:
            raise _bad("deadline must be later than now", task_id)
    available = now_us if available_us is None else check_instant("available_at", available_us)
    # Keyword constructors of the record and its first entry: the same shape as
    # _advance's entry, other fields.
    task = TaskSaga(
        task_id=task_id,
        state=TaskState.PENDING,
        created_us=now_us,
        updated_us=now_us,
        saga_id=saga_id,
        queue=queue,
        priority=priority,
        requeued_from=requeued_from,
        metadata_json=metadata_json,
        compensations=comps,
        max_attempts=max_attempts,
        available_us=available,
        deadline_us=deadline_us,
    )
    args: dict[str, Any] = {
        "saga_id": saga_id,
        "metadata_json": metadata_json,
        "compensations": [c.to_json() for c in comps],
        "max_attempts": max_attempts,
        "deadline_us": deadline_us,
        "available_us": available,
    }
    if queue != DEFAULT_QUEUE:
        args["queue"] = queue
    if priority:
        args["priority"] = priority
    if requeued_from is not None:
        args["requeued_from"] = requeued_from
    entry = HistoryEntry(
        seq=1,
        task_id=task_id,
        event="create",
        from_state=None,
        to_state=TaskState.PENDING,
        at_us=now_us,
        args_json=dump_args(args),
    )
    return Step(task, entry)


@_event("acquire")
@icontract.ensure(lambda task, result: _unchanged_identity(task, result.task))
@icontract.ensure(lambda task, result: result.task.token == task.token + 1)
@icontract.ensure(lambda task, result: result.task.attempts == task.attempts + 1)
@icontract.ensure(lambda task, now_us: task.lease is None or now_us >= task.lease.expires_us)
@icontract.ensure(
    lambda owner, now_us, result: (
        result.task.lease is not None
        and result.task.lease.owner == owner
        and result.task.lease.token == result.task.token
        and result.task.lease.acquired_us == now_us < result.task.lease.expires_us
    )
)
@icontract.ensure(
    lambda result: (
        result.task.state is not TaskState.RUNNING
        or result.task.deadline_us is None
        or (
            result.task.lease is not None
            and result.task.lease.expires_us <= result.task.deadline_us
        )
    )
)
def acquire(task: TaskSaga, *, owner: str, ttl_us: int, now_us: int) -> Step:
    """Lease the task to ``owner`` for ``ttl_us`` (capped at the deadline in
    the forward phase) under the next token. A live lease held by anyone,
    even ``owner`` itself: :class:`LeaseConflictError`; terminal:
    :class:`TerminalTaskError`; not yet available or past the deadline:
    :class:`InvalidTransitionError`; no attempt left:
    :class:`AttemptsExhaustedError`. Taking over an expired lease counts one
    expiration and names the replaced lease in the entry's reason.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_id("owner", owner)
    ttl = _check_duration("ttl", ttl_us, allow_zero=False)
    transition = resolve("acquire", GuardContext(task, now_us))
    expiry = _add(now_us, ttl, task)
    if transition.target is TaskState.RUNNING and task.deadline_us is not None:
        expiry = min(expiry, task.deadline_us)
    token = task.token + 1
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


@_event("heartbeat")
@icontract.ensure(
    lambda task, result: (
        task.lease is not None
        and result.task.lease is not None
        and result.task.lease.expires_us > task.lease.expires_us
        and result.task.lease.token == task.lease.token
        and result.task.lease.acquired_us == task.lease.acquired_us
    )
)
@icontract.ensure(
    lambda task, result: (
        result.task.state is task.state
        and result.task.token == task.token
        and result.task.attempts == task.attempts
        and result.task.compensations == task.compensations
    )
)
def heartbeat(task: TaskSaga, *, owner: str, token: int, ttl_us: int, now_us: int) -> Step:
    """Extend the caller's live lease to ``now + ttl`` (never past the deadline
    in the forward phase). Not the live holder with the current token, or an
    expiry no later than the current one: :class:`LeaseConflictError`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
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
        lease=replace(
            task.lease, expires_us=expiry, heartbeat_us=max(now_us, task.lease.heartbeat_us)
        ),  # a caller whose clock lags never moves the last heartbeat back
    )


@_event("release")
@icontract.ensure(lambda result: result.task.lease is None)
@icontract.ensure(lambda task, result: result.task.attempts == task.attempts)
def release(
    task: TaskSaga,
    *,
    owner: str,
    token: int,
    delay_us: int = 0,
    reason: str | None = None,
    now_us: int,
) -> Step:
    """Give the lease back: RUNNING → PENDING, COMPENSATING stays, unleased;
    the task is available again ``delay_us`` after now; ``reason`` (say, the
    error a retry follows) is recorded in the entry. Not the live holder (a
    repeat included): :class:`LeaseConflictError`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    delay = _check_duration("delay", delay_us, allow_zero=True)
    if reason is not None:
        check_text("reason", reason)
    ctx = _holder_ctx(task, owner, token, now_us)
    # The reason is among the arguments only when given (older entries replay).
    args: dict[str, Any] = (
        {"delay_us": delay} if reason is None else {"delay_us": delay, "reason": reason}
    )
    return _advance_held(
        ctx,
        resolve("release", ctx),
        reason=reason,
        args=args,
        lease=None,
        available_us=_add(now_us, delay, task),
    )


@_event("register_compensation")
@icontract.ensure(
    lambda task, compensation, result: (
        result.task.compensations == (*task.compensations, compensation)
    )
)
def register_compensation(
    task: TaskSaga, *, owner: str, token: int, compensation: Compensation, now_us: int
) -> Step:
    """Append a pending compensation (RUNNING only). Not the live holder:
    :class:`LeaseConflictError`; registering the same compensation twice
    registers it twice.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_compensation(compensation)
    ctx = _holder_ctx(task, owner, token, now_us)
    transition = resolve("register_compensation", ctx)
    if len(task.compensations) >= MAX_COMPENSATIONS:
        raise _bad(f"at most {MAX_COMPENSATIONS} compensations", task=task)
    return _advance_held(
        ctx,
        transition,
        reason=None,
        args={"compensation": compensation.to_json()},
        compensations=(*task.compensations, compensation),
    )


@_event("complete")
@icontract.ensure(lambda result: result.task.state is TaskState.COMPLETED)
def complete(
    task: TaskSaga, *, owner: str, token: int, reason: str | None = None, now_us: int
) -> Step:
    """RUNNING → COMPLETED. Not the live holder: :class:`LeaseConflictError`;
    already ended (a repeat): :class:`TerminalTaskError`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    if reason is not None:
        check_text("reason", reason)
    ctx = _holder_ctx(task, owner, token, now_us)
    return _advance_held(
        ctx, resolve("complete", ctx), reason=reason or "completed", args={"reason": reason}
    )


@_event("fail")
@icontract.ensure(
    lambda task, result: (
        result.task.state
        is (TaskState.COMPENSATING if task.pending_compensations else TaskState.FAILED)
    )
)
def fail(task: TaskSaga, *, owner: str, token: int, reason: str, now_us: int) -> Step:
    """RUNNING → COMPENSATING (unleased, fresh attempt count) when any
    compensation is pending, else → FAILED. Not the live holder:
    :class:`LeaseConflictError`; already ended: :class:`TerminalTaskError`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_text("reason", reason)
    ctx = _holder_ctx(task, owner, token, now_us)
    return _advance_held(ctx, resolve("fail", ctx), reason=reason, args={"reason": reason})


def _set_status(
    comps: tuple[Compensation, ...], index: int, status: CompensationStatus
) -> tuple[Compensation, ...]:
    return tuple(replace(c, status=status) if i == index else c for i, c in enumerate(comps))


def _check_index(task: TaskSaga, index: object) -> int:
    if not isinstance(index, int) or isinstance(index, bool):
        raise _bad("index must be an integer", task=task)
    return index


@_event("compensation_applied")
@icontract.ensure(
    lambda result, index: result.task.compensations[index].status is CompensationStatus.APPLIED
)
@icontract.ensure(
    lambda result: (
        (result.task.state is TaskState.COMPENSATED) == (not result.task.pending_compensations)
    )
)
def compensation_applied(
    task: TaskSaga, *, owner: str, token: int, index: int, now_us: int
) -> Step:
    """Mark compensation ``index`` applied; the last one moves the task to
    COMPENSATED. Not the live holder: :class:`LeaseConflictError`; no such
    index, or not pending (a repeat): :class:`InvalidTransitionError`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    ctx = replace(_holder_ctx(task, owner, token, now_us), index=_check_index(task, index))
    transition = resolve("compensation_applied", ctx)
    return _advance_held(
        ctx,
        transition,
        reason="all compensations applied" if transition.target.is_terminal else None,
        args={"index": index},
        compensations=_set_status(task.compensations, index, CompensationStatus.APPLIED),
    )


@_event("compensation_failed")
@icontract.ensure(lambda result: result.task.state is TaskState.QUARANTINED)
def compensation_failed(
    task: TaskSaga, *, owner: str, token: int, index: int, reason: str, now_us: int
) -> Step:
    """Compensation ``index`` failed for good: → QUARANTINED, listing the
    compensations still pending. Errors as for :func:`compensation_applied`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_text("reason", reason)
    ctx = replace(_holder_ctx(task, owner, token, now_us), index=_check_index(task, index))
    return _advance_held(
        ctx,
        resolve("compensation_failed", ctx),
        reason=f"compensation {index} failed: {reason}",
        args={"index": index, "reason": reason},
        compensations=_set_status(task.compensations, index, CompensationStatus.FAILED),
    )


@_event("quarantine")
@icontract.ensure(lambda task: not task.state.is_terminal)
@icontract.ensure(lambda result: result.task.state is TaskState.QUARANTINED)
def quarantine(task: TaskSaga, *, reason: str, by: str, now_us: int) -> Step:
    """Operator action: any non-terminal task → QUARANTINED (no lease
    needed; a live lease is revoked). Terminal: :class:`TerminalTaskError`.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_text("reason", reason)
    check_id("by", by)
    transition = resolve("quarantine", GuardContext(task, now_us))
    return _advance(
        task,
        transition,
        now_us,
        actor=by,
        actor_token=None,
        reason=reason,
        args={"reason": reason, "by": by},
    )


@_event("reap")
@icontract.ensure(lambda task, now_us: task.lease is None or now_us >= task.lease.expires_us)
@icontract.ensure(lambda result: result.task.lease is None)
def reap(task: TaskSaga, *, now_us: int) -> Step:
    """The reaper's move at ``now_us``: past the deadline (forward phase) as
    :func:`fail` with reason "deadline exceeded"; attempts exhausted with no
    live lease → QUARANTINED; an expired lease dropped (RUNNING → PENDING,
    COMPENSATING stays), counting one expiration. Nothing to do:
    :class:`InvalidTransitionError` (see :func:`needs_reap`).
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    transition = resolve("reap", GuardContext(task, now_us))
    expired, note = _expired_lease_note(task, now_us)
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
        # A claimer whose clock lags the reaper's must not start a lease that
        # overlaps the one reaped.
        available_us=task.available_us
        if task.lease is None
        else max(task.available_us, task.lease.expires_us),
    )


def needs_reap(task: TaskSaga, now_us: int) -> bool:
    """Whether :func:`reap` has something to do for ``task`` at ``now_us``."""
    try:
        resolve("reap", GuardContext(task, now_us))
    except SagaLeaseError:  # no reap transition applies (or the task has ended)
        return False
    return True


@_event("annotate")
@icontract.ensure(lambda task, result: result.task.notes[:-1] == task.notes)
@icontract.ensure(
    lambda task, result: replace(result.task, notes=task.notes, version=task.version) == task
)
def annotate(task: TaskSaga, *, text: str, by: str, now_us: int) -> Step:
    """Append a note; allowed in every state, terminal included. Changes
    nothing else (not even ``updated_at``); a repeat appends another note.
    :raises SagaLeaseError: on refusal (CrossHair reads this line).
    """
    check_text("text", text)
    check_id("by", by)
    seq = task.version + 1
    new = replace(task, notes=(*task.notes, Note(now_us, by, text)), version=seq)
    entry = HistoryEntry(
        seq=seq,
        task_id=task.task_id,
        event="annotate",
        from_state=task.state,
        to_state=task.state,
        at_us=now_us,
        owner=by,
        reason=text,
        args_json=dump_args({"text": text, "by": by}),
    )
    return Step(new, entry)


# ---------------------------------------------------------------- replay

_HANDLERS: Mapping[str, Callable[..., Step]] = {
    "acquire": acquire,
    "heartbeat": heartbeat,
    "release": release,
    "register_compensation": register_compensation,
    "complete": complete,
    "fail": fail,
    "compensation_applied": compensation_applied,
    "compensation_failed": compensation_failed,
    "quarantine": quarantine,
    "reap": reap,
    "annotate": annotate,
}


def handlers(*, contracts: bool) -> Mapping[str, Callable[..., Step]]:
    """The event functions by name, with their icontract checks or without them.

    Both compute the same steps and raise the same typed errors; the checks only
    re-verify the core (a failing one is a bug in sagalease). Stores run without
    them unless asked (``contracts=True`` or ``SAGALEASE_CONTRACTS=1``), because
    the checks are paid on every call.
    """
    if contracts:
        return MappingProxyType(_HANDLERS)
    return MappingProxyType({event: inspect.unwrap(fn) for event, fn in _HANDLERS.items()})


def apply(task: TaskSaga, event: str, now_us: int, **args: Any) -> Step:
    """Apply ``event`` by name (used by replay and the model checker)."""
    return _HANDLERS[event](task, now_us=now_us, **args)


def _decode_args(args: dict[str, Any]) -> dict[str, Any]:
    if "compensation" in args:
        args["compensation"] = Compensation.from_json(args["compensation"])
    if "compensations" in args:
        args["compensations"] = [Compensation.from_json(c) for c in args["compensations"]]
    return args


def replay(entries: Sequence[HistoryEntry]) -> TaskSaga:
    """Rebuild a record from its history (INV-7). Every entry must be
    reproduced exactly; any difference raises :class:`AssertionError`.
    """
    if not entries or entries[0].event != "create":
        raise AssertionError("a history starts with its create entry")
    first = entries[0]
    step = create(first.task_id, now_us=first.at_us, **_decode_args(first.args))
    if step.entry != first:
        raise AssertionError(f"replayed {step.entry} differs from stored {first}")
    task = step.task
    for entry in entries[1:]:
        step = apply(task, entry.event, entry.at_us, **_decode_args(entry.args))
        if step.entry != entry:
            raise AssertionError(f"replayed {step.entry} differs from stored {entry}")
        task = step.task
    return task


assert set(_HANDLERS) - {"annotate"} == set(EVENTS), "every declared event has a core function"
