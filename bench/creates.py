"""``create_many`` against a raw multi-row insert doing the same durable work (issue 14).

Raw: one multi-row ``INSERT`` of the tasks and one of their history rows (one per
task), in one transaction (SQLite: ``BEGIN IMMEDIATE`` under a ``flock`` writer lock,
like ``raw+flock+history``; PostgreSQL: one statement, ``INSERT ... SELECT FROM
unnest(...)`` of the tasks and, in a CTE, of the history rows). The library:
``create_many`` on a fresh store. One process; in every round the library and raw
SQL take turns at each batch size, and the ratio is taken within the repetition.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from typing import Any

from bench.common import median

QUEUES = [f"q{i:02d}" for i in range(20)]

_RAW_SQLITE = """
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE INDEX tasks_open ON tasks (queue, priority, created_us) WHERE state = 'pending';
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at_us INTEGER NOT NULL
);
"""


def _now_us() -> int:
    return time.time_ns() // 1000


class _Raw:
    """Raw SQL: ``insert(ids)`` writes the tasks and their history rows."""

    def __init__(self, backend: str, dsn: str) -> None:
        self.backend = backend
        if backend.startswith("sqlite"):
            from bench.cycles import _FileLock, sqlite_paths

            path = sqlite_paths("creates-raw")
            self.conn: Any = sqlite3.connect(path, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute(f"PRAGMA synchronous = {backend.split('-', 1)[1]}")
            self.conn.executescript(_RAW_SQLITE)
            self.lock = _FileLock(str(path))
        else:
            import psycopg

            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute("DROP SCHEMA IF EXISTS bench_creates_raw CASCADE")
            self.conn.execute("CREATE SCHEMA bench_creates_raw")
            self.conn.execute(
                "CREATE TABLE bench_creates_raw.tasks (task_id text PRIMARY KEY,"
                " state text NOT NULL, queue text NOT NULL, priority int NOT NULL,"
                " created_us bigint NOT NULL)"
            )
            self.conn.execute(
                "CREATE INDEX tasks_open ON bench_creates_raw.tasks (queue, priority, created_us)"
                " WHERE state = 'pending'"
            )
            self.conn.execute(
                "CREATE TABLE bench_creates_raw.history (id bigint GENERATED ALWAYS AS IDENTITY"
                " PRIMARY KEY, task_id text NOT NULL, event text NOT NULL, at_us bigint NOT NULL)"
            )
            self.sql = (
                "WITH t AS (INSERT INTO bench_creates_raw.tasks"
                " (task_id, state, queue, priority, created_us)"
                " SELECT i, 'pending', q, p, %s FROM unnest(%s::text[], %s::text[], %s::int[])"
                " AS u(i, q, p) RETURNING task_id)"
                " INSERT INTO bench_creates_raw.history (task_id, event, at_us)"
                " SELECT task_id, 'create', %s FROM t"
            )
        self.statements: dict[int, tuple[str, str]] = {}

    def insert(self, ids: list[str]) -> None:
        now = _now_us()
        queues = [QUEUES[i % len(QUEUES)] for i in range(len(ids))]
        prios = [i % 7 for i in range(len(ids))]
        if self.backend == "postgres":
            cur = self.conn.execute(self.sql, (now, ids, queues, prios, now), prepare=True)
            if cur.rowcount != len(ids):
                raise RuntimeError("raw create_many lost rows")
            return
        n = len(ids)
        if n not in self.statements:
            self.statements[n] = (
                "INSERT INTO tasks (task_id, state, queue, priority, created_us) VALUES "
                + ", ".join(["(?, 'pending', ?, ?, ?)"] * n),
                "INSERT INTO history (task_id, event, at_us) VALUES "
                + ", ".join(["(?, 'create', ?)"] * n),
            )
        tasks_sql, history_sql = self.statements[n]
        task_params: list[object] = []
        history_params: list[object] = []
        for i, q, p in zip(ids, queues, prios, strict=True):
            task_params += (i, q, p, now)
            history_params += (i, now)
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(tasks_sql, task_params)
                self.conn.execute(history_sql, history_params)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.conn.close()


def _library(backend: str, dsn: str) -> Any:
    if backend.startswith("sqlite"):
        from bench.cycles import sqlite_paths
        from sagalease.stores.sqlite import SQLiteStore

        return SQLiteStore(sqlite_paths("creates-lib"), synchronous=backend.split("-", 1)[1])
    import psycopg

    from sagalease.stores.postgres import PostgresStore

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_creates_lib CASCADE")
    store = PostgresStore(dsn, schema="bench_creates_lib", min_size=1, max_size=1)
    # as in the fleet part: tables ANALYZEd (as autovacuum does on a store in use)
    # before the measured connection plans the history's foreign-key check
    from sagalease.records import NewTask

    store.create_many([NewTask(f"pre-{i}", queue=QUEUES[i % 20]) for i in range(1000)])
    store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE bench_creates_lib.tasks")
        conn.execute("ANALYZE bench_creates_lib.history")
    return PostgresStore(dsn, schema="bench_creates_lib", min_size=1, max_size=1)


def measure(
    backend: str, batches: dict[int, int], reps: int, dsn: str, rounds: int = 3
) -> list[dict[str, Any]]:
    """Per-task time of ``create_many`` and of the raw insert, in batches (``batches``:
    size -> calls per repetition), on one fresh library store and one fresh raw table;
    each row carries ``ratio`` = raw time / library time in the same repetition (the
    library's speed as a share of raw SQL's).
    """
    from sagalease.records import NewTask

    store = _library(backend, dsn)
    raw = _Raw(backend, dsn)
    rows: list[dict[str, Any]] = []
    try:
        store.create("warm", queue=QUEUES[0])
        raw.insert(["warm"])
        for rep in range(reps):
            seconds: dict[tuple[str, int], float] = defaultdict(float)
            done: dict[tuple[str, int], int] = defaultdict(int)
            for r in range(rounds):
                for size, calls in batches.items():
                    chunk = range(r * calls // rounds, (r + 1) * calls // rounds)
                    lists = [
                        [
                            NewTask(
                                f"b{rep}-{size}-{c}-{i}",
                                queue=QUEUES[i % len(QUEUES)],
                                priority=i % 7,
                            )
                            for i in range(size)
                        ]
                        for c in chunk
                    ]
                    t0 = time.perf_counter()
                    for news in lists:
                        store.create_many(news)
                    seconds["lib", size] += time.perf_counter() - t0
                    done["lib", size] += size * len(lists)
                    id_lists = [[f"b{rep}-{size}-{c}-{i}" for i in range(size)] for c in chunk]
                    t0 = time.perf_counter()
                    for ids in id_lists:
                        raw.insert(ids)
                    seconds["raw", size] += time.perf_counter() - t0
                    done["raw", size] += size * len(id_lists)
            for size in batches:
                lib_us = seconds["lib", size] / done["lib", size] * 1e6
                raw_us = seconds["raw", size] / done["raw", size] * 1e6
                rows.append(
                    {
                        "backend": backend,
                        "rep": rep,
                        "batch": size,
                        "lib_us": lib_us,
                        "raw_us": raw_us,
                        "ratio": raw_us / lib_us,
                    }
                )
    finally:
        store.close()
        raw.close()
    return rows


def summary(rows: list[dict[str, Any]], backend: str, size: int) -> dict[str, float]:
    """Median per-task times and ratio of ``backend`` at batch ``size``."""
    sel = [r for r in rows if r["backend"] == backend and r["batch"] == size]
    return {k: median([r[k] for r in sel]) for k in ("lib_us", "raw_us", "ratio")}
