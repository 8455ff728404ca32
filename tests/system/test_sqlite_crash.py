"""Crash safety of the SQLite store: workers killed with SIGKILL in the middle of their loop."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _workers import chaos_worker
from sagalease import Compensation, SQLiteStore, TaskSaga, TaskState, core

ROUNDS = 12
WORKERS = 5


def _all_tasks(store: SQLiteStore) -> list[TaskSaga]:
    tasks: list[TaskSaga] = []
    after: str | None = None
    while page := store.list_tasks(limit=500, after=after):
        tasks.extend(page)
        after = page[-1].task_id
    return tasks


def _finish_everything(store: SQLiteStore, now: datetime) -> None:
    """Play a fair reaper and one live worker until nothing is left to do."""
    ttl = timedelta(minutes=1)
    for _ in range(10_000):
        store.reap(now=now)
        task = store.claim_next(owner="finisher", ttl=ttl, now=now)
        if task is None:
            return
        if task.state is TaskState.RUNNING:
            store.complete(task.task_id, owner="finisher", token=task.token, now=now)
        else:
            for index in task.pending_compensations:
                store.compensation_applied(
                    task.task_id, owner="finisher", token=task.token, index=index, now=now
                )
        now += timedelta(seconds=1)
    raise AssertionError("the finisher did not run out of work")


def test_sigkill_mid_loop_leaves_every_task_whole_and_finishable(tmp_path: Path) -> None:
    """60 SIGKILLs mid-loop: reopened, no half-written task, histories replay, every task ends."""
    db = tmp_path / "crash.db"
    with SQLiteStore(db) as seed:
        for i in range(40):
            seed.create(
                f"seed-{i:02d}",
                compensations=[Compensation("undo", f"seed-{i}")] * (i % 3),
                max_attempts=3,
            )
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(20260101)
    kills = 0
    for round_no in range(ROUNDS):
        procs = [
            ctx.Process(target=chaos_worker, args=(str(db), f"w{w}", round_no * 10 + w))
            for w in range(WORKERS)
        ]
        for proc in procs:
            proc.start()
        time.sleep(rng.uniform(0.05, 0.2))
        for proc in procs:
            assert proc.pid is not None
            assert proc.is_alive(), "a chaos worker stopped on its own"
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == -signal.SIGKILL
            kills += 1
    assert kills >= 50

    store = SQLiteStore(db)
    try:
        assert store.integrity_check() == ["ok"]
        tasks = _all_tasks(store)
        assert len(tasks) > 40, "the workers created tasks"
        states_seen = {t.state for t in tasks}
        assert TaskState.RUNNING in states_seen or TaskState.PENDING in states_seen
        for task in tasks:
            history = store.history(task.task_id)
            assert [e.seq for e in history] == list(range(1, task.version + 1))
            assert core.well_formed(task)
            assert core.replay(history) == task
        _finish_everything(store, datetime.now(UTC) + timedelta(days=1))
        counts = store.counts()
        assert not any(counts[s] for s in TaskState if not s.is_terminal), counts
        assert sum(counts.values()) == len(tasks)
        for task in _all_tasks(store):
            assert core.replay(store.history(task.task_id)) == task
        assert store.integrity_check() == ["ok"]
    finally:
        store.close()
