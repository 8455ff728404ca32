"""``sagalease.requeue``: a FAILED or QUARANTINED task runs again as a new task, over
the public protocol of every bundled store; every refusal is typed and writes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from conftest import T0
from sagalease import (
    Compensation,
    DuplicateTaskError,
    InvalidInputError,
    InvalidTransitionError,
    SagaStore,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskSaga,
    TaskState,
    requeue,
)
from sagalease import operations as operations_module
from sagalease.core import MAX_ID_LENGTH
from sagalease.operations import requeued_id

TTL = timedelta(seconds=30)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _failed(store: SagaStore, task_id: str, **create: Any) -> TaskSaga:
    """A task driven to FAILED through real calls (it owes no compensation)."""
    store.create(task_id, now=_at(0), **create)
    lease = store.acquire(task_id, owner="w1", ttl=TTL, now=_at(1))
    return store.fail(task_id, owner="w1", token=lease.token, reason="boom", now=_at(2))


def _quarantined(store: SagaStore, task_id: str, **create: Any) -> TaskSaga:
    store.create(task_id, now=_at(0), **create)
    return store.quarantine(task_id, reason="bad data", by="ops", now=_at(1))


def _snapshot(store: SagaStore) -> dict[str, tuple[TaskSaga, int]]:
    """Every task and the length of its history: what "nothing changed" compares."""
    return {t.task_id: (t, len(store.history(t.task_id))) for t in store.list_tasks(limit=10_000)}


# ---------------------------------------------------------------- what it does


def test_requeue_of_a_failed_task_copies_what_a_new_run_needs(store: SagaStore) -> None:
    """The copy is PENDING and unleased, with the original's queue, priority, saga,
    metadata and max_attempts, `requeued_from` the original, created at `now`; not the
    deadline; its history is one `create` entry.
    """
    original = _failed(
        store,
        "order-7",
        saga_id="saga-1",
        metadata={"order": 7, "lines": ["a", "b"]},
        max_attempts=4,
        deadline=_at(3600),
        queue="urgent",
        priority=10,
    )
    copy = requeue(store, "order-7", by="alice", now=_at(10))
    assert copy == store.get("order-7~r1")
    assert copy.task_id == "order-7~r1"
    assert (copy.state, copy.lease, copy.token, copy.attempts) == (TaskState.PENDING, None, 0, 0)
    assert (copy.queue, copy.priority, copy.saga_id) == ("urgent", 10, "saga-1")
    assert copy.metadata == original.metadata
    assert copy.max_attempts == 4
    assert copy.requeued_from == "order-7"
    assert copy.deadline is None
    assert copy.created_at == _at(10)
    assert [e.event for e in store.history("order-7~r1")] == ["create"]
    # The copy is claimable in its queue.
    claimed = store.claim_next(owner="w2", ttl=TTL, queues=["urgent"], now=_at(11))
    assert claimed is not None
    assert claimed.task_id == "order-7~r1"


def test_requeue_of_a_quarantined_task_leaves_its_compensations_behind(
    store: SagaStore,
) -> None:
    """A QUARANTINED task's compensations stay on it: the copy starts with none."""
    _quarantined(store, "q-1", compensations=[Compensation("refund", "o-1", "charged")])
    copy = requeue(store, "q-1", now=_at(5))
    assert copy.compensations == ()
    assert copy.requeued_from == "q-1"


def test_the_original_gets_a_note_naming_the_copy_and_nothing_else(store: SagaStore) -> None:
    """The original stays FAILED; only a note `requeued as '<id>'` by `by`, at `now`,
    is added (one `annotate` entry).
    """
    before = _failed(store, "t")
    entries = len(store.history("t"))
    requeue(store, "t", new_id="t-again", by="alice", now=_at(10))
    after = store.get("t")
    assert after is not None
    assert after.state is TaskState.FAILED
    assert [(n.author, n.text, n.at) for n in after.notes] == [
        ("alice", "requeued as 't-again'", _at(10))
    ]
    assert after.updated_at == before.updated_at
    history = store.history("t")
    assert len(history) == entries + 1
    assert (history[-1].event, history[-1].owner) == ("annotate", "alice")


def test_the_default_id_skips_ids_taken_by_other_tasks(store: SagaStore) -> None:
    """`t~r1` held by an unrelated task: the copy is `t~r2`."""
    _failed(store, "t")
    store.create("t~r1", now=_at(3))
    assert requeue(store, "t", now=_at(4)).task_id == "t~r2"


def test_a_failed_copy_is_requeued_in_turn(store: SagaStore) -> None:
    """The copy of a copy links to the copy it re-runs."""
    _failed(store, "t")
    requeue(store, "t", new_id="t2", now=_at(3))
    lease = store.acquire("t2", owner="w", ttl=TTL, now=_at(4))
    store.fail("t2", owner="w", token=lease.token, reason="again", now=_at(5))
    third = requeue(store, "t2", now=_at(6))
    assert (third.task_id, third.requeued_from) == ("t2~r1", "t2")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "state",
    [
        TaskState.PENDING,
        TaskState.RUNNING,
        TaskState.COMPENSATING,
        TaskState.COMPLETED,
        TaskState.COMPENSATED,
    ],
)
def test_any_other_state_is_refused_naming_it(store: SagaStore, state: TaskState) -> None:
    """A task that is not FAILED or QUARANTINED: InvalidTransitionError naming its state;
    nothing written.
    """
    comps = [Compensation("refund", "o")] if state.value.startswith("compens") else []
    store.create("t", compensations=comps, now=_at(0))
    if state is not TaskState.PENDING:
        lease = store.acquire("t", owner="w", ttl=TTL, now=_at(1))
        if state is TaskState.COMPLETED:
            store.complete("t", owner="w", token=lease.token, now=_at(2))
        elif state is not TaskState.RUNNING:
            store.fail("t", owner="w", token=lease.token, reason="x", now=_at(2))
        if state is TaskState.COMPENSATED:
            lease = store.acquire("t", owner="w", ttl=TTL, now=_at(3))
            store.compensation_applied("t", owner="w", token=lease.token, index=0, now=_at(4))
    task = store.get("t")
    assert task is not None
    assert task.state is state
    before = _snapshot(store)
    with pytest.raises(InvalidTransitionError) as refused:
        requeue(store, "t", now=_at(10))
    assert refused.value.state is state
    assert state.value in str(refused.value)
    assert _snapshot(store) == before


def test_an_unknown_task_is_refused(store: SagaStore) -> None:
    """An id no task has: TaskNotFoundError; nothing created."""
    _failed(store, "t")
    before = _snapshot(store)
    with pytest.raises(TaskNotFoundError):
        requeue(store, "nope", now=_at(10))
    assert _snapshot(store) == before


@pytest.mark.parametrize("new_id", ["other", "t"])
def test_a_new_id_in_use_is_refused(store: SagaStore, new_id: str) -> None:
    """`new_id` taken (by another task, or the original's own id): DuplicateTaskError;
    the holder of the id, the original and its notes unchanged.
    """
    _failed(store, "t")
    store.create("other", now=_at(3))
    before = _snapshot(store)
    with pytest.raises(DuplicateTaskError):
        requeue(store, "t", new_id=new_id, now=_at(10))
    assert _snapshot(store) == before


@pytest.mark.parametrize("first", [None, "chosen"])
def test_a_repeat_with_the_default_id_finds_the_earlier_copy(
    store: SagaStore, first: str | None
) -> None:
    """A second requeue with the default id (the first with the default id or a chosen
    one): DuplicateTaskError naming the earlier copy; nothing written.
    """
    _failed(store, "t", saga_id="s")
    copy = requeue(store, "t", new_id=first, now=_at(3))
    before = _snapshot(store)
    with pytest.raises(DuplicateTaskError, match=f"already requeued as '{copy.task_id}'"):
        requeue(store, "t", now=_at(4))
    assert _snapshot(store) == before


def test_a_repeat_with_the_same_new_id_is_refused(store: SagaStore) -> None:
    """The same `new_id` again: DuplicateTaskError, no second note."""
    _failed(store, "t")
    requeue(store, "t", new_id="t2", now=_at(3))
    before = _snapshot(store)
    with pytest.raises(DuplicateTaskError):
        requeue(store, "t", new_id="t2", now=_at(4))
    assert _snapshot(store) == before


def test_another_copy_on_purpose_takes_a_new_id(store: SagaStore) -> None:
    """After a requeue, one with a new `new_id` makes a second copy and a second note."""
    _failed(store, "t")
    requeue(store, "t", now=_at(3))
    second = requeue(store, "t", new_id="t-bis", now=_at(4))
    assert second.requeued_from == "t"
    task = store.get("t")
    assert task is not None
    assert [n.text for n in task.notes] == ["requeued as 't~r1'", "requeued as 't-bis'"]


class _NoteLost:
    """The store as a crash between requeue's two writes leaves it: `annotate` raises
    StoreUnavailableError without writing (a mock to force that interleaving only).
    """

    def __init__(self, store: SagaStore) -> None:
        self.inner = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def annotate(self, task_id: str, **kwargs: Any) -> TaskSaga:
        raise StoreUnavailableError("connection dropped", task_id=task_id)


def test_a_crash_between_the_writes_leaves_the_copy_and_a_repeat_finds_it(
    store: SagaStore,
) -> None:
    """The copy exists without the note; a repeat with the default id reports the copy
    (DuplicateTaskError) and writes nothing.
    """
    _failed(store, "t")
    with pytest.raises(StoreUnavailableError):
        requeue(_NoteLost(store), "t", now=_at(3))
    copy = store.get("t~r1")
    original = store.get("t")
    assert copy is not None
    assert original is not None
    assert copy.requeued_from == "t"
    assert original.notes == ()
    before = _snapshot(store)
    with pytest.raises(DuplicateTaskError, match="already requeued as 't~r1'"):
        requeue(store, "t", now=_at(4))
    assert _snapshot(store) == before


def test_the_searches_are_bounded(store: SagaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With REQUEUE_SCAN at 2: a chosen-id copy behind two later tasks of the saga is not
    seen (the documented bound), and when the first two default ids are taken by other
    tasks the default id is refused (DuplicateTaskError, nothing written).
    """
    monkeypatch.setattr(operations_module, "REQUEUE_SCAN", 2)
    _failed(store, "t", saga_id="s")
    store.create("s-1", saga_id="s", now=_at(3))
    store.create("s-2", saga_id="s", now=_at(3))
    requeue(store, "t", new_id="chosen", now=_at(4))
    assert requeue(store, "t", now=_at(5)).task_id == "t~r1"
    _failed(store, "u")
    store.create("u~r1", now=_at(6))
    store.create("u~r2", now=_at(6))
    before = _snapshot(store)
    with pytest.raises(DuplicateTaskError, match="all in use"):
        requeue(store, "u", now=_at(7))
    assert _snapshot(store) == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"by": ""}, "by"),
        ({"by": "a\x00b"}, "by"),
        ({"new_id": ""}, "new_id"),
        ({"new_id": "x" * (MAX_ID_LENGTH + 1)}, "new_id"),
        ({"new_id": "bad\nid"}, "new_id"),
    ],
)
def test_malformed_arguments_are_refused_before_any_write(
    store: SagaStore, kwargs: dict[str, Any], field: str
) -> None:
    """A bad `by` or `new_id`: InvalidInputError naming it; no copy, no note."""
    _failed(store, "t")
    before = _snapshot(store)
    with pytest.raises(InvalidInputError, match=field):
        requeue(store, "t", now=_at(10), **kwargs)
    assert _snapshot(store) == before


# ---------------------------------------------------------------- hostile ids


@pytest.mark.parametrize(
    "task_id",
    [
        "it's; DROP TABLE tasks; --",
        'quo"te',
        "zoë ✓ 任务",
        "x" * MAX_ID_LENGTH,
        "é" * (MAX_ID_LENGTH - 2),
        "y" * (MAX_ID_LENGTH - 3),
    ],
)
def test_hostile_ids_get_a_valid_copy_id(store: SagaStore, task_id: str) -> None:
    """Quotes, SQL, unicode and ids at the length limit: the copy's id is
    `requeued_id(task_id, 1)`, within the limit, and the note names it.
    """
    _failed(store, task_id)
    copy = requeue(store, task_id, now=_at(3))
    assert copy.task_id == requeued_id(task_id, 1)
    assert len(copy.task_id) <= MAX_ID_LENGTH
    assert copy.requeued_from == task_id
    task = store.get(task_id)
    assert task is not None
    assert [n.text for n in task.notes] == [f"requeued as {copy.task_id!r}"]


def test_requeued_id_is_deterministic_short_and_distinct() -> None:
    """Short ids get `~rN`; long ones are cut and hashed: the same input gives the same id,
    two long ids sharing their first 190 characters give different ids, all ≤ 200.
    """
    assert requeued_id("t", 1) == "t~r1"
    assert requeued_id("t", 12) == "t~r12"
    assert requeued_id("y" * 196, 1) == "y" * 196 + "~r1"
    a, b = "a" * 190 + "x" * 10, "a" * 190 + "z" * 10
    ids = {requeued_id(i, n) for i in (a, b) for n in (1, 2, 999)}
    assert len(ids) == 6
    assert all(len(i) == MAX_ID_LENGTH for i in ids)
    assert requeued_id(a, 1) == requeued_id(a, 1)
    assert requeued_id(a, 1).startswith("a" * 100)
