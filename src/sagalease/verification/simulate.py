"""``sagalease simulate``: a fleet of real worker processes on the SQLite default,
under crashes, pauses and failures, then the whole history checked.

The parent creates the tasks with ``create_many`` in batches, in two queues
(``urgent`` at priority 10, ``bulk`` at 0: workers take urgent tasks first),
starts ``workers`` processes (each a :class:`~sagalease.worker.Worker` with
its own store, a fast :class:`~sagalease.worker.RetryPolicy` and both
queues), runs the reaper, and meanwhile SIGKILLs some workers (replaced at
once) and SIGSTOPs others for twice the TTL (zombies: when they wake, their
handler returns and the runtime tries to complete under the old token, which
the store must refuse). Some handlers raise a transient error once or twice
(retried with backoff, then they complete) or ask for a retry
(:class:`~sagalease.errors.Retry`); some fail at once
(:class:`~sagalease.errors.PermanentTaskError`, with or without
compensations); some fail at every attempt (retried, then failed on the last
one); some compensations fail for good (QUARANTINED), some fail once and are
retried, and some tasks kill their worker every time (poison: they run out of
attempts and the reaper quarantines them).

``seed`` fixes every choice (task kinds, compensations, which worker is hit);
the interleaving is the operating system's.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from sagalease.errors import (
    InvalidInputError,
    PermanentCompensationError,
    PermanentTaskError,
    Retry,
    SagaLeaseError,
    StoreUnavailableError,
)
from sagalease.lifecycle import HOLDER_EVENTS, LEASE_STATES
from sagalease.records import Compensation, CompensationStatus, HistoryEntry, NewTask, TaskState
from sagalease.store import SagaStore
from sagalease.stores import SQLiteStore, parse_url
from sagalease.verification.history import Verification, verify_store
from sagalease.worker import LeaseContext, Outcome, RetryPolicy, Worker

__all__ = [
    "QUEUES",
    "RETRY",
    "SimulationReport",
    "SimulationSettings",
    "is_retry",
    "run_simulation",
]

DEFAULT_DB = "sagalease-sim.db"

_KINDS = (
    ("ok", 0.455),
    ("ok-compensable", 0.12),  # registers a compensation while running, then completes
    ("transient", 0.12),  # a transient error at its first 1-2 attempts: retried, completes
    ("retry-after", 0.03),  # raises Retry(after=...) at its first attempt, then completes
    ("fail", 0.05),  # PermanentTaskError with nothing owed: FAILED at once
    ("fail-exhausted", 0.03),  # an error at every attempt: retried, FAILED at the last
    ("fail-compensate", 0.11),  # PermanentTaskError owing compensations: COMPENSATED
    ("fail-flaky", 0.04),  # a compensation fails once (transient), then applies
    ("fail-stuck", 0.03),  # a compensation can never apply: QUARANTINED
    ("poison", 0.015),  # kills its worker each time: attempts exhausted, QUARANTINED
)

QUEUES = {"urgent": 10, "bulk": 0}
"""The simulation's queues and their priorities (every fourth task is urgent)."""

CREATE_BATCH = 50
"""Tasks per ``create_many`` call."""

RETRY = RetryPolicy(
    initial=timedelta(milliseconds=20),
    factor=2.0,
    maximum=timedelta(milliseconds=500),
    jitter=0.1,
)
"""The workers' backoff: fast, so that retries do not lengthen the run."""

RETRY_AFTER = timedelta(milliseconds=30)
"""The delay a ``retry-after`` task asks for."""


class WorkerResult(StrEnum):
    """The results a worker reports (:attr:`sagalease.worker.Outcome.result`)."""

    # The values worker.Outcome documents; an enum of the same shape as
    # records.CompensationStatus, naming other things.

    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    QUARANTINED = "quarantined"
    RETRIED = "retried"
    RELEASED = "released"
    LOST = "lost"
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class _Reported:
    """One outcome as a worker process reports it to the parent."""

    owner: str
    task_id: str
    token: int
    result: WorkerResult
    refused: str | None
    """The holder write the store refused (a fenced outcome)."""

    @classmethod
    def read(cls, line: str) -> _Reported:
        """The outcome a line of a worker's report file holds."""
        data = json.loads(line)
        return cls(**{**data, "result": WorkerResult(data["result"])})


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    """What to simulate. Times in seconds."""

    workers: int = 4
    tasks: int = 200
    seed: int = 0
    ttl: float = 1.0
    work: tuple[float, float] = (0.01, 0.05)
    kills: int | None = None
    """SIGKILLs sent by the simulator (default: tasks // 25, at least 1)."""
    pauses: int | None = None
    """Workers paused past their lease (default: tasks // 25, at least 1)."""
    max_attempts: int = 3
    timeout: float = 120.0

    def validate(self) -> None:
        """Refuse settings that cannot run (InvalidInputError)."""
        if not 1 <= self.workers <= 64:
            raise InvalidInputError("--workers must be between 1 and 64")
        if not 1 <= self.tasks <= 100_000:
            raise InvalidInputError("--tasks must be between 1 and 100000")
        if not 0.2 <= self.ttl <= 60:
            raise InvalidInputError("--ttl must be between 0.2 and 60 seconds")
        if self.timeout <= 0:
            raise InvalidInputError("--timeout must be positive")

    @property
    def kill_budget(self) -> int:
        """Number of SIGKILLs to send."""
        return max(1, self.tasks // 25) if self.kills is None else self.kills

    @property
    def pause_budget(self) -> int:
        """Number of pauses to cause."""
        return max(1, self.tasks // 25) if self.pauses is None else self.pauses


@dataclass(slots=True)
class SimulationReport:
    """What happened, and whether the history passed verification."""

    settings: SimulationSettings
    db: str
    seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    # One counter per figure of to_json: a list of distinct fields, not a copied block.
    workers_started: int = 0
    kills: int = 0
    self_kills: int = 0
    pauses: int = 0
    reaped: int = 0
    reclaims: int = 0
    expirations: int = 0
    zombie_writes_fenced: int = 0
    lost_detected: int = 0
    compensations_applied: int = 0
    compensations_failed: int = 0
    quarantined: int = 0
    retries: int = 0
    create_batches: int = 0
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    verification: Verification = field(default_factory=Verification)

    @property
    def ok(self) -> bool:
        """Whether verification passed."""
        return self.verification.ok

    @property
    def throughput(self) -> float:
        """Tasks ended per second."""
        return self.settings.tasks / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        v = self.verification
        return {
            "result": "PASS" if self.ok else "FAIL",
            "db": self.db,
            "seed": self.settings.seed,
            "workers": self.settings.workers,
            "tasks": self.settings.tasks,
            "ttl_seconds": self.settings.ttl,
            "seconds": round(self.seconds, 3),
            "throughput_tasks_per_second": round(self.throughput, 2),
            "states": self.states,
            "task_kinds": self.kinds,
            "workers_started": self.workers_started,
            "workers_killed": self.kills,
            "workers_killed_by_poison_tasks": self.self_kills,
            "workers_paused_past_lease": self.pauses,
            "leases_expired": self.expirations,
            "reclaims": self.reclaims,
            "reaped": self.reaped,
            "zombie_writes_fenced": self.zombie_writes_fenced,
            "lost_leases_detected_by_handlers": self.lost_detected,
            "compensations_applied": self.compensations_applied,
            "compensations_failed": self.compensations_failed,
            "quarantined": self.quarantined,
            "retries": self.retries,
            "retries_reported_by_workers": self.outcomes.get(WorkerResult.RETRIED.value, 0),
            "create_many_calls": self.create_batches,
            "queues": self.queues,
            "worker_outcomes": self.outcomes,
            "verification": {
                "ok": v.ok,
                "tasks": v.tasks,
                "history_entries": v.entries,
                "acquisitions": v.acquisitions,
                "problems": v.problems[:50],
                "problem_count": len(v.problems),
            },
        }


# ---------------------------------------------------------------- worker processes


def _handler(ctx: LeaseContext) -> None:
    meta = ctx.task.metadata
    kind = meta.get("kind", "ok")
    if kind == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "ok-compensable":
        ctx.register_compensation(Compensation("release-hold", ctx.task_id, "reserved stock"))
    # The "work": a plain sleep, not ctx.sleep, so that a worker paused in the
    # middle comes back as a zombie that tries to complete under its old token.
    time.sleep(float(meta.get("work", 0.02)))
    attempt = ctx.task.attempts
    if kind == "transient" and attempt <= int(meta.get("flakes", 1)):
        raise ConnectionError(f"downstream timed out (attempt {attempt})")
    if kind == "retry-after" and attempt == 1:
        raise Retry("rate limited", after=RETRY_AFTER)
    if kind == "fail-exhausted":
        raise RuntimeError(f"simulated failure at attempt {attempt}")
    if kind.startswith("fail"):
        raise PermanentTaskError(f"simulated failure of {kind}", task_id=ctx.task_id)


def _compensator(ctx: LeaseContext, compensation: Compensation) -> None:
    time.sleep(0.005)
    if compensation.kind == "stuck":
        raise PermanentCompensationError("the target no longer exists", task_id=ctx.task_id)
    if compensation.kind == "flaky" and ctx.task.attempts <= 1:
        raise ConnectionError("downstream timed out (will retry)")


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _worker_main(db: str, owner: str, report: str, ttl: float) -> None:
    """One worker process: work until every task has ended (or SIGTERM). A store
    error ends the process with one line on stderr (the parent replaces it).
    """
    try:
        _work(db, owner, report, ttl)
    except SagaLeaseError as exc:
        print(f"sagalease simulate: worker {owner} stopped: {exc}", file=sys.stderr)
        sys.exit(3)


class _Refusals:
    """A worker's store that notes, per thread, the holder write it refused last: the
    write a "fenced" outcome of that thread reports (the heartbeat thread's refusals
    stay its own).
    """

    def __init__(self, store: SagaStore) -> None:
        self.inner = store
        self._last = threading.local()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in HOLDER_EVENTS:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except SagaLeaseError:
                self._last.event = name
                raise

        return write

    def take(self) -> str | None:
        """The holder write this thread saw refused since the last call, if any."""
        event: str | None = getattr(self._last, "event", None)
        self._last.event = None
        return event


def _work(db: str, owner: str, report: str, ttl: float) -> None:
    store = SQLiteStore(db, timeout=30.0)
    refusals = _Refusals(store)
    out = open(report, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally

    def record(outcome: Outcome) -> None:
        result = WorkerResult(outcome.result)
        seen = _Reported(owner, outcome.task_id, outcome.token, result, refusals.take())
        out.write(json.dumps(asdict(seen)) + "\n")
        out.flush()

    def all_ended() -> bool:
        counts = store.counts()
        return not any(counts[s] for s in TaskState if not s.is_terminal)

    worker = Worker(
        cast(SagaStore, refusals),
        _handler,
        compensator=_compensator,
        owner=owner,
        ttl=timedelta(seconds=ttl),
        heartbeat_interval=timedelta(seconds=ttl / 4),
        poll_interval=timedelta(milliseconds=25),
        shutdown_grace=timedelta(seconds=2),
        on_outcome=record,
        queues=tuple(QUEUES),
        retry=RETRY,
    )
    worker.install_signal_handlers()
    try:
        worker.run(until=all_ended)
    finally:
        out.close()
        store.close()


# ---------------------------------------------------------------- the parent


def _choose(rng: random.Random) -> str:
    roll = rng.random()
    for kind, share in _KINDS:
        if roll < share:
            return kind
        roll -= share
    return "ok"


def _fresh_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            p.unlink()


def _db_path(db: str | None) -> tuple[Path, bool]:
    """The file to use, and whether it is the simulation's own (recreated)."""
    if db is None:
        return Path(DEFAULT_DB).absolute(), True
    parsed = parse_url(db)
    if parsed.path is None:
        raise InvalidInputError(
            f"simulate runs worker processes on SQLite: expected sqlite:///path.db, got {db!r}"
        )
    return parsed.path.absolute(), False


def run_simulation(
    settings: SimulationSettings,
    *,
    db: str | None = None,
    progress: Any = None,
) -> SimulationReport:
    """Run the simulation and verify the history. ``progress`` (optional) is
    called as ``progress(ended, total)`` while it runs.
    """
    settings.validate()
    path, own = _db_path(db)
    if own:
        _fresh_db(path)
    rng = random.Random(settings.seed)
    store = SQLiteStore(path, timeout=30.0)
    report = SimulationReport(settings, f"sqlite:///{path}")
    run_tag = f"{settings.seed}-{os.getpid()}-{int(time.time() * 1000) % 1_000_000:06d}"
    task_ids: list[str] = []
    kinds: Counter[str] = Counter()
    # One of each kind first (so that small runs see every path), then by share.
    planned = [k for k, _ in _KINDS][: settings.tasks]
    planned += [_choose(rng) for _ in range(settings.tasks - len(planned))]
    rng.shuffle(planned)
    batch: list[NewTask] = []
    for i, kind in enumerate(planned):
        kinds[kind] += 1
        comps: list[Compensation] = []
        if kind == "fail-compensate":
            comps = [Compensation("refund", f"order-{i}", "charged")]
            if rng.random() < 0.5:
                comps.append(Compensation("release-hold", f"stock-{i}", "reserved"))
        elif kind == "fail-flaky":
            comps = [Compensation("flaky", f"ledger-{i}", "posted")]
        elif kind == "fail-stuck":
            comps = [
                Compensation("refund", f"order-{i}", "charged"),
                Compensation("stuck", f"vendor-{i}", "booked"),
            ]
        task_id = f"sim-{run_tag}-{i:05d}"
        meta: dict[str, Any] = {"kind": kind, "work": round(rng.uniform(*settings.work), 4)}
        if kind == "transient":
            meta["flakes"] = rng.randint(1, settings.max_attempts - 1)
        queue = "urgent" if i % 4 == 0 else "bulk"
        batch.append(
            NewTask(
                task_id,
                saga_id=f"saga-{i // 10:04d}",
                metadata=meta,
                compensations=tuple(comps),
                max_attempts=settings.max_attempts,
                queue=queue,
                priority=QUEUES[queue],
            )
        )
        task_ids.append(task_id)
        if len(batch) == CREATE_BATCH or i == len(planned) - 1:
            store.create_many(batch)
            report.create_batches += 1
            batch = []
    report.kinds = dict(sorted(kinds.items()))

    reports_dir = Path(f"{path}.workers")
    reports_dir.mkdir(exist_ok=True)
    for old in reports_dir.glob(f"{run_tag}-*.jsonl"):
        old.unlink()
    ctx = multiprocessing.get_context("spawn")
    procs: dict[str, multiprocessing.process.BaseProcess] = {}
    killed_by_us: set[str] = set()
    # owner -> the timer that resumes it. Resuming runs on its own thread: a worker
    # stopped while holding the writer lock blocks this loop's reaper until resumed.
    paused: dict[str, threading.Timer] = {}
    counter = 0

    def spawn() -> None:
        nonlocal counter
        counter += 1
        owner = f"w{counter:03d}"
        proc = ctx.Process(
            target=_worker_main,
            args=(str(path), owner, str(reports_dir / f"{run_tag}-{owner}.jsonl"), settings.ttl),
            name=f"sagalease-sim-{owner}",
            daemon=True,
        )
        proc.start()
        procs[owner] = proc
        report.workers_started += 1

    start = time.monotonic()
    for _ in range(settings.workers):
        spawn()
    kills_left = settings.kill_budget
    pauses_left = settings.pause_budget
    chaos = random.Random(rng.random())
    # Hit the fleet at evenly spread points of progress (5% .. 85% of tasks ended).
    events = kills_left + pauses_left
    milestones = [int(settings.tasks * (0.05 + 0.8 * i / max(1, events))) for i in range(events)]
    tick = 0.05
    next_reap = 0.0
    ended = 0
    try:
        while True:
            now = time.monotonic()
            if now - start > settings.timeout:
                break
            for owner, timer in list(paused.items()):
                if not timer.is_alive():
                    del paused[owner]
            # Replace dead workers (killed by us, or by a poison task).
            for owner, proc in list(procs.items()):
                if not proc.is_alive() and owner not in paused:
                    proc.join()
                    del procs[owner]
                    if proc.exitcode == -signal.SIGKILL and owner not in killed_by_us:
                        report.self_kills += 1
                    if ended < settings.tasks:
                        spawn()
            try:
                if now >= next_reap:
                    report.reaped += len(store.reap())
                    next_reap = now + settings.ttl / 4
                counts = store.counts()
            except StoreUnavailableError:
                continue  # the writer lock is held by a paused worker: wait for it
            ended = sum(n for s, n in counts.items() if s.is_terminal)
            if progress is not None:
                progress(ended, settings.tasks)
            if ended >= settings.tasks:
                break
            if (kills_left or pauses_left) and milestones and ended >= milestones[0]:
                # Hit workers that hold a lease (most likely inside a handler), but not
                # over a poison task: that worker is about to kill itself, and the
                # report counts those deaths apart.
                holders = {
                    t.lease.owner
                    for state in LEASE_STATES
                    for t in store.list_tasks(state=state, limit=10_000)
                    if t.lease is not None and t.metadata.get("kind") != "poison"
                }
                live = sorted(
                    o for o, p in procs.items() if p.is_alive() and o not in paused and o in holders
                )
                if live:
                    victim = chaos.choice(live)
                    pid = procs[victim].pid
                    assert pid is not None
                    milestones.pop(0)
                    do_kill = kills_left and (not pauses_left or chaos.random() < 0.5)
                    if do_kill:
                        os.kill(pid, signal.SIGKILL)
                        killed_by_us.add(victim)
                        kills_left -= 1
                        report.kills += 1
                    else:
                        os.kill(pid, signal.SIGSTOP)
                        timer = threading.Timer(2 * settings.ttl, _resume, (pid,))
                        timer.daemon = True
                        timer.start()
                        paused[victim] = timer
                        pauses_left -= 1
                        report.pauses += 1
            time.sleep(tick)
    finally:
        for timer in paused.values():
            timer.cancel()
        for proc in procs.values():
            if proc.pid is not None and proc.is_alive():
                _resume(proc.pid)
        deadline = time.monotonic() + 5 * settings.ttl + 5
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join()
    report.seconds = time.monotonic() - start
    if progress is not None:
        counts = store.counts()
        progress(sum(n for s, n in counts.items() if s.is_terminal), settings.tasks)

    outcomes: list[_Reported] = []
    for file in sorted(reports_dir.glob(f"{run_tag}-*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                outcomes.append(_Reported.read(line))
            except json.JSONDecodeError:  # a worker killed mid-line
                continue
        file.unlink()
    with contextlib.suppress(OSError):
        reports_dir.rmdir()
    results = Counter(o.result for o in outcomes)
    report.outcomes = dict(sorted(results.items()))
    report.zombie_writes_fenced = results[WorkerResult.FENCED]
    report.lost_detected = results[WorkerResult.LOST]

    report.verification = verify_store(store, task_ids=task_ids)
    _cross_check(store, outcomes, report.verification)
    states: Counter[str] = Counter()
    per_queue: dict[str, Counter[str]] = {q: Counter() for q in QUEUES}
    for task_id in task_ids:
        task = store.get(task_id)
        if task is None:
            continue
        states[task.state.value] += 1
        per_queue.setdefault(task.queue, Counter())[task.state.value] += 1
        report.retries += sum(is_retry(e) for e in store.history(task_id))
        report.expirations += task.expirations
        report.compensations_applied += sum(
            c.status is CompensationStatus.APPLIED for c in task.compensations
        )
        report.compensations_failed += sum(
            c.status is CompensationStatus.FAILED for c in task.compensations
        )
    report.states = {s.value: states[s.value] for s in TaskState if states[s.value]}
    report.quarantined = states[TaskState.QUARANTINED.value]
    report.queues = {
        queue: {
            "priority": QUEUES.get(queue),
            "tasks": sum(ended.values()),
            "states": {s.value: ended[s.value] for s in TaskState if ended[s.value]},
        }
        for queue, ended in per_queue.items()
    }
    report.reclaims = report.verification.reclaims
    store.close()
    return report


def is_retry(entry: HistoryEntry) -> bool:
    """Whether a history entry is a retry: a ``release`` whose reason is the
    worker's ``retry N/M in S: ...`` (after a handler's or compensator's error, or
    a ``Retry``); not a shutdown's or another hand-back's release.
    """
    return entry.event == "release" and (entry.reason or "").startswith("retry ")


_WRITE_OF = {
    WorkerResult.RETRIED: "release",
    WorkerResult.COMPLETED: "complete",
    WorkerResult.FAILED: "fail",
    WorkerResult.COMPENSATING: "fail",
    WorkerResult.COMPENSATED: "compensation_applied",
    WorkerResult.QUARANTINED: "compensation_failed",
}
"""The write a reported result says was done."""

_ONCE_PER_TOKEN = ("complete", "fail")
"""Forward-phase writes that end the caller's lease: under one token at most one of
them is made, so one the store refused cannot be in the history."""


def _cross_check(store: SQLiteStore, outcomes: list[_Reported], into: Verification) -> None:
    """What the workers saw agrees with the history: every write they report as
    done is there under their (owner, token); no write they saw fenced is.
    """
    histories: dict[str, list[tuple[str, str | None, int | None]]] = {}

    def entries(task_id: str) -> list[tuple[str, str | None, int | None]]:
        if task_id not in histories:
            histories[task_id] = [(e.event, e.owner, e.token) for e in store.history(task_id)]
        return histories[task_id]

    for o in outcomes:
        recorded = {(ev, tok) for ev, own, tok in entries(o.task_id) if own == o.owner}
        done = _WRITE_OF.get(o.result)
        if done is not None and (done, o.token) not in recorded:
            into.problems.append(
                f"{o.task_id}: worker {o.owner} reported {o.result} under token {o.token},"
                " but the history has no such write"
            )
        if o.refused in _ONCE_PER_TOKEN and (o.refused, o.token) in recorded:
            into.problems.append(
                f"{o.task_id}: worker {o.owner}'s {o.refused} under token {o.token} was"
                " refused, yet the history records it"
            )
