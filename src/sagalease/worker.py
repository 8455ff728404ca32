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
- it raises :class:`~sagalease.errors.PermanentTaskError`: ``fail`` at once,
  whatever attempts remain (the task goes to COMPENSATING if it owes
  compensations, else FAILED);
- it raises :class:`~sagalease.errors.Retry`: the lease is released with
  exactly its ``after`` as the delay (outcome ``"retried"``), unless this was
  the task's last attempt: then ``fail``;
- it raises anything else: while attempts remain, the lease is released with
  the :class:`RetryPolicy`'s backoff as the delay and the error in the
  history entry's reason (outcome ``"retried"``); on the last attempt (or
  with ``retry=None``), ``fail`` with the exception as reason;
- a compensator returns: ``compensation_applied``; it raises
  :class:`PermanentCompensationError`: ``compensation_failed`` (the task
  ends QUARANTINED); anything else: the lease is released with the retry
  policy's backoff and the compensation is retried later (each retry is an
  attempt; the reaper quarantines the task once they are used up).

A finishing write (``complete``, ``fail``, ``release``,
``compensation_applied``, ``compensation_failed``) that meets
:class:`~sagalease.errors.StoreUnavailableError` may or may not have
committed. The runtime repeats it with a short backoff while the lease is
live by its own monotonic clock; a repeat the store refuses is looked up in
the task's history (an entry of that event by this owner and token): found,
the write counts as done; not found, it was fenced. The store's fencing
means it never applies twice.

A store that goes away and comes back (a database server restarting, killed
connections) is ridden out in every phase. A claim that meets
:class:`~sagalease.errors.StoreUnavailableError` is retried after a backoff
(``poll_interval`` doubling with each failed claim in a row, up to 5 s, jittered);
the outage is logged once, as a WARNING on the ``sagalease.worker`` logger, and
its end as one INFO line (nothing is printed: docs/logging.md). A heartbeat that
meets it is tried again soon (a pause from 20 ms doubling to at most 1 s and the
heartbeat interval) until one works or the lease's known expiry passes on this
machine's monotonic clock: then ``ctx.lost`` is set, as the lease may have been
taken meanwhile. A finishing write is repeated as described above.
:func:`run_worker` is the body of a worker process: it opens the store (waiting
``connect_timeout`` for a server that is restarting) and, if it cannot, says so
in one line on stderr instead of a traceback.

The runtime always presents the lease's ``(owner, token)``; the store is the
judge. A write refused because the lease was lost (a zombie that paused
past its lease) is reported as the outcome ``"fenced"`` and changes nothing.

``Worker.run()`` loops with ``concurrency`` threads until stopped; SIGTERM
and SIGINT (see :meth:`Worker.install_signal_handlers`) stop it gracefully:
no new claims, handlers see :class:`ShutdownRequestedError` at their next
checkpoint, the lease of every handler still running after ``shutdown_grace``
seconds is released by the runtime itself, and a store call still in flight
then (a claim, a finishing write) is waited for, up to the TTL. Of the idle
threads (nothing claimable) one at a time polls: it waits for the store's
wake-ups when it offers them (:class:`~sagalease.store.WakeUps`: a write that
may have made a task of its queues claimable), else sleeps, either way for at
most ``poll_interval`` (which also bounds how long it takes to notice
:meth:`Worker.stop`), then claims; the other idle threads wait until a claim
finds a task, each find waking one of them to claim the next. An idle worker
of any ``concurrency`` thus asks the store once per wake-up or interval.
A task that only becomes available later (a retry's delay, ``available_at``)
wakes nobody: it is picked up within ``poll_interval`` of becoming available,
or as soon as it is due when this worker's own retry released it.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Generic, TypeVar

from sagalease import core, telemetry
from sagalease.errors import (
    InvalidInputError,
    InvalidTransitionError,
    LeaseConflictError,
    LeaseLostError,
    PermanentCompensationError,
    PermanentTaskError,
    Retry,
    SagaLeaseError,
    SchemaVersionError,
    ShutdownRequestedError,
    StoreUnavailableError,
    TerminalTaskError,
)
from sagalease.records import Compensation, HistoryEntry, TaskSaga, TaskState
from sagalease.store import SagaStore, WakeUps

__all__ = [
    "Compensator",
    "Handler",
    "LeaseContext",
    "Outcome",
    "RetryPolicy",
    "Worker",
    "run_worker",
]

Handler = Callable[["LeaseContext"], object]
"""The forward work: called with the lease context; returning means success."""

Compensator = Callable[["LeaseContext", Compensation], object]
"""Applies one compensation; returning means applied."""

_MAX_REASON = 500

_FIRST_PAUSE = 0.02
"""Seconds before the first repeat of a finishing write whose answer was lost
(doubling after each, at most :data:`_LAST_PAUSE`)."""

_LAST_PAUSE = 1.0

_CLAIM_BACKOFF_CAP = 5.0
"""Seconds: the longest pause between claims while the store is unavailable (or
``poll_interval``, if that is longer)."""

LOGGER_NAME = "sagalease.worker"
"""The worker runtime's logger: one WARNING when the store becomes unavailable to
its claims, one INFO when they work again (docs/logging.md)."""

_log = logging.getLogger(LOGGER_NAME)
if not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("sagalease").handlers):
    logging.getLogger("sagalease").addHandler(logging.NullHandler())  # nothing on stderr


def _text(text: str) -> str:
    """``text`` cut to the reason limit, and storable: a NUL or a lone surrogate
    (which the store refuses in any text) is written as its escape.
    """
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:_MAX_REASON]


def _reason(exc: BaseException) -> str:
    return _text(f"{type(exc).__name__}: {exc}".strip()) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _seconds(delay: timedelta) -> str:
    return f"{delay.total_seconds():.3f}s"


def default_owner() -> str:
    """A worker id unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a task waits before its next attempt after a handler's ordinary
    exception: exponential backoff with jitter.

    The attempt that just failed (1-based) waits ``initial * factor**(attempt - 1)``,
    capped at ``maximum``, then scaled by a factor drawn uniformly from
    ``[1 - jitter, 1 + jitter]``: the cap applies *before* the jitter, so that
    retries at the cap still spread out (a delay is at most
    ``maximum * (1 + jitter)``). Delays are whole microseconds and never negative.

    Settings that cannot work (a negative or non-timedelta ``initial``, a
    ``maximum`` below ``initial``, a ``factor`` below 1 or not finite, a
    ``jitter`` outside ``[0, 1)``): :class:`InvalidInputError`.
    """

    initial: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    maximum: timedelta = timedelta(minutes=5)
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.initial, timedelta) or self.initial < timedelta(0):
            raise InvalidInputError(
                f"RetryPolicy initial must be a non-negative timedelta, got {self.initial!r}"
            )
        if not isinstance(self.maximum, timedelta) or self.maximum < self.initial:
            raise InvalidInputError(
                f"RetryPolicy maximum must be a timedelta of at least initial ({self.initial}),"
                f" got {self.maximum!r}"
            )
        if not _real(self.factor) or not 1.0 <= self.factor < math.inf:
            raise InvalidInputError(
                f"RetryPolicy factor must be a finite number of at least 1, got {self.factor!r}"
            )
        if not _real(self.jitter) or not 0.0 <= self.jitter < 1.0:
            raise InvalidInputError(
                f"RetryPolicy jitter must be a number in [0, 1), got {self.jitter!r}"
            )

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        """The wait after failed attempt ``attempt`` (1-based), jittered with ``rng``.
        An ``attempt`` that is not a positive integer: :class:`InvalidInputError`.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise InvalidInputError(f"attempt must be a positive integer, got {attempt!r}")
        cap = _us(self.maximum)
        try:
            base = min(_us(self.initial) * self.factor ** (attempt - 1), cap)
        except OverflowError:  # factor ** attempt beyond a float: far past the cap
            base = cap
        scale = rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return timedelta(microseconds=max(0, round(base * scale)))


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# ---------------------------------------------------------------- steps
#
# The runtime's decisions (how a task ends, the repeats of a finishing write, the
# heartbeat loop) are written once, as generators of *steps*: a store call, a
# pause, a wait, the user's code, a holder write. A driver performs each step and
# sends its result back (or throws its exception in): :class:`Worker` performs
# them in its threads, :class:`sagalease.aio.AsyncWorker` awaits them on an event
# loop. Only the execution differs.

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Call:
    """A store call: its result is sent back, its exception thrown in."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def on(self, store: Any) -> Any:
        """Make the call on ``store`` (an async store returns a coroutine to await)."""
        return getattr(store, self.method)(*self.args, **self.kwargs)


@dataclass(frozen=True, slots=True)
class _Pause:
    """Sleep ``seconds`` (between the repeats of a finishing write)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class _Wait:
    """Heartbeat: wait up to ``seconds`` for the heartbeat to be told to end; sent
    back: whether it was.
    """

    seconds: float


@dataclass(frozen=True, slots=True)
class _UserCode:
    """Run the handler (``fn(ctx)``) or a compensator (``fn(ctx, compensation)``)."""

    fn: Callable[..., object]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Write:
    """The holder write ``event`` under the context's lease (the runtime's
    ``_write``): sent back, a :class:`_Written` or why it was not applied.
    """

    event: str
    args: dict[str, Any]


_Step = _Call | _Pause | _Wait | _UserCode | _Write
_Steps = Generator[_Step, Any, _T]

_Settled = tuple[bool, Any]
"""How a performed step ended: ``(True, result)`` or ``(False, exception)``."""


class _Stepper(Generic[_T]):
    """Walks a generator of steps: :attr:`step` is the one to perform while
    :attr:`running`; :meth:`settle` hands back how it ended and moves on;
    :attr:`result` is the generator's value once it returned.
    """

    def __init__(self, steps: _Steps[_T]) -> None:
        self._steps = steps
        self.running = True
        self.step: _Step = _Pause(0.0)
        self.result: _T
        self.settle((True, None))

    def settle(self, settled: _Settled) -> None:
        """Send the step's result (or throw its exception) in; take the next step."""
        ok, value = settled
        try:
            self.step = self._steps.send(value) if ok else self._steps.throw(value)
        except StopIteration as stop:
            self.running = False
            self.result = stop.value


def _settle(perform: Callable[[_Step], Any], step: _Step) -> _Settled:
    try:
        return True, perform(step)
    except BaseException as exc:  # thrown into the steps, which decide
        return False, exc


def _drive(steps: _Steps[_T], perform: Callable[[_Step], Any]) -> _T:
    """Run ``steps`` here, each performed by ``perform``; their result."""
    stepper = _Stepper(steps)
    while stepper.running:
        stepper.settle(_settle(perform, stepper.step))
    return stepper.result


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one leased task ended for this worker.

    ``result`` is one of ``"completed"``, ``"failed"`` (FAILED),
    ``"compensating"`` (failed, compensations owed), ``"compensated"``,
    ``"quarantined"``, ``"retried"`` (handed back to run again after
    ``retry_in``: a handler's or compensator's error with attempts left, or
    :class:`~sagalease.errors.Retry`; ``detail`` is the reason the history
    records), ``"released"`` (handed back: shutdown or no compensator),
    ``"lost"`` (the handler learned it had lost the lease and wrote nothing) or
    ``"fenced"`` (a write was refused because the lease had been lost, or its
    outcome stayed unknown until the lease's known expiry; ``detail`` says which).
    """

    task_id: str
    token: int
    phase: TaskState
    result: str
    detail: str | None = None
    retry_in: timedelta | None = None


class _LeaseState:
    """What a lease context knows, sync or async: the task, its fencing token, the
    lease's known expiry on this machine's monotonic clock and whether (and why)
    the lease is known lost. The steps of the runtime read and update it.
    """

    def __init__(
        self,
        store: Any,
        task: TaskSaga,
        *,
        owner: str,
        ttl: timedelta,
        stopping: threading.Event,
    ) -> None:
        lease = task.lease
        if lease is None or lease.owner != owner:
            raise InvalidInputError(f"a {type(self).__name__} needs a task leased to this owner")
        self.store = store
        self.task = task
        self.task_id = task.task_id
        self.owner = owner
        self.token = lease.token
        self.ttl = ttl
        self._stopping = stopping
        self._lost_reason = ""
        self._is_lost = False
        self._lock = threading.Lock()
        self._expires_mono = time.monotonic() + _remaining(task, ttl)
        self._in_user_code = False  # the handler or a compensator is running
        self._attempt: telemetry.Attempt = telemetry.NO_ATTEMPT  # its span and metrics

    @property
    def stopping(self) -> bool:
        """Whether the worker was asked to shut down."""
        return self._stopping.is_set()

    @property
    def lost_reason(self) -> str:
        """Why the lease was lost ("" while it is held)."""
        return self._lost_reason

    def _known_lost(self) -> bool:
        """Whether the lease is known lost (also true once the last known expiry passed)."""
        if not self._is_lost and time.monotonic() >= self._known_expiry():
            self._mark_lost("the lease expired before a heartbeat extended it")
        return self._is_lost

    def _checkpoint(self) -> None:
        """Raise :class:`LeaseLostError` if the lease is lost, or
        :class:`ShutdownRequestedError` if the worker is stopping.
        """
        if self._known_lost():
            raise self._lost_error()
        if self._stopping.is_set():
            raise ShutdownRequestedError("the worker is shutting down", task_id=self.task_id)

    def _lost_error(self) -> LeaseLostError:
        """The error a checkpoint raises once the lease is known lost."""
        return LeaseLostError(
            f"lease lost: {self._lost_reason}",
            task_id=self.task_id,
            state=self.task.state,
            owner=self.owner,
            token=self.token,
        )

    def _nap(self, end: float) -> float | None:
        """A checkpoint, then how long a sleep until ``end`` (monotonic) waits before
        it checks again: woken when the lease is lost, at the local expiry, or
        periodically to notice a shutdown; ``None``: ``end`` is reached.
        """
        self._checkpoint()
        left = end - time.monotonic()
        if left <= 0:
            return None
        return min(left, 0.05, max(0.0, self._known_expiry() - time.monotonic()))

    def _register_steps(self, compensation: Compensation) -> _Steps[TaskSaga]:
        """Add a compensation under this lease; a refusal: :class:`LeaseLostError`."""
        self._checkpoint()
        try:
            task: TaskSaga = yield _Call(
                "register_compensation",
                (self.task_id,),
                {"owner": self.owner, "token": self.token, "compensation": compensation},
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

    def _known_expiry(self) -> float:
        with self._lock:
            return self._expires_mono

    def _extended(self, sent_mono: float, task: TaskSaga) -> None:
        with self._lock:
            self._expires_mono = max(self._expires_mono, sent_mono + _remaining(task, self.ttl))
            self.task = task

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self._is_lost:
                return
            self._lost_reason = reason
            self._is_lost = True
        self._signal_lost()

    def _signal_lost(self) -> None:
        """Tell the handler the lease is lost (once, after :attr:`lost_reason` is set)."""
        raise NotImplementedError


class LeaseContext(_LeaseState):
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
        self.lost_event = threading.Event()
        """Set the moment the lease is known lost; wait on it or poll :attr:`lost`."""
        super().__init__(store, task, owner=owner, ttl=ttl, stopping=stopping)
        self.store: SagaStore = store
        self._thread = threading.current_thread()

    # ------------------------------------------------------------ for handlers

    @property
    def lost(self) -> bool:
        """Whether the lease is known lost (also true once the last known expiry passed)."""
        return self._known_lost()

    def check(self) -> None:
        """A checkpoint: raise :class:`LeaseLostError` if the lease is lost, or
        :class:`ShutdownRequestedError` if the worker is stopping.
        """
        self._checkpoint()

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``, waking at once (with :meth:`check`'s error) if
        the lease is lost or the worker stops.
        """
        end = time.monotonic() + max(0.0, seconds)
        while (wait := self._nap(end)) is not None:
            self.lost_event.wait(wait)

    def register_compensation(self, compensation: Compensation) -> TaskSaga:
        """Add a compensation to the task's plan under this lease. A refusal
        because the lease is gone: :class:`LeaseLostError`.
        """
        store = self.store
        return _drive(self._register_steps(compensation), lambda step: step.on(store))  # type: ignore[union-attr]

    def _signal_lost(self) -> None:
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
        _drive(_heartbeat_steps(self.ctx, self.interval), self._perform)

    def _perform(self, step: _Step) -> Any:
        if isinstance(step, _Wait):
            return self.done.wait(step.seconds)
        assert isinstance(step, _Call)
        return step.on(self.ctx.store)


def _heartbeat_steps(ctx: _LeaseState, interval: float) -> _Steps[None]:
    """Keep ``ctx``'s lease alive: a heartbeat every ``interval`` seconds until told
    to end (a :class:`_Wait` answered true) or the lease is known lost.
    """
    due = time.monotonic() + interval  # when the next heartbeat is due (its lag)
    failures = 0  # heartbeats in a row that met an unavailable store
    while True:
        pause = _retry_pause(failures, interval)
        wait = min(pause, max(0.0, ctx._known_expiry() - time.monotonic()))
        if (yield _Wait(wait)):
            return
        if ctx._known_lost():  # checks the local expiry too
            return
        sent = time.monotonic()
        try:
            task: TaskSaga = yield _Call(
                "heartbeat",
                (ctx.task_id,),
                {"owner": ctx.owner, "token": ctx.token, "ttl": ctx.ttl},
            )
        except StoreUnavailableError:
            # The store is away (or the answer was lost): try again soon, with a
            # growing pause, until a heartbeat works or the known expiry passes
            # (then ctx.lost is set: the lease may have been taken meanwhile).
            failures += 1
            continue
        except SagaLeaseError as exc:
            held = yield from _still_held_steps(ctx)
            if held is False:
                ctx._mark_lost(f"heartbeat refused: {exc}")
                return
            # Held but not extensible (capped at the deadline), or not known: it
            # ends at the known expiry at the latest, which ctx.lost watches.
            failures = 0 if held else failures + 1
            continue
        failures = 0
        ctx._extended(sent, task)
        granted = time.monotonic()
        ctx._attempt.heartbeat(max(0.0, granted - due))
        due = granted + interval


def _still_held_steps(ctx: _LeaseState) -> _Steps[bool | None]:
    """Whether the store still holds this lease, live; ``None``: the store is away."""
    try:
        task: TaskSaga | None = yield _Call("get", (ctx.task_id,))
    except StoreUnavailableError:
        return None
    except SagaLeaseError:
        return False
    lease = None if task is None else task.lease
    return (
        lease is not None
        and lease.owner == ctx.owner
        and lease.token == ctx.token
        and _store_now(ctx.store) < lease.expires_at
    )


def _retry_pause(failures: int, interval: float) -> float:
    """The wait before the next heartbeat after ``failures`` in a row met an
    unavailable store: the interval after none; else :data:`_FIRST_PAUSE`, doubling
    with each failure, at most :data:`_LAST_PAUSE` and never more than the interval.
    """
    if failures <= 0:
        return interval
    return min(interval, _LAST_PAUSE, _FIRST_PAUSE * 2.0 ** min(failures - 1, 32))


@dataclass(frozen=True, slots=True)
class _Written:
    """A holder write that took effect: the task's record after it (or, when an
    earlier attempt's write was found in the history, the stored record) and
    the state the write moved the task to.
    """

    task: TaskSaga
    state: TaskState


def _store_now(store: SagaStore) -> datetime:
    """The store's clock when it exposes one (the bundled stores do), else UTC now."""
    clock = getattr(store, "clock", None)
    now = getattr(clock, "now", None)
    value = now() if callable(now) else None
    return value if isinstance(value, datetime) else datetime.now(UTC)


_S = TypeVar("_S")


class _Runtime(Generic[_S]):
    """What :class:`Worker` and :class:`sagalease.aio.AsyncWorker` share: the
    options and their checks, how a task ends (the steps of the forward and
    compensation phases, a finishing write and its repeats), the claim backoff
    and the retry schedule. See :class:`Worker` for the options.
    """

    def __init__(
        self,
        store: _S,
        handler: Callable[..., object],
        *,
        compensator: Callable[..., object] | None = None,
        owner: str | None = None,
        ttl: timedelta = timedelta(seconds=30),
        heartbeat_interval: timedelta | None = None,
        concurrency: int = 1,
        poll_interval: timedelta = timedelta(milliseconds=500),
        shutdown_grace: timedelta = timedelta(seconds=10),
        on_outcome: Callable[[Outcome], object] | None = None,
        queues: str | Collection[str] | None = None,
        retry: RetryPolicy | None = RetryPolicy(),  # frozen: one shared default is safe
        rng: random.Random | None = None,
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
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInputError(f"retry must be a RetryPolicy or None, got {retry!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise InvalidInputError(f"rng must be a random.Random or None, got {rng!r}")
        self.queues = core.check_queues(queues)
        """The queues claimed from, as a sorted tuple of names (``None``: every queue)."""
        self.retry = retry
        self.rng = random.Random(os.urandom(16)) if rng is None else rng
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
        self._active: dict[str, Any] = {}  # the lease contexts of the tasks being worked
        self._active_lock = threading.Lock()
        self._due: list[float] = []  # monotonic instants this worker's retries come due
        self._outage_lock = threading.Lock()
        self._claim_failures = 0  # claims in a row that met an unavailable store
        self._outage_since = 0.0  # when the first of them failed (monotonic)

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; handlers see
        :class:`ShutdownRequestedError` at their next checkpoint; an idle
        thread waiting for work notices within ``poll_interval`` (a store's
        wake-up wait cannot be interrupted from here, so it is bounded by that
        interval). Safe from signal handlers and other threads; a repeat does
        nothing more.
        """
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    # ------------------------------------------------------------ how a task ends

    def _outcome(
        self,
        ctx: _LeaseState,
        result: str,
        detail: str | None = None,
        retry_in: timedelta | None = None,
    ) -> Outcome:
        return Outcome(ctx.task_id, ctx.token, ctx.task.state, result, detail, retry_in)

    def _phase_steps(self, ctx: _LeaseState) -> _Steps[Outcome]:
        """Work the leased task: the forward work (RUNNING) or its compensations."""
        if self._stop.is_set():  # claimed while shutting down: hand it back untouched
            return (yield from self._release_steps(ctx, timedelta(0), "shutdown"))
        if ctx.task.state is TaskState.COMPENSATING:
            return (yield from self._compensate_steps(ctx))
        return (yield from self._forward_steps(ctx))

    def _write_steps(
        self, ctx: _LeaseState, event: str, args: dict[str, Any]
    ) -> _Steps[_Written | str]:
        """The holder write ``event`` (a store method named as its event) with
        ``(task_id, owner, token, **args)`` under ``ctx``'s lease: what it wrote,
        or why it was not applied (a string).

        A refusal because the lease was lost (:class:`LeaseConflictError`) or
        the task ended meanwhile (:class:`TerminalTaskError`) is "refused".
        :class:`StoreUnavailableError` means the write may or may not have
        committed: it is repeated with a short backoff while the lease is live
        by this machine's clock (``ctx._known_expiry()``). Once an attempt went
        unanswered, a refusal (:class:`InvalidTransitionError` too: a repeated
        ``compensation_*``) is looked up in the history (:meth:`_find_steps`): found,
        the earlier attempt committed and its record is returned. Past the
        known expiry, one last look in the history decides; if the store is
        still away, the outcome is unknown.
        """
        pause = _FIRST_PAUSE
        unanswered = False  # an attempt met StoreUnavailableError: it may have committed
        refused: SagaLeaseError | None = None  # a repeat was refused: look in the history
        last_look = False  # the known expiry passed: one look in the history decides
        while True:
            try:
                if refused is None and not last_look:
                    task: TaskSaga = yield _Call(
                        event, (ctx.task_id,), {"owner": ctx.owner, "token": ctx.token, **args}
                    )
                    ctx.task = task
                    return _Written(task, task.state)
                found = yield from self._find_steps(ctx, event, args)
            except StoreUnavailableError as exc:
                if last_look:
                    why = (
                        "outcome unknown: the store was unreachable past the lease's"
                        f" known expiry ({exc.reason})"
                    )
                    ctx._mark_lost(why)
                    return why
                unanswered = True
                left = ctx._known_expiry() - time.monotonic()
                if left <= 0:
                    last_look = True
                    continue
                yield _Pause(min(pause, left))
                pause = min(pause * 2, _LAST_PAUSE)
                continue
            except (LeaseConflictError, TerminalTaskError, InvalidTransitionError) as exc:
                if not unanswered:
                    if isinstance(exc, InvalidTransitionError):
                        raise  # a first attempt the lifecycle has no move for: a bug, not a race
                    ctx._mark_lost(f"the store refused the write: {exc}")
                    return f"refused: {exc}"
                refused = exc
                continue
            if found is not None:
                ctx.task = found.task
                return found
            why = (
                f"refused: {refused}"
                if refused is not None
                else "not applied: the store was unreachable until the lease's known expiry"
            )
            ctx._mark_lost(why)
            return why

    def _find_steps(
        self, ctx: _LeaseState, event: str, args: dict[str, Any]
    ) -> _Steps[_Written | None]:
        """The write ``event`` of this lease if the history holds it: an entry of
        that event with ``ctx``'s owner and token after the lease's acquisition
        (for ``compensation_*``, of that ``index``), with the task's stored record.
        """
        entries: list[HistoryEntry] = yield _Call("history", (ctx.task_id,))
        acquired = next(
            (
                i
                for i, e in enumerate(entries)
                if e.event == "acquire" and e.token == ctx.token and e.owner == ctx.owner
            ),
            None,
        )
        if acquired is None:
            return None
        for entry in entries[acquired + 1 :]:
            if (
                entry.event == event
                and (entry.owner, entry.token) == (ctx.owner, ctx.token)
                and ("index" not in args or entry.args.get("index") == args["index"])
            ):
                task: TaskSaga | None = yield _Call("get", (ctx.task_id,))
                assert task is not None  # its history was just read; tasks are never deleted
                return _Written(task, entry.to_state)
        return None

    def _release_steps(
        self,
        ctx: _LeaseState,
        delay: timedelta,
        why: str,
        result: str = "released",
        retry_in: timedelta | None = None,
    ) -> _Steps[Outcome]:
        """Hand the lease back, available again after ``delay``; ``why`` is the
        history entry's reason and the outcome's detail.
        """
        done = yield _Write("release", {"delay": delay, "reason": why})
        if isinstance(done, str):
            return self._outcome(ctx, "fenced", f"release ({why}): {done}")
        if retry_in is not None:
            with self._active_lock:
                heapq.heappush(self._due, time.monotonic() + retry_in.total_seconds())
        return self._outcome(ctx, result, why, retry_in)

    def _retry_steps(
        self, ctx: _LeaseState, delay: timedelta, exc: BaseException
    ) -> _Steps[Outcome]:
        """Hand the task back to run again after ``delay``, the error in the reason."""
        task = ctx.task
        reason = f"retry {task.attempts}/{task.max_attempts} in {_seconds(delay)}: {_reason(exc)}"
        return (yield from self._release_steps(ctx, delay, _text(reason), "retried", delay))

    def _delay(self, ctx: _LeaseState, exc: BaseException) -> timedelta | None:
        """How long before the next attempt after ``exc``; ``None``: no retry."""
        if isinstance(exc, PermanentTaskError) or ctx.task.attempts >= ctx.task.max_attempts:
            return None
        if isinstance(exc, Retry):
            return exc.after
        if self.retry is None:
            return None
        return self.retry.delay(ctx.task.attempts, self.rng)

    def _compensation_error_steps(self, ctx: _LeaseState, exc: Exception) -> _Steps[Outcome]:
        """A compensator's transient error: retried after the policy's backoff
        (``retry=None``: after ``poll_interval``) while attempts remain; after
        the last one the lease is released at once and the reaper quarantines
        the task (the compensation stays pending, listed for an operator).
        """
        task = ctx.task
        if task.attempts >= task.max_attempts:
            why = f"attempt {task.attempts}/{task.max_attempts}, none left: {_reason(exc)}"
            return (yield from self._release_steps(ctx, timedelta(0), _text(why)))
        policy = self.retry
        delay = self.poll_interval if policy is None else policy.delay(task.attempts, self.rng)
        return (yield from self._retry_steps(ctx, delay, exc))

    def _stopped_steps(
        self, ctx: _LeaseState, exc: LeaseLostError | ShutdownRequestedError
    ) -> _Steps[Outcome]:
        """The work stopped early: the lease was lost, or shutdown hands it back."""
        if isinstance(exc, LeaseLostError):
            ctx._mark_lost(exc.reason)
            return self._outcome(ctx, "lost", ctx.lost_reason)
        return (yield from self._release_steps(ctx, timedelta(0), "shutdown"))

    @contextlib.contextmanager
    def _user_code(self, ctx: _LeaseState) -> Iterator[None]:
        """Mark ``ctx`` as running the handler or a compensator: at shutdown, only
        such a one is given up on after the grace period.
        """
        ctx._in_user_code = True
        try:
            with ctx._attempt.user_code():  # its duration, and the exception it raised
                yield
        finally:
            ctx._in_user_code = False

    def _forward_steps(self, ctx: _LeaseState) -> _Steps[Outcome]:
        try:
            yield _UserCode(self.handler, (ctx,))
        except (LeaseLostError, ShutdownRequestedError) as exc:
            return (yield from self._stopped_steps(ctx, exc))
        except Exception as exc:
            delay = self._delay(ctx, exc)
            if delay is not None:
                return (yield from self._retry_steps(ctx, delay, exc))
            reason = _reason(exc)
            failed = yield _Write("fail", {"reason": reason})
            if isinstance(failed, str):
                return self._outcome(ctx, "fenced", f"fail ({reason}): {failed}")
            result = "compensating" if failed.state is TaskState.COMPENSATING else "failed"
            return self._outcome(ctx, result, reason)
        done = yield _Write("complete", {})
        if isinstance(done, str):
            return self._outcome(ctx, "fenced", f"complete: {done}")
        return self._outcome(ctx, "completed", "complete")

    def _compensate_steps(self, ctx: _LeaseState) -> _Steps[Outcome]:
        if self.compensator is None:
            return (yield from self._release_steps(ctx, self.ttl, "this worker has no compensator"))
        compensator = self.compensator
        while ctx.task.state is TaskState.COMPENSATING:
            pending = ctx.task.pending_compensations
            if not pending:  # pragma: no cover - the core ends the phase with the last one
                break
            index = pending[0]
            try:
                ctx._checkpoint()
                yield _UserCode(compensator, (ctx, ctx.task.compensations[index]))
            except (LeaseLostError, ShutdownRequestedError) as exc:
                return (yield from self._stopped_steps(ctx, exc))
            except PermanentCompensationError as exc:
                reason = _text(exc.reason) or "permanent compensation failure"
                failed = yield _Write("compensation_failed", {"index": index, "reason": reason})
                if isinstance(failed, str):
                    return self._outcome(ctx, "fenced", f"compensation_failed {index}: {failed}")
                return self._outcome(ctx, "quarantined", reason)
            except Exception as exc:
                return (yield from self._compensation_error_steps(ctx, exc))
            applied = yield _Write("compensation_applied", {"index": index})
            if isinstance(applied, str):
                return self._outcome(ctx, "fenced", f"compensation_applied {index}: {applied}")
        return self._outcome(ctx, ctx.task.state.value, ctx.task.terminal_reason)

    # ------------------------------------------------------------ claims and idling

    def _claim_failed(self, exc: StoreUnavailableError) -> float:
        """A claim met an unavailable store: the pause before this thread's next
        claim (``poll_interval`` doubling with each failed claim in a row, of any
        thread, up to 5 s or ``poll_interval`` if longer; jittered by a fifth).
        The first failure of an outage is logged: one WARNING.
        """
        with self._outage_lock:
            self._claim_failures += 1
            failures = self._claim_failures
            if failures == 1:
                self._outage_since = time.monotonic()
        poll = self.poll_interval.total_seconds()
        cap = max(poll, _CLAIM_BACKOFF_CAP)
        if failures == 1:
            _log.warning(
                "worker %s: the store is unavailable, claims are retried with a backoff"
                " of up to %gs: %s",
                self.owner,
                cap,
                _one_line(str(exc)),
            )
        base = min(cap, poll * 2.0 ** min(failures - 1, 32))
        return base * self.rng.uniform(0.8, 1.2)

    def _claim_worked(self) -> None:
        """A claim was answered: the end of an outage is logged (one INFO)."""
        if not self._claim_failures:  # the usual case: no lock
            return
        with self._outage_lock:
            failures, self._claim_failures = self._claim_failures, 0
            since = self._outage_since
        if failures:
            _log.info(
                "worker %s: the store answers claims again after %.1fs (%d failed claims)",
                self.owner,
                time.monotonic() - since,
                failures,
            )

    def _idle_seconds(self) -> float:
        """How long an idle claimer waits: at most ``poll_interval``, and no later
        than the next of this worker's own retries comes due (a task becoming
        available wakes nobody).
        """
        seconds = self.poll_interval.total_seconds()
        now = time.monotonic()
        with self._active_lock:
            while self._due and self._due[0] <= now:
                heapq.heappop(self._due)
            if self._due:
                seconds = min(seconds, self._due[0] - now)
        return seconds

    def _abandoned(self) -> list[Any]:
        """The contexts whose handler (or compensator) is still running: at
        shutdown, after the grace period, their leases are released and they
        are told the lease is lost.
        """
        with self._active_lock:
            stuck = [ctx for ctx in self._active.values() if ctx._in_user_code]
        for ctx in stuck:
            ctx._mark_lost("the worker shut down; the lease was released")
        return stuck


_ABANDONED_REASON = "shutdown: the handler did not stop within the grace period"


class _IdleGate:
    """Which of a :class:`Worker`'s idle threads asks the store for work: one at a
    time (the poller, who waits for work and then claims); the others wait until
    a claim found a task, each find waking one of them to claim the next. An idle
    worker of any ``concurrency`` thus makes one claim per wake-up or interval.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._polling = False
        self._waiting = 0  # threads waiting for a find
        self._calls = 0  # finds not yet taken by a waiting thread

    def idle(
        self, wait: Callable[[], None], stop: threading.Event, spent: Callable[[], bool]
    ) -> None:
        """Found nothing to claim: return when this thread should claim again,
        after waiting for work with ``wait`` as the poller, or after a find (or
        :meth:`Worker.stop`, or ``spent()``: no claim is left to make) while
        another thread polls.
        """
        with self._cond:
            while not self._calls and self._polling and not stop.is_set() and not spent():
                self._waiting += 1
                self._cond.wait(0.1)  # stop() sets an Event, not this condition
                self._waiting -= 1
            if self._calls:
                self._calls -= 1
                return
            if stop.is_set() or spent():
                return
            self._polling = True
        try:
            wait()
        finally:
            with self._cond:
                self._polling = False
                self._cond.notify()  # a waiting thread becomes the next poller

    def found(self) -> None:
        """A claim found a task: wake one waiting thread to claim the next."""
        with self._cond:
            if self._waiting > self._calls:
                self._calls += 1
                self._cond.notify()


class Worker(_Runtime[SagaStore]):
    """Runs a handler (and a compensator) over leased tasks of one store.

    ``ttl`` is each lease's length; ``heartbeat_interval`` (default a third of
    the TTL) must be positive and at most a third of it, so that two heartbeats
    in a row can fail before the lease runs out. ``concurrency`` is the number
    of tasks worked at once (threads) by :meth:`run`. ``queues`` (``None``:
    every queue; a name or a collection of names) are the queues it claims
    from. ``retry`` is the backoff after a handler's ordinary exception
    (``None``: such an exception fails the task at once; a raised
    :class:`~sagalease.errors.Retry` is still honoured); ``rng`` draws its
    jitter (default: seeded from ``os.urandom``; pass a seeded
    :class:`random.Random` to pin the delays). Settings that cannot work are
    refused here with :class:`InvalidInputError`.

    The store must be usable from several threads (the bundled stores are);
    a store never crosses a process boundary: open one per process.
    """

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call :meth:`stop` (main thread only)."""

        def _handler(_signum: int, _frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    # ------------------------------------------------------------ one task

    def run_one(self, task_id: str | None = None) -> Outcome | None:
        """Claim one task (from :attr:`queues`: the highest priority, then the
        oldest leaseable; or ``task_id``, whatever its queue), work it and record
        how it ended. ``None`` when there was nothing to claim. A ``task_id``
        that cannot be acquired raises the store's error.
        """
        task = self._claim(task_id)
        return None if task is None else self._work(task)

    def _claim(self, task_id: str | None = None) -> TaskSaga | None:
        if task_id is None:
            with telemetry.claim("claim_next") as claim:
                task = self.store.claim_next(owner=self.owner, ttl=self.ttl, queues=self.queues)
                claim.claimed(task)
            return task
        with telemetry.claim("acquire") as claim:
            task = self.store.acquire(task_id, owner=self.owner, ttl=self.ttl)
            claim.claimed(task)
        return task

    def _work(self, task: TaskSaga) -> Outcome:
        ctx = LeaseContext(self.store, task, owner=self.owner, ttl=self.ttl, stopping=self._stop)
        # The attempt's span is current in this thread: the handler's spans are its children.
        with telemetry.attempt(task, self.owner) as attempt:
            ctx._attempt = attempt
            with self._active_lock:
                self._active[task.task_id] = ctx
            try:
                with _Heartbeat(ctx, self.heartbeat_interval.total_seconds()):
                    outcome = _drive(self._phase_steps(ctx), self._performer(ctx))
            finally:
                with self._active_lock:
                    self._active.pop(task.task_id, None)
            attempt.finish(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _performer(self, ctx: LeaseContext) -> Callable[[_Step], Any]:
        """How this thread performs the steps of ``ctx``'s task."""

        def perform(step: _Step) -> Any:
            if isinstance(step, _Call):
                return step.on(self.store)
            if isinstance(step, _Write):
                return self._write(ctx, step.event, **step.args)
            if isinstance(step, _UserCode):
                with self._user_code(ctx):
                    return step.fn(*step.args)
            assert isinstance(step, _Pause)
            time.sleep(step.seconds)
            return None

        return perform

    def _write(self, ctx: LeaseContext, event: str, **args: Any) -> _Written | str:
        """The holder write ``event`` under ``ctx``'s lease (see
        :meth:`_write_steps`): what it wrote, or why it was not applied.
        """
        return _drive(self._write_steps(ctx, event, args), self._performer(ctx))

    # ------------------------------------------------------------ the loop

    def run(
        self,
        *,
        max_tasks: int | None = None,
        until: Callable[[], bool] | None = None,
    ) -> list[Outcome]:
        """Work tasks with ``concurrency`` threads until :meth:`stop` (or a
        signal installed by :meth:`install_signal_handlers`), ``max_tasks``
        outcomes (each attempt's: a ``"retried"`` one counts), or ``until()``
        returns true (asked whenever nothing is claimable). Returns the outcomes.
        On shutdown, every lease whose handler is still running after
        ``shutdown_grace`` is released here; a thread that is in a store call
        instead (a claim, or a finishing write, which gives up at its lease's
        known expiry) is waited for, up to the TTL more, so that the process
        never exits with a write half done.
        """
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        budget = [max_tasks]
        gate = _IdleGate()

        def take() -> bool:
            with lock:
                if budget[0] is None:
                    return True
                if budget[0] <= 0:
                    return False
                budget[0] -= 1
                return True

        def spent() -> bool:
            """``max_tasks`` claims are made or being made (an idle thread then
            stops waiting for work: the loop ends it).
            """
            return budget[0] is not None and budget[0] <= 0

        def loop() -> None:
            try:
                while not self._stop.is_set():
                    if not take():
                        return
                    pause: float | None = None
                    try:
                        task = self._claim()
                        if task is not None:
                            gate.found()
                        outcome = None if task is None else self._work(task)
                    except StoreUnavailableError as exc:
                        outcome = None  # the store is busy or away: retry after a backoff
                        pause = self._claim_failed(exc)
                    else:
                        self._claim_worked()
                    if outcome is None:
                        with lock:
                            if budget[0] is not None:
                                budget[0] += 1
                        if until is not None and until():
                            self._stop.set()
                            return
                        if pause is None:
                            gate.idle(self._idle, self._stop, spent)
                        else:
                            self._stop.wait(pause)
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
            stuck = self._release_abandoned()
            end = time.monotonic() + self.ttl.total_seconds()
            for thread in threads:
                if thread not in stuck:
                    thread.join(max(0.0, end - time.monotonic()))
        if errors:
            raise errors[0]
        return outcomes

    def _idle(self) -> None:
        """Wait for work: the store's wake-ups when it offers them, else a sleep;
        at most ``poll_interval`` either way (:meth:`stop` ends a sleep at once),
        and no later than the next of this worker's own retries comes due (a task
        becoming available wakes nobody).
        """
        seconds = self._idle_seconds()
        store = self.store
        if not self._stop.is_set() and isinstance(store, WakeUps):
            try:
                store.wait_for_work(queues=self.queues, timeout=timedelta(seconds=seconds))
            except StoreUnavailableError:
                self._stop.wait(seconds)
            return
        self._stop.wait(seconds)

    def _release_abandoned(self) -> set[threading.Thread]:
        """Release the leases of handlers (or compensators) that did not stop
        within the grace period; their threads are returned, given up on.
        """
        stuck = self._abandoned()
        for ctx in stuck:
            with contextlib.suppress(SagaLeaseError):
                self._write(ctx, "release", delay=timedelta(0), reason=_ABANDONED_REASON)
        return {ctx._thread for ctx in stuck}


def run_worker(
    store: str | Callable[[], SagaStore],
    handler: Handler,
    *,
    connect_timeout: float = 30.0,
    max_tasks: int | None = None,
    until: Callable[[], bool] | None = None,
    signals: bool = True,
    **options: Any,
) -> int:
    """The body of a worker process: open the store, run a :class:`Worker` over it
    until it is stopped (SIGTERM/SIGINT with ``signals``, in the main thread),
    ``max_tasks`` outcomes or ``until()``, close the store; returns the exit status.

    ``store`` is a store URL, opened with
    :func:`~sagalease.stores.open_store` and ``connect_timeout`` (seconds: a
    PostgreSQL server that is restarting is waited for that long), or a
    zero-argument callable that opens one. ``options`` go to :class:`Worker`
    (``compensator``, ``ttl``, ``concurrency``, ...).

    A store that cannot be opened (still unavailable after ``connect_timeout``, a
    schema newer than this library) is one line on stderr
    (``sagalease worker: error: ...``, the password never shown) and status 3; a
    bad URL or setting, one line and status 2; never a traceback. Once running,
    the worker rides out a store that goes away and comes back (see the module
    documentation) and returns 0 when it stops.

    Example (a worker process)::

        raise SystemExit(run_worker(os.environ["SAGALEASE_DB"], charge, ttl=timedelta(seconds=30)))
    """
    try:
        if isinstance(store, str):
            from sagalease.stores import open_store

            opened = open_store(store, connect_timeout=connect_timeout)
        else:
            opened = store()
    except (StoreUnavailableError, SchemaVersionError) as exc:
        _fail(f"cannot open the store: {exc}")
        return 3
    except InvalidInputError as exc:
        _fail(str(exc))
        return 2
    try:
        try:
            worker = Worker(opened, handler, **options)
        except InvalidInputError as exc:
            _fail(str(exc))
            return 2
        handled = signals and threading.current_thread() is threading.main_thread()
        previous = [(s, signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)]
        if handled:
            worker.install_signal_handlers()
        try:
            worker.run(max_tasks=max_tasks, until=until)
        finally:
            if handled:  # the process's own handlers again
                for signum, handler_before in previous:
                    signal.signal(signum, handler_before)
    finally:
        with contextlib.suppress(SagaLeaseError):
            opened.close()
    return 0


def _fail(message: str) -> None:
    """One line on stderr (the CLI's form), for a worker process that cannot start."""
    print(f"sagalease worker: error: {_one_line(message)}", file=sys.stderr)
