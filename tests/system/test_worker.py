"""Worker processes: SIGTERM releases the lease, a SIGKILLed worker's task is reclaimed
by another; retries with backoff, Retry(after=), PermanentTaskError and finishing writes
whose answer was lost, on SQLite files and PostgreSQL (the runtime in one process:
tests/unit/test_worker_runtime.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from _fleet_workers import CuttingProxy, lost_answer_worker, message_kinds, retrying_worker
from conftest import POSTGRES_URL, require_postgres
from sagalease import (
    HistoryEntry,
    LeaseContext,
    RetryPolicy,
    SagaStore,
    SQLiteStore,
    TaskState,
    Worker,
    open_store,
)

GUARD = 60.0
"""Seconds after which a wait is a hang, not an answer (never a tested threshold)."""


def _noop(_ctx: LeaseContext) -> None:
    return None


def _wait_for(predicate: Any, what: str) -> None:
    end = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


# ---------------------------------------------------------------- real processes

_WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    from pathlib import Path
    from sagalease import SQLiteStore, Worker

    db, marker, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    store = SQLiteStore(db)

    def handler(ctx):
        marker.write_text(f"{ctx.owner} {ctx.token}")
        if mode == "checks":
            ctx.sleep(3600)        # a checkpoint: wakes on shutdown
        else:
            time.sleep(3600)       # never checks: the runtime releases after the grace period

    worker = Worker(store, handler, owner="proc-worker", ttl=timedelta(seconds=1),
                    shutdown_grace=timedelta(milliseconds=300))
    worker.install_signal_handlers()
    outcomes = worker.run()
    print(" ".join(o.result for o in outcomes))
    store.close()
    """
)


def _start_worker(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path, Path]:
    db = tmp_path / "s.db"
    SQLiteStore(db).close()
    store = SQLiteStore(db)
    store.create("job")
    store.close()
    script = tmp_path / "worker.py"
    script.write_text(_WORKER_SCRIPT)
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(marker), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: marker.exists() and marker.read_text(), "the worker to start its handler")
    return proc, db, marker


@pytest.mark.parametrize("mode", ["checks", "ignores"])
def test_sigterm_releases_the_lease(tmp_path: Path, mode: str) -> None:
    """SIGTERM to a worker process mid-handler: it releases its lease (at the handler's
    checkpoint, or after the grace period if the handler never checks) and exits 0.
    """
    proc, db, _marker = _start_worker(tmp_path, mode)
    try:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    store = SQLiteStore(db)
    try:
        task = store.get("job")
        assert task is not None
        assert task.state is TaskState.PENDING
        assert task.lease is None
        last = store.history("job")[-1]
        assert (last.event, last.owner, last.token) == ("release", "proc-worker", 1)
        if mode == "checks":
            assert out.split() == ["released"]
        # Another worker can take it at once (no waiting for an expiry).
        again = store.claim_next(owner="next", ttl=timedelta(seconds=30))
        assert again is not None
        assert again.token == 2
    finally:
        store.close()


def test_killed_workers_task_is_reclaimed_by_another(tmp_path: Path) -> None:
    """SIGKILL a worker mid-handler: once its lease expires another worker reclaims the task
    under the next token and completes it; the history names the replaced lease.
    """
    proc, db, _marker = _start_worker(tmp_path, "checks")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=GUARD)
    assert proc.returncode == -signal.SIGKILL
    store = SQLiteStore(db)
    try:
        other = Worker(store, _noop, owner="rescuer", poll_interval=timedelta(milliseconds=20))
        outcomes: list[Any] = []
        _wait_for(lambda: _collect(other.run_one(), outcomes), "the reclaim")
        assert outcomes[0].result == "completed"
        task = store.get("job")
        assert task is not None
        assert task.state is TaskState.COMPLETED
        assert (task.token, task.expirations) == (2, 1)
        history = store.history("job")
        acquires = [e for e in history if e.event == "acquire"]
        assert [(e.owner, e.token) for e in acquires] == [("proc-worker", 1), ("rescuer", 2)]
        assert "proc-worker" in (acquires[1].reason or "")
        assert (history[-1].event, history[-1].owner) == ("complete", "rescuer")
    finally:
        store.close()


def _collect(outcome: Any, into: list[Any]) -> bool:
    if outcome is None:
        return False
    into.append(outcome)
    return True


# ---------------------------------------------------------------- retries in processes

US = timedelta(microseconds=1)


def _with_query(url: str, **params: str) -> str:
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, SagaStore]]:
    """A store URL the worker processes open, and the parent's own store on it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        require_postgres()
        url = _with_query(POSTGRES_URL, schema=f"sagalease_test_{secrets.token_hex(6)}")
    store = open_store(url)
    try:
        yield url, store
    finally:
        store.close()
        if request.param == "postgres":
            _drop_schema(url)


def _drop_schema(url: str) -> None:
    import psycopg
    from psycopg import sql

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _run(target: Any, *args: Any) -> None:
    """Run ``target(*args)`` in a child process to its end; it must exit 0."""
    proc = multiprocessing.get_context("fork").Process(target=target, args=args)
    proc.start()
    proc.join(GUARD)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise AssertionError(f"{target.__name__} did not end within {GUARD} s")
    assert proc.exitcode == 0, proc.exitcode


POLICY = {"initial_us": 150_000, "factor": 2.0, "maximum_us": 10_000_000, "jitter": 0.1}


def _settings(**more: Any) -> dict[str, Any]:
    return {**POLICY, "seed": 42, **more}


def _report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _of(history: list[HistoryEntry], event: str) -> list[HistoryEntry]:
    return [e for e in history if e.event == event]


def test_transient_errors_are_retried_with_the_backoff_in_a_worker_process(
    shared: tuple[str, SagaStore], tmp_path: Path
) -> None:
    """A handler raising ConnectionError at its first two attempts, in a worker process:
    two releases whose delays (the history's delay_us) are the policy's delays for
    attempts 1 and 2 from the worker's seed, within its jitter; each next acquisition
    comes no earlier than the delay allowed; then the task completes.
    """
    url, store = shared
    store.create("t")
    out = tmp_path / "out.json"
    _run(retrying_worker, url, str(out), "transient", _settings(failures=2, tasks=3))
    report = _report(out)
    assert [o["result"] for o in report["outcomes"]] == ["retried", "retried", "completed"]
    history = store.history("t")
    assert [e.event for e in history] == [
        "create",
        *["acquire", "release"] * 2,
        "acquire",
        "complete",
    ]
    policy = RetryPolicy(
        initial=timedelta(microseconds=150_000), maximum=timedelta(seconds=10), jitter=0.1
    )
    rng = random.Random(42)
    expected = [policy.delay(1, rng), policy.delay(2, rng)]
    releases, acquires = _of(history, "release"), _of(history, "acquire")
    for attempt, (release, delay) in enumerate(zip(releases, expected, strict=True), start=1):
        base = 150_000 * 2 ** (attempt - 1)
        delay_us = release.args["delay_us"]
        assert delay_us == delay // US
        assert base * 0.9 <= delay_us <= base * 1.1
        assert release.reason is not None
        assert release.reason.startswith(f"retry {attempt}/5 in ")
        assert release.reason.endswith(f"ConnectionError: flaky {attempt}")
        assert acquires[attempt].at_us >= release.at_us + delay_us
        assert report["outcomes"][attempt - 1]["retry_in_us"] == delay_us
        assert report["outcomes"][attempt - 1]["detail"] == release.reason
    task = store.get("t")
    assert task is not None
    assert (task.state, task.attempts) == (TaskState.COMPLETED, 3)


def test_the_last_attempt_fails_and_the_worker_compensates(
    shared: tuple[str, SagaStore], tmp_path: Path
) -> None:
    """Errors at every attempt of 2, a compensation registered at the first: retried, then
    the last attempt fails the task into COMPENSATING, and the same worker process runs
    the compensator: COMPENSATED, the compensation applied once.
    """
    url, store = shared
    store.create("t", max_attempts=2)
    out = tmp_path / "out.json"
    settings = _settings(failures=99, compensate=True, tasks=3)
    _run(retrying_worker, url, str(out), "transient", settings)
    report = _report(out)
    assert [o["result"] for o in report["outcomes"]] == ["retried", "compensating", "compensated"]
    assert report["applied"] == ["t"]
    history = store.history("t")
    (fail,) = _of(history, "fail")
    assert (fail.to_state, fail.reason) == (TaskState.COMPENSATING, "ConnectionError: flaky 2")
    assert len(_of(history, "compensation_applied")) == 1
    assert store.get("t").state is TaskState.COMPENSATED  # type: ignore[union-attr]


def test_retry_after_is_honoured_exactly_in_a_worker_process(
    shared: tuple[str, SagaStore], tmp_path: Path
) -> None:
    """Raise Retry(after=123.457 ms) at every attempt of 3: two releases of exactly that
    delay (each next acquisition no earlier), then the last attempt fails the task.
    """
    url, store = shared
    store.create("t", max_attempts=3)
    out = tmp_path / "out.json"
    _run(retrying_worker, url, str(out), "retry", _settings(after_us=123_457, tasks=3))
    report = _report(out)
    assert [o["result"] for o in report["outcomes"]] == ["retried", "retried", "failed"]
    assert [o["retry_in_us"] for o in report["outcomes"]] == [123_457, 123_457, None]
    history = store.history("t")
    releases, acquires = _of(history, "release"), _of(history, "acquire")
    assert [r.args["delay_us"] for r in releases] == [123_457, 123_457]
    for release, following in zip(releases, acquires[1:], strict=True):
        assert following.at_us >= release.at_us + 123_457
    assert store.get("t").state is TaskState.FAILED  # type: ignore[union-attr]


def test_permanent_task_error_fails_at_once_in_a_worker_process(
    shared: tuple[str, SagaStore], tmp_path: Path
) -> None:
    """PermanentTaskError at attempt 1 of 5: failed at once, no release."""
    url, store = shared
    store.create("t", max_attempts=5)
    out = tmp_path / "out.json"
    _run(retrying_worker, url, str(out), "permanent", _settings(tasks=1))
    assert [o["result"] for o in _report(out)["outcomes"]] == ["failed"]
    assert [e.event for e in store.history("t")] == ["create", "acquire", "fail"]
    task = store.get("t")
    assert task is not None
    assert (task.state, task.attempts) == (TaskState.FAILED, 1)


@pytest.mark.parametrize("commits", [True, False], ids=["answer-lost", "before-write"])
@pytest.mark.parametrize(("event", "result"), [("complete", "completed"), ("fail", "failed")])
def test_a_finishing_write_whose_answer_is_lost_is_applied_once_in_a_worker_process(
    shared: tuple[str, SagaStore], tmp_path: Path, event: str, result: str, commits: bool
) -> None:
    """In the worker process a store wrapper makes the first complete (or fail) raise
    StoreUnavailableError after the real write committed, or before it wrote: the worker
    repeats it, reports the write's own outcome, and the history holds exactly one entry
    of it.
    """
    url, store = shared
    store.create("t")
    out = tmp_path / "out.json"
    _run(lost_answer_worker, url, str(out), event, commits)
    report = _report(out)
    assert [o["result"] for o in report["outcomes"]] == [result]
    assert report["calls"] == 2
    assert [e.event for e in store.history("t")] == ["create", "acquire", event]
    assert store.history("t")[-1].owner == "dropper"


@pytest.mark.parametrize("commits", [True, False], ids=["answer-lost", "before-write"])
def test_a_postgres_connection_cut_between_complete_and_its_answer(
    tmp_path: Path, commits: bool
) -> None:
    """A real cut on PostgreSQL: the worker process connects through a TCP proxy that
    closes its connection after the server committed complete and before the answer
    reached the client (or before the write reached the server): the worker repeats
    complete on a new connection, the outcome is "completed", and the history holds
    exactly one complete.
    """
    require_postgres()
    parts = urlsplit(POSTGRES_URL)
    # The history entry's arguments, a text parameter: of the worker's writes only
    # complete records a reason (claims record the ttl, heartbeats the ttl too).
    marker = b'"reason":'
    proxy = CuttingProxy(
        (parts.hostname or "127.0.0.1", parts.port or 5432), marker, commits=commits
    )
    schema = f"sagalease_test_{secrets.token_hex(6)}"
    direct = _with_query(POSTGRES_URL, schema=schema)
    proxied = _with_query(
        parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl(),
        schema=schema,
        sslmode="disable",
        gssencmode="disable",
    )
    store = open_store(direct)
    try:
        store.create("t")
        out = tmp_path / "out.json"
        _run(lost_answer_worker, proxied, str(out), "complete", None)
        report = _report(out)
        assert proxy.cut.is_set()
        if commits:  # the answer the client never got: the write's row, no error
            (held,) = proxy.held
            assert b"D" in message_kinds(held)
            assert b"E" not in message_kinds(held)
        else:
            assert proxy.held == []
        assert [o["result"] for o in report["outcomes"]] == ["completed"]
        history = store.history("t")
        assert [e.event for e in history] == ["create", "acquire", "complete"]
        assert (history[-1].owner, history[-1].token) == ("dropper", 1)
    finally:
        proxy.close()
        store.close()
        _drop_schema(direct)
