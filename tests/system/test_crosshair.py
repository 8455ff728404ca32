"""The CrossHair check bites, and what it proves covers the whole lifecycle.

``tests/crosshair_mutants/broken_core.py`` holds broken copies of core
functions, each driven exactly like the real function in ``.ci/crosshair``
(from reachable records, held to the real function's contracts). CrossHair
must exit 1 and name every driver in a counterexample.

The drivers in ``tests/crosshair_mutants/harness.py`` bound their scalars by
preconditions (:data:`~crosshair_mutants.harness.DOMAIN`); "Confirmed over all
paths" is a proof over that box. The box is checked here to be what the
preconditions say, to reach every transition the lifecycle declares, and (run
concretely, icontract checking each call) to keep every contract.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import icontract
import pytest

from crosshair_mutants import harness
from sagalease.core import Step
from sagalease.errors import SagaLeaseError
from sagalease.lifecycle import CHART
from sagalease.records import TaskState

TESTS = Path(__file__).resolve().parents[1]
CROSSHAIR = shutil.which("crosshair", path=str(Path(sys.executable).parent))

needs_crosshair = pytest.mark.skipif(CROSSHAIR is None, reason="crosshair-tool is not installed")


def _drivers() -> dict[str, Callable[..., Step]]:
    return {
        name: fn
        for name, fn in vars(harness).items()
        if name.startswith("drive_") and inspect.isfunction(fn)
    }


def _box(fn: Callable[..., Step]) -> Iterator[dict[str, int]]:
    names = list(inspect.signature(fn).parameters)
    for values in itertools.product(*(harness.DOMAIN[name] for name in names)):
        yield dict(zip(names, values, strict=True))


@needs_crosshair
def test_crosshair_finds_every_mutant() -> None:
    """CrossHair exits 1 with a counterexample naming every mutant driver."""
    from crosshair_mutants.broken_core import DRIVERS

    assert CROSSHAIR is not None
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            CROSSHAIR,
            "check",
            "--analysis_kind=icontract",
            "--per_condition_timeout=15",
            "--per_path_timeout=2",
            *(f"crosshair_mutants.broken_core.{name}" for name in DRIVERS),
        ],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    found = set(re.findall(r": error: .* when calling (drive_\w+)\(", output))
    assert found == set(DRIVERS), output


def test_every_event_has_a_driver() -> None:
    """One harness driver per core event function (create and annotate included)."""
    assert {name.removeprefix("drive_") for name in _drivers()} == set(harness.RAW)


def test_driver_preconditions_are_the_domain() -> None:
    """Each driver's preconditions refuse one step outside DOMAIN on either side
    of every parameter (the box CrossHair proves over is exactly DOMAIN).
    """
    for fn in _drivers().values():
        inside = next(_box(fn))
        for param, bounds in ((p, harness.DOMAIN[p]) for p in inside):
            for outside in (bounds.start - 1, bounds.stop):
                with pytest.raises(icontract.ViolationError):
                    fn(**{**inside, param: outside})


def test_the_domain_reaches_every_declared_transition_and_keeps_the_contracts() -> None:
    """Run concretely over the whole box (icontract checks each driver's
    postcondition, i.e. the real function's contracts), the drivers take every
    transition of the lifecycle's CHART, annotate from every state, create
    some tasks, and only refuse with the typed errors.
    """
    declared = {(t.source, t.event, t.target) for ts in CHART.values() for t in ts}
    assert len(declared) == sum(len(ts) for ts in CHART.values())  # (from, event, to) names one
    taken: set[tuple[TaskState, str, TaskState]] = set()
    created = 0
    for fn in _drivers().values():
        for args in _box(fn):
            try:
                entry = fn(**args).entry
            except SagaLeaseError:
                continue
            if entry.from_state is None:  # create
                created += 1
            else:
                taken.add((entry.from_state, entry.event, entry.to_state))
    annotated = {source for source, event, _ in taken if event == "annotate"}
    assert taken - {t for t in taken if t[1] == "annotate"} == declared
    assert annotated == set(TaskState)
    assert created > 0
