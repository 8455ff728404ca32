"""The compiled chart equals the declared ``Lifecycle``, and the engine agrees with ``resolve``.

``CHART`` is what the core evaluates; :class:`~sagalease.lifecycle.Lifecycle` is
the declaration. These tests read the declaration through python-statemachine's
own introspection, compare it row by row with ``CHART`` (and show that the
comparison catches a drifted chart), then run the declared machine itself on
random reachable tasks and check that it takes the same transition, or raises
the same error, as ``resolve``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from statemachine import State, StateChart
from statemachine.exceptions import InvalidDefinition, TransitionNotAllowed

from sagalease import core
from sagalease.errors import (
    InvalidTransitionError,
    LeaseConflictError,
    SagaLeaseError,
    TerminalTaskError,
)
from sagalease.lifecycle import (
    CHART,
    COMMON_VALIDATORS,
    EVENTS,
    GUARDS,
    CompiledTransition,
    GuardContext,
    Lifecycle,
    engine_for,
    resolve,
)
from sagalease.records import Compensation, CompensationStatus, TaskSaga, TaskState

Row = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]
"""(source, event, target, validators, conditions) of one transition."""
Table = dict[tuple[str, str], list[Row]]
"""(state, event) → its transitions, in the order they are tried."""
Chart = Mapping[tuple[TaskState, str], tuple[CompiledTransition, ...]]

T0_US = int(
    (datetime(2026, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
    / timedelta(microseconds=1)
)


# ---------------------------------------------------------------- the comparison


def declared_table(machine: type[StateChart]) -> Table:  # type: ignore[type-arg]
    """Read every transition off a StateChart class with python-statemachine's introspection."""
    table: Table = {}
    for state in machine.states:
        for transition in state.transitions:
            assert transition.source is state
            assert not transition.is_eventless, f"eventless transition from {state.id}"
            assert not transition.internal, f"internal transition from {state.id}"
            targets = [t.id for t in transition.targets]
            assert len(targets) == 1, f"{state.id}: {targets}"
            for event in transition.events:
                table.setdefault((state.id, str(event)), []).append(
                    (
                        state.id,
                        str(event),
                        targets[0],
                        tuple(str(v) for v in transition.validators),
                        tuple(str(c) for c in transition.cond),
                    )
                )
    return table


def compiled_table(chart: Chart) -> Table:
    """The same shape from a compiled chart (rows keep their own source and event, so a
    row filed under the wrong key shows up as a difference).
    """
    return {
        (state.value, event): [
            (t.source.value, t.event, t.target.value, t.validators, t.conds) for t in rows
        ]
        for (state, event), rows in chart.items()
    }


def chart_differences(declared: Table, compiled: Table) -> list[str]:
    """Every (state, event) whose ordered transitions differ, one line each."""
    problems = []
    for key in sorted(declared.keys() | compiled.keys()):
        want, got = declared.get(key), compiled.get(key)
        if got is None:
            problems.append(f"{key}: declared but missing from the chart: {want}")
        elif want is None:
            problems.append(f"{key}: in the chart but not declared: {got}")
        elif want != got:
            problems.append(f"{key}: declared {want} but compiled {got}")
    return problems


def test_compiled_chart_equals_declaration() -> None:
    """CHART has exactly the declared (state, event) → ordered (target, validators, conds)."""
    assert chart_differences(declared_table(Lifecycle), compiled_table(CHART)) == []
    assert all(rows for rows in CHART.values())


def _drift(chart: Chart, key: tuple[TaskState, str], rows: tuple[CompiledTransition, ...]) -> Chart:
    drifted = dict(chart)
    if rows:
        drifted[key] = rows
    else:
        del drifted[key]
    return drifted


def _drifted_charts() -> dict[str, Chart]:
    run_acq = (TaskState.RUNNING, "acquire")
    run_reap = (TaskState.RUNNING, "reap")
    fail = (TaskState.RUNNING, "fail")
    comp_done = (TaskState.COMPENSATING, "complete")
    first = CHART[run_acq][0]
    reap_rows = CHART[run_reap]
    return {
        "validator dropped": _drift(
            CHART, run_acq, (replace(first, validators=first.validators[1:]),)
        ),
        "validators reordered": _drift(
            CHART, run_acq, (replace(first, validators=first.validators[::-1]),)
        ),
        "rows swapped": _drift(CHART, run_reap, (reap_rows[1], reap_rows[0], *reap_rows[2:])),
        "condition negated": _drift(
            CHART, fail, (replace(CHART[fail][0], conds=("!has_pending_compensation",)),)
        ),
        "target changed": _drift(
            CHART, fail, (CHART[fail][0], replace(CHART[fail][1], target=TaskState.QUARANTINED))
        ),
        "row missing": _drift(CHART, fail, CHART[fail][:1]),
        "event missing": _drift(CHART, run_reap, ()),
        "extra event": _drift(
            CHART,
            comp_done,
            (
                CompiledTransition(
                    TaskState.COMPENSATING, "complete", TaskState.COMPLETED, ("holder",), ()
                ),
            ),
        ),
        "row misfiled": _drift(CHART, run_acq, (*CHART[(TaskState.COMPENSATING, "acquire")],)),
    }


@pytest.mark.parametrize("drift", sorted(_drifted_charts()))
def test_comparison_catches_a_drifted_chart(drift: str) -> None:
    """chart_differences reports a chart with one deliberate drift from the declaration."""
    problems = chart_differences(
        declared_table(Lifecycle), compiled_table(_drifted_charts()[drift])
    )
    assert len(problems) == 1, problems


def test_comparison_catches_a_drifted_declaration() -> None:
    """A declaration that differs from CHART (a validator missing) is reported too."""

    class Drifted(StateChart):  # type: ignore[type-arg]
        pending = State("PENDING", initial=True)
        running = State("RUNNING")
        completed = State("COMPLETED", final=True)
        acquire = pending.to(running, validators=["available", "attempts_left"])
        complete = running.to(completed, validators=["holder"])

    problems = chart_differences(declared_table(Drifted), compiled_table(CHART))
    assert any("('pending', 'acquire'): declared" in p for p in problems), problems


# ---------------------------------------------------------------- states, events, guards


def test_states_are_task_states() -> None:
    """The declared states are TaskState, final ones are the terminal ones, PENDING is initial."""
    assert {s.id for s in Lifecycle.states} == {s.value for s in TaskState}
    assert {s.id for s in Lifecycle.states if s.final} == {
        s.value for s in TaskState if s.is_terminal
    }
    assert {s.id for s in Lifecycle.final_states} == {s.value for s in TaskState if s.is_terminal}
    assert [s.id for s in Lifecycle.states if s.initial] == [TaskState.PENDING.value]
    for state in Lifecycle.states:
        assert state.value == state.id
    for (source, _event), rows in CHART.items():
        assert not source.is_terminal, "no transition leaves a terminal state"
        assert all(isinstance(t.target, TaskState) for t in rows)


def test_events_are_the_declared_events() -> None:
    """EVENTS lists each declared event once, in declaration order, and each has chart rows."""
    declared: list[Any] = Lifecycle.events  # type: ignore[assignment]  # class-level property
    assert tuple(str(e) for e in declared) == EVENTS
    assert len(set(EVENTS)) == len(EVENTS)
    assert {event for (_state, event) in CHART} == set(EVENTS)
    assert {event for (_state, event) in declared_table(Lifecycle)} == set(EVENTS)
    assert "annotate" not in EVENTS
    assert "create" not in EVENTS


def test_every_guard_is_defined_and_used() -> None:
    """Every guard name in the declaration is in GUARDS, every GUARDS entry is used, and
    validators are the guards that carry an error, conditions the ones that do not.
    """
    validators = {v for rows in CHART.values() for t in rows for v in t.validators}
    conds = {c.removeprefix("!") for rows in CHART.values() for t in rows for c in t.conds}
    assert validators | conds == set(GUARDS)
    assert all(name == guard.name for name, guard in GUARDS.items())
    for name in validators:
        assert GUARDS[name].error is not None, name
        assert GUARDS[name].message is not None, name
    for name in conds:
        assert GUARDS[name].error is None, name


def test_machine_instantiates_in_every_state() -> None:
    """The declared machine instantiates (string guards resolve) positioned at every state."""
    task = core.create("t", now_us=T0_US).task
    for state in TaskState:
        sm = engine_for(GuardContext(replace(task, state=state), T0_US))
        assert [s.id for s in sm.configuration] == [state.value]


def test_misspelled_guard_is_caught_at_instantiation() -> None:
    """A misspelled string guard passes class creation and fails only at instantiation."""

    class Misspelled(StateChart):  # type: ignore[type-arg]
        pending = State(initial=True)
        done = State(final=True)
        finish = pending.to(done, cond="no_such_guard")

    with pytest.raises(InvalidDefinition, match="no_such_guard"):
        Misspelled()


def test_strict_settings_make_illegal_events_raise() -> None:
    """The strict engine settings are on: an illegal or unknown event raises, and a failing
    validator propagates its typed error without moving the machine.
    """
    assert Lifecycle.allow_event_without_transition is False
    assert Lifecycle.catch_errors_as_events is False
    assert Lifecycle.atomic_configuration_update is True
    assert Lifecycle.enable_self_transition_entries is False
    task = core.create("t", now_us=T0_US).task
    sm = engine_for(GuardContext(task, T0_US))
    for event in ("complete", "no_such_event"):
        with pytest.raises(TransitionNotAllowed):
            sm.send(event)
        assert sm.model.state == "pending"
    leased = core.acquire(task, owner="w1", ttl_us=1_000, now_us=T0_US).task
    sm = engine_for(GuardContext(leased, T0_US, owner="w2", token=1))
    with pytest.raises(LeaseConflictError):
        sm.send("complete")
    assert sm.model.state == "running"
    assert [s.id for s in sm.configuration] == ["running"]


# ---------------------------------------------------------------- engine vs resolve

Outcome = tuple[str, str]
"""("state", target) or ("error", error type name)."""


def engine_outcome(event: str, ctx: GuardContext) -> tuple[Outcome, str | None]:
    """What python-statemachine does with ``event`` (TransitionNotAllowed mapped to the
    core's error), and the message of a validator's error.
    """
    sm = engine_for(ctx)
    try:
        sm.send(event)
    except TransitionNotAllowed:
        assert sm.model.state == ctx.task.state.value
        if ctx.task.state.is_terminal:
            return ("error", TerminalTaskError.__name__), None
        # The documented rule for a state without a row: the event's shared validators first.
        for name in COMMON_VALIDATORS[event]:
            try:
                GUARDS[name].check(ctx)
            except SagaLeaseError as exc:
                return ("error", type(exc).__name__), str(exc)
        return ("error", InvalidTransitionError.__name__), None
    except SagaLeaseError as exc:
        assert sm.model.state == ctx.task.state.value
        return ("error", type(exc).__name__), str(exc)
    (state,) = [s.id for s in sm.configuration]
    assert sm.model.state == state
    return ("state", state), None


def resolve_outcome(event: str, ctx: GuardContext) -> tuple[Outcome, str | None]:
    """What the compiled chart does with ``event``."""
    try:
        transition = resolve(event, ctx)
    except SagaLeaseError as exc:
        return ("error", type(exc).__name__), str(exc)
    assert transition.event == event
    assert transition.source is ctx.task.state
    return ("state", transition.target.value), None


compensations = st.builds(
    Compensation, kind=st.sampled_from(["refund", "unlock"]), target=st.just("order-1")
)
WORKERS = ("w1", "w2")


@st.composite
def reachable(draw: st.DrawFn) -> tuple[TaskSaga, int]:
    """A task reached from create by a random event sequence through the core, and the clock."""
    deadline = draw(st.sampled_from([None, 3_000, 20_000]))
    task = core.create(
        "t",
        now_us=T0_US,
        max_attempts=draw(st.integers(1, 3)),
        compensations=draw(st.lists(compensations, max_size=2)),
        deadline_us=None if deadline is None else T0_US + deadline,
        available_us=T0_US + draw(st.sampled_from([0, 500])),
    ).task
    now = T0_US
    for _ in range(draw(st.integers(0, 20))):
        now += draw(st.sampled_from([0, 1, 499, 1_000, 2_500]))
        event = draw(
            st.sampled_from(
                [
                    "acquire",
                    "acquire",
                    "heartbeat",
                    "release",
                    "register_compensation",
                    "complete",
                    "fail",
                    "fail",
                    "compensation_applied",
                    "compensation_applied",
                    "compensation_failed",
                    "quarantine",
                    "reap",
                    "reap",
                ]
            )
        )
        lease = task.lease
        owner = lease.owner if lease is not None else draw(st.sampled_from(WORKERS))
        args: dict[str, Any] = {"owner": owner, "token": task.token}
        if event == "acquire":
            args = {"owner": draw(st.sampled_from(WORKERS)), "ttl_us": 1_000}
        elif event == "heartbeat":
            args["ttl_us"] = 1_000
        elif event == "register_compensation":
            args["compensation"] = draw(compensations)
        elif event == "fail":
            args["reason"] = "boom"
        elif event in ("compensation_applied", "compensation_failed"):
            args["index"] = draw(st.sampled_from([*task.pending_compensations, 0]))
            if event == "compensation_failed":
                args["reason"] = "gone"
        elif event == "quarantine":
            args = {"reason": "operator", "by": "op"}
        elif event == "reap":
            args = {}
        with contextlib.suppress(SagaLeaseError):
            task = core.apply(task, event, now, **args).task
    return task, now


@st.composite
def contexts(draw: st.DrawFn) -> tuple[str, GuardContext]:
    """A random event and a GuardContext aimed at the guards' boundaries."""
    task, now = draw(reachable())
    instants = [now, task.available_us - 1, task.available_us]
    lease = task.lease
    if lease is not None:
        instants += [lease.expires_us - 1, lease.expires_us, lease.expires_us + 1]
    if task.deadline_us is not None:
        instants += [task.deadline_us - 1, task.deadline_us, task.deadline_us + 1]
    at = max(0, draw(st.sampled_from(instants)))
    creds: list[tuple[str | None, int | None]] = [(None, None), ("w1", task.token)]
    creds += [("w2", task.token), ("w1", task.token - 1)]
    if lease is not None:
        creds += [(lease.owner, lease.token)] * 3
    owner, token = draw(st.sampled_from(creds))
    expiries: list[int | None] = [None, at + 1_000]
    if lease is not None:
        expiries += [lease.expires_us - 1, lease.expires_us, lease.expires_us + 1]
    index = draw(st.sampled_from([None, -1, 0, 1, 2, *task.pending_compensations]))
    ctx = GuardContext(
        task,
        at,
        owner=owner,
        token=token,
        new_expiry_us=draw(st.sampled_from(expiries)),
        index=index,
    )
    return draw(st.sampled_from(EVENTS)), ctx


@given(contexts())
def test_engine_and_resolve_agree(case: tuple[str, GuardContext]) -> None:
    """On reachable tasks, the declared machine and resolve() take the same transition or
    raise the same error (with the same message for a failing validator).
    """
    event, ctx = case
    assert core.well_formed(ctx.task)
    _agree(event, ctx)


def _agree(event: str, ctx: GuardContext) -> Outcome:
    engine, engine_message = engine_outcome(event, ctx)
    compiled, compiled_message = resolve_outcome(event, ctx)
    assert engine == compiled
    if engine_message is not None:  # a validator's error: the very same one
        assert engine_message == compiled_message
    return compiled


def test_engine_and_resolve_agree_on_every_row() -> None:
    """Each declared row can be taken by both the engine and resolve (a witness per row)."""
    # A witness context for every (state, event, target) the chart declares.
    comp = Compensation("refund", "order-1")
    fresh = core.create("t", now_us=T0_US, compensations=[comp, comp], max_attempts=2).task
    running = core.acquire(fresh, owner="w1", ttl_us=1_000, now_us=T0_US).task
    compensating = core.fail(running, owner="w1", token=1, reason="x", now_us=T0_US).task
    comp_leased = core.acquire(compensating, owner="w1", ttl_us=1_000, now_us=T0_US).task
    late = T0_US + 5_000
    bare = replace(fresh, compensations=())
    bare_running = core.acquire(bare, owner="w2", ttl_us=1_000, now_us=T0_US).task
    seen: set[tuple[TaskState, str, TaskState]] = set()
    candidates: list[GuardContext] = []
    for task in (fresh, running, compensating, comp_leased, bare, bare_running):
        for variant in (
            task,
            replace(task, deadline_us=T0_US + 1),
            replace(task, attempts=task.max_attempts, token=max(task.token, task.max_attempts)),
            replace(
                task,
                compensations=(comp, replace(comp, status=CompensationStatus.APPLIED)),
            ),
        ):
            lease = variant.lease
            owner = None if lease is None else lease.owner
            for at in (T0_US, late):
                for index in (0, 1):
                    candidates.append(
                        GuardContext(
                            variant,
                            at,
                            owner=owner,
                            token=variant.token,
                            new_expiry_us=at + 2_000,
                            index=index,
                        )
                    )
    for ctx in candidates:
        for event in EVENTS:
            outcome = _agree(event, ctx)
            if outcome[0] == "state":
                seen.add((ctx.task.state, event, TaskState(outcome[1])))
    declared = {(s, e, t.target) for (s, e), rows in CHART.items() for t in rows}
    assert declared - seen == set()
