"""Shared settings and helpers: where the databases live, statistics, process pools."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DSN = os.environ.get(
    "SAGALEASE_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/sagalease_bench"
)
WORKDIR = Path(os.environ.get("SAGALEASE_BENCH_DIR", "/tmp/sagalease-bench"))
TTL_US = 30_000_000

CTX = mp.get_context("spawn")  # children re-import (and inherit -O); stores open in the child


@dataclass
class RunResult:
    """One measurement: ``count`` units of work (cycles or jobs) by ``workers`` processes."""

    count: int
    seconds: float
    latencies_us: list[float] = field(default_factory=list)
    per_worker: list[int] = field(default_factory=list)
    wall_start: float = 0.0

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    """The median (0 for no values)."""
    return statistics.median(values) if values else 0.0


Work = Callable[[], tuple[int, list[float]]]


def _child(
    target: Callable[..., Work],
    args: tuple[Any, ...],
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    try:
        work = target(*args)
    except BaseException as exc:
        ready.release()
        out.put((0.0, 0.0, 0, [], f"setup: {type(exc).__name__}: {exc}"))
        raise
    ready.release()
    go.wait()
    start = time.monotonic()
    try:
        count, latencies = work()
        out.put((start, time.monotonic(), count, latencies, None))
    except BaseException as exc:
        out.put((start, time.monotonic(), 0, [], f"{type(exc).__name__}: {exc}"))
        raise


def run_processes(
    target: Callable[..., Work],
    args_per_worker: Sequence[tuple[Any, ...]],
    timeout: float = 300.0,
) -> RunResult:
    """Run ``target(*args)()`` in one spawned process per ``args`` entry: ``target(*args)``
    sets up (connections, stores) and returns the work, a callable returning ``(units
    done, per-unit latencies in µs)``; the work starts in every process at once, after
    all have set up; wall time from the release to the last finish (CLOCK_MONOTONIC
    is system-wide on Linux, so times from different processes compare).
    """
    ready = CTX.Semaphore(0)
    go = CTX.Event()
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_child, args=(target, args, ready, go, out), daemon=True)
        for args in args_per_worker
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a benchmark worker did not start")
    wall_start = time.time()
    go.set()
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError(f"benchmark worker failed: {errors[0]}")
    start = min(r[0] for r in results if r[0])
    end = max(r[1] for r in results)
    lat: list[float] = []
    for r in results:
        lat.extend(r[3])
    return RunResult(
        count=sum(r[2] for r in results),
        seconds=end - start,
        latencies_us=lat,
        per_worker=[r[2] for r in results],
        wall_start=wall_start,
    )
