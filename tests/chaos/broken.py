"""Deliberately broken variants the chaos checks must catch (tests/chaos/test_broken.py
runs a scenario against each and asserts its checks fail).

- ``no-finish-retry``: a worker that does not repeat a finishing write the store did
  not answer (StoreUnavailableError) and believes it done;
- ``ack-before-write``: a worker that reports a task done before its finishing write
  is made (an acknowledgement sent ahead of the commit), caught by SIGKILL mid-write;
- ``unfenced``: a store that does not fence: a heartbeat or finishing write under a
  stale token is answered as done (a zombie's writes are "accepted");
- ``drops-live``: a reaper that drops live leases (it reaps as if it were later);
- ``local-clock``: a store that ignores ``clock=database`` and uses the worker's own
  (skewed) clock;
- ``lock-only``: a SQLite store whose only mutual exclusion is the writer-lock file:
  its statements autocommit (no ``BEGIN IMMEDIATE``) and it writes the row it read
  back with no compare-and-set, so it is safe while every process locks the same
  file and grants a lease twice once the file is removed (caught by the writer-lock
  scenario; the real store relies on SQLite's transaction and its compare-and-set).

The SQLite disk-full and read-only scenarios need no variant of their own:
``no-finish-retry`` is the worker that swallows the typed error of a finishing write
(SQLITE_FULL, a read-only file) and reports the write done.

A variant is named in the child's spec (``variant``); :mod:`chaos._fleet` asks this
module for the store, the worker class and the reap call.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sagalease import (
    LeaseConflictError,
    SagaStore,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskSaga,
    TerminalTaskError,
    Worker,
    core,
)
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.stores import _rows
from sagalease.stores.sqlite import _store as sqlite_internals
from sagalease.worker import LeaseContext, _Written

VARIANTS = (
    "no-finish-retry",
    "ack-before-write",
    "unfenced",
    "drops-live",
    "local-clock",
    "lock-only",
)

_FORWARD = ("complete", "fail", "release")
_RESULT = {"complete": "completed", "fail": "failed", "release": "retried"}


class _Unfenced:
    """A store whose fencing refusals of holder writes are answered as success."""

    def __init__(self, inner: SagaStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in HOLDER_EVENTS:
            return attr

        def write(task_id: str, **kwargs: Any) -> TaskSaga:
            try:
                task: TaskSaga = attr(task_id, **kwargs)
            except (LeaseConflictError, TerminalTaskError):
                found = self.inner.get(task_id)
                assert found is not None
                return found
            return task

        return write


class _LockHeld:
    """The writer lock held, no transaction (every statement commits on its own)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.__enter__()

    def __exit__(self, *_exc: object) -> None:
        self.lock.__exit__()


class LockOnlySQLiteStore(sqlite_internals.SQLiteStore):
    """Every write read, computed by the core and written back under the writer lock
    alone: no ``BEGIN IMMEDIATE``, no ``AND version = ?``, no rendered statements.
    ``PAUSE`` between the read and the write is a slow writer (harmless while the
    lock works; it widens the race once it does not).
    """

    PAUSE = 0.005

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast_events = frozenset()

    def _writing(self, conn: sqlite3.Connection) -> Any:
        return _LockHeld(self._lock)

    @staticmethod
    def _write(conn: sqlite3.Connection, old: TaskSaga, step: core.Step) -> bool:
        time.sleep(LockOnlySQLiteStore.PAUSE)
        names, values = _rows.changes(old, step.task)
        update = sqlite_internals._update(names).removesuffix(" AND version = ?")
        conn.execute(update, (*values, old.task_id))
        # The next free seq: the history keeps both writers' entries (the checks read them).
        (seq,) = conn.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM history WHERE task_id = ?", (old.task_id,)
        ).fetchone()
        entry = dataclasses.replace(step.entry, seq=seq)
        conn.execute(
            sqlite_internals._INSERT_HISTORY,
            (entry.task_id, *_rows.entry_values(entry)),
        )
        return True

    def _mutate(self, task_id: str, mutation: Any) -> TaskSaga:
        core.check_id("task_id", task_id)
        with self._boundary("update"):
            conn = self._conn()
            with self._writing(conn):
                task = self._read(conn, task_id)
                if task is None:
                    raise TaskNotFoundError("no such task", task_id=task_id)
                step = mutation(task)
                self._write(conn, task, step)
        return self._remember(step.task)

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        return self._claim_slowly(owner, ttl_us, now_us, limit, queues)


def open_store(spec: dict[str, Any]) -> Any:
    """The child's store under ``spec["variant"]``."""
    from chaos._fleet import SkewedClock, open_child_store

    variant = spec["variant"]
    if variant == "lock-only":
        clock = SkewedClock(spec.get("skew", 0.0))
        return LockOnlySQLiteStore(spec["path"], clock=clock, timeout=spec.get("timeout", 2.0))
    if variant == "local-clock":
        return open_child_store({**spec, "clock": "local"})
    store = open_child_store(spec)
    return _Unfenced(store) if variant == "unfenced" else store


class NoFinishRetry(Worker):
    """A finishing write is sent once: unanswered, it is believed done."""

    def _write(self, ctx: LeaseContext, event: str, **args: Any) -> _Written | str:
        if event not in _FORWARD:
            return super()._write(ctx, event, **args)
        call: Callable[..., TaskSaga] = getattr(self.store, event)
        try:
            task = call(ctx.task_id, owner=ctx.owner, token=ctx.token, **args)
        except StoreUnavailableError:
            return _Written(ctx.task, ctx.task.state)
        except (LeaseConflictError, TerminalTaskError) as exc:
            ctx._mark_lost(f"refused: {exc}")
            return f"refused: {exc}"
        ctx.task = task
        return _Written(task, task.state)


class AckBeforeWrite(Worker):
    """Reports the task done, then makes its finishing write (a while later)."""

    def _write(self, ctx: LeaseContext, event: str, **args: Any) -> _Written | str:
        if event in _FORWARD:
            from chaos._fleet import _emit

            what = {"task": ctx.task_id, "owner": ctx.owner, "token": ctx.token}
            _emit(ev="outcome", result=_RESULT[event], **what)
            _emit(ev="begin", event=event, index=None, **what)
            time.sleep(0.3)
        return super()._write(ctx, event, **args)


def worker_class(variant: str | None) -> type[Worker]:
    """The worker runtime a child runs."""
    if variant == "no-finish-retry":
        return NoFinishRetry
    if variant == "ack-before-write":
        return AckBeforeWrite
    return Worker


def reap_call(variant: str | None, ttl: float) -> Callable[[Any], list[TaskSaga]]:
    """What the reaper calls each round."""
    if variant == "drops-live":

        def early(store: Any) -> list[TaskSaga]:
            result: list[TaskSaga] = store.reap(now=datetime.now(UTC) + timedelta(seconds=ttl * 2))
            return result

        return early
    return lambda store: list(store.reap())
