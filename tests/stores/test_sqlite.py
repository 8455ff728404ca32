"""The SQLite store itself: schema and migrations, reopening, bad files, locking, indexes,
and the worker runtime's threads sharing one SQLite store.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import T0
from sagalease import (
    Compensation,
    InvalidInputError,
    LeaseContext,
    MemoryStore,
    SagaLeaseError,
    SagaStore,
    SchemaVersionError,
    SQLiteStore,
    StoreUnavailableError,
    TaskState,
    Worker,
    core,
    open_store,
)
from sagalease.stores.sqlite import latest_schema_version, migrations, schema_sql

TTL = timedelta(seconds=30)
S = timedelta(seconds=1)


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    return [(t, n, tb, " ".join(sql.split())) for t, n, tb, sql in rows]


def _run(conn: sqlite3.Connection, script: str) -> None:
    from sagalease.stores.sqlite._store import _statements

    for statement in _statements(script):
        conn.execute(statement)


def _files(tmp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tmp.iterdir()) if p.is_file()}


def _populate(store: SagaStore) -> None:
    """A varied history: every state, compensations, notes, deadlines, delays, unicode."""
    store.create(
        "plain",
        saga_id="s1",
        metadata={"k": "v", "n": [1, 2.5, None, True], "ü": "✓"},
        now=T0,
    )
    store.create(
        "comp",
        saga_id="s1",
        compensations=[Compensation("refund", "order-1", "charged")],
        max_attempts=2,
        deadline=T0 + timedelta(hours=1),
        now=T0,
    )
    store.create("later", available_at=T0 + timedelta(minutes=5), now=T0)
    store.create("done", now=T0)
    store.create("quar", now=T0)
    store.create("expired", now=T0)
    t = store.acquire("done", owner="w1", ttl=TTL, now=T0 + S)
    store.heartbeat("done", owner="w1", token=t.token, ttl=TTL, now=T0 + 2 * S)
    store.complete("done", owner="w1", token=t.token, reason="fine", now=T0 + 3 * S)
    t = store.acquire("comp", owner="w2", ttl=TTL, now=T0 + S)
    store.register_compensation(
        "comp",
        owner="w2",
        token=t.token,
        compensation=Compensation("email", "user@example.com"),
        now=T0 + 2 * S,
    )
    store.fail("comp", owner="w2", token=t.token, reason="boom", now=T0 + 3 * S)
    t = store.acquire("comp", owner="w3", ttl=TTL, now=T0 + 4 * S)
    store.compensation_applied("comp", owner="w3", token=t.token, index=1, now=T0 + 5 * S)
    store.quarantine("quar", reason="bad input\nsee ticket", by="op", now=T0 + S)
    store.annotate("quar", text="looked at it", by="op", now=T0 + 2 * S)
    store.annotate("plain", text="note\twith tab", by="op", now=T0 + 2 * S)
    store.acquire("expired", owner="w4", ttl=S, now=T0 + S)
    t = store.acquire("plain", owner="w5", ttl=TTL, now=T0 + S)
    store.release("plain", owner="w5", token=t.token, delay=timedelta(seconds=7), now=T0 + 2 * S)


def _dump(store: SagaStore) -> object:
    tasks = store.list_tasks(limit=1000)
    return (
        tasks,
        {t.task_id: store.history(t.task_id) for t in tasks},
        store.counts(),
        store.list_stale(now=T0 + timedelta(minutes=1)),
        store.list_tasks(saga_id="s1"),
        store.list_tasks(state=TaskState.PENDING, after="plain", limit=2),
    )


# ---------------------------------------------------------------- schema


def test_migrations_from_empty_equal_schema_sql() -> None:
    """Applying every migration to an empty database gives exactly schema.sql."""
    migrated = sqlite3.connect(":memory:")
    for _version, _name, sql in migrations():
        _run(migrated, sql)
    fresh = sqlite3.connect(":memory:")
    _run(fresh, schema_sql())
    assert _schema(migrated) == _schema(fresh)
    assert len(_schema(fresh)) >= 5
    assert latest_schema_version() == len(migrations()) >= 2


def test_new_file_gets_latest_version_and_wal(tmp_path: Path) -> None:
    """A new store file is created at the latest user_version, in WAL mode, with schema.sql."""
    SQLiteStore(tmp_path / "new.db").close()
    conn = sqlite3.connect(tmp_path / "new.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_schema_version()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reference = sqlite3.connect(":memory:")
    _run(reference, schema_sql())
    assert _schema(conn) == _schema(reference)


def test_older_file_is_migrated_in_place_keeping_data(tmp_path: Path) -> None:
    """A version-1 file (no open-task index, the full by-state index) is migrated to the
    latest version; data kept.
    """
    db = tmp_path / "old.db"
    with SQLiteStore(db) as store:
        _populate(store)
        before = _dump(store)
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX tasks_open")
    conn.execute("DROP INDEX tasks_ended")
    conn.execute("CREATE INDEX tasks_by_state ON tasks (state, seq)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with SQLiteStore(db) as store:
        assert _dump(store) == before
    conn = sqlite3.connect(db)
    reference = sqlite3.connect(":memory:")
    _run(reference, schema_sql())
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_schema_version()
    assert _schema(conn) == _schema(reference)


def test_newer_schema_refused_file_untouched(tmp_path: Path) -> None:
    """A file from a newer sagalease: SchemaVersionError, and the file is left byte for byte."""
    db = tmp_path / "new.db"
    with SQLiteStore(db) as store:
        store.create("t", now=T0)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {latest_schema_version() + 1}")
    conn.commit()
    conn.close()
    before = _files(tmp_path)
    with pytest.raises(SchemaVersionError, match="schema version"):
        SQLiteStore(db)
    assert _files(tmp_path) == before


# ---------------------------------------------------------------- round trip


def test_reopen_round_trip_reads_back_everything(tmp_path: Path) -> None:
    """Everything written reads back equal after close and reopen (and equal to memory)."""
    memory = MemoryStore()
    _populate(memory)
    db = tmp_path / "trip.db"
    with SQLiteStore(db) as store:
        _populate(store)
        written = _dump(store)
    reopened = open_store(f"sqlite:///{db}")
    try:
        assert _dump(reopened) == written == _dump(memory)
        for task in reopened.list_tasks():
            assert core.replay(reopened.history(task.task_id)) == task
    finally:
        reopened.close()


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///relative and sqlite:////absolute open an SQLiteStore; bad URLs are refused."""
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}")
    try:
        assert isinstance(rel, SQLiteStore)
        assert isinstance(absolute, SQLiteStore)
        assert rel.path == tmp_path / "rel.db"
        assert absolute.path == tmp_path / "abs.db"
        assert repr(rel) == f"SQLiteStore({str(tmp_path / 'rel.db')!r})"
    finally:
        rel.close()
        absolute.close()
    for url in ("sqlite://", "sqlite:///", "sqlite://host/x.db"):
        with pytest.raises(InvalidInputError):
            open_store(url)
    with pytest.raises(InvalidInputError, match="sqlite"):
        open_store("nosuch://x")


# ---------------------------------------------------------------- bad files


def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    """A path in a missing directory: StoreUnavailableError, and no directory is created."""
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        SQLiteStore(tmp_path / "nope" / "x.db")
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_is_unavailable(tmp_path: Path) -> None:
    """A read-only store file: StoreUnavailableError; the file is unchanged."""
    db = tmp_path / "ro.db"
    with SQLiteStore(db) as store:
        store.create("t", now=T0)
    db.chmod(0o444)
    before = _files(tmp_path)
    try:
        with pytest.raises(StoreUnavailableError, match="read-only"):
            SQLiteStore(db)
        assert _files(tmp_path) == before
    finally:
        db.chmod(0o644)


def test_not_a_database_is_unavailable(tmp_path: Path) -> None:
    """A file that is not an SQLite database: StoreUnavailableError from the driver; untouched."""
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not a database, just some text\n" * 200)
    before = _files(tmp_path)
    with pytest.raises(StoreUnavailableError) as info:
        SQLiteStore(db)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert _files(tmp_path) == before


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    """An SQLite file that is not a sagalease store is refused and left as it was."""
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = _files(tmp_path)
    with pytest.raises(StoreUnavailableError, match="not a sagalease store"):
        SQLiteStore(db)
    assert _files(tmp_path) == before


def test_directory_path_and_memory_path_refused(tmp_path: Path) -> None:
    """A directory is StoreUnavailableError; ':memory:' or an empty path is InvalidInputError."""
    with pytest.raises(StoreUnavailableError, match="not a regular file"):
        SQLiteStore(tmp_path)
    for bad in (":memory:", ""):
        with pytest.raises(InvalidInputError):
            SQLiteStore(bad)


# ---------------------------------------------------------------- locking


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """One SQLite store with a short lock timeout."""
    s = SQLiteStore(tmp_path / "lock.db", timeout=0.05)
    try:
        yield s
    finally:
        s.close()


def test_writer_lock_held_elsewhere_times_out_unavailable(store: SQLiteStore) -> None:
    """A writer lock held elsewhere past the timeout: StoreUnavailableError; nothing written."""
    store.create("t", now=T0)
    before = (store.get("t"), store.history("t"))
    fd = os.open(f"{store.path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailableError, match="writer lock"):
            store.acquire("t", owner="w", ttl=TTL, now=T0)
        with pytest.raises(StoreUnavailableError):
            store.create("u", now=T0)
    finally:
        os.close(fd)
    assert (store.get("t"), store.history("t")) == before
    assert store.get("u") is None
    assert store.acquire("t", owner="w", ttl=TTL, now=T0).token == 1


def test_database_locked_by_foreign_writer_is_unavailable(store: SQLiteStore) -> None:
    """SQLite's lock held by a foreign writer: StoreUnavailableError wrapping the driver error."""
    store.create("t", now=T0)
    before = (store.get("t"), store.history("t"))
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.acquire("t", owner="w", ttl=TTL, now=T0)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (store.get("t"), store.history("t")) == before


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    """After close every call is StoreUnavailableError; closing twice is harmless."""
    s = SQLiteStore(tmp_path / "c.db")
    s.create("t", now=T0)
    s.close()
    s.close()
    assert "closed" in repr(s)
    with pytest.raises(StoreUnavailableError, match="closed"):
        s.get("t")
    with pytest.raises(StoreUnavailableError, match="closed"):
        s.create("u", now=T0)
    with SQLiteStore(tmp_path / "c.db") as again:
        assert again.get("u") is None
        assert again.get("t") is not None


def _use_after_fork(store: SQLiteStore, out: str) -> None:
    try:
        store.get("t")
    except StoreUnavailableError as exc:
        Path(out).write_text(type(exc).__name__)


def test_store_used_across_fork_is_refused(tmp_path: Path) -> None:
    """A store inherited through fork refuses to run (its connection belongs to the parent)."""
    with SQLiteStore(tmp_path / "f.db") as store:
        store.create("t", now=T0)
        out = tmp_path / "child.txt"
        proc = multiprocessing.get_context("fork").Process(
            target=_use_after_fork, args=(store, str(out))
        )
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        assert out.read_text() == "StoreUnavailableError"
        assert store.get("t") is not None


def test_driver_errors_never_escape_unwrapped(store: SQLiteStore) -> None:
    """A broken connection surfaces as a SagaLeaseError caused by the sqlite3 error."""
    store.create("t", now=T0)
    store._conn().close()  # simulate a dead connection under the store
    with pytest.raises(StoreUnavailableError) as info:
        store.get("t")
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert isinstance(info.value, SagaLeaseError)


# ---------------------------------------------------------------- indexes


def _vm_steps(store: SQLiteStore, call: Callable[[], object]) -> int:
    """Number of SQLite VM instructions a call runs (a machine-independent cost)."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn = store._conn()
    conn.set_progress_handler(tick, 1)
    try:
        call()
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def _open_task_costs(db: Path, finished: int) -> tuple[int, int, int]:
    s = SQLiteStore(db, synchronous="NORMAL")
    try:
        for i in range(finished):
            s.create(f"done-{i:04d}", now=T0)
            t = s.acquire(f"done-{i:04d}", owner="w", ttl=TTL, now=T0)
            s.complete(f"done-{i:04d}", owner="w", token=t.token, now=T0)
        for i in range(5):
            s.create(f"open-{i}", now=T0)
        s.acquire("open-0", owner="w", ttl=S, now=T0)
        later = T0 + timedelta(minutes=1)
        return (
            _vm_steps(s, lambda: s.list_stale(now=later)),
            _vm_steps(s, lambda: s.reap(now=later)),
            _vm_steps(s, lambda: s.claim_next(owner="x", ttl=TTL, now=later)),
        )
    finally:
        s.close()


def test_claim_stale_and_reap_cost_does_not_grow_with_finished_tasks(tmp_path: Path) -> None:
    """claim_next, list_stale and reap run as many VM steps with 0 as with 300 finished tasks."""
    assert _open_task_costs(tmp_path / "a.db", 300) == _open_task_costs(tmp_path / "b.db", 0)


def test_queries_use_the_open_task_index(store: SQLiteStore) -> None:
    """The claim, reap and stale queries are planned on the partial index of open tasks."""
    from sagalease.stores.sqlite import _store as mod

    conn = store._conn()
    for query, params in (
        (mod._CLAIM, (0, 1, 1, 1, 8)),
        (mod._REAP, (0, 1, 1, 8)),
        (mod._STALE, (1,)),
    ):
        plan = " ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))
        assert "USING INDEX tasks_open" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


# ---------------------------------------------------------------- the worker runtime


def test_run_with_concurrency_works_every_task_once(tmp_path: Path) -> None:
    """run() with 3 threads on SQLite: every task completed exactly once, then it stops."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        for i in range(12):
            store.create(f"t{i:02d}")
        seen: list[str] = []
        lock = threading.Lock()

        def handler(ctx: LeaseContext) -> None:
            with lock:
                seen.append(ctx.task_id)

        def ended() -> bool:
            counts = store.counts()
            return counts[TaskState.COMPLETED] == 12

        worker = Worker(store, handler, concurrency=3, poll_interval=timedelta(milliseconds=10))
        outcomes = worker.run(until=ended)
        assert sorted(seen) == [f"t{i:02d}" for i in range(12)]
        assert sorted(o.task_id for o in outcomes) == sorted(seen)
        assert {o.result for o in outcomes} == {"completed"}
        assert store.counts()[TaskState.COMPLETED] == 12
    finally:
        store.close()
