"""AsyncWorker on the async PostgreSQL store in a real process: an idle worker wakes
on NOTIFY (a create is picked up well before its 30 s poll interval). Skipped without
a server; failed with ``SAGALEASE_REQUIRE_POSTGRES=1``. The process tests both stores
share are in test_async_worker_processes.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from test_async_worker_processes import finish, start

from conftest import POSTGRES_URL, require_postgres
from sagalease.stores.postgres import PostgresStore
from sagalease.stores.postgres._store import scratch_store


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    """A sync store on a fresh schema (dropped after): the tests' side of the fleet."""
    require_postgres()
    opened = scratch_store(POSTGRES_URL)
    yield opened
    opened.close()


def url(store: PostgresStore) -> str:
    """The URL the worker process opens: the store's database and schema."""
    return f"{POSTGRES_URL}?schema={store.schema}"


def test_an_idle_worker_wakes_on_notify(store: PostgresStore) -> None:
    """With poll_interval 30 s and nothing to claim, the worker awaits the store's
    wake-up: a task created by another process is completed within seconds.
    """
    proc = start(url(store), "idle")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line) == {"idle": True}, line
    time.sleep(2.0)  # its first claim found nothing; it now awaits a notification
    created = time.time()
    store.create("t1")
    lines, err = finish(proc, timeout=25)
    assert proc.returncode == 0, err
    outcomes = [line for line in lines if "result" in line]
    assert [o["result"] for o in outcomes] == ["completed"], (lines, err)
    picked_up_after = outcomes[0]["at"] - created
    print(f"picked up {picked_up_after:.3f} s after the create (poll_interval 30 s)")
    assert picked_up_after < 5.0, picked_up_after
