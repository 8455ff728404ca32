"""The chaos suite's fleet: real worker processes (the :class:`~sagalease.Worker`
runtime) and a reaper process over one store, the parent that feeds them tasks and
injects faults, and the checks every scenario ends with.

Each child is ``python -c "from chaos._fleet import child_main; child_main()"`` with a
JSON spec in argv. It reports on its stdout (a pipe: no file size limit or full disk
touches it, and a SIGKILL loses at most a half line), one JSON object a line:

- ``claim``: a lease it was granted (task, token, expires_us);
- ``begin``: a holder write it is about to send;
- ``ok``: a holder write the store reported done (with the lease's expiry after it);
- ``refused``: a holder write the store refused as fenced, with the instant of the
  refusal in the store's time frame (the worker's own clock, or the server's);
- ``outcome``: how the worker believes the task ended (``Outcome.result``);
- ``reap``, ``crash``, ``open-failed``: the reaper's work, a traceback, a store
  that could not be opened.

The checks (:func:`check`) read these logs against the history: every write a worker
believes done is in the history under its (owner, token) -- one that is not, when a
later token of the task had been granted before the worker was answered (the later
claim's log line comes first), is a *stale write accepted*; else (its lease was still
the task's last one) a *lost write*. A refusal before the lease's last granted expiry
(in its own frame) is a *lease dropped early*.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sagalease import (
    Compensation,
    LeaseConflictError,
    LeaseContext,
    NewTask,
    Outcome,
    PermanentTaskError,
    RetryPolicy,
    SagaLeaseError,
    SagaStore,
    SQLiteStore,
    StoreUnavailableError,
    TaskState,
    TerminalTaskError,
)
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.verification.history import Verification, verify_store

TESTS_DIR = Path(__file__).resolve().parents[1]

LONG = os.environ.get("SAGALEASE_CHAOS") == "long"
"""``SAGALEASE_CHAOS=long``: ten times the tasks and the faults."""

SCALE = 10 if LONG else 1

GUARD = 180.0 * SCALE
"""Seconds after which a scenario is a hang (never a tested threshold)."""

FINISHING = ("complete", "fail", "release", "compensation_applied", "compensation_failed")

_RETRY = {"initial_us": 20_000, "factor": 2.0, "maximum_us": 300_000, "jitter": 0.1}


def wall_us() -> int:
    """The machine's real UTC clock, in microseconds."""
    return time.time_ns() // 1000


class SkewedClock:
    """The machine's clock ``skew`` seconds off (an injected clock, see sagalease.clock)."""

    def __init__(self, skew: float) -> None:
        self.skew_us = round(skew * 1_000_000)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(microseconds=self.skew_us)

    def now_us(self) -> int:
        return wall_us() + self.skew_us


# ---------------------------------------------------------------- the child processes


def _emit(**fields: Any) -> None:
    fields["wall_us"] = wall_us()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def open_child_store(spec: dict[str, Any]) -> SagaStore:
    """The store a child (or a broken variant) works on, as the spec says."""
    clock = SkewedClock(spec.get("skew", 0.0))
    if spec["backend"] == "sqlite":
        return SQLiteStore(spec["path"], clock=clock, timeout=spec.get("timeout", 2.0))
    from sagalease.stores.postgres import PostgresStore

    return PostgresStore(
        spec["dsn"],
        schema=spec["schema"],
        clock="database" if spec.get("clock") == "database" else clock,
        connect_timeout=spec.get("connect_timeout", 5.0),
        timeout=spec.get("timeout", 3.0),
        min_size=1,
        max_size=2,
    )


class Recorder:
    """Wraps a child's store: every claim and holder write, and its answer, goes to
    stdout (see the module documentation). ``frame_now`` is the instant in the
    store's time frame.
    """

    def __init__(self, inner: SagaStore, frame_now: Callable[[], int]) -> None:
        self.inner = inner
        self.frame_now = frame_now

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("claim_next", "acquire"):

            def claim(*args: Any, **kwargs: Any) -> Any:
                task = attr(*args, **kwargs)
                if task is not None and task.lease is not None:
                    _emit(
                        ev="claim",
                        task=task.task_id,
                        owner=task.lease.owner,
                        token=task.lease.token,
                        expires_us=task.lease.expires_us,
                    )
                return task

            return claim
        if name not in HOLDER_EVENTS:
            return attr

        def write(task_id: str, **kwargs: Any) -> Any:
            what = {
                "event": name,
                "task": task_id,
                "owner": kwargs.get("owner"),
                "token": kwargs.get("token"),
                "index": kwargs.get("index"),
            }
            _emit(ev="begin", **what)
            try:
                task = attr(task_id, **kwargs)
            except (LeaseConflictError, TerminalTaskError) as exc:
                _emit(ev="refused", frame_us=self.frame_now(), error=type(exc).__name__, **what)
                raise
            except StoreUnavailableError as exc:
                _emit(ev="unavailable", error=str(exc)[:200], **what)
                raise
            lease = task.lease
            _emit(ev="ok", expires_us=None if lease is None else lease.expires_us, **what)
            return task

        return write


def _handler(ctx: LeaseContext) -> None:
    meta = ctx.task.metadata or {}
    # A plain sleep, not ctx.sleep: a worker paused in the middle wakes as a zombie
    # that tries to complete under its old token.
    time.sleep(float(meta.get("work", 0.05)))
    kind = meta.get("kind", "ok")
    if kind == "transient" and ctx.task.attempts == 1:
        raise ConnectionError("downstream timed out")
    if kind == "fail":
        raise PermanentTaskError("the account is closed", task_id=ctx.task_id)


def _compensator(_ctx: LeaseContext, _comp: Compensation) -> None:
    time.sleep(0.01)


def _all_ended(store: SagaStore, done_file: str) -> Callable[[], bool]:
    """Whether the parent said the run is over and every task ended."""

    def ended() -> bool:
        if not os.path.exists(done_file):
            return False
        try:
            counts = store.counts()
        except SagaLeaseError:
            return False
        return not any(counts[s] for s in TaskState if not s.is_terminal)

    return ended


def child_main() -> None:
    """A worker or reaper process (argv[1]: its JSON spec)."""
    spec: dict[str, Any] = json.loads(sys.argv[1])
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit: EFBIG, not death
    try:
        sys.exit(_child(spec))
    except SystemExit:
        raise
    except BaseException as exc:
        _emit(ev="crash", error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc()[-3000:])
        sys.exit(4)


def _child(spec: dict[str, Any]) -> int:
    from chaos import broken

    variant = spec.get("variant")
    try:
        inner = broken.open_store(spec) if variant else open_child_store(spec)
    except StoreUnavailableError as exc:
        _emit(ev="open-failed", error=str(exc)[:300], kind=type(exc).__name__)
        return 3
    database = spec["backend"] == "postgresql" and spec.get("clock") == "database"
    skewed = SkewedClock(spec.get("skew", 0.0))
    store: Any = Recorder(inner, wall_us if database else skewed.now_us)
    try:
        if spec["role"] == "reaper":
            return _reaper(store, spec)
        worker_cls = broken.worker_class(variant)
        owner = spec["owner"]

        def outcome(o: Outcome) -> None:
            _emit(ev="outcome", task=o.task_id, owner=owner, token=o.token, result=o.result)

        ttl = timedelta(seconds=spec["ttl"])
        worker = worker_cls(
            store,
            _handler,
            compensator=_compensator,
            owner=owner,
            ttl=ttl,
            heartbeat_interval=ttl / 4,
            poll_interval=timedelta(milliseconds=20),
            shutdown_grace=timedelta(seconds=1),
            on_outcome=outcome,
            retry=RetryPolicy(
                initial=timedelta(microseconds=_RETRY["initial_us"]),
                factor=_RETRY["factor"],
                maximum=timedelta(microseconds=_RETRY["maximum_us"]),
                jitter=_RETRY["jitter"],
            ),
            rng=random.Random(spec.get("seed", 0)),
        )
        worker.install_signal_handlers()
        worker.run(until=_all_ended(inner, spec["done_file"]))
        _emit(ev="exit")
        return 0
    finally:
        with contextlib.suppress(SagaLeaseError):
            inner.close()


def _reaper(store: Any, spec: dict[str, Any]) -> int:
    from chaos import broken

    ended = _all_ended(store.inner, spec["done_file"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    reap = broken.reap_call(spec.get("variant"), spec["ttl"])
    while not stop.is_set():
        try:
            changed = reap(store.inner)
            _emit(ev="reap", n=len(changed), tasks=[t.task_id for t in changed])
            if ended():
                break
        except StoreUnavailableError as exc:
            _emit(ev="reap-unavailable", error=str(exc)[:200])
        stop.wait(spec["ttl"] / 4)
    _emit(ev="exit")
    return 0


# ---------------------------------------------------------------- the parent


@dataclass
class Fault:
    """One injected fault: what, when it ended (wall µs) and the tasks it hit
    (``None``: the whole fleet). The recovery is the time from ``end_us`` to the
    first successful claim or holder write on those tasks.
    """

    kind: str
    end_us: int
    tasks: frozenset[str] | None = None
    after: str | None = None
    """Only events of another owner than this one count as the recovery."""
    reaper: bool = False
    """The recovery is the next successful reap."""


@dataclass
class Child:
    role: str
    owner: str
    proc: subprocess.Popen[str]
    spec: dict[str, Any]
    paused: bool = False
    replaced: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)


class Fleet:
    """Worker processes and a reaper over one store; the parent feeds tasks and
    replaces children that exit before every task ended.
    """

    def __init__(
        self,
        name: str,
        base_spec: dict[str, Any],
        parent_store: Callable[[], SagaStore],
        *,
        workers: int = 3,
        ttl: float = 1.0,
        skews: Iterable[float] = (),
        variant: str | None = None,
        work: tuple[float, float] = (0.02, 0.08),
        logs: Path,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.done_file = logs / "DONE"
        self.base = {**base_spec, "ttl": ttl, "done_file": str(self.done_file)}
        self.ttl = ttl
        self.variant = variant
        self.work = work
        self.rng = random.Random(seed)
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self._open_parent = parent_store
        self.store = parent_store()
        self.skews = list(skews) + [0.0] * max(0, workers - len(list(skews)))
        self.workers_wanted = workers
        self.children: list[Child] = []
        self.lock = threading.RLock()
        self.task_ids: list[str] = []
        self.faults: list[Fault] = []
        self.listeners: list[Callable[[Child, dict[str, Any]], None]] = []
        self.respawn = True
        self._counter = 0
        self._readers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, daemon=True)

    # -- children

    def spawn(self, role: str = "worker", skew: float = 0.0) -> Child:
        with self.lock:
            self._counter += 1
            owner = f"{self.name}-{role[0]}{self._counter:03d}"
            spec = {
                **self.base,
                "role": role,
                "owner": owner,
                "skew": skew,
                "variant": self.variant,
                "seed": self._counter,
            }
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path[1:]])}
            stderr = open(self.logs / f"{owner}.stderr", "w", encoding="utf-8")  # noqa: SIM115
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from chaos._fleet import child_main; child_main()",
                    json.dumps(spec),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=str(TESTS_DIR),
            )
            stderr.close()
            child = Child(role, owner, proc, spec)
            self.children.append(child)
        reader = threading.Thread(target=self._read, args=(child,), daemon=True)
        reader.start()
        self._readers.append(reader)
        return child

    def _read(self, child: Child) -> None:
        assert child.proc.stdout is not None
        with child.proc.stdout as stream:
            self._lines(child, stream)

    def _lines(self, child: Child, stream: Iterable[str]) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half line: the process was killed while writing it
            event["child"] = child.owner
            with self.lock:
                child.events.append(event)
                listeners = list(self.listeners)
            for listener in listeners:
                listener(child, event)

    def start(self) -> None:
        for skew in self.skews:
            self.spawn("worker", skew)
        self.spawn("reaper")
        self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            with self.lock:
                for child in list(self.children):
                    if child.paused or child.proc.poll() is None or child.replaced:
                        continue
                    child.replaced = True
                    if self.respawn and not self._done_cached:
                        self.spawn(child.role, child.spec["skew"])

    _done_cached = False

    def live(self, role: str = "worker") -> list[Child]:
        with self.lock:
            return [
                c
                for c in self.children
                if c.role == role and c.proc.poll() is None and not c.paused
            ]

    def holders(self) -> dict[str, str]:
        """Owner -> a task it holds now (its last claim with no outcome since)."""
        held: dict[str, str] = {}
        with self.lock:
            for c in self.children:
                last: str | None = None
                for e in c.events:
                    if e["ev"] == "claim":
                        last = e["task"]
                    elif e["ev"] == "outcome" and e["task"] == last:
                        last = None
                if last is not None:
                    held[c.owner] = last
        return held

    # -- tasks

    def feed(self, count: int) -> None:
        """Create ``count`` tasks (retried while the store is away)."""
        batch: list[NewTask] = []
        for _ in range(count):
            i = len(self.task_ids) + len(batch)
            roll = self.rng.random()
            kind = "ok" if roll < 0.8 else "transient" if roll < 0.9 else "fail"
            comps = (Compensation("refund", f"order-{i}"),) if kind == "fail" else ()
            meta = {"kind": kind, "work": round(self.rng.uniform(*self.work), 4)}
            batch.append(
                NewTask(f"{self.name}-{i:05d}", metadata=meta, compensations=comps, max_attempts=8)
            )
        end = time.monotonic() + GUARD
        while True:
            try:
                self.store.create_many(batch)
                break
            except StoreUnavailableError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
                self._reopen()
        self.task_ids += [t.task_id for t in batch]

    def _reopen(self) -> None:
        with contextlib.suppress(SagaLeaseError):
            self.store.close()
        with contextlib.suppress(SagaLeaseError):
            self.store = self._open_parent()

    def ended(self) -> bool:
        try:
            counts = self.store.counts()
        except SagaLeaseError:
            return False
        return not any(counts[s] for s in TaskState if not s.is_terminal)

    def wait_ended(self, timeout: float | None = None) -> bool:
        end = time.monotonic() + (GUARD if timeout is None else timeout)
        while time.monotonic() < end:
            if self.ended():
                self._done_cached = True
                return True
            time.sleep(0.1)
        return False

    def wait_progress(self, events: int, timeout: float | None = None) -> None:
        """Wait until ``events`` more holder writes succeeded (the fleet is working),
        at most ``timeout`` seconds (``None``: :data:`GUARD`).
        """
        start = self.count("ok")
        end = time.monotonic() + (GUARD if timeout is None else timeout)
        while self.count("ok") < start + events and time.monotonic() < end:
            time.sleep(0.02)

    def count(self, ev: str) -> int:
        with self.lock:
            return sum(1 for c in self.children for e in c.events if e["ev"] == ev)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for c in self.children for e in c.events]

    # -- faults

    def pause(self, child: Child, seconds: float) -> None:
        """SIGSTOP ``child`` for ``seconds`` (a zombie when it wakes)."""
        with self.lock:
            child.paused = True
        os.kill(child.proc.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(child.proc.pid, signal.SIGCONT)
        with self.lock:
            child.paused = False

    def kill(self, child: Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float | None = None) -> bool:
        """Wait for every task to end and every child to exit."""
        ok = self.wait_ended(timeout)
        self._done_cached = True
        self.done_file.touch()
        self._stop.set()
        self._monitor.join()
        end = time.monotonic() + 30
        with self.lock:
            children = list(self.children)
        for c in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, signal.SIGCONT)
            if not ok:
                c.proc.terminate()
            try:
                c.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
        for reader in self._readers:
            reader.join(10)
        return ok

    def close(self) -> None:
        with contextlib.suppress(SagaLeaseError):
            self.store.close()


# ---------------------------------------------------------------- the checks


@dataclass
class ChaosResult:
    """What a scenario's checks found."""

    scenario: str
    tasks: int
    faults: int
    verification: Verification
    not_terminal: list[str]
    lost_writes: list[str]
    stale_accepted: list[str]
    early_drops: list[str]
    crashes: list[str]
    recoveries: list[float]
    stderr: list[str] = field(default_factory=list)
    """Lines the children printed to stderr (driver noise, tracebacks: none expected)."""

    @property
    def lost(self) -> int:
        return len(self.not_terminal) + len(self.lost_writes)

    def table_row(self) -> dict[str, Any]:
        rec = sorted(self.recoveries)
        return {
            "scenario": self.scenario,
            "tasks": self.tasks,
            "faults": self.faults,
            "lost": self.lost,
            "stale": len(self.stale_accepted),
            "early": len(self.early_drops),
            "p50": statistics.median(rec) if rec else None,
            "max": rec[-1] if rec else None,
            "verify": "PASS" if self.verification.ok else "FAIL",
        }

    def problems(self, *, early_ok: bool = False) -> list[str]:
        found = [f"verify: {p}" for p in self.verification.problems[:20]]
        found += [f"not terminal: {t}" for t in self.not_terminal[:20]]
        found += [f"lost write: {w}" for w in self.lost_writes[:20]]
        found += [f"stale write accepted: {w}" for w in self.stale_accepted[:20]]
        found += [f"worker crashed: {c}" for c in self.crashes[:5]]
        found += [f"stderr: {line}" for line in self.stderr[:10]]
        if not early_ok:
            found += [f"lease dropped while live: {d}" for d in self.early_drops[:20]]
        return found


_BELIEF = {
    "completed": "complete",
    "failed": "fail",
    "compensating": "fail",
    "compensated": "compensation_applied",
    "quarantined": "compensation_failed",
    "retried": "release",
}
"""The write an outcome says was done."""


def check(fleet: Fleet, scenario: str) -> ChaosResult:
    """The end of every scenario: the history verified, the workers' logs against it,
    the recovery after each fault.
    """
    store = fleet.store
    for _ in range(50):
        try:
            store.counts()
            break
        except SagaLeaseError:
            time.sleep(0.2)
            fleet._reopen()
            store = fleet.store
    ids = fleet.task_ids
    verification = verify_store(store, task_ids=ids, require_terminal=False)
    not_terminal = []
    history: dict[str, list[Any]] = {}
    for tid in ids:
        task = store.get(tid)
        if task is None or not task.is_terminal:
            not_terminal.append(f"{tid} ({'missing' if task is None else task.state.value})")
        history[tid] = store.history(tid)
    events = fleet.events()
    lost: list[str] = []
    stale: list[str] = []
    beliefs: list[tuple[str, str, str, int, Any, int]] = []
    claimed: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        if e["ev"] == "ok":
            what = (e["task"], e["event"], e["owner"], e["token"], e.get("index"), e["wall_us"])
            beliefs.append(what)
        elif e["ev"] == "outcome" and e["result"] in _BELIEF:
            what = (e["task"], _BELIEF[e["result"]], e["owner"], e["token"], None, e["wall_us"])
            beliefs.append(what)
        elif e["ev"] == "claim":
            claimed.setdefault(e["task"], []).append((e["token"], e["wall_us"]))
    for tid, event, owner, token, index, at_us in beliefs:
        entries = history.get(tid, [])
        if any(
            h.event == event
            and h.owner == owner
            and h.token == token
            and (index is None or h.args.get("index") == index)
            for h in entries
        ):
            continue
        said = f"{tid}: {event} by {owner} under token {token}"
        later = [w for t, w in claimed.get(tid, []) if t > token]
        if later and min(later) <= at_us:
            stale.append(said + " (answered after a later token was granted)")
        elif not later and any(h.event == "acquire" and (h.token or 0) > token for h in entries):
            stale.append(said + " (the history holds a later token)")
        else:
            lost.append(said + " (not in the history)")
    for p in verification.problems:
        if "but the lease was" in p or "after its lease expired" in p:
            stale.append(f"history: {p}")
    granted: dict[tuple[str, str, int], int] = {}
    early: list[str] = []
    for e in sorted(events, key=lambda e: e["wall_us"]):
        key = (e.get("task", ""), e.get("owner", ""), e.get("token") or 0)
        if e["ev"] in ("claim", "ok") and e.get("expires_us"):
            granted[key] = max(granted.get(key, 0), e["expires_us"])
        elif (
            e["ev"] == "refused"
            and key in granted
            and e["frame_us"] < granted[key]
            and not _ended_by(history.get(key[0], []), key[1], key[2])
        ):
            early.append(
                f"{key[0]}: {e['event']} of {key[1]} token {key[2]} refused"
                f" {(granted[key] - e['frame_us']) / 1e6:.3f}s before its granted expiry"
            )
    crashes = [f"{e['child']}: {e['error']}" for e in events if e["ev"] == "crash"]
    return ChaosResult(
        scenario,
        len(ids),
        len(fleet.faults),
        verification,
        not_terminal,
        lost,
        stale,
        early,
        crashes,
        recoveries(fleet, events),
        [
            f"{path.stem}: {line}"
            for path in sorted(fleet.logs.glob("*.stderr"))
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip()
        ],
    )


def _ended_by(entries: list[Any], owner: str, token: int) -> bool:
    """Whether the lease (owner, token) ended by its own finishing write (a heartbeat
    racing it is then refused, rightly: the holder itself let go).
    """
    return any(h.event in FINISHING and (h.owner, h.token) == (owner, token) for h in entries)


def recoveries(fleet: Fleet, events: list[dict[str, Any]]) -> list[float]:
    """Seconds from each fault's end to the first success on what it hit."""
    found = []
    for fault in fleet.faults:
        kinds = ("reap",) if fault.reaper else ("ok", "claim")
        first = min(
            (
                e["wall_us"]
                for e in events
                if e["ev"] in kinds
                and e["wall_us"] >= fault.end_us
                and (fault.tasks is None or e.get("task") in fault.tasks)
                and (fault.after is None or e.get("child") != fault.after)
            ),
            default=None,
        )
        if first is not None:
            found.append((first - fault.end_us) / 1e6)
    return found


def run_plan(
    fleet: Fleet, plan: Callable[[Fleet], None], scenario: str, *, within: float | None = None
) -> ChaosResult:
    """Start the fleet, run the fault plan, wait for the end (at most ``within``
    seconds, ``None``: :data:`GUARD`; then the tasks not ended are counted lost), check.
    """
    fleet.start()
    try:
        plan(fleet)
        fleet.finish(within)
        return check(fleet, scenario)
    finally:
        fleet.respawn = False
        with fleet.lock:
            for c in fleet.children:
                if c.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(c.proc.pid, signal.SIGCONT)
                    c.proc.kill()
                c.proc.wait()
        for reader in fleet._readers:
            reader.join(10)
        fleet.close()


def report(result: ChaosResult) -> str:
    row = result.table_row()

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    return (
        f"chaos {row['scenario']}: tasks={row['tasks']} faults={row['faults']}"
        f" lost={row['lost']} stale_accepted={row['stale']} early_takeovers={row['early']}"
        f" verify={row['verify']} recovery p50={fmt(row['p50'])} max={fmt(row['max'])}"
    )
