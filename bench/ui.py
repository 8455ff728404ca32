"""The web view on a store of 1M tasks (issue 16): dashboard and paged lists.

    uv run python -m bench.ui                 # 1M tasks, 3 repetitions of 30 requests
    uv run python -m bench.ui --tasks 100000 --requests 10   # a smoke run
    uv run python -m bench.ui --profile       # also cProfile one request per page

The store is a SQLite file (``$SAGALEASE_BENCH_DIR``, default /tmp/sagalease-bench)
of ``--tasks`` tasks over 20 queues, interleaved in creation order: 97.7 % ended
(COMPLETED, and 0.5 % FAILED, 0.2 % QUARANTINED owing a compensation), 1 % PENDING,
0.5 % RUNNING with a live lease, 0.1 % RUNNING with an expired one (stale). The rows
are raw-SQL copies, in the store's own schema, of six template tasks the store
wrote (history included, every entry copied): only the id, saga, queue and times
differ. The file is kept between runs (rebuilt with ``--rebuild`` or when its size
or layout differs) and read through the page cache before each repetition.

Each page is requested through Starlette's ``TestClient`` (in process: no socket,
no server; what is timed is the application and the store), HTML and JSON
(``Accept: application/json``), a few warm-up requests first, then ``--requests``
per repetition, the pages taking turns; the figures are the median and p95 of
every request of every repetition, in milliseconds. Goal (issue 16): the dashboard
and a paged list each under 200 ms. Measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import WORKDIR, median, percentile

RESULTS = Path(__file__).parent / "results"
QUEUES = 20
LAYOUT = 3  # bump when the generated layout changes (the kept file is rebuilt)

# Per 1000 tasks in creation order (x % 1000): the template each one copies.
KINDS: tuple[tuple[str, int], ...] = (
    ("pending", 10),
    ("running", 5),
    ("stale", 1),
    ("failed", 5),
    ("quarantined", 2),
    ("completed", 977),
)
SPACING_US = 100  # creation instants 100 µs apart


def _log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def _kind_case() -> str:
    """A SQL ``CASE`` over ``x`` giving the template id of task ``x`` (see KINDS)."""
    arms, start = [], 0
    for kind, share in KINDS:
        arms.append(f"WHEN x % 1000 < {start + share} THEN 'tpl-{kind}'")
        start += share
    assert start == 1000
    return "CASE " + " ".join(arms[:-1]) + f" ELSE 'tpl-{KINDS[-1][0]}' END"


def _templates(path: Path, base: datetime) -> None:
    """The six template tasks, written by the store at instants from ``base``."""
    from sagalease import Compensation, SQLiteStore

    s = SQLiteStore(path, synchronous="NORMAL")
    t = base
    minute, day = timedelta(minutes=1), timedelta(days=1)
    ttl = 10 * minute
    try:
        s.create("tpl-pending", queue="tpl", saga_id="tpl", metadata={"order": 1}, now=t)
        s.create("tpl-running", queue="tpl", saga_id="tpl", now=t)
        s.acquire("tpl-running", owner="worker-7", ttl=3 * day, now=t + minute)
        s.heartbeat("tpl-running", owner="worker-7", token=1, ttl=3 * day, now=t + 2 * minute)
        s.create("tpl-stale", queue="tpl", saga_id="tpl", now=t)
        s.acquire("tpl-stale", owner="worker-3", ttl=day, now=t + minute)
        s.create("tpl-completed", queue="tpl", saga_id="tpl", metadata={"order": 1}, now=t)
        s.acquire("tpl-completed", owner="worker-1", ttl=ttl, now=t + minute)
        s.heartbeat("tpl-completed", owner="worker-1", token=1, ttl=ttl, now=t + 1.5 * minute)
        s.complete("tpl-completed", owner="worker-1", token=1, now=t + 2 * minute)
        s.create("tpl-failed", queue="tpl", saga_id="tpl", now=t)
        s.acquire("tpl-failed", owner="worker-2", ttl=ttl, now=t + minute)
        s.fail("tpl-failed", owner="worker-2", token=1, reason="card declined", now=t + 2 * minute)
        refund = Compensation("refund", "order-1", "charged the card")
        s.create("tpl-quarantined", queue="tpl", saga_id="tpl", compensations=[refund], now=t)
        s.acquire("tpl-quarantined", owner="worker-4", ttl=ttl, now=t + minute)
        s.fail("tpl-quarantined", owner="worker-4", token=1, reason="boom", now=t + 2 * minute)
        s.acquire("tpl-quarantined", owner="worker-5", ttl=ttl, now=t + 3 * minute)
        s.compensation_failed(
            "tpl-quarantined", owner="worker-5", token=2, index=0, reason="gone", now=t + 4 * minute
        )
    finally:
        s.close()


def build(path: Path, tasks: int) -> dict[str, Any]:
    """A store of ``tasks`` tasks at ``path`` (see the module documentation), kept in
    a file beside it that records what it holds. Returns that record.
    """
    from sagalease.stores._rows import HISTORY_COLUMNS, TASK_COLUMNS

    meta_path = path.with_suffix(".json")
    wanted = {"tasks": tasks, "queues": QUEUES, "layout": LAYOUT}
    if path.exists() and meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            return meta
    for suffix in ("", "-wal", "-shm", ".lock", ".json"):
        Path(f"{path}{suffix}" if suffix != ".json" else meta_path).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    base = now - timedelta(days=2)  # the live leases run until now + 1 day
    t0 = time.monotonic()
    _templates(path, base)
    shifted = {"created_us", "updated_us", "available_us"}
    columns = []
    for column in TASK_COLUMNS:
        if column == "task_id":
            columns.append("printf('t%09d', x)")
        elif column == "saga_id":
            columns.append("printf('saga-%07d', x / 10)")
        elif column == "queue":
            columns.append(f"printf('q%02d', x % {QUEUES})")
        elif column in shifted:
            columns.append(f"{column} + x * {SPACING_US}")
        else:
            columns.append(column)
    series = "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?)"
    history = [
        "printf('t%09d', x)"
        if c == "task_id"
        else f"at_us + x * {SPACING_US}"
        if c == "at_us"
        else c
        for c in HISTORY_COLUMNS.split(", ")
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.execute(
            f"{series} INSERT INTO tasks ({', '.join(TASK_COLUMNS)})"
            f" SELECT {', '.join(columns)} FROM g JOIN tasks ON task_id = {_kind_case()}"
            " ORDER BY x",
            (tasks,),
        )
        conn.execute(
            f"{series} INSERT INTO history ({HISTORY_COLUMNS})"
            f" SELECT {', '.join(history)} FROM g JOIN history ON task_id = {_kind_case()}",
            (tasks,),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        by_state = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state"))
        entries = conn.execute("SELECT count(*) FROM history").fetchone()[0]
    finally:
        conn.close()
    meta = {
        **wanted,
        "built_at": now.isoformat(),
        "build_s": round(time.monotonic() - t0, 1),
        "by_state": by_state,
        "history_entries": entries,
        "file_mb": round(path.stat().st_size / 1e6, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _warm_file(path: Path) -> None:
    """Read the database through the page cache (this machine drops file pages within
    minutes; a cold file makes every row read a disk read).
    """
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError), open(f"{path}{suffix}", "rb") as fh:
            while fh.read(1 << 20):
                pass


def pages(store: Any, tasks: int) -> dict[str, str]:
    """The pages timed: the dashboard, the first page of the list, a later page (after
    the task in the middle of the table), a page of one state and of one queue, a
    task page, /metrics.
    """
    middle = f"t{tasks // 2:09d}"
    running = f"t{(tasks // 2000) * 1000 + 10:09d}"  # a RUNNING task (x % 1000 == 10)
    assert store.get(middle) is not None
    assert store.get(running) is not None
    return {
        "dashboard": "/",
        "list": "/tasks?limit=100",
        "list-later": f"/tasks?limit=100&after={middle}",
        "list-pending": f"/tasks?state=pending,running&limit=100&after={middle}",
        "list-queue": f"/tasks?queue=q07&limit=100&after={middle}",
        "task": f"/tasks/{running}",
        "metrics": "/metrics",
    }


def store_calls(store: Any, tasks: int, reps: int) -> dict[str, float]:
    """Median milliseconds of the store calls the pages make, alone."""
    from sagalease import TaskState

    now = datetime.now(UTC)
    middle = f"t{tasks // 2:09d}"
    calls = {
        "queue_stats": lambda: store.queue_stats(now=now),
        "list_stale": lambda: store.list_stale(now=now),
        "list_tasks(failed, quarantined, 20)": lambda: store.list_tasks(
            state=[TaskState.FAILED, TaskState.QUARANTINED], limit=20
        ),
        "list_tasks(100)": lambda: store.list_tasks(limit=100),
        "list_tasks(100, after=middle)": lambda: store.list_tasks(limit=100, after=middle),
        "counts()": lambda: store.counts(),
    }
    out = {}
    for name, call in calls.items():
        call()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) * 1000)
        out[name] = round(median(times), 2)
    return out


def measure(
    client: Any, urls: dict[str, str], requests: int, reps: int, path: Path
) -> dict[str, dict[str, Any]]:
    """Median and p95 (ms) of every page, HTML and JSON, ``requests`` per repetition."""
    kinds = {"html": {}, "json": {"Accept": "application/json"}}
    times: dict[str, list[float]] = {f"{p} {k}": [] for p in urls for k in kinds}
    rep_medians: dict[str, list[float]] = {name: [] for name in times}
    for name, url in urls.items():  # warm up: templates compiled, statements prepared
        for kind, headers in kinds.items():
            for _ in range(3):
                response = client.get(url, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{name} {kind}: {response.status_code} {url}")
    for rep in range(reps):
        _warm_file(path)
        this: dict[str, list[float]] = {name: [] for name in times}
        for _ in range(requests):
            for name, url in urls.items():
                for kind, headers in kinds.items():
                    t = time.perf_counter()
                    response = client.get(url, headers=headers)
                    elapsed = (time.perf_counter() - t) * 1000
                    assert response.status_code == 200, (name, response.status_code)
                    this[f"{name} {kind}"].append(elapsed)
        for name, values in this.items():
            times[name].extend(values)
            rep_medians[name].append(round(median(values), 2))
        _log(f"repetition {rep + 1}/{reps} done")
    return {
        name: {
            "url": urls[name.rsplit(" ", 1)[0]],
            "median_ms": round(median(values), 2),
            "p95_ms": round(percentile(values, 0.95), 2),
            "max_ms": round(max(values), 2),
            "requests": len(values),
            "rep_medians_ms": rep_medians[name],
        }
        for name, values in times.items()
    }


def profile(client: Any, urls: dict[str, str], top: int = 25) -> dict[str, str]:
    """A profile (cProfile) of 5 requests of each page (HTML): the top functions by
    cumulative time.
    """
    out = {}
    for name, url in urls.items():
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            client.get(url)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(top)
        out[name] = text.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the store, time the pages, write ``results/ui.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30, help="per page and repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="build the store afresh")
    parser.add_argument("--profile", action="store_true", help="cProfile each page too")
    parser.add_argument("--out", type=Path, default=RESULTS / "ui.json")
    args = parser.parse_args(argv)

    from starlette.testclient import TestClient

    from sagalease import SQLiteStore
    from sagalease.ui.app import create_app

    path = WORKDIR / f"ui-{args.tasks}.db"
    if args.rebuild:
        path.with_suffix(".json").unlink(missing_ok=True)
    load_before = os.getloadavg()
    _log(f"store: {path} ({args.tasks:,} tasks)")
    meta = build(path, args.tasks)
    _log(f"store ready: {meta}")
    store = SQLiteStore(path)
    try:
        urls = pages(store, args.tasks)
        _warm_file(path)
        calls = store_calls(store, args.tasks, 10)
        _log(f"store calls (median ms): {calls}")
        with TestClient(create_app(store)) as client:
            figures = measure(client, urls, args.requests, args.reps, path)
            profiles = profile(client, urls) if args.profile else {}
    finally:
        store.close()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "uv run python -m bench.ui " + " ".join(argv or sys.argv[1:]),
        "store": meta,
        "requests_per_rep": args.requests,
        "reps": args.reps,
        "goal_ms": 200,
        "pages": figures,
        "store_calls_ms": calls,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if profiles:
        for name, text in profiles.items():
            (args.out.parent / f"ui-profile-{name}.txt").write_text(text)
    print(f"{'page':<22} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}  goal < 200 ms")
    for name, row in figures.items():
        verdict = "met" if row["p95_ms"] < 200 else "MISSED"
        print(
            f"{name:<22} {row['median_ms']:>10.1f} {row['p95_ms']:>8.1f}"
            f" {row['max_ms']:>8.1f}  {verdict}"
        )
    print("store calls alone (median ms):", json.dumps(calls))
    print(f"load average before {load_before}, after {result['load_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
