"""claim_batch and complete_many across real processes, on SQLite and PostgreSQL.

The single-process semantics (what repeated claim_next calls would take; all or
nothing) are pinned by the conformance suite for every backend; here worker
processes race with batches on one database.
"""

from __future__ import annotations

import json
import multiprocessing
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from _workers import batch_worker
from conftest import POSTGRES_URL, require_postgres
from sagalease import core, open_store

PROCESSES = 4
TASKS = 400


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each SQL backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'batches.db'}"
        return
    require_postgres()
    schema = f"sagalease_test_{secrets.token_hex(6)}"
    yield f"{POSTGRES_URL}?schema={schema}"
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_racing_batches_claim_and_complete_each_task_exactly_once(url: str, tmp_path: Path) -> None:
    """4 processes claiming batches of 7 and completing them at once: every task is
    claimed once (token 1) and completed once; histories replay to the records.
    """
    store = open_store(url)
    try:
        for i in range(TASKS):
            store.create(f"t{i:04d}")
    finally:
        store.close()
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    outs = [tmp_path / f"w{w}.json" for w in range(PROCESSES)]
    procs = [
        ctx.Process(target=batch_worker, args=(url, f"w{w}", str(outs[w]), start, 7))
        for w in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    claimed: list[tuple[str, int]] = []
    for out in outs:
        result = json.loads(out.read_text())
        assert result["errors"] == []
        claimed.extend((task_id, token) for task_id, token in result["claimed"])
    assert sorted(claimed) == [(f"t{i:04d}", 1) for i in range(TASKS)]
    store = open_store(url)
    try:
        for task in store.list_tasks(limit=TASKS):
            assert [e.event for e in store.history(task.task_id)] == [
                "create",
                "acquire",
                "complete",
            ]
            assert core.replay(store.history(task.task_id)) == task
    finally:
        store.close()
