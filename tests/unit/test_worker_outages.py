"""The worker runtime under a store that goes away and comes back, in every phase:
claims back off and retry (one WARNING per outage, one INFO when it ends),
heartbeats are tried again until one works or the lease's known expiry passes (then
``ctx.lost``), and :func:`~sagalease.worker.run_worker` gives one line, never a
traceback, when the store cannot be opened. The finishing write's repeats are in
test_worker_runtime.py.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from datetime import timedelta
from typing import Any, cast

import pytest

from sagalease import (
    LeaseContext,
    MemoryStore,
    SagaStore,
    StoreUnavailableError,
    TaskState,
    Worker,
    core,
)
from sagalease.worker import LOGGER_NAME, _retry_pause, run_worker

GUARD = 60.0
"""Seconds after which a wait is a hang, not an answer (never a tested threshold)."""


class Away:
    """Wraps a memory store: the first ``failures[name]`` calls of each named method
    raise StoreUnavailableError (``None``: every call); the rest go through. Counts
    every call and every success of each.
    """

    def __init__(self, inner: MemoryStore, failures: dict[str, int | None]) -> None:
        self.inner = inner
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.passed: dict[str, int] = {}
        self.back = threading.Event()  # set by the first call that went through after a failure
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.failures:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] = n = self.calls.get(name, 0) + 1
                limit = self.failures[name]
            if limit is None or n <= limit:
                raise StoreUnavailableError(f"{name}: the database is restarting")
            result = attr(*args, **kwargs)
            with self._lock:
                self.passed[name] = self.passed.get(name, 0) + 1
            self.back.set()
            return result

        return call

    def store(self) -> SagaStore:
        return cast(SagaStore, self)


def test_claims_back_off_while_the_store_is_away_and_the_outage_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Five claims in a row meet StoreUnavailableError: the worker keeps claiming, the
    task is done once the store answers, and the outage is one WARNING and one INFO
    line on sagalease.worker (nothing else from the worker).
    """
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    inner = MemoryStore()
    inner.create("t")
    away = Away(inner, {"claim_next": 5})
    worker = Worker(
        away.store(),
        lambda _ctx: None,
        owner="w",
        poll_interval=timedelta(milliseconds=1),
        rng=random.Random(7),
    )
    outcomes = worker.run(max_tasks=1)
    assert [o.result for o in outcomes] == ["completed"]
    assert away.calls["claim_next"] == 6
    assert inner.get("t").state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert core.replay(inner.history("t")) == inner.get("t")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert lines[0][1].startswith("worker w: the store is unavailable")
    assert "claim_next: the database is restarting" in lines[0][1]
    assert lines[1][1].startswith("worker w: the store answers claims again after")
    assert lines[1][1].endswith("(5 failed claims)")


def test_the_claim_backoff_doubles_from_the_poll_interval_to_its_cap() -> None:
    """Each failed claim in a row doubles the pause (jittered within a fifth), from
    poll_interval up to 5 s; a claim that is answered starts again from the bottom.
    """
    worker = Worker(
        MemoryStore(),
        lambda _ctx: None,
        poll_interval=timedelta(milliseconds=10),
        rng=random.Random(1),
    )
    error = StoreUnavailableError("away")
    pauses = [worker._claim_failed(error) for _ in range(14)]
    for n, pause in enumerate(pauses, start=1):
        base = min(5.0, 0.01 * 2 ** (n - 1))
        assert 0.8 * base <= pause <= 1.2 * base
    worker._claim_worked()
    assert 0.008 <= worker._claim_failed(error) <= 0.012
    slow = Worker(MemoryStore(), lambda _ctx: None, poll_interval=timedelta(seconds=20))
    assert 16.0 <= slow._claim_failed(error) <= 24.0  # a poll interval above the cap is kept


def test_heartbeat_retry_pauses() -> None:
    """After a heartbeat that worked: the interval; after failures: 20 ms doubling, at
    most 1 s and never more than the interval.
    """
    assert _retry_pause(0, 10.0) == 10.0
    assert [_retry_pause(n, 10.0) for n in range(1, 9)] == [
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.0,
        1.0,
    ]
    assert _retry_pause(5, 0.1) == 0.1
    assert _retry_pause(10_000, 10.0) == 1.0


def test_heartbeats_are_retried_until_the_store_answers_and_the_lease_is_kept() -> None:
    """The first four heartbeats meet an unavailable store: the runtime tries again
    soon, the fifth extends the lease, the handler never sees the lease lost and the
    task completes.
    """
    inner = MemoryStore()
    inner.create("t")
    away = Away(inner, {"heartbeat": 4})
    seen: list[bool] = []

    def handler(ctx: LeaseContext) -> None:
        assert away.back.wait(GUARD), "no heartbeat got through"
        seen.append(ctx.lost)
        ctx.check()

    worker = Worker(
        away.store(),
        handler,
        owner="w",
        ttl=timedelta(seconds=30),
        heartbeat_interval=timedelta(milliseconds=20),
    )
    outcome = worker.run_one()
    assert outcome is not None
    assert outcome.result == "completed"
    assert seen == [False]
    assert away.calls["heartbeat"] >= 5
    events = [e.event for e in inner.history("t")]
    assert events[:2] == ["create", "acquire"]
    assert "heartbeat" in events
    assert events[-1] == "complete"


def test_heartbeats_keep_trying_until_the_lease_is_known_lost() -> None:
    """The store never answers a heartbeat: the runtime keeps trying until the last
    granted expiry passes by its own clock, then ctx.lost is set; the handler's
    checkpoint raises LeaseLostError and nothing more is written.
    """
    inner = MemoryStore()
    inner.create("t")
    away = Away(inner, {"heartbeat": None})
    reasons: list[str] = []

    def handler(ctx: LeaseContext) -> None:
        assert ctx.lost_event.wait(GUARD), "the lease was never flagged lost"
        reasons.append(ctx.lost_reason)
        ctx.check()

    worker = Worker(
        away.store(),
        handler,
        owner="w",
        ttl=timedelta(milliseconds=400),
        heartbeat_interval=timedelta(milliseconds=100),
    )
    outcome = worker.run_one()
    assert outcome is not None
    assert outcome.result == "lost"
    assert away.calls["heartbeat"] >= 2
    assert "expired" in reasons[0]
    assert [e.event for e in inner.history("t")] == ["create", "acquire"]


# ---------------------------------------------------------------- run_worker


def test_run_worker_that_cannot_open_its_store_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An opener that meets an unavailable store: status 3, one line on stderr."""

    def opener() -> SagaStore:
        raise StoreUnavailableError("cannot connect to postgresql://u@db:5432/app: refused")

    assert run_worker(opener, lambda _ctx: None) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "sagalease worker: error: cannot open the store: cannot connect to"
        " postgresql://u@db:5432/app: refused\n"
    )


def test_run_worker_with_a_bad_url_or_setting_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A URL no backend takes, or a Worker setting that cannot work: status 2."""
    assert run_worker("nosuch://x", lambda _ctx: None) == 2
    assert capsys.readouterr().err.startswith("sagalease worker: error: unsupported store scheme")
    assert run_worker("memory://", lambda _ctx: None, ttl=timedelta(0)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sagalease worker: error: ttl must be a positive timedelta")
    assert err.count("\n") == 1


def test_run_worker_runs_the_tasks_and_closes_the_store() -> None:
    """A working store: the worker runs until max_tasks, the store is closed, status 0;
    the signal handlers it installed are put back.
    """
    store = MemoryStore()
    store.create("a")
    store.create("b")
    closed: list[bool] = []
    original_close = store.close

    def close() -> None:
        closed.append(True)
        original_close()

    store.close = close  # type: ignore[method-assign]
    done: list[str] = []
    status = run_worker(
        lambda: store,
        lambda ctx: done.append(ctx.task_id),
        max_tasks=2,
        signals=False,
        owner="w",
        poll_interval=timedelta(milliseconds=5),
    )
    assert status == 0
    assert sorted(done) == ["a", "b"]
    assert closed == [True]
    before = signal.getsignal(signal.SIGTERM)
    assert run_worker("memory://", lambda _ctx: None, until=lambda: True) == 0
    assert signal.getsignal(signal.SIGTERM) is before
