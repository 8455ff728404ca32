"""Run the benchmarks of issue 8 and write ``bench/results/``.

    uv run --group bench python -m bench.run            # everything (~15 min)
    uv run --group bench python -m bench.run --quick    # a smoke run (a few minutes)
    uv run --group bench python -m bench.run --part cycles   # one part; the report
                                                              # is rebuilt from all parts
    uv run --group bench python -m bench.run --part cycles --part batches --part creates \
        --workers 1,8                                         # issue 14's figures (~7 min)

Each part saves its raw figures as ``bench/results/<part>.json``; the Markdown
report (``README.md``) and the plot (``plot.png``) are rebuilt from whatever
parts exist. Ratios are computed within a repetition (library and raw SQL run
back to back on the same database), then the median of the repetitions is taken.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import creates, cycles, fleet, instructions, queues, tablesize
from bench.common import DEFAULT_DSN

RESULTS = Path(__file__).parent / "results"
PARTS = (
    "cycles",
    "postgres-extra",
    "tablesize",
    "contracts-on",
    "batches",
    "profile",
    "fleet",
    "creates",
    "async",
    "handlers",
    "instructions",
)
WORKERS = (1, 2, 4, 8)
TASKS = {"sqlite-NORMAL": 3000, "sqlite-FULL": 600, "postgres": 1000}
QUICK_TASKS = {"sqlite-NORMAL": 1000, "sqlite-FULL": 200, "postgres": 300}


def _log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def _save(part: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["load_before"] = data.get("load_before")
    data["load_after"] = os.getloadavg()
    (RESULTS / f"{part}.json").write_text(json.dumps(data, indent=1) + "\n")


def ensure_database(dsn: str) -> None:
    """Create the bench database named in ``dsn`` if it does not exist."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    name = params.get("dbname") or "postgres"
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def part_cycles(
    args: argparse.Namespace,
    backends: list[str],
    impls: dict[str, list[str]],
    workers: tuple[int, ...],
) -> list[dict[str, Any]]:
    """The cycle measurements of ``backends`` x ``impls`` x ``workers``, interleaved."""
    tasks = QUICK_TASKS if args.quick else TASKS
    rows = []
    for rep in range(args.reps):
        for backend in backends:
            for w in workers:
                for impl in impls[backend]:
                    row = cycles.measure(backend, impl, w, tasks[backend], "full", args.dsn)
                    row["rep"] = rep
                    _log(
                        f"rep {rep} {backend} {impl} x{w}: {row['rate']:.0f}/s"
                        f" p99 {row['p99_us'] / 1000:.1f} ms max {row['max_us'] / 1000:.1f} ms"
                    )
                    rows.append(row)
    return rows


def run_cycles(args: argparse.Namespace) -> None:
    """Library, raw and raw+flock cycles on every backend at 1, 2, 4 and 8 workers."""
    load = os.getloadavg()
    impls = {
        "sqlite-NORMAL": ["lib", "raw", "raw-lock", "raw-hist"],
        "sqlite-FULL": ["lib", "raw", "raw-lock", "raw-hist"],
        "postgres": ["lib", "raw", "raw-hist"],
    }
    rows = part_cycles(args, _backends(args), impls, _workers(args, WORKERS))
    _save("cycles", {"rows": rows, "load_before": load, "optimize": sys.flags.optimize})


def run_async(args: argparse.Namespace) -> None:
    """The async PostgreSQL store's lease cycle against the sync store's, at 1 and 8
    processes (``--workers`` to change), interleaved; ratios printed at the end.
    """
    from bench import aio

    load = os.getloadavg()
    # three times the cycles part's tasks: a 2 s run of one process swung by ±20 %
    tasks = 3 * (QUICK_TASKS if args.quick else TASKS)["postgres"]
    rows = []
    for rep in range(args.reps):
        for w in _workers(args, (1, 8)):
            for impl in aio.IMPLS:
                row = aio.measure(impl, w, tasks, args.dsn)
                row["rep"] = rep
                _log(
                    f"rep {rep} postgres {impl} x{w}: {row['rate']:.0f}/s"
                    f" p50 {row['p50_us'] / 1000:.2f} ms p99 {row['p99_us'] / 1000:.1f} ms"
                )
                rows.append(row)
    for line in aio.ratios(rows):
        _log(line)
    _save("async", {"rows": rows, "load_before": load, "ratios": aio.ratios(rows)})


def run_handlers(args: argparse.Namespace) -> None:
    """One process with 200 handlers sleeping 50 ms each: AsyncWorker (asyncio tasks)
    against Worker (threads), on SQLite and PostgreSQL, interleaved; throughput, CPU
    per task and peak RSS printed at the end.
    """
    from bench import handlers

    load = os.getloadavg()
    tasks = 400 if args.quick else 2000
    rows = []
    for rep in range(args.reps):
        for backend in ("sqlite", "postgres"):
            for impl in handlers.IMPLS:
                row = handlers.measure(impl, backend, tasks, args.dsn)
                row["rep"] = rep
                _log(
                    f"rep {rep} {backend} {impl}: {row['rate']:.0f} tasks/s,"
                    f" CPU {row['cpu_s']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB"
                )
                rows.append(row)
    lines = handlers.summary(rows)
    for line in lines:
        _log(line)
    _save("handlers", {"rows": rows, "load_before": load, "summary": lines})


def run_contracts_on(args: argparse.Namespace) -> None:
    """The library with the core's icontract checks on (``SAGALEASE_CONTRACTS=1``, which
    the spawned workers inherit); stores run without them by default.
    """
    load = os.getloadavg()
    impls = {"sqlite-NORMAL": ["lib", "raw"], "postgres": ["lib", "raw"]}
    before = os.environ.get("SAGALEASE_CONTRACTS")
    os.environ["SAGALEASE_CONTRACTS"] = "1"
    try:
        rows = part_cycles(args, ["sqlite-NORMAL", "postgres"], impls, (1, 8))
    finally:
        if before is None:
            del os.environ["SAGALEASE_CONTRACTS"]
        else:
            os.environ["SAGALEASE_CONTRACTS"] = before
    _save("contracts-on", {"rows": rows, "load_before": load})


def run_postgres_extra(args: argparse.Namespace) -> None:
    """Claim + complete (library, raw), raw batch-10, pgqueuer and procrastinate."""
    load = os.getloadavg()
    n = 1000 if args.quick else 2000
    jobs = 1000 if args.quick else 5000
    queue_dsn = args.dsn
    rows = []
    for rep in range(args.reps):
        for w in (1, 8):
            for impl, mode in (
                ("lib", "cc"),
                ("raw", "cc"),
                ("lib", "batch10"),
                ("raw", "batch10"),
            ):
                row = cycles.measure("postgres", impl, w, n, mode, args.dsn)
                row["rep"] = rep
                rows.append(row)
                _log(f"rep {rep} postgres {impl} {mode} x{w}: {row['rate']:.0f}/s")
            for kind in ("pgqueuer-b1", "pgqueuer-b10", "procrastinate"):
                row = queues.measure(kind, w, jobs, queue_dsn)
                row["rep"] = rep
                rows.append(row)
                _log(f"rep {rep} {kind} x{w}: {row['rate']:.0f}/s")
    _save("postgres-extra", {"rows": rows, "load_before": load})


def _backends(args: argparse.Namespace) -> list[str]:
    return [b for b in TASKS if not args.backends or b in args.backends]


def _workers(args: argparse.Namespace, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(args.workers) if args.workers else default


def run_batches(args: argparse.Namespace) -> None:
    """claim_batch(10) + complete_many against raw claim 10 + complete 10, without and
    with history (``raw-hist``: the ten history rows in the same transaction).
    """
    load = os.getloadavg()
    tasks = QUICK_TASKS if args.quick else TASKS
    rows = []
    for rep in range(args.reps):
        for backend in _backends(args):
            for w in _workers(args, (1, 8)):
                for impl in ("lib", "raw", "raw-hist"):
                    n = tasks[backend] * (10 if backend == "sqlite-NORMAL" else 5)
                    row = cycles.measure(backend, impl, w, n, "batch10", args.dsn)
                    row["rep"] = rep
                    _log(f"rep {rep} {backend} {impl} batch10 x{w}: {row['rate']:.0f} jobs/s")
                    rows.append(row)
    _save("batches", {"rows": rows, "load_before": load})


def run_creates(args: argparse.Namespace) -> None:
    """Issue 14: ``create_many`` against a raw multi-row insert with history rows."""
    load = os.getloadavg()
    batches = {100: 6, 1000: 3} if args.quick else {100: 30, 1000: 6}
    rows = []
    for backend in _backends(args):
        got = creates.measure(backend, batches, args.reps, args.dsn)
        for row in got:
            _log(
                f"creates {backend} rep {row['rep']} batch {row['batch']}: library"
                f" {row['lib_us']:.1f} µs/task, raw {row['raw_us']:.1f} µs/task,"
                f" lib/raw {row['ratio']:.2f}"
            )
        rows += got
    _save("creates", {"rows": rows, "load_before": load})


def run_tablesize(args: argparse.Namespace) -> None:
    """Claim time at 10k, 100k and 1M tasks (finished ones kept)."""
    load = os.getloadavg()
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    rows = []
    for backend in ("sqlite", "postgres"):
        for size in sizes:
            row = tablesize.measure(backend, size, 200, 3, args.dsn)
            _log(
                f"{backend} {size}: {row['claim_us']:.0f} µs/claim"
                f" (populated in {row['populate_s']:.1f} s)"
            )
            rows.append(row)
    _save("tablesize", {"rows": rows, "load_before": load})


FLEET_BACKENDS = ("sqlite-FULL", "postgres")
PICKUPS = (  # backend, wake-ups, poll interval (ms), workers
    ("postgres", True, 500, 8),
    ("postgres", False, 500, 8),
    ("postgres", False, 50, 8),
    ("sqlite-FULL", False, 500, 8),
    ("sqlite-FULL", False, 50, 8),
    ("memory", True, 500, 8),
    ("postgres", True, 500, 1),  # the same path without the 8-way herd of claims
)


def run_fleet(args: argparse.Namespace) -> None:
    """Issue 13: ``create_many`` against ``create``, pickup latency of an idle 8-worker
    fleet with and without wake-ups, claim cost with 20 queues at 10k and 1M tasks
    (last: its million-row loads would weigh on whatever ran after them).
    """
    load = os.getloadavg()
    x = "\N{MULTIPLICATION SIGN}"
    batches = {100: 5, 1000: 1} if args.quick else {100: 20, 1000: 5}
    create_rows = []
    reps = 1 if args.quick else max(args.reps, 5)  # seconds each: noise needs more
    for backend, analyzed in (*((b, True) for b in FLEET_BACKENDS), ("postgres", False)):
        n = 200 if args.quick else 1000
        times = reps if analyzed else min(reps, 2)  # not analyzed: slower at every rep
        rows = fleet.creates(backend, n, batches, times, args.dsn, analyzed=analyzed)
        for row in rows:
            _log(
                f"fleet creates {row['backend']} rep {row['rep']} {row['method']}:"
                f" {row['per_task_us']:.0f} µs/task, {row['speedup']:.1f}{x} create"
            )
        create_rows += rows
    pickup_rows = []
    for rep, (backend, wakeups, poll_ms, workers) in (
        (rep, config) for rep in range(args.reps) for config in PICKUPS
    ):
        n = 40 if args.quick else 200
        row = fleet.pickup(backend, wakeups, poll_ms, n, args.dsn, workers)
        row["rep"] = rep
        _log(
            f"fleet pickup rep {rep} {backend}"
            f" {'wake-ups' if row['worker_wakeups'] else 'polling'}"
            f" {poll_ms} ms ({row['fleet']}): p50 {row['p50_ms']:.1f} ms,"
            f" p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms"
            f" ({row['picked']}/{row['tasks']} by {row['pickers']} workers);"
            f" create to claim start p50 {row['until_claim_p50_ms']:.1f} ms,"
            f" claim start to handler p50 {row['claim_to_handler_p50_ms']:.1f} ms"
        )
        pickup_rows.append(row)
    sizes = (10_000, 100_000) if args.quick else (10_000, 1_000_000)
    claim_rows = []
    for backend in ("sqlite", "postgres"):
        rows = fleet.claims(backend, sizes, 50 if args.quick else 60, args.reps, args.dsn)
        for row in rows:
            _log(
                f"fleet claims {row['backend']} {row['size']:,}: every queue"
                f" {row['claim_all_us']:.0f} µs, one queue {row['claim_one_us']:.0f} µs"
                f" (populated in {row['populate_s']:.1f} s)"
            )
        for variant in sorted({r["backend"] for r in rows}):
            small, large = (
                next(r for r in rows if r["backend"] == variant and r["size"] == s)
                for s in (sizes[0], sizes[-1])
            )
            for mode in ("all", "one"):
                key = f"claim_{mode}_us"
                ratio = large[key] / small[key]
                _log(
                    f"fleet claims {variant} {mode}: {sizes[-1]:,} / {sizes[0]:,} = {ratio:.2f}{x}"
                )
        claim_rows += rows
    _save(
        "fleet",
        {"claims": claim_rows, "creates": create_rows, "pickup": pickup_rows, "load_before": load},
    )


def _profile_one(label: str, setup: Any, out: list[dict[str, Any]]) -> None:
    work = setup()
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    count, _ = work()
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    entries = []
    for (file, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = file.split("site-packages/")[-1].split("/src/")[-1]
        entries.append(
            {
                "func": f"{short}:{line}({func})",
                "ncalls": ncalls,
                "tottime_share": tt / total,
                "cumtime_share": ct / total,
                "us_per_cycle_cum": ct / count * 1e6,
                "us_per_cycle_own": tt / count * 1e6,
            }
        )
    text_path = RESULTS / f"profile-{label}.txt"
    with text_path.open("w") as fh:
        fh.write(f"{label}: {count} cycles in {wall:.2f} s under cProfile\n\n")
        pstats.Stats(profiler, stream=fh).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler, stream=fh).sort_stats("tottime").print_stats(30)
    out.append(
        {
            "label": label,
            "cycles": count,
            "wall_s": wall,
            "total_s": total,
            "us_per_cycle": wall / count * 1e6,
            "by_own": sorted(entries, key=lambda e: -e["tottime_share"])[:20],
            "by_cum": sorted(entries, key=lambda e: -e["cumtime_share"])[:60],
        }
    )


def run_profile(args: argparse.Namespace) -> None:
    """CProfile one library worker (SQLite NORMAL and PostgreSQL)."""
    load = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    path = cycles.sqlite_paths("profile")
    cycles.sqlite_lib_prepare(path, 2000)
    _profile_one(
        "sqlite-NORMAL", lambda: cycles.sqlite_lib_worker(str(path), "NORMAL", "p", "full"), out
    )
    cycles.pg_lib_prepare(args.dsn, "bench_profile", 500)
    _profile_one(
        "postgres", lambda: cycles.pg_lib_worker(args.dsn, "bench_profile", "p", "full"), out
    )
    _save("profile", {"profiles": out, "load_before": load})


def run_instructions(args: argparse.Namespace) -> None:
    """Issue 14: CPU instructions per lease cycle (callgrind), library against the
    library's own statements without its Python against raw SQL (bench.instructions).
    """
    missing = instructions.available()
    if missing is not None:
        _log(f"instructions: skipped, {missing}")
        return
    load = os.getloadavg()
    small, large = (50, 150) if args.quick else (100, 600)
    rows = []
    for backend in args.backends or instructions.BACKENDS:
        for variant in instructions.VARIANTS:
            row = instructions.measure(backend, variant, small, large, args.dsn)
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in row["by_object"].items() if v >= 1)
            _log(f"instructions {backend} {variant}: {row['per_cycle']:,.0f} per cycle ({parts})")
            rows.append(row)
        per = {r["variant"]: r["per_cycle"] for r in rows if r["backend"] == backend}
        _log(
            f"instructions {backend}: raw/lib {per['raw'] / per['lib']:.2f},"
            f" raw/sql {per['raw'] / per['sql']:.2f}, the library's Python"
            f" {(per['lib'] - per['sql']) / per['lib']:.0%} of lib"
        )
    _save("instructions", {"rows": rows, "load_before": load})


def main() -> None:
    """Parse the options and run the parts."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--part", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL (a bench database)")
    parser.add_argument(
        "--backends",
        type=lambda v: v.split(","),
        default=None,
        help="cycles/batches/creates: only these, e.g. sqlite-FULL,postgres",
    )
    parser.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="cycles/batches: only these worker counts, e.g. 1,8",
    )
    parser.add_argument("--no-report", action="store_true", help="do not rebuild the report")
    args = parser.parse_args()
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    global RESULTS
    if args.quick:  # never overwrites the committed full results
        RESULTS = RESULTS / "quick"
    ensure_database(args.dsn)
    runners = {
        "cycles": run_cycles,
        "postgres-extra": run_postgres_extra,
        "tablesize": run_tablesize,
        "contracts-on": run_contracts_on,
        "batches": run_batches,
        "profile": run_profile,
        "fleet": run_fleet,
        "creates": run_creates,
        "async": run_async,
        "handlers": run_handlers,
        "instructions": run_instructions,
    }
    started = datetime.now(UTC)
    for part in args.part or PARTS:
        _log(f"part {part}")
        runners[part](args)
    if not args.no_report:
        from bench import report

        command = "uv run --group bench python -m bench.run " + " ".join(sys.argv[1:])
        report.write(RESULTS, command.strip(), started)


if __name__ == "__main__":
    main()
