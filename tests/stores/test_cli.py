"""The `sagalease` console script: its entry point ``sagalease.cli.main`` driven in this
process with stdout, stderr, ``$SAGALEASE_DB`` and the working directory as the script
would have them, and as a real subprocess where the process itself matters (the
entry point, imports, a lock held by another process).
"""

from __future__ import annotations

import fcntl
import importlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sagalease import Compensation, SQLiteStore, TaskSaga, TaskState
from sagalease import cli as cli_module
from sagalease.verification.spec import render_json, render_markdown

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(seconds=30)


def sagalease(
    *args: str, db: str | None = None, cwd: Path | None = None, env_db: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script's entry point ``sagalease.cli.main(ARGS)`` in this process:
    ``$SAGALEASE_DB`` only when ``env_db`` is given, in ``cwd``, stdout and stderr captured.
    """
    argv = ([] if db is None else ["--db", db]) + list(args)
    out, err = io.StringIO(), io.StringIO()
    saved_db, saved_cwd = os.environ.pop("SAGALEASE_DB", None), os.getcwd()
    try:
        if env_db is not None:
            os.environ["SAGALEASE_DB"] = env_db
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_module.main(argv)
    finally:
        os.chdir(saved_cwd)
        os.environ.pop("SAGALEASE_DB", None)
        if saved_db is not None:
            os.environ["SAGALEASE_DB"] = saved_db
    return subprocess.CompletedProcess(["sagalease", *argv], code, out.getvalue(), err.getvalue())


def sagalease_process(
    *args: str, db: str | None = None, cwd: Path | None = None, env_db: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m sagalease.cli ARGS` (the console script's entry point) as a process."""
    env = {k: v for k, v in os.environ.items() if k != "SAGALEASE_DB"}
    if env_db is not None:
        env["SAGALEASE_DB"] = env_db
    argv = [sys.executable, "-m", "sagalease.cli"]
    if db is not None:
        argv += ["--db", db]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, check=False, env=env, cwd=cwd
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the documented failure shape: exit ``code``, one line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sagalease: error: ")
    return lines[0]


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[tuple[str, SQLiteStore]]:
    """A store with tasks in several states (times in the past, so leases are stale now)."""
    path = tmp_path / "ops.db"
    store = SQLiteStore(path)
    store.create(
        "pending-1", saga_id="s1", metadata={"order": 1}, queue="urgent", priority=5, now=T0
    )
    store.create("done-1", saga_id="s1", now=T0)
    t = store.acquire("done-1", owner="w1", ttl=TTL, now=T0)
    store.complete("done-1", owner="w1", token=t.token, now=T0 + timedelta(seconds=1))
    store.annotate("done-1", text="checked by hand", by="ops", now=T0 + timedelta(seconds=2))
    store.create("comp-1", saga_id="s2", compensations=[Compensation("refund", "o-1")], now=T0)
    t = store.acquire("comp-1", owner="w2", ttl=TTL, now=T0)
    store.fail("comp-1", owner="w2", token=t.token, reason="declined", now=T0)
    store.create("stale-1", now=T0)
    store.acquire("stale-1", owner="w3", ttl=TTL, now=T0)
    try:
        yield f"sqlite:///{path}", store
    finally:
        store.close()


def _lib_json(task: TaskSaga) -> dict[str, Any]:
    """The library's view of a task, in the CLI's JSON shape (built independently)."""
    lease = task.lease
    return {
        "task_id": task.task_id,
        "saga_id": task.saga_id,
        "queue": task.queue,
        "priority": task.priority,
        "requeued_from": task.requeued_from,
        "state": task.state.value,
        "metadata": task.metadata,
        "compensations": [{"index": i, **c.to_json()} for i, c in enumerate(task.compensations)],
        "pending_compensations": [
            i for i, c in enumerate(task.compensations) if c.status.value == "pending"
        ],
        "lease": None
        if lease is None
        else {
            "owner": lease.owner,
            "token": lease.token,
            "acquired_at": lease.acquired_at.isoformat(),
            "expires_at": lease.expires_at.isoformat(),
            "heartbeat_at": lease.heartbeat_at.isoformat(),
        },
        "token": task.token,
        "attempts": task.attempts,
        "expirations": task.expirations,
        "max_attempts": task.max_attempts,
        "available_at": task.available_at.isoformat(),
        "deadline": None if task.deadline is None else task.deadline.isoformat(),
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
        "terminal_reason": task.terminal_reason,
        "notes": [{"at": n.at.isoformat(), "author": n.author, "text": n.text} for n in task.notes],
        "version": task.version,
    }


# ---------------------------------------------------------------- commands


def test_import_sagalease_does_not_import_click_or_rich() -> None:
    """Click and rich belong to the CLI: `import sagalease` loads neither."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, sagalease; print('click' in sys.modules, 'rich' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]


def test_init_creates_the_default_store_in_the_current_directory(tmp_path: Path) -> None:
    """`sagalease init` with no --db creates ./sagalease.db; a second init finds it (a real
    process: `python -m sagalease.cli` in that directory).
    """
    first = sagalease_process("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "sagalease.db").is_file()
    assert "created" in first.stdout
    second = sagalease_process("init", "--json", cwd=tmp_path)
    assert second.returncode == 0
    assert json.loads(second.stdout) == {
        "db": "sqlite:///sagalease.db",
        "created": False,
        "tasks": 0,
    }


def test_db_from_environment(populated: tuple[str, SQLiteStore]) -> None:
    """$SAGALEASE_DB names the store when --db is absent."""
    url, store = populated
    out = sagalease("stats", "--json", env_db=url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == sum(store.counts().values())


def test_ls_json_agrees_with_the_library(populated: tuple[str, SQLiteStore]) -> None:
    """`ls --json` prints exactly the records of store.list_tasks, in order."""
    url, store = populated
    out = sagalease("ls", "--json", db=url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [_lib_json(t) for t in store.list_tasks()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state", "compensating"], ["comp-1"]),
        (["--saga", "s1"], ["pending-1", "done-1"]),
        (["--stale"], ["stale-1"]),
        (["--limit", "2"], ["pending-1", "done-1"]),
        (["--after", "done-1"], ["comp-1", "stale-1"]),
        (["--queue", "urgent"], ["pending-1"]),
        (["--queue", "default", "--saga", "s1"], ["done-1"]),
        (["--queue", "nowhere"], []),
        (["--state", "running", "--state", "compensating"], ["comp-1", "stale-1"]),
        (["--state", "pending,running"], ["pending-1", "stale-1"]),
        (["--state", "pending, completed", "--state", "pending"], ["pending-1", "done-1"]),
        (["--state", "pending,running", "--queue", "default"], ["stale-1"]),
        (["--stale", "--queue", "urgent"], []),
        (["--stale", "--state", "running,pending"], ["stale-1"]),
        (["--newest-first"], ["stale-1", "comp-1", "done-1", "pending-1"]),
        (["--newest-first", "--limit", "2"], ["stale-1", "comp-1"]),
        (["--newest-first", "--after", "comp-1"], ["done-1", "pending-1"]),
        (["--newest-first", "--state", "pending,running"], ["stale-1", "pending-1"]),
    ],
)
def test_ls_filters(
    populated: tuple[str, SQLiteStore], args: list[str], expected: list[str]
) -> None:
    """`ls` filters by states (repeated or comma-separated), queue, saga and staleness and
    pages with --limit/--after like the library, oldest or newest first.
    """
    url, store = populated
    out = sagalease("ls", *args, "--json", db=url)
    assert out.returncode == 0, out.stderr
    assert [t["task_id"] for t in json.loads(out.stdout)] == expected
    if args == ["--stale"]:
        assert expected == [t.task_id for t in store.list_stale()]


def test_ls_multi_state_is_one_listing_of_the_library(populated: tuple[str, SQLiteStore]) -> None:
    """`ls --state running,compensating --queue default` is store.list_tasks(state={...},
    queue=...) record for record.
    """
    url, store = populated
    out = sagalease("ls", "--state", "running,compensating", "--queue", "default", "--json", db=url)
    assert out.returncode == 0, out.stderr
    wanted = {TaskState.RUNNING, TaskState.COMPENSATING}
    assert json.loads(out.stdout) == [
        _lib_json(t) for t in store.list_tasks(state=wanted, queue="default")
    ]


def test_ls_newest_first_names_the_next_page_in_that_order(
    populated: tuple[str, SQLiteStore],
) -> None:
    """`ls --newest-first --limit 2` prints the two newest tasks and the next page's
    options, --newest-first included.
    """
    url, _store = populated
    out = sagalease("ls", "--newest-first", "--limit", "2", db=url)
    assert out.returncode == 0, out.stderr
    assert "more: --newest-first --after comp-1" in out.stdout
    assert "stale-1" in out.stdout
    assert "pending-1" not in out.stdout


def test_ls_table_for_people(populated: tuple[str, SQLiteStore]) -> None:
    """`ls` without --json prints a table naming every task and its state."""
    url, store = populated
    out = sagalease("ls", db=url)
    assert out.returncode == 0, out.stderr
    for task in store.list_tasks():
        assert task.task_id in out.stdout
    assert "compensating" in out.stdout
    header = out.stdout.splitlines()[2]
    assert ("queue" in header, "priority" in header) == (True, True)
    urgent = next(line for line in out.stdout.splitlines() if "pending-1" in line)
    assert ("urgent" in urgent.split(), "5" in urgent.split()) == (True, True)


def test_show_json_agrees_with_the_library(populated: tuple[str, SQLiteStore]) -> None:
    """`show --json` prints store.get and store.history of the task."""
    url, store = populated
    out = sagalease("show", "comp-1", "--json", db=url)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    task = store.get("comp-1")
    assert task is not None
    assert data["task"] == _lib_json(task)
    history = store.history("comp-1")
    assert [
        (e["seq"], e["event"], e["from_state"], e["to_state"], e["at"], e["owner"], e["token"])
        for e in data["history"]
    ] == [
        (
            e.seq,
            e.event,
            None if e.from_state is None else e.from_state.value,
            e.to_state.value,
            e.at.isoformat(),
            e.owner,
            e.token,
        )
        for e in history
    ]
    assert [e["args"] for e in data["history"]] == [e.args for e in history]


def test_show_for_people_lists_compensations_notes_and_history(
    populated: tuple[str, SQLiteStore],
) -> None:
    """`show` prints the record, its compensations, its notes and its history."""
    url, _store = populated
    out = sagalease("show", "done-1", db=url)
    assert out.returncode == 0, out.stderr
    for text in ("done-1", "completed", "checked by hand", "acquire", "complete", "annotate"):
        assert text in out.stdout
    urgent = sagalease("show", "pending-1", db=url)
    assert [line.split() for line in urgent.stdout.splitlines()[:6]][2:5] == [
        ["queue", "urgent"],
        ["priority", "5"],
        ["requeued", "from", "-"],
    ]
    comp = sagalease("show", "comp-1", db=url)
    assert "refund" in comp.stdout
    assert "pending" in comp.stdout


def test_stale_lists_what_list_stale_returns(populated: tuple[str, SQLiteStore]) -> None:
    """`stale --json` is store.list_stale()."""
    url, store = populated
    out = sagalease("stale", "--json", db=url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [_lib_json(t) for t in store.list_stale()]


def test_reap_drops_the_expired_lease(populated: tuple[str, SQLiteStore]) -> None:
    """`reap --json` reaps the stale task (RUNNING → PENDING) and prints it."""
    url, store = populated
    out = sagalease("reap", "--json", db=url)
    assert out.returncode == 0, out.stderr
    assert [t["task_id"] for t in json.loads(out.stdout)] == ["stale-1"]
    task = store.get("stale-1")
    assert task is not None
    assert (task.state, task.lease, task.expirations) == (TaskState.PENDING, None, 1)
    again = sagalease("reap", db=url)
    assert again.returncode == 0
    assert "reaped 0 task(s)" in again.stdout


def test_quarantine_and_refusal_of_a_terminal_task(populated: tuple[str, SQLiteStore]) -> None:
    """`quarantine` moves a live task to QUARANTINED; on a terminal one: exit 2, nothing changes."""
    url, store = populated
    out = sagalease("quarantine", "pending-1", "--reason", "bad data", "--by", "alice", db=url)
    assert out.returncode == 0, out.stderr
    task = store.get("pending-1")
    assert task is not None
    assert task.state is TaskState.QUARANTINED
    assert task.terminal_reason == "bad data"
    assert store.history("pending-1")[-1].owner == "alice"
    before = store.history("done-1")
    refused = sagalease("quarantine", "done-1", "--reason", "x", db=url)
    line = one_line_error(refused, 2)
    assert "done-1" in line
    assert store.history("done-1") == before


def test_annotate_appends_a_note_even_to_terminal_tasks(populated: tuple[str, SQLiteStore]) -> None:
    """`annotate` adds one note (terminal task included) and changes nothing else."""
    url, store = populated
    before = store.get("done-1")
    out = sagalease("annotate", "done-1", "--text", "refund confirmed", "--json", db=url)
    assert out.returncode == 0, out.stderr
    after = store.get("done-1")
    assert before is not None
    assert after is not None
    assert json.loads(out.stdout) == _lib_json(after)
    assert [n.text for n in after.notes] == ["checked by hand", "refund confirmed"]
    assert (after.state, after.updated_at) == (before.state, before.updated_at)


def test_stats_json_matches_counts(populated: tuple[str, SQLiteStore]) -> None:
    """`stats --json` is store.counts() with the total and the stale count; the table too."""
    url, store = populated
    out = sagalease("stats", "--json", db=url)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counts"] == {s.value: n for s, n in store.counts().items()}
    assert data["total"] == 4
    assert data["stale"] == 1
    assert data["queue"] is None
    table = sagalease("stats", db=url)
    assert table.returncode == 0
    assert "4 task(s), 1 stale" in table.stdout


@pytest.mark.parametrize("queue", ["urgent", "default", "nowhere"])
def test_stats_of_one_queue(populated: tuple[str, SQLiteStore], queue: str) -> None:
    """`stats --queue Q` is store.counts(queue=Q), with the stale leases of that queue."""
    url, store = populated
    out = sagalease("stats", "--queue", queue, "--json", db=url)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    counts = store.counts(queue=queue)
    assert data["counts"] == {s.value: n for s, n in counts.items()}
    assert (data["queue"], data["total"]) == (queue, sum(counts.values()))
    assert data["stale"] == sum(t.queue == queue for t in store.list_stale())
    table = sagalease("stats", "--queue", queue, db=url)
    assert f"{sum(counts.values())} task(s), {data['stale']} stale in queue {queue}" in table.stdout


def _failed(store: SQLiteStore, task_id: str, **create: Any) -> None:
    store.create(task_id, now=T0, **create)
    lease = store.acquire(task_id, owner="w9", ttl=TTL, now=T0)
    store.fail(task_id, owner="w9", token=lease.token, reason="declined", now=T0)


def _snapshot(store: SQLiteStore) -> dict[str, tuple[TaskSaga, int]]:
    return {t.task_id: (t, len(store.history(t.task_id))) for t in store.list_tasks(limit=10_000)}


def test_requeue_makes_a_pending_copy_and_notes_the_original(
    populated: tuple[str, SQLiteStore],
) -> None:
    """`requeue TASK --by alice --json` prints the new PENDING copy (queue, priority, saga
    and metadata of the original, `requeued_from` it); the original stays FAILED with a
    note by alice naming the copy.
    """
    url, store = populated
    _failed(store, "f-1", saga_id="s3", metadata={"n": 1}, queue="bulk", priority=-3)
    out = sagalease("requeue", "f-1", "--by", "alice", "--json", db=url)
    assert out.returncode == 0, out.stderr
    copy = store.get("f-1~r1")
    original = store.get("f-1")
    assert copy is not None
    assert original is not None
    assert json.loads(out.stdout) == _lib_json(copy)
    assert (copy.state, copy.queue, copy.priority, copy.saga_id) == (
        TaskState.PENDING,
        "bulk",
        -3,
        "s3",
    )
    assert (copy.metadata, copy.requeued_from) == ({"n": 1}, "f-1")
    assert original.state is TaskState.FAILED
    assert [(n.author, n.text) for n in original.notes] == [("alice", "requeued as 'f-1~r1'")]


def test_requeue_as_names_the_copy_and_prints_one_line(populated: tuple[str, SQLiteStore]) -> None:
    """`requeue TASK --as NEW_ID` (a quarantined task): exit 0, one line naming the copy."""
    url, store = populated
    store.quarantine("pending-1", reason="bad data", by="ops", now=T0)
    out = sagalease("requeue", "pending-1", "--as", "pending-1-again", db=url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "pending-1: requeued as pending-1-again\n"
    copy = store.get("pending-1-again")
    assert copy is not None
    assert (copy.queue, copy.priority, copy.requeued_from) == ("urgent", 5, "pending-1")
    shown = sagalease("show", "pending-1-again", db=url)
    assert ["requeued", "from", "pending-1"] in [line.split() for line in shown.stdout.splitlines()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pending-1"], "in state pending: requeue takes a failed or quarantined task only"),
        (["done-1"], "in state completed"),
        (["comp-1"], "in state compensating"),
        (["f-1", "--as", "done-1"], "done-1"),
        (["f-1", "--as", ""], "new_id"),
        (["f-1", "--by", ""], "by"),
    ],
)
def test_requeue_refusals_are_one_line_and_change_nothing(
    populated: tuple[str, SQLiteStore], args: list[str], expected: str
) -> None:
    """A task that did not fail, an id in use, a bad argument: exit 2, one line saying
    why, no task and no note written.
    """
    url, store = populated
    _failed(store, "f-1")
    before = _snapshot(store)
    line = one_line_error(sagalease("requeue", *args, db=url), 2)
    assert expected in line
    assert _snapshot(store) == before


def test_requeue_twice_is_refused_naming_the_first_copy(
    populated: tuple[str, SQLiteStore],
) -> None:
    """A second `requeue TASK`: exit 2, one line naming the first copy; nothing written."""
    url, store = populated
    _failed(store, "f-1")
    assert sagalease("requeue", "f-1", db=url).returncode == 0
    before = _snapshot(store)
    line = one_line_error(sagalease("requeue", "f-1", db=url), 2)
    assert "already requeued as 'f-1~r1'" in line
    assert _snapshot(store) == before


def test_verify_passes_then_fails_on_a_tampered_history(
    populated: tuple[str, SQLiteStore], tmp_path: Path
) -> None:
    """`verify` exits 0 on an honest store and 1 with a VIOLATION once a history token is forged."""
    url, _store = populated
    ok = sagalease("verify", db=url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    with sqlite3.connect(tmp_path / "ops.db") as conn:
        conn.execute("UPDATE history SET token = 7 WHERE task_id = 'done-1' AND event = 'complete'")
    bad = sagalease("verify", "--json", db=url)
    assert bad.returncode == 1
    data = json.loads(bad.stdout)
    assert data["result"] == "FAIL"
    assert any(p.startswith("done-1:") for p in data["problems"])


def test_verify_all_ended_requires_terminal_tasks(populated: tuple[str, SQLiteStore]) -> None:
    """`verify --all-ended` fails while tasks are still open."""
    url, _store = populated
    out = sagalease("verify", "--all-ended", db=url)
    assert out.returncode == 1
    assert "not terminal" in out.stdout


def test_spec_command_prints_the_spec() -> None:
    """`sagalease spec` prints the generated spec and exits 0."""
    out = sagalease("spec")
    assert out.returncode == 0, out.stderr
    assert out.stdout == render_markdown()


def test_spec_json_still_works() -> None:
    """`spec --json` prints specs/lifecycle.json as before the move to click."""
    out = sagalease("spec", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout == render_json()


def test_check_bad_model_is_one_line_exit_2() -> None:
    """`check` with a model that does not exist: exit 2, one line."""
    one_line_error(sagalease("check", "no-such-model"), 2)


def test_conformance_passes_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """`conformance ARGS...` calls sagalease.conformance.main with ARGS and returns its status."""
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 1

    fake = types.SimpleNamespace(main=fake_main)
    real_import = importlib.import_module

    def fake_import(name: str) -> Any:
        return fake if name == "sagalease.conformance" else real_import(name)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    args = ["pkg.mod:factory", "--examples", "3", "--help"]
    assert cli_module.main(["conformance", *args]) == 1
    assert seen == [args]


def test_conformance_unavailable_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without an importable suite, `conformance` prints one error line and exits 2."""

    def missing(name: str) -> Any:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", missing)
    assert cli_module.main(["conformance", "x:y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "conformance suite is not available" in err[0]


def test_conformance_subprocess_bad_factory_fails_cleanly() -> None:
    """`sagalease conformance` runs the real suite: a factory that does not exist is exit 2."""
    out = sagalease_process("conformance", "no_such_module_xyz:factory")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args",
    [
        ["show", "nope"],
        ["quarantine", "nope", "--reason", "r"],
        ["annotate", "nope", "--text", "t"],
        ["requeue", "nope"],
    ],
)
def test_unknown_task_is_exit_2(populated: tuple[str, SQLiteStore], args: list[str]) -> None:
    """An unknown task id: one line naming it, exit 2, nothing created."""
    url, store = populated
    line = one_line_error(sagalease(*args, db=url), 2)
    assert "'nope'" in line
    assert store.get("nope") is None


@pytest.mark.parametrize("url", ["nonsense", "ftp://host/x", "sqlite://relative.db", "sqlite:///"])
def test_bad_url_is_exit_2(url: str, tmp_path: Path) -> None:
    """A store URL that cannot be parsed: one line, exit 2, no file created."""
    one_line_error(sagalease("ls", db=url, cwd=tmp_path), 2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["init", "ls", "stats"])
def test_missing_directory_is_exit_3(tmp_path: Path, command: str) -> None:
    """A database in a directory that does not exist: one line, exit 3, nothing created."""
    url = f"sqlite:///{tmp_path}/no/such/dir/s.db"
    line = one_line_error(sagalease(command, db=url), 3)
    assert "does not exist" in line
    assert not (tmp_path / "no").exists()


def test_missing_database_is_exit_3_and_not_created(tmp_path: Path) -> None:
    """Any command but init on a missing database: exit 3 pointing at init; no file appears."""
    line = one_line_error(sagalease("ls", db=f"sqlite:///{tmp_path}/absent.db"), 3)
    assert "init" in line
    assert list(tmp_path.iterdir()) == []


def test_file_that_is_not_a_database_is_exit_3(tmp_path: Path) -> None:
    """A file that is not SQLite: exit 3, one line, the file untouched."""
    path = tmp_path / "junk.db"
    content = b"this is not a database" * 100
    path.write_bytes(content)
    one_line_error(sagalease("ls", db=f"sqlite:///{path}"), 3)
    assert path.read_bytes() == content


def test_foreign_sqlite_database_is_exit_3(tmp_path: Path) -> None:
    """An SQLite file that is not a sagalease store: exit 3, one line, left as it was."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    line = one_line_error(sagalease("stats", db=f"sqlite:///{path}"), 3)
    assert "not a sagalease store" in line
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert names == ["customers"]


def test_newer_schema_is_exit_3(tmp_path: Path) -> None:
    """A store written by a newer sagalease: exit 3 naming the version, the file unchanged."""
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    line = one_line_error(sagalease("ls", db=f"sqlite:///{path}"), 3)
    assert "999" in line
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 999
    conn.close()


def test_locked_database_is_exit_3(populated: tuple[str, SQLiteStore], tmp_path: Path) -> None:
    """A database whose writer lock another process holds past --timeout: exit 3, one line."""
    url, store = populated
    before = store.history("pending-1")
    fd = os.open(tmp_path / "ops.db.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = sagalease_process(
            "--timeout", "0.2", "quarantine", "pending-1", "--reason", "r", db=url
        )
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    line = one_line_error(out, 3)
    assert "lock" in line
    assert store.history("pending-1") == before


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["ls", "--state", "sleeping"],
        ["ls", "--state", "running,sleeping"],
        ["ls", "--state", ","],
        ["requeue"],
        ["ls", "--limit", "0"],
        ["quarantine", "t"],
        ["annotate", "t"],
        ["show"],
        ["simulate", "--workers", "0"],
    ],
)
def test_bad_usage_is_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    """Unknown commands, bad option values and missing arguments: one line, exit 2."""
    one_line_error(sagalease(*args, db=f"sqlite:///{tmp_path}/s.db"), 2)


@pytest.mark.parametrize(
    "args", [["ls", "--queue", ""], ["ls", "--queue", "x" * 201], ["stats", "--queue", "a\tb"]]
)
def test_a_malformed_queue_is_one_line_exit_2(
    populated: tuple[str, SQLiteStore], args: list[str]
) -> None:
    """A queue name that breaks the id rules: exit 2, one line naming `queue`."""
    url, _store = populated
    assert "queue" in one_line_error(sagalease(*args, db=url), 2)


def test_simulate_refuses_a_non_sqlite_store(tmp_path: Path) -> None:
    """`simulate --db memory://` cannot share a store with worker processes: exit 2."""
    line = one_line_error(sagalease("simulate", "--db", "memory://", cwd=tmp_path), 2)
    assert "sqlite" in line
