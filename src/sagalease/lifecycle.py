"""The task lifecycle, declared once.

:class:`Lifecycle` is the only place where states, events, targets and guards
are written down. Everything else reads it:

* :data:`CHART` is compiled from it by introspection, once at import, and is
  what the pure core (:mod:`sagalease.core`), hence every store, evaluates;
* the spec (``sagalease spec``), its Mermaid diagram, the model checker and
  the conformance suite walk the same class.

Guards are named. A *validator* rejects the event with a typed error (the
first failing one wins); a *condition* only chooses among the targets of one
event from one state: the first transition whose validators pass and whose
conditions hold is taken, exactly as python-statemachine's engine does. The
predicates behind the names live in :data:`GUARDS`.

``create`` enters the initial state (``pending``); ``annotate`` is not a
transition (it only appends a note, terminal tasks included).

{statechart:mermaid}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from statemachine import State, StateChart

from sagalease.errors import (
    AttemptsExhaustedError,
    InvalidTransitionError,
    LeaseConflictError,
    SagaLeaseError,
    TerminalTaskError,
)
from sagalease.expr import (
    Expr,
    all_of,
    any_of,
    case,
    col,
    concat,
    const,
    greatest,
    has_pending,
    least,
    param,
    py_repr,
    substitute,
)
from sagalease.records import CompensationStatus, TaskSaga, TaskState


def _when(instant_us: int) -> str:
    """An instant as ISO 8601 UTC text, by integer arithmetic (no datetime objects,
    which CrossHair cannot follow symbolically).
    """
    seconds, micros = divmod(instant_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


__all__ = [
    "CHART",
    "COMMON_VALIDATORS",
    "ENDED_STATES",
    "EVENTS",
    "GUARDS",
    "HOLDER_EVENTS",
    "LEASE_STATES",
    "OPEN_STATES",
    "STATE_DOCS",
    "CompiledTransition",
    "Guard",
    "GuardContext",
    "Lifecycle",
    "engine_for",
    "resolve",
]

_HOLDER = ["holder"]


class Lifecycle(StateChart):  # type: ignore[type-arg]
    """A task's lifecycle (see the module docstring).

    {statechart:mermaid}
    """

    allow_event_without_transition = False
    catch_errors_as_events = False
    atomic_configuration_update = True
    enable_self_transition_entries = False

    pending = State("PENDING", initial=True)
    running = State("RUNNING")
    compensating = State("COMPENSATING")
    completed = State("COMPLETED", final=True)
    failed = State("FAILED", final=True)
    compensated = State("COMPENSATED", final=True)
    quarantined = State("QUARANTINED", final=True)

    acquire = (
        pending.to(running, validators=["available", "before_deadline", "attempts_left"])
        | running.to(
            running, validators=["no_live_lease", "available", "before_deadline", "attempts_left"]
        )
        | compensating.to(compensating, validators=["no_live_lease", "available", "attempts_left"])
    )
    heartbeat = running.to(running, validators=[*_HOLDER, "extends"]) | compensating.to(
        compensating, validators=[*_HOLDER, "extends"]
    )
    release = running.to(pending, validators=_HOLDER) | compensating.to(
        compensating, validators=_HOLDER
    )
    register_compensation = running.to(running, validators=_HOLDER)
    complete = running.to(completed, validators=_HOLDER)
    fail = running.to(
        compensating, validators=_HOLDER, cond="has_pending_compensation"
    ) | running.to(failed, validators=_HOLDER)
    compensation_applied = compensating.to(
        compensated, validators=[*_HOLDER, "index_pending"], cond="last_pending"
    ) | compensating.to(compensating, validators=[*_HOLDER, "index_pending"])
    compensation_failed = compensating.to(quarantined, validators=[*_HOLDER, "index_pending"])
    quarantine = pending.to(quarantined) | running.to(quarantined) | compensating.to(quarantined)
    reap = (
        pending.to(compensating, cond=["past_deadline", "has_pending_compensation"])
        | pending.to(failed, cond="past_deadline")
        | pending.to(quarantined, cond="attempts_exhausted")
        | running.to(compensating, cond=["past_deadline", "has_pending_compensation"])
        | running.to(failed, cond="past_deadline")
        | running.to(quarantined, cond=["lease_expired", "attempts_exhausted"])
        | running.to(pending, cond="lease_expired")
        | compensating.to(quarantined, cond=["no_lease_or_expired", "attempts_exhausted"])
        | compensating.to(compensating, cond="lease_expired")
    )


STATE_DOCS: Mapping[TaskState, str] = {
    TaskState.PENDING: "waiting to be leased; never holds a lease",
    TaskState.RUNNING: "forward work under a lease (always set; it may have expired)",
    TaskState.COMPENSATING: (
        "forward work failed, compensations owed; leaseable by a compensating worker"
    ),
    TaskState.COMPLETED: "the forward work finished",
    TaskState.FAILED: "the forward work failed and no compensation was owed",
    TaskState.COMPENSATED: "every compensation was applied",
    TaskState.QUARANTINED: (
        "set aside for an operator: a permanent compensation failure, no attempts left,"
        " or an operator's decision; lists what is still pending"
    ),
}
"""What each state means (the spec prints these)."""


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What a guard may look at: the task, the instant, and the event's arguments."""

    task: TaskSaga
    now_us: int
    owner: str | None = None
    token: int | None = None
    new_expiry_us: int | None = None
    index: int | None = None


def _lease_live(c: GuardContext) -> bool:
    return c.task.lease is not None and c.now_us < c.task.lease.expires_us


def _holder_problem(c: GuardContext) -> str | None:
    lease = c.task.lease
    if lease is None:
        return "no lease is held"
    if lease.owner != c.owner or lease.token != c.token:
        return (
            f"lease is held by {lease.owner!r} with token {lease.token},"
            f" not by {c.owner!r} with token {c.token}"
        )
    if c.now_us >= lease.expires_us:
        return (
            f"lease of {lease.owner!r} (token {lease.token}) expired at {_when(lease.expires_us)}"
        )
    return None


def _extends(c: GuardContext) -> bool:
    lease = c.task.lease
    return lease is not None and c.new_expiry_us is not None and c.new_expiry_us > lease.expires_us


def _index_pending(c: GuardContext) -> bool:
    comps = c.task.compensations
    return (
        c.index is not None
        and 0 <= c.index < len(comps)
        and comps[c.index].status is CompensationStatus.PENDING
    )


def _last_pending(c: GuardContext) -> bool:
    return c.task.pending_compensations == (c.index,)


def _past_deadline(c: GuardContext) -> bool:
    return c.task.deadline_us is not None and c.now_us >= c.task.deadline_us


@dataclass(frozen=True, slots=True)
class Guard:
    """A named predicate of the lifecycle.

    ``error`` is set for validators: when ``test`` is false the event is
    rejected with ``error(message(ctx))``.
    """

    name: str
    description: str
    test: Callable[[GuardContext], bool]
    error: type[SagaLeaseError] | None = None
    message: Callable[[GuardContext], str] | None = None
    sql: Expr | None = None
    """The same predicate over a task row (:mod:`sagalease.expr`), for the SQL
    stores; ``None`` where it reads what no hot event needs in SQL."""

    def check(self, c: GuardContext) -> None:
        """Raise this validator's error when its test fails."""
        if not self.test(c):
            assert self.error is not None
            assert self.message is not None
            err = self.error(self.message(c), task_id=c.task.task_id, state=c.task.state)
            if isinstance(err, LeaseConflictError):
                err.owner, err.token = c.owner, c.token
            raise err


def _live_lease_message(c: GuardContext) -> str:
    lease = c.task.lease
    assert lease is not None
    return f"lease is held by {lease.owner!r} (token {lease.token}) until {_when(lease.expires_us)}"


def _extends_message(c: GuardContext) -> str:
    lease = c.task.lease
    new = "?" if c.new_expiry_us is None else _when(c.new_expiry_us)
    old = "?" if lease is None else _when(lease.expires_us)
    return f"heartbeat would not extend the lease (new expiry {new}, current {old})"


def _index_message(c: GuardContext) -> str:
    comps = c.task.compensations
    if c.index is None or not 0 <= c.index < len(comps):
        return f"no compensation at index {c.index} (the task has {len(comps)})"
    return f"compensation {c.index} is already {comps[c.index].status.value}"


NOW: Final = param("now_us")
"""The instant of the event (the guards' ``c.now_us``)."""

_LEASE_EXPIRED: Final = col("lease_expires_us").not_null() & (col("lease_expires_us") <= NOW)
_NO_LIVE_LEASE: Final = col("lease_expires_us").is_null() | (col("lease_expires_us") <= NOW)

_GUARD_LIST = (
    # validators
    Guard(
        "available",
        "`now >= available_at`",
        lambda c: c.now_us >= c.task.available_us,
        InvalidTransitionError,
        lambda c: f"not available before {_when(c.task.available_us)}",
        col("available_us") <= NOW,
    ),
    Guard(
        "before_deadline",
        "no deadline, or `now < deadline`",
        lambda c: not _past_deadline(c),
        InvalidTransitionError,
        lambda c: f"deadline {_when(c.task.deadline_us or 0)} has passed",
        col("deadline_us").is_null() | (col("deadline_us") > NOW),
    ),
    Guard(
        "attempts_left",
        "`attempts < max_attempts`",
        lambda c: c.task.attempts < c.task.max_attempts,
        AttemptsExhaustedError,
        lambda c: f"all {c.task.max_attempts} attempts of this phase were used",
        col("attempts") < col("max_attempts"),
    ),
    Guard(
        "no_live_lease",
        "no lease, or the lease expired (`now >= expires_at`)",
        lambda c: not _lease_live(c),
        LeaseConflictError,
        _live_lease_message,
        _NO_LIVE_LEASE,
    ),
    Guard(
        "holder",
        "the lease is live and held by the caller's (owner, token)",
        lambda c: _holder_problem(c) is None,
        LeaseConflictError,
        lambda c: _holder_problem(c) or "",
        col("lease_owner").not_null()
        & col("lease_owner").eq(param("owner", "text"))
        & col("lease_token").eq(param("token"))
        & (col("lease_expires_us") > NOW),
    ),
    Guard(
        "extends",
        "the new expiry is later than the current one",
        _extends,
        LeaseConflictError,
        _extends_message,
        col("lease_expires_us").not_null() & (param("new_expiry_us") > col("lease_expires_us")),
    ),
    Guard(
        "index_pending",
        "the compensation at `index` exists and is pending",
        _index_pending,
        InvalidTransitionError,
        _index_message,
    ),
    # conditions
    Guard(
        "has_pending_compensation",
        "some compensation is pending",
        lambda c: bool(c.task.pending_compensations),
        sql=has_pending(col("compensations_json")),
    ),
    Guard("last_pending", "`index` is the only pending compensation", _last_pending),
    Guard(
        "past_deadline",
        "a deadline is set and `now >= deadline`",
        _past_deadline,
        sql=col("deadline_us").not_null() & (col("deadline_us") <= NOW),
    ),
    Guard(
        "lease_expired",
        "a lease is set and `now >= expires_at`",
        lambda c: c.task.lease is not None and c.now_us >= c.task.lease.expires_us,
        sql=_LEASE_EXPIRED,
    ),
    Guard(
        "no_lease_or_expired",
        "no lease, or the lease expired",
        lambda c: not _lease_live(c),
        sql=_NO_LIVE_LEASE,
    ),
    Guard(
        "attempts_exhausted",
        "`attempts >= max_attempts`",
        lambda c: c.task.attempts >= c.task.max_attempts,
        sql=col("attempts") >= col("max_attempts"),
    ),
)

GUARDS: Mapping[str, Guard] = {g.name: g for g in _GUARD_LIST}
"""Every guard name the declaration uses, with its predicate."""


@dataclass(frozen=True, slots=True)
class CompiledTransition:
    """One declared transition, as read off :class:`Lifecycle`.

    ``conds`` holds condition names; a name prefixed with ``!`` is negated
    (python-statemachine's ``unless=``).
    """

    source: TaskState
    event: str
    target: TaskState
    validators: tuple[str, ...]
    conds: tuple[str, ...]


def _compile() -> tuple[
    Mapping[tuple[TaskState, str], tuple[CompiledTransition, ...]], tuple[str, ...]
]:
    chart: dict[tuple[TaskState, str], list[CompiledTransition]] = {}
    for state in Lifecycle.states:
        for transition in state.transitions:
            (target,) = transition.targets
            for event in transition.events:
                name = str(event)
                chart.setdefault((TaskState(state.id), name), []).append(
                    CompiledTransition(
                        source=TaskState(state.id),
                        event=name,
                        target=TaskState(target.id),
                        validators=tuple(str(s) for s in transition.validators),
                        conds=tuple(str(s) for s in transition.cond),
                    )
                )
    declared: list[Any] = Lifecycle.events  # type: ignore[assignment]  # a class-level property
    events = tuple(str(event) for event in declared)
    return {key: tuple(value) for key, value in chart.items()}, events


CHART, EVENTS = _compile()
"""``CHART[(state, event)]``: the declared transitions, in declaration order."""

OPEN_STATES: tuple[TaskState, ...] = tuple(TaskState(s.id) for s in Lifecycle.states if not s.final)
"""The states a task has not ended in, in declaration order."""

ENDED_STATES: tuple[TaskState, ...] = tuple(TaskState(s.id) for s in Lifecycle.states if s.final)
"""The terminal (final) states, in declaration order."""

LEASE_STATES: tuple[TaskState, ...] = tuple(
    state for state in OPEN_STATES if (state, "heartbeat") in CHART
)
"""The states in which a task may hold a lease (those a heartbeat is declared from)."""

assert set(ENDED_STATES) == {s for s in TaskState if s.is_terminal}, (
    "TaskState.is_terminal agrees with the declaration's final states"
)

COMMON_VALIDATORS: Mapping[str, tuple[str, ...]] = {
    event: tuple(
        name
        for name in next(t for (_, e), ts in CHART.items() if e == event for t in ts).validators
        if all(name in t.validators for (_, e), ts in CHART.items() if e == event for t in ts)
    )
    for event in EVENTS
}
"""Validators every declared transition of an event has (``holder`` for the
holder calls). From a non-terminal state without a transition for the event,
they are checked first: a heartbeat on a PENDING task is refused as a
LeaseConflictError (no live lease), not only as a wrong-state call."""

HOLDER_EVENTS: tuple[str, ...] = tuple(
    event for event in EVENTS if "holder" in COMMON_VALIDATORS[event]
)
"""The holder calls (every transition requires the caller's live lease and the
current token), in declaration order."""


# ---------------------------------------------------------------- effects

LEASE_COLUMNS: Final = (
    "lease_owner",
    "lease_token",
    "lease_acquired_us",
    "lease_expires_us",
    "lease_heartbeat_us",
)
"""A lease as a row holds it: all five set, or all ``NULL``."""

TARGET: Final = param("target", "text")
"""The state a transition enters; an effect that depends on it reads this, and
each transition's rendering puts its own target in its place."""

_OWNER = param("owner", "text")
_TOKEN = param("token")
_REASON = param("reason", "text")
_NO_LEASE: Final[Mapping[str, Expr]] = {c: const(None) for c in LEASE_COLUMNS}


def _expiry() -> Expr:
    """``now + ttl``, capped at the deadline when the task is (or enters) RUNNING."""
    ends = NOW + param("ttl_us")
    capped = TARGET.eq(TaskState.RUNNING.value) & col("deadline_us").not_null()
    return case(((capped, least(ends, col("deadline_us"))),), ends)


@dataclass(frozen=True, slots=True)
class Effect:
    """What one event does to a task row, besides what every move does (see
    :data:`EFFECTS`), written over the row *before* the event.

    ``columns``: the event's own assignments; ``owner``, ``token`` and
    ``reason``: its history entry's; ``args``: the event arguments the entry
    records (with the caller's ``owner`` and ``token`` for a holder call);
    ``optional_args``: recorded only when given; ``binds``: guard parameters that
    are computed (a heartbeat's new expiry).
    """

    description: str
    columns: Mapping[str, Expr]
    owner: Expr
    token: Expr
    reason: Expr
    args: tuple[str, ...]
    optional_args: tuple[str, ...] = ()
    binds: Mapping[str, Expr] = field(default_factory=dict)


EFFECTS: Mapping[str, Effect] = {
    "acquire": Effect(
        "the next token, one more attempt, a new lease to the caller until now + ttl"
        " (capped at the deadline in the forward phase); an expired lease taken over"
        " counts one expiration and is named in the entry",
        {
            "token": col("token") + 1,
            "attempts": col("attempts") + 1,
            "expirations": col("expirations") + case(((_LEASE_EXPIRED, const(1)),), const(0)),
            "lease_owner": _OWNER,
            "lease_token": col("token") + 1,
            "lease_acquired_us": NOW,
            "lease_expires_us": _expiry(),
            "lease_heartbeat_us": NOW,
        },
        owner=_OWNER,
        token=col("token") + 1,
        reason=case(
            (
                (
                    _LEASE_EXPIRED,
                    concat(
                        "lease of ",
                        py_repr(col("lease_owner")),
                        " (token ",
                        col("lease_token"),
                        ") expired",
                    ),
                ),
            ),
            const(None),
        ),
        args=("owner", "ttl_us"),
    ),
    "heartbeat": Effect(
        "the lease extended to now + ttl (capped at the deadline in the forward phase);"
        " the last heartbeat never moves back",
        {
            "lease_expires_us": _expiry(),
            "lease_heartbeat_us": greatest(NOW, col("lease_heartbeat_us")),
        },
        owner=_OWNER,
        token=_TOKEN,
        reason=const(None),
        args=("owner", "token", "ttl_us"),
        binds={"new_expiry_us": _expiry()},
    ),
    "release": Effect(
        "the lease dropped; available again at now + delay",
        {**_NO_LEASE, "available_us": NOW + param("delay_us")},
        owner=_OWNER,
        token=_TOKEN,
        reason=_REASON,
        args=("owner", "token", "delay_us"),
        optional_args=("reason",),
    ),
    "complete": Effect(
        "nothing of its own (the move ends the task; reason 'completed' unless given)",
        {},
        owner=_OWNER,
        token=_TOKEN,
        reason=case(((_REASON.is_null(), const("completed")),), _REASON),
        args=("owner", "token", "reason"),
    ),
    "fail": Effect(
        "nothing of its own (the move: COMPENSATING when a compensation is pending)",
        {},
        owner=_OWNER,
        token=_TOKEN,
        reason=_REASON,
        args=("owner", "token", "reason"),
    ),
}
"""The hot events' effects, beside the Python of :mod:`sagalease.core` (proven equal
on random rows, in SQLite and PostgreSQL, by ``tests/stores/test_sql_equivalence.py``).

What every move does on top (the core's ``_advance``, :func:`move_effects`): the
state becomes the target, ``updated_us`` the instant, ``version`` one more; a
terminal target drops the lease and records the reason (the target's name if
none); PENDING drops the lease; entering COMPENSATING from the forward phase
drops the lease and starts a fresh attempt count, available at once.
"""


def move_effects(source: TaskState, target: TaskState, reason: Expr) -> dict[str, Expr]:
    """What every move from ``source`` to ``target`` does, given the entry's ``reason``."""
    effects: dict[str, Expr] = {
        "state": const(target.value),
        "updated_us": NOW,
        "version": col("version") + 1,
    }
    if target.is_terminal:
        effects.update(_NO_LEASE)
        effects["terminal_reason"] = case(((reason.is_null(), const(target.value)),), reason)
    elif target is TaskState.PENDING:
        effects.update(_NO_LEASE)
    elif target is TaskState.COMPENSATING and source is not TaskState.COMPENSATING:
        effects.update(_NO_LEASE)
        effects["attempts"] = const(0)
        effects["available_us"] = NOW
    return effects


@dataclass(frozen=True, slots=True)
class EventWrite:
    """An event rendered from the declaration as one write over a task row.

    ``applies``: the event succeeds on the row (some transition from its state
    is taken: that transition's validators and those of the ones before it pass,
    its conditions hold and theirs do not), the only rows written; ``columns``:
    every column the event may change, as its new value; ``entry``: the history
    entry's columns (``task_id`` aside). Everything is over the row before the
    event; a row on which ``applies`` is false is left to the Python core, which
    names the error.
    """

    event: str
    applies: Expr
    columns: Mapping[str, Expr]
    entry: Mapping[str, Expr]
    frees: bool
    """Some transition leaves the task open and unleased (a claim may take it)."""


def _guard_sql(name: str, binds: Mapping[str, Expr]) -> Expr:
    negate = name.startswith("!")
    sql_ = GUARDS[name.lstrip("!")].sql
    if sql_ is None:
        raise ValueError(f"guard {name!r} has no SQL predicate")
    sql_ = substitute(sql_, binds)
    return ~sql_ if negate else sql_


def _choices(event: str, binds: Mapping[str, Expr]) -> list[tuple[CompiledTransition, Expr, Expr]]:
    """Each transition of ``event`` with its condition of being taken given that the
    event applies (its state, its conditions, not those of an earlier one) and of
    applying (the same with every validator up to it).
    """
    found = []
    for (state, name), transitions in CHART.items():
        if name != event:
            continue
        passed: list[Expr] = [col("state").eq(state.value)]
        earlier: list[Expr] = []
        for t in transitions:
            at = {"target": const(t.target.value)}
            bound = {k: substitute(v, at) for k, v in binds.items()}
            passed += [_guard_sql(v, bound) for v in t.validators]
            conds = all_of(*(_guard_sql(c, bound) for c in t.conds))
            chosen = all_of(col("state").eq(state.value), *(~e for e in earlier), conds)
            found.append((t, chosen, all_of(*passed, *(~e for e in earlier), conds)))
            earlier.append(conds)
    return found


@cache
def event_write(event: str) -> EventWrite:
    """:class:`EventWrite` of a hot event (one of :data:`EFFECTS`), derived from
    :data:`CHART`, :data:`GUARDS` and :data:`EFFECTS`.
    """
    effect = EFFECTS[event]
    choices = _choices(event, effect.binds)
    per_move = []
    frees = False
    for t, chosen, _applies in choices:
        at = {"target": const(t.target.value)}
        cols = {c: substitute(e, at) for c, e in effect.columns.items()}
        cols.update(move_effects(t.source, t.target, substitute(effect.reason, at)))
        if t.target is t.source:  # the state is kept: not assigned (no index touched)
            cols["state"] = col("state")
        per_move.append((chosen, cols))
        frees |= not t.target.is_terminal and cols.get("lease_owner") == const(None)
    names = [c for _, cols in per_move for c in cols]
    columns: dict[str, Expr] = {}
    for name in dict.fromkeys(names):
        values = [(chosen, cols.get(name, col(name))) for chosen, cols in per_move]
        last = values[-1][1]
        if all(v == last for _, v in values):
            if last != col(name):  # a column every move keeps is left out of the write
                columns[name] = last
        else:
            columns[name] = case(values[:-1], last)
    target = case(
        [(chosen, const(t.target.value)) for t, chosen, _ in choices[:-1]],
        const(choices[-1][0].target.value),
    )
    reasons = [
        (chosen, substitute(effect.reason, {"target": const(t.target.value)}))
        for t, chosen, _ in choices
    ]
    reason = (
        reasons[-1][1]
        if all(r == reasons[-1][1] for _, r in reasons)
        else case(reasons[:-1], reasons[-1][1])
    )
    entry = {
        "seq": col("version") + 1,
        "event": const(event),
        "from_state": col("state"),
        "to_state": target,
        "at_us": NOW,
        "owner": effect.owner,
        "token": effect.token,
        "reason": reason,
        "args_json": param("args_json", "text"),
    }
    applies = any_of(*(applies for _, _, applies in choices))
    return EventWrite(event, applies, columns, entry, frees)


def _cond_holds(name: str, c: GuardContext) -> bool:
    if name.startswith("!"):
        return not GUARDS[name[1:]].test(c)
    return GUARDS[name].test(c)


def resolve(event: str, c: GuardContext) -> CompiledTransition:
    """The transition ``event`` takes from ``c.task``, or the typed error.

    No transition from a terminal state: :class:`TerminalTaskError`; none from
    this state: the event's :data:`COMMON_VALIDATORS`, then
    :class:`InvalidTransitionError`; a failing validator: its
    error; no condition holding: :class:`InvalidTransitionError`.
    """
    state = c.task.state
    transitions = CHART.get((state, event))
    if not transitions:
        if state.is_terminal:
            raise TerminalTaskError(
                f"cannot {event}: the task has ended", task_id=c.task.task_id, state=state
            )
        for name in COMMON_VALIDATORS.get(event, ()):
            GUARDS[name].check(c)
        raise InvalidTransitionError(
            f"{event} is not allowed in this state", task_id=c.task.task_id, state=state
        )
    for transition in transitions:
        for name in transition.validators:
            GUARDS[name].check(c)
        if all(_cond_holds(name, c) for name in transition.conds):
            return transition
    raise InvalidTransitionError(
        f"no {event} transition applies now", task_id=c.task.task_id, state=state
    )


class _GuardModel:
    """A model for running the declared machine itself: each guard name is an
    attribute evaluating :data:`GUARDS` on ``ctx`` (validators raise).
    """

    def __init__(self, ctx: GuardContext) -> None:
        self.ctx = ctx
        self.state: str = ctx.task.state.value


def _bind(guard: Guard) -> Callable[[_GuardModel], Any]:
    if guard.error is not None:
        return lambda model: guard.check(model.ctx)
    return lambda model: guard.test(model.ctx)


for _guard in _GUARD_LIST:
    setattr(_GuardModel, _guard.name, _bind(_guard))


def engine_for(ctx: GuardContext) -> Lifecycle:
    """An instance of the declared machine positioned at ``ctx.task.state``,
    whose guards read ``ctx``; used to check the compiled chart against the
    engine and to draw diagrams.
    """
    return Lifecycle(_GuardModel(ctx), start_value=ctx.task.state.value)
