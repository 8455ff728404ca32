"""The Markdown report and the plot, from the parts' JSON files."""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import creates
from bench.common import DEFAULT_DSN, median

# issue 14: library against raw SQL doing the same durable work (raw+flock+history,
# raw+history), at 1 and at 8 workers
TARGETS = {"sqlite-NORMAL": 0.6, "sqlite-FULL": 0.9, "postgres": 0.85}
BATCH_TARGET = 0.6
CREATE_TARGET = 0.6
TAIL_LIMIT_MS = 150.0


def _short(func: str) -> str:
    return re.sub(r"^.*/lib/python3\.\d+/", "stdlib/", func)


def _load(results: Path, part: str) -> dict[str, Any] | None:
    path = results / f"{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine() -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pg = "unavailable"
    try:
        import psycopg

        with psycopg.connect(DEFAULT_DSN) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg = str(row[0]) if row else pg
    except Exception as exc:  # the report still gets written
        pg = f"unavailable ({type(exc).__name__})"
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True
    ).stdout.strip()
    return [
        f"- CPU: {cpu} (`/proc/cpuinfo`), `nproc` = {nproc}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
        f" PostgreSQL {pg}, {platform.platform()}",
        f"- sagalease at commit {head}"
        + (" (src/ had uncommitted changes)" if dirty else "")
        + " when the report was written (each part measured the tree of its own time)",
    ]


def _by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def _ratio(
    rows: list[dict[str, Any]], backend: str, mode: str, w: int, impl: str, base: str
) -> float:
    """Median over repetitions of rate(impl) / rate(base) in the same repetition."""
    reps = _by(
        [r for r in rows if r["backend"] == backend and r["mode"] == mode and r["workers"] == w],
        "rep",
    )
    ratios = []
    for group in reps.values():
        num = [r["rate"] for r in group if r["impl"] == impl]
        den = [r["rate"] for r in group if r["impl"] == base]
        if num and den and den[0]:
            ratios.append(num[0] / den[0])
    return median(ratios)


def _rate(rows: list[dict[str, Any]], backend: str, mode: str, w: int, impl: str) -> float:
    return median(
        [
            r["rate"]
            for r in rows
            if r["backend"] == backend
            and r["mode"] == mode
            and r["workers"] == w
            and r["impl"] == impl
        ]
    )


def _tail(rows: list[dict[str, Any]], backend: str, w: int, impl: str) -> tuple[float, float]:
    sel = [r for r in rows if r["backend"] == backend and r["workers"] == w and r["impl"] == impl]
    if not sel:
        return 0.0, 0.0
    return median([r["p99_us"] for r in sel]) / 1000, max(r["max_us"] for r in sel) / 1000


def _load_text(data: dict[str, Any] | None) -> str:
    if not data:
        return ""
    before = data.get("load_before") or [0, 0, 0]
    after = data.get("load_after") or [0, 0, 0]
    return f"load average {before[0]:.2f} before, {after[0]:.2f} after"


def _cycle_table(data: dict[str, Any], lines: list[str], title: str) -> list[dict[str, Any]]:
    rows = data["rows"]
    backends = sorted({r["backend"] for r in rows}, key=lambda b: list(TARGETS).index(b))
    workers = sorted({r["workers"] for r in rows})
    reps = len({r["rep"] for r in rows})
    lines += [f"### {title}", "", f"{_load_text(data)}; {reps} repetition(s), medians.", ""]
    x = "\N{MULTIPLICATION SIGN}"
    lines += [
        "| backend | workers | library /s | raw /s | **lib / raw** | raw+flock /s"
        " | lib / raw+flock | raw+flock+history /s | lib / raw+flock+history"
        " | lib p99 / max ms | raw p99 / max ms | raw+flock p99 / max ms | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for b in backends:
        impls = {r["impl"] for r in rows if r["backend"] == b}
        for w in workers:
            lib = _rate(rows, b, "full", w, "lib")
            raw = _rate(rows, b, "full", w, "raw")
            ratio = _ratio(rows, b, "full", w, "lib", "raw")
            cells = []
            for other in ("raw-lock", "raw-hist"):
                if other in impls:
                    rate = _rate(rows, b, "full", w, other)
                    cells.append(f"{rate:,.0f} | {_ratio(rows, b, 'full', w, 'lib', other):.2f}{x}")
                else:
                    cells.append("- | -")
            tails = []
            for impl in ("lib", "raw", "raw-lock"):
                if impl in impls:
                    p99, worst = _tail(rows, b, w, impl)
                    tails.append(f"{p99:.1f} / {worst:.1f}")
                else:
                    tails.append("-")
            lmax = _tail(rows, b, w, "lib")[1]
            target = TARGETS[b]
            hist = _ratio(rows, b, "full", w, "lib", "raw-hist")
            if w not in (1, 8) or not hist:
                target_text = "-"
            else:
                met = hist >= target
                target_text = (
                    f"history ≥ {target} {'met' if met else f'missed by {target - hist:.2f}'}"
                )
                if w == 8 and b.startswith("sqlite"):
                    tail_ok = lmax <= TAIL_LIMIT_MS
                    target_text += f"; max ≤ 150 ms {'met' if tail_ok else 'missed'}"
            summary.append({"backend": b, "workers": w, "ratio": ratio})
            lines.append(
                f"| {b} | {w} | {lib:,.0f} | {raw:,.0f} | **{ratio:.2f}{x}** | "
                + " | ".join(cells)
                + " | "
                + " | ".join(tails)
                + f" | {target_text} |"
            )
    lines.append("")
    return summary


def _targets(
    cyc: dict[str, Any] | None,
    extra: dict[str, Any] | None,
    size: dict[str, Any] | None,
    bat: dict[str, Any] | None,
    made: dict[str, Any] | None = None,
) -> list[str]:
    """The targets of issue 14, as measured in these parts."""
    out = ["### Targets (issue 14)", ""]
    x = "\N{MULTIPLICATION SIGN}"

    def verdict(value: float, target: float) -> str:
        return "met" if value >= target else f"**missed** by {target - value:.2f}"

    if cyc:
        rows = cyc["rows"]
        for b, w in ((b, w) for b in TARGETS for w in (1, 8)):
            target = TARGETS[b]
            r = _ratio(rows, b, "full", w, "lib", "raw-hist")
            base = "raw+history" if b == "postgres" else "raw+flock+history"
            text = (
                f"- {b}, {w} worker(s): library {r:.2f}{x} {base} (≥ {target}):"
                f" {verdict(r, target)}"
            )
            if w == 8 and b.startswith("sqlite"):
                worst = _tail(rows, b, w, "lib")[1]
                text += (
                    f"; slowest cycle {worst:.0f} ms (≤ 150 ms:"
                    f" {'met' if worst <= TAIL_LIMIT_MS else '**missed**'})"
                )
            out.append(text)
    if size:
        for b in ("sqlite", "postgres"):
            pts = sorted((r["size"], r["claim_us"]) for r in size["rows"] if r["backend"] == b)
            if len(pts) > 1:
                ratio = pts[-1][1] / pts[0][1]
                out.append(
                    f"- claim time {pts[-1][0]:,} / {pts[0][0]:,} tasks, {b}: {ratio:.2f}{x}"
                    f" (≤ 1.5): {'met' if ratio <= 1.5 else '**missed**'}"
                )
    if extra:
        rows = extra["rows"]
        for w in (1, 8):
            lib = _rate(rows, "postgres", "cc", w, "lib")
            for other in ("pgqueuer-b1", "procrastinate", "pgqueuer-b10"):
                rate = _rate(rows, "postgres", "noop", w, other)
                if rate:
                    out.append(
                        f"- per task, {w} worker(s): library claim+complete {lib:,.0f}/s vs"
                        f" {other} {rate:,.0f}/s ({lib / rate:.2f}{x}):"
                        f" {'ahead' if lib > rate else '**behind**'}"
                    )
        for w in (1, 8):
            lib = _rate(rows, "postgres", "batch10", w, "lib")
            rate = _rate(rows, "postgres", "noop", w, "pgqueuer-b10")
            if lib and rate:
                out.append(
                    f"- batched, {w} worker(s): library claim_batch 10 + complete_many"
                    f" {lib:,.0f} jobs/s vs pgqueuer batch 10 {rate:,.0f}/s ({lib / rate:.2f}{x}):"
                    f" {'ahead' if lib > rate else '**behind**'}"
                )
    if bat:
        for b in ("postgres", "sqlite-NORMAL", "sqlite-FULL"):
            for w in (1, 8):
                r = _ratio(bat["rows"], b, "batch10", w, "lib", "raw-hist")
                if r:
                    out.append(
                        f"- claim_batch + complete_many, {b}, {w} worker(s): {r:.2f}{x}"
                        f" raw batch-10 with history (≥ {BATCH_TARGET}):"
                        f" {verdict(r, BATCH_TARGET)}"
                    )
    if made:
        for b in TARGETS:
            for size in (100, 1000):
                got = creates.summary(made["rows"], b, size)
                if got["ratio"]:
                    out.append(
                        f"- create_many {size}, {b}: {got['ratio']:.2f}{x} raw multi-row insert"
                        f" with history (≥ {CREATE_TARGET}): {verdict(got['ratio'], CREATE_TARGET)}"
                    )
    out.append("")
    return out


CREATE_GOALS = {"postgres": 10.0, "sqlite-FULL": 5.0}


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _fleet_section(data: dict[str, Any]) -> list[str]:
    """Issue 13's fleet figures: claims over 20 queues, create_many, pickup latency."""
    x = "\N{MULTIPLICATION SIGN}"
    out = [
        "### Fleet (issue 13): claims over 20 queues, bulk create, pickup latency",
        "",
        f"{_load_text(data)}. See `bench/fleet.py` for the set-up.",
        "",
    ]
    claims = data.get("claims", [])
    sizes = sorted({r["size"] for r in claims})
    if claims:
        out += [
            "**Claim cost** (µs, median of the repetition medians; one process): 20 queues,"
            " 4 priorities, 90 % of the tasks COMPLETED and kept, the rest PENDING,"
            " interleaved; each claim is followed by `complete` (claim + complete in the"
            " last columns). One queue: a different queue each claim, round robin. The goal"
            " is on SQLite FULL and PostgreSQL; NORMAL (the same file, another connection)"
            " shows the walk without the flush.",
            "",
            "| backend | claim from | "
            + " | ".join(f"{s:,} tasks" for s in sizes)
            + " | largest / smallest (≤ 1.5) | claim + complete, "
            + " / ".join(f"{s:,}" for s in sizes)
            + " | populated in (s) |",
            "|---|---|" + "---|" * len(sizes) + "---|---|---|",
        ]
        for backend in sorted({r["backend"] for r in claims}):
            by = {r["size"]: r for r in claims if r["backend"] == backend}
            for mode, label in (("all", "every queue"), ("one", "one queue")):
                key = f"claim_{mode}_us"
                cells = [f"{by[s][key]:.0f}" if s in by else "-" for s in sizes]
                ratio = by[max(by)][key] / by[min(by)][key]
                cycle = " / ".join(
                    f"{by[s][f'cycle_{mode}_us']:.0f}" if s in by else "-" for s in sizes
                )
                populated = " / ".join(f"{by[s]['populate_s']:.1f}" for s in sizes if s in by)
                verdict = _met(ratio <= 1.5) if backend != "sqlite-NORMAL" else "(reference)"
                out.append(
                    f"| {backend} | {label} | {' | '.join(cells)} |"
                    f" {ratio:.2f}{x} {verdict} | {cycle} | {populated} |"
                )
        out.append("")
    creates = data.get("creates", [])
    if creates:
        methods = sorted({r["method"] for r in creates if r["batch"] > 1}, key=len)
        out += [
            "**Bulk create**: per-task time of `create` one call at a time and of"
            " `create_many` batches on one fresh store; the speed-up is taken within each"
            " repetition, then the median; the goal is judged on the largest batch. Each"
            " repetition alternates the three methods in 5 rounds. PostgreSQL: 1,000 tasks"
            " created and the tables `ANALYZE`d before the measured connection opens;"
            " `postgres, not analyzed` is a connection opened on the empty tables (see"
            " `bench/README.md`: its foreign-key check keeps a sequential-scan plan).",
            "",
            "| backend | `create` µs/task (each repetition) | "
            + " | ".join(f"`{m}` µs/task | {x} `create`" for m in methods)
            + " | goal |",
            "|---|---|" + "---|---|" * len(methods) + "---|",
        ]
        for backend in sorted({r["backend"] for r in creates}):
            rows = [r for r in creates if r["backend"] == backend]
            single = median([r["per_task_us"] for r in rows if r["method"] == "create"])
            cells = []
            speedup = 0.0
            for m in methods:
                speedup = median([r["speedup"] for r in rows if r["method"] == m])
                per = median([r["per_task_us"] for r in rows if r["method"] == m])
                cells.append(f"{per:.1f} | {speedup:.1f}{x}")
            want = CREATE_GOALS.get(backend)
            goal_text = f"≥ {want:.0f}{x}: {_met(speedup >= want)}" if want else "-"
            each = " / ".join(f"{r['per_task_us']:.0f}" for r in rows if r["method"] == "create")
            out.append(f"| {backend} | {single:.0f} ({each}) | {' | '.join(cells)} | {goal_text} |")
        out.append("")
    pickup = data.get("pickup", [])
    if pickup:
        out += [
            "**Pickup latency** on an idle fleet of 8 workers: one task created at a time,"
            " 20-80 ms apart; latency = the handler's `time.time()` at its start minus the"
            " producer's just after `create` returned. Without wake-ups = the worker sleeps"
            " its poll interval when idle (`PollingOnly` hides `wait_for_work`, or the store"
            " has none). The memory store's row is one process (8 threads), a reference."
            " The split: the lease's `acquired` instant (the store's clock when the claim"
            " that won the task began) against the same two times. Medians over the"
            " repetitions (the configurations take turns in each), max over all.",
            "",
            "| store | wake-ups | poll interval | fleet | picked | p50 ms (each repetition)"
            " | p99 ms | max ms"
            " | create → claim start, p50 / p99 ms | claim start → handler, p50 / p99 ms"
            " | goal (PostgreSQL with NOTIFY, 8 workers: p50 ≤ 5, p99 ≤ 25) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        configs: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for r in pickup:  # in the order run; one row per repetition
            configs[r["backend"], r["worker_wakeups"], r["poll_ms"], r["fleet"]].append(r)
        for (backend, wakes, poll_ms, fleet_text), reps in configs.items():

            def mid(key: str, reps: list[dict[str, Any]] = reps) -> float:
                return median([r.get(key, 0.0) for r in reps])

            p50, p99 = mid("p50_ms"), mid("p99_ms")
            goal = "-"
            if backend == "postgres" and reps[0]["wakeups"] and fleet_text.startswith("8 "):
                goal = f"p50 {_met(p50 <= 5.0)}, p99 {_met(p99 <= 25.0)}" + (
                    "" if wakes else " (the store offered no wake-ups)"
                )
            picked = sum(r["picked"] for r in reps)
            asked = sum(r["tasks"] for r in reps)
            each = " / ".join(f"{r['p50_ms']:.1f}" for r in reps)
            out.append(
                f"| {backend} | {'yes' if wakes else 'no'} | {poll_ms:.0f} ms | {fleet_text} |"
                f" {picked}/{asked} | {p50:.1f} ({each}) | {p99:.1f} |"
                f" {max(r['max_ms'] for r in reps):.1f} | {mid('until_claim_p50_ms'):.1f} /"
                f" {mid('until_claim_p99_ms'):.1f} | {mid('claim_to_handler_p50_ms'):.1f}"
                f" / {mid('claim_to_handler_p99_ms'):.1f} | {goal} |"
            )
        out.append("")
    return out


def write(results: Path, command: str, started: datetime) -> None:
    """Write ``README.md`` and ``plot.png`` in ``results``."""
    lines = [
        "# sagalease benchmarks (issue 8)",
        "",
        f"Generated {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by `{command}`"
        f" (this invocation started {started:%H:%M UTC}; parts not re-run keep their"
        " earlier figures, each with its own load line).",
        "",
        *_machine(),
        "",
        "Reproduce: `uv run --group bench python -m bench.run` (every part, ≈ 12 min; or one"
        " part at a time with `--part NAME`, the report is rebuilt from every part's JSON)"
        " and `uv run --group bench python -m bench.sqlcost > bench/results/sqlcost.txt`."
        " See `bench/README.md` for what is measured and the findings.",
        "",
        "A cycle = `claim_next` + `heartbeat` + `complete` (three write transactions);"
        " raw = the minimal statements with plain `sqlite3`/psycopg on a minimal table"
        " (one conditional `UPDATE ... RETURNING` per operation, no history). Ratios are"
        " taken within one repetition (same database, back to back), then the median."
        " raw+flock = raw SQL serialised by an app-level `flock` writer lock, the contention"
        " method the SQLite store uses; raw+flock+history (SQLite) and raw+history"
        " (PostgreSQL) also append one history row per operation in the same transaction,"
        " the durable work the library does (INV-7). Two cores run the workers and the"
        " database: absolute figures are noisy, the ratios are what counts.",
        "",
    ]
    insert_at = len(lines)
    cyc = _load(results, "cycles")
    summary: list[dict[str, Any]] = []
    if cyc:
        summary = _cycle_table(cyc, lines, "Lease cycle: library against raw SQL")
    checked = _load(results, "contracts-on")
    if checked:
        _cycle_table(
            checked, lines, "Same, with the core's contracts checked (`SAGALEASE_CONTRACTS=1`)"
        )
    extra = _load(results, "postgres-extra")
    if extra:
        rows = extra["rows"]
        lines += [
            "### PostgreSQL: per task, batched, and the Python queues",
            "",
            f"{_load_text(extra)}. Ratios to raw claim + complete at the same worker count"
            " (same repetition). pgqueuer's time runs to its last recorded acknowledgement"
            " (its drain exit idles ~5 s after the queue is empty).",
            "",
            "| method | 1 worker /s | ratio | 8 workers /s | ratio |",
            "|---|---|---|---|---|",
        ]
        methods = [
            ("library claim + complete", "lib", "cc"),
            ("raw claim + complete", "raw", "cc"),
            ("library claim_batch 10 + complete_many (jobs/s)", "lib", "batch10"),
            ("raw claim 10 + complete 10 (jobs/s)", "raw", "batch10"),
            ("pgqueuer, batch 1", "pgqueuer-b1", "noop"),
            ("pgqueuer, batch 10 (default)", "pgqueuer-b10", "noop"),
            ("procrastinate", "procrastinate", "noop"),
        ]
        for label, impl, mode in methods:
            cells = []
            for w in (1, 8):
                rate = _rate(rows, "postgres", mode, w, impl)
                reps = _by([r for r in rows if r["workers"] == w], "rep")
                ratios = []
                for group in reps.values():
                    num = [r["rate"] for r in group if r["impl"] == impl and r["mode"] == mode]
                    den = [r["rate"] for r in group if r["impl"] == "raw" and r["mode"] == "cc"]
                    if num and den:
                        ratios.append(num[0] / den[0])
                cells.append(f"{rate:,.0f} | {median(ratios):.2f}\N{MULTIPLICATION SIGN}")
            lines.append(f"| {label} | {' | '.join(cells)} |")
        lines.append("")
    bat = _load(results, "batches")
    if bat:
        rows = bat["rows"]
        lines += [
            "### Batches of 10: `claim_batch` + `complete_many` against raw SQL (jobs/s)",
            "",
            f"{_load_text(bat)}. Raw: one `UPDATE ... WHERE id IN (SELECT ... LIMIT 10)"
            " RETURNING` claim and one `UPDATE ... WHERE id IN (...)` completion (SKIP LOCKED"
            " on PostgreSQL), no history; the library writes one history entry per task."
            " Median over repetitions.",
            "",
            "Raw with history: the same two statements, each with its ten history rows in"
            " the same transaction (SQLite `BEGIN IMMEDIATE` under the `flock`; PostgreSQL"
            " one statement, a CTE). Target: lib / raw with history ≥ 0.6.",
            "",
            "| backend | workers | lib | raw | ratio | raw+history | **ratio** |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in ("sqlite-NORMAL", "sqlite-FULL", "postgres"):
            for w in sorted({r["workers"] for r in rows if r["backend"] == b}):
                lib = _rate(rows, b, "batch10", w, "lib")
                raw = _rate(rows, b, "batch10", w, "raw")
                ratio = _ratio(rows, b, "batch10", w, "lib", "raw")
                hraw = _rate(rows, b, "batch10", w, "raw-hist")
                hratio = _ratio(rows, b, "batch10", w, "lib", "raw-hist")
                x = "\N{MULTIPLICATION SIGN}"
                lines.append(
                    f"| {b} | {w} | {lib:,.0f} | {raw:,.0f} | {ratio:.2f}{x} | {hraw:,.0f}"
                    f" | **{hratio:.2f}{x}** |"
                )
        lines.append("")
    made = _load(results, "creates")
    if made:
        lines += [
            "### `create_many` against a raw multi-row insert with history (µs per task)",
            "",
            f"{_load_text(made)}. One process; see `bench/creates.py`. Ratio = raw time /"
            " library time in the same repetition, median (target ≥ 0.6).",
            "",
            "| backend | batch | library | raw | **lib / raw** |",
            "|---|---|---|---|---|",
        ]
        for b in TARGETS:
            for size in (100, 1000):
                got = creates.summary(made["rows"], b, size)
                if got["ratio"]:
                    lines.append(
                        f"| {b} | {size} | {got['lib_us']:.1f} | {got['raw_us']:.1f} |"
                        f" **{got['ratio']:.2f}\N{MULTIPLICATION SIGN}** |"
                    )
        lines.append("")
    size = _load(results, "tablesize")
    if size:
        rows = size["rows"]
        sizes = sorted({r["size"] for r in rows})
        lines += [
            "### Claim time against table size (library `claim_next`, µs per claim)",
            "",
            f"{_load_text(size)}. Finished (completed) tasks first, pending ones after them;"
            " rows bulk-inserted with raw SQL into the store's own schema (copies of a"
            " task the store wrote), PostgreSQL `VACUUM ANALYZE`d after the load;"
            " 3 \N{MULTIPLICATION SIGN} 200 claims in one process, median of the"
            " repetition medians.",
            "",
            "| backend | " + " | ".join(f"{s:,}" for s in sizes) + " | largest / 10k |",
            "|---|" + "---|" * (len(sizes) + 1),
        ]
        for b in ("sqlite", "postgres"):
            by = {r["size"]: r for r in rows if r["backend"] == b}
            if not by:
                continue
            cells = [f"{by[s]['claim_us']:.0f}" for s in sizes if s in by]
            ratio = by[sizes[-1]]["claim_us"] / by[sizes[0]]["claim_us"]
            idx = "" if all(r["index_scan"] for r in by.values()) else " (NOT the index)"
            lines.append(
                f"| {b}{idx} | {' | '.join(cells)} | {ratio:.2f}\N{MULTIPLICATION SIGN} (≤ 1.5) |"
            )
        lines.append("")
    fleet = _load(results, "fleet")
    if fleet:
        lines += _fleet_section(fleet)
    instr = _load(results, "instructions")
    if instr:
        lines += _instructions_section(instr)
    prof = _load(results, "profile")
    if prof:
        lines += ["### Where the time goes (cProfile, one library worker)", ""]
        for p in prof["profiles"]:
            lines += [
                f"**{p['label']}**: {p['us_per_cycle']:.0f} µs per cycle under the profiler"
                f" ({p['cycles']} cycles). Cumulative share of the profiled time:",
                "",
                "| function | calls | cumulative | µs per cycle |",
                "|---|---|---|---|",
            ]
            shown = 0
            for e in p["by_cum"]:
                if "cProfile" in e["func"] or "bench/" in e["func"] or "{built-in" in e["func"]:
                    continue
                lines.append(
                    f"| `{_short(e['func'])}` | {e['ncalls']} | {e['cumtime_share']:.0%} |"
                    f" {e['us_per_cycle_cum']:.0f} |"
                )
                shown += 1
                if shown >= 25:
                    break
            lines += [
                "",
                "Own time (tottime), top 12:",
                "",
                "| function | own share |",
                "|---|---|",
            ]
            for e in p["by_own"][:12]:
                lines.append(f"| `{_short(e['func'])}` | {e['tottime_share']:.0%} |")
            lines.append("")
        lines.append("Full listings: `profile-*.txt`.")
        lines.append("")
    sqlcost = results / "sqlcost.txt"
    if sqlcost.exists():
        lines += [
            "### One library heartbeat on SQLite NORMAL, piece by piece (`bench/sqlcost.py`)",
            "",
            "```",
            sqlcost.read_text().rstrip(),
            "```",
            "",
        ]
    lines[insert_at:insert_at] = _targets(cyc, extra, size, bat, made)
    (results / "README.md").write_text("\n".join(lines) + "\n")
    _plot(results, summary, size["rows"] if size else [])


def _instructions_section(data: dict[str, Any]) -> list[str]:
    """The callgrind counts of ``bench.instructions``: per lease cycle, by variant."""
    rows = data["rows"]
    objects = sorted({k for r in rows for k in r["by_object"]})
    lines = [
        "### CPU instructions per lease cycle (callgrind, one process)",
        "",
        f"{_load_text(data)}. `bench/instructions.py`: user-space instructions of the"
        " benchmark process per claim + heartbeat + complete, each durable; (run of"
        f" {rows[0]['large']} cycles - run of {rows[0]['small']}) / the extra cycles."
        " `sql` runs the engine's rendered statements with the parameters built inline"
        " (the library's SQL and schema, without the store's Python). Not counted: the"
        " kernel (writes, fsync, locks) and the PostgreSQL server, which raw SQL pays"
        " too. Exact from run to run, unlike the rates above.",
        "",
        "| backend | variant | per cycle | raw / this | " + " | ".join(objects) + " |",
        "|---|---|---|---|" + "---|" * len(objects),
    ]
    for backend in sorted({r["backend"] for r in rows}):
        mine = {r["variant"]: r for r in rows if r["backend"] == backend}
        raw = mine["raw"]["per_cycle"]
        for variant, row in mine.items():
            cells = " | ".join(f"{row['by_object'].get(k, 0):,.0f}" for k in objects)
            lines.append(
                f"| {backend} | {variant} | {row['per_cycle']:,.0f} |"
                f" {raw / row['per_cycle']:.2f} | {cells} |"
            )
        if "lib" in mine and "sql" in mine:
            lib, sql = mine["lib"]["per_cycle"], mine["sql"]["per_cycle"]
            lines.append(
                f"| {backend} | the store's Python (lib - sql) | {lib - sql:,.0f} |"
                f" {(lib - sql) / lib:.0%} of lib |" + " |" * len(objects)
            )
    lines.append("")
    return lines


def _plot(results: Path, summary: list[dict[str, Any]], sizes: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    backends = [b for b in TARGETS if any(s["backend"] == b for s in summary)]
    workers = sorted({s["workers"] for s in summary})
    width = 0.8 / max(1, len(workers))
    for i, w in enumerate(workers):
        xs = [j + (i - (len(workers) - 1) / 2) * width for j in range(len(backends))]
        ys = [
            next((s["ratio"] for s in summary if s["backend"] == b and s["workers"] == w), 0)
            for b in backends
        ]
        bars = left.bar(xs, ys, width, label=f"{w} worker{'s' if w > 1 else ''}")
        left.bar_label(bars, fmt="%.2f", fontsize=7)
    for j, b in enumerate(backends):
        left.hlines(TARGETS[b], j - 0.45, j + 0.45, colors="red", linestyles="dashed")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_xticks(range(len(backends)), backends)
    left.set_ylabel("library cycles/s ÷ raw SQL cycles/s (same run)")
    left.set_title(
        "Lease cycle, library vs raw SQL, same run\n(red dashes: target at 1 worker;"
        " SQLite at 8 workers: 0.8)",
        fontsize=10,
    )
    left.legend(fontsize=8)
    for b, marker in (("sqlite", "o"), ("postgres", "s")):
        pts = sorted((r["size"], r["claim_us"]) for r in sizes if r["backend"] == b)
        if pts:
            ratio = pts[-1][1] / pts[0][1]
            right.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=marker,
                label=f"{b} (largest / smallest = {ratio:.2f})",
            )
            for x_, y_ in pts:
                right.annotate(
                    f"{y_:.0f} µs",
                    (x_, y_),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=8,
                )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("tasks in the table (finished kept)")
    right.set_ylabel("µs per claim_next")
    right.set_title("Claim time against table size (target: largest / 10k ≤ 1.5)", fontsize=10)
    right.set_ylim(10, 100_000)
    right.set_xlim(5_000, 2_000_000)
    right.grid(True, which="both", alpha=0.3)
    if sizes:
        right.legend()
    fig.tight_layout()
    fig.savefig(results / "plot.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # rebuild the report only
    from datetime import UTC

    write(
        Path(__file__).parent / "results",
        "uv run --group bench python -m bench.report",
        datetime.now(UTC),
    )
    print(os.fspath(Path(__file__).parent / "results" / "README.md"))
