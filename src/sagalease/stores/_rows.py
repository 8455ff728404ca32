"""The row codec the SQL stores share: a record as column values and back.

Both schemas keep the same columns (times as integer microseconds, compensations
and notes as JSON text), so SQLite and PostgreSQL encode and decode records the
same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final

from sagalease.core import Step
from sagalease.errors import SagaLeaseError
from sagalease.records import Compensation, HistoryEntry, Lease, Note, TaskSaga, TaskState

Row = tuple[Any, ...]

TASK_COLUMNS: Final = (
    "task_id",
    "saga_id",
    "queue",
    "priority",
    "requeued_from",
    "state",
    "metadata_json",
    "compensations_json",
    "lease_owner",
    "lease_token",
    "lease_acquired_us",
    "lease_expires_us",
    "lease_heartbeat_us",
    "token",
    "attempts",
    "expirations",
    "max_attempts",
    "available_us",
    "deadline_us",
    "created_us",
    "updated_us",
    "terminal_reason",
    "notes_json",
    "version",
)
"""The columns a task is written as: ``task_id``, then :func:`task_values`."""

COLUMNS: Final = ", ".join(("seq", *TASK_COLUMNS))
"""The columns a task is read from, in the order :func:`decode_task` expects."""

HISTORY_COLUMNS: Final = (
    "task_id, seq, event, from_state, to_state, at_us, owner, token, reason, args_json"
)
"""The history columns: ``task_id``, then :func:`entry_values`; :func:`decode_entry`
reads them in this order.
"""


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: object) -> str:
    """Compact JSON of a row's list column (``[]``, the usual value, without encoding)."""
    if value == []:
        return "[]"
    return _COMPACT.encode(value)


def task_values(task: TaskSaga) -> tuple[Any, ...]:
    """The values of :data:`TASK_COLUMNS` after ``task_id``."""
    lease = task.lease
    return (
        task.saga_id,
        task.queue,
        task.priority,
        task.requeued_from,
        task.state.value,
        task.metadata_json,
        dumps([c.to_json() for c in task.compensations]),
        None if lease is None else lease.owner,
        None if lease is None else lease.token,
        None if lease is None else lease.acquired_us,
        None if lease is None else lease.expires_us,
        None if lease is None else lease.heartbeat_us,
        task.token,
        task.attempts,
        task.expirations,
        task.max_attempts,
        task.available_us,
        task.deadline_us,
        task.created_us,
        task.updated_us,
        task.terminal_reason,
        dumps([[n.at_us, n.author, n.text] for n in task.notes]),
        task.version,
    )


_LEASE_COLUMNS = tuple(c for c in TASK_COLUMNS if c.startswith("lease_"))
_SCALARS = tuple(
    c
    for c in TASK_COLUMNS
    if c not in _LEASE_COLUMNS and c not in ("task_id", "state", "compensations_json", "notes_json")
)
"""The columns that hold a :class:`TaskSaga` attribute of the same name as it is."""


def changes(old: TaskSaga, new: TaskSaga) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The columns whose values differ between ``old`` and ``new`` (never
    ``task_id``), and their new values: an event's ``UPDATE`` writes only these.
    """
    names: list[str] = []
    values: list[Any] = []
    if new.state is not old.state:
        names.append("state")
        values.append(new.state.value)
    for name in _SCALARS:
        value = getattr(new, name)
        if value != getattr(old, name):
            names.append(name)
            values.append(value)
    lease = new.lease
    if lease != old.lease:
        names.extend(_LEASE_COLUMNS)
        if lease is None:
            values.extend((None, None, None, None, None))
        else:
            values.extend(
                (lease.owner, lease.token, lease.acquired_us, lease.expires_us, lease.heartbeat_us)
            )
    if new.compensations != old.compensations:
        names.append("compensations_json")
        values.append(dumps([c.to_json() for c in new.compensations]))
    if new.notes != old.notes:
        names.append("notes_json")
        values.append(dumps([[n.at_us, n.author, n.text] for n in new.notes]))
    return tuple(names), tuple(values)


def entry_values(entry: HistoryEntry) -> tuple[Any, ...]:
    """The history columns after ``task_id``: seq, event, from/to state, at, owner,
    token, reason, args.
    """
    return (
        entry.seq,
        entry.event,
        None if entry.from_state is None else entry.from_state.value,
        entry.to_state.value,
        entry.at_us,
        entry.owner,
        entry.token,
        entry.reason,
        entry.args_json,
    )


_STATES: Final = {s.value: s for s in TaskState}
"""A state by its stored name (a dict lookup: cheaper than ``TaskState(name)``)."""


_CACHED_TEXT: Final = 256
"""The longest JSON text whose parse is kept (:func:`_parsed`)."""


def _compensations(text: str) -> tuple[Compensation, ...]:
    return tuple(Compensation.from_json(c) for c in json.loads(text))


def _notes(text: str) -> tuple[Note, ...]:
    return tuple(Note(at, author, note) for at, author, note in json.loads(text))


_cached_compensations = lru_cache(maxsize=1024)(_compensations)
_cached_notes = lru_cache(maxsize=1024)(_notes)


def _parsed(text: str, parse: Callable[[str], Any], cached: Callable[[str], Any]) -> Any:
    """``parse(text)``, through ``cached`` for a short text: the parsed values are
    immutable, so one parse serves every row holding the same text (most rows of a
    fleet repeat a few: ``[]`` above all); long texts are parsed each time, so the
    cache stays small.
    """
    return cached(text) if len(text) <= _CACHED_TEXT else parse(text)


def decode_task(row: Row) -> TaskSaga:
    (
        _seq,
        task_id,
        saga_id,
        queue,
        priority,
        requeued_from,
        state,
        metadata_json,
        compensations_json,
        lease_owner,
        lease_token,
        lease_acquired_us,
        lease_expires_us,
        lease_heartbeat_us,
        token,
        attempts,
        expirations,
        max_attempts,
        available_us,
        deadline_us,
        created_us,
        updated_us,
        terminal_reason,
        notes_json,
        version,
    ) = row
    lease = (
        None
        if lease_owner is None
        else Lease(
            lease_owner, lease_token, lease_acquired_us, lease_expires_us, lease_heartbeat_us
        )
    )
    return TaskSaga(
        task_id=task_id,
        state=_STATES[state],
        created_us=created_us,
        updated_us=updated_us,
        saga_id=saga_id,
        queue=queue,
        priority=priority,
        requeued_from=requeued_from,
        metadata_json=metadata_json,
        compensations=_parsed(compensations_json, _compensations, _cached_compensations),
        lease=lease,
        token=token,
        attempts=attempts,
        expirations=expirations,
        max_attempts=max_attempts,
        available_us=available_us,
        deadline_us=deadline_us,
        terminal_reason=terminal_reason,
        notes=_parsed(notes_json, _notes, _cached_notes),
        version=version,
    )


def decode_entry(row: Row) -> HistoryEntry:
    task_id, seq, event, from_state, to_state, at_us, owner, token, reason, args_json = row
    return HistoryEntry(
        seq=seq,
        task_id=task_id,
        event=event,
        from_state=None if from_state is None else _STATES[from_state],
        to_state=_STATES[to_state],
        at_us=at_us,
        owner=owner,
        token=token,
        reason=reason,
        args_json=args_json,
    )


ClaimCursor = tuple[int, int] | None
"""Where a claim's walk stands: ``(priority, seq)`` of the last row seen (``None``:
the start). The next rows have a lower priority, or the same and a larger seq.
"""


def choose_claims(
    fetch: Callable[[ClaimCursor, int], Sequence[Row]],
    acquire: Callable[[TaskSaga], Step],
    limit: int,
    more: int,
) -> list[tuple[TaskSaga, Step]]:
    """Walk the claim candidates in claim order (priority, highest first, then
    creation) and acquire up to ``limit``.

    ``fetch(cursor, n)`` returns up to ``n`` candidate rows (``seq`` first) after
    ``cursor``; a row the core refuses is skipped, and then at least ``more``
    rows are fetched next. Returns each chosen record with its step.
    """
    chosen: list[tuple[TaskSaga, Step]] = []
    cursor: ClaimCursor = None
    wanted = limit
    while len(chosen) < limit:
        rows = fetch(cursor, wanted)
        for row in rows:
            task = decode_task(row)
            cursor = (task.priority, row[0])
            try:
                chosen.append((task, acquire(task)))
            except SagaLeaseError:
                continue
            if len(chosen) == limit:
                break
        if len(rows) < wanted:
            break
        wanted = max(limit - len(chosen), more)
    return chosen
