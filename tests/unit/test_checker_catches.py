"""The model checker on small models, in-process and quick: a liveness violation in a
bundled model, and broken lifecycles (a guard, a core event or the declaration
mutated) each reported (the bundled models in full and `sagalease check`:
tests/system/test_checker.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sagalease import core, lifecycle
from sagalease.records import TaskState
from sagalease.verification.checker import check, load_model

SMALL = {"workers": 2, "ttl": 2, "max_attempts": 2, "deadline": 5, "compensations": 2}
"""A model small enough that a broken lifecycle is found in milliseconds."""


def _broken_guard(monkeypatch: pytest.MonkeyPatch, name: str, test: Any) -> None:
    guard = lifecycle.GUARDS[name]
    monkeypatch.setitem(lifecycle.GUARDS, name, dataclasses.replace(guard, test=test))


def test_endless_heartbeats_are_a_liveness_violation() -> None:
    """Without a deadline or heartbeat bound, the cycle check reports a run that never ends."""
    result = check(load_model("endless_heartbeats"))
    assert result.violation is not None
    assert "forever" in result.violation
    assert any("heartbeat" in line for line in result.trace)


def test_catches_holder_check_ignoring_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder guard that ignores the token lets a zombie write: reported with a trace."""
    _broken_guard(
        monkeypatch,
        "holder",
        lambda c: (
            c.task.lease is not None
            and c.task.lease.owner == c.owner
            and c.now_us < c.task.lease.expires_us
        ),
    )
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "without the live lease" in result.violation
    assert result.trace


def test_catches_reclaim_before_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquire guard that ignores live leases is reported as acquiring a live lease."""
    _broken_guard(monkeypatch, "no_live_lease", lambda c: True)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "live lease" in result.violation


def test_catches_heartbeat_after_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder guard that forgets expiry lets a heartbeat revive a dead lease."""
    _broken_guard(
        monkeypatch,
        "holder",
        lambda c: (
            c.task.lease is not None
            and c.task.lease.owner == c.owner
            and c.task.lease.token == c.token
        ),
    )
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "without the live lease" in result.violation


def test_catches_an_undeclared_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that sends `complete` somewhere the chart does not declare is caught."""
    real = lifecycle.resolve

    def wrong(event: str, ctx: lifecycle.GuardContext) -> lifecycle.CompiledTransition:
        t = real(event, ctx)
        if event == "complete":
            return dataclasses.replace(t, target=TaskState.FAILED)
        return t

    monkeypatch.setattr(core, "resolve", wrong)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "undeclared edge" in result.violation


def _wrap_handler(monkeypatch: pytest.MonkeyPatch, event: str, change: Any) -> None:
    """Replace one core event function by a mutant: ``change(task, step) -> Step``."""
    real = core._HANDLERS[event]

    def mutant(task: Any, **kwargs: Any) -> core.Step:
        step: core.Step = change(task, real(task, **kwargs))
        return step

    monkeypatch.setitem(core._HANDLERS, event, mutant)


def test_catches_acquire_without_token_bump(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquisition that keeps the old token is reported (fencing would be void)."""

    def keep_token(task: Any, step: core.Step) -> core.Step:
        lease = step.task.lease
        assert lease is not None
        new = dataclasses.replace(
            step.task, token=task.token, lease=dataclasses.replace(lease, token=task.token)
        )
        return core.Step(new, step.entry)

    _wrap_handler(monkeypatch, "acquire", keep_token)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "token" in result.violation or "well formed" in result.violation
    assert 1 < len(result.trace) <= 6


def test_catches_a_writable_terminal_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lifecycle that lets the operator quarantine a finished task again is reported."""
    real = lifecycle.resolve

    def reopen(event: str, ctx: lifecycle.GuardContext) -> lifecycle.CompiledTransition:
        if ctx.task.state.is_terminal and event == "quarantine":
            return lifecycle.CompiledTransition(
                ctx.task.state, event, TaskState.QUARANTINED, (), ()
            )
        return real(event, ctx)

    monkeypatch.setattr(core, "resolve", reopen)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "terminal state" in result.violation


def test_catches_a_failure_that_drops_compensations(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fail` that forgets the compensations owed (straight to FAILED) is reported."""

    def drop(task: Any, step: core.Step) -> core.Step:
        if step.task.state is TaskState.COMPENSATING:
            failed = dataclasses.replace(
                step.task,
                state=TaskState.FAILED,
                compensations=(),
                terminal_reason="boom",
                attempts=task.attempts,
            )
            return core.Step(failed, dataclasses.replace(step.entry, to_state=TaskState.FAILED))
        return step

    _wrap_handler(monkeypatch, "fail", drop)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "compensation" in result.violation


def test_declaration_missing_a_transition_the_core_takes_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transition missing from the declaration but taken by the core is an undeclared edge."""
    from sagalease.verification import checker

    chart = dict(lifecycle.CHART)
    del chart[(TaskState.RUNNING, "release")]
    monkeypatch.setattr(checker, "CHART", chart)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "undeclared edge running --release--> pending" in result.violation


def test_catches_a_malformed_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that leaves the lease on the PENDING task is reported as a malformed record."""

    def keep_lease(task: Any, step: core.Step) -> core.Step:
        return core.Step(dataclasses.replace(step.task, lease=task.lease), step.entry)

    _wrap_handler(monkeypatch, "release", keep_lease)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert result.violation.startswith("record not well formed")
    assert result.trace[-1] == "  ^-- violates"
    assert "release" in result.trace[-2]


def test_catches_two_holders_of_one_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquisition that hands out the current token again leaves two workers holding
    it: the state check reports it even with the edge checks (which see it first) off.
    """
    from sagalease.verification import checker

    def reuse_token(task: Any, step: core.Step) -> core.Step:
        token = max(task.token, 1)
        lease = step.task.lease
        assert lease is not None
        new = dataclasses.replace(
            step.task,
            token=token,
            attempts=task.attempts,
            lease=dataclasses.replace(lease, token=token),
        )
        return core.Step(new, step.entry)

    _wrap_handler(monkeypatch, "acquire", reuse_token)
    monkeypatch.setattr(checker, "_edge_checks", lambda *args: None)
    result = check(load_model("default", **SMALL))
    assert result.violation == "two workers hold the current token"
    assert result.trace[-1] == "  ^-- violates"
    assert "workers believe [1,1]" in result.trace[-2]


def test_catches_an_event_that_changes_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat that moves the token on (lease and task alike) is reported."""

    def bump(task: Any, step: core.Step) -> core.Step:
        lease = step.task.lease
        assert lease is not None
        token = step.task.token + 1
        new = dataclasses.replace(
            step.task, token=token, lease=dataclasses.replace(lease, token=token)
        )
        return core.Step(new, step.entry)

    _wrap_handler(monkeypatch, "heartbeat", bump)
    result = check(load_model("default", **SMALL))
    assert result.violation == "heartbeat changed the token"
    assert result.trace[-1].endswith("<-- violates")


def test_catches_a_heartbeat_that_does_not_extend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the `extends` guard, a heartbeat that keeps the expiry is reported."""
    _broken_guard(monkeypatch, "extends", lambda c: True)
    result = check(load_model("default", **SMALL))
    assert result.violation == "heartbeat revived or shortened a lease"
    assert "heartbeat" in result.trace[-1]


def test_catches_the_reaper_dropping_a_live_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper that takes any lease for expired is reported as dropping a live one."""
    _broken_guard(monkeypatch, "lease_expired", lambda c: c.task.lease is not None)
    result = check(load_model("default", **SMALL))
    assert result.violation == "the reaper dropped a live lease"
    assert result.trace[-1].startswith("reaper")


def test_catches_a_failure_with_compensations_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lifecycle that never sees pending compensations fails a task that owes them."""
    _broken_guard(monkeypatch, "has_pending_compensation", lambda c: False)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert result.violation.endswith("failed the task with compensations still pending")
    assert "register" in "\n".join(result.trace)


def test_catches_a_state_without_a_way_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper blind to exhausted attempts leaves a task with no way forward (no deadline,
    no operator): the liveness check reports the stuck state.
    """
    _broken_guard(monkeypatch, "attempts_exhausted", lambda c: False)
    model = dataclasses.replace(
        load_model("default", **SMALL), deadline=None, operator=False, figures=None
    )
    result = check(model)
    assert result.violation == "a non-terminal state has no way forward"
    assert result.trace
    assert f"attempts={model.max_attempts}" in result.trace[-1]
