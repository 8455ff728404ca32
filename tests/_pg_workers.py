"""Worker bodies run in child processes by the PostgreSQL race, fault and clock tests.

Each worker opens its own store (a store never crosses a fork) and writes what
it observed to a JSON file, so the parent can check it afterwards.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sagalease import Compensation, SagaLeaseError, StoreUnavailableError, TaskSaga, TaskState
from sagalease.clock import to_us
from sagalease.stores.postgres import PostgresStore


def _now() -> datetime:
    return datetime.now(UTC)


def claim_worker(
    url: str, schema: str, owner: str, out: str, start: Any, ttl_ms: int, seed: int
) -> None:
    """Claim until every task has ended; record each grant and how its lease ended.

    A record per grant: ``[task_id, token, acquired_us, end_us, how]`` where
    ``end_us`` is the last instant the worker knew its lease to be live (the
    last expiry it was granted, or the instant it completed/released). No
    reaper: an abandoned lease is taken over by ``claim_next`` once expired.
    """
    rng = random.Random(seed)
    store = PostgresStore(url, schema=schema, min_size=1, max_size=1)
    ttl = timedelta(milliseconds=ttl_ms)
    grants: list[list[Any]] = []
    errors: list[str] = []
    start.wait()
    try:
        while True:
            task = store.claim_next(owner=owner, ttl=ttl, now=_now())
            if task is None:
                counts = store.counts()
                if not any(counts[s] for s in TaskState if not s.is_terminal):
                    break
                time.sleep(0.002)  # the rest are leased: wait for ends or expiries
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
                    task = store.heartbeat(
                        task.task_id, owner=owner, token=lease.token, ttl=ttl, now=_now()
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


def chaos_worker(url: str, schema: str, owner: str, out: str, stop: Any, seed: int) -> None:
    """Random lifecycle calls until ``stop`` is set, while the parent kills backends.

    Records every call the store reported as done (``[task_id, version, repr]``
    of the returned record), how many calls ended in StoreUnavailableError
    (outcome unknown) and when the last success happened.
    """
    rng = random.Random(seed)
    store = PostgresStore(url, schema=schema, min_size=1, max_size=2, timeout=5.0)
    ttl = timedelta(milliseconds=40)
    done: list[list[Any]] = []
    errors: list[str] = []
    unknown = 0
    last_success = 0.0
    counter = 0
    held: list[TaskSaga] = []

    def ok(task: TaskSaga) -> TaskSaga:
        nonlocal last_success
        done.append([task.task_id, task.version, repr(task)])
        last_success = time.time()
        return task

    try:
        while not stop.is_set():
            roll = rng.random()
            now = _now()
            try:
                if roll < 0.2:
                    counter += 1
                    comps = [
                        Compensation("undo", f"{owner}-{counter}-{i}")
                        for i in range(rng.randint(0, 2))
                    ]
                    ok(
                        store.create(
                            f"{owner}-{counter}",
                            metadata={"n": counter, "who": owner},
                            compensations=comps,
                            max_attempts=rng.randint(1, 4),
                            now=now,
                        )
                    )
                elif roll < 0.45:
                    task = store.claim_next(owner=owner, ttl=ttl, now=now)
                    if task is not None:
                        held.append(ok(task))
                elif roll < 0.5:
                    for task in store.reap(now=now, limit=3):
                        ok(task)
                elif roll < 0.53:
                    page = store.list_tasks(limit=20)
                    if page:
                        victim = rng.choice(page)
                        ok(store.annotate(victim.task_id, text="seen", by="op", now=now))
                elif held:
                    task = held.pop(rng.randrange(len(held)))
                    new = _holder_call(store, rng, task, owner, ttl, now)
                    if new is not None:
                        ok(new)
                        if new.lease is not None and new.lease.owner == owner:
                            held.append(new)
            except StoreUnavailableError:
                unknown += 1
                time.sleep(0.005)
            except SagaLeaseError:
                pass
    except BaseException as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        store.close()
        Path(out).write_text(
            json.dumps(
                {"done": done, "errors": errors, "unknown": unknown, "last_success": last_success}
            )
        )


def _holder_call(
    store: PostgresStore,
    rng: random.Random,
    task: TaskSaga,
    owner: str,
    ttl: timedelta,
    now: datetime,
) -> TaskSaga | None:
    tid, token, roll = task.task_id, task.token, rng.random()
    if task.state is TaskState.COMPENSATING:
        pending = task.pending_compensations
        if not pending or roll < 0.1:
            return store.release(tid, owner=owner, token=token, now=now)
        if roll < 0.15:
            return store.compensation_failed(
                tid, owner=owner, token=token, index=pending[0], reason="gone", now=now
            )
        return store.compensation_applied(tid, owner=owner, token=token, index=pending[0], now=now)
    if roll < 0.2:
        return store.heartbeat(tid, owner=owner, token=token, ttl=ttl, now=now)
    if roll < 0.3:
        comp = Compensation("refund", tid, "late")
        return store.register_compensation(
            tid, owner=owner, token=token, compensation=comp, now=now
        )
    if roll < 0.6:
        return store.complete(tid, owner=owner, token=token, now=now)
    if roll < 0.8:
        return store.fail(tid, owner=owner, token=token, reason="boom", now=now)
    if roll < 0.9:
        return store.release(tid, owner=owner, token=token, now=now)
    return None  # abandon the lease


def skewed_worker(
    url: str,
    schema: str,
    action: str,
    owner: str,
    skew_s: float,
    clock: str,
    out: str,
) -> None:
    """One call from a machine whose clock is ``skew_s`` seconds off.

    The skew is injected into the system clock the store falls back on
    (``SystemClock.now`` and ``now_us``); with ``clock="database"`` the store must not use it.
    ``action``: ``acquire`` (task ``t``, ttl 60 s), ``claim`` or ``heartbeat``
    (as the holder with token 1). Writes what happened.
    """
    from sagalease import clock as clock_module

    real_now = clock_module.SystemClock.now
    real_now_us = clock_module.SystemClock.now_us

    def skewed(self: clock_module.SystemClock) -> datetime:
        return real_now(self) + timedelta(seconds=skew_s)

    def skewed_us(self: clock_module.SystemClock) -> int:
        return real_now_us(self) + round(skew_s * 1_000_000)

    clock_module.SystemClock.now = skewed  # type: ignore[method-assign]
    clock_module.SystemClock.now_us = skewed_us  # type: ignore[method-assign]
    store = PostgresStore(
        url, schema=schema, clock="database" if clock == "database" else None, max_size=1
    )
    result: dict[str, Any] = {}
    try:
        ttl = timedelta(seconds=60)
        if action == "acquire":
            task: TaskSaga | None = store.acquire("t", owner=owner, ttl=ttl)
        elif action == "claim":
            task = store.claim_next(owner=owner, ttl=ttl)
        else:
            task = store.heartbeat("t", owner=owner, token=1, ttl=ttl)
        result["task"] = None if task is None else repr(task)
        if task is not None and task.lease is not None:
            result["lease"] = [task.lease.owner, task.lease.token, task.lease.expires_us]
    except SagaLeaseError as exc:
        result["error"] = type(exc).__name__
    finally:
        result["server_now_us"] = store._server_now_us()
        store.close()
        Path(out).write_text(json.dumps(result))
