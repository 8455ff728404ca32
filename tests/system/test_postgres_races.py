"""Races on the PostgreSQL store: forced interleavings, real processes, killed
backends and skewed worker clocks.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from _pg_workers import chaos_worker, claim_worker, skewed_worker
from conftest import POSTGRES_URL, T0, require_postgres
from sagalease import (
    Compensation,
    LeaseConflictError,
    TaskSaga,
    TaskState,
    TerminalTaskError,
    core,
)

psycopg = pytest.importorskip("psycopg")
from sagalease.stores.postgres import PostgresStore  # noqa: E402

TTL = timedelta(seconds=10)
S = timedelta(seconds=1)
FAST_URL = (
    f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-c%20synchronous_commit%3Doff"
)
"""Worker connections that do not wait for the WAL flush at commit: the same locking and
visibility (what the race tests check), many more transactions per second."""


def _drop(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped after the test."""
    require_postgres()
    name = f"sagalease_test_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        _drop(name)


@pytest.fixture
def pair(schema: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores (two pools) on one schema."""
    first = PostgresStore(POSTGRES_URL, schema=schema, max_size=2)
    second = PostgresStore(POSTGRES_URL, schema=schema, max_size=2)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


# ---------------------------------------------------------------- forced interleavings


def _interleave(store: PostgresStore, other_write: Callable[[], TaskSaga]) -> dict[str, TaskSaga]:
    """Make ``other_write`` run between ``store``'s read and its write (once)."""
    seen: dict[str, TaskSaga] = {}

    def hook(_task_id: str) -> None:
        if "winner" not in seen:
            seen["winner"] = other_write()

    store._before_write = hook
    return seen


def test_acquire_vs_acquire_loser_gets_lease_conflict(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """Acquire vs acquire: the first write stands; the CAS loser gets LeaseConflictError."""
    a, b = pair
    a.create("t", now=T0)
    seen = _interleave(a, lambda: b.acquire("t", owner="b", ttl=TTL, now=T0 + S))
    with pytest.raises(LeaseConflictError):
        a.acquire("t", owner="a", ttl=TTL, now=T0 + S)
    winner = seen["winner"]
    assert winner.lease is not None
    assert (winner.lease.owner, winner.token) == ("b", 1)
    assert a.get("t") == winner
    assert [e.event for e in a.history("t")] == ["create", "acquire"]


def test_complete_vs_quarantine_loser_gets_terminal_error(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """A quarantine between complete's read and write stands; complete gets TerminalTaskError."""
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="a", ttl=TTL, now=T0)
    seen = _interleave(a, lambda: b.quarantine("t", reason="operator", by="op", now=T0 + S))
    with pytest.raises(TerminalTaskError):
        a.complete("t", owner="a", token=1, now=T0 + S)
    assert seen["winner"] == a.get("t")
    assert [e.event for e in a.history("t")] == ["create", "acquire", "quarantine"]


def test_fail_vs_register_keeps_the_compensation(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """A compensation registered while fail was in flight is kept: fail ends in COMPENSATING."""
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="w", ttl=TTL, now=T0)
    comp = Compensation("refund", "order-1")
    _interleave(
        a, lambda: b.register_compensation("t", owner="w", token=1, compensation=comp, now=T0 + S)
    )
    failed = a.fail("t", owner="w", token=1, reason="boom", now=T0 + S)
    assert (failed.state, failed.compensations) == (TaskState.COMPENSATING, (comp,))
    assert core.replay(a.history("t")) == a.get("t") == failed


def test_concurrent_notes_are_both_kept(pair: tuple[PostgresStore, PostgresStore]) -> None:
    """Two annotations racing both land (the CAS loser is re-applied to the fresh row)."""
    a, b = pair
    a.create("t", now=T0)
    _interleave(a, lambda: b.annotate("t", text="from b", by="b", now=T0 + S))
    final = a.annotate("t", text="from a", by="a", now=T0 + 2 * S)
    assert [n.text for n in final.notes] == ["from b", "from a"]
    assert final == a.get("t") == core.replay(a.history("t"))


# ---------------------------------------------------------------- real processes

ROUNDS = 20
PROCESSES = 8
TASKS = 1_000


def _check_grants(grants: list[list[Any]], store: PostgresStore) -> int:
    """Every grant a distinct (task, token), tokens 1..n per task, no overlap; the count."""
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


def test_eight_processes_claiming_never_share_a_lease(schema: str, tmp_path: Path) -> None:
    """8 processes x 20 rounds x 1,000 tasks: distinct (task, token) per grant, no overlap."""
    ctx = multiprocessing.get_context("fork")
    total = 0
    for round_no in range(ROUNDS):
        name = f"{schema}_r{round_no}"
        try:
            with PostgresStore(FAST_URL, schema=name) as seed:
                for i in range(TASKS):
                    seed.create(f"task-{i:04d}", max_attempts=1_000)
            start = ctx.Event()
            outs = [tmp_path / f"r{round_no}-w{w}.json" for w in range(PROCESSES)]
            procs = [
                ctx.Process(
                    target=claim_worker,
                    args=(FAST_URL, name, f"w{w}", str(outs[w]), start, 50, round_no * 100 + w),
                )
                for w in range(PROCESSES)
            ]
            for proc in procs:
                proc.start()
            start.set()
            for proc in procs:
                proc.join(300)
                assert proc.exitcode == 0
            grants: list[list[Any]] = []
            for out in outs:
                result = json.loads(out.read_text())
                assert result["errors"] == []
                grants.extend(result["grants"])
            with PostgresStore(POSTGRES_URL, schema=name) as store:
                total += _check_grants(grants, store)
                counts = store.counts()
                assert sum(counts.values()) == TASKS
                assert not any(counts[s] for s in TaskState if not s.is_terminal)
                assert {g[0] for g in grants} == {f"task-{i:04d}" for i in range(TASKS)}
                if round_no % 5 == 0:  # replay a quarter of the rounds in full
                    for task in store.list_tasks(limit=TASKS):
                        assert core.replay(store.history(task.task_id)) == task
        finally:
            _drop(name)
    print(f"\n{ROUNDS} rounds x {PROCESSES} processes x {TASKS} tasks: {total} grants checked")
    assert total >= ROUNDS * TASKS


# ---------------------------------------------------------------- killed backends


def _finish_everything(store: PostgresStore) -> int:
    """Drive every task to a terminal state at a time past every lease and deadline;
    returns the number of calls it took.
    """
    now = T0 + timedelta(days=365 * 50)
    calls = 0
    while any(store.counts()[s] for s in TaskState if not s.is_terminal):
        store.reap(now=now)
        calls += 1
        while (task := store.claim_next(owner="finisher", ttl=TTL, now=now)) is not None:
            calls += 1
            if task.state is TaskState.RUNNING:
                store.complete(task.task_id, owner="finisher", token=task.token, now=now)
            else:
                for index in task.pending_compensations:
                    task = store.compensation_applied(
                        task.task_id, owner="finisher", token=task.token, index=index, now=now
                    )
                if task.lease is not None:
                    store.release(task.task_id, owner="finisher", token=task.token, now=now)
        now += TTL
    return calls


def test_killed_backends_lose_nothing_and_work_resumes(schema: str, tmp_path: Path) -> None:
    """pg_terminate_backend at random under 4 workers: every reported write is in the log,
    every history replays to its record, every worker works again, every task can finish.
    """
    ctx = multiprocessing.get_context("fork")
    app = f"sagalease-chaos-{schema[-12:]}"
    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}application_name={app}"
    PostgresStore(url, schema=schema).close()  # create the schema before the workers start
    stop = ctx.Event()
    outs = [tmp_path / f"chaos-{w}.json" for w in range(4)]
    procs = [
        ctx.Process(target=chaos_worker, args=(url, schema, f"w{w}", str(outs[w]), stop, w))
        for w in range(4)
    ]
    for proc in procs:
        proc.start()
    rng = random.Random(7)
    kills = 0
    with psycopg.connect(POSTGRES_URL, autocommit=True) as killer:
        time.sleep(0.5)
        for _ in range(60):
            row = killer.execute(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s ORDER BY random() LIMIT 1) k",
                (app,),
            ).fetchone()
            kills += row[0] if row else 0
            time.sleep(rng.uniform(0.02, 0.1))
    kills_ended = time.time()
    time.sleep(1.5)  # the workers go on: work must resume after the last kill
    stop.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    results = [json.loads(out.read_text()) for out in outs]
    for result in results:
        assert result["errors"] == []
        assert result["last_success"] > kills_ended, "a worker did not resume after the kills"
    unknown = sum(r["unknown"] for r in results)
    done = [d for r in results for d in r["done"]]
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        tasks = store.list_tasks(limit=10_000)
        histories = {t.task_id: store.history(t.task_id) for t in tasks}
        for task in tasks:
            assert core.replay(histories[task.task_id]) == task
            assert core.well_formed(task)
        for task_id, version, shown in done:  # nothing reported done was lost
            assert repr(core.replay(histories[task_id][:version])) == shown
        calls = _finish_everything(store)
        assert not any(store.counts()[s] for s in TaskState if not s.is_terminal)
        for task in store.list_tasks(limit=10_000):
            assert core.replay(store.history(task.task_id)) == task
    print(
        f"\n{kills} backends killed; {len(done)} calls done, {unknown} with unknown outcome;"
        f" {len(tasks)} tasks replayed; finished in {calls} more calls"
    )
    assert kills > 0
    assert unknown > 0, "no call ever saw a killed connection: the test did not inject faults"


# ---------------------------------------------------------------- skewed clocks

SKEW = 5 * 60.0  # seconds: machines whose clocks disagree by minutes


def _run(ctx: Any, tmp_path: Path, name: str, *args: Any) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = ctx.Process(target=skewed_worker, args=(*args, str(out)))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.parametrize("ahead", ["thief ahead", "holder ahead"])
def test_database_clock_skewed_workers_cannot_steal_live_leases(
    schema: str, tmp_path: Path, ahead: str
) -> None:
    """With clock="database", workers whose clocks differ by minutes cannot take each
    other's live lease, and a fast clock cannot stretch a lease.
    """
    ctx = multiprocessing.get_context("fork")
    holder_skew, thief_skew = (0.0, SKEW) if ahead == "thief ahead" else (SKEW, 0.0)
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create("t")  # now: this machine's clock
    got = _run(
        ctx, tmp_path, "holder", POSTGRES_URL, schema, "acquire", "a", holder_skew, "database"
    )
    assert got["lease"][:2] == ["a", 1]
    # the lease runs 60 s on the server's clock, however fast the holder's clock is
    assert got["lease"][2] <= got["server_now_us"] + 60_000_000
    for action in ("claim", "acquire"):
        stolen = _run(
            ctx, tmp_path, action, POSTGRES_URL, schema, action, "b", thief_skew, "database"
        )
        assert stolen.get("task") is None
        assert stolen.get("error") in (None, "LeaseConflictError")
    beat = _run(
        ctx, tmp_path, "beat", POSTGRES_URL, schema, "heartbeat", "a", holder_skew, "database"
    )
    assert beat["lease"][:2] == ["a", 1]
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        task = store.get("t")
        assert task is not None
        assert task.lease is not None
        assert (task.lease.owner, task.token, task.attempts) == ("a", 1, 1)
        assert [e.event for e in store.history("t")] == ["create", "acquire", "heartbeat"]


def test_local_clocks_skewed_by_minutes_do_steal(schema: str, tmp_path: Path) -> None:
    """The control: the same skewed workers on their own clocks take a live lease (the
    hazard clock="database" removes).
    """
    ctx = multiprocessing.get_context("fork")
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create("t")
    got = _run(ctx, tmp_path, "holder", POSTGRES_URL, schema, "acquire", "a", 0.0, "local")
    assert got["lease"][:2] == ["a", 1]
    stolen = _run(ctx, tmp_path, "thief", POSTGRES_URL, schema, "claim", "b", SKEW, "local")
    assert stolen["lease"][:2] == ["b", 2]
