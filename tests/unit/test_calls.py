"""The argument builder (:mod:`sagalease.verification.calls`): one builder per
declared event, taken by the core function and by the store method alike, and
both forms applying the same step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from sagalease import core
from sagalease.lifecycle import EVENTS
from sagalease.records import Compensation, NewTask, TaskSaga, from_us
from sagalease.store import EVENT_OF_METHOD, SagaStore
from sagalease.stores.memory import MemoryStore
from sagalease.verification.calls import (
    BUILDERS,
    Chosen,
    core_args,
    new_task,
    store_args,
    store_form,
)

SEC = 1_000_000
T0_US = 1_767_225_600_000_000
UNDO = Compensation("undo", "order-1")
UNLOCK = Compensation("unlock", "sku-9")
EVERYTHING = Chosen(
    "w1",
    1,
    ttl_us=5 * SEC,
    delay_us=SEC,
    compensation=UNDO,
    index=0,
    reason="boom",
    by="ops",
    text="note",
    compensations=(UNDO,),
    max_attempts=3,
    deadline_us=T0_US + 100 * SEC,
    available_us=T0_US + SEC,
    saga_id="saga",
    queue="emails",
    priority=7,
    requeued_from="old",
    release_reason="retry in 1s",
)


def _core_function(event: str) -> Callable[..., Any]:
    return core.create if event == "create" else core.handlers(contracts=False)[event]


def _keywords(fn: Callable[..., Any], now: str) -> tuple[set[str], set[str]]:
    """The keyword parameters of ``fn`` but ``now``: all of them, and the required ones."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != now
    ]
    return {p.name for p in params}, {p.name for p in params if p.default is p.empty}


def test_every_event_has_a_builder() -> None:
    """Every declared event, and every event a store method applies, has a builder."""
    assert set(EVENTS) <= set(BUILDERS)
    assert set(BUILDERS) == set(EVENT_OF_METHOD.values())


@pytest.mark.parametrize("event", sorted(BUILDERS))
def test_the_core_function_takes_the_core_form(event: str) -> None:
    """The core form names only parameters of the core function, and all it requires."""
    accepted, required = _keywords(_core_function(event), "now_us")
    kwargs = core_args(event, EVERYTHING)
    assert set(kwargs) <= accepted
    assert required <= set(kwargs)


@pytest.mark.parametrize("event", sorted(BUILDERS))
def test_the_store_method_takes_the_store_form(event: str) -> None:
    """The store form names only parameters of the SagaStore method, and all it requires."""
    accepted, required = _keywords(getattr(SagaStore, event), "now")
    kwargs = store_args(event, EVERYTHING)
    assert set(kwargs) <= accepted
    assert required <= set(kwargs)


def test_store_form_converts_microseconds() -> None:
    """Durations become timedeltas, instants aware datetimes, each under the store's name."""
    assert store_form(
        {"ttl_us": 2, "delay_us": 0, "deadline_us": None, "available_us": T0_US, "now_us": T0_US}
    ) == {
        "ttl": timedelta(microseconds=2),
        "delay": timedelta(0),
        "deadline": None,
        "available_at": from_us(T0_US),
        "now": from_us(T0_US),
    }
    assert store_form({"owner": "w", "index": 1, "compensation": UNDO}) == {
        "owner": "w",
        "index": 1,
        "compensation": UNDO,
    }


SCRIPT: list[tuple[str, str, Chosen]] = [
    ("a", "create", EVERYTHING),
    ("a", "acquire", Chosen("w1", ttl_us=10 * SEC)),
    ("a", "heartbeat", Chosen("w1", 1, ttl_us=20 * SEC)),
    ("a", "register_compensation", Chosen("w1", 1, compensation=UNLOCK)),
    ("a", "annotate", Chosen(by="ops", text="seen")),
    ("a", "release", Chosen("w1", 1, delay_us=SEC, release_reason="retry in 1s")),
    ("a", "acquire", Chosen("w2", ttl_us=10 * SEC)),
    ("a", "fail", Chosen("w2", 2, reason="boom")),
    ("a", "acquire", Chosen("c1", ttl_us=10 * SEC)),
    ("a", "compensation_applied", Chosen("c1", 3, index=0)),
    ("a", "compensation_failed", Chosen("c1", 3, index=1, reason="gone")),
    ("b", "create", Chosen()),
    ("b", "acquire", Chosen("w1", ttl_us=SEC)),
    ("b", "reap", Chosen()),
    ("b", "acquire", Chosen("w1", ttl_us=10 * SEC)),
    ("b", "release", Chosen("w1", 2)),
    ("b", "acquire", Chosen("w1", ttl_us=10 * SEC)),
    ("b", "complete", Chosen("w1", 3)),
    ("c", "create", Chosen(max_attempts=1)),
    ("c", "quarantine", Chosen(reason="poison", by="ops")),
]


def test_core_and_store_forms_apply_the_same_step() -> None:
    """Each builder's core form on the core and store form on a MemoryStore give the same
    record and history entry, step by step.
    """
    store = MemoryStore()
    tasks: dict[str, TaskSaga] = {}
    now_us = T0_US
    for task_id, event, chosen in SCRIPT:
        now_us += 2 * SEC
        now = from_us(now_us)
        kwargs = core_args(event, chosen)
        if event == "create":
            step = core.create(task_id, now_us=now_us, **kwargs)
            store.create(task_id, now=now, **store_args(event, chosen))
        elif event == "reap":
            step = core.reap(tasks[task_id], now_us=now_us)
            assert store.reap(now=now, **store_args(event, chosen)) == [step.task]
        else:
            step = core.apply(tasks[task_id], event, now_us, **kwargs)
            getattr(store, event)(task_id, now=now, **store_args(event, chosen))
        tasks[task_id] = step.task
        assert store.get(task_id) == step.task, (task_id, event)
        assert store.history(task_id)[-1] == step.entry, (task_id, event)
    assert {event for _, event, _ in SCRIPT} == set(BUILDERS)


def test_defaults_are_left_out_of_the_core_form() -> None:
    """A create that chooses no queue, priority or link, and a release without a reason,
    name none of them: the entries they write are those of histories written before.
    """
    assert core_args("create", Chosen()) == {}
    assert set(core_args("create", Chosen(queue="q", priority=0))) == {"queue", "priority"}
    assert core_args("release", Chosen("w", 1)) == {"owner": "w", "token": 1, "delay_us": 0}
    assert core_args("release", Chosen("w", 1, release_reason="r"))["reason"] == "r"


def test_new_task_creates_what_create_would() -> None:
    """new_task's item, through create_many, gives the record and entry create gives with
    the same chosen values (bar the id).
    """
    bulk, solo = MemoryStore(), MemoryStore()
    now = from_us(T0_US)
    item = new_task("a", EVERYTHING)
    assert isinstance(item, NewTask)
    (made,) = bulk.create_many([item], now=now)
    assert made == solo.create("a", now=now, **store_args("create", EVERYTHING))
    assert (made.queue, made.priority, made.requeued_from) == ("emails", 7, "old")
    assert bulk.history("a") == solo.history("a")
