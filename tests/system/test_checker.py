"""The model checker's full runs: the bundled models end as their files say, the
default one takes every declared transition, coverage failures on the small model,
recorded figures, `sagalease check` as a subprocess, and the shared core calls against a
plain search (the quick runs that catch broken lifecycles: tests/unit/test_checker_catches.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import deque
from typing import Any

import pytest

from sagalease import core, lifecycle
from sagalease.records import TaskState
from sagalease.verification import checker
from sagalease.verification.checker import Model, Result, check, load_model, model_names

SMALL = {"workers": 2, "ttl": 2, "max_attempts": 2, "deadline": 5, "compensations": 2}
_RESULTS: dict[str, Result[Model]] = {}


def _bundled(name: str) -> Result[Model]:
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


def test_uncovered_declared_transition_fails() -> None:
    """A model that never takes a declared transition is a failure, naming the transition."""
    result = check(load_model("default", **{**SMALL, "compensations": 1}))
    assert not result.ok
    assert "compensating --compensation_applied--> compensating" in result.uncovered


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


def test_recorded_figures_that_differ_fail_the_check() -> None:
    """A model whose recorded figures differ from the run fails, naming the figure."""
    model = load_model("default")
    assert model.figures is not None
    wrong = dataclasses.replace(model, figures={**model.figures, "states": 1})
    result = check(wrong)
    assert result.violation is None
    assert result.drift == {"states": (1, _bundled("default").states)}
    assert not result.ok


def _plain_figures(model: Model) -> tuple[int, int, int]:
    """(states, transitions, depth) of a plain breadth-first search over the real
    records, every state's own record and clock, no sharing of core calls.
    """
    handlers = core.handlers(contracts=False)
    init = checker._initial(model)
    seen = {checker._key(model, init)}
    queue = deque([(init, 0)])
    transitions = depth = 0
    while queue:
        state, at = queue.popleft()
        depth = max(depth, at)
        for _, after in checker._successors(model, state, handlers):
            transitions += 1
            key = checker._key(model, after)
            if key not in seen:
                seen.add(key)
                queue.append((after, at + 1))
    return len(seen), transitions, depth


@pytest.mark.parametrize(
    "overrides",
    [SMALL, {**SMALL, "workers": 3, "deadline": 4, "compensations": 1}],
    ids=["small", "three-workers"],
)
def test_shared_task_classes_find_what_a_plain_search_finds(overrides: dict[str, Any]) -> None:
    """Calling the core once per task class and call (the checker's speed-up) finds the
    same states, transitions and depth as exploring every state's own record.
    """
    model = load_model("default", **overrides)
    result = check(model)
    assert result.violation is None
    assert (result.states, result.transitions, result.depth) == _plain_figures(model)
