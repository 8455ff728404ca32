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
from dataclasses import dataclass
from typing import Any

from statemachine import State, StateChart

from sagalease.errors import (
    AttemptsExhaustedError,
    InvalidTransitionError,
    LeaseConflictError,
    SagaLeaseError,
    TerminalTaskError,
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


_GUARD_LIST = (
    # validators
    Guard(
        "available",
        "`now >= available_at`",
        lambda c: c.now_us >= c.task.available_us,
        InvalidTransitionError,
        lambda c: f"not available before {_when(c.task.available_us)}",
    ),
    Guard(
        "before_deadline",
        "no deadline, or `now < deadline`",
        lambda c: not _past_deadline(c),
        InvalidTransitionError,
        lambda c: f"deadline {_when(c.task.deadline_us or 0)} has passed",
    ),
    Guard(
        "attempts_left",
        "`attempts < max_attempts`",
        lambda c: c.task.attempts < c.task.max_attempts,
        AttemptsExhaustedError,
        lambda c: f"all {c.task.max_attempts} attempts of this phase were used",
    ),
    Guard(
        "no_live_lease",
        "no lease, or the lease expired (`now >= expires_at`)",
        lambda c: not _lease_live(c),
        LeaseConflictError,
        _live_lease_message,
    ),
    Guard(
        "holder",
        "the lease is live and held by the caller's (owner, token)",
        lambda c: _holder_problem(c) is None,
        LeaseConflictError,
        lambda c: _holder_problem(c) or "",
    ),
    Guard(
        "extends",
        "the new expiry is later than the current one",
        _extends,
        LeaseConflictError,
        _extends_message,
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
    ),
    Guard("last_pending", "`index` is the only pending compensation", _last_pending),
    Guard("past_deadline", "a deadline is set and `now >= deadline`", _past_deadline),
    Guard(
        "lease_expired",
        "a lease is set and `now >= expires_at`",
        lambda c: c.task.lease is not None and c.now_us >= c.task.lease.expires_us,
    ),
    Guard(
        "no_lease_or_expired",
        "no lease, or the lease expired",
        lambda c: not _lease_live(c),
    ),
    Guard(
        "attempts_exhausted",
        "`attempts >= max_attempts`",
        lambda c: c.task.attempts >= c.task.max_attempts,
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
