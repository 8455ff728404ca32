"""Where a library heartbeat's time goes on SQLite (NORMAL), piece by piece, in one process.

    uv run --group bench python -m bench.sqlcost

Times (median µs over many repetitions, on one task that stays leased): the whole
``store.heartbeat`` (as a store runs by default: from the remembered record, core
contracts off) and with contracts on; its pieces (the row read and decode a store
skips when it remembers the task, ``core.heartbeat`` with and without its icontract
wrapper, the write transaction: ``UPDATE`` of the changed columns and the history
``INSERT``); and the raw-SQL heartbeat. Reads private attributes of the store on
purpose (a diagnostic, not an API user).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from bench.cycles import TTL, sqlite_lib_prepare, sqlite_paths

N = 2000


def _time(fn: Callable[[], object], n: int = N) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(samples)


def measure() -> list[tuple[str, float]]:
    """One round of every timing."""
    from sagalease import core
    from sagalease.stores._rows import changes, entry_values
    from sagalease.stores.sqlite import SQLiteStore

    path = sqlite_paths("sqlcost")
    sqlite_lib_prepare(path, 10)
    store = SQLiteStore(path, synchronous="NORMAL", contracts=False)
    checked = SQLiteStore(path, synchronous="NORMAL", contracts=True)
    task = store.claim_next(owner="me", ttl=TTL)
    assert task is not None
    tid, token = task.task_id, task.token
    conn = store._conn()
    ttl_us = int(TTL / timedelta(microseconds=1))
    unwrapped = getattr(core.heartbeat, "__wrapped__", None)
    rows: list[tuple[str, float]] = []

    rows.append(
        (
            "store.heartbeat (whole call)",
            _time(lambda: store.heartbeat(tid, owner="me", token=token, ttl=TTL)),
        )
    )
    checked.get(tid)  # remember the task
    rows.append(
        (
            "store.heartbeat, contracts on",
            _time(lambda: checked.heartbeat(tid, owner="me", token=token, ttl=TTL)),
        )
    )
    checked.close()
    rows.append(
        (
            "  read (skipped when remembered): SELECT 22 columns + decode",
            _time(lambda: store._read(conn, tid)),
        )
    )
    current = store._read(conn, tid)
    assert current is not None

    def now() -> int:
        return time.time_ns() // 1000

    rows.append(
        (
            "  core.heartbeat with icontract contracts",
            _time(
                lambda: core.heartbeat(
                    current, owner="me", token=token, ttl_us=ttl_us, now_us=now()
                )
            ),
        )
    )
    if unwrapped is not None:
        rows.append(
            (
                "  core.heartbeat without contracts (__wrapped__)",
                _time(
                    lambda: unwrapped(current, owner="me", token=token, ttl_us=ttl_us, now_us=now())
                ),
            )
        )

    pending = store.get("p000000001")
    assert pending is not None
    for name, call in (
        ("acquire", lambda f: f(pending, owner="me", ttl_us=ttl_us, now_us=now())),
        ("complete", lambda f: f(current, owner="me", token=token, reason=None, now_us=now())),
    ):
        fn = getattr(core, name)
        rows.append((f"  core.{name} with icontract contracts", _time(partial(call, fn))))
        raw_fn = getattr(fn, "__wrapped__", None)
        if raw_fn is not None:
            rows.append((f"  core.{name} without contracts", _time(partial(call, raw_fn))))

    def full_write() -> None:
        task = store._read(conn, tid)
        assert task is not None
        step = core.heartbeat(task, owner="me", token=token, ttl_us=ttl_us, now_us=now())
        t0 = time.perf_counter_ns()
        with store._writing(conn):
            assert store._write(conn, task, step)
        timings.append((time.perf_counter_ns() - t0) / 1000)

    timings: list[float] = []
    for _ in range(N):
        full_write()
    rows.append(
        (
            "  write txn: flock + BEGIN IMMEDIATE + UPDATE of the changed columns"
            " + history INSERT + COMMIT",
            statistics.median(timings),
        )
    )

    def values_only() -> None:
        task = store._read(conn, tid)
        assert task is not None
        step = core.heartbeat(task, owner="me", token=token, ttl_us=ttl_us, now_us=now())
        t0 = time.perf_counter_ns()
        changes(task, step.task)
        entry_values(step.entry)
        timings.append((time.perf_counter_ns() - t0) / 1000)

    timings = []
    for _ in range(N):
        values_only()
    rows.append(
        (
            "    of which finding and encoding the changed columns and the entry",
            statistics.median(timings),
        )
    )

    def writing_empty() -> None:
        with store._writing(conn):
            pass

    rows.append(("  empty write txn: flock + BEGIN IMMEDIATE + COMMIT", _time(writing_empty)))
    store.close()

    raw = sqlite_paths("sqlcost-raw")
    from bench.cycles import _RAW_HEARTBEAT, sqlite_raw_prepare

    sqlite_raw_prepare(raw, 1)
    import sqlite3

    rc = sqlite3.connect(raw, isolation_level=None)
    rc.execute("PRAGMA synchronous = NORMAL")
    rc.execute(
        "UPDATE jobs SET state = 'running', owner = 'me', token = 1, expires_us = ?",
        (now() + 3_600_000_000,),
    )
    rows.append(
        (
            "raw heartbeat: one autocommit UPDATE",
            _time(lambda: rc.execute(_RAW_HEARTBEAT, (now() + 3_600_000_000, 1, "me", 1, now()))),
        )
    )
    rc.close()
    return rows


def main() -> None:
    """Print the table: the median of 3 rounds, and the range."""
    rounds = [measure() for _ in range(3)]
    width = max(len(label) for label, _ in rounds[0])
    print(f"{'':<{width}}  median of 3 rounds (min..max), µs")
    for i, (label, _) in enumerate(rounds[0]):
        values = sorted(r[i][1] for r in rounds)
        print(f"{label:<{width}}  {values[1]:8.1f}  ({values[0]:.1f}..{values[2]:.1f})")


if __name__ == "__main__":
    main()
