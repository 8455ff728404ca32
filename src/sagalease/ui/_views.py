"""What the pages show, as plain data: read from the store through the public
protocol (index-backed calls only: ``queue_stats``, ``list_tasks`` with a limit,
``list_stale``, ``get``, ``history``), turned into JSON-ready dicts that
the templates render and the ``Accept: application/json`` answers return as they are.

No web framework here: the functions take a store and explicit instants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sagalease.errors import InvalidInputError
from sagalease.records import HistoryEntry, TaskSaga, TaskState
from sagalease.store import SagaStore
from sagalease.ui import metrics, timeline

__all__ = [
    "DEFAULT_LIMIT",
    "FAILURES_SHOWN",
    "MAX_LIMIT",
    "NEWEST",
    "STALE_SHOWN",
    "ListFilters",
    "dashboard_data",
    "list_data",
    "parse_filters",
    "task_data",
]

DEFAULT_LIMIT = 50
"""Tasks per list page unless ``limit`` says otherwise."""

MAX_LIMIT = 500
"""The most tasks one list page shows."""

STALE_SHOWN = 50
"""The most stale leases the dashboard lists (their number is shown in full)."""

FAILURES_SHOWN = 20
"""The most failed or quarantined tasks the dashboard lists (the most recent)."""

NEWEST = "newest"
"""The list pages' ``order`` value for newest first (absent, empty or ``oldest``:
creation order)."""

_FAILURE_STATES = frozenset({TaskState.FAILED, TaskState.QUARANTINED})
_STATE_NAMES = [s.value for s in TaskState]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------- dashboard


def _figures(store: SagaStore, now: datetime) -> dict[str, Any]:
    """Tasks per queue and state, stale leases and lag per queue: the figures of
    ``/metrics`` (:func:`sagalease.ui.metrics.collect`, one ``queue_stats`` call).
    """
    figures = metrics.collect(store, now=now)
    return {
        "tasks": {
            q: {s.value: int(per_state.get(s, 0)) for s in TaskState}
            for q, per_state in figures.tasks.items()
        },
        "stale": dict(figures.stale_leases),
        "lag": dict(figures.queue_lag_seconds),
    }


def _summary(task: TaskSaga) -> dict[str, Any]:
    lease = task.lease
    return {
        "task_id": task.task_id,
        "saga_id": task.saga_id,
        "queue": task.queue,
        "state": task.state.value,
        "owner": None if lease is None else lease.owner,
        "token": task.token,
        "expires_at": None if lease is None else _iso(lease.expires_at),
        "terminal_reason": task.terminal_reason,
        "updated_at": _iso(task.updated_at),
        "owed": [
            {"index": i, "kind": task.compensations[i].kind, "target": task.compensations[i].target}
            for i in task.pending_compensations
        ],
    }


def dashboard_data(store: SagaStore, *, now: datetime) -> dict[str, Any]:
    """The dashboard: tasks per state and queue with totals, queue lag, stale
    leases (the first :data:`STALE_SHOWN`) and failed or quarantined tasks with the
    compensations they still owe (the :data:`FAILURES_SHOWN` most recent, newest
    first: the newest created, as the store pages), all read at ``now``.
    """
    figures = _figures(store, now)
    tasks: dict[str, dict[str, int]] = figures["tasks"]
    totals = {s: sum(per_queue[s] for per_queue in tasks.values()) for s in _STATE_NAMES}
    stale_count = sum(figures["stale"].values())
    # list_stale has no limit: asked only when queue_stats saw a stale lease at all.
    stale = store.list_stale(now=now) if stale_count else []
    failures = store.list_tasks(state=_FAILURE_STATES, limit=FAILURES_SHOWN, newest_first=True)
    queues = sorted(set(tasks) | set(figures["lag"]) | set(figures["stale"]))
    return {
        "now": _iso(now),
        "states": _STATE_NAMES,
        "queues": queues,
        "counts": tasks,
        "totals": totals,
        "total": sum(totals.values()),
        "queue_lag_seconds": {q: figures["lag"].get(q) for q in queues},
        "stale_leases": {q: figures["stale"].get(q, 0) for q in queues},
        "stale_count": stale_count,
        "stale": [_summary(t) for t in stale[:STALE_SHOWN]],
        "failures": [_summary(t) for t in failures],
    }


# ---------------------------------------------------------------- lists


@dataclass(frozen=True, slots=True)
class ListFilters:
    """A list page's query: states (``None``: all), queue, saga, order, paging."""

    states: frozenset[TaskState] | None = None
    queue: str | None = None
    saga: str | None = None
    after: str | None = None
    limit: int = DEFAULT_LIMIT
    newest_first: bool = False

    def query(self, *, after: str | None) -> list[tuple[str, str]]:
        """The query string's pairs of this filter on the page after ``after``."""
        pairs: list[tuple[str, str]] = []
        if self.states is not None:
            pairs.append(("state", ",".join(s.value for s in TaskState if s in self.states)))
        if self.queue is not None:
            pairs.append(("queue", self.queue))
        if self.saga is not None:
            pairs.append(("saga", self.saga))
        if self.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(self.limit)))
        if self.newest_first:
            pairs.append(("order", NEWEST))
        if after is not None:
            pairs.append(("after", after))
        return pairs

    def to_json(self) -> dict[str, Any]:
        """The filter as a JSON object."""
        return {
            "state": None
            if self.states is None
            else [s.value for s in TaskState if s in self.states],
            "queue": self.queue,
            "saga": self.saga,
            "after": self.after,
            "limit": self.limit,
            "order": NEWEST if self.newest_first else "oldest",
        }


def parse_filters(params: Mapping[str, Sequence[str]]) -> ListFilters:
    """A list page's filters from its query parameters (each name: its values).
    ``state`` may repeat and hold comma-separated names; an empty value means
    no filter; ``order=newest`` lists the newest first (``oldest`` or none: creation
    order). A bad state, limit or order: :class:`InvalidInputError` (ids are checked
    by the store).
    """
    names = [n.strip() for v in params.get("state", ()) for n in v.split(",") if n.strip()]
    for name in names:
        if name not in _STATE_NAMES:
            raise InvalidInputError(f"state {name!r} is not one of {', '.join(_STATE_NAMES)}")
    raw_limit = _last(params, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if (
            not raw_limit.isascii()
            or not raw_limit.isdigit()
            or not 1 <= int(raw_limit) <= MAX_LIMIT
        ):
            raise InvalidInputError(f"limit must be an integer between 1 and {MAX_LIMIT}")
        limit = int(raw_limit)
    order = _last(params, "order")
    if order not in (None, "oldest", NEWEST):
        raise InvalidInputError(f"order must be {NEWEST!r} or 'oldest', not {order!r}")
    return ListFilters(
        states=frozenset(TaskState(n) for n in names) or None,
        queue=_last(params, "queue"),
        saga=_last(params, "saga"),
        after=_last(params, "after"),
        limit=limit,
        newest_first=order == NEWEST,
    )


def _last(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v for v in params.get(name, ()) if v != ""]
    return values[-1] if values else None


def list_data(store: SagaStore, filters: ListFilters) -> dict[str, Any]:
    """One page of tasks in creation order, or newest first (one ``list_tasks`` call
    of ``limit + 1``: the extra one only tells whether a next page exists).
    """
    found = store.list_tasks(
        state=filters.states,
        saga_id=filters.saga,
        queue=filters.queue,
        limit=filters.limit + 1,
        after=filters.after,
        newest_first=filters.newest_first,
    )
    page = found[: filters.limit]
    next_after = page[-1].task_id if len(found) > filters.limit else None
    flipped = replace(filters, newest_first=not filters.newest_first, after=None)
    return {
        "filters": filters.to_json(),
        "tasks": [t.to_json() for t in page],
        "next_after": next_after,
        "other_order": flipped.query(after=None),
    }


# ---------------------------------------------------------------- task page


def task_data(task: TaskSaga, history: Sequence[HistoryEntry], *, now: datetime) -> dict[str, Any]:
    """The task page: the record, its history and its lease bars."""
    bars = [
        {
            "token": bar.token,
            "owner": bar.owner,
            "start": _iso(bar.start),
            "end": _iso(bar.end),
            "end_kind": bar.end_kind,
            "heartbeats": [_iso(h) for h in bar.heartbeats],
        }
        for bar in timeline.lease_bars(list(history), now=now)
    ]
    return {
        "now": _iso(now),
        "task": task.to_json(),
        "history": [e.to_json() for e in history],
        "lease_bars": bars,
    }
