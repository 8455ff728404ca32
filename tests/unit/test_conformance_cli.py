"""The conformance suite's quick, in-process parts: check_store's failure, the CLI's
failure line and bad usage, the linearizability search on a hand-made history, and
the bundled memory factory (its stages on real backends and the mutant runs:
tests/system/test_conformance.py).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest

import conformance_mutants
from sagalease.conformance import ConformanceFailure, check_store, main
from sagalease.conformance._cli import run_from_args
from sagalease.conformance._concurrency import Op, linearizable
from sagalease.conformance.factories import memory
from sagalease.records import TaskState
from sagalease.stores.memory import MemoryStore


def test_check_store_raises_an_assertion_naming_invariant_and_step() -> None:
    """check_store raises ConformanceFailure (an AssertionError) with invariant, step and steps."""
    with pytest.raises(AssertionError) as info:
        check_store(conformance_mutants.naive_accepted, only={"contract/"})
    err = info.value
    assert isinstance(err, ConformanceFailure)
    assert err.invariant == "INV-8"
    assert "naive" in err.step
    assert err.steps[-1] == err.step
    assert "INV-8 (Failed calls change nothing)" in str(err)


def test_failure_line_shows_invariant_and_reproduction(capsys: pytest.CaptureFixture[str]) -> None:
    """A failed check prints one line: FAILED, the invariant, the step and a reproduction."""
    code = main(
        ["conformance_mutants:attempts_unbounded", "--examples", "5", "--only", "contract/attempts"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    (line,) = [x for x in out if x.startswith("FAILED")]
    assert "INV-5 (Bounded attempts)" in line
    assert "| reproduce: create('t', max_attempts=2" in line
    assert out[-1].startswith("FAIL: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no_such_module:factory"], "cannot import 'no_such_module'"),
        (["sagalease.conformance.factories:nothing"], "has no attribute 'nothing'"),
        (["not-a-spec"], "expected package.module:factory"),
        (["sagalease.conformance.factories:__doc__"], "is not callable"),
        (["conformance_mutants:MUTANTS"], "is not callable"),
        (["sagalease.records:TaskState"], "calling sagalease.records:TaskState failed"),
        (["sagalease.conformance.factories:temp_path"], "does not implement sagalease.SagaStore"),
    ],
)
def test_bad_usage_is_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unusable factory: exit 2 and one clear line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_bad_options_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--examples 0 or a missing factory argument is exit 2 (argparse's usage line)."""
    assert main(["sagalease.conformance.factories:memory", "--examples", "0"]) == 2
    assert main([]) == 2
    assert "usage: sagalease conformance" in capsys.readouterr().err


def test_missing_hypothesis_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Hypothesis the CLI exits 2 naming `pip install 'sagalease[conformance]'`."""
    import argparse

    monkeypatch.setitem(sys.modules, "hypothesis", None)
    args = argparse.Namespace(
        factory="sagalease.conformance.factories:memory",
        examples=5,
        seed=0,
        json=False,
        only=None,
        no_shrink=False,
    )
    assert run_from_args(args) == 2
    assert "pip install 'sagalease[conformance]'" in capsys.readouterr().err


def test_linearizability_check_flags_a_double_grant() -> None:
    """WGL: two overlapping acquisitions both granted token 1 are not linearizable; one is."""
    ref = MemoryStore()
    ref.create("c0", now=datetime(2026, 1, 1, tzinfo=UTC))
    initial = tuple(ref.list_tasks())
    now = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    granted = ref.acquire("c0", owner="w0", ttl=timedelta(seconds=2), now=now)
    now_us = (now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    kw = (("owner", "w0"), ("ttl_us", 2_000_000))
    first = Op(0, 0, 10, "acquire", "c0", now_us, kw, True, granted)
    other = ref.acquire("c0", owner="w1", ttl=timedelta(seconds=2), now=now + timedelta(seconds=2))
    assert other.token == 2
    twin = Op(
        1, 5, 15, "acquire", "c0", now_us, (("owner", "w1"), ("ttl_us", 2_000_000)), True, granted
    )
    refused = Op(
        1,
        5,
        15,
        "acquire",
        "c0",
        now_us,
        (("owner", "w1"), ("ttl_us", 2_000_000)),
        False,
        "LeaseConflictError",
    )
    assert linearizable([first, refused], initial) is None
    assert linearizable([first, twin], initial) is not None


def test_memory_factory_gives_fresh_empty_stores() -> None:
    """Each call of the bundled factories returns a new, empty store."""
    a, b = memory(), memory()
    a.create("x")
    assert b.counts()[TaskState.PENDING] == 0
