"""SQLite schema migrations in place, from files the earlier releases wrote.

``tests/fixtures/sqlite/release_v3.db`` was written by the release before queues
(schema version 3) with tasks in every state, by ``make_release_v3.py`` beside it
run under that release's code. Older versions (1, 2) are built here from this
package's own migration files 0001..000N, which earlier releases ran unchanged.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import T0
from sagalease import SchemaVersionError, SQLiteStore, TaskState, core
from sagalease.stores._sql import read_migrations
from sagalease.stores.sqlite import latest_schema_version, schema_sql
from sagalease.stores.sqlite._store import _statements
from sagalease.verification.history import verify_store

FIXTURE = Path(__file__).parent.parent / "fixtures" / "sqlite" / "release_v3.db"
TTL = timedelta(seconds=30)
LATER = T0 + timedelta(hours=2)  # every lease of the fixture has expired by then

V3_TASKS = {
    "pending": TaskState.PENDING,
    "delayed": TaskState.PENDING,
    "done": TaskState.COMPLETED,
    "failed": TaskState.FAILED,
    "compensating": TaskState.COMPENSATING,
    "running": TaskState.RUNNING,
    "expired": TaskState.RUNNING,
    "released": TaskState.PENDING,
    "quarantined": TaskState.QUARANTINED,
}
"""What the fixture holds (make_release_v3.py), in creation order."""


def _definitions(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    return [(t, n, " ".join(sql.split())) for t, n, sql in rows]


def _reference() -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(":memory:")
    for statement in _statements(schema_sql()):
        conn.execute(statement)
    return _definitions(conn)


def _files(tmp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tmp.iterdir()) if p.is_file()}


def _v3_copy(tmp_path: Path) -> Path:
    db = tmp_path / "v3.db"
    shutil.copyfile(FIXTURE, db)
    return db


def _raw(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_fixture_is_a_version_3_store_without_queues() -> None:
    """The fixture is what the old release wrote: version 3, no queue columns, its tasks."""
    conn = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        assert not columns & {"queue", "priority", "requeued_from"}
        rows = conn.execute("SELECT task_id, state FROM tasks ORDER BY seq").fetchall()
        assert rows == [(k, v.value) for k, v in V3_TASKS.items()]
        assert conn.execute("SELECT count(*) FROM history").fetchone()[0] > len(V3_TASKS)
    finally:
        conn.close()


def test_release_v3_file_is_migrated_in_place(tmp_path: Path) -> None:
    """Opening the v3 file migrates it to the latest version with the current schema,
    in place (same file, same rows, same histories, integrity ok).
    """
    db = _v3_copy(tmp_path)
    rows_before = _raw(db, "SELECT seq, task_id, state, version, notes_json FROM tasks")
    history_before = _raw(db, "SELECT * FROM history ORDER BY task_id, seq")
    with SQLiteStore(db) as store:
        assert store.integrity_check() == ["ok"]
    assert _raw(db, "PRAGMA user_version") == [(latest_schema_version(),)]
    conn = sqlite3.connect(db)
    try:
        assert _definitions(conn) == _reference()
    finally:
        conn.close()
    assert _raw(db, "SELECT seq, task_id, state, version, notes_json FROM tasks") == rows_before
    assert _raw(db, "SELECT * FROM history ORDER BY task_id, seq") == history_before


def test_migrated_tasks_read_back_in_the_default_queue_and_replay(tmp_path: Path) -> None:
    """Every old task reads back in queue 'default' at priority 0, not requeued; each
    history replays to its record and the whole store passes verify_store.
    """
    with SQLiteStore(_v3_copy(tmp_path)) as store:
        tasks = store.list_tasks(limit=100)
        assert {t.task_id: t.state for t in tasks} == V3_TASKS
        assert [t.task_id for t in tasks] == list(V3_TASKS)
        assert {(t.queue, t.priority, t.requeued_from) for t in tasks} == {("default", 0, None)}
        for task in tasks:
            assert core.replay(store.history(task.task_id)) == task
        verification = verify_store(store, require_terminal=False)
        assert verification.ok, verification.problems
        assert verification.tasks == len(V3_TASKS)
        assert store.counts(queue="default") == store.counts()
        assert store.counts(queue="other") == dict.fromkeys(TaskState, 0)
        assert store.list_tasks(queue="default", limit=100) == tasks


def test_migrated_store_takes_queues_and_priorities(tmp_path: Path) -> None:
    """After the migration new tasks go to named queues with priorities; claims order
    them with the old tasks (priority first, then creation) and route by queue.
    """
    with SQLiteStore(_v3_copy(tmp_path)) as store:
        store.create("urgent", queue="fast", priority=5, now=T0)
        store.create_many(
            [{"task_id": "bulk-1", "queue": "bulk"}, {"task_id": "bulk-2", "queue": "bulk"}],
            now=T0,
        )
        fast = store.claim_next(owner="w", ttl=TTL, queues=["fast"], now=LATER)
        assert fast is not None
        assert fast.task_id == "urgent"
        bulk = store.claim_batch(owner="w", ttl=TTL, limit=10, queues="bulk", now=LATER)
        assert [t.task_id for t in bulk] == ["bulk-1", "bulk-2"]
        rest = store.claim_batch(owner="w", ttl=TTL, limit=10, queues="default", now=LATER)
        # the old open tasks in creation order (the expired leases taken over)
        assert [t.task_id for t in rest] == [
            "pending",
            "delayed",
            "compensating",
            "running",
            "expired",
            "released",
        ]
        assert store.counts(queue="fast")[TaskState.RUNNING] == 1
        assert verify_store(store, require_terminal=False).ok


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_schema_built_from_its_migrations_is_migrated(tmp_path: Path, version: int) -> None:
    """A file built by migrations 0001..000N alone (N = 1, 2, 3) holding the v3 rows is
    migrated to the current schema, its tasks read back as in the v3 file.
    """
    db = tmp_path / f"v{version}.db"
    conn = sqlite3.connect(db)
    for number, _name, sql in read_migrations("sagalease.stores.sqlite"):
        if number <= version:
            for statement in _statements(sql):
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("ATTACH DATABASE ? AS old", (f"file:{FIXTURE}?mode=ro",))
    conn.execute("INSERT INTO tasks SELECT * FROM old.tasks")
    conn.execute("INSERT INTO history SELECT * FROM old.history")
    conn.commit()
    conn.execute("DETACH DATABASE old")
    conn.close()
    with SQLiteStore(_v3_copy(tmp_path)) as reference:
        expected = reference.list_tasks(limit=100)
    with SQLiteStore(db) as store:
        assert store.list_tasks(limit=100) == expected
        assert verify_store(store, require_terminal=False).ok
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_schema_version()
        assert _definitions(conn) == _reference()
    finally:
        conn.close()


def test_newer_schema_refused_file_untouched(tmp_path: Path) -> None:
    """A file of a newer sagalease: SchemaVersionError, the directory byte for byte as it was."""
    db = _v3_copy(tmp_path)
    with SQLiteStore(db) as store:
        store.create("t", queue="q", now=T0)
    _raw(db, f"PRAGMA user_version = {latest_schema_version() + 1}")  # autocommits
    assert _raw(db, "PRAGMA user_version") == [(latest_schema_version() + 1,)]
    before = _files(tmp_path)
    with pytest.raises(SchemaVersionError, match="schema version"):
        SQLiteStore(db)
    assert _files(tmp_path) == before
