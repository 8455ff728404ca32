"""The async worker runtime: :class:`sagalease.worker.Worker`'s semantics on an
event loop.

How a task ends, the repeats of a finishing write after an unknown outcome, the
heartbeat loop, the retry backoff and the option checks are the sync worker's
own (the steps of :class:`sagalease.worker._Runtime`); this module only
performs them with ``await``: store calls on an :class:`AsyncSagaStore`, pauses
with ``asyncio.sleep``, the handler as an asyncio task::

    async def charge(ctx: AsyncLeaseContext) -> None:
        await ctx.register_compensation(Compensation("refund", ctx.task_id))
        await ctx.check()                    # LeaseLostError if the lease is gone
        await payments.charge(order, fencing_token=ctx.token)

    await AsyncWorker(store, charge, ttl=timedelta(seconds=30), concurrency=50).run()

``concurrency`` is the number of handler tasks. One claimer per worker fills
the free slots, all of them in one store call (``claim_batch``; ``claim_next``
for one); when nothing is claimable it alone awaits the store's wake-ups when
the store offers them (the async PostgreSQL store's ``wait_for_work``:
LISTEN/NOTIFY), else sleeps ``poll_interval``: an idle worker of any
``concurrency`` asks the store once per wake-up or interval. Each leased task's
heartbeat is an asyncio task every ``heartbeat_interval`` (at most a third of
the TTL).
``ctx.lost`` is an :class:`asyncio.Event`, set the moment the lease is known
lost; with ``cancel_on_loss=True`` the handler's task is cancelled then too
(the outcome is ``"lost"``, nothing is written). SIGTERM and SIGINT (see
:meth:`AsyncWorker.run`'s ``signals``) stop it gracefully: no new claims,
handlers see :class:`~sagalease.errors.ShutdownRequestedError` at their next
checkpoint, and the leases of handlers still running after ``shutdown_grace``
are released and their tasks cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from sagalease import telemetry
from sagalease.aio._store import AsyncSagaStore
from sagalease.errors import SagaLeaseError, StoreUnavailableError
from sagalease.records import Compensation, TaskSaga
from sagalease.worker import (
    _ABANDONED_REASON,
    Outcome,
    _Call,
    _heartbeat_steps,
    _LeaseState,
    _Pause,
    _Runtime,
    _Settled,
    _Step,
    _Stepper,
    _Steps,
    _UserCode,
    _Wait,
    _Write,
    _Written,
)

_T = TypeVar("_T")

_CLAIM_BATCH = 100
"""The most tasks one claim asks for (free slots beyond it are claimed next round)."""

__all__ = ["AsyncCompensator", "AsyncHandler", "AsyncLeaseContext", "AsyncWorker"]

AsyncHandler = Callable[["AsyncLeaseContext"], Awaitable[object]]
"""The forward work: awaited with the lease context; returning means success."""

AsyncCompensator = Callable[["AsyncLeaseContext", Compensation], Awaitable[object]]
"""Applies one compensation; returning means applied."""


async def _settle(perform: Callable[[_Step], Awaitable[Any]], step: _Step) -> _Settled:
    try:
        return True, await perform(step)
    except BaseException as exc:  # thrown into the steps, which decide
        return False, exc


async def _drive(steps: _Steps[_T], perform: Callable[[_Step], Awaitable[Any]]) -> _T:
    """Run ``steps`` on the event loop, each performed by ``perform``; their result."""
    stepper = _Stepper(steps)
    while stepper.running:
        stepper.settle(await _settle(perform, stepper.step))
    return stepper.result


def _warm_telemetry() -> None:
    """Import the OpenTelemetry API and make the runtime's instruments (once)."""
    telemetry._load()
    telemetry._current()


class AsyncLeaseContext(_LeaseState):
    """What an async handler gets: the task, its fencing ``token`` (pass it to
    every downstream write), and how to learn the lease was lost: :attr:`lost`
    (an :class:`asyncio.Event`), ``await`` :meth:`check` at checkpoints,
    :meth:`sleep` that wakes when the lease is lost.
    """

    def __init__(self, store: AsyncSagaStore, task: TaskSaga, **kwargs: Any) -> None:
        self.lost = asyncio.Event()
        """Set the moment the lease is known lost (``await ctx.lost.wait()``)."""
        self._handler_task: asyncio.Task[Any] | None = None
        self._cancel_on_loss = False
        super().__init__(store, task, **kwargs)
        self.store: AsyncSagaStore = store

    async def check(self) -> None:
        """A checkpoint: raise :class:`~sagalease.errors.LeaseLostError` if the lease
        is lost (also once its last known expiry passed), or
        :class:`~sagalease.errors.ShutdownRequestedError` if the worker is stopping.
        """
        self._checkpoint()

    async def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``, waking at once (with :meth:`check`'s error) if
        the lease is lost or the worker stops.
        """
        end = time.monotonic() + max(0.0, seconds)
        while (wait := self._nap(end)) is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), wait)

    async def register_compensation(self, compensation: Compensation) -> TaskSaga:
        """Add a compensation to the task's plan under this lease. A refusal
        because the lease is gone: :class:`~sagalease.errors.LeaseLostError`.
        """
        return await _drive(self._register_steps(compensation), self._call)

    async def _call(self, step: _Step) -> Any:
        assert isinstance(step, _Call)
        return await step.on(self.store)

    def _signal_lost(self) -> None:
        self.lost.set()
        task = self._handler_task
        if self._cancel_on_loss and task is not None and not task.done():
            task.cancel("the lease was lost")


class AsyncWorker(_Runtime[AsyncSagaStore]):
    """Runs an async handler (and compensator) over leased tasks of an
    :class:`AsyncSagaStore`, with :class:`~sagalease.worker.Worker`'s options,
    checks and semantics; ``concurrency`` is the number of handler tasks.
    ``cancel_on_loss``: cancel the handler's task the moment its lease is known
    lost (default: only set ``ctx.lost``; the handler learns it at its next
    checkpoint). ``on_outcome`` may be a coroutine function.
    """

    def __init__(
        self,
        store: AsyncSagaStore,
        handler: AsyncHandler,
        *,
        cancel_on_loss: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(store, handler, **options)
        self.cancel_on_loss = bool(cancel_on_loss)
        self._wake: asyncio.Event | None = None
        self._handler_tasks: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        """Ask the worker to stop (see :meth:`Worker.stop`); safe from signal
        handlers and other threads. The idle claimer notices at once.
        """
        super().stop()
        wake, loop = self._wake, self._loop
        if wake is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    _loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ one task

    async def run_one(self, task_id: str | None = None) -> Outcome | None:
        """Claim one task (from :attr:`queues`, or ``task_id``), work it and record
        how it ended; ``None`` when there was nothing to claim.
        """
        method = "claim_next" if task_id is None else "acquire"
        with telemetry.claim(method) as claim:
            if task_id is None:
                task = await self.store.claim_next(
                    owner=self.owner, ttl=self.ttl, queues=self.queues
                )
            else:
                task = await self.store.acquire(task_id, owner=self.owner, ttl=self.ttl)
            claim.claimed(task)
        if task is None:
            return None
        return await self._work(task)

    async def _work(self, task: TaskSaga) -> Outcome:
        ctx = AsyncLeaseContext(
            self.store, task, owner=self.owner, ttl=self.ttl, stopping=self._stop
        )
        ctx._cancel_on_loss = self.cancel_on_loss
        done = asyncio.Event()
        with telemetry.attempt(task, self.owner) as attempt:
            ctx._attempt = attempt
            self._active[task.task_id] = ctx
            beating = asyncio.create_task(self._heartbeat(ctx, done), name="sagalease-heartbeat")
            try:
                outcome = await _drive(self._phase_steps(ctx), self._performer(ctx))
            finally:
                self._active.pop(task.task_id, None)
                done.set()
                await beating
            attempt.finish(outcome)
        if self.on_outcome is not None:
            result = self.on_outcome(outcome)
            if inspect.isawaitable(result):
                await result
        return outcome

    async def _heartbeat(self, ctx: AsyncLeaseContext, done: asyncio.Event) -> None:
        async def perform(step: _Step) -> Any:
            if isinstance(step, _Wait):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), step.seconds)
                return done.is_set()
            return await ctx._call(step)

        await _drive(_heartbeat_steps(ctx, self.heartbeat_interval.total_seconds()), perform)

    def _performer(self, ctx: AsyncLeaseContext) -> Callable[[_Step], Awaitable[Any]]:
        async def perform(step: _Step) -> Any:
            if isinstance(step, _Write):
                return await self._write(ctx, step.event, **step.args)
            if isinstance(step, _UserCode):
                return await self._user(ctx, step)
            if isinstance(step, _Pause):
                return await asyncio.sleep(step.seconds)
            return await ctx._call(step)

        return perform

    async def _user(self, ctx: AsyncLeaseContext, step: _UserCode) -> object:
        """The handler (or a compensator) as its own task, so that a lost lease
        (``cancel_on_loss``) or the end of the grace period can cancel it.
        """

        async def body() -> object:
            result = step.fn(*step.args)
            return await result if inspect.isawaitable(result) else result

        with self._user_code(ctx):
            task = asyncio.create_task(body(), name=f"sagalease-handler-{ctx.task_id}")
            ctx._handler_task = task
            self._handler_tasks.add(task)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled() or not ctx._is_lost:
                    task.cancel()
                    raise  # the worker itself is cancelled
                raise ctx._lost_error() from None
            finally:
                ctx._handler_task = None
                self._handler_tasks.discard(task)

    async def _write(self, ctx: AsyncLeaseContext, event: str, **args: Any) -> _Written | str:
        """The holder write ``event`` under ``ctx``'s lease, repeated after an
        unknown outcome (see :meth:`Worker._write_steps`).
        """
        return await _drive(self._write_steps(ctx, event, args), self._performer(ctx))

    # ------------------------------------------------------------ the loop

    async def run(
        self,
        *,
        max_tasks: int | None = None,
        until: Callable[[], bool] | None = None,
        signals: bool = False,
    ) -> list[Outcome]:
        """Work tasks with ``concurrency`` handler tasks until :meth:`stop`,
        ``max_tasks`` outcomes, or ``until()`` returns true (asked whenever nothing
        is claimable); returns the outcomes. ``signals``: SIGTERM and SIGINT call
        :meth:`stop` while it runs (the loop's signal handlers, main thread only).
        On shutdown the leases of handlers still running after ``shutdown_grace``
        are released and their tasks cancelled.
        """
        loop = asyncio.get_running_loop()
        self._loop, self._wake = loop, asyncio.Event()
        if telemetry.AVAILABLE:  # its first use imports OpenTelemetry: not on the loop
            await loop.run_in_executor(None, _warm_telemetry)
        outcomes: list[Outcome] = []
        errors: list[BaseException] = []
        running: set[asyncio.Task[None]] = set()
        handled = []
        if signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
                handled.append(signum)

        async def work(task: TaskSaga) -> None:
            outcomes.append(await self._work(task))

        def ended(handling: asyncio.Task[None]) -> None:
            running.discard(handling)
            error = None if handling.cancelled() else handling.exception()
            if error is not None:  # a bug, not a handler's failure: the worker stops
                errors.append(error)
                self.stop()

        def start(task: TaskSaga) -> None:
            handling = asyncio.create_task(work(task), name=f"sagalease-task-{task.task_id}")
            running.add(handling)
            handling.add_done_callback(ended)

        try:
            await self._dispatch(running, start, max_tasks, until)
        finally:
            self.stop()
            for signum in handled:
                loop.remove_signal_handler(signum)
            if running:
                await asyncio.wait(set(running), timeout=self.shutdown_grace.total_seconds())
            await self._release_abandoned()
            if running:
                await asyncio.wait(set(running), timeout=self.ttl.total_seconds())
            for handling in set(running):
                handling.cancel()
            if running:
                await asyncio.wait(set(running))
        if errors:
            raise errors[0]
        return outcomes

    async def _dispatch(
        self,
        running: set[asyncio.Task[None]],
        start: Callable[[TaskSaga], None],
        max_tasks: int | None,
        until: Callable[[], bool] | None,
    ) -> None:
        """The one claimer: while slots are free (``concurrency`` less the tasks
        being worked), claim as many tasks as are free in one call
        (``claim_batch``, ``claim_next`` for one) and start each; when nothing is
        claimable, ask ``until`` and idle (one waiter per worker, however many
        slots are free); when every slot is taken, wait for one to end. Returns
        when stopped, or once ``max_tasks`` were claimed and have ended.
        """
        claimed = 0
        while not self._stop.is_set():
            free = self.concurrency - len(running)
            if max_tasks is not None:
                free = min(free, max_tasks - claimed)
                if free <= 0 and not running:
                    return
            if free <= 0:
                await self._until_one_ends(running)
                continue
            pause: float | None = None
            try:
                tasks = await self._claim(min(free, _CLAIM_BATCH))
            except StoreUnavailableError as exc:
                tasks, pause = [], self._claim_failed(exc)
            else:
                self._claim_worked()
            for task in tasks:
                claimed += 1
                start(task)
            if tasks:
                continue
            if until is not None and until():
                self.stop()
                return
            await self._idle(pause)

    async def _claim(self, limit: int) -> list[TaskSaga]:
        """Claim up to ``limit`` tasks of :attr:`queues` in one store call."""
        if limit == 1:
            with telemetry.claim("claim_next") as claim:
                task = await self.store.claim_next(
                    owner=self.owner, ttl=self.ttl, queues=self.queues
                )
                claim.claimed(task)
            return [] if task is None else [task]
        with telemetry.claim("claim_batch") as claim:
            tasks = await self.store.claim_batch(
                owner=self.owner, ttl=self.ttl, limit=limit, queues=self.queues
            )
            for task in tasks:
                claim.claimed(task)
        return tasks

    async def _until_one_ends(self, running: set[asyncio.Task[None]]) -> None:
        """Wait until one of ``running`` ends or the worker is stopped."""
        assert self._wake is not None
        stopped = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(running | {stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()

    async def _idle(self, pause: float | None) -> None:
        """Wait for work: the store's awaited wake-ups (an async store with a
        coroutine ``wait_for_work``, like the PostgreSQL one) when it offers them,
        else a sleep; at most ``poll_interval`` either way, no later than the next
        of this worker's own retries comes due, and :meth:`stop` ends it at once.
        ``pause`` (after a failed claim): a plain sleep of that long.
        """
        seconds = self._idle_seconds() if pause is None else pause
        waiting = getattr(self.store, "wait_for_work", None)
        if pause is not None or not inspect.iscoroutinefunction(waiting):
            await self._sleep(seconds)
            return
        assert self._wake is not None
        end = time.monotonic() + seconds
        woken = asyncio.ensure_future(
            waiting(queues=self.queues, timeout=timedelta(seconds=seconds))
        )
        stopped = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            woken.cancel()
        if woken.done() and not woken.cancelled() and woken.exception() is not None:
            await self._sleep(max(0.0, end - time.monotonic()))  # a closed store: as polling

    async def _sleep(self, seconds: float) -> None:
        """Idle: until ``seconds`` pass or :meth:`stop` is called."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _release_abandoned(self) -> None:
        """Release the leases of handlers that did not stop within the grace
        period, then cancel their tasks.
        """
        for ctx in self._abandoned():
            with contextlib.suppress(SagaLeaseError):
                await self._write(ctx, "release", delay=timedelta(0), reason=_ABANDONED_REASON)
            task = ctx._handler_task
            if task is not None:
                task.cancel("the worker shut down")
