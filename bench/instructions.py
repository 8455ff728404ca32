"""CPU instructions per lease cycle, counted by callgrind: the library, the library's
own statements with almost no Python around them, and raw SQL (issue 14).

Wall-clock ratios on these machines swing by a quarter between runs; an instruction
count does not (the same program and inputs give the same count, whatever else the
machine does). It counts the benchmark process's user-space work only: SQLite (in
the process), the interpreter, psycopg and libpq, libc. It leaves out the kernel
(writes, ``fsync``, locks) and, on PostgreSQL, the server, which both raw SQL and the
library pay alike; so it is an upper bound on what the library's own CPU could gain,
not a throughput.

The variants, one process, one lease cycle = claim, heartbeat, complete, each durable:

* ``lib``: :class:`~sagalease.stores.sqlite.SQLiteStore` / ``PostgresStore`` calls,
  as ``bench.cycles`` runs them (contracts off).
* ``sql``: the engine's rendered statements for the same cycle, executed one after
  the other with the parameters built inline (``_engine.params`` not called): what
  the library's SQL costs, the schema and statement shape included, without the
  store's Python.
* ``raw``: ``bench.cycles``' ``raw+flock+history`` / ``raw+history`` worker.

Each variant runs twice under ``valgrind --tool=callgrind`` (``small`` and ``large``
cycles on a fresh database of as many tasks); the difference over the extra cycles
is the per-cycle count, so start-up, imports and the database set-up cancel out.

    python -m bench.instructions VARIANT BACKEND N   # one run (what valgrind runs)
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import cycles
from sagalease.stores._engine import AT

VARIANTS = ("lib", "sql", "raw")
BACKENDS = ("sqlite-NORMAL", "postgres")
TTL_US = 30_000_000
OBJECTS = {"libsqlite3": "SQLite", "libpython": "interpreter", "libc.so": "libc", "libpq": "libpq"}
"""How a shared object's name is reported (the rest: ``other``)."""


def available() -> str | None:
    """Why the part cannot run here (``None``: it can)."""
    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install valgrind)"
    return None


def _now_us() -> int:
    return time.time_ns() // 1000


def _sqlite_sql(path: Path) -> Any:
    """The engine's SQLite statements for a lease cycle, run under the store's own
    writer lock and transaction, with the parameters built inline.
    """
    from sagalease import core
    from sagalease.stores import _engine
    from sagalease.stores.sqlite import SQLiteStore
    from sagalease.stores.sqlite import _store as sqlite_store

    store = SQLiteStore(path, synchronous="NORMAL")
    conn = store._conn()
    lock = store._lock
    assert lock is not None
    candidates = sqlite_store._claim_ids(None)
    claim = _engine.sqlite_claim()
    heartbeat = _engine.sqlite_write("heartbeat")
    complete = _engine.sqlite_write("complete")
    claim_json = core.dump_args({"owner": "w", "ttl_us": TTL_US})

    def transaction(statements: tuple[str, str, str], values: dict[str, Any]) -> Any:
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if "task_id" not in values:  # a claim: its candidate scan first
                    ids = [i for (i,) in conn.execute(candidates, values)]
                    if not ids:
                        conn.execute("COMMIT")
                        return None
                    values["ids"] = json.dumps(ids)
                insert, update, read = statements
                conn.execute(insert, values)
                conn.execute(update, values)
                row = conn.execute(read, values).fetchone()
                conn.execute("COMMIT")
                return row
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def cycle() -> bool:
        row = transaction(
            claim,
            {
                "owner": "w",
                "ttl_us": TTL_US,
                "now_us": _now_us(),
                "limit": 1,
                "args_json": claim_json,
            },
        )
        if row is None:
            return False
        task_id, token = row[AT["task_id"]], row[AT["token"]]
        held = {"task_id": task_id, "owner": "w", "token": token}
        beat = {"owner": "w", "token": token, "ttl_us": TTL_US}
        transaction(
            heartbeat,
            {**held, "now_us": _now_us(), "ttl_us": TTL_US, "args_json": core.dump_args(beat)},
        )
        done = {"owner": "w", "token": token, "reason": None}
        transaction(
            complete,
            {**held, "now_us": _now_us(), "reason": None, "args_json": core.dump_args(done)},
        )
        return True

    return cycle, store.close


def _postgres_sql(dsn: str, schema: str) -> Any:
    """The engine's PostgreSQL statements for a lease cycle (one each), prepared, on
    one autocommit connection, with the parameters built inline.
    """
    import psycopg

    from sagalease import core
    from sagalease.stores.postgres import PostgresStore

    store = PostgresStore(dsn, schema=schema, min_size=1, max_size=1)
    claim, _scope = store._q.fast_claim(None)
    heartbeat, complete = store._q.fast("heartbeat"), store._q.fast("complete")
    channel = store.channel
    store.close()
    conn = psycopg.connect(dsn, autocommit=True)
    claim_json = core.dump_args({"owner": "w", "ttl_us": TTL_US})

    def cycle() -> bool:
        values = {"owner": "w", "ttl_us": TTL_US, "now_us": _now_us(), "limit": 1}
        values |= {"args_json": claim_json, "channel": channel}
        rows = conn.execute(claim, values, prepare=True).fetchall()
        if rows[0][1] is None:
            return False
        task_id, token = rows[0][1 + AT["task_id"]], rows[0][1 + AT["token"]]  # after the count
        held = {"task_id": task_id, "owner": "w", "token": token, "channel": channel}
        beat = {"owner": "w", "token": token, "ttl_us": TTL_US}
        values = {**held, "now_us": _now_us(), "ttl_us": TTL_US, "args_json": core.dump_args(beat)}
        conn.execute(heartbeat, values, prepare=True).fetchall()
        done = {"owner": "w", "token": token, "reason": None}
        values = {**held, "now_us": _now_us(), "reason": None, "args_json": core.dump_args(done)}
        conn.execute(complete, values, prepare=True).fetchall()
        return True

    return cycle, conn.close


def run_once(variant: str, backend: str, n: int, dsn: str) -> int:
    """Prepare ``n`` pending tasks and run ``variant``'s lease cycles over them all;
    returns the cycles run (what valgrind runs, in its own process).
    """
    if backend == "postgres":
        schema = f"bench_instr_{secrets.token_hex(4)}"
        try:
            if variant == "raw":
                cycles.pg_raw_prepare(dsn, schema, n)
                _count, _lat = cycles.pg_raw_worker(dsn, schema, "w", "full", hist=True)()
                return n
            cycles.pg_lib_prepare(dsn, schema, n)
            if variant == "lib":
                done, _lat = cycles.pg_lib_worker(dsn, schema, "w", "full")()
                return int(done)
            cycle, close = _postgres_sql(dsn, schema)
            return _loop(cycle, close)
        finally:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    home = Path(tempfile.mkdtemp(prefix="sagalease-instr-"))
    try:
        path = home / "bench.db"
        if variant == "raw":
            cycles.sqlite_raw_prepare(path, n)
            worker = cycles.sqlite_raw_worker(str(path), "NORMAL", "w", "full", True, True)
            _count, _lat = worker()
            return n
        cycles.sqlite_lib_prepare(path, n)
        if variant == "lib":
            done, _lat = cycles.sqlite_lib_worker(str(path), "NORMAL", "w", "full")()
            return int(done)
        cycle, close = _sqlite_sql(path)
        return _loop(cycle, close)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _loop(cycle: Any, close: Any) -> int:
    done = 0
    try:
        while cycle():
            done += 1
    finally:
        close()
    return done


_LINE = re.compile(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)")


def _count(variant: str, backend: str, n: int, dsn: str, out: Path) -> tuple[int, Counter[str]]:
    """Instructions of one run under callgrind: the total and by shared object."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.instructions",
        variant,
        backend,
        str(n),
        dsn,
    ]
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).parent.parent)
    listing = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = 0
    by: Counter[str] = Counter()
    for line in listing.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        count = int(match.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = count
            continue
        obj = re.search(r"\[([^\]]*)\]\s*$", match.group(2))
        name = obj.group(1).rsplit("/", 1)[-1] if obj else ""
        by[next((v for k, v in OBJECTS.items() if k in name), "other")] += count
    return total, by


def measure(backend: str, variant: str, small: int, large: int, dsn: str) -> dict[str, Any]:
    """Per-cycle instructions of ``variant`` on ``backend``: (large run - small run)
    / (large - small) cycles, in all and by shared object.
    """
    with tempfile.TemporaryDirectory(prefix="sagalease-callgrind-") as tmp:
        lo, lo_by = _count(variant, backend, small, dsn, Path(tmp) / "small.out")
        hi, hi_by = _count(variant, backend, large, dsn, Path(tmp) / "large.out")
    extra = large - small
    return {
        "backend": backend,
        "variant": variant,
        "small": small,
        "large": large,
        "per_cycle": (hi - lo) / extra,
        "by_object": {k: (hi_by[k] - lo_by[k]) / extra for k in sorted(set(hi_by) | set(lo_by))},
    }


if __name__ == "__main__":
    variant_, backend_, n_, dsn_ = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    print(run_once(variant_, backend_, n_, dsn_))
