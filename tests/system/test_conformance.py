"""The conformance suite (issue 4): real backends pass through the CLI, every
deliberately broken backend is rejected naming the right invariant, bad usage is
exit 2, and the pytest plugin and base class work for a third party.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import conformance_mutants
from sagalease.cli import main as sagalease_main
from sagalease.conformance import ConformanceFailure, check_store, main, run
from sagalease.conformance.cli import run_from_args
from sagalease.conformance.concurrency import Op, linearizable
from sagalease.conformance.factories import memory
from sagalease.records import TaskState
from sagalease.stores.memory import MemoryStore

TESTS = Path(__file__).resolve().parents[1]
MUTANT_SEEDS = (1, 2, 3, 4, 5)
MUTANT_EXAMPLES = "10"


def _json_run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = sagalease_main(["conformance", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_real_backends_pass_through_the_cli(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI on factories:memory and factories:sqlite exits 0 at the CI profile."""
    code = sagalease_main(["conformance", f"sagalease.conformance.factories:{backend}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAILED" not in out
    assert out.strip().splitlines()[-1].startswith("PASS: ")
    if backend == "sqlite":
        assert "SKIPPED" not in out, "SQLite declares cross-process sharing"


def test_console_script_runs_the_suite() -> None:
    """The installed `sagalease conformance` script prints one JSON report and exits 0."""
    script = Path(sys.executable).parent / "sagalease"
    proc = subprocess.run(
        [
            str(script),
            "conformance",
            "sagalease.conformance.factories:memory",
            "--examples",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert {r["status"] for r in report["results"]} == {"passed", "skipped"}


@pytest.mark.parametrize(
    "mutant", conformance_mutants.MUTANTS, ids=[m.factory for m in conformance_mutants.MUTANTS]
)
def test_broken_backend_rejected_naming_the_invariant(
    mutant: conformance_mutants.Mutant, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each broken backend: exit 1 and the invariant it breaks named, in 5 of 5 seeds."""
    for seed in MUTANT_SEEDS:
        code, report = _json_run(
            capsys,
            [
                f"conformance_mutants:{mutant.factory}",
                "--examples",
                MUTANT_EXAMPLES,
                "--seed",
                str(seed),
                "--no-shrink",
            ],
        )
        assert code == 1, f"{mutant.broken_rule}: seed {seed} passed"
        results = report["results"]
        assert isinstance(results, list)
        named = {r["failure"]["invariant"] for r in results if "failure" in r}
        assert mutant.invariant in named, f"{mutant.broken_rule}, seed {seed}: named {named}"


def test_stateful_stage_alone_catches_the_expiry_boundary() -> None:
    """Without the contract checks, the state machine's boundary jumps catch `<=` for `<`."""
    report = run(conformance_mutants.expiry_off_by_one, examples=200, seed=0, only={"stateful/"})
    (result,) = report.results
    assert result.failure is not None
    assert result.failure.invariant == "INV-1"
    assert result.failure.steps, "a reproducing sequence is reported"


def test_concurrency_stage_alone_catches_select_then_update() -> None:
    """Only real threads expose a store that writes without compare-and-set."""
    report = run(conformance_mutants.no_compare_and_set, examples=10, seed=0, only={"concurrency/"})
    failures = report.failures
    assert [f.name for f in failures] == ["concurrency/threads"]
    assert failures[0].failure is not None
    assert failures[0].failure.invariant == "INV-1"


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


def test_pytest_base_class_and_plugin_for_a_third_party(tmp_path: Path) -> None:
    """A third party subclasses StoreConformanceTests overriding store_factory; the
    plugin's --sagalease-store runs the packaged tests; a broken store fails naming INV-8.
    """
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from sagalease import MemoryStore
            from sagalease.conformance.testing import StoreConformanceTests

            class TestMine(StoreConformanceTests):
                @pytest.fixture
                def store_factory(self):
                    return MemoryStore
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    base = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--sagalease-examples",
        "5",
    ]
    mine = subprocess.run(
        [*base, str(tmp_path / "test_mine.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "20 passed, 1 skipped" in mine.stdout
    broken = subprocess.run(
        [
            *base,
            "--sagalease-store=conformance_mutants:naive_accepted",
            "--pyargs",
            "sagalease.conformance.testing",
            "-k",
            "naive",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "INV-8 (Failed calls change nothing)" in broken.stdout
    idle = subprocess.run(
        [*base, "--pyargs", "sagalease.conformance.testing"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert "21 skipped" in idle.stdout


def test_memory_factory_gives_fresh_empty_stores() -> None:
    """Each call of the bundled factories returns a new, empty store."""
    a, b = memory(), memory()
    a.create("x")
    assert b.counts()[TaskState.PENDING] == 0
