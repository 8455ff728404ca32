"""PostgreSQL store: schema and migrations, the claim plan, time sources, failures,
bad connection input, secrets, and hostile input on every backend.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sys
import threading
import traceback
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from conftest import POSTGRES_URL, T0, require_postgres
from sagalease import (
    Compensation,
    DuplicateTaskError,
    InvalidInputError,
    LeaseConflictError,
    MemoryStore,
    NewTask,
    SagaLeaseError,
    SagaStore,
    SchemaVersionError,
    StoreUnavailableError,
    TaskSaga,
    TaskState,
    TerminalTaskError,
    core,
    open_store,
)

psycopg = pytest.importorskip("psycopg")
from sagalease.clock import duration_us, to_us  # noqa: E402
from sagalease.stores._engine import SqlMismatchError  # noqa: E402
from sagalease.stores.postgres import PostgresStore  # noqa: E402
from sagalease.stores.postgres import _store as postgres  # noqa: E402

TTL = timedelta(seconds=30)
S = timedelta(seconds=1)
PASSWORD = "Sekr1t-pa55w0rd"


def _drop(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _admin(statement: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped after the test."""
    require_postgres()
    name = f"sagalease_test_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        _drop(name)


def _with(url: str, **params: str) -> str:
    """``url`` with ``params`` replaced in its user info / path (a URL DSN)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    user = params.get("user", parts.username or "")
    password = params.get("password", parts.password or "")
    host = parts.hostname or "127.0.0.1"
    port = params.get("port", str(parts.port or 5432))
    netloc = f"{user}{':' + password if password else ''}@{host}:{port}"
    path = "/" + params.get("dbname", parts.path.lstrip("/"))
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


# ---------------------------------------------------------------- schema


def test_schema_is_migrated_once_by_many_concurrent_openers(schema: str) -> None:
    """Eight stores opening one fresh schema at once: all work, each migration ran once."""
    stores: list[PostgresStore] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)
    lock = threading.Lock()

    def opener() -> None:
        barrier.wait()
        try:
            store = PostgresStore(POSTGRES_URL, schema=schema, max_size=1)
        except BaseException as exc:  # reported below
            failures.append(exc)
            return
        with lock:
            stores.append(store)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert len(stores) == 8
        with psycopg.connect(POSTGRES_URL) as conn:
            rows = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        assert sorted(r[0] for r in rows) == list(range(1, postgres.latest_schema_version() + 1))
        stores[0].create("t", now=T0)
        assert stores[7].get("t") == stores[0].get("t")
    finally:
        for store in stores:
            store.close()


def test_newer_schema_is_refused_untouched(schema: str) -> None:
    """A schema written by a newer sagalease: SchemaVersionError, and nothing changes."""
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create("t", now=T0)
    newer = postgres.latest_schema_version() + 1
    _admin(f"INSERT INTO \"{schema}\".schema_version (version, name) VALUES ({newer}, 'future')")
    with psycopg.connect(POSTGRES_URL) as conn:
        before = conn.execute(f'SELECT * FROM "{schema}".tasks').fetchall()
    with pytest.raises(SchemaVersionError) as info:
        PostgresStore(POSTGRES_URL, schema=schema)
    assert f"version {newer}" in str(info.value)
    with psycopg.connect(POSTGRES_URL) as conn:
        assert conn.execute(f'SELECT * FROM "{schema}".tasks').fetchall() == before
        assert conn.execute(f'SELECT max(version) FROM "{schema}".schema_version').fetchone() == (
            newer,
        )


def test_foreign_schema_is_not_taken_over(schema: str) -> None:
    """A schema of the same name holding other tables: StoreUnavailableError, left alone."""
    _admin(f'CREATE SCHEMA "{schema}"')
    _admin(f'CREATE TABLE "{schema}".orders (id int)')
    with pytest.raises(StoreUnavailableError, match="not a sagalease store"):
        PostgresStore(POSTGRES_URL, schema=schema)
    with psycopg.connect(POSTGRES_URL) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    assert tables == [("orders",)]


@pytest.mark.parametrize("bad", ["", "Upper", "x;drop", 'a"b', "1abc", "a" * 64, "sp ace"])
def test_bad_schema_names_are_refused(bad: str) -> None:
    """A schema name that is not a plain lower-case identifier: InvalidInputError."""
    with pytest.raises(InvalidInputError):
        PostgresStore(POSTGRES_URL, schema=bad)


def test_check_constraints_refuse_a_malformed_record(schema: str) -> None:
    """The CHECK constraints mirror the core's invariants (a lease outside RUNNING/COMPENSATING,
    a priority or a queue name out of range).
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create("t", now=T0)
        with pytest.raises(psycopg.errors.CheckViolation):
            _admin(
                f"UPDATE \"{schema}\".tasks SET lease_owner = 'x', lease_token = 0,"
                " lease_acquired_us = 0, lease_expires_us = 1, lease_heartbeat_us = 0"
            )
        for bad in (
            "priority = 1001",
            "priority = -1001",
            "queue = ''",
            "queue = repeat('q', 201)",
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                _admin(f'UPDATE "{schema}".tasks SET {bad}')
        assert store.get("t") == core.replay(store.history("t"))


CLAIM_INDEX = {
    "all": ("tasks_claim",),
    "one": ("tasks_queue_claim",),
    # the open rows of those queues, or every open row in claim order (the planner's pick)
    "several": ("tasks_queue_claim", "tasks_claim"),
}
"""The indexes each kind of claim may walk (every queue, one named queue, several):
partial indexes of the open tasks.
"""

QUEUES_OF: dict[str, list[str] | None] = {
    "all": None,
    "one": ["q07"],
    "several": [f"q{i:02d}" for i in range(0, 20, 2)],
}


def _finished_rows(schema: str, number: int, queues: int = 20) -> None:
    """``number`` COMPLETED tasks spread over ``queues`` queues, written directly."""
    _admin(
        f'INSERT INTO "{schema}".tasks (task_id, queue, priority, state, metadata_json,'
        " compensations_json, token, attempts, expirations, max_attempts, available_us,"
        " created_us, updated_us, terminal_reason, notes_json, version)"
        f" SELECT 'done-' || i, 'q' || lpad((i % {queues})::text, 2, '0'), i % 7, 'completed',"
        " '{}', '[]', 1, 1, 0, 5, 0, 0, 0, 'completed', '[]', 3"
        f" FROM generate_series(1, {number}) i"
    )


@pytest.mark.parametrize("kind", sorted(CLAIM_INDEX))
def test_claim_uses_a_claim_index_on_a_fresh_table(schema: str, kind: str) -> None:
    """With 20,000 finished tasks over 20 queues and no ANALYZE since, the claim plan
    (every queue, one queue, ten queues) walks a partial index of the open tasks.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        _finished_rows(schema, 20_000)
        for i in range(20):
            store.create(f"p{i}", queue=f"q{i:02d}", priority=i % 3, now=T0)
        queues = QUEUES_OF[kind]
        plan = store.explain_claim(queues=queues, now=T0 + S)
        assert any(index in plan for index in CLAIM_INDEX[kind]), plan
        assert "Seq Scan" not in plan, plan
        task = store.claim_next(owner="w", ttl=TTL, queues=queues, now=T0 + S)
        assert task is not None
        expected = {"all": "p2", "one": "p7", "several": "p2"}[kind]  # priority 2 first
        assert task.task_id == expected


@pytest.mark.parametrize("kind", sorted(CLAIM_INDEX))
def test_claim_walks_open_tasks_with_statistics_from_when_all_were_pending(
    schema: str, kind: str
) -> None:
    """VACUUM ANALYZE while 2,000 tasks were pending, then the first 1,000 run and
    finish: the claim plan still walks a partial index of the open tasks (it used to
    answer from the primary key and filter out every finished task on each claim).
    """
    queues = QUEUES_OF[kind]
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        names = queues or ["q07"]
        for i in range(2000):
            store.create(f"t{i:04d}", queue=names[i % len(names)], now=T0)
        _admin(f'VACUUM ANALYZE "{schema}".tasks')
        for _ in range(1000):
            task = store.claim_next(owner="w", ttl=TTL, queues=queues, now=T0 + S)
            assert task is not None
            store.complete(task.task_id, owner="w", token=task.token, now=T0 + S)
        plan = store.explain_claim(queues=queues, now=T0 + S)
        assert any(index in plan for index in CLAIM_INDEX[kind]), plan
        assert "tasks_pkey" not in plan, plan
        task = store.claim_next(owner="w", ttl=TTL, queues=queues, now=T0 + S)
        assert task is not None
        assert task.task_id == "t1000"


def test_heartbeats_are_hot_updates(schema: str) -> None:
    """A heartbeat changes no indexed column: PostgreSQL rewrites the row without new
    index entries (a HOT update), so heartbeats do not bloat the indexes.
    """
    with PostgresStore(POSTGRES_URL, schema=schema, max_size=1) as store:
        for i in range(50):
            store.create(f"t{i}", now=T0)
        held = store.claim_batch(owner="w", ttl=TTL, limit=50, now=T0)
        for beat in range(1, 5):
            for task in held:
                store.heartbeat(
                    task.task_id, owner="w", token=task.token, ttl=TTL, now=T0 + beat * S
                )
        with store._connection("flush statistics") as conn:
            conn.execute("SELECT pg_stat_force_next_flush()")
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE schemaname = %s AND relname = 'tasks'",
                (schema,),
            ).fetchone()
        assert row is not None
        updates, hot = row
        assert updates == 50 + 200, row  # the claims, then the heartbeats
        assert hot >= 200 * 0.9, row  # nearly every heartbeat (a full page cannot be HOT)


def _wait_until_blocked(schema: str) -> None:
    """Return once a backend waits for a row lock (the reap below), or fail after 10 s."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for _ in range(1_000):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f"%{schema}%",),
            ).fetchone()
            if row is not None and row[0]:
                return
            threading.Event().wait(0.01)
    pytest.fail("the reap never waited for the locked row")


def test_a_reap_that_waited_for_a_lock_reaps_what_one_moment_holds(schema: str) -> None:
    """A reap blocked on a locked row, while another task's lease is replaced by one
    that has expired at the reap's ``now`` and then a third task is heartbeaten, returns
    what the reference reaps at one moment: every expired lease, the replaced one
    included. One ``FOR UPDATE`` read judged the heartbeaten row at its new version but
    never saw the replaced lease: it returned ``a, c`` and left ``b`` leased.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        for task_id in ("a", "b", "c"):
            store.create(task_id, now=T0)
        store.acquire("a", owner="w1", ttl=5 * S, now=T0)
        b = store.acquire("b", owner="w2", ttl=10 * S, now=T0)
        c = store.acquire("c", owner="w4", ttl=5 * S, now=T0)
        reaped: list[TaskSaga] = []
        with psycopg.connect(POSTGRES_URL) as other:
            other.execute(f"SELECT 1 FROM {schema}.tasks WHERE task_id = 'a' FOR UPDATE")
            reaper = threading.Thread(target=lambda: reaped.extend(store.reap(now=T0 + 7 * S)))
            reaper.start()
            _wait_until_blocked(schema)
            store.release("b", owner="w2", token=b.token, now=T0 + S)
            store.acquire("b", owner="w3", ttl=2 * S, now=T0 + 3 * S)  # expires at 5 s
            store.heartbeat("c", owner="w4", token=c.token, ttl=2 * S, now=T0 + 4 * S)
            other.commit()
            reaper.join(timeout=30)
        assert sorted(t.task_id for t in reaped) == ["a", "b", "c"]
        assert [_got(store, t).lease for t in ("a", "b", "c")] == [None, None, None]


# ---------------------------------------------------------------- queues, priorities, create_many


def _claimed(store: PostgresStore, queues: str | list[str] | None = None) -> TaskSaga:
    """claim_next at T0 by worker ``w``, which must find a task."""
    task = store.claim_next(owner="w", ttl=TTL, queues=queues, now=T0)
    assert task is not None
    return task


def _got(store: PostgresStore, task_id: str) -> TaskSaga:
    task = store.get(task_id)
    assert task is not None
    return task


def test_claims_follow_queues_then_priority_then_creation(schema: str) -> None:
    """Claims take the highest priority first, then the oldest, among the named queues
    only (every queue when none are named); claim_batch walks the same order.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        plan = [("a1", "a", 0), ("b1", "b", 5), ("a2", "a", 5), ("c1", "c", 9), ("a3", "a", -3)]
        for task_id, queue, priority in plan:
            store.create(task_id, queue=queue, priority=priority, now=T0)
        assert _claimed(store, queues="a").task_id == "a2"
        taken = store.claim_batch(owner="w", ttl=TTL, limit=10, queues=["a", "b"], now=T0)
        assert [t.task_id for t in taken] == ["b1", "a1", "a3"]
        assert store.claim_next(owner="w", ttl=TTL, queues=["a", "b"], now=T0) is None
        assert store.claim_next(owner="w", ttl=TTL, queues="nowhere", now=T0) is None
        assert _claimed(store).task_id == "c1"
        for task in store.list_tasks():
            assert core.replay(store.history(task.task_id)) == task


def test_claim_walks_on_past_refused_candidates_in_claim_order(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow claim (through the core: rows the engine's statement leaves to it)
    steps over candidates the core refuses (forced here: the SQL prefilter leaves
    none) with the (priority, seq) cursor: the batch continues with the next ones in
    order, and the refused tasks are left as they were.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        for task_id, priority in [("a", 7), ("b", 7), ("c", 5), ("d", 5), ("e", 1)]:
            store.create(task_id, priority=priority, now=T0)
        refused = {"b", "c"}
        acquire = store._core["acquire"]

        def refusing(task: TaskSaga, **kwargs: Any) -> core.Step:
            if task.task_id in refused:
                raise LeaseConflictError("refused by the test", task_id=task.task_id)
            return acquire(task, **kwargs)

        monkeypatch.setattr(store, "_core", {**store._core, "acquire": refusing})
        now_us, ttl_us = to_us(T0, "now"), duration_us(TTL, "ttl")
        batch = store._claim_slowly("w", ttl_us, now_us, 3, None)
        assert [t.task_id for t in batch] == ["a", "d", "e"]
        for task_id in sorted(refused):
            assert _got(store, task_id).state is TaskState.PENDING
            assert len(store.history(task_id)) == 1


def test_a_claim_the_core_would_refuse_is_a_mismatch_with_contracts_on(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the core's contracts on, every claim the engine's statement makes is
    checked against the core: where they differ (forced here: a core that refuses
    ``b``), SqlMismatchError names the event and both results.
    """
    with PostgresStore(POSTGRES_URL, schema=schema, contracts=True) as store:
        store.create("b", now=T0)
        acquire = store._core["acquire"]

        def refusing(task: TaskSaga, **kwargs: Any) -> core.Step:
            if task.task_id == "b":
                raise LeaseConflictError("refused by the test", task_id=task.task_id)
            return acquire(task, **kwargs)

        monkeypatch.setattr(store, "_core", {**store._core, "acquire": refusing})
        with pytest.raises(SqlMismatchError, match=r"acquire on 'b'.*the core refused"):
            store.claim_next(owner="w", ttl=TTL, now=T0)


def test_create_many_with_a_stored_duplicate_stores_nothing(schema: str) -> None:
    """A create_many whose third id is already stored: DuplicateTaskError naming it and
    its state, and neither the new tasks nor any history entry is stored.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create("old", now=T0)
        store.acquire("old", owner="w", ttl=TTL, now=T0)
        before = (store.get("old"), store.history("old"), store.counts())
        batch = [NewTask(f"n{i}", queue="bulk") for i in range(2)]
        batch += [NewTask("old"), NewTask("n9")]
        with pytest.raises(DuplicateTaskError) as info:
            store.create_many(batch, now=T0 + S)
        assert (info.value.task_id, info.value.state) == ("old", TaskState.RUNNING)
        assert (store.get("old"), store.history("old"), store.counts()) == before
        assert [t.task_id for t in store.list_tasks()] == ["old"]
        with psycopg.connect(POSTGRES_URL) as conn:
            rows = conn.execute(f'SELECT count(*) FROM "{schema}".history').fetchone()
        assert rows == (2,)


@contextlib.contextmanager
def _sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statements the driver executes inside the block (on ``Connection.execute``)."""
    sent: list[str] = []
    execute = psycopg.Connection.execute

    def counting(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(query if isinstance(query, str) else bytes(query).decode())
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", counting)
    try:
        yield sent
    finally:
        monkeypatch.undo()


def test_claim_batch_and_complete_many_are_one_statement_each(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the engine, claim_batch(10) is one statement and complete_many of those 10
    another (no read first); records and histories equal the memory reference's.
    """
    reference = MemoryStore()
    with PostgresStore(POSTGRES_URL, schema=schema, contracts=False) as store:
        for each in (store, reference):
            each.create_many([NewTask(f"t{i:02d}", priority=i % 3) for i in range(12)], now=T0)
        with _sent(monkeypatch) as claims:
            claimed = store.claim_batch(owner="w", ttl=TTL, limit=10, now=T0)
        pairs = [(t.task_id, t.token) for t in claimed]
        with _sent(monkeypatch) as completes:
            done = store.complete_many(pairs, owner="w", now=T0 + TTL / 2)
        assert (len(claims), len(completes)) == (1, 1), (claims, completes)
        assert claimed == reference.claim_batch(owner="w", ttl=TTL, limit=10, now=T0)
        assert done == reference.complete_many(pairs, owner="w", now=T0 + TTL / 2)
        assert [store.history(t) for t, _ in pairs] == [reference.history(t) for t, _ in pairs]


def test_create_many_is_one_statement_with_one_insert_per_table(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_many(1000) sends one statement: one multi-row INSERT into tasks and one
    into history (counted on the driver's execute); the records read back as created.
    """
    with PostgresStore(POSTGRES_URL, schema=schema, max_size=1) as store:
        batch = [
            NewTask(f"t{i:04d}", queue=f"q{i % 3}", priority=i % 5, metadata={"i": i})
            for i in range(1000)
        ]
        with _sent(monkeypatch) as sent:
            created = store.create_many(batch, now=T0)
        assert len(sent) == 1, sent
        assert sent[0].count(f'INSERT INTO "{schema}".tasks') == 1
        assert sent[0].count(f'INSERT INTO "{schema}".history') == 1
        assert [t.task_id for t in created] == [n.task_id for n in batch]
        assert store.list_tasks(limit=1000) == created
        assert [core.replay(store.history(t.task_id)) for t in created[::250]] == created[::250]


def test_listings_and_counts_filter_by_queue_and_states(schema: str) -> None:
    """list_tasks(queue=, state=several) and counts(queue=) on the stored rows, paged,
    oldest and newest first.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create_many([NewTask(f"t{i}", queue=f"q{i % 2}") for i in range(6)], now=T0)
        held = _claimed(store, queues="q0")
        store.complete(held.task_id, owner="w", token=held.token, now=T0)
        store.claim_next(owner="w", ttl=TTL, queues="q1", now=T0)
        in_flight = [TaskState.PENDING, TaskState.RUNNING]
        assert [t.task_id for t in store.list_tasks(state=in_flight)] == [
            "t1",
            "t2",
            "t3",
            "t4",
            "t5",
        ]
        assert [t.task_id for t in store.list_tasks(queue="q0", state=in_flight)] == ["t2", "t4"]
        assert [t.task_id for t in store.list_tasks(queue="q1", limit=2, after="t1")] == [
            "t3",
            "t5",
        ]
        done = [TaskState.COMPLETED, TaskState.FAILED]
        assert [t.task_id for t in store.list_tasks(state=done)] == ["t0"]
        assert [t.task_id for t in store.list_tasks(state=in_flight, after="t3")] == ["t4", "t5"]
        newest = [t.task_id for t in store.list_tasks(state=in_flight, newest_first=True)]
        assert newest == ["t5", "t4", "t3", "t2", "t1"]
        q1_newest = store.list_tasks(queue="q1", limit=2, after="t5", newest_first=True)
        assert [t.task_id for t in q1_newest] == ["t3", "t1"]
        assert [t.task_id for t in store.list_tasks(state=done, newest_first=True)] == ["t0"]
        before_t3 = store.list_tasks(state=in_flight, after="t3", newest_first=True)
        assert [t.task_id for t in before_t3] == ["t2", "t1"]
        q0 = store.counts(queue="q0")
        assert (q0[TaskState.PENDING], q0[TaskState.COMPLETED], sum(q0.values())) == (2, 1, 3)
        q1 = store.counts(queue="q1")
        assert (q1[TaskState.PENDING], q1[TaskState.RUNNING], sum(q1.values())) == (2, 1, 3)
        assert sum(store.counts(queue="nowhere").values()) == 0


# ---------------------------------------------------------------- open_store, time


def test_open_store_postgres_urls(schema: str) -> None:
    """open_store takes postgresql:// and postgres:// URLs, ?schema= and ?clock=database."""
    for scheme in ("postgresql", "postgres"):
        url = POSTGRES_URL.replace("postgresql://", f"{scheme}://", 1)
        store = open_store(f"{url}?schema={schema}&clock=database")
        try:
            assert isinstance(store, PostgresStore)
            assert isinstance(store, SagaStore)
            assert (store.schema, store.clock_source) == (schema, "database")
        finally:
            store.close()
    with pytest.raises(InvalidInputError):
        open_store(f"{POSTGRES_URL}?schema={schema}&clock=sundial")


def test_database_clock_is_used_when_no_now_is_given(schema: str) -> None:
    """clock="database": a call without now is stamped with the server's clock_timestamp()."""
    with PostgresStore(POSTGRES_URL, schema=schema, clock="database") as store:
        before = store._server_now_us()
        task = store.create("t")
        after = store._server_now_us()
        assert before <= task.created_us <= after
        explicit = store.annotate("t", text="x", by="op", now=T0)
        assert explicit.notes[-1].at == T0  # an explicit now is honoured


# ---------------------------------------------------------------- failures


def test_killed_connection_is_unavailable_then_the_pool_reconnects(schema: str) -> None:
    """A backend killed under the store: StoreUnavailableError (driver error chained),
    nothing half-written, and the next call works on a fresh connection.
    """
    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}application_name=victim_{schema}"
    with PostgresStore(url, schema=schema, min_size=1, max_size=1) as store:
        store.create("t", now=T0)
        store.acquire("t", owner="w", ttl=TTL, now=T0)
        _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = 'victim_{schema}'"
        )
        with pytest.raises(StoreUnavailableError) as info:
            store.complete("t", owner="w", token=1, now=T0 + S)
        assert isinstance(info.value.__cause__, psycopg.Error)
        assert "outcome unknown" in str(info.value)
        task = store.get("t")  # the pool replaced the dead connection
        assert task is not None
        assert task.state is TaskState.RUNNING
        assert core.replay(store.history("t")) == task


def test_retrying_a_committed_holder_call_reports_what_it_finds(schema: str) -> None:
    """A retried complete (outcome was unknown, in fact committed) is TerminalTaskError,
    never a second transition.
    """
    with PostgresStore(POSTGRES_URL, schema=schema) as store:
        store.create("t", now=T0)
        store.acquire("t", owner="w", ttl=TTL, now=T0)
        done = store.complete("t", owner="w", token=1, now=T0 + S)
        with pytest.raises(TerminalTaskError):
            store.complete("t", owner="w", token=1, now=T0 + 2 * S)
        assert store.get("t") == done
        assert [e.event for e in store.history("t")] == ["create", "acquire", "complete"]


def test_closed_store_is_unavailable(schema: str) -> None:
    """Any call on a closed store: StoreUnavailableError; closing twice is harmless."""
    store = PostgresStore(POSTGRES_URL, schema=schema)
    store.close()
    store.close()
    with pytest.raises(StoreUnavailableError):
        store.get("t")
    assert "closed" in repr(store)


# ---------------------------------------------------------------- bad connection input


def test_unreachable_server_is_a_typed_error() -> None:
    """Nothing listens on port 1: StoreUnavailableError naming the server."""
    require_postgres()
    with pytest.raises(StoreUnavailableError, match="cannot connect"):
        PostgresStore(_with(POSTGRES_URL, port="1"), connect_timeout=2)


def test_connect_timeout_bounds_a_silent_address() -> None:
    """A non-routable address (TEST-NET-1): StoreUnavailableError after connect_timeout."""
    require_postgres()
    with pytest.raises(StoreUnavailableError):
        PostgresStore("postgresql://postgres@192.0.2.1:5432/test", connect_timeout=1)


def test_wrong_credentials_are_a_typed_error_without_the_password() -> None:
    """A role that does not exist (trust auth on 127.0.0.1 accepts any password, so a
    missing role stands for wrong credentials): StoreUnavailableError, password hidden.
    """
    require_postgres()
    url = _with(POSTGRES_URL, user="no_such_role_sagalease", password=PASSWORD)
    with pytest.raises(StoreUnavailableError) as info:
        PostgresStore(url, connect_timeout=2)
    assert "no_such_role_sagalease" in str(info.value)
    assert PASSWORD not in "".join(traceback.format_exception(info.value))


def test_missing_database_is_a_typed_error() -> None:
    """A database that does not exist: StoreUnavailableError naming it."""
    require_postgres()
    with pytest.raises(StoreUnavailableError, match="no_such_db_sagalease"):
        PostgresStore(_with(POSTGRES_URL, dbname="no_such_db_sagalease"), connect_timeout=2)


def test_role_without_create_privilege_gets_a_typed_error(schema: str) -> None:
    """A role without CREATE on the database cannot create the schema (typed error naming
    the missing privilege, nothing created) but can use one an owner created.
    """
    role = "sagalease_test_nocreate"
    _admin(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN"
        f" CREATE ROLE {role} LOGIN; END IF; END $$"
    )
    url = _with(POSTGRES_URL, user=role)
    with pytest.raises(StoreUnavailableError, match="CREATE") as info:
        PostgresStore(url, schema=schema, connect_timeout=2)
    assert isinstance(info.value.__cause__, psycopg.errors.InsufficientPrivilege)
    with psycopg.connect(POSTGRES_URL) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchall() == []
    PostgresStore(POSTGRES_URL, schema=schema).close()  # an owner creates it
    _admin(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
    _admin(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
    with PostgresStore(url, schema=schema) as store:
        store.create("t", now=T0)
        assert store.acquire("t", owner="w", ttl=TTL, now=T0).token == 1


def test_malformed_dsn_is_invalid_input_without_echo() -> None:
    """A connection string libpq cannot parse: InvalidInputError that does not quote it."""
    with pytest.raises(InvalidInputError) as info:
        PostgresStore(f"host=localhost password={PASSWORD} nonsense")
    assert PASSWORD not in "".join(traceback.format_exception(info.value))


# ---------------------------------------------------------------- secrets


def test_password_never_in_repr_errors_or_logs(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The DSN's password is absent from repr(), error messages and chains, and log lines."""
    caplog.set_level(logging.DEBUG)
    url = _with(POSTGRES_URL, password=PASSWORD)  # trust auth: any password works
    store = PostgresStore(url, schema=schema)
    texts = [repr(store), str(store)]
    try:
        store.create("t", now=T0)
        texts.append(repr(store.get("t")))
    finally:
        store.close()
    for bad in (
        _with(POSTGRES_URL, password=PASSWORD, port="1"),
        _with(POSTGRES_URL, password=PASSWORD, dbname="no_such_db_sagalease"),
        _with(POSTGRES_URL, password=PASSWORD.replace("-", "%2D")),  # percent-encoded
    ):
        try:
            PostgresStore(bad, schema="sagalease_never", connect_timeout=2).close()
        except SagaLeaseError as exc:
            texts.append("".join(traceback.format_exception(exc)))
    try:
        open_store(_with(POSTGRES_URL, password=PASSWORD, port="1") + "?schema=x")
    except SagaLeaseError as exc:
        texts.append("".join(traceback.format_exception(exc)))
    texts += [record.getMessage() for record in caplog.records]
    assert len(texts) >= 6
    for text in texts:
        assert PASSWORD not in text
        assert PASSWORD.replace("-", "%2D") not in text
    assert "***" not in repr(store)  # the password is left out, not even masked


# ---------------------------------------------------------------- hostile input, every backend

HOSTILE_IDS = [
    "'; DROP TABLE tasks; --",
    'Robert"); DELETE FROM history; --',
    "a' OR '1'='1",
    "SELECT * FROM pg_user",
    "$1 %s %(x)s {schema} \\x00not-nul",
    "semi;colon;;",
    "back\\slash 'quote' \"dq\" `tick`",
    "ünï©ødé ✓ 😀",
]


@pytest.mark.parametrize("task_id", HOSTILE_IDS)
def test_hostile_ids_and_metadata_round_trip(store: SagaStore, task_id: str) -> None:
    """Task ids, saga ids, owners, reasons and metadata full of quotes, semicolons and SQL
    keywords are stored and read back unchanged (bound parameters only).
    """
    metadata = {
        "sql": "'; DROP SCHEMA public CASCADE; --",
        task_id: [task_id, {"nested": "\"quoted\" 'single' ;"}],
        "pct": "%s %% %(name)s",
    }
    comp = Compensation("undo'; --", f"target {task_id}", "reason; DELETE FROM tasks")
    created = store.create(
        task_id, saga_id=task_id, metadata=metadata, compensations=[comp], now=T0
    )
    leased = store.acquire(task_id, owner=task_id, ttl=TTL, now=T0)
    store.annotate(task_id, text=f"note {task_id}", by=task_id, now=T0 + S)
    failed = store.fail(task_id, owner=task_id, token=leased.token, reason=task_id, now=T0 + S)
    got = store.get(task_id)
    assert got is not None
    assert got.task_id == task_id
    assert got.saga_id == task_id
    assert got.metadata == metadata == created.metadata
    assert got.compensations == (comp,)
    assert got.notes[-1].text == f"note {task_id}"
    assert got.notes[-1].author == task_id
    assert got == failed
    assert [t.task_id for t in store.list_tasks(saga_id=task_id)] == [task_id]
    assert store.history(task_id)[-1].reason == task_id
    assert core.replay(store.history(task_id)) == got
    assert store.counts()[TaskState.COMPENSATING] == 1


def test_core_imports_without_psycopg() -> None:
    """`import sagalease` does not import psycopg (the postgres extra is optional)."""
    import subprocess

    code = (
        "import sys, sagalease; sagalease.open_store('memory://'); print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
