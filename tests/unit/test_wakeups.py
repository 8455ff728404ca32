"""The memory store's wake-ups (WakeUps): writes that may free a task wake waiters."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from conftest import T0
from sagalease import InvalidInputError, MemoryStore
from sagalease.store import WakeUps

SHORT = timedelta(milliseconds=1)
LONG = timedelta(seconds=60)


def test_memory_store_offers_wake_ups() -> None:
    """The reference store implements the WakeUps protocol."""
    assert isinstance(MemoryStore(), WakeUps)


def test_a_create_while_the_claim_found_nothing_is_not_missed() -> None:
    """A task created after this thread's previous wait returned (while its claim
    found nothing) wakes the next wait at once, not after the timeout.
    """
    store = MemoryStore()
    assert store.wait_for_work(queues="q", timeout=SHORT) is False
    assert store.claim_next(owner="w", ttl=LONG, queues="q", now=T0) is None
    store.create("t", queue="q", now=T0)  # between the empty claim and the wait
    assert store.wait_for_work(queues="q", timeout=LONG) is True  # at once, not in 60 s
    assert store.wait_for_work(queues="q", timeout=SHORT) is False  # and only once


def test_other_queues_do_not_wake_a_waiter() -> None:
    """A create in another queue leaves a waiter of ``q`` waiting out its timeout."""
    store = MemoryStore()
    assert store.wait_for_work(queues="q", timeout=SHORT) is False
    assert store.wait_for_work(queues=None, timeout=SHORT) is False
    store.create("t", queue="other", now=T0)
    assert store.wait_for_work(queues="q", timeout=SHORT) is False
    assert store.wait_for_work(queues=None, timeout=LONG) is True


def test_a_write_from_another_thread_wakes_a_waiter() -> None:
    """A waiter blocked in wait_for_work returns True when another thread creates."""
    store = MemoryStore()
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(store.wait_for_work(queues="q", timeout=LONG))
    )
    with store._lock:  # the waiter takes its starting count only once we let go
        waiter.start()
    threading.Timer(0.05, lambda: store.create("t", queue="q", now=T0)).start()
    waiter.join(30)
    assert result == [True]


def test_a_negative_timeout_is_refused() -> None:
    """A negative wait is bad input (as on PostgreSQL), not a zero wait."""
    with pytest.raises(InvalidInputError):
        MemoryStore().wait_for_work(timeout=timedelta(seconds=-1))
