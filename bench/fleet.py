"""What a worker fleet needs (issue 13): claim cost with 20 queues, bulk create, pickup.

Three measurements, each with its baseline in the same run:

- ``claims``: ``claim_next(queues=None)`` and ``claim_next(queues=[one])`` (each
  followed by ``complete``, so that running tasks do not pile up in front of the
  claims) with ``size`` tasks over 20 queues and 4 priorities, 90 % of them
  COMPLETED and kept, the rest PENDING, interleaved in creation order. The tasks
  are copies, made with raw SQL in the store's own schema, of 160 templates the
  store itself wrote (one per state, queue and priority, with their history), so
  every row and history entry is one the store would have written; only the id
  differs. The column lists come from the database's catalogue.
- ``creates``: ``create`` one call at a time against ``create_many`` in batches of
  100 and 1000, per task, on a fresh store.
- ``pickup``: an idle fleet of 8 workers (8 spawned processes with one
  :class:`~sagalease.worker.Worker` each, or 8 threads of one ``Worker`` for the
  memory store); one task created at a time, 20-80 ms apart; latency = the
  handler's ``time.time()`` at its start minus the producer's ``time.time()``
  just after ``create`` returned (one clock: the same machine). With wake-ups
  (the store implements :class:`~sagalease.store.WakeUps`) or without
  (:class:`PollingOnly` hides ``wait_for_work``, so the worker sleeps its poll
  interval).
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import CTX, median, percentile
from bench.cycles import TTL, sqlite_paths

QUEUES = tuple(f"q{i:02d}" for i in range(20))
PRIORITIES = (-10, 0, 10, 100)
PENDING_EVERY = 10
"""One task in ten is pending (x % 10 == 0), the others completed."""

WORKERS = 8
PG_CLAIMS = "bench_fleet_claims"
PG_CREATES = "bench_fleet_creates"
PG_PICKUP = "bench_fleet_pickup"


# ---------------------------------------------------------------- stores


def _fresh_pg(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def open_store(backend: str, where: str, pool: int = 1) -> Any:
    """The store of ``backend`` (``sqlite-FULL``, ``sqlite-NORMAL``, ``postgres``,
    ``memory``) at ``where`` (a file, or ``dsn|schema``); PostgreSQL with a pool of
    ``pool`` connections.
    """
    if backend.startswith("sqlite"):
        from sagalease.stores.sqlite import SQLiteStore

        return SQLiteStore(Path(where), synchronous=backend.split("-", 1)[1])
    if backend == "postgres":
        from sagalease.stores.postgres import PostgresStore

        dsn, schema = where.split("|", 1)
        return PostgresStore(dsn, schema=schema, min_size=1, max_size=pool)
    from sagalease.stores.memory import MemoryStore

    return MemoryStore()


def fresh_place(backend: str, name: str, dsn: str, schema: str) -> str:
    """A new empty database for ``backend``: a removed SQLite file, a dropped schema."""
    if backend.startswith("sqlite"):
        return str(sqlite_paths(name))
    if backend == "postgres":
        _fresh_pg(dsn, schema)
        return f"{dsn}|{schema}"
    return ""


class PollingOnly:
    """A store seen without ``wait_for_work``: a worker on it polls.

    Every other attribute is the wrapped store's, so ``isinstance(.., WakeUps)``
    is false and the worker sleeps its poll interval when idle.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "wait_for_work":
            raise AttributeError(name)
        return getattr(self._store, name)


# ---------------------------------------------------------------- claims


def _template_id(state: str, qi: int, pi: int) -> str:
    return f"tpl-{state}-{qi}-{pi}"


def _write_templates(store: Any) -> None:
    """One pending and one completed task per queue and priority, by the store."""
    from sagalease.records import NewTask

    for state in ("c", "p"):
        store.create_many(
            [
                NewTask(_template_id(state, qi, pi), queue=q, priority=p)
                for qi, q in enumerate(QUEUES)
                for pi, p in enumerate(PRIORITIES)
            ]
        )
    for qi in range(len(QUEUES)):
        for pi in range(len(PRIORITIES)):
            task_id = _template_id("c", qi, pi)
            held = store.acquire(task_id, owner="bench", ttl=TTL)
            store.complete(task_id, owner="bench", token=held.token)


def _template_expr(x: str, text: Callable[[str], str]) -> str:
    """SQL: the template of copy number ``x`` (pending when x % 10 = 0; queue and
    priority by the next digits); ``text`` casts an integer expression to text.
    """
    state = f"CASE WHEN {x} % {PENDING_EVERY} = 0 THEN 'p' ELSE 'c' END"
    qi = text(f"({x} / {PENDING_EVERY}) % {len(QUEUES)}")
    pi = text(f"({x} / {PENDING_EVERY * len(QUEUES)}) % {len(PRIORITIES)}")
    return f"'tpl-' || {state} || '-' || {qi} || '-' || {pi}"


def _copy_sql(
    table: str, columns: list[str], series: str, template: str, new_id: str, ordered: bool
) -> str:
    select = ", ".join(new_id if c == "task_id" else f"t.{c}" for c in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select}"
        f" FROM {series} JOIN {table} t ON t.task_id = {template}"
        + (" ORDER BY x" if ordered else "")
    )


def _populate_sqlite(path: str, copies: int) -> None:
    import sqlite3

    store = open_store("sqlite-NORMAL", path)
    try:
        _write_templates(store)
    finally:
        store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")

        def columns(table: str) -> list[str]:
            rows = conn.execute(f"PRAGMA table_xinfo({table})").fetchall()
            # hidden 0: an ordinary column; the tasks' seq is the rowid (creation order)
            return [r[1] for r in rows if r[6] == 0 and not (table == "tasks" and r[1] == "seq")]

        series = (
            "(WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?)"
            " SELECT x FROM g) AS g"
        )
        template = _template_expr("x", lambda e: f"CAST({e} AS TEXT)")
        new_id = "'n' || printf('%09d', x)"
        conn.execute("BEGIN")
        for table in ("tasks", "history"):
            sql = _copy_sql(table, columns(table), series, template, new_id, table == "tasks")
            conn.execute(sql, (copies,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _populate_pg(dsn: str, schema: str, copies: int) -> None:
    import psycopg

    store = open_store("postgres", f"{dsn}|{schema}")
    try:
        _write_templates(store)
    finally:
        store.close()
    series = "generate_series(1, %s) AS g(x)"
    template = _template_expr("x", lambda e: f"({e})::text").replace("%", "%%")
    new_id = "'n' || lpad(x::text, 9, '0')"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("tasks", "history"):
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s AND is_generated = 'NEVER'"
                    " AND is_identity = 'NO' ORDER BY ordinal_position",
                    (schema, table),
                ).fetchall()
            ]
            sql = _copy_sql(f"{schema}.{table}", cols, series, template, new_id, table == "tasks")
            conn.execute(sql.encode(), (copies,))
        conn.execute(f"VACUUM ANALYZE {schema}.tasks")
        conn.execute(f"VACUUM ANALYZE {schema}.history")


def _populate_memory(store: Any, copies: int) -> None:
    """The same tasks through the API (small sizes only: self-tests)."""
    from sagalease.records import NewTask

    _write_templates(store)
    news = []
    for x in range(1, copies + 1):
        qi = (x // PENDING_EVERY) % len(QUEUES)
        pi = (x // (PENDING_EVERY * len(QUEUES))) % len(PRIORITIES)
        news.append(NewTask(f"n{x:09d}", queue=QUEUES[qi], priority=PRIORITIES[pi]))
    for i in range(0, len(news), 1000):
        store.create_many(news[i : i + 1000])
    for x in range(1, copies + 1):
        if x % PENDING_EVERY:
            held = store.acquire(f"n{x:09d}", owner="bench", ttl=TTL)
            store.complete(held.task_id, owner="bench", token=held.token)


def _populated(backend: str, size: int, dsn: str) -> tuple[str, float]:
    """A fresh database of ``backend`` with ``size`` tasks; its place and the seconds
    the population took.
    """
    copies = size - 2 * len(QUEUES) * len(PRIORITIES)
    t0 = time.monotonic()
    where = fresh_place(backend, f"fleet-claims-{size}", dsn, f"{PG_CLAIMS}_{size}")
    if backend == "sqlite":
        _populate_sqlite(where, copies)
    elif backend == "postgres":
        _populate_pg(dsn, f"{PG_CLAIMS}_{size}", copies)
    return where, time.monotonic() - t0


def settle(backend: str, dsn: str) -> None:
    """Let the writes of a bulk load reach the disk before timing anything: a
    PostgreSQL ``CHECKPOINT`` (else the checkpoint that a million-row load causes
    runs under the next measurements), ``sync`` for SQLite files.
    """
    if backend == "postgres":
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    elif backend.startswith("sqlite"):
        os.sync()


def _warm_file(where: str) -> None:
    """Read a SQLite database through the page cache (this machine drops file pages
    within minutes, then every row read of a large file is a disk read).
    """
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError), open(where + suffix, "rb") as fh:
            while fh.read(1 << 20):
                pass


def _claim_rep(store: Any, per_rep: int, names_of: Callable[[int], Any]) -> tuple[float, float]:
    """Median µs of ``per_rep`` claims (queues ``names_of(i)``), and of claim + complete."""
    clock = time.perf_counter_ns
    times: list[float] = []
    both: list[float] = []
    for i in range(per_rep):
        c0 = clock()
        task = store.claim_next(owner="bench", ttl=TTL, queues=names_of(i))
        c1 = clock()
        if task is None:
            raise RuntimeError("ran out of pending tasks")
        store.complete(task.task_id, owner="bench", token=task.token)
        times.append((c1 - c0) / 1000)
        both.append((clock() - c0) / 1000)
    return median(times), median(both)


def claims(
    backend: str, sizes: tuple[int, ...], per_rep: int, reps: int, dsn: str
) -> list[dict[str, Any]]:
    """Median ``claim_next`` latency (µs) from every queue and from one queue at each
    of ``sizes`` tasks, each claim completed at once; one process. All sizes are
    populated first, then the repetitions alternate between them. ``sqlite`` is
    measured as ``sqlite-FULL`` and ``sqlite-NORMAL`` (two connections to the same
    file: the flush apart from the walk).
    """
    stores: dict[tuple[str, int], Any] = {}
    made: dict[int, tuple[str, float]] = {}
    variants = ("sqlite-FULL", "sqlite-NORMAL") if backend == "sqlite" else (backend,)
    needed = len(variants) * (6 + reps * 2 * per_rep)
    if needed > min(sizes) // PENDING_EVERY:
        raise ValueError(f"{needed} claims need more than the {min(sizes):,} tasks' pending ones")
    try:
        for size in sizes:
            made[size] = _populated(backend, size, dsn)
            for variant in variants:
                store = stores[variant, size] = open_store(variant, made[size][0])
                if backend == "memory":
                    _populate_memory(store, size - 2 * len(QUEUES) * len(PRIORITIES))
                for names in (None, [QUEUES[0]]) * 3:  # warm the statements of both forms
                    task = store.claim_next(owner="warm", ttl=TTL, queues=names)
                    store.complete(task.task_id, owner="warm", token=task.token)
        settle(backend, dsn)
        figures: dict[tuple[str, int, str], list[tuple[float, float]]] = defaultdict(list)
        for _ in range(reps):
            for size in sizes:
                if backend == "sqlite":
                    _warm_file(made[size][0])
                for variant in variants:
                    store = stores[variant, size]
                    figures[variant, size, "all"].append(_claim_rep(store, per_rep, lambda i: None))
                    figures[variant, size, "one"].append(
                        _claim_rep(store, per_rep, lambda i: [QUEUES[i % len(QUEUES)]])
                    )
        rows = []
        for (variant, size), store in stores.items():
            row: dict[str, Any] = {
                "backend": variant,
                "size": size,
                "counts": {s.value: n for s, n in store.counts().items() if n},
                "populate_s": made[size][1],
            }
            for mode in ("all", "one"):
                reps_of = figures[variant, size, mode]
                row[f"claim_{mode}_us"] = median([r[0] for r in reps_of])
                row[f"claim_{mode}_us_reps"] = [r[0] for r in reps_of]
                row[f"cycle_{mode}_us"] = median([r[1] for r in reps_of])
            rows.append(row)
        return rows
    finally:
        for store in stores.values():
            store.close()
        if backend == "postgres":
            for size in sizes:
                _fresh_pg(dsn, f"{PG_CLAIMS}_{size}")
        elif backend == "sqlite":
            for size in sizes:
                sqlite_paths(f"fleet-claims-{size}")  # removes the files


# ---------------------------------------------------------------- creates


def creates(
    backend: str,
    singles: int,
    batches: dict[int, int],
    reps: int,
    dsn: str,
    rounds: int = 5,
    analyzed: bool = True,
) -> list[dict[str, Any]]:
    """Per-task time of ``create`` one call at a time and of ``create_many`` in batches
    (``batches``: size -> number of calls per repetition), on one fresh store. Each
    repetition runs ``rounds`` rounds of a share of each method in turn, so that a
    drift of the machine weighs on every method alike. Each row carries its
    ``speedup`` over ``create`` in the same repetition.

    PostgreSQL (``analyzed``): 1000 tasks are created and the tables ``ANALYZE``d
    before the measured store connects, as autovacuum would have done on a store in
    use. Without it, a connection that starts on the empty tables keeps the plan of
    the history's foreign-key check made for an empty ``tasks`` table, a sequential
    scan, and every create gets slower as the table grows (rows labelled
    ``postgres, not analyzed``).
    """
    from sagalease.records import NewTask

    where = fresh_place(backend, "fleet-creates", dsn, PG_CREATES)
    label = backend
    if backend == "postgres" and analyzed:
        _analyzed_pg(where, dsn)
    elif backend == "postgres":
        label = "postgres, not analyzed"
    settle(backend, dsn)
    store = open_store(backend, where, pool=1)
    rows: list[dict[str, Any]] = []
    try:
        store.create("warm", queue=QUEUES[0])
        for rep in range(reps):
            seconds: dict[int, float] = defaultdict(float)
            done: dict[int, int] = defaultdict(int)
            for r in range(rounds):
                ids = range(r * singles // rounds, (r + 1) * singles // rounds)
                t0 = time.perf_counter()
                for i in ids:
                    store.create(f"s{rep}-{i}", queue=QUEUES[i % len(QUEUES)], priority=i % 7)
                seconds[1] += time.perf_counter() - t0
                done[1] += len(ids)
                for size, calls in batches.items():
                    lists = [
                        [
                            NewTask(
                                f"b{rep}-{size}-{c}-{i}",
                                queue=QUEUES[i % len(QUEUES)],
                                priority=i % 7,
                            )
                            for i in range(size)
                        ]
                        for c in range(r * calls // rounds, (r + 1) * calls // rounds)
                    ]
                    t0 = time.perf_counter()
                    for news in lists:
                        store.create_many(news)
                    seconds[size] += time.perf_counter() - t0
                    done[size] += size * len(lists)
            base = seconds[1] / done[1]
            for size in (1, *batches):
                method = "create" if size == 1 else f"create_many {size}"
                rows.append(_create_row(label, rep, method, size, done[size], seconds[size], base))
    finally:
        store.close()
    return rows


def _analyzed_pg(where: str, dsn: str) -> None:
    """1000 tasks in the store at ``where``, then ``ANALYZE`` of its tables."""
    import psycopg

    from sagalease.records import NewTask

    store = open_store("postgres", where)
    try:
        store.create_many([NewTask(f"pre-{i}", queue=QUEUES[i % len(QUEUES)]) for i in range(1000)])
    finally:
        store.close()
    schema = where.split("|", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ANALYZE {schema}.tasks")
        conn.execute(f"ANALYZE {schema}.history")


def _create_row(
    backend: str, rep: int, method: str, batch: int, tasks: int, seconds: float, base: float
) -> dict[str, Any]:
    per_task = seconds / tasks
    return {
        "backend": backend,
        "rep": rep,
        "method": method,
        "batch": batch,
        "tasks": tasks,
        "seconds": seconds,
        "per_task_us": per_task * 1e6,
        "rate": tasks / seconds,
        "speedup": base / per_task,
    }


# ---------------------------------------------------------------- pickup


def _worker(store: Any, out: Callable[[str, float, float], object], poll_ms: float, n: int) -> Any:
    """A Worker whose handler reports its task, its start (``time.time()``) and when
    the claim that leased the task began (the lease's ``acquired``, store clock).
    """
    from sagalease.worker import Worker

    def handler(ctx: Any) -> None:
        out(ctx.task.task_id, time.time(), ctx.task.lease.acquired_us / 1e6)

    return Worker(store, handler, poll_interval=timedelta(milliseconds=poll_ms), concurrency=n)


def _pickup_child(
    backend: str, where: str, poll_ms: float, wakeups: bool, ready: Any, stop: Any, out: Any
) -> None:
    """One worker process of the fleet: one Worker, one task at a time."""
    from sagalease.store import WakeUps

    store = open_store(backend, where, pool=2)
    seen = store if wakeups else PollingOnly(store)
    worker = _worker(seen, lambda *seen_at: out.put((*seen_at, os.getpid())), poll_ms, 1)
    threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
    ready.put(isinstance(seen, WakeUps))
    try:
        worker.run()
    finally:
        store.close()


def pickup(
    backend: str,
    wakeups: bool,
    poll_ms: float,
    tasks: int,
    dsn: str,
    workers: int = WORKERS,
    seed: int = 13,
) -> dict[str, Any]:
    """Create ``tasks`` tasks one at a time, 20-80 ms apart, on an idle fleet of
    ``workers`` workers (processes; threads for the memory store); the
    create-to-handler-start latencies in ms, split at the start of the claim that
    leased the task.
    """
    where = fresh_place(backend, "fleet-pickup", dsn, PG_PICKUP)
    settle(backend, dsn)
    producer = open_store(backend, where, pool=1)
    producer.create("warm-0")  # the schema exists before the workers open it
    started: dict[str, float] = {}
    procs: list[Any] = []
    if backend == "memory":
        from sagalease.store import WakeUps

        got: queue_mod.Queue[tuple[str, float, float, int]] = queue_mod.Queue()

        def record(task_id: str, at: float, claimed: float) -> None:
            got.put((task_id, at, claimed, threading.get_ident()))

        seen = producer if wakeups else PollingOnly(producer)
        fleet = _worker(seen, record, poll_ms, workers)
        runner = threading.Thread(target=fleet.run, daemon=True)
        runner.start()
        has_wakeups = [isinstance(seen, WakeUps)]
        stop_fleet: Callable[[], None] = fleet.stop
        results: Any = got
        kind = "thread"
    else:
        ready, stop, results = CTX.Queue(), CTX.Event(), CTX.Queue()
        procs = [
            CTX.Process(
                target=_pickup_child,
                args=(backend, where, poll_ms, wakeups, ready, stop, results),
                daemon=True,
            )
            for _ in range(workers)
        ]
        for p in procs:
            p.start()
        has_wakeups = [ready.get(timeout=120) for _ in procs]
        stop_fleet = stop.set
        kind = "process"
    rng = random.Random(seed)
    picked: dict[str, tuple[float, float, int]] = {}

    def collect(want: int) -> None:
        while sum(1 for k in picked if k.startswith("t")) < want and not finished.is_set():
            try:
                task_id, at, claimed, who = results.get(timeout=0.05)
            except queue_mod.Empty:
                continue
            picked[task_id] = (at, claimed, who)

    finished = threading.Event()
    collector = threading.Thread(target=collect, args=(tasks,), daemon=True)
    try:
        time.sleep(1.0 + 2 * poll_ms / 1000)  # every worker has polled once and is idle
        for i in range(1, workers + 1):  # warm each worker's claim path
            producer.create(f"warm-{i}")
        time.sleep(0.5 + 2 * poll_ms / 1000)
        collector.start()
        for i in range(tasks):
            time.sleep(rng.uniform(0.020, 0.080))
            task_id = f"t{i:05d}"
            producer.create(task_id)
            started[task_id] = time.time()
        collector.join(timeout=10 + 4 * poll_ms / 1000)
    finally:
        finished.set()
        stop_fleet()
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
        producer.close()
    matched = [(picked[t], at) for t, at in started.items() if t in picked]
    latencies = [(handled - at) * 1000 for (handled, _c, _w), at in matched]
    woken = [(claimed - at) * 1000 for (_h, claimed, _w), at in matched]
    claiming = [(handled - claimed) * 1000 for (handled, claimed, _w), _at in matched]
    pickers = {who for (_h, _c, who), _at in matched}
    return {
        "backend": backend,
        "wakeups": wakeups,
        "worker_wakeups": all(has_wakeups),
        "poll_ms": poll_ms,
        "workers": workers,
        "fleet": f"{workers} {kind}{'' if workers == 1 else 'es' if kind == 'process' else 's'}",
        "tasks": tasks,
        "picked": len(latencies),
        "pickers": len(pickers),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies) if latencies else 0.0,
        "min_ms": min(latencies) if latencies else 0.0,
        "mean_ms": sum(latencies) / len(latencies) if latencies else 0.0,
        "until_claim_p50_ms": percentile(woken, 0.5),
        "until_claim_p99_ms": percentile(woken, 0.99),
        "claim_to_handler_p50_ms": percentile(claiming, 0.5),
        "claim_to_handler_p99_ms": percentile(claiming, 0.99),
    }
