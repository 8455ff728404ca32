"""The fleet's figures and their Prometheus text, against the store's own counts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagalease import MemoryStore, NewTask, SQLiteStore, TaskState
from sagalease.conformance import run
from sagalease.conformance.factories import temp_path
from sagalease.errors import InvalidInputError
from sagalease.store import SagaStore
from sagalease.ui.metrics import METRIC_NAMES, Figures, collect, prometheus_text

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    """An empty memory or SQLite store."""
    s: SagaStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "m.db")
    yield s
    s.close()


def scripted(s: SagaStore) -> None:
    """Three queues: pending (some not yet available), running (live and expired
    leases), completed, failed and quarantined tasks.
    """
    s.create_many([NewTask(f"e{i}", queue="emails") for i in range(5)], now=T0)
    s.create("e-later", queue="emails", available_at=at(100), now=T0)
    s.create_many([NewTask(f"b{i}", queue="billing") for i in range(4)], now=at(2))
    s.create("r0", queue="reports", now=at(3))
    s.acquire("e0", owner="w1", ttl=TTL, now=at(4))  # expires at 34
    s.acquire("e1", owner="w2", ttl=timedelta(seconds=100), now=at(4))
    s.complete("e1", owner="w2", token=1, now=at(5))
    s.acquire("b0", owner="w1", ttl=timedelta(seconds=100), now=at(5))
    s.fail("b0", owner="w1", token=1, reason="boom", now=at(6))
    s.acquire("b1", owner="w3", ttl=TTL, now=at(6))  # expires at 36
    s.quarantine("b2", reason="poison", by="ops", now=at(7))
    s.acquire("r0", owner="w1", ttl=timedelta(seconds=1000), now=at(8))


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Per family name: its samples by sorted labels, parsed by prometheus_client."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        values = out.setdefault(family.name, {})
        for sample in family.samples:
            values[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_text_agrees_with_the_store_after_a_scripted_run(store: SagaStore) -> None:
    """/metrics' text parses with the Prometheus client's parser into the three gauge
    families; sagalease_tasks{queue, state} is counts(queue=) for every queue and
    state, stale leases are list_stale's per queue, and the lag is now minus the
    oldest waiting task's available_at (0 when none waits).
    """
    scripted(store)
    now = at(40)
    parsed = samples(prometheus_text(collect(store, now=now)))
    assert list(parsed) == list(METRIC_NAMES)
    queues = ("billing", "emails", "reports")
    want_tasks = {
        (("queue", q), ("state", s.value)): float(n)
        for q in queues
        for s, n in store.counts(queue=q).items()
    }
    assert parsed["sagalease_tasks"] == want_tasks
    stale = {q: 0.0 for q in queues}
    for task in store.list_stale(now=now):
        stale[task.queue] += 1
    assert parsed["sagalease_stale_leases"] == {(("queue", q),): n for q, n in stale.items()}
    assert stale == {"billing": 1.0, "emails": 1.0, "reports": 0.0}
    lag = parsed["sagalease_queue_lag_seconds"]
    assert lag == {
        (("queue", "billing"),): 38.0,  # b3, available since at(2)
        (("queue", "emails"),): 40.0,  # e2..e4 since T0; e-later is not available yet
        (("queue", "reports"),): 0.0,  # r0 is running: nothing waits
    }


def test_figures_are_the_queue_stats(store: SagaStore) -> None:
    """The figures give, per queue holding a task, its counts by state (every state), its
    stale leases and its lag in seconds (None when nothing waits), and their totals
    are counts().
    """
    scripted(store)
    figures = collect(store, now=at(40))
    assert isinstance(figures, Figures)
    assert figures.at == at(40)
    assert list(figures.tasks) == ["billing", "emails", "reports"]
    for queue, states in figures.tasks.items():
        assert dict(states) == store.counts(queue=queue)
    assert figures.totals == store.counts()
    assert dict(figures.stale_leases) == {"billing": 1, "emails": 1, "reports": 0}
    assert dict(figures.queue_lag_seconds) == {"billing": 38.0, "emails": 40.0, "reports": None}


HOSTILE = [
    'say "hi"',
    "back\\slash\\n",
    '}{,=" x',
    "</script><script>alert(1)</script>",
    "\u202eevil \u05e9\u05dc\u05d5\u05dd",
    "q" * 200,
]


def test_hostile_queue_names_survive_as_label_values(store: SagaStore) -> None:
    """Queue names with quotes, backslashes, braces, commas, markup, right-to-left text
    or 200 characters come back from the parser as the exact label values.
    """
    for i, queue in enumerate(HOSTILE):
        store.create(f"t{i}", queue=queue, now=T0)
    parsed = samples(prometheus_text(collect(store, now=at(1))))
    found = {dict(labels)["queue"] for labels in parsed["sagalease_tasks"]}
    assert found == set(HOSTILE)
    for queue in HOSTILE:
        key = (("queue", queue), ("state", "pending"))
        assert parsed["sagalease_tasks"][key] == 1.0
        assert parsed["sagalease_queue_lag_seconds"][(("queue", queue),)] == 1.0


def test_an_empty_store_has_the_families_and_no_samples(store: SagaStore) -> None:
    """No task: the three families are still described, with no sample."""
    text = prometheus_text(collect(store, now=T0))
    families = list(text_string_to_metric_families(text))
    assert [f.name for f in families] == list(METRIC_NAMES)
    assert all(not f.samples for f in families)


def test_naive_now_is_refused_and_changes_nothing(store: SagaStore) -> None:
    """A naive ``now`` is the store's InvalidInputError; the store is as it was."""
    scripted(store)
    before = store.counts(), store.list_tasks(limit=1000)
    with pytest.raises(InvalidInputError):
        collect(store, now=datetime(2026, 1, 1))
    assert (store.counts(), store.list_tasks(limit=1000)) == before


def test_every_state_is_a_sample_of_every_queue(store: SagaStore) -> None:
    """Each queue holding a task has one sagalease_tasks sample per state, zeros included."""
    store.create("only", queue="q", now=T0)
    parsed = samples(prometheus_text(collect(store, now=T0)))
    states = {dict(labels)["state"] for labels in parsed["sagalease_tasks"]}
    assert states == {s.value for s in TaskState}
    assert sum(parsed["sagalease_tasks"].values()) == 1.0


def test_sqlite_figures_follow_writes_of_another_handle(tmp_path: Path) -> None:
    """A SQLite store counts from its previous count (the finished tasks are not
    walked again): writes made through another handle on the same file between two
    counts (tasks created, tasks ending, tasks created and ended) are all in the next
    figures, which equal those of a fresh handle and counts().
    """
    path = tmp_path / "two.db"
    reader, writer = SQLiteStore(path), SQLiteStore(path)
    try:
        scripted(writer)
        first = collect(reader, now=at(40))
        writer.create_many([NewTask(f"n{i}", queue="emails") for i in range(3)], now=at(41))
        writer.create("new-queue-task", queue="fresh", now=at(41))
        for task_id in ("e2", "n0"):  # open at the first count / created since; both end
            held = writer.acquire(task_id, owner="w9", ttl=TTL, now=at(42))
            writer.complete(task_id, owner="w9", token=held.token, now=at(43))
        writer.quarantine("e0", reason="stuck", by="ops", now=at(43))  # was stale
        second = collect(reader, now=at(44))
        fresh = SQLiteStore(path)
        try:
            assert second == collect(fresh, now=at(44))
        finally:
            fresh.close()
        assert second.totals == writer.counts()
        for queue in ("billing", "emails", "fresh", "reports"):
            assert dict(second.tasks[queue]) == writer.counts(queue=queue)
        assert (
            second.tasks["emails"][TaskState.COMPLETED]
            == first.tasks["emails"][TaskState.COMPLETED] + 2
        )
        assert second.stale_leases["emails"] == 0
    finally:
        reader.close()
        writer.close()


class ForgetsEndings(SQLiteStore):
    """A broken SQLite store: its incremental count forgets the tasks open at the
    previous count, so one that ends afterwards is never counted in its final state.
    """

    def _count_ended(self, conn: Any) -> Any:
        return replace(super()._count_ended(conn), open_seqs=frozenset())


def test_the_conformance_suite_rejects_a_broken_incremental_count() -> None:
    """The contract check of queue_stats and the stateful comparison with the memory
    reference each reject a SQLite store whose count from the previous one misses
    the tasks that ended in between (INV-12), so they exercise that path.
    """

    def factory() -> SagaStore:
        return ForgetsEndings(temp_path())

    stages = ("contract/queue_stats_agree_with_records", "stateful/")
    for stage in stages:
        report = run(factory, examples=20, seed=1, only={stage}, shrink=False)
        (result,) = report.results
        assert result.failure is not None, stage
        assert result.failure.invariant == "INV-12", (stage, result.failure)


def _copy_in_flight(raw: Any, schema: str, source: str, task_id: str) -> None:
    """Insert, on ``raw`` (inside its open transaction), a copy of task ``source``
    under ``task_id``: the row takes the next seq but no other session sees it yet.
    """
    from psycopg import sql

    from sagalease.stores._rows import TASK_COLUMNS

    rest = sql.SQL(", ").join(sql.Identifier(c) for c in TASK_COLUMNS[1:])
    raw.execute(
        sql.SQL(
            "INSERT INTO {s}.tasks ({cols}) SELECT %s, {rest} FROM {s}.tasks WHERE task_id = %s"
        ).format(
            s=sql.Identifier(schema),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in TASK_COLUMNS),
            rest=rest,
        ),
        (task_id, source),
    )


def _in_flight_run(reader: SagaStore, writer: SagaStore, schema: str) -> list[bool]:
    """Counts taken by ``reader`` while inserts with lower seqs than committed ones are
    in flight (one commits, one rolls back), then after tasks end: per count, whether
    the figures equal ``counts()``.
    """
    import psycopg

    from conftest import POSTGRES_URL

    agree = []

    def check(now: datetime) -> None:
        agree.append(collect(reader, now=now).totals == writer.counts())

    writer.create("a", now=T0)
    held = writer.acquire("a", owner="w", ttl=TTL, now=T0)
    writer.complete("a", owner="w", token=held.token, now=T0)
    writer.create("p", now=T0)
    check(at(1))  # the first count
    with psycopg.connect(POSTGRES_URL, autocommit=True) as raw:
        with raw.transaction():
            _copy_in_flight(raw, schema, "p", "late-open")
            _copy_in_flight(raw, schema, "a", "late-done")
            writer.create("b", now=at(2))  # a higher seq, committed first
            check(at(3))  # the two rows are a gap here
        with contextlib.suppress(RuntimeError), raw.transaction():
            _copy_in_flight(raw, schema, "p", "ghost")
            raise RuntimeError("roll back: the ghost's seq stays a gap for good")
    writer.create("c", now=at(4))
    check(at(5))  # the gap filled: late-done counted COMPLETED, late-open PENDING
    held = writer.acquire("late-open", owner="w", ttl=TTL, now=at(6))
    writer.complete("late-open", owner="w", token=held.token, now=at(7))
    check(at(8))  # late-open ended since the last count
    return agree


class ForgetsGaps:
    """Mixin of a broken PostgreSQL store: its incremental count drops the seqs that
    had no row yet, so a task whose insert commits after a later one is never counted.
    """

    def _count_ended(self, conn: Any, open_now: frozenset[int]) -> Any:
        counted = super()._count_ended(conn, open_now)  # type: ignore[misc]
        self._counted = replace(counted, gaps=())
        return self._counted


@pytest.mark.parametrize("broken", [False, True], ids=["store", "broken-store"])
def test_postgres_figures_count_inserts_committed_out_of_seq_order(broken: bool) -> None:
    """On PostgreSQL a seq is taken before its row commits: rows that commit after a
    later seq (a gap at one count) are counted once they commit, in their state then,
    and ended later like any other; a rolled-back insert leaves nothing counted. A
    store that forgets the gaps is caught by the same run.
    """
    from conftest import POSTGRES_URL, require_postgres

    require_postgres()
    from sagalease.stores.postgres import PostgresStore, scratch_store

    writer = scratch_store(POSTGRES_URL)
    cls = type("Broken", (ForgetsGaps, PostgresStore), {}) if broken else PostgresStore
    reader = cls(POSTGRES_URL, schema=writer.schema, min_size=1, max_size=2)
    try:
        agree = _in_flight_run(reader, writer, writer.schema)
    finally:
        reader.close()
        writer.close()
    if broken:
        assert agree[:2] == [True, True]
        assert not all(agree)
    else:
        assert agree == [True, True, True, True]


def test_postgres_gap_of_a_rolled_back_insert_is_retired_after_two_later_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rolled-back insert's seq never gets a row: its gap is confirmed by the next
    count whose snapshot shows every transaction of the first sight ended, retired by
    the one after (not checked again on every count for ever); the figures stay right.
    """
    import psycopg

    from conftest import POSTGRES_URL, require_postgres

    require_postgres()
    from sagalease.stores.postgres import _store as pg
    from sagalease.stores.postgres import scratch_store

    monkeypatch.setattr(pg, "GAP_SETTLE", 0.0)
    store = scratch_store(POSTGRES_URL)
    try:
        store.create("a", now=T0)
        store.queue_stats(now=at(1))  # the first count
        with (
            psycopg.connect(POSTGRES_URL, autocommit=True) as raw,
            contextlib.suppress(RuntimeError),
            raw.transaction(),
        ):
            _copy_in_flight(raw, store.schema, "a", "ghost")
            raise RuntimeError("roll back")
        store.create("b", now=at(2))
        stages = []
        for step in range(3):
            figures = collect(store, now=at(3 + step))
            assert figures.totals == store.counts()
            counted = store._counted
            assert counted is not None
            stages.append([(g.ranges, g.confirmed_xmax is not None) for g in counted.gaps])
        assert [len(s) for s in stages] == [1, 1, 0]
        assert stages[0][0][1] is False  # seen
        assert stages[1][0][1] is True  # confirmed
    finally:
        store.close()


@pytest.mark.parametrize("broken", [False, True], ids=["store", "retires-at-once"])
def test_postgres_gap_of_an_open_transaction_is_kept_until_its_row_commits(
    monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    """A gap whose inserting transaction is still open is never retired, however many
    counts pass: once it commits, its task is counted. A store that retires gaps at
    once loses that task from the figures.
    """
    import psycopg

    from conftest import POSTGRES_URL, require_postgres

    require_postgres()
    from sagalease.stores import _sql
    from sagalease.stores.postgres import _store as pg
    from sagalease.stores.postgres import scratch_store

    monkeypatch.setattr(pg, "GAP_SETTLE", 0.0)
    if broken:
        monkeypatch.setattr(_sql.Gaps, "aged", lambda self, **_: None)
    store = scratch_store(POSTGRES_URL)
    try:
        store.create("a", now=T0)
        held = store.acquire("a", owner="w", ttl=TTL, now=T0)
        store.complete("a", owner="w", token=held.token, now=T0)
        store.queue_stats(now=at(1))
        # An ended row (a copy of a): only the gap can bring it into the count.
        with psycopg.connect(POSTGRES_URL, autocommit=True) as raw, raw.transaction():
            _copy_in_flight(raw, store.schema, "a", "late")
            store.create("b", now=at(2))
            kept = []
            for step in range(4):
                store.queue_stats(now=at(3 + step))
                counted = store._counted
                assert counted is not None
                kept.append(len(counted.gaps))
        assert kept == ([1, 0, 0, 0] if broken else [1, 1, 1, 1])
        agree = collect(store, now=at(8)).totals == store.counts()
        assert agree is not broken
    finally:
        store.close()
