"""Worker processes: SIGTERM releases the lease, a SIGKILLed worker's task is reclaimed
by another (the runtime in one process: tests/unit/test_worker_runtime.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagalease import (
    LeaseContext,
    SQLiteStore,
    TaskState,
    Worker,
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
