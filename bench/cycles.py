"""The lease cycle, library against raw SQL, in worker processes.

A cycle is ``claim_next`` + ``heartbeat`` + ``complete`` (mode ``full``) or
``claim_next`` + ``complete`` (mode ``cc``); raw SQL does the same work with the
minimal statements on a minimal table (``jobs``): one conditional ``UPDATE`` per
operation, no history, no library. ``batch10`` claims ten jobs in one statement and
completes them in one; with history (``raw-hist``) each of the two also appends the
ten history rows in the same transaction (SQLite: ``BEGIN IMMEDIATE`` under the
``flock``; PostgreSQL: the same statement, a CTE).

Tasks for the library are bulk-inserted with raw SQL into the store's own schema:
copies of a task the library itself created (row and history entry), so every
copy is a record the store wrote.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import TTL_US, WORKDIR, Work

TTL = timedelta(microseconds=TTL_US)

_TASK_COLUMNS = (
    "task_id, saga_id, state, metadata_json, compensations_json, lease_owner,"
    " lease_token, lease_acquired_us, lease_expires_us, lease_heartbeat_us, token, attempts,"
    " expirations, max_attempts, available_us, deadline_us, created_us, updated_us,"
    " terminal_reason, notes_json, version"
)
_HISTORY_COLUMNS = (
    "task_id, seq, event, from_state, to_state, at_us, owner, token, reason, args_json"
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _copy_columns(columns: str, prefix: str, postgres: bool = False) -> str:
    """``columns`` with ``task_id`` replaced by ``prefix`` || zero-padded ``x``."""
    rest = columns.split(", ", 1)[1]
    padded = "lpad(x::text, 9, '0')" if postgres else "printf('%09d', x)"
    return f"{prefix!r} || {padded}, {rest}"


# ---------------------------------------------------------------- SQLite


def sqlite_paths(name: str) -> Path:
    """A fresh path for database ``name`` (old files removed)."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path = WORKDIR / f"{name}.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def sqlite_lib_prepare(path: Path, pending: int, finished: int = 0) -> None:
    """A library store at ``path`` with ``finished`` completed tasks, then ``pending``
    pending ones (in creation order).
    """
    from sagalease.stores.sqlite import SQLiteStore

    store = SQLiteStore(path, synchronous="NORMAL")
    try:
        done = store.create("tpl-done")
        held = store.acquire(done.task_id, owner="bench", ttl=TTL)
        store.complete(done.task_id, owner="bench", token=held.token)
        store.create("tpl-pending")
    finally:
        store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        series = "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?)"
        if finished:
            conn.execute(
                f"{series} INSERT INTO tasks ({_TASK_COLUMNS})"
                f" SELECT {_copy_columns(_TASK_COLUMNS, 'f')} FROM g, tasks"
                " WHERE task_id = 'tpl-done' ORDER BY x",
                (finished,),
            )
        if pending > 1:
            conn.execute(
                f"{series} INSERT INTO tasks ({_TASK_COLUMNS})"
                f" SELECT {_copy_columns(_TASK_COLUMNS, 'p')} FROM g, tasks"
                " WHERE task_id = 'tpl-pending' ORDER BY x",
                (pending - 1,),
            )
            conn.execute(
                f"{series} INSERT INTO history ({_HISTORY_COLUMNS})"
                f" SELECT {_copy_columns(_HISTORY_COLUMNS, 'p')} FROM g, history"
                " WHERE task_id = 'tpl-pending'",
                (pending - 1,),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


_RAW_SQLITE_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    owner TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    expires_us INTEGER
);
CREATE INDEX jobs_open ON jobs (id, expires_us) WHERE state IN ('pending', 'running');
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    owner TEXT,
    token INTEGER
);
"""
_RAW_HISTORY = "INSERT INTO history (job_id, event, at_us, owner, token) VALUES (?, ?, ?, ?, ?)"

_RAW_CLAIM = (
    "UPDATE jobs SET state = 'running', owner = ?, token = token + 1, expires_us = ?"
    " WHERE id = (SELECT id FROM jobs WHERE state IN ('pending', 'running')"
    " AND (expires_us IS NULL OR expires_us <= ?) ORDER BY id LIMIT 1)"
    " RETURNING id, token"
)
_RAW_HEARTBEAT = (
    "UPDATE jobs SET expires_us = ? WHERE id = ? AND owner = ? AND token = ?"
    " AND state = 'running' AND expires_us > ?"
)
_RAW_COMPLETE = (
    "UPDATE jobs SET state = 'done', owner = NULL, expires_us = NULL"
    " WHERE id = ? AND owner = ? AND token = ? AND state = 'running' AND expires_us > ?"
)
_RAW_CLAIM10 = (
    "UPDATE jobs SET state = 'running', owner = ?, token = token + 1, expires_us = ?"
    " WHERE id IN (SELECT id FROM jobs WHERE state IN ('pending', 'running')"
    " AND (expires_us IS NULL OR expires_us <= ?) ORDER BY id LIMIT 10)"
    " RETURNING id, token"
)
_RAW_COMPLETE10 = (
    "UPDATE jobs SET state = 'done', owner = NULL, expires_us = NULL"
    " WHERE id IN (SELECT value FROM json_each(?)) AND owner = ? AND state = 'running'"
    " AND expires_us > ?"
)


def sqlite_raw_prepare(path: Path, pending: int) -> None:
    """The minimal table with ``pending`` jobs."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_RAW_SQLITE_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO jobs (state) VALUES ('pending')", [()] * pending)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _timed_loop(cycle: Callable[[], bool]) -> tuple[int, list[float]]:
    latencies: list[float] = []
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if not cycle():
            return len(latencies), latencies
        latencies.append((clock() - t0) / 1000)


def sqlite_lib_worker(path: str, synchronous: str, owner: str, mode: str) -> Work:
    """Set up one library worker on the SQLite store at ``path``."""
    from sagalease.stores.sqlite import SQLiteStore

    store = SQLiteStore(path, synchronous=synchronous)
    store.get("tpl-pending")  # warm the connection
    return _lib_work(store, owner, mode)


def _lib_work(store: Any, owner: str, mode: str) -> Work:
    """The library's cycle on ``store``: ``full``, ``cc`` or ``batch10`` (claim_batch of
    10 + complete_many); counts tasks done.
    """
    done = 0

    def cycle() -> bool:
        nonlocal done
        if mode == "batch10":
            batch = store.claim_batch(owner=owner, ttl=TTL, limit=10)
            if not batch:
                return False
            store.complete_many([(t.task_id, t.token) for t in batch], owner=owner)
            done += len(batch)
            return True
        task = store.claim_next(owner=owner, ttl=TTL)
        if task is None:
            return False
        if mode == "full":
            store.heartbeat(task.task_id, owner=owner, token=task.token, ttl=TTL)
        store.complete(task.task_id, owner=owner, token=task.token)
        done += 1
        return True

    def work() -> tuple[int, list[float]]:
        try:
            _count, latencies = _timed_loop(cycle)
            return done, latencies
        finally:
            store.close()

    return work


class _FileLock:
    """An app-level writer lock (``flock``), as in performance.md's second raw variant."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(f"{path}.rawlock", os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def sqlite_raw_worker(
    path: str, synchronous: str, owner: str, mode: str, lock: bool, hist: bool = False
) -> Work:
    """Set up one raw-SQL worker (SQLite busy handler, or a ``flock`` writer lock).

    ``hist``: each operation is also one ``BEGIN IMMEDIATE`` transaction that appends
    a history row (the durable work the library does, without the library).
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    guard: _FileLock | _NoLock = _FileLock(path) if lock else _NoLock()

    def op(
        sql: str, params: tuple[object, ...], event: str, job: int = 0, token: int = 0
    ) -> sqlite3.Cursor | tuple[int, int]:
        if not hist:
            return conn.execute(sql, params)
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(sql, params)
            if event == "claim":
                row = cur.fetchone()
                if row is None:
                    conn.execute("COMMIT")
                    return cur
                job, token = row
            conn.execute(_RAW_HISTORY, (job, event, _now_us(), owner, token))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return (job, token) if event == "claim" else cur

    done = 0

    def logged_many(sql: str, params: tuple[object, ...], event: str, rows: Any) -> Any:
        """``sql`` and one history row per job in ``rows`` (or, for the claim, per row
        it returns) in one ``BEGIN IMMEDIATE`` transaction; returns the claimed rows or
        the number of rows ``sql`` changed.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(sql, params)
            result = cur.fetchall() if rows is None else cur.rowcount
            changed = result if rows is None else rows
            if changed:
                at = _now_us()
                conn.executemany(_RAW_HISTORY, [(j, event, at, owner, t) for j, t in changed])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def batch10() -> bool:
        nonlocal done
        now = _now_us()
        with guard:
            if hist:
                rows = logged_many(_RAW_CLAIM10, (owner, now + TTL_US, now), "claim", None)
            else:
                rows = conn.execute(_RAW_CLAIM10, (owner, now + TTL_US, now)).fetchall()
        if not rows:
            return False
        params = (json.dumps([r[0] for r in rows]), owner, _now_us())
        with guard:
            if hist:
                count = logged_many(_RAW_COMPLETE10, params, "complete", rows)
            else:
                count = conn.execute(_RAW_COMPLETE10, params).rowcount
        if count != len(rows):
            raise RuntimeError("raw batch complete lost a lease")
        done += len(rows)
        return True

    def cycle() -> bool:
        nonlocal done
        if mode == "batch10":
            return batch10()
        done += 1
        now = _now_us()
        with guard:
            got = op(_RAW_CLAIM, (owner, now + TTL_US, now), "claim")
            row = got if isinstance(got, tuple) else got.fetchone()
        if row is None:
            done -= 1
            return False
        job, token = row
        if mode == "full":
            now = _now_us()
            with guard:
                cur = op(
                    _RAW_HEARTBEAT, (now + TTL_US, job, owner, token, now), "heartbeat", job, token
                )
            if not isinstance(cur, sqlite3.Cursor) or cur.rowcount != 1:
                raise RuntimeError("raw heartbeat lost the lease")
        now = _now_us()
        with guard:
            cur = op(_RAW_COMPLETE, (job, owner, token, now), "complete", job, token)
        if not isinstance(cur, sqlite3.Cursor) or cur.rowcount != 1:
            raise RuntimeError("raw complete lost the lease")
        return True

    def work() -> tuple[int, list[float]]:
        try:
            _count, latencies = _timed_loop(cycle)
            return done, latencies
        finally:
            conn.close()

    return work


# ---------------------------------------------------------------- PostgreSQL


def pg_lib_prepare(dsn: str, schema: str, pending: int, finished: int = 0) -> None:
    """A fresh library store in ``schema``: ``finished`` completed tasks, then
    ``pending`` pending ones; ``ANALYZE``d afterwards (as autovacuum would).
    """
    import psycopg

    from sagalease.stores.postgres import PostgresStore

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    store = PostgresStore(dsn, schema=schema, min_size=1, max_size=1)
    try:
        done = store.create("tpl-done")
        held = store.acquire(done.task_id, owner="bench", ttl=TTL)
        store.complete(done.task_id, owner="bench", token=held.token)
        store.create("tpl-pending")
    finally:
        store.close()
    series = "generate_series(1, %s) AS g(x)"
    done_cols = _copy_columns(_TASK_COLUMNS, "f", postgres=True)
    pending_cols = _copy_columns(_TASK_COLUMNS, "p", postgres=True)
    history_cols = _copy_columns(_HISTORY_COLUMNS, "p", postgres=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if finished:
            conn.execute(
                f"INSERT INTO {schema}.tasks ({_TASK_COLUMNS})"
                f" SELECT {done_cols} FROM {series}, {schema}.tasks"
                " WHERE task_id = 'tpl-done' ORDER BY x",
                (finished,),
            )
        if pending > 1:
            conn.execute(
                f"INSERT INTO {schema}.tasks ({_TASK_COLUMNS})"
                f" SELECT {pending_cols} FROM {series}, {schema}.tasks"
                " WHERE task_id = 'tpl-pending' ORDER BY x",
                (pending - 1,),
            )
            conn.execute(
                f"INSERT INTO {schema}.history ({_HISTORY_COLUMNS})"
                f" SELECT {history_cols} FROM {series}, {schema}.history"
                " WHERE task_id = 'tpl-pending'",
                (pending - 1,),
            )
        conn.execute(f"VACUUM ANALYZE {schema}.tasks")
        conn.execute(f"VACUUM ANALYZE {schema}.history")


def pg_raw_prepare(dsn: str, schema: str, pending: int) -> None:
    """The minimal table in ``schema`` with ``pending`` jobs."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " state text NOT NULL, owner text, token bigint NOT NULL DEFAULT 0, expires_us bigint)"
        )
        conn.execute(
            f"CREATE INDEX jobs_open ON {schema}.jobs (id) INCLUDE (expires_us)"
            " WHERE state IN ('pending', 'running')"
        )
        conn.execute(
            f"INSERT INTO {schema}.jobs (state) SELECT 'pending' FROM generate_series(1, %s)",
            (pending,),
        )
        conn.execute(
            f"CREATE TABLE {schema}.history (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " job_id bigint NOT NULL, event text NOT NULL, at_us bigint NOT NULL, owner text,"
            " token bigint)"
        )
        conn.execute(f"VACUUM ANALYZE {schema}.jobs")


def pg_lib_worker(dsn: str, schema: str, owner: str, mode: str) -> Work:
    """Set up one library worker on the PostgreSQL store in ``schema``."""
    from sagalease.stores.postgres import PostgresStore

    store = PostgresStore(dsn, schema=schema, min_size=1, max_size=1)
    store.get("tpl-pending")  # warm the pooled connection
    return _lib_work(store, owner, mode)


def pg_raw_statements(schema: str, hist: bool) -> dict[str, str]:
    """The raw worker's statements (``claim``, ``heartbeat``, ``complete``,
    ``claim10``, ``complete10``) on ``schema``'s minimal table; ``hist``: each
    update also appends a history row in the same statement (a CTE).
    """
    claim = (
        f"UPDATE {schema}.jobs SET state = 'running', owner = %s, token = token + 1,"
        f" expires_us = %s WHERE id = (SELECT id FROM {schema}.jobs"
        " WHERE state IN ('pending', 'running') AND (expires_us IS NULL OR expires_us <= %s)"
        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, token"
    )
    claim10 = (
        f"UPDATE {schema}.jobs SET state = 'running', owner = %s, token = token + 1,"
        f" expires_us = %s WHERE id IN (SELECT id FROM {schema}.jobs"
        " WHERE state IN ('pending', 'running') AND (expires_us IS NULL OR expires_us <= %s)"
        " ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED) RETURNING id, token"
    )
    heartbeat = (
        f"UPDATE {schema}.jobs SET expires_us = %s WHERE id = %s AND owner = %s"
        " AND token = %s AND state = 'running' AND expires_us > %s"
    )
    complete = (
        f"UPDATE {schema}.jobs SET state = 'done', owner = NULL, expires_us = NULL"
        " WHERE id = %s AND owner = %s AND token = %s AND state = 'running' AND expires_us > %s"
    )
    complete10 = (
        f"UPDATE {schema}.jobs SET state = 'done', owner = NULL, expires_us = NULL"
        " WHERE id = ANY(%s) AND owner = %s AND state = 'running' AND expires_us > %s"
    )
    if hist:

        def logged(update: str, event: str) -> str:
            update = update.split(" RETURNING ")[0]
            return (
                f"WITH u AS ({update} RETURNING id, token) INSERT INTO {schema}.history"
                f" (job_id, event, at_us, owner, token) SELECT id, '{event}',"
                " (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, owner_, token"
                f" FROM u, (SELECT %s::text AS owner_) o RETURNING job_id, token"
            )

        claim = logged(claim, "claim")
        heartbeat = logged(heartbeat, "heartbeat")
        complete = logged(complete, "complete")
        claim10 = logged(claim10, "claim")
        complete10 = logged(complete10, "complete")
    return {
        "claim": claim,
        "heartbeat": heartbeat,
        "complete": complete,
        "claim10": claim10,
        "complete10": complete10,
    }


def pg_raw_worker(dsn: str, schema: str, owner: str, mode: str, hist: bool = False) -> Work:
    """Set up one raw-SQL worker (psycopg, autocommit, prepared statements).

    ``hist``: every update also appends a history row, in the same statement (a CTE).
    """
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    q = pg_raw_statements(schema, hist)
    claim, heartbeat, complete = q["claim"], q["heartbeat"], q["complete"]
    claim10, complete10 = q["claim10"], q["complete10"]
    extra = (owner,) if hist else ()
    done = 0

    def cycle() -> bool:
        nonlocal done
        now = _now_us()
        if mode == "batch10":
            rows = conn.execute(
                claim10, (owner, now + TTL_US, now, *extra), prepare=True
            ).fetchall()
            if not rows:
                return False
            cur = conn.execute(
                complete10, ([r[0] for r in rows], owner, _now_us(), *extra), prepare=True
            )
            if cur.rowcount != len(rows):
                raise RuntimeError("raw batch complete lost a lease")
            done += len(rows)
            return True
        row = conn.execute(claim, (owner, now + TTL_US, now, *extra), prepare=True).fetchone()
        if row is None:
            return False
        job, token = row
        if mode == "full":
            now = _now_us()
            cur = conn.execute(
                heartbeat, (now + TTL_US, job, owner, token, now, *extra), prepare=True
            )
            if cur.rowcount != 1:
                raise RuntimeError("raw heartbeat lost the lease")
        cur = conn.execute(complete, (job, owner, token, _now_us(), *extra), prepare=True)
        if cur.rowcount != 1:
            raise RuntimeError("raw complete lost the lease")
        done += 1
        return True

    def work() -> tuple[int, list[float]]:
        try:
            _count, latencies = _timed_loop(cycle)
            return done, latencies
        finally:
            conn.close()

    return work


# ---------------------------------------------------------------- one measurement


def measure(
    backend: str, impl: str, workers: int, tasks: int, mode: str, dsn: str
) -> dict[str, object]:
    """Prepare a fresh database, run ``workers`` processes until no task is left.

    ``backend``: ``sqlite-NORMAL``, ``sqlite-FULL`` or ``postgres``; ``impl``: ``lib``,
    ``raw``, or (SQLite) ``raw-lock`` (``flock`` writer lock) and ``raw-hist`` (``flock``,
    and one history row per operation in the same transaction). Returns the figures as a
    JSON-able dict.
    """
    from bench.common import percentile, run_processes

    owners = [f"w{i}" for i in range(workers)]
    target: Callable[..., Work]
    if backend.startswith("sqlite"):
        sync = backend.split("-", 1)[1]
        path = sqlite_paths(f"cycle-{impl}")
        if impl == "lib":
            sqlite_lib_prepare(path, tasks)
            target = sqlite_lib_worker
            args = [(str(path), sync, o, mode) for o in owners]
        else:
            sqlite_raw_prepare(path, tasks)
            target = sqlite_raw_worker
            lock = impl in ("raw-lock", "raw-hist")
            args = [(str(path), sync, o, mode, lock, impl == "raw-hist") for o in owners]
    else:
        schema = f"bench_{impl.replace('-', '_')}"
        if impl == "lib":
            pg_lib_prepare(dsn, schema, tasks)
            target = pg_lib_worker
        else:
            pg_raw_prepare(dsn, schema, tasks)
            target = pg_raw_worker
        args = [(dsn, schema, o, mode, *((True,) if impl == "raw-hist" else ())) for o in owners]
    result = run_processes(target, args)
    if result.count != tasks:
        raise RuntimeError(f"{backend} {impl} x{workers}: {result.count} of {tasks} tasks done")
    lat = result.latencies_us
    return {
        "backend": backend,
        "impl": impl,
        "mode": mode,
        "workers": workers,
        "count": result.count,
        "seconds": result.seconds,
        "rate": result.rate,
        "p50_us": percentile(lat, 0.5),
        "p99_us": percentile(lat, 0.99),
        "max_us": max(lat) if lat else 0.0,
        "min_worker_share": (min(result.per_worker) * workers / result.count)
        if result.count
        else 0.0,
    }
