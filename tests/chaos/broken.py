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
  (skewed) clock.

A variant is named in the child's spec (``variant``); :mod:`chaos._fleet` asks this
module for the store, the worker class and the reap call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sagalease import (
    LeaseConflictError,
    SagaStore,
    StoreUnavailableError,
    TaskSaga,
    TerminalTaskError,
    Worker,
)
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.worker import LeaseContext, _Written

VARIANTS = ("no-finish-retry", "ack-before-write", "unfenced", "drops-live", "local-clock")

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


def open_store(spec: dict[str, Any]) -> Any:
    """The child's store under ``spec["variant"]``."""
    from chaos._fleet import open_child_store

    variant = spec["variant"]
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
