"""Races on the SQLite store: forced interleavings, then real processes and threads."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _workers import claim_worker
from conftest import T0
from sagalease import (
    Compensation,
    LeaseConflictError,
    SagaLeaseError,
    SQLiteStore,
    TaskSaga,
    TaskState,
    TerminalTaskError,
    core,
)
from sagalease.clock import to_us

TTL = timedelta(seconds=10)
S = timedelta(seconds=1)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two stores (two connections, two writer-lock handles) on one file."""
    first = SQLiteStore(tmp_path / "race.db")
    second = SQLiteStore(tmp_path / "race.db")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _interleave(store: SQLiteStore, other_write: Callable[[], TaskSaga]) -> dict[str, TaskSaga]:
    """Make ``other_write`` run between ``store``'s read and its write (once)."""
    seen: dict[str, TaskSaga] = {}

    def hook(task_id: str) -> None:
        if "winner" not in seen:
            seen["winner"] = other_write()

    store._before_write = hook
    return seen


def _snapshot(store: SQLiteStore, task_id: str) -> tuple[TaskSaga | None, list[Any]]:
    return store.get(task_id), store.history(task_id)


def test_acquire_vs_acquire_loser_gets_lease_conflict(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """Acquire vs acquire: the one written first stands, the other gets LeaseConflictError."""
    a, b = pair
    a.create("t", now=T0)
    seen = _interleave(a, lambda: b.acquire("t", owner="b", ttl=TTL, now=T0 + S))
    with pytest.raises(LeaseConflictError) as info:
        a.acquire("t", owner="a", ttl=TTL, now=T0 + S)
    assert info.value.task_id == "t"
    winner = seen["winner"]
    assert winner.lease is not None
    assert (winner.lease.owner, winner.token) == ("b", 1)
    assert _snapshot(a, "t") == (winner, b.history("t"))
    assert [e.event for e in a.history("t")] == ["create", "acquire"]


def test_heartbeat_vs_reclaim_loser_gets_lease_conflict(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """Heartbeat vs reclaim: the reclaim stands, the heartbeat gets LeaseConflictError."""
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="a", ttl=TTL, now=T0)
    # a heartbeats just before expiry (its read sees its own live lease); b reclaims at expiry
    seen = _interleave(a, lambda: b.acquire("t", owner="b", ttl=TTL, now=T0 + TTL))
    with pytest.raises(LeaseConflictError) as info:
        a.heartbeat("t", owner="a", token=1, ttl=TTL, now=T0 + TTL - S)
    assert (info.value.owner, info.value.token) == ("a", 1)
    winner = seen["winner"]
    assert winner.lease is not None
    assert (winner.lease.owner, winner.token, winner.expirations) == ("b", 2, 1)
    assert _snapshot(a, "t") == (winner, b.history("t"))


def test_heartbeat_vs_reap_heartbeat_refused_and_reap_stands(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """Heartbeat vs reap: the reap stands, the heartbeat learns it lost the lease."""
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="a", ttl=TTL, now=T0)

    def reap() -> TaskSaga:
        (reaped,) = b.reap(now=T0 + TTL)
        return reaped

    seen = _interleave(a, reap)
    with pytest.raises(LeaseConflictError):
        a.heartbeat("t", owner="a", token=1, ttl=TTL, now=T0 + TTL - S)
    winner = seen["winner"]
    assert (winner.state, winner.lease, winner.expirations) == (TaskState.PENDING, None, 1)
    assert _snapshot(a, "t") == (winner, b.history("t"))


def test_complete_vs_quarantine_loser_gets_terminal_error(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """A quarantine between complete's read and write stands; complete gets TerminalTaskError."""
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="a", ttl=TTL, now=T0)
    seen = _interleave(a, lambda: b.quarantine("t", reason="operator", by="op", now=T0 + S))
    with pytest.raises(TerminalTaskError):
        a.complete("t", owner="a", token=1, now=T0 + S)
    winner = seen["winner"]
    assert (winner.state, winner.terminal_reason) == (TaskState.QUARANTINED, "operator")
    assert _snapshot(a, "t") == (winner, b.history("t"))


def test_fail_vs_stale_holder_register_keeps_compensation(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """A compensation registered while fail was in flight is kept: fail ends in COMPENSATING."""
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="w", ttl=TTL, now=T0)
    comp = Compensation("refund", "order-1")
    _interleave(
        a,
        lambda: b.register_compensation("t", owner="w", token=1, compensation=comp, now=T0 + S),
    )
    failed = a.fail("t", owner="w", token=1, reason="boom", now=T0 + S)
    assert failed.state is TaskState.COMPENSATING
    assert failed.compensations == (comp,)
    assert [e.event for e in a.history("t")] == [
        "create",
        "acquire",
        "register_compensation",
        "fail",
    ]
    assert core.replay(a.history("t")) == a.get("t") == failed


def test_concurrent_notes_are_both_kept(pair: tuple[SQLiteStore, SQLiteStore]) -> None:
    """Two annotations racing both land (the loser is re-applied to the fresh row, not lost)."""
    a, b = pair
    a.create("t", now=T0)
    _interleave(a, lambda: b.annotate("t", text="from b", by="b", now=T0 + S))
    final = a.annotate("t", text="from a", by="a", now=T0 + 2 * S)
    assert [n.text for n in final.notes] == ["from b", "from a"]
    assert final == a.get("t") == core.replay(a.history("t"))


# ---------------------------------------------------------------- real processes

ROUNDS = 20
PROCESSES = 8
TASKS = 500


def _check_grants(grants: list[list[Any]], store: SQLiteStore) -> int:
    """Every grant a distinct (task, token), tokens 1..n per task, no overlap; returns the count."""
    by_task: dict[str, list[list[Any]]] = defaultdict(list)
    for grant in grants:
        by_task[grant[0]].append(grant)
    pairs = [(g[0], g[1]) for g in grants]
    assert len(pairs) == len(set(pairs)), "a (task, token) was granted twice"
    for task_id, task_grants in by_task.items():
        task_grants.sort(key=lambda g: g[1])
        task = store.get(task_id)
        assert task is not None
        assert [g[1] for g in task_grants] == list(range(1, task.token + 1)), task_id
        for before, after in itertools.pairwise(task_grants):
            # the next lease starts no earlier than the moment the previous one ended
            assert after[2] >= before[3], (task_id, before, after)
    return len(grants)


def test_eight_processes_claiming_never_share_a_lease(tmp_path: Path) -> None:
    """8 processes x 20 rounds x 500 tasks: distinct (task, token), no overlapping leases."""
    ctx = multiprocessing.get_context("fork")
    total_grants = 0
    for round_no in range(ROUNDS):
        db = tmp_path / f"claims-{round_no}.db"
        with SQLiteStore(db, synchronous="NORMAL") as seed:
            for i in range(TASKS):
                seed.create(f"task-{i:04d}", max_attempts=1_000)
        start = ctx.Event()
        outs = [tmp_path / f"r{round_no}-w{w}.json" for w in range(PROCESSES)]
        procs = [
            ctx.Process(
                target=claim_worker,
                args=(str(db), f"w{w}", str(outs[w]), start, 20, round_no * 100 + w),
            )
            for w in range(PROCESSES)
        ]
        for proc in procs:
            proc.start()
        start.set()
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0
        grants: list[list[Any]] = []
        for out in outs:
            result = json.loads(out.read_text())
            assert result["errors"] == []
            grants.extend(result["grants"])
        store = SQLiteStore(db)
        try:
            assert store.integrity_check() == ["ok"]
            total_grants += _check_grants(grants, store)
            counts = store.counts()
            assert sum(counts.values()) == TASKS
            assert not any(counts[s] for s in TaskState if not s.is_terminal)
            assert {g[0] for g in grants} == {f"task-{i:04d}" for i in range(TASKS)}
            for task in store.list_tasks(limit=TASKS):
                assert core.replay(store.history(task.task_id)) == task
        finally:
            store.close()
    assert total_grants >= ROUNDS * TASKS


def test_threads_sharing_one_store_claim_each_task_once(tmp_path: Path) -> None:
    """8 threads sharing one SQLiteStore: every task is granted exactly once."""
    store = SQLiteStore(tmp_path / "threads.db", synchronous="NORMAL")
    for i in range(200):
        store.create(f"t{i:03d}", now=T0)
    got: list[tuple[str, int]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        try:
            while (task := store.claim_next(owner=owner, ttl=TTL, now=T0)) is not None:
                with lock:
                    got.append((task.task_id, task.token))
        except SagaLeaseError as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert sorted(got) == [(f"t{i:03d}", 1) for i in range(200)]
        assert store.counts()[TaskState.RUNNING] == 200
        assert store.integrity_check() == ["ok"]
    finally:
        store.close()


def test_claim_after_reap_with_older_now_does_not_overlap_reaped_lease(tmp_path: Path) -> None:
    """A lease granted after a reap never starts before the reaped lease expired (clock skew)."""
    with SQLiteStore(tmp_path / "skew.db") as store:
        store.create("t", now=T0)
        store.acquire("t", owner="a", ttl=TTL, now=T0)
        store.reap(now=T0 + TTL)  # the reaper's clock: the lease has expired
        granted = store.claim_next(owner="b", ttl=TTL, now=T0 + TTL - S)  # a lagging clock
        assert granted is None or (
            granted.lease is not None and granted.lease.acquired_us >= core_expiry(T0 + TTL)
        )


def core_expiry(at: datetime) -> int:
    """Microseconds of ``at`` (the reaped lease's expiry)."""
    return to_us(at, "at")
