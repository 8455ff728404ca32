"""Operator actions built on the public :class:`~sagalease.store.SagaStore` protocol:
they work on every store, the bundled ones and yours, with no store method of
their own.

:func:`requeue` runs a FAILED or QUARANTINED task again as a new task.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sagalease import core
from sagalease.errors import DuplicateTaskError, InvalidTransitionError, TaskNotFoundError
from sagalease.records import TaskSaga, TaskState
from sagalease.store import SagaStore

__all__ = ["REQUEUEABLE", "REQUEUE_SCAN", "requeue", "requeued_id"]

REQUEUEABLE = frozenset({TaskState.FAILED, TaskState.QUARANTINED})
"""The states :func:`requeue` takes a task from."""

REQUEUE_SCAN = 1_000
"""How many tasks created after the original :func:`requeue` reads (one listing)
to find an earlier requeue made under a chosen id; also the most default ids it
tries."""

_HASH_CHARS = 10


def requeued_id(task_id: str, n: int) -> str:
    """The ``n``-th default id of a requeue of ``task_id``: ``f"{task_id}~r{n}"``.

    Kept within the id limit (``core.MAX_ID_LENGTH`` characters): when the
    original id is too long for the suffix, it is cut and followed by ``~`` and
    the first 10 hex digits of its SHA-256, so two long ids with the same
    beginning still get different copies. The same arguments always give the
    same id.
    """
    suffix = f"~r{n}"
    if len(task_id) + len(suffix) <= core.MAX_ID_LENGTH:
        return task_id + suffix
    digest = hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    keep = core.MAX_ID_LENGTH - len(suffix) - 1 - _HASH_CHARS
    return f"{task_id[:keep]}~{digest}{suffix}"


def requeue(
    store: SagaStore,
    task_id: str,
    *,
    new_id: str | None = None,
    by: str = "sagalease",
    now: datetime | None = None,
) -> TaskSaga:
    """Run a FAILED or QUARANTINED task again: a new PENDING task, returned.

    The original is never changed but for a note. The copy has the original's
    queue, priority, saga, metadata and max_attempts, and
    ``requeued_from=task_id``; not its compensations (the new run registers
    its own) nor its deadline. Its id is ``new_id``, or by default the first
    free :func:`requeued_id` (``task_id~r1``, ``~r2``, ...; a long ``task_id``
    is cut and hashed to stay within 200 characters). Then the original gets
    the note ``requeued as '<new id>'`` by ``by``. Both writes happen at
    ``now`` (default: the store's clock).

    Refusals, each with nothing written: a malformed argument,
    :class:`InvalidInputError`; an unknown ``task_id``,
    :class:`TaskNotFoundError`; a task in any other state,
    :class:`InvalidTransitionError` naming it; ``new_id`` in use,
    :class:`DuplicateTaskError`.

    A repeat with the default id finds the earlier copy and refuses with
    :class:`DuplicateTaskError` naming it, so that one call never makes two
    live copies (requeue that copy if it failed too, or pass ``new_id`` to ask
    for another copy on purpose). The earlier copy is found when it has a
    default id, or when it is among the :data:`REQUEUE_SCAN` tasks created
    after the original in its saga (in the whole store when it has none). A
    repeat with the same ``new_id`` is refused as that id is in use.

    The two writes are not one transaction. A crash (or a
    :class:`StoreUnavailableError`) between them leaves the copy without the
    note on the original; the copy's ``requeued_from`` still links them, and a
    repeat reports :class:`DuplicateTaskError` as above (add the note with
    ``annotate`` if you want it). Two concurrent requeues of one task: one
    makes the copy, the other gets :class:`DuplicateTaskError`.
    """
    core.check_id("task_id", task_id)
    if new_id is not None:
        core.check_id("new_id", new_id)
    core.check_id("by", by)
    original = store.get(task_id)
    if original is None:
        raise TaskNotFoundError("no such task", task_id=task_id)
    if original.state not in REQUEUEABLE:
        raise InvalidTransitionError(
            "requeue takes a failed or quarantined task only", task_id=task_id, state=original.state
        )
    if new_id is None:
        new_id = _free_default_id(store, original)
    copy = store.create(
        new_id,
        saga_id=original.saga_id,
        metadata=original.metadata,
        max_attempts=original.max_attempts,
        queue=original.queue,
        priority=original.priority,
        requeued_from=task_id,
        now=now,
    )
    store.annotate(task_id, text=f"requeued as {new_id!r}", by=by, now=now)
    return copy


def _free_default_id(store: SagaStore, original: TaskSaga) -> str:
    """The first free default id for a copy of ``original``; an earlier copy found
    (or no free id among the first :data:`REQUEUE_SCAN`): :class:`DuplicateTaskError`.
    """
    task_id = original.task_id
    later = store.list_tasks(saga_id=original.saga_id, after=task_id, limit=REQUEUE_SCAN)
    for task in later:
        if task.requeued_from == task_id:
            raise _already(task_id, task.task_id)
    for n in range(1, REQUEUE_SCAN + 1):
        candidate = requeued_id(task_id, n)
        found = store.get(candidate)
        if found is None:
            return candidate
        if found.requeued_from == task_id:
            raise _already(task_id, candidate)
    raise DuplicateTaskError(
        f"the default ids of a requeue ({requeued_id(task_id, 1)!r} ...) are all in use:"
        " pass new_id (--as on the command line)",
        task_id=task_id,
    )


def _already(task_id: str, copy_id: str) -> DuplicateTaskError:
    return DuplicateTaskError(
        f"already requeued as {copy_id!r} (requeue that task, or pass new_id for another copy)",
        task_id=task_id,
    )
