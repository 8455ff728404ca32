"""The web view on a store of 1M tasks (issue 16): dashboard and paged lists.

    uv run python -m bench.ui                 # 1M tasks, 3 repetitions of 30 requests
    uv run python -m bench.ui --tasks 100000 --requests 10   # a smoke run
    uv run python -m bench.ui --backend postgres   # the same on PostgreSQL ($SAGALEASE_BENCH_DSN)

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
every request of every repetition, in milliseconds, with the median time each
request spent in each store method (the app is given the store through a timing
wrapper; the rest is the view: templates, JSON, Starlette). A server just started is
timed apart: its first dashboard is the store's first ``queue_stats`` (which walks
every task; later ones start from it). The six templates stay in the file, in a
queue of their own (``tpl``). Goal (issue 16): the dashboard and a paged list each
under 200 ms. Measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_DSN, WORKDIR, median, percentile

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


def _templates(s: Any, base: datetime) -> None:
    """The six template tasks, written by store ``s`` at instants from ``base``."""
    from sagalease import Compensation

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
    from sagalease import SQLiteStore

    _templates(SQLiteStore(path, synchronous="NORMAL"), base)
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


def build_postgres(dsn: str, schema: str, tasks: int) -> dict[str, Any]:
    """The same store in PostgreSQL schema ``schema`` of ``dsn`` (kept between runs
    like the SQLite file: its layout is recorded in a ``bench_ui_meta`` table there),
    ``VACUUM ANALYZE``d after the load as autovacuum would.
    """
    import psycopg
    from psycopg import sql

    from sagalease.stores._rows import HISTORY_COLUMNS, TASK_COLUMNS
    from sagalease.stores.postgres import PostgresStore

    wanted = {"tasks": tasks, "queues": QUEUES, "layout": LAYOUT}
    ident = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.UndefinedTable):
            row = conn.execute(
                sql.SQL("SELECT meta FROM {}.bench_ui_meta").format(ident)
            ).fetchone()
            if row is not None:
                meta: dict[str, Any] = json.loads(row[0])
                if {k: meta.get(k) for k in wanted} == wanted:
                    return meta
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
    now = datetime.now(UTC)
    base = now - timedelta(days=2)
    t0 = time.monotonic()
    _templates(PostgresStore(dsn, schema=schema), base)
    columns = []
    for column in TASK_COLUMNS:
        if column == "task_id":
            columns.append("'t' || lpad(x::text, 9, '0')")
        elif column == "saga_id":
            columns.append("'saga-' || lpad((x / 10)::text, 7, '0')")
        elif column == "queue":
            columns.append(f"'q' || lpad((x % {QUEUES})::text, 2, '0')")
        elif column in ("created_us", "updated_us", "available_us"):
            columns.append(f"{column} + x * {SPACING_US}")
        else:
            columns.append(column)
    rewrite = {"task_id": "'t' || lpad(x::text, 9, '0')", "at_us": f"at_us + x * {SPACING_US}"}
    history = [rewrite.get(c, c) for c in HISTORY_COLUMNS.split(", ")]
    kind = _kind_case()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {ident.as_string(conn)}")
        with conn.transaction():
            conn.execute(
                f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)})"
                f" SELECT {', '.join(columns)} FROM generate_series(1, {int(tasks)}) AS g(x)"
                f" JOIN tasks ON task_id = {kind} ORDER BY x",  # no parameters: % is modulo
            )
            conn.execute(
                f"INSERT INTO history ({HISTORY_COLUMNS})"
                f" SELECT {', '.join(history)} FROM generate_series(1, {int(tasks)}) AS g(x)"
                f" JOIN history ON task_id = {kind}",
            )
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE history")
        by_state = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state"))
        (entries,) = conn.execute("SELECT count(*) FROM history").fetchone() or (0,)
        (size,) = conn.execute(
            "SELECT pg_total_relation_size('tasks') + pg_total_relation_size('history')"
        ).fetchone() or (0,)
        meta = {
            **wanted,
            "built_at": now.isoformat(),
            "build_s": round(time.monotonic() - t0, 1),
            "by_state": by_state,
            "history_entries": entries,
            "relations_mb": round(size / 1e6, 1),
        }
        conn.execute("CREATE TABLE bench_ui_meta (meta text NOT NULL)")
        conn.execute("INSERT INTO bench_ui_meta VALUES (%s)", (json.dumps(meta),))
    return meta


def _ensure_database(dsn: str) -> None:
    """Create the database named in ``dsn`` if it does not exist."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = conninfo_to_dict(dsn).get("dbname") or "postgres"
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


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
    client: Any,
    urls: dict[str, str],
    requests: int,
    reps: int,
    warm: Callable[[], None],
    timed: Timed,
) -> dict[str, dict[str, Any]]:
    """Median and p95 (ms) of every page, HTML and JSON, ``requests`` per repetition,
    and the median time of each store method per request.
    """
    kinds = {"html": {}, "json": {"Accept": "application/json"}}
    times: dict[str, list[float]] = {f"{p} {k}": [] for p in urls for k in kinds}
    spent: dict[str, list[dict[str, float]]] = {name: [] for name in times}
    rep_medians: dict[str, list[float]] = {name: [] for name in times}
    for name, url in urls.items():  # warm up: templates compiled, statements prepared
        for kind, headers in kinds.items():
            for _ in range(3):
                response = client.get(url, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{name} {kind}: {response.status_code} {url}")
    timed.take()
    for rep in range(reps):
        warm()
        this: dict[str, list[float]] = {name: [] for name in times}
        for _ in range(requests):
            for name, url in urls.items():
                for kind, headers in kinds.items():
                    t = time.perf_counter()
                    response = client.get(url, headers=headers)
                    elapsed = (time.perf_counter() - t) * 1000
                    assert response.status_code == 200, (name, response.status_code)
                    this[f"{name} {kind}"].append(elapsed)
                    spent[f"{name} {kind}"].append(timed.take())
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
            "store_ms": {
                method: round(median([one.get(method, 0.0) for one in spent[name]]), 2)
                for method in sorted({m for one in spent[name] for m in one})
            },
        }
        for name, values in times.items()
    }


class Timed:
    """A store whose calls are timed: per method, the seconds spent in it since the
    last :meth:`take` (what a request spent in the store, the rest being the view).
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self._spent: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._spent[name] = self._spent.get(name, 0.0) + time.perf_counter() - t

        return timed

    def take(self) -> dict[str, float]:
        """The milliseconds per method since the last call, and reset."""
        spent, self._spent = self._spent, {}
        return {name: seconds * 1000 for name, seconds in spent.items()}


def cold_dashboard(open_store: Callable[[], Any]) -> dict[str, float]:
    """The first dashboard of a server just started (a fresh store: on SQLite its
    first ``queue_stats`` walks every task), and the second one, in milliseconds.
    """
    from starlette.testclient import TestClient

    from sagalease.ui.app import create_app

    store = open_store()
    out = {}
    try:
        with TestClient(create_app(store)) as client:
            for name in ("first", "second"):
                t = time.perf_counter()
                response = client.get("/")
                out[name] = round((time.perf_counter() - t) * 1000, 1)
                assert response.status_code == 200
    finally:
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the store, time the pages, write ``results/ui.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30, help="per page and repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="build the store afresh")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL (database: its own)")
    parser.add_argument("--out", type=Path, default=None, help="default results/ui[-pg].json")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("ui.json" if args.backend == "sqlite" else "ui-postgres.json")

    from starlette.testclient import TestClient

    from sagalease import SQLiteStore
    from sagalease.ui.app import create_app

    load_before = os.getloadavg()
    path = WORKDIR / f"ui-{args.tasks}.db"
    open_store: Callable[[], Any]
    if args.backend == "sqlite":
        if args.rebuild:
            path.with_suffix(".json").unlink(missing_ok=True)
        _log(f"store: {path} ({args.tasks:,} tasks)")
        meta = build(path, args.tasks)
        open_store = partial(SQLiteStore, path)
    else:
        from sagalease.stores.postgres import PostgresStore

        schema = f"bench_ui_{args.tasks}"
        _ensure_database(args.dsn)
        if args.rebuild:
            _drop_schema(args.dsn, schema)
        _log(f"store: schema {schema} of {args.dsn} ({args.tasks:,} tasks)")
        meta = build_postgres(args.dsn, schema, args.tasks)
        open_store = partial(PostgresStore, args.dsn, schema=schema)
    _log(f"store ready: {meta}")

    def warm() -> None:
        if args.backend == "sqlite":
            _warm_file(path)

    warm()
    cold = cold_dashboard(open_store)
    _log(f"a server just started: dashboard {cold} ms")
    store = open_store()
    timed = Timed(store)
    try:
        urls = pages(store, args.tasks)
        calls = store_calls(store, args.tasks, 10)
        _log(f"store calls (median ms): {calls}")
        with TestClient(create_app(timed)) as client:  # type: ignore[arg-type]
            figures = measure(client, urls, args.requests, args.reps, warm, timed)
    finally:
        store.close()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["uv run python -m bench.ui", *(argv or sys.argv[1:])]),
        "store": meta,
        "requests_per_rep": args.requests,
        "reps": args.reps,
        "goal_ms": 200,
        "pages": figures,
        "store_calls_ms": calls,
        "cold_dashboard_ms": cold,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "python": sys.version.split()[0],
        "backend": args.backend,
        "sqlite": sqlite3.sqlite_version,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{'page':<20} {'median ms':>9} {'p95 ms':>7} {'max ms':>7}  {'goal <200':<9}"
        "  of the median: store calls (ms)"
    )
    for name, row in figures.items():
        verdict = "met" if row["p95_ms"] < 200 else "MISSED"
        store_ms = ", ".join(f"{m} {v:.1f}" for m, v in row["store_ms"].items())
        print(
            f"{name:<20} {row['median_ms']:>9.1f} {row['p95_ms']:>7.1f}"
            f" {row['max_ms']:>7.1f}  {verdict:<9}  {store_ms}"
        )
    print(f"a server just started, dashboard (ms): {cold}")
    print("store calls alone (median ms):", json.dumps(calls))
    print(f"load average before {load_before}, after {result['load_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
