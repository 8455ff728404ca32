"""The conformance suite (issue 4), the slow part: its stateful and concurrency stages
on the bundled stores, every deliberately broken backend rejected naming the right
invariant, each stage alone catching what only it can, and the installed console
script and pytest plugin working for a third party.

The contract checks run on the bundled stores in tests/stores/test_store_contract.py;
the quick in-process tests of the suite's CLI and reports are in
tests/unit/test_conformance_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import conformance_mutants
from conftest import BACKENDS, conformance_factory
from sagalease.cli import main as sagalease_main
from sagalease.conformance import Capabilities, StoreFactory, checks, run
from sagalease.conformance.testing import StoreConformanceTests

TESTS = Path(__file__).resolve().parents[1]
MUTANT_SEEDS = (1, 2, 3, 4, 5)
MUTANT_EXAMPLES = "10"


def _json_run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = sagalease_main(["conformance", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


DEEP_CHECKS = [c.name for c in checks() if not c.name.startswith("contract/")]
"""The stateful and concurrency stages (the contract checks: tests/stores)."""


class TestShippedDeepChecks(StoreConformanceTests):
    """The shipped stateful and concurrency stages at the CI profile on memory, SQLite
    (fresh files) and PostgreSQL (fresh schemas; mandatory with
    ``SAGALEASE_REQUIRE_POSTGRES=1``, else skipped).
    """

    @pytest.fixture(params=sorted(BACKENDS))
    def store_factory(self, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
        """A factory of fresh, empty stores of each bundled backend."""
        return conformance_factory(request.param, tmp_path)

    @pytest.mark.parametrize("check", DEEP_CHECKS)
    def test_conformance(
        self, store_factory: Callable[[], Any], check: str, request: pytest.FixtureRequest
    ) -> None:
        """The bundled store passes this stage of the shipped suite; the process stage runs
        on the stores that declare cross-process sharing (SQLite, PostgreSQL) and is
        reported skipped, naming the missing capability, on the one that does not (memory).
        """
        if check == "concurrency/processes" and Capabilities.of(store_factory).reopen is None:
            with pytest.raises(pytest.skip.Exception, match=r"Capabilities\(reopen=\.\.\.\)"):
                super().test_conformance(store_factory, check, request)
            return
        try:
            super().test_conformance(store_factory, check, request)
        except pytest.skip.Exception as skipped:
            pytest.fail(f"{check} was skipped on {store_factory!r}: {skipped}")


def test_cli_runs_on_the_shipped_factories(capsys: pytest.CaptureFixture[str]) -> None:
    """`sagalease conformance sagalease.conformance.factories:memory|sqlite` (the CI
    commands) exits 0 with a PASSED line per check and a PASS summary (one check here:
    the stages themselves run above and in tests/stores).
    """
    for backend in ("memory", "sqlite"):
        code = sagalease_main(
            [
                "conformance",
                f"sagalease.conformance.factories:{backend}",
                "--only",
                "contract/tokens_grow_by_one",
            ]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        lines = out.strip().splitlines()
        assert [x.split()[:2] for x in lines[:-1]] == [["PASSED", "contract/tokens_grow_by_one"]]
        assert lines[-1].startswith("PASS: ")


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


@pytest.mark.parametrize(
    "mutant",
    [
        m
        for m in conformance_mutants.MUTANTS
        if m.invariant in ("INV-9", "INV-10", "INV-11")
        or m.factory in ("newest_first_ignored", "queue_stats_stale_without_expiry")
    ],
    ids=lambda m: m.factory,
)
def test_stateful_stage_alone_catches_queue_priority_and_bulk_mutants(
    mutant: conformance_mutants.Mutant,
) -> None:
    """Without the contract checks, the state machine's queues, priorities,
    create_many batches and listings catch claims that ignore queues or priorities, a
    create_many that half-writes, newest-first ignored and stale leases counted without
    their expiry, naming the invariant, in 5 of 5 seeds.
    """
    factory = getattr(conformance_mutants, mutant.factory)
    for seed in MUTANT_SEEDS:
        report = run(factory, examples=50, seed=seed, only={"stateful/"}, shrink=False)
        (result,) = report.results
        assert result.failure is not None, f"{mutant.broken_rule}: seed {seed} passed"
        assert result.failure.invariant == mutant.invariant, (seed, result.failure)


def test_concurrency_stage_alone_catches_select_then_update() -> None:
    """Only real threads expose a store that writes without compare-and-set."""
    report = run(conformance_mutants.no_compare_and_set, examples=10, seed=0, only={"concurrency/"})
    failures = report.failures
    assert [f.name for f in failures] == ["concurrency/threads"]
    assert failures[0].failure is not None
    assert failures[0].failure.invariant == "INV-1"
    # Each recorded call is listed with its real-time interval (what linearizability
    # is judged on), after the trial's setup.
    calls = failures[0].failure.steps[1:]
    assert calls
    assert all(re.match(r"\[\d+\.\.\d+ µs\] worker \d: ", c) for c in calls), calls


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
    # Every check runs but the process stage (a memory store is not shared across
    # processes: skipped with its reason).
    assert f"{len(checks()) - 1} passed, 1 skipped" in mine.stdout
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
    assert "steps:" in broken.stdout, "the report lists the calls that led there"
    idle = subprocess.run(
        [*base, "--pyargs", "sagalease.conformance.testing"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert f"{len(checks())} skipped" in idle.stdout
