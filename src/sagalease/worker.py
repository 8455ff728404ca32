"""The worker runtime: claim, heartbeat, fence, finish, release on shutdown.

A :class:`Worker` takes tasks from a store (``claim_next``, or one given id),
runs a handler for the forward work (RUNNING) or a compensator for each
pending compensation (COMPENSATING), and records how it ended::

    def charge(ctx: LeaseContext) -> None:
        ctx.register_compensation(Compensation("refund", ctx.task_id))
        ctx.check()                                   # LeaseLostError if the lease is gone
        payments.charge(order, fencing_token=ctx.token)

    Worker(store, charge, compensator=refund, ttl=timedelta(seconds=30)).run()

While a handler runs, a background thread heartbeats every
``heartbeat_interval`` (at most a third of the TTL). The moment the lease is
known to be lost (a heartbeat refused, or the last granted expiry passed on
this machine's monotonic clock without a successful heartbeat),
``ctx.lost_event`` is set and every later ``ctx.check()`` raises
:class:`~sagalease.errors.LeaseLostError`. Nothing is silent: the
handler can poll ``ctx.lost``, wait on ``ctx.lost_event``, or call
``ctx.check()``/``ctx.sleep()`` at its checkpoints.

How a task ends:

- the handler returns: ``complete``;
- it raises :class:`LeaseLostError`: nothing is written (the lease is gone);
- it raises :class:`ShutdownRequestedError`: the lease is released;
- it raises anything else: ``fail`` with the exception as reason (the task
  goes to COMPENSATING if it owes compensations, else FAILED).
- a compensator returns: ``compensation_applied``; it raises
  :class:`PermanentCompensationError`: ``compensation_failed`` (the task
  ends QUARANTINED); anything else: the lease is released and the
  compensation is retried later (each retry is an attempt; the reaper
  quarantines the task once they are used up).

The runtime always presents the lease's ``(owner, token)``; the store is the
judge. A write refused because the lease was lost (a zombie that paused
past its lease) is reported as the outcome ``"fenced"`` and changes nothing.

``Worker.run()`` loops with ``concurrency`` threads until stopped; SIGTERM
and SIGINT (see :meth:`Worker.install_signal_handlers`) stop it gracefully:
no new claims, handlers see :class:`ShutdownRequestedError` at their next
checkpoint, and every lease still held after ``shutdown_grace`` seconds is
released by the runtime itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from sagalease.errors import (
    InvalidInputError,
    LeaseConflictError,
    LeaseLostError,
    PermanentCompensationError,
    SagaLeaseError,
    ShutdownRequestedError,
    StoreUnavailableError,
    TerminalTaskError,
)
from sagalease.records import Compensation, TaskSaga, TaskState
from sagalease.store import SagaStore

__all__ = ["Compensator", "Handler", "LeaseContext", "Outcome", "Worker"]

Handler = Callable[["LeaseContext"], object]
"""The forward work: called with the lease context; returning means success."""

Compensator = Callable[["LeaseContext", Compensation], object]
"""Applies one compensation; returning means applied."""

_MAX_REASON = 500


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:_MAX_REASON] or type(exc).__name__


def default_owner() -> str:
    """A worker id unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one leased task ended for this worker.

    ``result`` is one of ``"completed"``, ``"failed"`` (FAILED),
    ``"compensating"`` (failed, compensations owed), ``"compensated"``,
    ``"quarantined"``, ``"released"`` (handed back: shutdown, no compensator,
    or a transient compensation error), ``"lost"`` (the handler learned it had
    lost the lease and wrote nothing) or ``"fenced"`` (a write was refused
    because the lease had been lost).
    """

    task_id: str
    token: int
    phase: TaskState
    result: str
    detail: str | None = None


class LeaseContext:
    """What a handler gets: the task, its fencing token, and how to learn the
    lease was lost.

    Pass ``token`` to every downstream write so that downstream systems can
    refuse a zombie too.
    """

    def __init__(
        self,
        store: SagaStore,
        task: TaskSaga,
        *,
        owner: str,
        ttl: timedelta,
        stopping: threading.Event,
    ) -> None:
        lease = task.lease
        if lease is None or lease.owner != owner:
            raise InvalidInputError("a LeaseContext needs a task leased to this owner")
        self.store = store
        self.task = task
        self.task_id = task.task_id
        self.owner = owner
        self.token = lease.token
        self.ttl = ttl
        self.lost_event = threading.Event()
        """Set the moment the lease is known lost; wait on it or poll :attr:`lost`."""
        self._stopping = stopping
        self._lost_reason = ""
        self._lock = threading.Lock()
        self._expires_mono = time.monotonic() + _remaining(task, ttl)

    # ------------------------------------------------------------ for handlers

    @property
    def lost(self) -> bool:
        """Whether the lease is known lost (also true once the last known expiry passed)."""
        if not self.lost_event.is_set() and time.monotonic() >= self._known_expiry():
            self._mark_lost("the lease expired before a heartbeat extended it")
        return self.lost_event.is_set()

    @property
    def stopping(self) -> bool:
        """Whether the worker was asked to shut down."""
        return self._stopping.is_set()

    @property
    def lost_reason(self) -> str:
        """Why the lease was lost ("" while it is held)."""
        return self._lost_reason

    def check(self) -> None:
        """A checkpoint: raise :class:`LeaseLostError` if the lease is lost, or
        :class:`ShutdownRequestedError` if the worker is stopping.
        """
        if self.lost:
            raise LeaseLostError(
                f"lease lost: {self._lost_reason}",
                task_id=self.task_id,
                state=self.task.state,
                owner=self.owner,
                token=self.token,
            )
        if self._stopping.is_set():
            raise ShutdownRequestedError("the worker is shutting down", task_id=self.task_id)

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``, waking at once (with :meth:`check`'s error) if
        the lease is lost or the worker stops.
        """
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            # Wake when the lease is lost, or at the local expiry, or periodically
            # to notice a shutdown.
            wait = min(left, 0.05, max(0.0, self._known_expiry() - time.monotonic()))
            self.lost_event.wait(wait)

    def register_compensation(self, compensation: Compensation) -> TaskSaga:
        """Add a compensation to the task's plan under this lease. A refusal
        because the lease is gone: :class:`LeaseLostError`.
        """
        self.check()
        try:
            task = self.store.register_compensation(
                self.task_id, owner=self.owner, token=self.token, compensation=compensation
            )
        except (LeaseConflictError, TerminalTaskError) as exc:
            self._mark_lost(f"the store refused the write: {exc}")
            raise LeaseLostError(
                f"lease lost: {exc.reason}",
                task_id=self.task_id,
                state=exc.state,
                owner=self.owner,
                token=self.token,
            ) from exc
        self.task = task
        return task

    # ------------------------------------------------------------ for the runtime

    def _known_expiry(self) -> float:
        with self._lock:
            return self._expires_mono

    def _extended(self, sent_mono: float, task: TaskSaga) -> None:
        with self._lock:
            self._expires_mono = max(self._expires_mono, sent_mono + _remaining(task, self.ttl))
            self.task = task

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if not self.lost_event.is_set():
                self._lost_reason = reason
                self.lost_event.set()


def _remaining(task: TaskSaga, ttl: timedelta) -> float:
    """Seconds the lease is known to stay live from the moment its call was sent:
    the TTL, or less when the store capped the expiry (deadline).
    """
    lease = task.lease
    if lease is None:
        return 0.0
    granted = (lease.expires_at - lease.heartbeat_at).total_seconds()
    return max(0.0, min(ttl.total_seconds(), granted))


class _Heartbeat:
    """The background thread that keeps one lease alive."""

    def __init__(self, ctx: LeaseContext, interval: float) -> None:
        self.ctx = ctx
        self.interval = interval
        self.done = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"heartbeat-{ctx.task_id}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        ctx = self.ctx
        while not self.done.is_set():
            wait = min(self.interval, max(0.0, ctx._known_expiry() - time.monotonic()))
            if self.done.wait(wait):
                return
            if ctx.lost:  # checks the local expiry too
                return
            sent = time.monotonic()
            try:
                task = ctx.store.heartbeat(
                    ctx.task_id, owner=ctx.owner, token=ctx.token, ttl=ctx.ttl
                )
            except StoreUnavailableError:
                continue  # retried until the known expiry passes
            except SagaLeaseError as exc:
                if not self._still_held():
                    ctx._mark_lost(f"heartbeat refused: {exc}")
                    return
                # Held but not extensible (capped at the deadline): it ends at
                # the known expiry, which ctx.lost watches.
                continue
            ctx._extended(sent, task)

    def _still_held(self) -> bool:
        ctx = self.ctx
        try:
            task = ctx.store.get(ctx.task_id)
        except SagaLeaseError:
            return False
        lease = None if task is None else task.lease
        return (
            lease is not None
            and lease.owner == ctx.owner
            and lease.token == ctx.token
            and _store_now(ctx.store) < lease.expires_at
        )


def _store_now(store: SagaStore) -> datetime:
    """The store's clock when it exposes one (the bundled stores do), else UTC now."""
    clock = getattr(store, "clock", None)
    now = getattr(clock, "now", None)
    value = now() if callable(now) else None
    return value if isinstance(value, datetime) else datetime.now(UTC)


class Worker:
    """Runs a handler (and a compensator) over leased tasks of one store.

    ``ttl`` is each lease's length; ``heartbeat_interval`` (default a third of
    the TTL) must be positive and at most a third of it, so that two heartbeats
    in a row can fail before the lease runs out. ``concurrency`` is the number
    of tasks worked at once (threads) by :meth:`run`. Settings that cannot
    work are refused here with :class:`InvalidInputError`.

    The store must be usable from several threads (the bundled stores are);
    a store never crosses a process boundary: open one per process.
    """

    def __init__(
        self,
        store: SagaStore,
        handler: Handler,
        *,
        compensator: Compensator | None = None,
        owner: str | None = None,
        ttl: timedelta = timedelta(seconds=30),
        heartbeat_interval: timedelta | None = None,
        concurrency: int = 1,
        poll_interval: timedelta = timedelta(milliseconds=500),
        shutdown_grace: timedelta = timedelta(seconds=10),
        on_outcome: Callable[[Outcome], object] | None = None,
    ) -> None:
        if not callable(handler):
            raise InvalidInputError("handler must be callable")
        if compensator is not None and not callable(compensator):
            raise InvalidInputError("compensator must be callable or None")
        for name, value in (
            ("ttl", ttl),
            ("poll_interval", poll_interval),
            ("shutdown_grace", shutdown_grace),
        ):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise InvalidInputError(f"{name} must be a positive timedelta, got {value!r}")
        if heartbeat_interval is None:
            heartbeat_interval = ttl / 3
        if not isinstance(heartbeat_interval, timedelta) or heartbeat_interval <= timedelta(0):
            raise InvalidInputError(
                f"heartbeat_interval must be a positive timedelta, got {heartbeat_interval!r}"
            )
        if heartbeat_interval * 3 > ttl:
            raise InvalidInputError(
                f"heartbeat_interval {heartbeat_interval} is not well below the ttl {ttl}:"
                " it must be at most a third of it, so that a late or failed heartbeat"
                " does not lose the lease"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInputError(f"concurrency must be a positive integer, got {concurrency!r}")
        self.store = store
        self.handler = handler
        self.compensator = compensator
        self.owner = default_owner() if owner is None else owner
        self.ttl = ttl
        self.heartbeat_interval = heartbeat_interval
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.on_outcome = on_outcome
        self._stop = threading.Event()
        self._active: dict[str, LeaseContext] = {}
        self._active_lock = threading.Lock()

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; handlers see
        :class:`ShutdownRequestedError` at their next checkpoint. Safe from
        signal handlers and other threads.
        """
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call :meth:`stop` (main thread only)."""

        def _handler(_signum: int, _frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    # ------------------------------------------------------------ one task

    def run_one(self, task_id: str | None = None) -> Outcome | None:
        """Claim one task (the oldest leaseable, or ``task_id``), work it and
        record how it ended. ``None`` when there was nothing to claim. A
        ``task_id`` that cannot be acquired raises the store's error.
        """
        if task_id is None:
            task = self.store.claim_next(owner=self.owner, ttl=self.ttl)
            if task is None:
                return None
        else:
            task = self.store.acquire(task_id, owner=self.owner, ttl=self.ttl)
        return self._work(task)

    def _work(self, task: TaskSaga) -> Outcome:
        ctx = LeaseContext(self.store, task, owner=self.owner, ttl=self.ttl, stopping=self._stop)
        with self._active_lock:
            self._active[task.task_id] = ctx
        try:
            with _Heartbeat(ctx, self.heartbeat_interval.total_seconds()):
                if task.state is TaskState.COMPENSATING:
                    outcome = self._compensate(ctx)
                else:
                    outcome = self._forward(ctx)
        finally:
            with self._active_lock:
                self._active.pop(task.task_id, None)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _outcome(self, ctx: LeaseContext, result: str, detail: str | None = None) -> Outcome:
        return Outcome(ctx.task_id, ctx.token, ctx.task.state, result, detail)

    def _write(
        self, ctx: LeaseContext, call: Callable[..., TaskSaga], **args: Any
    ) -> TaskSaga | None:
        """The holder write ``call(task_id, owner=..., token=..., **args)`` under
        ``ctx``'s lease; ``None`` when the store fenced it: the lease was lost
        (:class:`LeaseConflictError`) or the task ended meanwhile under another
        holder or the reaper (:class:`TerminalTaskError`).
        """
        try:
            task = call(ctx.task_id, owner=ctx.owner, token=ctx.token, **args)
        except (LeaseConflictError, TerminalTaskError) as exc:
            ctx._mark_lost(f"the store refused the write: {exc}")
            return None
        ctx.task = task
        return task

    def _release(self, ctx: LeaseContext, delay: timedelta, why: str) -> Outcome:
        done = self._write(ctx, self.store.release, delay=delay)
        return self._outcome(ctx, "released" if done else "fenced", why)

    def _stopped(self, ctx: LeaseContext, exc: LeaseLostError | ShutdownRequestedError) -> Outcome:
        """The work stopped early: the lease was lost, or shutdown hands it back."""
        if isinstance(exc, LeaseLostError):
            ctx._mark_lost(exc.reason)
            return self._outcome(ctx, "lost", ctx.lost_reason)
        return self._release(ctx, timedelta(0), "shutdown")

    def _forward(self, ctx: LeaseContext) -> Outcome:
        try:
            self.handler(ctx)
        except (LeaseLostError, ShutdownRequestedError) as exc:
            return self._stopped(ctx, exc)
        except Exception as exc:
            reason = _reason(exc)
            task = self._write(ctx, self.store.fail, reason=reason)
            if task is None:
                return self._outcome(ctx, "fenced", f"fail: {reason}")
            result = "compensating" if task.state is TaskState.COMPENSATING else "failed"
            return self._outcome(ctx, result, reason)
        task = self._write(ctx, self.store.complete)
        return self._outcome(ctx, "fenced" if task is None else "completed", "complete")

    def _compensate(self, ctx: LeaseContext) -> Outcome:
        if self.compensator is None:
            return self._release(ctx, self.ttl, "this worker has no compensator")
        compensator = self.compensator
        while ctx.task.state is TaskState.COMPENSATING:
            pending = ctx.task.pending_compensations
            if not pending:  # pragma: no cover - the core ends the phase with the last one
                break
            index = pending[0]
            try:
                ctx.check()
                compensator(ctx, ctx.task.compensations[index])
            except (LeaseLostError, ShutdownRequestedError) as exc:
                return self._stopped(ctx, exc)
            except PermanentCompensationError as exc:
                reason = exc.reason[:_MAX_REASON] or "permanent compensation failure"
                task = self._write(ctx, self.store.compensation_failed, index=index, reason=reason)
                if task is None:
                    return self._outcome(ctx, "fenced", f"compensation_failed: {reason}")
                return self._outcome(ctx, "quarantined", reason)
            except Exception as exc:
                return self._release(ctx, self.poll_interval, f"retry: {_reason(exc)}")
            task = self._write(ctx, self.store.compensation_applied, index=index)
            if task is None:
                return self._outcome(ctx, "fenced", f"compensation_applied {index}")
        return self._outcome(ctx, ctx.task.state.value, ctx.task.terminal_reason)

    # ------------------------------------------------------------ the loop

    def run(
        self,
        *,
        max_tasks: int | None = None,
        until: Callable[[], bool] | None = None,
    ) -> list[Outcome]:
        """Work tasks with ``concurrency`` threads until :meth:`stop` (or a
        signal installed by :meth:`install_signal_handlers`), ``max_tasks``
        outcomes, or ``until()`` returns true (asked whenever nothing is
        claimable). Returns the outcomes. On shutdown, every lease still held
        after ``shutdown_grace`` is released here.
        """
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        budget = [max_tasks]

        def take() -> bool:
            with lock:
                if budget[0] is None:
                    return True
                if budget[0] <= 0:
                    return False
                budget[0] -= 1
                return True

        def loop() -> None:
            try:
                while not self._stop.is_set():
                    if not take():
                        return
                    try:
                        outcome = self.run_one()
                    except StoreUnavailableError:
                        outcome = None  # the store is busy or away: retry after a pause
                    if outcome is None:
                        with lock:
                            if budget[0] is not None:
                                budget[0] += 1
                        if until is not None and until():
                            self._stop.set()
                            return
                        self._stop.wait(self.poll_interval.total_seconds())
                        continue
                    with lock:
                        outcomes.append(outcome)
            except BaseException as exc:  # reported by run(), never lost with the thread
                with lock:
                    errors.append(exc)
                self._stop.set()

        threads = [
            threading.Thread(target=loop, name=f"sagalease-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                # Wake periodically so that signal handlers run in the main thread.
                self._stop.wait(0.1)
                if self._stop.is_set():
                    break
        finally:
            self._stop.set()
            end = time.monotonic() + self.shutdown_grace.total_seconds()
            for thread in threads:
                thread.join(max(0.0, end - time.monotonic()))
            self._release_abandoned()
        if errors:
            raise errors[0]
        return outcomes

    def _release_abandoned(self) -> None:
        """Release the leases of handlers that did not stop within the grace period."""
        with self._active_lock:
            stuck = list(self._active.values())
        for ctx in stuck:
            ctx._mark_lost("the worker shut down; the lease was released")
            with contextlib.suppress(SagaLeaseError):
                self.store.release(ctx.task_id, owner=ctx.owner, token=ctx.token)
