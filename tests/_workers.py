"""Worker bodies run in child processes by the SQLite race and crash tests.

Each worker opens its own store (a store never crosses a fork) and writes
what it observed to a JSON file, so the parent can check it afterwards.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sagalease import (
    Compensation,
    SagaLeaseError,
    SQLiteStore,
    TaskSaga,
    TaskState,
)
from sagalease.clock import to_us

US = timedelta(microseconds=1)


def _now() -> datetime:
    return datetime.now(UTC)


def claim_worker(db: str, owner: str, out: str, start: Any, ttl_ms: int, seed: int) -> None:
    """Claim until every task has ended; record each grant and how its lease ended.

    No reaper runs here: an abandoned lease is taken over by ``claim_next``
    once expired (a reaper on its own clock could drop a lease "later" than a
    claimer's ``now``, which the overlap check below would misread; see the
    note in test_sqlite_races.py).

    A record per grant: ``[task_id, token, acquired_us, end_us, how]`` where
    ``end_us`` is the last instant the worker knew its lease to be live
    (the last expiry it was granted, or the instant it completed/released).
    """
    rng = random.Random(seed)
    store = SQLiteStore(db, synchronous="NORMAL", timeout=30.0)
    ttl = timedelta(milliseconds=ttl_ms)
    grants: list[list[Any]] = []
    errors: list[str] = []
    start.wait()
    try:
        while True:
            now = _now()
            task = store.claim_next(owner=owner, ttl=ttl, now=now)
            if task is None:
                counts = store.counts()
                if not any(counts[s] for s in TaskState if not s.is_terminal):
                    break
                time.sleep(0.002)  # the rest are leased; wait for ends or expiries
                continue
            lease = task.lease
            assert lease is not None
            assert lease.owner == owner
            record: list[Any] = [task.task_id, lease.token, lease.acquired_us, lease.expires_us, ""]
            grants.append(record)
            roll = rng.random()
            try:
                if roll < 0.15:
                    record[4] = "abandoned"  # let it expire: another worker reclaims it
                    continue
                if roll < 0.35:
                    now = _now()
                    task = store.heartbeat(
                        task.task_id, owner=owner, token=lease.token, ttl=ttl, now=now
                    )
                    assert task.lease is not None
                    record[3] = task.lease.expires_us
                now = _now()
                if roll < 0.45:
                    store.release(task.task_id, owner=owner, token=lease.token, now=now)
                    record[3], record[4] = to_us(now, "now"), "released"
                else:
                    store.complete(task.task_id, owner=owner, token=lease.token, now=now)
                    record[3], record[4] = to_us(now, "now"), "completed"
            except SagaLeaseError as exc:  # the lease expired under us: fine, recorded
                record[4] = f"lost: {type(exc).__name__}"
    except BaseException as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        store.close()
        Path(out).write_text(json.dumps({"grants": grants, "errors": errors}))


def chaos_worker(db: str, owner: str, seed: int) -> None:
    """Loop forever doing random lifecycle calls (killed with SIGKILL by the parent)."""
    rng = random.Random(seed)
    store = SQLiteStore(db)
    ttl = timedelta(milliseconds=30)
    counter = 0
    held: list[TaskSaga] = []
    while True:
        roll = rng.random()
        now = _now()
        try:
            if roll < 0.15:
                counter += 1
                comps = [
                    Compensation("undo", f"{owner}-{counter}-{i}") for i in range(rng.randint(0, 2))
                ]
                store.create(
                    f"{owner}-{os.getpid()}-{counter}",
                    saga_id=rng.choice([None, "saga-a", "saga-b"]),
                    metadata={"n": counter, "who": owner, "text": "ünïcode ✓"},
                    compensations=comps,
                    max_attempts=rng.randint(1, 4),
                    deadline=rng.choice([None, now + timedelta(milliseconds=rng.randint(5, 200))]),
                    now=now,
                )
            elif roll < 0.40:
                task = store.claim_next(owner=owner, ttl=ttl, now=now)
                if task is not None:
                    held.append(task)
            elif roll < 0.45:
                store.reap(now=now, limit=rng.choice([None, 3]))
            elif roll < 0.48:
                page = store.list_tasks(limit=20)
                if page:
                    victim = rng.choice(page)
                    if rng.random() < 0.5:
                        store.annotate(victim.task_id, text="looked at\nit", by="op", now=now)
                    elif not victim.is_terminal:
                        store.quarantine(victim.task_id, reason="operator", by="op", now=now)
            elif held:
                task = held.pop(rng.randrange(len(held)))
                _holder_call(store, rng, task, owner, ttl, now, held)
        except SagaLeaseError:
            pass


def _holder_call(
    store: SQLiteStore,
    rng: random.Random,
    task: TaskSaga,
    owner: str,
    ttl: timedelta,
    now: datetime,
    held: list[TaskSaga],
) -> None:
    token = task.token
    tid = task.task_id
    roll = rng.random()
    if task.state is TaskState.COMPENSATING:
        pending = task.pending_compensations
        if not pending or roll < 0.1:
            store.release(tid, owner=owner, token=token, now=now)
        elif roll < 0.15:
            store.compensation_failed(
                tid, owner=owner, token=token, index=pending[0], reason="gone", now=now
            )
        else:
            held.append(
                store.compensation_applied(tid, owner=owner, token=token, index=pending[0], now=now)
            )
        return
    if roll < 0.2:
        held.append(store.heartbeat(tid, owner=owner, token=token, ttl=ttl, now=now))
    elif roll < 0.35:
        held.append(
            store.register_compensation(
                tid,
                owner=owner,
                token=token,
                compensation=Compensation("refund", tid, "late"),
                now=now,
            )
        )
    elif roll < 0.6:
        store.complete(tid, owner=owner, token=token, now=now)
    elif roll < 0.8:
        store.fail(tid, owner=owner, token=token, reason="boom", now=now)
    elif roll < 0.9:
        store.release(tid, owner=owner, token=token, delay=timedelta(milliseconds=5), now=now)
    # else: abandon the lease


def batch_worker(url: str, owner: str, out: str, start: Any, limit: int) -> None:
    """Claim batches of up to ``limit`` and complete each batch at once, until no task
    is open; record every (task_id, token) claimed and every error.
    """
    from sagalease import open_store

    store = open_store(url)
    claimed: list[list[Any]] = []
    errors: list[str] = []
    start.wait()
    try:
        while True:
            batch = store.claim_batch(owner=owner, ttl=timedelta(seconds=60), limit=limit)
            if not batch:
                counts = store.counts()
                if not any(counts[s] for s in TaskState if not s.is_terminal):
                    break
                time.sleep(0.002)
                continue
            claimed.extend([t.task_id, t.token] for t in batch)
            done = store.complete_many([(t.task_id, t.token) for t in batch], owner=owner)
            assert [t.state for t in done] == [TaskState.COMPLETED] * len(batch)
    except (SagaLeaseError, AssertionError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        store.close()
    Path(out).write_text(json.dumps({"claimed": claimed, "errors": errors}))
