"""The SQLite store itself: schema and migrations, reopening, bad files, locking, indexes,
and the worker runtime's threads sharing one SQLite store.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import T0
from sagalease import (
    Compensation,
    DuplicateTaskError,
    InvalidInputError,
    LeaseConflictError,
    LeaseContext,
    MemoryStore,
    SagaLeaseError,
    SagaStore,
    SQLiteStore,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskState,
    Worker,
    core,
    open_store,
)
from sagalease.lifecycle import event_write
from sagalease.records import NewTask, TaskSaga
from sagalease.stores import _engine
from sagalease.stores._engine import SqlMismatchError
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
    """A varied history: every state, compensations, notes, deadlines, delays, unicode,
    queues, priorities, a requeue link.
    """
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
    store.create_many(
        [
            NewTask("fast-1", queue="fast lane", priority=7, requeued_from="quar"),
            NewTask("fast-2", saga_id="s1", queue="fast lane", priority=-7),
        ],
        now=T0,
    )
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
        store.counts(queue="fast lane"),
        store.list_tasks(queue="fast lane", state=[TaskState.PENDING, TaskState.QUARANTINED]),
        store.list_tasks(state={TaskState.RUNNING, TaskState.COMPLETED, TaskState.QUARANTINED}),
        store.list_tasks(saga_id="s1", queue="fast lane", state=[TaskState.PENDING]),
        store.list_tasks(newest_first=True),
        store.list_tasks(state=TaskState.PENDING, after="plain", limit=2, newest_first=True),
        store.list_tasks(state={TaskState.QUARANTINED, TaskState.FAILED}, newest_first=True),
        store.list_tasks(queue="fast lane", state=[TaskState.PENDING], newest_first=True),
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


def test_a_new_file_gets_2048_byte_pages_and_an_existing_file_keeps_its_own(
    tmp_path: Path,
) -> None:
    """A new store file has 2048-byte pages; a file already holding pages (here an
    empty WAL database at 4096) keeps its size, opens, and stores tasks.
    """
    SQLiteStore(tmp_path / "new.db").close()
    conn = sqlite3.connect(tmp_path / "new.db")
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 2048
    conn.close()
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    with SQLiteStore(old) as store:
        assert store.create("t").state is TaskState.PENDING
        assert store.get("t") is not None
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    conn.close()


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


def _takes_within(fd: int, seconds: float) -> bool:
    """Whether a non-blocking ``flock`` on ``fd`` succeeds within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def test_a_given_up_wait_leaves_the_writer_lock_free(store: SQLiteStore) -> None:
    """A wait for the writer lock that timed out leaves nothing held: once the other
    holder lets go, another process (here a second open of the lock file) takes the
    lock, and the store writes again.
    """
    fd = os.open(f"{store.path}.lock", os.O_RDWR)
    other = os.open(f"{store.path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreUnavailableError, match="writer lock"):
            store.create("t", now=T0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        time.sleep(0.2)  # room for the store's waiter to take the lock first
        # the store's waiter takes the lock when it is let go, sees that nobody waits
        # any more, and lets it go (a waiter that kept it would hold it for good)
        assert _takes_within(other, seconds=5.0)
        fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        os.close(other)
    assert store.get("t") is None
    assert store.create("t", now=T0).version == 1


def test_a_contended_writer_lock_is_waited_for_not_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer waiting for the lock makes one non-blocking try, then waits in a
    blocking ``flock`` woken when the holder lets go (polling tried hundreds of
    times in the 300 ms held here); the write then goes through.
    """
    tries: list[int] = []
    real = fcntl.flock

    def counted(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB:
            tries.append(operation)
        real(fd, operation)

    with SQLiteStore(tmp_path / "w.db", timeout=10) as store:
        holder = os.open(f"{store.path}.lock", os.O_RDWR)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)
            monkeypatch.setattr(fcntl, "flock", counted)
            done = threading.Event()

            def write() -> None:
                store.create("t", now=T0)
                done.set()

            writer = threading.Thread(target=write)
            writer.start()
            assert not done.wait(0.3)  # held: the create waits
            real(holder, fcntl.LOCK_UN)
            writer.join(10)
        finally:
            os.close(holder)
        assert done.is_set()
        assert len(tries) == 1, f"{len(tries)} non-blocking tries"
        assert store.get("t") is not None


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


def test_reap_and_stale_queries_use_the_open_task_index(store: SQLiteStore) -> None:
    """The reap and stale queries are planned on the partial index of open tasks."""
    from sagalease.stores.sqlite import _store as mod

    conn = store._conn()
    for query, params in ((mod._REAP, (0, 1, 1, 8)), (mod._STALE, (1,))):
        plan = _plan(conn, query, params)
        assert "USING INDEX tasks_open" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def _plan(conn: sqlite3.Connection, query: str, params: Sequence[object]) -> str:
    return " | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))


@pytest.mark.parametrize("cursor", [None, (3, 17)])
@pytest.mark.parametrize(
    ("queues", "index", "ranges"),
    [
        (None, "tasks_claim", 1),
        (("q",), "tasks_claim_queue", 1),
        (("a", "b", "c"), "tasks_claim_queue", 3),
        (tuple(f"q{i:02d}" for i in range(40)), "tasks_claim", 1),
    ],
)
def test_claim_query_walks_a_claim_index_in_claim_order(
    store: SQLiteStore,
    queues: tuple[str, ...] | None,
    index: str,
    ranges: int,
    cursor: tuple[int, int] | None,
) -> None:
    """The claim query, with and without queues (one, several merged, more than the
    merge takes) and after a cursor, reads its index in claim order: no sort.
    """
    from sagalease.stores.sqlite._store import _claim_query

    sql, params = _claim_query(queues, cursor, 1, 8)
    plan = _plan(store._conn(), sql, params)
    assert len(re.findall(rf"USING INDEX {index}\b", plan)) == ranges, plan
    assert "TEMP B-TREE" not in plan, plan
    if ranges > 1:
        assert "MERGE (UNION ALL)" in plan, plan


def _one_plan(store: SQLiteStore, *, newest_first: bool = False, **listing: object) -> str:
    from sagalease.stores.sqlite._store import _listing

    sql, params = _listing(after=None, newest_first=newest_first, **listing)  # type: ignore[arg-type]
    return _plan(store._conn(), f"{sql} LIMIT ?", (*params, 10))


OPEN = frozenset({TaskState.PENDING, TaskState.RUNNING, TaskState.COMPENSATING})


@pytest.mark.parametrize(
    ("listing", "indexes"),
    [
        ({"states": None, "saga_id": None, "queue": "q"}, {"tasks_by_queue": 7}),
        ({"states": OPEN, "saga_id": None, "queue": "q"}, {"tasks_by_queue": 3}),
        ({"states": OPEN, "saga_id": None, "queue": None}, {"tasks_open": 1}),
        (
            {
                "states": frozenset({TaskState.PENDING, TaskState.FAILED}),
                "saga_id": None,
                "queue": None,
            },
            {"tasks_open": 1, "tasks_ended": 1},
        ),
        (
            {
                "states": frozenset({TaskState.COMPLETED, TaskState.QUARANTINED}),
                "saga_id": None,
                "queue": None,
            },
            {"tasks_ended": 2},
        ),
        ({"states": OPEN, "saga_id": "s", "queue": "q"}, {"tasks_by_saga": 1}),
    ],
)
@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest-first", "newest-first"])
def test_listings_read_index_ranges_in_creation_order(
    store: SQLiteStore, listing: dict[str, object], indexes: dict[str, int], newest_first: bool
) -> None:
    """list_tasks by queue and/or several states reads one index range per state (or
    the open-task walk), merged in creation order: no sort, no table scan; newest
    first, the same ranges read backwards (``seq<?``).
    """
    plan = _one_plan(store, newest_first=newest_first, **listing)
    for index, ranges in indexes.items():
        assert len(re.findall(rf"INDEX {index}\b", plan)) == ranges, plan
    assert ("seq<?" in plan) is newest_first, plan
    assert ("seq>?" in plan) is not newest_first, plan
    assert "TEMP B-TREE" not in plan, plan
    assert "SCAN tasks" not in plan, plan


def test_counts_of_a_queue_read_only_its_index(store: SQLiteStore) -> None:
    """counts(queue=...) is answered from tasks_by_queue alone (a covering range)."""
    plan = _plan(
        store._conn(), "SELECT state, count(*) FROM tasks WHERE queue = ? GROUP BY state", ("q",)
    )
    assert "SEARCH tasks USING COVERING INDEX tasks_by_queue (queue=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


# ---------------------------------------------------------------- queues, priorities, bulk create

QUEUED = [  # (task_id, queue, priority), in creation order
    ("a-low", "a", -5),
    ("b-top", "b", 9),
    ("a-mid-1", "a", 0),
    ("c-mid", "c", 0),
    ("b-mid", "b", 0),
    ("a-top", "a", 9),
    ("a-mid-2", "a", 0),
    ("c-low", "c", -5),
]


def _queued(store: SagaStore) -> None:
    for task_id, queue, priority in QUEUED:
        store.create(task_id, queue=queue, priority=priority, now=T0)
    store.create("b-delayed", queue="b", priority=9, available_at=T0 + timedelta(hours=1), now=T0)
    store.create("a-exhausted", queue="a", priority=9, max_attempts=1, now=T0)
    t = store.acquire(
        "a-exhausted", owner="w0", ttl=S, now=T0
    )  # its lease expires, no attempt left
    assert t.attempts == 1


def _claim_order(store: SagaStore, queues: object) -> list[str]:
    order: list[str] = []
    while (task := store.claim_next(owner="w", ttl=TTL, queues=queues, now=T0 + S)) is not None:  # type: ignore[arg-type]
        order.append(task.task_id)
    return order


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        (None, ["b-top", "a-top", "a-mid-1", "c-mid", "b-mid", "a-mid-2", "a-low", "c-low"]),
        ("a", ["a-top", "a-mid-1", "a-mid-2", "a-low"]),
        (["c", "a"], ["a-top", "a-mid-1", "c-mid", "a-mid-2", "a-low", "c-low"]),
        (["b", "nobody"], ["b-top", "b-mid"]),
        ([f"z{i:02d}" for i in range(40)] + ["c"], ["c-mid", "c-low"]),
    ],
)
def test_claims_take_priority_then_creation_among_the_named_queues(
    tmp_path: Path, queues: object, expected: list[str]
) -> None:
    """On a real file, claim_next takes the highest priority first, then the oldest,
    among the named queues (None: all; more names than the merge takes, too), skipping
    what is not leaseable, exactly as the memory reference does.
    """
    reference = MemoryStore()
    _queued(reference)
    with SQLiteStore(tmp_path / "q.db") as store:
        _queued(store)
        assert _claim_order(store, queues) == expected == _claim_order(reference, queues)
        assert store.get("b-delayed").state is TaskState.PENDING  # type: ignore[union-attr]


def test_claim_batch_takes_the_claim_order_across_cursor_fetches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim through the core (``_claim_slowly``, taken when the engine leaves a
    claim to it) walks past candidates the core refuses, fetching again after the
    (priority, seq) cursor, and takes the others in claim order.
    """
    from sagalease.stores.sqlite import _store as mod

    with SQLiteStore(tmp_path / "b.db") as store, SQLiteStore(tmp_path / "n.db") as single:
        for each in (store, single):
            for i in range(60):
                each.create(f"t{i:02d}", queue=("x", "y")[i % 2], priority=i % 3, now=T0)
        cursors: list[object] = []
        real = mod._claim_query

        def spy(
            queues: tuple[str, ...] | None, cursor: tuple[int, int] | None, now_us: int, n: int
        ) -> tuple[str, tuple[object, ...]]:
            cursors.append(cursor)
            return real(queues, cursor, now_us, n)

        refused = {f"t{i:02d}" for i in range(0, 60, 4)}
        acquire = store._core["acquire"]

        def picky(task: TaskSaga, **kw: Any) -> core.Step:
            if task.task_id in refused:
                raise SagaLeaseError("refused for the test")
            return acquire(task, **kw)

        monkeypatch.setattr(store, "_core", {**store._core, "acquire": picky})
        monkeypatch.setattr(mod, "_claim_query", spy)
        batch = store._claim_slowly(
            "w", int(TTL.total_seconds() * 1e6), store._now(T0), 30, ("x", "y")
        )
        assert cursors[0] is None
        assert len(cursors) >= 2
        order = _claim_order(single, ["x", "y"])
        assert [t.task_id for t in batch] == [t for t in order if t not in refused][:30]


def _statements_of(store: SQLiteStore, call: Callable[[], object]) -> list[str]:
    seen: list[str] = []
    conn = store._conn()
    conn.set_trace_callback(seen.append)
    try:
        call()
    finally:
        conn.set_trace_callback(None)
    return [" ".join(sql.split()) for sql in seen]


def _news(n: int, prefix: str = "n") -> list[NewTask]:
    return [NewTask(f"{prefix}{i:04d}", queue=f"q{i % 3}", priority=i % 7 - 3) for i in range(n)]


def test_create_many_is_one_transaction_and_one_insert_per_table(tmp_path: Path) -> None:
    """1000 tasks: one BEGIN IMMEDIATE, one multi-row INSERT into tasks and one into
    history, one COMMIT; every task and first entry stored as create would.
    """
    with SQLiteStore(tmp_path / "m.db") as store:
        created: list[TaskSaga] = []
        sql = _statements_of(store, lambda: created.extend(store.create_many(_news(1000), now=T0)))
        assert [q.split(" (")[0] for q in sql if q.startswith("INSERT")] == [
            "INSERT INTO tasks",
            "INSERT INTO history",
        ]
        assert sql.count("BEGIN IMMEDIATE") == 1
        assert sql.count("COMMIT") == 1
        assert len(created) == 1000
        assert store.list_tasks(limit=2000) == created
        assert store.counts(queue="q1")[TaskState.PENDING] == 333
        one = MemoryStore()
        one.create("n0005", queue="q2", priority=2, now=T0)
        assert store.get("n0005") == one.get("n0005")
        assert store.history("n0005") == one.history("n0005")


def test_create_many_splits_only_at_the_variable_limit_in_one_transaction(tmp_path: Path) -> None:
    """A build allowing fewer bound variables gets as few INSERTs as its limit allows,
    still in one transaction (here 240 variables: 10 tasks or 24 entries a statement).
    """
    with SQLiteStore(tmp_path / "l.db") as store:
        store._conn().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 240)
        sql = _statements_of(store, lambda: store.create_many(_news(95), now=T0))
        inserts = [q.split(" (")[0] for q in sql if q.startswith("INSERT")]
        assert inserts == ["INSERT INTO tasks"] * 10 + ["INSERT INTO history"] * 4
        assert sql.count("BEGIN IMMEDIATE") == 1
        assert sql.count("COMMIT") == 1
        assert len(store.list_tasks(limit=200)) == 95


@pytest.mark.parametrize("where", ["stored", "in the batch"])
def test_create_many_with_a_duplicate_stores_nothing(tmp_path: Path, where: str) -> None:
    """A duplicate id, stored already (named with its state) or twice in the batch:
    DuplicateTaskError, no task of the batch stored, no history for its ids, the
    existing task unchanged, and no INSERT issued.
    """
    with SQLiteStore(tmp_path / "d.db") as store:
        store.create("taken", now=T0)
        store.acquire("taken", owner="w", ttl=TTL, now=T0)
        before = (store.get("taken"), store.history("taken"), store.counts())
        news = _news(300)
        news.insert(150, NewTask("taken") if where == "stored" else NewTask(news[3].task_id))
        sql: list[str] = []
        with pytest.raises(DuplicateTaskError) as info:
            sql = _statements_of(store, lambda: store.create_many(news, now=T0))
        assert info.value.task_id == ("taken" if where == "stored" else news[3].task_id)
        if where == "stored":
            assert info.value.state is TaskState.RUNNING
        assert not [q for q in sql if q.startswith("INSERT")]
        assert (store.get("taken"), store.history("taken"), store.counts()) == before
        for new in news:
            if new.task_id != "taken":
                assert store.get(new.task_id) is None
                with pytest.raises(TaskNotFoundError):
                    store.history(new.task_id)
        conn = sqlite3.connect(store.path)
        try:
            assert conn.execute("SELECT count(*) FROM history").fetchone()[0] == 2
        finally:
            conn.close()


HOSTILE_QUEUES = [
    "it's",
    'say "hi"',
    "x'); DROP TABLE tasks; --",
    "a;b;c",
    "q" * 200,
    "очередь-队列-✓",
    "\u202eevil\u202c עברית",
    "?1 :name %s $1",
    "json_each('[1]')",
]


def test_hostile_queue_names_round_trip(tmp_path: Path) -> None:
    """Queue names with quotes, semicolons, 200 characters, unicode, RTL marks and
    placeholder look-alikes are data: stored, listed, counted and claimed by name,
    alone, merged and past the merge (as a JSON array), never run as SQL.
    """
    from sagalease.stores.sqlite._store import _claim_query

    db = tmp_path / "h.db"
    with SQLiteStore(db) as store:
        for i, queue in enumerate(HOSTILE_QUEUES):
            store.create(f"t{i}", queue=queue, priority=i, now=T0)
        store.create_many([NewTask(f"m{i}", queue=q) for i, q in enumerate(HOSTILE_QUEUES)], now=T0)
    with SQLiteStore(db) as store:
        for i, queue in enumerate(HOSTILE_QUEUES):
            assert store.get(f"t{i}").queue == queue  # type: ignore[union-attr]
            assert [t.task_id for t in store.list_tasks(queue=queue)] == [f"t{i}", f"m{i}"]
            assert store.counts(queue=queue)[TaskState.PENDING] == 2
            sql, params = _claim_query((queue,), None, 0, 1)
            assert queue not in sql
            assert queue in params
            claimed = store.claim_next(owner="w", ttl=TTL, queues=[queue], now=T0)
            assert claimed is not None
            assert claimed.task_id == f"t{i}"
        merged = store.claim_batch(owner="w", ttl=TTL, limit=100, queues=HOSTILE_QUEUES[:4], now=T0)
        assert [t.task_id for t in merged] == ["m0", "m1", "m2", "m3"]
        many = [*HOSTILE_QUEUES, *(f"pad-{i}" for i in range(40))]
        rest = store.claim_batch(owner="w", ttl=TTL, limit=100, queues=many, now=T0)
        assert [t.task_id for t in rest] == [f"m{i}" for i in range(4, len(HOSTILE_QUEUES))]
        assert store.counts()[TaskState.RUNNING] == 2 * len(HOSTILE_QUEUES)
        assert store.integrity_check() == ["ok"]


def _queue_claim_costs(db: Path, finished: int) -> tuple[int, int]:
    s = SQLiteStore(db, synchronous="NORMAL")
    try:
        s.create_many(
            [NewTask(f"done-{i:04d}", queue=f"q{i % 20}") for i in range(finished)], now=T0
        )
        done = s.claim_batch(owner="w", ttl=TTL, limit=max(1, finished), now=T0) if finished else []
        s.complete_many([(t.task_id, t.token) for t in done], owner="w", now=T0) if done else None
        for i in range(40):
            s.create(f"open-{i}", queue=f"q{i % 20}", priority=i % 3, now=T0)
        return (
            _vm_steps(s, lambda: s.claim_next(owner="x", ttl=TTL, queues=["q3"], now=T0)),
            _vm_steps(s, lambda: s.claim_next(owner="x", ttl=TTL, queues=["q4", "q5"], now=T0)),
        )
    finally:
        s.close()


def test_queue_claim_cost_does_not_grow_with_finished_tasks(tmp_path: Path) -> None:
    """claim_next of named queues runs as many VM steps with 0 as with 1000 finished tasks."""
    assert _queue_claim_costs(tmp_path / "a.db", 1000) == _queue_claim_costs(tmp_path / "b.db", 0)


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


def test_claim_batch_and_complete_many_are_one_statement_per_table_in_one_transaction(
    tmp_path: Path,
) -> None:
    """claim_batch, then complete_many, on the engine: each is BEGIN IMMEDIATE, (for
    the claim, the candidate scan), the history INSERT ... SELECT, the UPDATE of
    those rows, the read of what they wrote, COMMIT; no row read before the writes;
    the tasks and entries are the memory reference's, in claim order.
    """
    reference = MemoryStore()
    with SQLiteStore(tmp_path / "c.db", contracts=False) as store:
        for each in (store, reference):
            for i in range(12):
                each.create(f"t{i:02d}", queue=("x", "y")[i % 2], priority=i % 3, now=T0)
        claimed: list[TaskSaga] = []
        sql = _statements_of(
            store,
            lambda: claimed.extend(
                store.claim_batch(owner="w", ttl=TTL, limit=5, queues=["x", "y"], now=T0)
            ),
        )
        expected = reference.claim_batch(owner="w", ttl=TTL, limit=5, queues=["x", "y"], now=T0)
        assert [q.split(" ")[0] for q in sql] == [
            "BEGIN",
            "SELECT",
            "INSERT",
            "UPDATE",
            "SELECT",
            "COMMIT",
        ]
        assert claimed == expected
        pairs = [(t.task_id, t.token) for t in claimed]
        done: list[TaskSaga] = []
        sql = _statements_of(
            store, lambda: done.extend(store.complete_many(pairs, owner="w", now=T0))
        )
        assert [q.split(" ")[0] for q in sql] == ["BEGIN", "INSERT", "UPDATE", "SELECT", "COMMIT"]
        assert done == reference.complete_many(pairs, owner="w", now=T0)
        assert [store.history(t) for t, _ in pairs] == [reference.history(t) for t, _ in pairs]


def test_a_sqlite_claim_the_core_would_refuse_is_a_mismatch_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the core's contracts on, each row the engine's claim acquires is checked
    against the core inside the write transaction: where they differ (forced here: a
    core that refuses ``b``), SqlMismatchError names the event, and neither ``a`` nor
    ``b`` nor their histories changed (the transaction rolled back).
    """
    with SQLiteStore(tmp_path / "m.db", contracts=True) as store:
        store.create("a", priority=1, now=T0)
        store.create("b", now=T0)
        before = [(store.get(t), store.history(t)) for t in ("a", "b")]
        acquire = store._core["acquire"]

        def refusing(task: TaskSaga, **kwargs: Any) -> core.Step:
            if task.task_id == "b":
                raise LeaseConflictError("refused by the test", task_id=task.task_id)
            return acquire(task, **kwargs)

        monkeypatch.setattr(store, "_core", {**store._core, "acquire": refusing})
        with pytest.raises(SqlMismatchError, match=r"acquire on 'b'.*the core refused"):
            store.claim_batch(owner="w", ttl=TTL, limit=2, now=T0)
        assert [(store.get(t), store.history(t)) for t in ("a", "b")] == before


def _temporary_tables(conn: sqlite3.Connection, statement: str, values: dict[str, Any]) -> int:
    """How many temporary tables or indexes ``statement``'s program opens."""
    return [row[1] for row in conn.execute(f"EXPLAIN {statement}", values)].count("OpenEphemeral")


def test_hot_writes_open_no_temporary_table(tmp_path: Path) -> None:
    """Each hot event's statements (and a claim's, but for its one ``IN (json_each)``)
    open no temporary table or index: SQLite builds one, with a page cache of its own
    (87 KB allocated and freed), for every ``RETURNING`` and every list of more than
    two constants a write evaluates, the CHECKs and partial-index predicates included.
    """
    SQLiteStore(tmp_path / "t.db").close()
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.create_function("sagalease_repr", 1, repr, deterministic=True)
    values: dict[str, Any] = {
        "task_id": "t",
        "owner": "w",
        "token": 1,
        "ttl_us": 1,
        "delay_us": 0,
        "now_us": 1,
        "reason": None,
        "args_json": "{}",
        "limit": 1,
        "ids": '["t"]',
    }
    opened = {
        f"{event} {i}": _temporary_tables(conn, statement, values)
        for event in _engine.FAST_EVENTS - {"acquire"}
        for i, statement in enumerate(_engine.sqlite_write(event))
    }
    assert opened == dict.fromkeys(opened, 0)
    claim = [_temporary_tables(conn, s, values) for s in _engine.sqlite_claim()]
    assert claim == [0, 1, 0]
    conn.close()


def test_a_heartbeat_writes_no_index(tmp_path: Path) -> None:
    """No SQLite index holds a column a heartbeat writes, so a heartbeat writes the
    row's page and the history's only.
    """
    SQLiteStore(tmp_path / "h.db").close()
    conn = sqlite3.connect(tmp_path / "h.db")
    written = event_write("heartbeat").columns  # what the declaration says a heartbeat writes
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'").fetchall()
    conn.close()
    held = {name: c for name, sql in indexes if sql for c in written if c in sql}
    assert held == {}
