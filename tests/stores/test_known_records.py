"""The database stores start holder calls from the record they last saw.

A store remembers the last version of each unfinished task it wrote or read
and computes the next step from it, writing with the compare-and-set on
``version``. These tests pin that a remembered record is only ever a guess:
when another store changed the row since, the stale step is never written
and the answer (success or the typed error) comes from the stored row.
Also here: the switch that runs the core with or without its contracts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import POSTGRES_URL, T0, require_postgres
from sagalease import MemoryStore, SQLiteStore, core
from sagalease.errors import LeaseConflictError
from sagalease.store import SagaStore

TTL = timedelta(seconds=10)
S = timedelta(seconds=1)

Pair = tuple[SagaStore, SagaStore]


def _sqlite_pair(tmp_path: Path) -> Iterator[Pair]:
    first, second = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _postgres_pair(_tmp_path: Path) -> Iterator[Pair]:
    require_postgres()
    from sagalease.stores.postgres import PostgresStore, scratch_store

    first = scratch_store(POSTGRES_URL)
    assert isinstance(first, PostgresStore)
    second = PostgresStore(POSTGRES_URL, schema=first.schema, max_size=1)
    try:
        yield first, second
    finally:
        second.close()
        first.close()


PAIRS: dict[str, Callable[[Path], Iterator[Pair]]] = {
    "sqlite": _sqlite_pair,
    "postgres": _postgres_pair,
}


@pytest.fixture(params=sorted(PAIRS))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """Two stores (two connections, two memories) on one database."""
    yield from PAIRS[request.param](tmp_path)


def test_stale_remembered_lease_is_never_written(pair: Pair) -> None:
    """``a`` remembers its own live lease; ``b`` reclaimed the task since. ``a``'s
    heartbeat (from a lagging clock, so the remembered lease still looks live) gets
    LeaseConflictError and changes nothing.
    """
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="a", ttl=TTL, now=T0)
    taken = b.acquire("t", owner="b", ttl=TTL, now=T0 + TTL)
    before = (b.get("t"), b.history("t"))
    with pytest.raises(LeaseConflictError) as info:
        a.heartbeat("t", owner="a", token=1, ttl=TTL, now=T0 + TTL - S)
    assert (info.value.task_id, info.value.owner, info.value.token) == ("t", "a", 1)
    assert (a.get("t"), a.history("t")) == before
    assert before[0] == taken


def test_refusal_from_a_stale_record_is_decided_by_the_stored_row(pair: Pair) -> None:
    """``a`` remembers the task leased to ``w``; ``b`` released it since. ``a``'s
    acquire, refused by the remembered record, succeeds against the stored one.
    """
    a, b = pair
    a.create("t", now=T0)
    a.acquire("t", owner="w", ttl=TTL, now=T0)
    b.release("t", owner="w", token=1, now=T0 + S)
    got = a.acquire("t", owner="a", ttl=TTL, now=T0 + 2 * S)
    assert got.lease is not None
    assert (got.lease.owner, got.token) == ("a", 2)
    assert b.get("t") == got
    assert [e.event for e in b.history("t")] == ["create", "acquire", "release", "acquire"]


def test_every_write_starts_from_the_row_it_replaces(pair: Pair) -> None:
    """Two stores take turns on one task; each result equals the stored record and the
    history replays to it (no step computed from a stale record slipped through).
    """
    a, b = pair
    a.create("t", now=T0)
    held = a.acquire("t", owner="w", ttl=TTL, now=T0)
    for i in range(1, 6):
        store = a if i % 2 else b
        held = store.heartbeat("t", owner="w", token=held.token, ttl=TTL, now=T0 + i * S)
        assert a.get("t") == held == b.get("t")
    done = b.complete("t", owner="w", token=held.token, now=T0 + 7 * S)
    assert core.replay(a.history("t")) == done == a.get("t")


@pytest.mark.parametrize("make", [MemoryStore, lambda **kw: SQLiteStore(kw.pop("path"), **kw)])
def test_contracts_switch_chooses_checked_or_plain_core(
    make: Callable[..., SagaStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``contracts=True`` runs the icontract-wrapped core, ``False`` the plain functions;
    ``None`` follows ``$SAGALEASE_CONTRACTS`` (off when unset).
    """
    kwargs: dict[str, object] = {} if make is MemoryStore else {"path": tmp_path / "c.db"}
    monkeypatch.delenv("SAGALEASE_CONTRACTS", raising=False)
    expectations = [
        ({"contracts": True}, True),
        ({"contracts": False}, False),
        ({}, False),
    ]
    for extra, checked in expectations:
        store = make(**kwargs, **extra)
        try:
            assert store.contracts is checked  # type: ignore[attr-defined]
            heartbeat = store._core["heartbeat"]  # type: ignore[attr-defined]
            assert heartbeat is (core.heartbeat if checked else inspect.unwrap(core.heartbeat))
        finally:
            store.close()
    monkeypatch.setenv("SAGALEASE_CONTRACTS", "1")
    store = make(**kwargs)
    try:
        assert store.contracts is True  # type: ignore[attr-defined]
    finally:
        store.close()


def test_plain_core_gives_the_same_steps_and_errors() -> None:
    """The unchecked functions compute the same step and raise the same typed error."""
    step = core.create("t", now_us=0)
    for contracts in (True, False):
        events = core.handlers(contracts=contracts)
        held = events["acquire"](step.task, owner="w", ttl_us=10, now_us=1)
        assert held == core.acquire(step.task, owner="w", ttl_us=10, now_us=1)
        with pytest.raises(LeaseConflictError):
            events["heartbeat"](held.task, owner="x", token=1, ttl_us=10, now_us=2)


def test_complete_many_rechecks_rows_that_moved_on(pair: Pair) -> None:
    """``a`` claimed two tasks; ``b`` heartbeats one of them since (its row moved on).
    ``a``'s complete_many re-evaluates that one against the stored row and completes
    both; histories replay to the records.
    """
    a, b = pair
    for task_id in ("x", "y"):
        a.create(task_id, now=T0)
    claimed = a.claim_batch(owner="w", ttl=TTL, limit=2, now=T0)
    assert [t.task_id for t in claimed] == ["x", "y"]
    b.heartbeat("y", owner="w", token=1, ttl=TTL, now=T0 + S)
    done = a.complete_many([("x", 1), ("y", 1)], owner="w", now=T0 + 2 * S)
    assert [t.state.value for t in done] == ["completed", "completed"]
    for task in done:
        assert b.get(task.task_id) == task == core.replay(b.history(task.task_id))
    assert [e.event for e in b.history("y")] == ["create", "acquire", "heartbeat", "complete"]


def test_complete_many_refused_after_a_takeover_changes_nothing(pair: Pair) -> None:
    """``b`` took one of ``a``'s two tasks over since ``a`` claimed them; ``a``'s
    complete_many (its clock lagging, so its remembered leases look live) raises
    LeaseConflictError and completes neither.
    """
    a, b = pair
    for task_id in ("x", "y"):
        a.create(task_id, now=T0)
    a.claim_batch(owner="w", ttl=TTL, limit=2, now=T0)
    b.acquire("y", owner="v", ttl=TTL, now=T0 + TTL)
    before = [(b.get(t), b.history(t)) for t in ("x", "y")]
    with pytest.raises(LeaseConflictError) as info:
        a.complete_many([("x", 1), ("y", 1)], owner="w", now=T0 + TTL - S)
    assert info.value.task_id == "y"
    assert [(a.get(t), a.history(t)) for t in ("x", "y")] == before
