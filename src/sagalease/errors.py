"""Every error sagalease raises.

Hierarchy::

    SagaLeaseError
    ├── TaskNotFoundError        (also LookupError)   no task with that id
    ├── DuplicateTaskError                            create() with an id in use
    ├── LeaseConflictError                            lease held by another, expired, absent,
    │   │                                             wrong owner or stale token
    │   └── LeaseLostError                            worker runtime: the lease this worker
    │                                                 held is gone (expired, taken, refused)
    ├── TerminalTaskError                             the task already ended
    ├── AttemptsExhaustedError                        no acquisition left
    ├── InvalidTransitionError                        the lifecycle has no such move now
    ├── InvalidInputError        (also ValueError)    bad argument; nothing was stored
    ├── SchemaVersionError                            store schema newer than this library
    ├── StoreUnavailableError                         database missing, locked or unreachable
    ├── ShutdownRequestedError                        worker runtime: the worker is stopping
    └── PermanentCompensationError                    raised by a compensator: cannot ever apply

Every error that concerns a task carries ``task_id``, ``state`` (the state the
task was in, or ``None``) and ``reason``; its message names all three. A call
that raises changed nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sagalease.records import TaskState

__all__ = [
    "AttemptsExhaustedError",
    "DuplicateTaskError",
    "InvalidInputError",
    "InvalidTransitionError",
    "LeaseConflictError",
    "LeaseLostError",
    "PermanentCompensationError",
    "PermanentTaskError",
    "Retry",
    "SagaLeaseError",
    "SchemaVersionError",
    "ShutdownRequestedError",
    "StoreUnavailableError",
    "TaskNotFoundError",
    "TerminalTaskError",
]


class SagaLeaseError(Exception):
    """Base class of every sagalease error."""

    def __init__(
        self,
        reason: str,
        *,
        task_id: str | None = None,
        state: TaskState | None = None,
    ) -> None:
        self.reason = reason
        self.task_id = task_id
        self.state = state
        parts = []
        if task_id is not None:
            parts.append(f"task {task_id!r}")
        if state is not None:
            parts.append(f"in state {state.value}")
        prefix = " ".join(parts)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)

    def __reduce__(self) -> tuple[object, ...]:
        # Keep errors picklable (worker processes send them back to parents).
        return (_rebuild, (type(self), self.reason, self.task_id, self.state, self.__dict__))


def _rebuild(
    cls: type[SagaLeaseError],
    reason: str,
    task_id: str | None,
    state: TaskState | None,
    extra: dict[str, object],
) -> SagaLeaseError:
    err = cls.__new__(cls)
    SagaLeaseError.__init__(err, reason, task_id=task_id, state=state)
    err.__dict__.update(extra)
    return err


class TaskNotFoundError(SagaLeaseError, LookupError):
    """No task has this id."""


class DuplicateTaskError(SagaLeaseError):
    """``create`` was given an id already in use; the existing task is kept as it was."""


class LeaseConflictError(SagaLeaseError):
    """The caller does not hold a live lease with the current token, or another does.

    ``owner`` and ``token`` are the caller's claim (``None`` for ``acquire``).
    """

    def __init__(
        self,
        reason: str,
        *,
        task_id: str | None = None,
        state: TaskState | None = None,
        owner: str | None = None,
        token: int | None = None,
    ) -> None:
        super().__init__(reason, task_id=task_id, state=state)
        self.owner = owner
        self.token = token


class TerminalTaskError(SagaLeaseError):
    """The task is in a terminal state; only ``annotate`` may touch it."""


class AttemptsExhaustedError(SagaLeaseError):
    """Every acquisition of the current phase was used (``attempts == max_attempts``)."""


class InvalidTransitionError(SagaLeaseError):
    """The lifecycle has no move for this event now (wrong state, not yet available,
    past the deadline, compensation not pending).
    """


class InvalidInputError(SagaLeaseError, ValueError):
    """An argument is malformed (naive datetime, ttl <= 0, bad id, non-JSON metadata...)."""


class SchemaVersionError(SagaLeaseError):
    """The store's schema was written by a newer sagalease; it is left untouched."""


class StoreUnavailableError(SagaLeaseError):
    """The backing database is missing, locked, unreachable or dropped the connection.

    Whether the interrupted call took effect is unknown; every call is safe to
    retry (a repeat either succeeds or reports the state it finds).
    """


class LeaseLostError(LeaseConflictError):
    """Worker runtime: the lease this worker held is gone (it expired, the heartbeat
    was refused, or another worker took the task over). Raised by
    ``LeaseContext.check()``; the handler must stop writing under this token.
    """


class ShutdownRequestedError(SagaLeaseError):
    """Worker runtime: the worker was asked to stop (SIGTERM/SIGINT or ``stop()``);
    raised by ``LeaseContext.check()`` so the handler can unwind. The runtime
    then releases the lease, so another worker can take the task at once.
    """


class PermanentCompensationError(SagaLeaseError):
    """Raised by a compensator to say a compensation can never be applied; the
    runtime records ``compensation_failed`` and the task ends QUARANTINED.
    Any other exception from a compensator is treated as transient (the lease
    is released and the compensation is retried later).
    """


class PermanentTaskError(SagaLeaseError):
    """Raised by a handler to fail its task at once, whatever attempts remain:
    the runtime records ``fail`` (the task goes to COMPENSATING if it owes
    compensations, else FAILED). Any other exception is retried with backoff
    while attempts remain (see :class:`~sagalease.worker.RetryPolicy`).
    """


class Retry(SagaLeaseError):
    """Raised by a handler to be run again after ``after`` (a non-negative
    ``timedelta``): the runtime releases the lease with that delay and the
    reason, whatever the retry policy would have chosen. On the last attempt
    the task fails instead, as for any other exception.
    """

    def __init__(self, reason: str = "retry requested", *, after: timedelta) -> None:
        if not isinstance(after, timedelta) or after < timedelta(0):
            raise InvalidInputError(
                f"Retry(after=) must be a non-negative timedelta, not {after!r}"
            )
        super().__init__(reason)
        self.after = after
