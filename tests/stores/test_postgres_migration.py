"""PostgreSQL schema migration from the schema the previous release writes (version 3).

The previous release's store is this store with only migrations 1..3 (the files of
that release, unchanged since): it creates the version 3 schema exactly as the
release did (in a scratch schema, dropped after each test). Its tasks are written
as that release wrote them: every column but queue, priority and requeued_from,
with their history, from real lifecycles run on the reference store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest

from conftest import POSTGRES_URL, T0, require_postgres
from sagalease import Compensation, MemoryStore, SchemaVersionError, TaskState
from sagalease.lifecycle import event_write
from sagalease.stores._rows import HISTORY_COLUMNS, TASK_COLUMNS, entry_values, task_values
from sagalease.verification.history import verify_store

psycopg = pytest.importorskip("psycopg")
from sagalease.stores.postgres import PostgresStore, scratch_store  # noqa: E402
from sagalease.stores.postgres import _store as postgres  # noqa: E402

TTL = timedelta(seconds=30)
S = timedelta(seconds=1)
RELEASED = 3
"""The schema version of the previous release."""
NEW_COLUMNS = ("queue", "priority", "requeued_from")


@pytest.fixture
def schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The schema of a new store of the previous release (at version 3, empty), in a
    scratch schema dropped after the test.
    """
    require_postgres()
    with monkeypatch.context() as patch:
        _as_released(patch)
        old = scratch_store(POSTGRES_URL)
    try:
        assert _versions(old.schema) == [1, 2, 3]
        yield old.schema
    finally:
        old.close()


def _as_released(patch: pytest.MonkeyPatch) -> None:
    """Make this store the previous release: only its migrations, 1..3."""
    released = postgres.migrations()[:RELEASED]
    patch.setattr(postgres, "migrations", lambda: released)


def _lifecycles() -> MemoryStore:
    """Tasks in every kind of state the previous release could leave behind."""
    ref = MemoryStore()
    ref.create("pending", metadata={"order": 1}, now=T0)
    ref.create("done", saga_id="s-1", now=T0)
    task = ref.acquire("done", owner="w", ttl=TTL, now=T0)
    ref.heartbeat("done", owner="w", token=task.token, ttl=TTL, now=T0 + S)
    ref.complete("done", owner="w", token=task.token, now=T0 + 2 * S)
    ref.annotate("done", text="checked", by="ops", now=T0 + 3 * S)
    ref.create("owed", compensations=[Compensation("refund", "order-7", "charged")], now=T0)
    task = ref.acquire("owed", owner="w", ttl=TTL, now=T0)
    ref.fail("owed", owner="w", token=task.token, reason="declined", now=T0 + S)
    ref.create("held", max_attempts=3, now=T0)
    ref.acquire("held", owner="zombie", ttl=TTL, now=T0)  # its lease expires unreaped
    ref.create("later", available_at=T0 + 10 * S, deadline=T0 + TTL * 10, now=T0)
    return ref


def _write_as_released(schema: str, ref: MemoryStore) -> None:
    """Write every task of ``ref`` and its history the way version 3 rows were written."""
    columns = [c for c in TASK_COLUMNS if c not in NEW_COLUMNS]
    with psycopg.connect(POSTGRES_URL) as conn:
        for task in ref.list_tasks():
            values = dict(zip(TASK_COLUMNS, (task.task_id, *task_values(task)), strict=True))
            conn.execute(
                f'INSERT INTO "{schema}".tasks ({", ".join(columns)})'
                f" VALUES ({', '.join(['%s'] * len(columns))})",
                [values[c] for c in columns],
            )
            for entry in ref.history(task.task_id):
                conn.execute(
                    f'INSERT INTO "{schema}".history ({HISTORY_COLUMNS})'
                    f" VALUES ({', '.join(['%s'] * 10)})",
                    (entry.task_id, *entry_values(entry)),
                )


def _versions(schema: str) -> list[int]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY 1')
        return [r[0] for r in rows.fetchall()]


def test_a_released_schema_is_migrated_in_place_and_reads_back(schema: str) -> None:
    """A version 3 schema with tasks in every state: opened by this store, it is at the
    latest version, every task reads back as it was (queue 'default', priority 0) with
    its history, the history verifies, and claims and new tasks work beside the old.
    """
    ref = _lifecycles()
    _write_as_released(schema, ref)
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        assert _versions(schema) == list(range(1, postgres.latest_schema_version() + 1))
        assert postgres.latest_schema_version() > RELEASED
        assert store.list_tasks() == ref.list_tasks()
        for task in ref.list_tasks():
            got = store.get(task.task_id)
            assert got == task
            assert got is not None
            assert (got.queue, got.priority, got.requeued_from) == ("default", 0, None)
            assert store.history(task.task_id) == ref.history(task.task_id)
        assert store.counts() == ref.counts()
        assert store.counts(queue="default") == ref.counts()
        verification = verify_store(store, require_terminal=False)
        assert verification.ok, verification.problems
        assert verification.tasks == len(ref.list_tasks())
        # the old open tasks are claimed in their order, after a new higher-priority one
        store.create("urgent", queue="default", priority=5, now=T0 + TTL)
        order = store.claim_batch(owner="w2", ttl=TTL, limit=10, now=T0 + TTL + S)
        assert [t.task_id for t in order] == ["urgent", "pending", "owed", "held", "later"]
        assert order[2].state is TaskState.COMPENSATING
        assert order[3].expirations == 1  # the zombie's expired lease taken over
        final = verify_store(store, require_terminal=False)
        assert final.ok, final.problems


def test_the_released_store_refuses_the_migrated_schema_untouched(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the migration, the previous release (migrations 1..3) refuses the schema
    with SchemaVersionError and changes nothing; so does this store for a schema one
    version newer than its own.
    """
    _write_as_released(schema, _lifecycles())
    PostgresStore(POSTGRES_URL, schema=schema).close()
    latest = postgres.latest_schema_version()
    with psycopg.connect(POSTGRES_URL) as conn:
        before = conn.execute(f'SELECT * FROM "{schema}".tasks ORDER BY seq').fetchall()
    with monkeypatch.context() as patch:
        _as_released(patch)
        with pytest.raises(SchemaVersionError, match=f"version {latest}"):
            PostgresStore(POSTGRES_URL, schema=schema)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO \"{schema}\".schema_version (version, name) VALUES (%s, 'future')",
            (latest + 1,),
        )
    with pytest.raises(SchemaVersionError, match=f"version {latest + 1}"):
        PostgresStore(POSTGRES_URL, schema=schema)
    with psycopg.connect(POSTGRES_URL) as conn:
        assert conn.execute(f'SELECT * FROM "{schema}".tasks ORDER BY seq').fetchall() == before
    assert _versions(schema) == [*range(1, latest + 1), latest + 1]


def test_the_migration_keeps_heartbeats_hot_and_refuses_bad_new_values(schema: str) -> None:
    """The migrated table refuses a priority or a queue out of range (CHECK), and the
    new indexes hold no column a heartbeat writes.
    """
    PostgresStore(POSTGRES_URL, schema=schema).close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
            (schema, "tasks"),
        ).fetchall()
        definitions = dict(rows)
        for name in ("tasks_claim", "tasks_queue_claim", "tasks_by_queue"):
            assert name in definitions, sorted(definitions)
        heartbeat_columns = ("lease_expires_us", "lease_heartbeat_us", "updated_us", "version")
        for name, definition in definitions.items():
            assert not any(c in definition for c in heartbeat_columns), (name, definition)
        conn.execute(
            f'INSERT INTO "{schema}".tasks (task_id, state, metadata_json, compensations_json,'
            " token, attempts, expirations, max_attempts, available_us, created_us, updated_us,"
            " notes_json, version) VALUES ('t', 'pending', '{}', '[]', 0, 0, 0, 5, 0, 0, 0,"
            " '[]', 1)"
        )
        for bad in ("priority = 1001", "queue = ''", "requeued_from = ''"):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f'UPDATE "{schema}".tasks SET {bad}')
        row = conn.execute(f'SELECT queue, priority, requeued_from FROM "{schema}".tasks')
        assert row.fetchall() == [("default", 0, None)]


def test_the_migrated_indexes_hold_no_column_a_claim_writes(schema: str) -> None:
    """After the migrations no index holds a column that a claim (pending to running)
    writes, ``state`` among them, so a claim is a HOT update like a heartbeat; the
    ended tasks are indexed by ``ended_state``, which a claim never changes.
    """
    PostgresStore(POSTGRES_URL, schema=schema).close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        definitions = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = %s AND tablename = %s",
                (schema, "tasks"),
            ).fetchall()
        )
    written = event_write("acquire").columns  # what the declaration says a claim writes
    held = {
        name: column
        for name, definition in definitions.items()
        for column in written
        if re.search(rf"\b{column}\b", definition)
    }
    assert held == {}
    assert "ended_state" in definitions["tasks_ended"]
