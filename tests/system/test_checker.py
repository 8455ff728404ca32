"""The model checker passes the bundled models and catches broken lifecycles."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from sagalease import core, lifecycle
from sagalease.records import TaskState
from sagalease.verification.checker import Result, check, load_model, model_names

SMALL = {"workers": 2, "ttl": 2, "max_attempts": 2, "deadline": 5, "compensations": 2}
_RESULTS: dict[str, Result] = {}


def _bundled(name: str) -> Result:
    if name not in _RESULTS:
        _RESULTS[name] = check(load_model(name))
    return _RESULTS[name]


def test_bundled_models_meet_their_expected_outcome() -> None:
    """Every bundled model but the deep one ends as its file says (pass or fail)."""
    names = [n for n in model_names() if n not in {"ci", "deep"}]
    assert {"default", "endless_heartbeats"} <= set(names)
    for name in names:
        model = load_model(name)
        result = _bundled(name)
        assert result.ok == (model.expect == "pass"), (name, result.violation, result.uncovered)


def test_default_model_exercises_every_declared_transition() -> None:
    """The default model takes every transition of the chart and finds no violation."""
    result = _bundled("default")
    assert result.violation is None
    assert result.uncovered == []
    assert result.states > 1_000
    assert result.longest_run > 0


def test_endless_heartbeats_are_a_liveness_violation() -> None:
    """Without a deadline or heartbeat bound, the cycle check reports a run that never ends."""
    result = _bundled("endless_heartbeats")
    assert result.violation is not None
    assert "forever" in result.violation
    assert any("heartbeat" in line for line in result.trace)


def test_uncovered_declared_transition_fails() -> None:
    """A model that never takes a declared transition is a failure, naming the transition."""
    result = check(load_model("default", **{**SMALL, "compensations": 1}))
    assert not result.ok
    assert "compensating --compensation_applied--> compensating" in result.uncovered


def _broken_guard(monkeypatch: pytest.MonkeyPatch, name: str, test: Any) -> None:
    guard = lifecycle.GUARDS[name]
    monkeypatch.setitem(lifecycle.GUARDS, name, dataclasses.replace(guard, test=test))


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


def test_check_command_exit_status() -> None:
    """`sagalease check` exits 0 on a passing model and 1 on a violation, printing the trace."""
    ok = subprocess.run(
        [sys.executable, "-m", "sagalease.cli", "check", "default"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "sagalease.cli", "check", "endless_heartbeats"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "VIOLATION" in bad.stdout
    assert "shortest trace" in bad.stdout


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


def test_declaration_with_an_unreachable_transition_fails_coverage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transition added to the declaration that no run can take is reported as not exercised."""
    extra = lifecycle.CompiledTransition(
        TaskState.PENDING, "complete", TaskState.COMPLETED, ("holder",), ()
    )
    monkeypatch.setitem(lifecycle.CHART, (TaskState.PENDING, "complete"), (extra,))
    result = check(load_model("default", **SMALL))
    assert "pending --complete--> completed" in result.uncovered
    assert not result.ok


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


def test_recorded_figures_that_differ_fail_the_check() -> None:
    """A model whose recorded figures differ from the run fails, naming the figure."""
    model = load_model("default")
    assert model.figures is not None
    wrong = dataclasses.replace(model, figures={**model.figures, "states": 1})
    result = check(wrong)
    assert result.violation is None
    assert result.drift == {"states": (1, _bundled("default").states)}
    assert not result.ok
