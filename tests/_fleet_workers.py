"""What the worker-runtime tests share: a store wrapper that loses one answer, and the
bodies of the worker processes tests/system/test_worker.py starts.

Each process opens its own store (a store never crosses a fork), runs a
:class:`~sagalease.Worker` over it and writes what it saw to a JSON file.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sagalease import (
    Compensation,
    LeaseContext,
    Outcome,
    PermanentTaskError,
    Retry,
    RetryPolicy,
    SagaStore,
    StoreUnavailableError,
    Worker,
    open_store,
)


class LostAnswer:
    """Wraps a store: the first call of the holder write ``event`` raises
    :class:`StoreUnavailableError`, after the real store applied it (``commits``:
    "the write committed, the answer was lost") or before it wrote anything.
    ``meanwhile`` (if given) runs between the write and the error, as another
    party would. Every other call goes straight to the store.
    """

    def __init__(
        self,
        inner: SagaStore,
        event: str,
        *,
        commits: bool,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        self.inner = inner
        self.event = event
        self.commits = commits
        self.meanwhile = meanwhile
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != self.event:
            return attr

        def write(task_id: str, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                first = self.calls == 1
            if not first:
                return attr(task_id, **kwargs)
            if self.commits:
                attr(task_id, **kwargs)
            if self.meanwhile is not None:
                self.meanwhile()
            raise StoreUnavailableError("the connection dropped before the answer", task_id=task_id)

        return write

    def store(self) -> SagaStore:
        """The wrapper, typed as the store a worker takes."""
        return cast(SagaStore, self)


def _report(out: str, outcomes: list[Outcome], **extra: Any) -> None:
    rows = [
        {
            "task_id": o.task_id,
            "token": o.token,
            "result": o.result,
            "detail": o.detail,
            "retry_in_us": None if o.retry_in is None else o.retry_in // timedelta(microseconds=1),
        }
        for o in outcomes
    ]
    Path(out).write_text(json.dumps({"outcomes": rows, **extra}))


def _policy(settings: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        initial=timedelta(microseconds=settings["initial_us"]),
        factor=settings["factor"],
        maximum=timedelta(microseconds=settings["maximum_us"]),
        jitter=settings["jitter"],
    )


def retrying_worker(url: str, out: str, mode: str, settings: dict[str, Any]) -> None:
    """Work until ``settings["tasks"]`` outcomes with a handler that fails as ``mode`` says.

    - ``"transient"``: raises ``ConnectionError`` ``settings["failures"]`` times per task,
      then returns (registering a compensation first when ``settings["compensate"]``);
    - ``"retry"``: raises ``Retry(after=settings["after_us"])`` every time;
    - ``"permanent"``: raises ``PermanentTaskError`` at once.

    The retry policy comes from ``settings`` and its jitter from ``Random(settings["seed"])``.
    """
    store = open_store(url)
    failures: dict[str, int] = {}
    applied: list[str] = []

    def handler(ctx: LeaseContext) -> None:
        if mode == "permanent":
            raise PermanentTaskError("the account is closed")
        if mode == "retry":
            raise Retry("rate limited", after=timedelta(microseconds=settings["after_us"]))
        if settings.get("compensate") and not ctx.task.compensations:
            ctx.register_compensation(Compensation("refund", ctx.task_id))
        seen = failures.get(ctx.task_id, 0)
        if seen < settings["failures"]:
            failures[ctx.task_id] = seen + 1
            raise ConnectionError(f"flaky {seen + 1}")

    def compensator(_ctx: LeaseContext, comp: Compensation) -> None:
        applied.append(comp.target)

    worker = Worker(
        store,
        handler,
        compensator=compensator,
        owner="retrier",
        ttl=timedelta(seconds=30),
        poll_interval=timedelta(milliseconds=10),
        retry=_policy(settings),
        rng=random.Random(settings["seed"]),
    )
    try:
        outcomes = worker.run(max_tasks=settings["tasks"])
    finally:
        store.close()
    _report(out, outcomes, applied=applied)


def lost_answer_worker(url: str, out: str, event: str, commits: bool) -> None:
    """Work one task through a :class:`LostAnswer` store: the first ``event`` write
    (``complete``, or ``fail`` from a PermanentTaskError) loses its answer.
    """
    inner = open_store(url)
    wrapper = LostAnswer(inner, event, commits=commits)

    def handler(_ctx: LeaseContext) -> None:
        if event == "fail":
            raise PermanentTaskError("no such account")

    worker = Worker(
        wrapper.store(), handler, owner="dropper", poll_interval=timedelta(milliseconds=10)
    )
    try:
        outcomes = worker.run(max_tasks=1)
    finally:
        inner.close()
    _report(out, outcomes, calls=wrapper.calls)
