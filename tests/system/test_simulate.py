"""`sagalease simulate` and the history verification behind its PASS/FAIL."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sagalease.verification.simulate as simulate_module
from sagalease import (
    Compensation,
    CompensationStatus,
    HistoryEntry,
    MemoryStore,
    SagaStore,
    SQLiteStore,
    TaskSaga,
    TaskState,
)
from sagalease import cli as cli_module
from sagalease.verification.history import Verification, check_task, verify_store
from sagalease.verification.simulate import (
    QUEUES,
    RETRY,
    RETRY_AFTER,
    SimulationSettings,
    is_retry,
    run_simulation,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(seconds=30)
SMALL = ["--workers", "2", "--tasks", "24", "--seed", "3"]
"""The small settings (also the CI smoke run)."""


def _s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------- the command


def test_small_simulation_passes_and_its_report_matches_the_store(tmp_path: Path) -> None:
    """A small `simulate --json` run exits 0 with PASS; its counts are the store's, every task
    ended, and `verify --all-ended` on the file agrees.
    """
    out = subprocess.run(
        [sys.executable, "-m", "sagalease.cli", "simulate", *SMALL, "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["result"] == "PASS"
    assert report["verification"]["problems"] == []
    assert report["verification"]["tasks"] == 24
    db = tmp_path / "sagalease-sim.db"
    assert report["db"] == f"sqlite:///{db}"
    store = SQLiteStore(db)
    try:
        counts = store.counts()
        assert all(counts[s] == 0 for s in TaskState if not s.is_terminal)
        assert report["states"] == {s.value: n for s, n in counts.items() if n}
        assert sum(report["task_kinds"].values()) == 24
        # Poison tasks kill their worker at every attempt, then the reaper quarantines them.
        poison = [t for t in store.list_tasks(limit=1000) if t.metadata["kind"] == "poison"]
        assert poison
        for task in poison:
            assert task.state is TaskState.QUARANTINED
            assert task.attempts == task.max_attempts
            assert (task.terminal_reason or "").startswith("attempts exhausted")
        # Each poison attempt killed its worker, unless the simulator's own SIGKILL came
        # first: it spares poison holders, but a worker it picked may claim one before
        # the signal lands (seen once in CI: 5 self-kills over 6 attempts).
        attempts = sum(t.attempts for t in poison)
        self_kills = report["workers_killed_by_poison_tasks"]
        assert self_kills <= attempts <= self_kills + report["workers_killed"]
        applied = sum(
            c.status is CompensationStatus.APPLIED
            for t in store.list_tasks(limit=1000)
            for c in t.compensations
        )
        assert report["compensations_applied"] == applied
        _check_queues_and_retries(report, store)
    finally:
        store.close()
    verify = subprocess.run(
        [sys.executable, "-m", "sagalease.cli", "--db", f"sqlite:///{db}", "verify", "--all-ended"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _check_queues_and_retries(report: dict[str, Any], store: SQLiteStore) -> None:
    """The report's queues and retries are the store's: tasks per queue (created with
    create_many in one batch of 24), the retries counted from the history, each
    transient error retried after the policy's backoff (within its jitter), each
    Retry(after=) after exactly its delay, no retry of a PermanentTaskError.
    """
    tasks = store.list_tasks(limit=1000)
    assert report["create_many_calls"] == 1
    assert set(report["queues"]) == set(QUEUES) == {"urgent", "bulk"}
    for queue, shown in report["queues"].items():
        mine = [t for t in tasks if t.queue == queue]
        assert shown["priority"] == QUEUES[queue] == mine[0].priority
        assert shown["tasks"] == len(mine) == sum(shown["states"].values())
        assert shown["states"] == {
            s.value: n for s in TaskState if (n := sum(t.state is s for t in mine))
        }
    assert report["queues"]["urgent"]["tasks"] == 6  # every fourth task
    histories = {t.task_id: store.history(t.task_id) for t in tasks}
    retries = {i: [e for e in h if is_retry(e)] for i, h in histories.items()}
    assert report["retries"] == sum(map(len, retries.values())) > 0
    reported = report["worker_outcomes"].get("retried", 0)
    assert report["retries_reported_by_workers"] == reported
    assert 0 < reported <= report["retries"]  # a worker killed after its write reports nothing
    by_kind: dict[str, list[TaskSaga]] = {}
    for task in tasks:
        by_kind.setdefault(task.metadata["kind"], []).append(task)
    initial_us = RETRY.initial / timedelta(microseconds=1)
    for task in by_kind["transient"]:
        if task.state is TaskState.COMPLETED and task.expirations == 0:
            # Every attempt ran to its end: one retry per transient error.
            assert len(retries[task.task_id]) == task.metadata["flakes"], task.task_id
        for entry in retries[task.task_id]:
            history = histories[task.task_id]
            attempt = sum(e.event == "acquire" for e in history[: entry.seq - 1])
            expected = initial_us * RETRY.factor ** (attempt - 1)
            low, high = expected * (1 - RETRY.jitter), expected * (1 + RETRY.jitter)
            assert low - 1 <= entry.args["delay_us"] <= high + 1, (task.task_id, entry)
    for task in by_kind["retry-after"]:
        assert [e.args["delay_us"] for e in retries[task.task_id]] in (
            [],  # its first attempt was cut short by a kill or a pause
            [RETRY_AFTER / timedelta(microseconds=1)],
        )
    for task in by_kind["fail"] + by_kind["fail-compensate"]:
        assert retries[task.task_id] == [], task.task_id
    for task in by_kind["fail-exhausted"]:
        assert task.state in (TaskState.FAILED, TaskState.QUARANTINED)
        assert task.attempts == task.max_attempts


def test_human_report_prints_pass_and_the_fleet_table(tmp_path: Path) -> None:
    """Without --json the report is tables plus a `verification: PASS` line, exit 0."""
    out = subprocess.run(
        [sys.executable, "-m", "sagalease.cli", "simulate", *SMALL, "--tasks", "10"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verification: PASS" in out.stdout
    assert "zombie writes rejected by fencing" in out.stdout
    assert "retries (releases for a retry, in the history)" in out.stdout
    assert "tasks per queue" in out.stdout
    assert "urgent" in out.stdout
    assert "Traceback" not in out.stderr


def test_seed_fixes_the_tasks(tmp_path: Path) -> None:
    """The same seed creates the same tasks (kinds, compensations, work) in two runs."""
    settings = SimulationSettings(workers=1, tasks=9, seed=11, kills=0, pauses=0)
    plans = []
    for run in ("a", "b"):
        db = f"sqlite:///{tmp_path}/{run}.db"
        report = run_simulation(settings, db=db)
        assert report.ok, report.verification.problems
        store = SQLiteStore(tmp_path / f"{run}.db")
        try:
            plans.append(
                [
                    (t.metadata, t.max_attempts, [c.kind for c in t.compensations])
                    for t in store.list_tasks()
                ]
            )
        finally:
            store.close()
    assert plans[0] == plans[1]


def test_tampered_history_makes_simulate_fail_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the verification is handed a forged history, simulate reports FAIL and exits 1."""
    real = verify_store

    def forged(store: SagaStore, **kwargs: Any) -> Verification:
        class Forged:
            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            def history(self, task_id: str) -> list[HistoryEntry]:
                entries = store.history(task_id)
                return [
                    dataclasses.replace(e, token=(e.token or 0) + 1) if e.event == "complete" else e
                    for e in entries
                ]

        return real(Forged(), **kwargs)

    monkeypatch.setattr(simulate_module, "verify_store", forged)
    monkeypatch.chdir(tmp_path)
    code = cli_module.main(["simulate", "--workers", "1", "--tasks", "6", "--seed", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["result"] == "FAIL"
    assert any("complete by" in p for p in report["verification"]["problems"])


# ---------------------------------------------------------------- the checks


def _finished_store() -> MemoryStore:
    """One task per ending, through real calls (times explicit)."""
    s = MemoryStore()
    s.create("ok", now=_s(0))
    t = s.acquire("ok", owner="w1", ttl=TTL, now=_s(1))
    s.heartbeat("ok", owner="w1", token=t.token, ttl=TTL, now=_s(2))
    s.complete("ok", owner="w1", token=t.token, now=_s(3))
    s.create("comp", compensations=[Compensation("refund", "o")], now=_s(0))
    t = s.acquire("comp", owner="w1", ttl=TTL, now=_s(1))
    t2 = s.acquire("comp", owner="w2", ttl=TTL, now=_s(40))  # w1's lease expired: reclaim
    s.fail("comp", owner="w2", token=t2.token, reason="boom", now=_s(41))
    t3 = s.acquire("comp", owner="w3", ttl=TTL, now=_s(42))
    s.compensation_applied("comp", owner="w3", token=t3.token, index=0, now=_s(43))
    assert t.token == 1
    return s


def test_honest_histories_pass() -> None:
    """A store driven only through its API passes every check and counts the reclaim."""
    result = verify_store(_finished_store())
    assert result.ok, result.problems
    assert (result.tasks, result.acquisitions, result.reclaims) == (2, 4, 1)


Tamper = Callable[[list[HistoryEntry]], list[HistoryEntry]]


def _retoken(event: str, delta: int) -> Tamper:
    def tamper(entries: list[HistoryEntry]) -> list[HistoryEntry]:
        return [
            dataclasses.replace(e, token=(e.token or 0) + delta) if e.event == event else e
            for e in entries
        ]

    return tamper


def _shift(event: str, seconds: float, nth: int = 0) -> Tamper:
    def tamper(entries: list[HistoryEntry]) -> list[HistoryEntry]:
        us = int(seconds * 1_000_000)
        index = [i for i, e in enumerate(entries) if e.event == event][nth]
        entries = list(entries)
        entries[index] = dataclasses.replace(entries[index], at_us=entries[index].at_us + us)
        return entries

    return tamper


def _drop(event: str) -> Tamper:
    def tamper(entries: list[HistoryEntry]) -> list[HistoryEntry]:
        index = next(i for i, e in enumerate(entries) if e.event == event)
        return entries[:index] + entries[index + 1 :]

    return tamper


def _owner(event: str, owner: str) -> Tamper:
    def tamper(entries: list[HistoryEntry]) -> list[HistoryEntry]:
        return [dataclasses.replace(e, owner=owner) if e.event == event else e for e in entries]

    return tamper


@pytest.mark.parametrize(
    ("task_id", "tamper", "expected"),
    [
        ("ok", _retoken("complete", 1), "but the lease was"),
        ("ok", _retoken("acquire", 4), "tokens must grow by one"),
        ("ok", _owner("complete", "zombie"), "but the lease was"),
        ("ok", _shift("complete", 120), "after its lease expired"),
        ("ok", _drop("heartbeat"), "not 1..n"),
        ("ok", _drop("acquire"), "with no lease"),
        ("comp", _shift("acquire", -30, nth=1), "still live"),
        ("comp", _drop("compensation_applied"), "does not reproduce the record"),
    ],
)
def test_tampered_histories_fail(task_id: str, tamper: Tamper, expected: str) -> None:
    """A forged token or owner, a write after expiry, a missing entry or an overlapping
    acquisition is reported as a problem.
    """
    store = _finished_store()
    record = store.get(task_id)
    facts = check_task(record, tamper(store.history(task_id)))
    assert facts.problems
    assert any(expected in p for p in facts.problems), facts.problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"state": TaskState.RUNNING}, "not terminal"),
        ({"attempts": 9, "max_attempts": 2}, "attempts 9 > max_attempts 2"),
    ],
)
def test_tampered_records_fail(change: dict[str, Any], expected: str) -> None:
    """A record that is not terminal, or over its attempt cap, fails with an honest history."""
    store = _finished_store()
    record = store.get("ok")
    assert record is not None
    facts = check_task(dataclasses.replace(record, **change), store.history("ok"))
    assert any(expected in p for p in facts.problems), facts.problems


def test_dropped_compensation_fails() -> None:
    """A COMPENSATED record with a compensation still pending is a violation (INV-4)."""
    store = _finished_store()
    record = store.get("comp")
    assert record is not None
    pending = tuple(
        dataclasses.replace(c, status=CompensationStatus.PENDING) for c in record.compensations
    )
    facts = check_task(dataclasses.replace(record, compensations=pending), store.history("comp"))
    assert any("compensations pending" in p for p in facts.problems), facts.problems


def test_open_tasks_pass_unless_all_must_end() -> None:
    """verify_store(require_terminal=False) accepts a running task; the default does not."""
    store = MemoryStore()
    store.create("t", now=_s(0))
    store.acquire("t", owner="w", ttl=TTL, now=_s(1))
    assert verify_store(store, require_terminal=False).ok
    assert not verify_store(store).ok
