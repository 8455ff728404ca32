"""An explicit-state model checker for the lifecycle (``sagalease check``).

It explores, breadth first, every interleaving of a few workers, the reaper,
an operator and the passing of time around one task, by calling the very core
functions the stores call (:mod:`sagalease.core`, which evaluates the chart
compiled from :class:`~sagalease.lifecycle.Lifecycle`). Nothing about the
lifecycle is restated here: the model only decides who may *try* what.

Time is discrete (one tick = one second) and every instant in a state is kept
relative to ``now`` and clamped at zero, so the space is finite without a
horizon: a lease with 2 ticks left is the same state whatever the clock reads.
Workers are interchangeable, so states are keyed up to a permutation of them.

What is checked is listed in :data:`PROPERTIES` (the spec prints it).

How it stays fast without restating anything: a state is the task's record
(with the clock) and what each worker believes, and its key keeps of the
record only what the lifecycle reads (:func:`_task_key`). States whose records
share that key and the lease's owner behave alike (the key already says so), so
the core is called once per such *task class* and call, on the first record
seen in the class, and its step is reused by every state of the class: the
workers' beliefs multiply the states, not the core calls. Classes, beliefs,
crews of beliefs and keys are numbered, and the moves of a (class, worker,
belief) are kept as lists of numbers. A trace replays, on the real records, the
moves by which each of its states was first reached.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from sagalease import core
from sagalease.errors import SagaLeaseError
from sagalease.lifecycle import CHART, HOLDER_EVENTS
from sagalease.records import Compensation, CompensationStatus, TaskSaga, TaskState
from sagalease.verification.calls import Chosen, core_args

__all__ = ["PROPERTIES", "Model", "Result", "Verdict", "check", "load_model", "model_names"]

PROPERTIES = (
    "every state: the record is well formed (`core.well_formed`: a lease only in"
    " leasing states and carrying the current token, bounded attempts, compensation"
    " bookkeeping) and at most one worker holds the current token",
    "every edge: a terminal state never changes",
    "every edge: a holder write (heartbeat, release, register_compensation, complete,"
    " fail, compensation_*) succeeds only for the current owner with the current token"
    " before expiry, whoever tries (same-id zombies, impostors with the right token)",
    "every edge: acquisition only of an absent or expired lease, granting the caller the"
    " token plus one; no other event changes the token (so token = number of grants)",
    "every edge: a heartbeat never revives an expired lease nor shortens a live one;"
    " the reaper never drops a live lease",
    "every edge: compensations are never dropped and only leave `pending`; no task"
    " fails while one is pending",
    "every edge is a transition declared in the chart",
    "liveness: no cycle among non-terminal states and no non-terminal state without a"
    " way forward, so under weak fairness every run ends",
    "coverage: every declared transition is taken in some run",
)
"""The properties :func:`check` verifies, in words."""

TICK = 1_000_000


class Verdict(StrEnum):
    """What a run concludes, and what a model expects it to."""

    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class Model:
    """What the actors may do. Times are in ticks."""

    name: str = "default"
    workers: int = 2
    ttl: int = 2
    max_attempts: int = 2
    deadline: int | None = None  # ticks after creation; absent: no deadline
    compensations: int = 1
    heartbeats: int = 1  # per lease; negative: unbounded
    release_delay: int = 1
    operator: bool = True
    incarnations: int = 1  # processes sharing one worker id (a restarted worker's paused old self)
    impostor: bool = True  # someone presenting the current token under another owner id
    expect: Verdict = Verdict.PASS
    description: str = ""
    figures: dict[str, int] | None = None  # recorded results; a difference is a failure


@dataclass(frozen=True)
class _Worker:
    token: int | None = None  # the lease this worker believes it holds
    heartbeats: int = 0


@dataclass(frozen=True)
class _State:
    task: TaskSaga
    now: int
    workers: tuple[_Worker, ...]


ModelT = TypeVar("ModelT")


@dataclass
class Result(Generic[ModelT]):
    """What a run of a model (:class:`Model`, or the multi-task checker's) found."""

    # Fields of the same shape as records.TaskSaga's, naming other things: no copy.
    model: ModelT
    states: int = 0
    transitions: int = 0
    depth: int = 0
    longest_run: int = 0
    seconds: float = 0.0
    violation: str | None = None
    trace: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    drift: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every check passed (and the recorded figures, if any, match)."""
        return self.violation is None and not self.uncovered and not self.drift

    @property
    def verdict(self) -> Verdict:
        """PASS when every check passed."""
        return Verdict.PASS if self.ok else Verdict.FAIL

    @property
    def figures(self) -> dict[str, int]:
        """The deterministic figures of this run (everything but the time)."""
        return {
            "states": self.states,
            "transitions": self.transitions,
            "depth": self.depth,
            "longest_run": self.longest_run,
        }


# ------------------------------------------------------------------ models


def _models_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "_models", here.parents[2] / "models"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no models directory")


def model_names() -> list[str]:
    """Names of the bundled models."""
    return sorted(p.stem for p in _models_dir().glob("*.toml"))


def load_model(name_or_path: str, **overrides: Any) -> Model:
    """A model from ``models/<name>.toml`` (or a path), with overrides applied."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _models_dir() / f"{name_or_path}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("name", path.stem)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        data.pop("figures", None)  # recorded for the model as written, not a variant
    data.update(changes)
    data["expect"] = Verdict(data.get("expect", Verdict.PASS))
    return Model(**data)


# ------------------------------------------------------------------ keys


def _rel(instant: int | None, now: int) -> int | None:
    return None if instant is None else max(instant - now, 0)


def _owner(m: Model, index: int) -> str:
    return f"w{index // m.incarnations}"


def _task_key(t: TaskSaga, now: int) -> tuple[Any, ...]:
    """What a state's key keeps of the record: the fields the lifecycle reads,
    instants relative to ``now`` (clamped at zero).
    """
    lease = t.lease
    return (
        t.state,
        t.token,
        t.attempts,
        t.expirations,
        tuple(c.status for c in t.compensations),
        None if lease is None else (lease.token, _rel(lease.expires_us, now)),
        _rel(t.deadline_us, now),
        _rel(t.available_us, now),
    )


def _workers_key(m: Model, owner: str | None, workers: Sequence[_Worker]) -> tuple[Any, ...]:
    """The workers' beliefs up to a permutation of worker ids (``owner``: the lease's)."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, w in enumerate(workers):
        groups.setdefault(_owner(m, i), []).append(
            (w.token if w.token is not None else -1, w.heartbeats)
        )
    return tuple(sorted((name == owner, tuple(sorted(g))) for name, g in groups.items()))


def _key(m: Model, s: _State) -> tuple[Any, ...]:
    lease = s.task.lease
    owner = None if lease is None else lease.owner
    return (*_task_key(s.task, s.now), _workers_key(m, owner, s.workers))


# ------------------------------------------------------------------ actions


class _Move(StrEnum):
    """What the model does besides calling an event."""

    TICK = "tick"  # one second passes
    CRASH = "crash"  # a worker forgets its lease (it dies, or its process restarts)


_Attempt = tuple[str, str, int | None, dict[str, Any]]
"""(label, event or move, worker index or None, core kwargs)."""


def _worker_calls(m: Model, i: int, w: _Worker, registered: int) -> Iterator[_Attempt]:
    """What worker ``i`` tries, believing ``w``, when ``registered`` compensations exist."""
    owner = _owner(m, i)
    ttl = m.ttl * TICK
    if w.token is None:
        yield f"{owner} acquire", "acquire", i, core_args("acquire", Chosen(owner, ttl_us=ttl))
        return
    comp = Compensation("undo", f"step-{registered}")
    held = Chosen(owner, w.token, ttl, m.release_delay * TICK, comp, reason="boom")
    tries = [("release", "release", held)]
    if m.heartbeats < 0 or w.heartbeats < m.heartbeats:
        tries.insert(0, ("heartbeat", "heartbeat", held))
    if registered < m.compensations:
        tries.append(("register", "register_compensation", held))
    tries += [("complete", "complete", held), ("fail", "fail", held)]
    for index in range(registered):
        at = replace(held, index=index)
        tries.append((f"applied[{index}]", "compensation_applied", at))
        gone = replace(at, reason="gone")
        tries.append((f"comp-failed[{index}]", "compensation_failed", gone))
    for name, event, chosen in tries:
        yield f"{owner} {name}", event, i, core_args(event, chosen)
    yield f"{owner} crash", _Move.CRASH, i, {}


def _task_calls(m: Model, t: TaskSaga) -> Iterator[_Attempt]:
    """What the impostor, the reaper, the operator and time try on ``t``."""
    if m.impostor and t.lease is not None:
        forged = Chosen("impostor", t.token, m.ttl * TICK, 0, reason="forged")
        for event in ("heartbeat", "complete", "fail", "release"):
            yield f"impostor {event}", event, None, core_args(event, forged)
    yield "reaper", "reap", None, {}
    if m.operator:
        operator = Chosen(reason="operator", by="op")
        yield "operator quarantine", "quarantine", None, core_args("quarantine", operator)
    yield "tick", _Move.TICK, None, {}


def _calls(m: Model, s: _State) -> Iterator[_Attempt]:
    """Every attempt from ``s``, in a fixed order: each worker's, then the others'."""
    registered = len(s.task.compensations)
    for i, w in enumerate(s.workers):
        yield from _worker_calls(m, i, w, registered)
    yield from _task_calls(m, s.task)


def _after_call(m: Model, w: _Worker, event: str, new: TaskSaga) -> _Worker:
    if event == "acquire":
        return _Worker(new.token, 0)
    if event == "heartbeat":
        return replace(w, heartbeats=w.heartbeats + 1) if m.heartbeats >= 0 else w
    if new.lease is None:  # given back, ended, or taken away
        return _Worker()
    return w


def _successors(m: Model, s: _State, handlers: Mapping[str, Any]) -> Iterator[tuple[str, _State]]:
    """The successors of a concrete state, in order (to rebuild traces: the
    exploration has checked them).
    """
    for label, event, index, args in _calls(m, s):
        if event is _Move.TICK:
            if not s.task.state.is_terminal:
                yield label, replace(s, now=s.now + TICK)
            continue
        workers = list(s.workers)
        if event is _Move.CRASH:
            assert index is not None
            workers[index] = _Worker()
            yield label, replace(s, workers=tuple(workers))
            continue
        try:
            step = handlers[event](s.task, now_us=s.now, **args)
        except SagaLeaseError:
            continue
        if index is not None:
            workers[index] = _after_call(m, workers[index], event, step.task)
        yield label, _State(step.task, s.now, tuple(workers))


# ------------------------------------------------------------------ checks


class _Violation(Exception):
    """A property failed: state ``state`` is bad, or (with ``label``) a move from
    it, its successor number ``ordinal``, is.
    """

    label: str | None = None
    state: int | None = None
    ordinal: int = 0


def _edge_checks(
    event: str, owner: str | None, args: dict[str, Any], old: TaskSaga, now: int, new: TaskSaga
) -> None:
    if old.state.is_terminal:
        raise _Violation(f"terminal state {old.state} changed by {event}")
    if (old.state, event) not in CHART or new.state not in {
        t.target for t in CHART[(old.state, event)]
    }:
        raise _Violation(f"undeclared edge {old.state} --{event}--> {new.state}")
    lease = old.lease
    live = lease is not None and now < lease.expires_us
    if event in HOLDER_EVENTS and not (
        live
        and lease is not None
        and lease.owner == owner
        and lease.token == args["token"] == old.token
    ):
        raise _Violation(
            f"{event} by {owner} token {args.get('token')} succeeded without the live lease"
        )
    if event == "acquire":
        if live:
            raise _Violation("acquired a live lease")
        if new.token != old.token + 1 or new.lease is None or new.lease.owner != owner:
            raise _Violation("acquisition did not grant the next token to the caller")
    elif new.token != old.token:
        raise _Violation(f"{event} changed the token")
    if event == "heartbeat" and (
        lease is None or new.lease is None or new.lease.expires_us <= lease.expires_us
    ):
        raise _Violation("heartbeat revived or shortened a lease")
    if event == "reap" and live:
        raise _Violation("the reaper dropped a live lease")
    if len(new.compensations) < len(old.compensations) or any(
        before.status is not after.status and before.status is not CompensationStatus.PENDING
        for before, after in zip(old.compensations, new.compensations, strict=False)
    ):
        raise _Violation(f"{event} dropped or rewrote a compensation")
    if new.state is TaskState.FAILED and old.pending_compensations:
        raise _Violation(f"{event} failed the task with compensations still pending")


def _record_checks(task: TaskSaga) -> None:
    if not core.well_formed(task):
        raise _Violation(f"record not well formed: {task}")


def _holders_check(task: TaskSaga, workers: Sequence[_Worker]) -> None:
    holders = [w for w in workers if w.token is not None and w.token == task.token]
    if len(holders) > 1:
        raise _Violation("two workers hold the current token")


def _describe(label: str, s: _State, origin: int) -> str:
    t = s.task
    lease = (
        "-"
        if t.lease is None
        else f"{t.lease.owner}#{t.lease.token} {max(t.lease.expires_us - s.now, 0) // TICK}s left"
    )
    beliefs = ",".join("-" if w.token is None else str(w.token) for w in s.workers)
    return (
        f"{label:<22} {t.state.value:<12} t+{(s.now - origin) // TICK}s token={t.token}"
        f" attempts={t.attempts} lease={lease} workers believe [{beliefs}]"
    )


def _initial(m: Model) -> _State:
    now = 10 * TICK
    deadline = None if m.deadline is None else now + m.deadline * TICK
    task = core.create("t", now_us=now, max_attempts=m.max_attempts, deadline_us=deadline).task
    return _State(task, now, tuple(_Worker() for _ in range(m.workers)))


# ------------------------------------------------------------------ the space

_Try = tuple[str, str, dict[str, Any], int]
"""(label, event or move, core kwargs, number of the (event, kwargs) call)."""

_Moved = tuple[str, int, int, int, int]
"""A successful move: (label, new task class, the mover's new belief (-1: not a
worker's move), the new class's key part shifted into a state key's high bits,
its lease owner's number)."""

_MISSING: Any = object()
# Keys packed into integers (numbers of: a class, a worker id, a belief, a crew, an
# owner, a key part); each field's width in bits:
_SHIFT = 24  # call, worker id, belief in the keys of _Space._steps, ._moves and ._swaps
_OWNER_BITS = 8
_HALF = 32  # a state key: key part << _HALF | crew key
_ORDINAL = 10  # an edge: successor state << _ORDINAL | number of the move among the state's


class _Space:
    """The states found so far, numbered in the order found, with what they share.

    A *task class* is a record and clock up to :func:`_task_key` and the lease's
    owner: its first (record, now) pair stands for all, so each core call is
    made once per class and call (:meth:`_step`). A *belief* is a worker's
    (:class:`_Worker`), a *crew* a tuple of belief numbers, one per worker. A state
    is (task class, crew); its key packs the numbers of :func:`_task_key` and
    :func:`_workers_key`. The moves of a (class, worker id, belief) and of a
    class are kept once found.
    """

    def __init__(self, m: Model, handlers: Mapping[str, Any]) -> None:
        self.m = m
        self.handlers = handlers
        self.init = _initial(m)
        # task classes
        self.records: list[tuple[TaskSaga, int]] = []
        self.part: list[int] = []  # number of the class's _task_key
        self.owner: list[int] = []  # number of the class's lease owner (0: no lease)
        self.ended: list[bool] = []
        self.sound: list[bool] = []  # whether the class's record is well formed
        self._classes: dict[tuple[tuple[Any, ...], str | None, bool], int] = {}
        self._parts: dict[tuple[Any, ...], int] = {}
        self._owners: dict[str | None, int] = {None: 0}
        self._steps: dict[int, tuple[int, TaskSaga] | None] = {}  # class, call
        self._after: dict[tuple[int, str, int], int] = {}  # belief, event, new class
        self._call_ids: dict[tuple[str, tuple[tuple[str, Any], ...]], int] = {}
        self._worker_tries: dict[tuple[int, int, int], list[_Try]] = {}
        self._task_tries: dict[tuple[bool, int], list[_Try]] = {}
        self.covered: set[tuple[TaskState, str, TaskState]] = set()
        # beliefs and crews
        self.beliefs: list[_Worker] = []
        self._belief_ids: dict[_Worker, int] = {}
        self.crews: list[tuple[int, ...]] = []
        # per crew: (worker index, its belief, the low bits of its key in _moves), the
        # others' last
        self.actors: list[list[tuple[int, int, int]]] = []
        self._crew_ids: dict[tuple[int, ...], int] = {}
        self._swaps: dict[int, int] = {}  # crew, worker, belief -> crew
        self._swapped: dict[int, int] = {}  # crew, worker, belief, owner -> crew key
        self._crew_keys: list[list[int]] = [[]]  # [owner][crew] -> number of its _workers_key
        self._crew_key_ids: dict[tuple[Any, ...], int] = {}
        self._holders_ok: set[int] = set()  # crew, token: at most one holder
        self._moves: dict[int, list[_Moved]] = {}  # class, worker id (or none), belief
        # states
        self.seen: dict[int, int] = {}
        self.state_class: list[int] = []
        self.state_crew: list[int] = []
        self.parent: list[int] = []
        self.label: list[str] = []
        self.ordinal: list[int] = []
        self.depth: list[int] = []
        # per state: its successors but itself, each once, packed with the number of
        # the first move to it
        self.edges: list[list[int]] = []
        self._mark: list[int] = []  # per state: the last state whose edges list it
        self._concrete: dict[int, _State] = {}

    # -------------------------------------------------------------- numbering

    def task_class(self, task: TaskSaga, now: int) -> int:
        """The number of the class of (``task``, ``now``), new or not (a record that
        is not well formed is in a class of its own, reported when a state has it).
        """
        part = _task_key(task, now)
        lease = task.lease
        owner = None if lease is None else lease.owner
        sound = core.well_formed(task)
        cid = self._classes.get((part, owner, sound))
        if cid is None:
            cid = self._classes[(part, owner, sound)] = len(self.records)
            self.sound.append(sound)
            self.records.append((task, now))
            self.part.append(self._parts.setdefault(part, len(self._parts)))
            if owner not in self._owners:
                self._owners[owner] = len(self._owners)
                if len(self._owners) >> _OWNER_BITS:
                    raise ValueError("too many distinct lease owners for this checker")
                self._crew_keys.append([-1] * len(self.crews))
            self.owner.append(self._owners[owner])
            self.ended.append(task.state.is_terminal)
        return cid

    def belief(self, w: _Worker) -> int:
        """The number of belief ``w``."""
        bid = self._belief_ids.get(w)
        if bid is None:
            bid = self._belief_ids[w] = len(self.beliefs)
            self.beliefs.append(w)
            if bid >> _SHIFT:
                raise ValueError("too many distinct worker beliefs for this checker")
        return bid

    def crew(self, beliefs: tuple[int, ...]) -> int:
        """The number of the crew ``beliefs``."""
        kid = self._crew_ids.get(beliefs)
        if kid is None:
            kid = self._crew_ids[beliefs] = len(self.crews)
            self.crews.append(beliefs)
            actors = [(i, bid, self._actor(i, bid)) for i, bid in enumerate(beliefs)]
            actors.append((-1, -1, 0))
            self.actors.append(actors)
            for row in self._crew_keys:
                row.append(-1)
        return kid

    def _actor(self, index: int, bid: int) -> int:
        """The low bits of the key in ``_moves`` of worker ``index`` believing ``bid``."""
        return (index // self.m.incarnations + 1) << _SHIFT | bid + 1

    def swap(self, kid: int, index: int, bid: int) -> int:
        """The crew ``kid`` with worker ``index`` believing ``bid`` (kept)."""
        key = (kid << _SHIFT | index) << _SHIFT | bid
        new = self._swaps.get(key)
        if new is None:
            crew = list(self.crews[kid])
            crew[index] = bid
            new = self._swaps[key] = self.crew(tuple(crew))
        return new

    def crew_key(self, kid: int, owner: int) -> int:
        """The number of crew ``kid``'s :func:`_workers_key` when ``owner`` holds the lease."""
        name = next(n for n, number in self._owners.items() if number == owner)
        key = _workers_key(self.m, name, self.workers(kid))
        number = self._crew_keys[owner][kid] = self._crew_key_ids.setdefault(
            key, len(self._crew_key_ids)
        )
        if number >> _HALF:
            raise ValueError("too many distinct crews for this checker")
        return number

    def workers(self, kid: int) -> tuple[_Worker, ...]:
        """The beliefs of crew ``kid``."""
        return tuple(self.beliefs[b] for b in self.crews[kid])

    # -------------------------------------------------------------- moves

    def _numbered(self, tries: Iterator[_Attempt]) -> list[_Try]:
        numbered = []
        for label, event, _, args in tries:
            call = self._call_ids.setdefault((event, tuple(args.items())), len(self._call_ids))
            if call >> _SHIFT:
                raise ValueError("too many distinct calls for this checker")
            numbered.append((label, event, args, call))
        return numbered

    def worker_tries(self, index: int, bid: int, registered: int) -> list[_Try]:
        """What worker ``index`` tries believing ``bid`` (:func:`_worker_calls`), kept."""
        key = (index // self.m.incarnations, bid, registered)
        tries = self._worker_tries.get(key)
        if tries is None:
            w = self.beliefs[bid]
            tries = self._worker_tries[key] = self._numbered(
                _worker_calls(self.m, index, w, registered)
            )
        return tries

    def task_tries(self, task: TaskSaga) -> list[_Try]:
        """What the others try on ``task`` (:func:`_task_calls`), kept."""
        key = (task.lease is not None, task.token)
        tries = self._task_tries.get(key)
        if tries is None:
            tries = self._task_tries[key] = self._numbered(_task_calls(self.m, task))
        return tries

    def _step(
        self, cid: int, call: int, event: str, args: dict[str, Any]
    ) -> tuple[int, TaskSaga] | None:
        """The core's step for ``event`` from class ``cid``, checked once: the new
        class and record, or None when refused.
        """
        key = cid << _SHIFT | call
        done = self._steps.get(key, _MISSING)
        if done is not _MISSING:
            return done  # type: ignore[no-any-return]
        task, now = self.records[cid]
        try:
            step = self.handlers[event](task, now_us=now, **args)
        except SagaLeaseError:
            self._steps[key] = None  # refused: nothing changed (the core is pure)
            return None
        new = step.task
        _edge_checks(event, args.get("owner"), args, task, now, new)
        self.covered.add((task.state, event, new.state))
        result = self._steps[key] = (self.task_class(new, now), new)
        return result

    def moves(self, cid: int, index: int, bid: int) -> Iterator[_Moved]:
        """The successful moves from class ``cid`` of worker ``index`` believing
        ``bid`` (``index`` -1: of the impostor, reaper, operator and time), found
        one by one (each checked before the next is tried), then kept.
        """
        task, now = self.records[cid]
        if index < 0:
            key = cid << 2 * _SHIFT
            tries = self.task_tries(task)
        else:
            key = cid << 2 * _SHIFT | self._actor(index, bid)
            tries = self.worker_tries(index, bid, len(task.compensations))
        found: list[_Moved] = []
        steps, after, base = self._steps, self._after, cid << _SHIFT
        for label, event, args, call in tries:
            if event is _Move.TICK:
                if task.state.is_terminal:
                    continue
                ncid, nbid = self.task_class(task, now + TICK), -1
            elif event is _Move.CRASH:
                ncid, nbid = cid, self.belief(_Worker())
            else:
                step = steps.get(base | call, _MISSING)
                if step is _MISSING:
                    try:
                        step = self._step(cid, call, event, args)
                    except _Violation as exc:
                        exc.label = label
                        raise
                if step is None:
                    continue
                ncid = step[0]
                if index < 0:
                    nbid = -1
                else:
                    nbid = after.get((bid, event, ncid), -1)
                    if nbid < 0:
                        w = _after_call(self.m, self.beliefs[bid], event, step[1])
                        nbid = after[(bid, event, ncid)] = self.belief(w)
            move = (label, ncid, nbid, self.part[ncid] << _HALF, self.owner[ncid])
            found.append(move)
            yield move
        self._moves[key] = found

    def state_checks(self, sid: int) -> None:
        """The checks of every state, on new state ``sid``."""
        cid, kid = self.state_class[sid], self.state_crew[sid]
        task = self.records[cid][0]
        try:
            if not self.sound[cid]:
                concrete = self.concrete(sid).task
                _record_checks(concrete if not core.well_formed(concrete) else task)
            _holders_check(task, self.workers(kid))
        except _Violation as exc:
            exc.state = sid
            raise
        self._holders_ok.add(kid << _HALF | task.token)

    # -------------------------------------------------------------- search

    def explore(self, result: Result[Model]) -> None:
        """Breadth first from the initial state; raises :class:`_Violation`."""
        init = self.init
        c0 = self.task_class(init.task, init.now)
        k0 = self.crew(tuple(self.belief(w) for w in init.workers))
        self.seen[self.part[c0] << _HALF | self.crew_key(k0, self.owner[c0])] = 0
        self.state_class.append(c0)
        self.state_crew.append(k0)
        self.parent.append(-1)
        self.label.append("create")
        self.ordinal.append(0)
        self.depth.append(0)
        self._mark.append(-1)
        self.state_checks(0)
        seen, state_class, state_crew = self.seen, self.state_class, self.state_crew
        parents, labels, ordinals, depths = self.parent, self.label, self.ordinal, self.depth
        records, edges, mark = self.records, self.edges, self._mark
        known, swapped, crew_keys = self._moves, self._swapped, self._crew_keys
        holders_ok, actors, sound = self._holders_ok, self.actors, self.sound
        transitions = 0
        sid = 0
        try:
            while sid < len(state_class):
                cid = state_class[sid]
                kid = state_crew[sid]
                high = cid << 2 * _SHIFT
                depth = depths[sid] + 1
                out: list[int] = []
                edges.append(out)
                ordinal = 0
                try:
                    for index, bid, low in actors[kid]:
                        moves = known.get(high | low)
                        for label, ncid, nbid, nhigh, nown in (
                            self.moves(cid, index, bid) if moves is None else moves
                        ):
                            ordinal += 1
                            if nbid == bid:  # the crew is unchanged
                                ck = crew_keys[nown][kid]
                                if ck < 0:
                                    ck = self.crew_key(kid, nown)
                                nkid = kid
                            else:  # the crew's key, the crew itself only if new
                                swap = (
                                    (kid << _SHIFT | index) << _SHIFT | nbid
                                ) << _OWNER_BITS | nown
                                ck = swapped.get(swap, -1)
                                if ck < 0:
                                    ck = swapped[swap] = self.crew_key(
                                        self.swap(kid, index, nbid), nown
                                    )
                                nkid = -1
                            nk = nhigh | ck
                            nsid = seen.get(nk, -1)
                            if nsid < 0:
                                if nkid < 0:
                                    nkid = self.swap(kid, index, nbid)
                                nsid = seen[nk] = len(state_class)
                                mark.append(-1)
                                state_class.append(ncid)
                                state_crew.append(nkid)
                                parents.append(sid)
                                labels.append(label)
                                ordinals.append(ordinal - 1)
                                depths.append(depth)
                                if (
                                    not sound[ncid]
                                    or (nkid << _HALF | records[ncid][0].token) not in holders_ok
                                ):
                                    self.state_checks(nsid)
                            if mark[nsid] != sid and nsid != sid:
                                mark[nsid] = sid
                                out.append(nsid << _ORDINAL | ordinal - 1)
                except _Violation as exc:
                    if exc.state is None:
                        exc.state, exc.ordinal = sid, ordinal
                    raise
                finally:
                    transitions += ordinal
                if ordinal >> _ORDINAL:
                    raise ValueError("too many moves from one state for this checker")
                sid += 1
        finally:
            result.transitions = transitions
            result.depth = depths[min(sid, len(depths) - 1)] if depths else 0

    # -------------------------------------------------------------- traces

    def concrete(self, sid: int) -> _State:
        """The record, clock and beliefs by which state ``sid`` was first reached:
        its moves replayed from the initial state on the real records.
        """
        path = []
        node = sid
        while node not in self._concrete and node > 0:
            path.append(node)
            node = self.parent[node]
        s = self._concrete.get(node, self.init)
        for node in reversed(path):
            s = self._successor(s, self.ordinal[node], self.label[node])
            self._concrete[node] = s
        return s

    def _successor(self, s: _State, ordinal: int, label: str) -> _State:
        """Successor number ``ordinal`` of ``s``, which the exploration labelled ``label``."""
        found = list(_successors(self.m, s, self.handlers))
        if ordinal < len(found) and found[ordinal][0] == label:
            return found[ordinal][1]
        # The class's first record moved otherwise than this one: the key missed a
        # field the lifecycle reads. Show the first move so labelled.
        return next(after for name, after in found if name == label)

    def trace(self, sid: int) -> list[str]:
        """The shortest run to state ``sid``, one line per move."""
        path = []
        node = sid
        while node >= 0:
            path.append(node)
            node = self.parent[node]
        origin = self.init.now
        return [_describe(self.label[n], self.concrete(n), origin) for n in reversed(path)]

    def edge_label(self, sid: int, to: int) -> str:
        """The label of the first move from state ``sid`` to state ``to``."""
        ordinal = next(e & (1 << _ORDINAL) - 1 for e in self.edges[sid] if e >> _ORDINAL == to)
        return list(_successors(self.m, self.concrete(sid), self.handlers))[ordinal][0]

    def violation_trace(self, exc: _Violation) -> list[str]:
        """The trace to the offending state or move of ``exc``."""
        assert exc.state is not None
        if exc.label is None:
            return [*self.trace(exc.state), "  ^-- violates"]
        after = self._successor(self.concrete(exc.state), exc.ordinal, exc.label)
        step = _describe(exc.label, after, self.init.now)
        return [*self.trace(exc.state), step + "  <-- violates"]


def check(m: Model, *, contracts: bool = False) -> Result[Model]:
    """Explore ``m`` exhaustively and check every property (see the module doc).

    ``contracts`` runs the core with its icontract pre/postconditions on.
    """
    started = time.perf_counter()
    # Without icontract's checks unless asked: the state and edge checks here cover
    # the same ground.
    handlers = dict(core.handlers(contracts=contracts))
    result = Result[Model](m)
    space = _Space(m, handlers)
    try:
        space.explore(result)
    except _Violation as exc:
        result.violation = str(exc)
        result.trace = space.violation_trace(exc)
    result.states = len(space.state_class)
    if result.violation is None:
        _liveness(result, space)
    if result.violation is None:
        declared = {(t.source, t.event, t.target) for ts in CHART.values() for t in ts}
        result.uncovered = sorted(
            f"{a.value} --{e}--> {b.value}" for a, e, b in declared - space.covered
        )
    if m.figures is not None and result.violation is None:
        result.drift = {
            k: (v, result.figures[k]) for k, v in m.figures.items() if result.figures.get(k) != v
        }
    result.seconds = time.perf_counter() - started
    return result


def _liveness(result: Result[Model], space: _Space) -> None:
    """No non-terminal cycle, no stuck state; longest run to termination."""
    white, grey, black = 0, 1, 2
    edges = space.edges
    ended = [space.ended[c] for c in space.state_class]
    color = bytearray(len(edges))
    longest = [0] * len(edges)
    for root in range(len(edges)):
        if color[root] != white:
            continue
        stack: list[tuple[int, Iterator[int]]] = [(root, iter(edges[root]))]
        color[root] = grey
        while stack:
            node, it = stack[-1]
            for edge in it:
                nxt = edge >> _ORDINAL
                if ended[nxt]:
                    continue
                if color[nxt] == grey:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(nxt) :]
                    result.violation = (
                        f"a run can go on forever without ending ({len(cycle)}-state cycle)"
                    )
                    start = space.concrete(nxt).now
                    result.trace = [
                        *space.trace(nxt),
                        "cycle (states repeat up to the clock):",
                        *(
                            _describe(space.edge_label(a, b), space.concrete(b), start)
                            for a, b in zip(cycle, [*cycle[1:], nxt], strict=True)
                        ),
                    ]
                    return
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, iter(edges[nxt])))
                    break
            else:
                stack.pop()
                color[node] = black
                if not ended[node]:
                    succ = edges[node]
                    if not succ:
                        result.violation = "a non-terminal state has no way forward"
                        result.trace = space.trace(node)
                        return
                    longest[node] = 1 + max(longest[e >> _ORDINAL] for e in succ)
    result.longest_run = max(longest, default=0)
