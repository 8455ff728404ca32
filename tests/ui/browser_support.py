"""Real-browser support for the operator view's tests: the system Chromium driven by
Playwright, a ``sagalease ui`` server run as a subprocess, and the screenshot script.

The browser is Debian's ``chromium`` package (``$SAGALEASE_BROWSER``, default: the
``chromium`` on ``PATH``, else ``/usr/bin/chromium``); Playwright's own browser
download is never used. Without a browser the tests skip, with the reason;
``SAGALEASE_REQUIRE_BROWSER=1`` (CI) makes them fail instead.

The committed screenshots come from this file run as a script::

    uv run python tests/ui/browser_support.py --screenshots docs/
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

BROWSER_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Chromium's switches here: headless, no sandbox (containers), and nothing that
phones home."""

START_GUARD_S = 60.0
"""How long a server may take to answer ``/healthz`` before the start is a failure
(a guard against hangs, not a timing assertion)."""

UI_EXTRA_MODULES = ("starlette", "jinja2", "uvicorn", "multipart", "playwright")


def browser_executable() -> str | None:
    """The Chromium to drive: ``$SAGALEASE_BROWSER``, else ``chromium`` on ``PATH``,
    else ``/usr/bin/chromium``; ``None`` when none of them exists.
    """
    configured = os.environ.get("SAGALEASE_BROWSER")
    if configured:
        return configured if Path(configured).exists() else None
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here (``None``: they can)."""
    missing = [m for m in UI_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"missing Python packages {', '.join(missing)} (the dev group / [ui] extra)"
    if browser_executable() is None:
        where = os.environ.get("SAGALEASE_BROWSER") or "chromium on PATH or /usr/bin/chromium"
        return f"no Chromium ({where}); install Debian's package: apt-get install chromium"
    return None


def require_browser() -> None:
    """Skip the calling test when no browser can run; fail instead when
    ``SAGALEASE_REQUIRE_BROWSER=1`` (CI).
    """
    problem = browser_unavailable()
    if problem is None:
        return
    if os.environ.get("SAGALEASE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required (SAGALEASE_REQUIRE_BROWSER=1): {problem}")
    pytest.skip(f"no browser: {problem}")


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """The system Chromium, headless, under Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    executable = browser_executable()
    assert executable is not None, browser_unavailable()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=list(BROWSER_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def sagalease_command() -> list[str]:
    """How to run the CLI of this environment (its console script, else ``-m``)."""
    script = Path(sys.executable).with_name("sagalease")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "sagalease.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class UIServer:
    """A ``sagalease ui`` subprocess on 127.0.0.1 and a free port."""

    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (which starts with ``/``)."""
        return self.base_url + path

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def ui_server(
    db_url: str, *, allow_actions: bool = False, log_dir: Path, cwd: Path | None = None
) -> Iterator[UIServer]:
    """Run ``sagalease ui --db DB_URL --port P [--allow-actions]`` (in ``cwd``) until
    the block ends; yields once ``/healthz`` answers 200. A server that exits or does
    not answer within :data:`START_GUARD_S` fails with its output.
    """
    for attempt in range(3):  # another process may take the free port first
        port = free_port()
        log = log_dir / f"ui-{port}.log"
        command = [*sagalease_command(), "ui", "--db", db_url, "--port", str(port)]
        if allow_actions:
            command.append("--allow-actions")
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
            )
        server = UIServer(process, port, log)
        try:
            deadline = time.monotonic() + START_GUARD_S
            while process.poll() is None and time.monotonic() < deadline:
                if _healthy(server.url("/healthz")):
                    break
                time.sleep(0.1)
            else:
                code = process.poll()
                taken = code is not None and "address already in use" in server.output().lower()
                if taken and attempt < 2:
                    continue
                raise AssertionError(
                    f"sagalease ui did not answer /healthz (exit status {code}): "
                    f"{' '.join(command)}\n{server.output()}"
                )
            yield server
            return
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def simulate(db: Path, *, workers: int, tasks: int, seed: int, cwd: Path | None = None) -> None:
    """Run ``sagalease simulate`` (the README's main job) into the SQLite file ``db``
    (relative: to ``cwd``).
    """
    command = [
        *sagalease_command(),
        "simulate",
        "--db",
        f"sqlite:///{db}",
        "--workers",
        str(workers),
        "--tasks",
        str(tasks),
        "--seed",
        str(seed),
        "--json",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=cwd
    )
    assert done.returncode == 0, f"{' '.join(command)}: {done.returncode}\n{done.stderr}"
    assert json.loads(done.stdout), done.stdout


def copy_db(source: Path, target: Path) -> None:
    """Copy a SQLite database (with what its WAL holds) into a new file."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


# ------------------------------------------------------------------ screenshots


def _interesting_task(db: Path) -> str:
    """The task whose lease timeline shows the most: a lease lost (expired, reaped
    or replaced) first, then the most tokens, then the longest leases in all.
    """
    from datetime import UTC, datetime

    from sagalease import SQLiteStore
    from sagalease.ui.timeline import lease_bars

    now = datetime.now(UTC)
    store = SQLiteStore(db)
    try:
        best: tuple[tuple[bool, int, float], str] | None = None
        after: str | None = None
        while page := store.list_tasks(limit=500, after=after):
            for task in page:
                bars = lease_bars(store.history(task.task_id), now=now)
                lost = any(b.end_kind in ("expired", "reaped", "replaced") for b in bars)
                held = sum((b.end - b.start).total_seconds() for b in bars)
                key = (lost, len(bars), held)
                if best is None or key > best[0]:
                    best = (key, task.task_id)
            after = page[-1].task_id
        assert best is not None, "the simulation made no tasks"
        return best[1]
    finally:
        store.close()


def _add_live_work(db: Path) -> None:
    """What a fleet in flight adds to an ended run, so that the dashboard shows queue
    lag and a stale lease: waiting tasks in ``bulk`` (the oldest 90 s old), one
    running in ``urgent`` and one whose holder stopped answering.
    """
    from datetime import UTC, datetime, timedelta

    from sagalease import SQLiteStore

    now = datetime.now(UTC)
    store = SQLiteStore(db)
    try:
        for n in range(6):
            store.create(f"later-{n:02d}", queue="bulk", now=now - timedelta(seconds=90 - 10 * n))
        store.create("live-urgent", queue="urgent", priority=10, now=now - timedelta(seconds=3))
        store.acquire("live-urgent", owner="w101", ttl=timedelta(minutes=5), now=now)
        gone = now - timedelta(seconds=40)
        store.create("held-by-a-lost-worker", queue="urgent", priority=10, now=gone)
        store.acquire("held-by-a-lost-worker", owner="w099", ttl=timedelta(seconds=10), now=gone)
    finally:
        store.close()


def screenshots(directory: Path, *, workers: int, tasks: int, seed: int) -> list[Path]:
    """Simulate a run (plus :func:`_add_live_work`), serve it and save
    ``ui-dashboard.png`` and ``ui-task.png`` (the task page with the richest lease
    timeline of the run) into ``directory``.
    """
    from urllib.parse import quote

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        db = here / "sagalease-sim.db"  # served as the README says: sqlite:///sagalease-sim.db
        simulate(Path(db.name), workers=workers, tasks=tasks, seed=seed, cwd=here)
        task_id = _interesting_task(db)
        _add_live_work(db)
        saved = [directory / "ui-dashboard.png", directory / "ui-task.png"]
        with (
            ui_server(f"sqlite:///{db.name}", log_dir=here, cwd=here) as server,
            chromium() as browser,
        ):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url("/"))
            page.wait_for_selector("table#counts")
            page.screenshot(path=str(saved[0]), full_page=True)
            page.goto(server.url("/tasks/" + quote(task_id, safe="")))
            page.wait_for_selector("svg#lease-timeline")
            page.screenshot(path=str(saved[1]), full_page=True)
        return saved


def main(argv: Sequence[str] | None = None) -> int:
    """``--screenshots DIR``: make the README's screenshots from a simulated run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--screenshots", type=Path, required=True, metavar="DIR")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    problem = browser_unavailable()
    if problem is not None:
        print(f"browser_support: {problem}", file=sys.stderr)
        return 2
    for path in screenshots(
        args.screenshots, workers=args.workers, tasks=args.tasks, seed=args.seed
    ):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
