"""Claim time against table size: finished tasks kept, pending ones after them."""

from __future__ import annotations

import time

from bench.common import median
from bench.cycles import TTL, pg_lib_prepare, sqlite_lib_prepare, sqlite_paths


def measure(backend: str, size: int, claims: int, reps: int, dsn: str) -> dict[str, object]:
    """``size`` tasks in all: ``size - reps * claims`` completed, then the pending ones;
    the library's ``claim_next`` timed ``claims`` times per repetition (one process).
    """
    pending = reps * claims + 2
    t0 = time.monotonic()
    plan = ""
    if backend == "sqlite":
        from sagalease.stores.sqlite import SQLiteStore

        path = sqlite_paths("tablesize")
        sqlite_lib_prepare(path, pending, finished=size - pending)
        store: object = SQLiteStore(path, synchronous="NORMAL")
    else:
        from sagalease.stores.postgres import PostgresStore

        pg_lib_prepare(dsn, "bench_tablesize", pending, finished=size - pending)
        pg = PostgresStore(dsn, schema="bench_tablesize", min_size=1, max_size=1)
        plan = pg.explain_claim()
        store = pg
    populate = time.monotonic() - t0
    claim = store.claim_next  # type: ignore[attr-defined]
    claim(owner="warm", ttl=TTL)
    rep_medians = []
    for _ in range(reps):
        times = []
        for _ in range(claims):
            c0 = time.perf_counter_ns()
            task = claim(owner="bench", ttl=TTL)
            times.append((time.perf_counter_ns() - c0) / 1000)
            if task is None:
                raise RuntimeError("ran out of pending tasks")
        rep_medians.append(median(times))
    store.close()  # type: ignore[attr-defined]
    return {
        "backend": backend,
        "size": size,
        "claim_us": median(rep_medians),
        "claim_us_reps": rep_medians,
        "populate_s": populate,
        "index_scan": ("tasks_open" in plan) if plan else True,
        "plan": plan,
    }
