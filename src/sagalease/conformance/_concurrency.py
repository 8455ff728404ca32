"""The real-concurrency stage: threads (and processes, where the backend author
declared that the store can be shared across processes) race on a few tasks.

Every call is recorded with its real-time interval (``time.monotonic_ns``, shared
by the processes of one machine), its logical ``now`` and its result. The recorded
history is then checked:

* INV-1: no two leases on one task overlap in logical time (a lease lives from its
  grant until its expiry, extended by heartbeats, or until its holder ended it);
* INV-2: the tokens granted per task are exactly 1..n, a grant that finished
  before another started has the smaller token, and every successful holder call
  presented a granted (owner, token) that no later grant had replaced before the
  call began;
* INV-7: the acquisitions in the store's history are the grants seen by callers,
  and every history replays to its record;
* INV-9: a claim that named queues leased a task of one of them;
* INV-1 (linearizability): a Wing-Gong-Lowe search finds a sequential order of the
  calls, consistent with their real-time order, in which the memory reference's
  transition functions (claims by priority, then creation order, over the queues
  named) give every caller exactly the result it got.

Besides, threads claim from a queue while one ``create_many`` fills it: every count
they read of that queue shows none of the batch or all of it (INV-11), and no task is
granted twice under one token (INV-1).
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any

from sagalease import core
from sagalease.conformance._common import (
    SEC,
    T0_US,
    Capabilities,
    ConformanceFailure,
    StoreFactory,
    describe,
    record_difference,
    violated,
)
from sagalease.errors import SagaLeaseError
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.records import Compensation, TaskSaga, from_us
from sagalease.store import EVENT_OF_METHOD, SagaStore
from sagalease.stores.memory import MemoryStore
from sagalease.verification.calls import Chosen, core_args, new_task, store_args, store_form

__all__ = ["linearizable", "run_processes", "run_threads"]

TASK_IDS = ("c0", "c1", "c2")
QUEUE_OF = {"c0": ("qa", 0), "c1": ("qb", 1), "c2": ("qa", 1)}
"""Each raced task's queue and priority: c2 outranks c0 in qa, created after it."""
CLAIM_QUEUES: tuple[str | tuple[str, ...] | None, ...] = (None, None, "qa", "qb", ("qa", "qb"))
"""What a claim names (``None``: the argument left out)."""
_GRANTS = frozenset(method for method, event in EVENT_OF_METHOD.items() if event == "acquire")
"""The store methods that hand out leases (the workers here use acquire and claim_next)."""


class Outcome(Enum):
    """How a recorded call ended."""

    OK = "ok"
    REFUSED = "refused"  # a SagaLeaseError
    ERROR = "error"  # any other exception: a broken store


@dataclass(frozen=True)
class Unexpected:
    """What a call raised that is not a SagaLeaseError."""

    error: str

    def __str__(self) -> str:
        return self.error


@dataclass(frozen=True)
class Op:
    """One recorded call."""

    worker: int
    start: int
    end: int
    method: str
    task_id: str | None
    now_us: int
    kwargs: tuple[tuple[str, Any], ...]
    ok: bool
    value: Any
    """The returned record/list/None, or the error's type name, or an :class:`Unexpected`."""

    @property
    def outcome(self) -> Outcome:
        """How the call ended."""
        if self.ok:
            return Outcome.OK
        return Outcome.ERROR if isinstance(self.value, Unexpected) else Outcome.REFUSED

    def describe(self) -> str:
        """The call as text, with what it returned."""
        args = () if self.task_id is None else (self.task_id,)
        kw = store_form({**dict(self.kwargs), "now_us": self.now_us})
        if self.outcome is Outcome.OK:
            if isinstance(self.value, TaskSaga):
                result = f"ok token {self.value.token}"
            else:
                result = f"ok {self.value!r}"[:60]
        else:
            result = f"raised {self.value}"
        return f"worker {self.worker}: {describe(self.method, args, kw)} -> {result}"


# ---------------------------------------------------------------- running workers


def _call(
    store: SagaStore, method: str, task_id: str | None, now_us: int, kw: dict[str, Any]
) -> Any:
    args = () if task_id is None else (task_id,)
    return getattr(store, method)(*args, now=from_us(now_us), **store_form(kw))


def _work(
    store: SagaStore, seed: int, worker: int, n_ops: int, wait: Callable[[], object]
) -> list[Op]:
    """One worker's scripted-at-random run (deterministic given ``seed`` and results)."""
    rng = random.Random(f"{seed}/{worker}")
    owner = f"w{worker}"
    creds: list[tuple[str, int]] = []
    ops: list[Op] = []
    wait()
    for k in range(n_ops):
        now_us = T0_US + k * SEC + rng.choice((0, 0, -1, 1))
        task_id: str | None
        kw: dict[str, Any]
        if creds and rng.random() < 0.65:
            task_id, token = creds[-1] if rng.random() < 0.8 else rng.choice(creds)
            method = rng.choice(HOLDER_EVENTS)
            chosen = Chosen(
                owner,
                token,
                ttl_us=rng.choice((2, 3)) * SEC,
                delay_us=rng.choice((0, 0, SEC)),
                compensation=Compensation("undo", f"{owner}-{k}"),
                index=rng.choice((0, 1)),
                reason="boom",
            )
        else:
            # Without a lease to use: take one (by id or by claim), or run the reaper.
            method = rng.choice(("acquire", "acquire", "claim_next", "claim_next", "reap"))
            task_id = rng.choice(TASK_IDS) if method == "acquire" else None
            chosen = Chosen(owner, ttl_us=rng.choice((2, 3)) * SEC)
        kw = core_args(EVENT_OF_METHOD[method], chosen)
        if method == "claim_next" and (queues := rng.choice(CLAIM_QUEUES)) is not None:
            kw["queues"] = queues
        start = time.monotonic_ns()
        try:
            value: Any = _call(store, method, task_id, now_us, kw)
            ok = True
        except SagaLeaseError as exc:
            value, ok = type(exc).__name__, False
        except Exception as exc:
            value, ok = Unexpected(f"{type(exc).__name__}: {exc}"), False
        end = time.monotonic_ns()
        op = Op(worker, start, end, method, task_id, now_us, tuple(kw.items()), ok, value)
        ops.append(op)
        if op.ok and method in _GRANTS and isinstance(value, TaskSaga):
            creds.append((value.task_id, value.token))
    return ops


def _setup(store: SagaStore) -> list[TaskSaga]:
    """The tasks every trial races on (the same calls on the store and the reference)."""
    out = []
    for i, task_id in enumerate(TASK_IDS):
        comps = [Compensation("undo", f"{task_id}-{j}") for j in range(i % 2 + i // 2)]
        queue, priority = QUEUE_OF[task_id]
        chosen = Chosen(compensations=tuple(comps), max_attempts=4, queue=queue, priority=priority)
        out.append(
            store.create(task_id, now=from_us(T0_US - SEC + i), **store_args("create", chosen))
        )
    return out


def _process_main(
    opener: Callable[[], SagaStore],
    seed: int,
    worker: int,
    n_ops: int,
    barrier: Any,
    queue: Any,
) -> None:  # pragma: no cover - runs in a child process
    try:
        store = opener()
        try:
            ops = _work(store, seed, worker, n_ops, barrier.wait)
        finally:
            store.close()
        queue.put((worker, ops, None))
    except BaseException as exc:
        queue.put((worker, [], f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- checking


@dataclass
class _Lease:
    op: Op
    task_id: str
    owner: str
    token: int
    acquired: int
    live_until: int
    ended: int | None = None
    extensions: list[int] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.live_until if self.ended is None else min(self.ended, self.live_until)


def _fail(inv: str, op: Op | None, detail: str, ops: Sequence[Op]) -> ConformanceFailure:
    step = "the recorded history" if op is None else op.describe()
    err = violated(inv, step, detail)
    t0 = min((o.start for o in ops), default=0)
    err.steps = [
        f"[{(o.start - t0) // 1_000}..{(o.end - t0) // 1_000} µs] {o.describe()}"
        for o in sorted(ops, key=lambda o: o.start)
    ]
    return err


def check_history(
    ops: Sequence[Op],
    initial: Sequence[TaskSaga],
    store: SagaStore,
    *,
    skip_locked_claims: bool = False,
) -> None:
    """Check a recorded history; raise :class:`ConformanceFailure` on the first problem."""
    for op in ops:
        if op.outcome is Outcome.ERROR:
            raise _fail("INV-8", op, f"raised {op.value} (not a SagaLeaseError)", ops)
        named = core.check_queues(dict(op.kwargs).get("queues"))
        if op.ok and isinstance(op.value, TaskSaga) and named and op.value.queue not in named:
            raise _fail("INV-9", op, f"leased a task of queue {op.value.queue!r}", ops)
    leases: dict[tuple[str, str, int], list[_Lease]] = {}
    grants: dict[str, list[_Lease]] = {t.task_id: [] for t in initial}
    for op in sorted(ops, key=lambda o: o.start):
        if op.ok and op.method in _GRANTS and isinstance(op.value, TaskSaga):
            rec = op.value
            lease = rec.lease
            if lease is None:
                raise _fail("INV-1", op, "an acquisition returned a record without a lease", ops)
            entry = _Lease(op, rec.task_id, lease.owner, rec.token, op.now_us, lease.expires_us)
            grants.setdefault(rec.task_id, []).append(entry)
            leases.setdefault((rec.task_id, lease.owner, rec.token), []).append(entry)
    for op in ops:
        if op.ok and op.method in HOLDER_EVENTS and isinstance(op.value, TaskSaga):
            kw = dict(op.kwargs)
            assert op.task_id is not None
            for entry in leases.get((op.task_id, kw["owner"], kw["token"]), []):
                after = op.value.lease
                if after is not None and after.token == kw["token"]:
                    entry.live_until = max(entry.live_until, after.expires_us)
                else:
                    entry.ended = op.now_us if entry.ended is None else min(entry.ended, op.now_us)
    # INV-1: no overlap in logical time.
    for task_id, entries in grants.items():
        ordered = sorted(entries, key=lambda g: (g.acquired, g.token, g.op.start))
        for i, first in enumerate(ordered):
            for second in ordered[i + 1 :]:
                if second.acquired < first.end:
                    raise _fail(
                        "INV-1",
                        second.op,
                        f"{task_id!r} was granted to {second.owner!r} (token {second.token}) at"
                        f" {from_us(second.acquired).isoformat()} while the lease of"
                        f" {first.owner!r} (token {first.token}) lived until"
                        f" {from_us(first.end).isoformat()}",
                        ops,
                    )
    # INV-2: tokens 1..n, in real-time order.
    for task_id, entries in grants.items():
        tokens = sorted(g.token for g in entries)
        if tokens != list(range(1, len(tokens) + 1)):
            raise _fail("INV-2", None, f"tokens granted on {task_id!r} are {tokens}, not 1..n", ops)
        for a in entries:
            for b in entries:
                if a.op.end < b.op.start and a.token >= b.token:
                    raise _fail(
                        "INV-2",
                        b.op,
                        f"granted token {b.token} after token {a.token} had been granted",
                        ops,
                    )
    for op in ops:
        if not (op.ok and op.method in HOLDER_EVENTS):
            continue
        kw = dict(op.kwargs)
        assert op.task_id is not None
        mine = leases.get((op.task_id, kw["owner"], kw["token"]))
        if not mine:
            holders = [g for g in grants.get(op.task_id, []) if g.token == kw["token"]]
            inv = "INV-1" if holders else "INV-2"
            raise _fail(
                inv,
                op,
                f"succeeded with (owner, token) ({kw['owner']!r}, {kw['token']}),"
                " which no grant handed out",
                ops,
            )
        newer = [g for g in grants[op.task_id] if g.token > kw["token"] and g.op.end < op.start]
        if newer:
            raise _fail(
                "INV-2",
                op,
                f"succeeded with token {kw['token']} after token {newer[0].token} was granted",
                ops,
            )
        if all(op.now_us >= g.live_until for g in mine):
            raise _fail("INV-1", op, "succeeded on a lease that had expired", ops)
    # INV-7: the store's history agrees with what callers saw.
    for task_id, entries in grants.items():
        history = store.history(task_id)
        seen = sorted((g.token, g.owner) for g in entries)
        stored = sorted((e.token or 0, e.owner or "") for e in history if e.event == "acquire")
        if seen != stored:
            raise _fail(
                "INV-7",
                None,
                f"acquisitions of {task_id!r} in the history {stored} differ from the grants"
                f" callers received {seen}",
                ops,
            )
        record = store.get(task_id)
        try:
            replayed = core.replay(history)
        except Exception as exc:  # AssertionError, or the event refused on replay
            raise _fail(
                "INV-7", None, f"history of {task_id!r} does not replay: {exc}", ops
            ) from None
        if record != replayed:
            assert record is not None
            raise _fail(
                "INV-7",
                None,
                f"{task_id!r} differs from its replayed history:"
                f" {record_difference(record, replayed)}",
                ops,
            )
    bad = linearizable(ops, tuple(initial), skip_locked_claims=skip_locked_claims)
    if bad is not None:
        raise _fail(
            "INV-1",
            None,
            "the history is not linearizable against the memory reference: no sequential"
            f" order gives every caller its result (stuck after {bad} calls)",
            ops,
        )


# ---------------------------------------------------------------- linearizability

State = tuple[TaskSaga, ...]


def _model(state: State, op: Op, skip_locked_claims: bool = False) -> tuple[Outcome, Any, State]:
    """Apply ``op`` to the reference model; (outcome, value, new state).

    With ``skip_locked_claims`` a claim may return ``None`` or any task the
    model lets it acquire, not only the oldest.
    """
    kw = dict(op.kwargs)
    named = core.check_queues(kw.pop("queues", None))
    if op.method == "claim_next" and skip_locked_claims:
        if not isinstance(op.value, TaskSaga):
            return Outcome.OK, None, state
        index = next(i for i, t in enumerate(state) if t.task_id == op.value.task_id)
        try:
            step = core.acquire(state[index], now_us=op.now_us, **kw)
        except SagaLeaseError:
            return Outcome.OK, None, state
        return Outcome.OK, step.task, (*state[:index], step.task, *state[index + 1 :])
    if op.method == "claim_next":
        order = sorted(range(len(state)), key=lambda j: -state[j].priority)  # stable
        for i in order:
            task = state[i]
            if task.state.is_terminal or (named is not None and task.queue not in named):
                continue
            try:
                step = core.acquire(task, now_us=op.now_us, **kw)
            except SagaLeaseError:
                continue
            return Outcome.OK, step.task, (*state[:i], step.task, *state[i + 1 :])
        return Outcome.OK, None, state
    if op.method == "reap":
        changed = []
        tasks = list(state)
        for i, task in enumerate(tasks):
            if not task.state.is_terminal and core.needs_reap(task, op.now_us):
                tasks[i] = core.reap(task, now_us=op.now_us).task
                changed.append(tasks[i])
        return Outcome.OK, changed, tuple(tasks)
    index = next(i for i, t in enumerate(state) if t.task_id == op.task_id)
    try:
        step = core.apply(state[index], op.method, op.now_us, **kw)
    except SagaLeaseError as exc:
        return Outcome.REFUSED, type(exc).__name__, state
    return Outcome.OK, step.task, (*state[:index], step.task, *state[index + 1 :])


def linearizable(
    ops: Sequence[Op], initial: State, *, skip_locked_claims: bool = False
) -> int | None:
    """Wing-Gong-Lowe with memoisation: ``None`` if some order consistent with real
    time reproduces every result, else the length of the longest prefix found.
    """
    calls = list(ops)
    seen: set[tuple[frozenset[int], State]] = set()
    best = 0

    def search(remaining: frozenset[int], state: State, depth: int) -> bool:
        nonlocal best
        best = max(best, depth)
        if not remaining:
            return True
        key = (remaining, state)
        if key in seen:
            return False
        seen.add(key)
        horizon = min(calls[i].end for i in remaining)
        for i in sorted(remaining, key=lambda j: calls[j].start):
            op = calls[i]
            if op.start > horizon:
                continue
            outcome, value, new_state = _model(state, op, skip_locked_claims)
            if (
                outcome is op.outcome
                and value == op.value
                and search(remaining - {i}, new_state, depth + 1)
            ):
                return True
        return False

    return None if search(frozenset(range(len(calls))), initial, 0) else best


# ---------------------------------------------------------------- stages


def _trial_check(
    store: SagaStore, ops: list[Op], trial: int, mode: str, skip_locked_claims: bool = False
) -> None:
    reference = MemoryStore()
    initial = _setup(reference)
    try:
        check_history(ops, initial, store, skip_locked_claims=skip_locked_claims)
    except ConformanceFailure as exc:
        exc.steps.insert(0, f"{mode} trial {trial}: tasks {', '.join(TASK_IDS)} created")
        raise


def _run_workers(store: SagaStore, seed: int, workers: int, n_ops: int) -> list[Op]:
    barrier = threading.Barrier(workers)
    results: list[list[Op]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def body(w: int) -> None:
        try:
            results[w] = _work(store, seed, w, n_ops, barrier.wait)
        except BaseException as exc:  # pragma: no cover - a bug in the suite
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(w,)) for w in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return [op for r in results for op in r]


BULK = 6
"""The tasks one create_many adds while claimers watch their queue."""
TTL_BULK = timedelta(minutes=1)
"""Long enough that no claim of the bulk trial expires: each task is granted once."""


def _bulk_trial(store: SagaStore, trial: int, claimers: int = 2, rounds: int = 60) -> None:
    """One create_many of :data:`BULK` tasks into queue ``bulk`` races threads that read
    the queue's counts and claim from it: a count of the queue shows none of the batch
    or all of it (INV-11); no task is granted twice (INV-1); once every claimer stopped,
    the batch is there, each task claimed at most once, token 1.
    """
    step = f"threads trial {trial}: create_many of {BULK} tasks into 'bulk' racing claims"
    items = [new_task(f"b{i}", Chosen(queue="bulk", priority=i % 3)) for i in range(BULK)]
    barrier = threading.Barrier(claimers + 1)
    seen: list[int] = []
    granted: list[tuple[str, int]] = []
    errors: list[str] = []

    def create() -> None:
        barrier.wait()
        try:
            store.create_many(items, now=from_us(T0_US))
        except Exception as exc:
            errors.append(f"create_many raised {type(exc).__name__}: {exc}")

    def claim(worker: int) -> None:
        barrier.wait()
        try:
            for _ in range(rounds):
                seen.append(sum(store.counts(queue="bulk").values()))
                now = from_us(T0_US + SEC)
                rec = store.claim_next(owner=f"b{worker}", ttl=TTL_BULK, queues="bulk", now=now)
                if rec is not None:
                    granted.append((rec.task_id, rec.token))
                elif seen[-1] == BULK:
                    return
        except Exception as exc:
            errors.append(f"a claimer raised {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=create)]
    threads += [threading.Thread(target=claim, args=(w,)) for w in range(claimers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise violated("INV-8", step, errors[0])
    partial = sorted({n for n in seen if n not in (0, BULK)})
    if partial:
        raise violated("INV-11", step, f"a claimer counted {partial} of {BULK} tasks in 'bulk'")
    if len(set(granted)) != len(granted) or any(token != 1 for _, token in granted):
        raise violated("INV-1", step, f"grants {sorted(granted)}: a task granted twice")
    stored = [t.task_id for t in store.list_tasks(queue="bulk")]
    if stored != [item.task_id for item in items]:
        raise violated("INV-11", step, f"after the race 'bulk' holds {stored}")


def run_threads(
    factory: StoreFactory,
    *,
    trials: int,
    seed: int,
    workers: int = 4,
    n_ops: int = 8,
    skip_locked_claims: bool = False,
) -> None:
    """Threads sharing one store; raise :class:`ConformanceFailure` on a bad history."""
    for trial in range(trials):
        store = factory()
        try:
            _setup(store)
            ops = _run_workers(store, seed * 1_000 + trial, workers, n_ops)
            _trial_check(store, ops, trial, "threads", skip_locked_claims)
            if trial % 4 == 0:  # a bulk create racing claims, on the same store
                _bulk_trial(store, trial)
        finally:
            store.close()


def run_processes(
    factory: StoreFactory,
    capabilities: Capabilities,
    *,
    trials: int,
    seed: int,
    workers: int = 3,
    n_ops: int = 8,
) -> None:
    """Processes sharing one store through the declared ``reopen``."""
    reopen = capabilities.reopen
    if reopen is None:  # pragma: no cover - the caller skips this stage
        raise ValueError("the backend did not declare cross-process sharing")
    ctx = multiprocessing.get_context("spawn")
    for trial in range(trials):
        store = factory()
        try:
            _setup(store)
            opener = reopen(store)
            barrier = ctx.Barrier(workers)
            queue = ctx.Queue()
            procs = [
                ctx.Process(
                    target=_process_main,
                    args=(opener, seed * 1_000 + trial, w, n_ops, barrier, queue),
                    daemon=True,
                )
                for w in range(workers)
            ]
            for p in procs:
                p.start()
            results = [queue.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(timeout=30)
            problems = [err for _w, _ops, err in results if err]
            if problems:
                raise violated(
                    "INV-1",
                    f"processes trial {trial}",
                    f"a worker process could not use the store: {problems[0]}",
                )
            ops = [op for _w, worker_ops, _e in results for op in worker_ops]
            _trial_check(store, ops, trial, "processes", capabilities.skip_locked_claims)
        finally:
            store.close()
