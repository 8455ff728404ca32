"""What the web view's HTTP tests share (a plain module, not a conftest.py: two
conftest modules without packages clash under mypy, and tests/ui is no package).

A scripted run (:func:`populate`) that leaves a task in every state, a reclaim, a
reaper's action, a stale lease, heartbeats, notes, owed compensations and hostile
values (:data:`EXPECTED_STATES`); :func:`make_client`, a Starlette TestClient over
an app drawn at :data:`VIEW_AT`. Kept stable: other UI tests may import it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import T0
from sagalease import Compensation, NewTask, SagaStore, TaskState

with warnings.catch_warnings():
    # Starlette 1.10 asks for httpx2 instead of httpx; the dev group has httpx.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from starlette.testclient import TestClient

from sagalease.ui.app import create_app

TTL = timedelta(seconds=10)
"""The lease of every acquisition in :func:`populate`."""

VIEW_AT = T0 + timedelta(seconds=25)
"""The instant the pages are drawn at (the app's clock): ``stale-1``'s lease has
expired by then, ``reaped-1``'s second lease is live."""

SECRET = b"ui-tests-csrf-secret-0123456789ab"
"""The CSRF secret of :func:`make_client`'s apps (so that tests can compute tokens)."""

HOSTILE_ID = '<script>alert("id")</script>\'"</svg>&amp;'
HOSTILE_SAGA = "<script>alert('saga')</script>\"</svg>"
HOSTILE_OWNER = '"><script>alert("owner")</script>'
HOSTILE_QUEUE = "q\"'<script>alert(1)</script>"
RTL_ID = "مهمة-\u0661 שלום"  # the Arabic-Indic digit one, written out
"""A right-to-left task id (Arabic and Hebrew)."""
RTL_SAGA = "ملحمة"

HOSTILE_TEXT = (
    '<script>alert("note")</script>"\'</svg><img src=x onerror=alert(2)> '
    "مرحبا بالعالم שלום עולם \u202eRTL override\u202c "
)
HOSTILE_TEXT += "x" * (10_000 - len(HOSTILE_TEXT))
"""A note and a reason of exactly 10,000 characters (the longest text a store takes)."""

HOSTILE_METADATA = {
    "<script>alert('meta')</script>": "</svg></pre><script>alert(3)</script>",
    "quote": "\"'`",
    "rtl": "עברית العربية",
}


@dataclass(frozen=True)
class Scenario:
    """What :func:`populate` left in a store, by role."""

    store: SagaStore
    path: Path | None
    """The SQLite file (``None`` for the memory store)."""
    ids: dict[str, str] = field(default_factory=dict)
    """Task ids by role: ``done``, ``reclaimed``, ``reaped``, ``stale``, ``failed``,
    ``compensated``, ``quarantined``, ``operator_quarantined``, ``compensating``,
    ``pending``, ``later``, ``hostile``, ``rtl``."""

    def task_ids(self) -> list[str]:
        """Every task id, in creation order."""
        return [t.task_id for t in self.store.list_tasks(limit=10_000)]


def populate(store: SagaStore) -> dict[str, str]:
    """A scripted run at explicit instants from ``T0`` (seconds: +0 .. +21.5); at
    :data:`VIEW_AT` it shows every state, a reclaim, a reaper's action, a stale
    lease, heartbeats, notes, owed compensations and the hostile values. Returns
    the task ids by role (see :class:`Scenario`).
    """

    def at(seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    refund = Compensation("refund", "payment-1")
    restock = Compensation("restock", "sku-9")
    notify = Compensation("notify", "customer-7")
    store.create_many(
        [
            NewTask("done-1", saga_id="order-1", compensations=(refund,)),
            NewTask("reclaimed-1", saga_id="order-1"),
            NewTask("reaped-1", queue="urgent", priority=10),
            NewTask("failed-1", max_attempts=1),
            NewTask("compensated-1", saga_id="order-2", compensations=(refund,)),
            NewTask("quarantined-1", queue="urgent", compensations=(refund, restock, notify)),
            NewTask("operator-quarantined-1", compensations=(restock,)),
            NewTask("compensating-1", compensations=(notify,)),
            NewTask("pending-1"),
            NewTask("pending-2", queue="urgent"),
            NewTask("later-1", available_at=at(3600)),
            NewTask(
                HOSTILE_ID,
                saga_id=HOSTILE_SAGA,
                queue=HOSTILE_QUEUE,
                metadata=HOSTILE_METADATA,
                compensations=(Compensation("<script>alert(4)</script>", "</svg>\"'"),),
            ),
            NewTask(RTL_ID, saga_id=RTL_SAGA, metadata={"נושא": "عنوان"}),
            NewTask("stale-1", queue="urgent"),
        ],
        now=at(0),
    )
    # done-1: acquired, two heartbeats, completed.
    t = store.acquire("done-1", owner="worker-a", ttl=TTL, now=at(0))
    store.heartbeat("done-1", owner="worker-a", token=t.token, ttl=TTL, now=at(3))
    store.heartbeat("done-1", owner="worker-a", token=t.token, ttl=TTL, now=at(6))
    store.complete("done-1", owner="worker-a", token=t.token, now=at(8))
    # reclaimed-1: worker-a's lease expires at +10 (a crash); worker-b reclaims at +12.
    t = store.acquire("reclaimed-1", owner="worker-a", ttl=TTL, now=at(0))
    store.heartbeat("reclaimed-1", owner="worker-a", token=t.token, ttl=TTL, now=at(0.5))
    t = store.acquire("reclaimed-1", owner="worker-b", ttl=TTL, now=at(12))
    store.complete("reclaimed-1", owner="worker-b", token=t.token, now=at(15))
    # reaped-1: worker-c's lease expires at +10, the reaper drops it at +20, worker-b
    # takes it at +21 and still holds it at VIEW_AT.
    store.acquire("reaped-1", owner="worker-c", ttl=TTL, now=at(0))
    # failed-1: no compensation owed, fails for good.
    t = store.acquire("failed-1", owner="worker-a", ttl=TTL, now=at(1))
    store.fail("failed-1", owner="worker-a", token=t.token, reason="card declined", now=at(2))
    # compensated-1: fails, its one compensation is applied.
    t = store.acquire("compensated-1", owner="worker-a", ttl=TTL, now=at(1))
    store.fail("compensated-1", owner="worker-a", token=t.token, reason="out of stock", now=at(2))
    t = store.acquire("compensated-1", owner="worker-b", ttl=TTL, now=at(3))
    store.compensation_applied("compensated-1", owner="worker-b", token=t.token, index=0, now=at(4))
    # quarantined-1: one compensation applied, one failed for good, one still owed.
    t = store.acquire("quarantined-1", owner="worker-a", ttl=TTL, now=at(1))
    store.fail("quarantined-1", owner="worker-a", token=t.token, reason="timeout", now=at(2))
    t = store.acquire("quarantined-1", owner="worker-b", ttl=TTL, now=at(3))
    store.compensation_applied("quarantined-1", owner="worker-b", token=t.token, index=0, now=at(4))
    store.compensation_failed(
        "quarantined-1", owner="worker-b", token=t.token, index=1, reason="sku gone", now=at(5)
    )
    # operator-quarantined-1: quarantined by an operator while pending, owes restock.
    store.quarantine("operator-quarantined-1", reason="bad input", by="alice", now=at(6))
    store.annotate("operator-quarantined-1", text="see ticket 12", by="alice", now=at(7))
    # compensating-1: failed, its compensation not yet applied (unleased).
    t = store.acquire("compensating-1", owner="worker-a", ttl=TTL, now=at(1))
    store.fail("compensating-1", owner="worker-a", token=t.token, reason="boom", now=at(2))
    # The hostile task: a hostile owner, a 10,000-character note and reason; quarantined.
    t = store.acquire(HOSTILE_ID, owner=HOSTILE_OWNER, ttl=TTL, now=at(1))
    store.heartbeat(HOSTILE_ID, owner=HOSTILE_OWNER, token=t.token, ttl=TTL, now=at(2))
    store.annotate(HOSTILE_ID, text=HOSTILE_TEXT, by=HOSTILE_OWNER, now=at(3))
    store.fail(HOSTILE_ID, owner=HOSTILE_OWNER, token=t.token, reason=HOSTILE_TEXT, now=at(4))
    store.quarantine(HOSTILE_ID, reason=HOSTILE_TEXT, by=HOSTILE_OWNER, now=at(5))
    # The right-to-left task: completed by a right-to-left owner.
    t = store.acquire(RTL_ID, owner="עובד-1", ttl=TTL, now=at(1))
    store.complete(RTL_ID, owner="עובד-1", token=t.token, reason="تم", now=at(2))
    # The reaper at +20 drops reaped-1's expired lease; worker-b takes it at +21.
    store.reap(now=at(20))
    store.acquire("reaped-1", owner="worker-b", ttl=TTL, now=at(21))
    # stale-1: a 1 s lease from +20.5, expired at VIEW_AT and not reaped.
    store.acquire("stale-1", owner="worker-d", ttl=timedelta(seconds=1), now=at(20.5))
    return {
        "done": "done-1",
        "reclaimed": "reclaimed-1",
        "reaped": "reaped-1",
        "stale": "stale-1",
        "failed": "failed-1",
        "compensated": "compensated-1",
        "quarantined": "quarantined-1",
        "operator_quarantined": "operator-quarantined-1",
        "compensating": "compensating-1",
        "pending": "pending-1",
        "later": "later-1",
        "hostile": HOSTILE_ID,
        "rtl": RTL_ID,
    }


EXPECTED_STATES = {
    "done-1": TaskState.COMPLETED,
    "reclaimed-1": TaskState.COMPLETED,
    "reaped-1": TaskState.RUNNING,
    "stale-1": TaskState.RUNNING,
    "failed-1": TaskState.FAILED,
    "compensated-1": TaskState.COMPENSATED,
    "quarantined-1": TaskState.QUARANTINED,
    "operator-quarantined-1": TaskState.QUARANTINED,
    "compensating-1": TaskState.COMPENSATING,
    "pending-1": TaskState.PENDING,
    "pending-2": TaskState.PENDING,
    "later-1": TaskState.PENDING,
    HOSTILE_ID: TaskState.QUARANTINED,
    RTL_ID: TaskState.COMPLETED,
}
"""Every task of :func:`populate` and the state it ends in."""


def view_clock() -> datetime:
    """The app's clock in these tests: always :data:`VIEW_AT`."""
    return VIEW_AT


def make_client(
    store: SagaStore, *, allow_actions: bool = False, url: str | None = None, **options: Any
) -> TestClient:
    """A TestClient over a new app of ``store`` drawn at :data:`VIEW_AT` (CSRF
    secret :data:`SECRET`); redirects are not followed unless a request asks.
    """
    app = create_app(
        store, allow_actions=allow_actions, clock=view_clock, secret=SECRET, url=url, **options
    )
    return TestClient(app, follow_redirects=False)
