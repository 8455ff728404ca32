"""AsyncWorker in real processes, on an SQLite file and on PostgreSQL (skipped
without a server; failed with ``SAGALEASE_REQUIRE_POSTGRES=1``): lease loss learned
before a late complete, SIGTERM releases, a killed process's task is reclaimed,
cancel-on-loss cancels, and asyncio's debug mode sees no slow callback (no blocking
call on the loop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import POSTGRES_URL, require_postgres
from sagalease import SagaStore, SQLiteStore, TaskState
from sagalease.stores.postgres._store import scratch_store

SCRIPT = Path(__file__).with_name("aio_worker_proc.py")


@pytest.fixture(params=["sqlite", "postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, SagaStore]]:
    """The URL a worker process opens, and the tests' own sync store over the same
    database: an SQLite file, or a fresh PostgreSQL schema (dropped after).
    """
    if request.param == "sqlite":
        db = tmp_path / "t.db"
        store: SagaStore = SQLiteStore(db)
        url = f"sqlite:///{db}"
    else:
        require_postgres()
        pg = scratch_store(POSTGRES_URL)
        store, url = pg, f"{POSTGRES_URL}?schema={pg.schema}"
    yield url, store
    store.close()


def start(db: str, mode: str) -> subprocess.Popen[str]:
    """Start a worker process over ``db`` (a path or a URL)."""
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), db, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_ready(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The process's first line: its handler runs."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    data: dict[str, Any] = json.loads(line)
    assert "ready" in data, data
    return data


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[list[dict[str, Any]], str]:
    """Wait for the process: its JSON lines and its stderr."""
    out, err = proc.communicate(timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.strip()], err


def kill_then_reclaim(proc: subprocess.Popen[str], store: Any, *, within: float) -> None:
    """SIGKILL ``proc`` (holding the only task's lease), then claim the task on
    ``store`` once the lease expired (within ``within`` seconds): token 2, one expiration.
    """
    proc.kill()
    proc.communicate(timeout=10)
    assert store.claim_next(owner="other", ttl=timedelta(seconds=5)) is None  # still live
    deadline = time.monotonic() + within
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        time.sleep(0.2)
        claimed = store.claim_next(owner="other", ttl=timedelta(seconds=5))
    assert claimed is not None
    assert claimed.token == 2
    assert claimed.expirations == 1


def test_a_stalled_process_learns_the_loss_before_a_late_complete(
    fleet: tuple[str, SagaStore],
) -> None:
    """Stopped past its TTL, then resumed: the handler's checkpoint raises, nothing is written."""
    db, store = fleet
    store.create("t1")
    proc = start(db, "stall")
    wait_ready(proc)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(2.0)  # past the 1.5 s TTL
    taken = store.acquire("t1", owner="rescuer", ttl=timedelta(seconds=30))
    assert taken.token == 2
    os.kill(proc.pid, signal.SIGCONT)
    lines, _err = finish(proc)
    outcomes = [line for line in lines if "result" in line]
    assert [o["result"] for o in outcomes] == ["lost"]
    assert [e.event for e in store.history("t1")] == ["create", "acquire", "acquire"]
    assert store.complete("t1", owner="rescuer", token=2).state is TaskState.COMPLETED


def test_sigterm_releases_the_lease(fleet: tuple[str, SagaStore]) -> None:
    """SIGTERM: the handler sees the shutdown at its next checkpoint, the lease is released."""
    db, store = fleet
    store.create("t1")
    proc = start(db, "checkpoints")
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    lines, err = finish(proc)
    assert proc.returncode == 0, err
    assert [line["result"] for line in lines if "result" in line] == ["released"]
    task = store.get("t1")
    assert task is not None
    assert task.state is TaskState.PENDING
    assert task.lease is None
    assert store.history("t1")[-1].reason == "shutdown"


def test_a_killed_process_task_is_reclaimed(fleet: tuple[str, SagaStore]) -> None:
    """SIGKILL mid-handler: once its lease (6 s) expired, another worker reclaims the task."""
    db, store = fleet
    store.create("t1")
    proc = start(db, "checkpoints")
    assert wait_ready(proc)["token"] == 1
    kill_then_reclaim(proc, store, within=20)


def test_cancel_on_loss_cancels_the_handler(fleet: tuple[str, SagaStore]) -> None:
    """A handler without checkpoints is cancelled once its heartbeat is refused."""
    db, store = fleet
    store.create("t1")
    proc = start(db, "cancel")
    wait_ready(proc)
    start_at = time.monotonic()
    store.quarantine("t1", reason="operator", by="test")
    lines, err = finish(proc)
    assert proc.returncode == 0, err
    assert {"cancelled": "t1", "lost": True} in lines
    assert [line["result"] for line in lines if "result" in line] == ["lost"]
    assert time.monotonic() - start_at < 5  # a heartbeat (every 0.5 s), not the 60 s sleep


def test_debug_mode_sees_no_slow_callback_while_the_store_works(
    fleet: tuple[str, SagaStore],
) -> None:
    """Forty tasks through ten handler tasks: asyncio's debug mode warns of no callback
    that took 100 ms or more (SQLite calls run on the store's thread; PostgreSQL's are
    awaited on the async pool, or run on threads).
    """
    db, store = fleet
    for i in range(40):
        store.create(f"t{i}")
    proc = start(db, "quick")
    lines, err = finish(proc, timeout=60)
    assert proc.returncode == 0, err
    results = [line["result"] for line in lines if "result" in line]
    assert results.count("completed") >= 30
    assert "Executing" not in err, err
    assert "took" not in err, err
