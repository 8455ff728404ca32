"""The model checker passes the bundled models and catches broken lifecycles."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from typing import Any

import pytest

from sagalease import core, lifecycle
from sagalease.checker import Result, check, load_model, model_names
from sagalease.records import TaskState

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


@pytest.fixture
def uncontracted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the core without its icontract wrappers, so that the checker alone must catch bugs."""
    for event, handler in list(core._HANDLERS.items()):
        monkeypatch.setitem(core._HANDLERS, event, inspect.unwrap(handler))
    monkeypatch.setattr(core, "well_formed", inspect.unwrap(core.well_formed))


def _broken_guard(monkeypatch: pytest.MonkeyPatch, name: str, test: Any) -> None:
    guard = lifecycle.GUARDS[name]
    monkeypatch.setitem(lifecycle.GUARDS, name, dataclasses.replace(guard, test=test))


@pytest.mark.usefixtures("uncontracted")
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


@pytest.mark.usefixtures("uncontracted")
def test_catches_reclaim_before_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquire guard that ignores live leases is reported as acquiring a live lease."""
    _broken_guard(monkeypatch, "no_live_lease", lambda c: True)
    result = check(load_model("default", **SMALL))
    assert result.violation is not None
    assert "live lease" in result.violation


@pytest.mark.usefixtures("uncontracted")
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


@pytest.mark.usefixtures("uncontracted")
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
