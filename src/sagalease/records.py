"""Frozen records: what a store keeps and returns.

Times are held as integer UTC microseconds since the epoch (``*_us`` fields),
which is what the pure core computes with and what the databases store; the
public datetime attributes (``created_at``, ``lease.expires_at``, ...) are
properties that return aware UTC datetimes. ``metadata`` and history ``args``
are held as canonical JSON text so that a record can never be mutated through
a shared dict; the properties return a fresh copy on every access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = [
    "Compensation",
    "CompensationStatus",
    "HistoryEntry",
    "Lease",
    "NewTask",
    "Note",
    "TaskSaga",
    "TaskState",
    "from_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_us(instant_us: int) -> datetime:
    """The aware UTC datetime of an instant in microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=instant_us)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_us_opt(instant_us: int | None) -> datetime | None:
    return None if instant_us is None else from_us(instant_us)


class TaskState(StrEnum):
    """The seven lifecycle states (values are the lower-case names)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    QUARANTINED = "quarantined"

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (only notes may still be added)."""
        return self in _TERMINAL


# Written out because this module cannot import the declaration (sagalease.lifecycle
# imports it); lifecycle asserts at import that these are exactly its final states.
_TERMINAL = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.COMPENSATED, TaskState.QUARANTINED}
)


class CompensationStatus(StrEnum):
    """Outcome of one compensation."""

    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Compensation:
    """A cleanup/undo action owed if the forward work fails."""

    kind: str
    target: str
    reason: str = ""
    status: CompensationStatus = CompensationStatus.PENDING

    def to_json(self) -> dict[str, str]:
        """The compensation as a JSON object."""
        return {
            "kind": self.kind,
            "target": self.target,
            "reason": self.reason,
            "status": self.status.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Compensation:
        """Inverse of :meth:`to_json`."""
        return cls(
            kind=data["kind"],
            target=data["target"],
            reason=data.get("reason", ""),
            status=CompensationStatus(data.get("status", "pending")),
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """The right of ``owner`` to work on a task until ``expires_at``, under ``token``."""

    owner: str
    token: int
    acquired_us: int
    expires_us: int
    heartbeat_us: int

    # One property per instant (here and on TaskSaga), not a descriptor factory:
    # each keeps its own docstring and type for readers, mypy and the docs.
    @property
    def acquired_at(self) -> datetime:
        """When this lease was granted."""
        return from_us(self.acquired_us)

    @property
    def expires_at(self) -> datetime:
        """The lease is live while ``now < expires_at``."""
        return from_us(self.expires_us)

    @property
    def heartbeat_at(self) -> datetime:
        """The last heartbeat (the acquisition time until the first one)."""
        return from_us(self.heartbeat_us)

    def is_live(self, now_us: int) -> bool:
        """Whether the lease is live at ``now_us``."""
        return now_us < self.expires_us


@dataclass(frozen=True, slots=True)
class Note:
    """An append-only audit entry."""

    at_us: int
    author: str
    text: str

    @property
    def at(self) -> datetime:
        """When the note was written."""
        return from_us(self.at_us)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change of one task. ``args_json`` holds the event's arguments, so that
    replaying a task's entries in ``seq`` order rebuilds its record.
    """

    seq: int
    task_id: str
    event: str
    from_state: TaskState | None
    to_state: TaskState
    at_us: int
    owner: str | None = None
    token: int | None = None
    reason: str | None = None
    args_json: str = "{}"

    @property
    def at(self) -> datetime:
        """When the change happened."""
        return from_us(self.at_us)

    @property
    def args(self) -> dict[str, Any]:
        """The event's arguments (a fresh dict)."""
        result: dict[str, Any] = json.loads(self.args_json)
        return result

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object (what ``sagalease show --json`` and the web
        view print).
        """
        return {
            "seq": self.seq,
            "task_id": self.task_id,
            "event": self.event,
            "from_state": None if self.from_state is None else self.from_state.value,
            "to_state": self.to_state.value,
            "at": _iso(self.at),
            "owner": self.owner,
            "token": self.token,
            "reason": self.reason,
            "args": self.args,
        }


@dataclass(frozen=True, slots=True)
class TaskSaga:
    """The durable record of one task."""

    task_id: str
    state: TaskState
    created_us: int
    updated_us: int
    saga_id: str | None = None
    queue: str = "default"
    priority: int = 0
    requeued_from: str | None = None
    metadata_json: str = "{}"
    compensations: tuple[Compensation, ...] = ()
    lease: Lease | None = None
    token: int = 0
    attempts: int = 0
    expirations: int = 0
    max_attempts: int = 5
    available_us: int = 0
    deadline_us: int | None = None
    terminal_reason: str | None = None
    notes: tuple[Note, ...] = ()
    version: int = 1

    # ``queue``: the claims that name queues take only tasks of those queues.
    # ``priority`` (-1000..1000): higher runs first; equal priorities in creation
    # order. ``requeued_from``: the FAILED or QUARANTINED task this one re-runs.

    @property
    def metadata(self) -> dict[str, Any]:
        """The task's metadata (a fresh dict)."""
        result: dict[str, Any] = json.loads(self.metadata_json)
        return result

    @property
    def created_at(self) -> datetime:
        """When the task was created."""
        return from_us(self.created_us)

    @property
    def updated_at(self) -> datetime:
        """The last change other than a note."""
        return from_us(self.updated_us)

    @property
    def available_at(self) -> datetime:
        """The task cannot be acquired before this instant."""
        return from_us(self.available_us)

    @property
    def deadline(self) -> datetime | None:
        """The forward work must end before this instant (``None``: no deadline)."""
        return _from_us_opt(self.deadline_us)

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended."""
        return self.state.is_terminal

    @property
    def pending_compensations(self) -> tuple[int, ...]:
        """Indexes of the compensations still pending."""
        return tuple(
            i for i, c in enumerate(self.compensations) if c.status is CompensationStatus.PENDING
        )

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (what ``sagalease show --json`` and the web
        view print).
        """
        lease = self.lease
        return {
            "task_id": self.task_id,
            "saga_id": self.saga_id,
            "queue": self.queue,
            "priority": self.priority,
            "requeued_from": self.requeued_from,
            "state": self.state.value,
            "metadata": self.metadata,
            "compensations": [
                {"index": i, **c.to_json()} for i, c in enumerate(self.compensations)
            ],
            "pending_compensations": list(self.pending_compensations),
            "lease": None
            if lease is None
            else {
                "owner": lease.owner,
                "token": lease.token,
                "acquired_at": _iso(lease.acquired_at),
                "expires_at": _iso(lease.expires_at),
                "heartbeat_at": _iso(lease.heartbeat_at),
            },
            "token": self.token,
            "attempts": self.attempts,
            "expirations": self.expirations,
            "max_attempts": self.max_attempts,
            "available_at": _iso(self.available_at),
            "deadline": _iso(self.deadline),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "terminal_reason": self.terminal_reason,
            "notes": [{"at": _iso(n.at), "author": n.author, "text": n.text} for n in self.notes],
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class NewTask:
    """One task for ``create_many``: what ``create`` takes, as a value."""

    task_id: str
    saga_id: str | None = None
    metadata: Any = None
    compensations: tuple[Compensation, ...] = ()
    max_attempts: int = 5
    deadline: datetime | None = None
    available_at: datetime | None = None
    queue: str = "default"
    priority: int = 0
    requeued_from: str | None = None
