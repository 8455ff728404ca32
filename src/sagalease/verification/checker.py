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
"""

from __future__ import annotations

import time
import tomllib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

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


@dataclass
class Result:
    """What a run found."""

    # Fields of the same shape as records.TaskSaga's, naming other things: no copy.
    model: Model
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


def _key(m: Model, s: _State) -> tuple[Any, ...]:
    t = s.task
    lease = t.lease
    owner = None if lease is None else lease.owner
    groups: dict[str, list[tuple[int, int]]] = {}
    for i, w in enumerate(s.workers):
        groups.setdefault(_owner(m, i), []).append(
            (w.token if w.token is not None else -1, w.heartbeats)
        )
    workers = tuple(sorted((name == owner, tuple(sorted(g))) for name, g in groups.items()))
    return (
        t.state,
        t.token,
        t.attempts,
        t.expirations,
        tuple(c.status for c in t.compensations),
        None if lease is None else (lease.token, _rel(lease.expires_us, s.now)),
        _rel(t.deadline_us, s.now),
        _rel(t.available_us, s.now),
        workers,
    )


# ------------------------------------------------------------------ actions


class _Move(StrEnum):
    """What the model does besides calling an event."""

    TICK = "tick"  # one second passes
    CRASH = "crash"  # a worker forgets its lease (it dies, or its process restarts)


_Attempt = tuple[str, str, int | None, dict[str, Any]]
"""(label, event or move, worker index or None, core kwargs)."""


def _calls(m: Model, s: _State) -> Iterator[_Attempt]:
    """Every attempt from ``s``, in a fixed order."""
    t = s.task
    ttl = m.ttl * TICK
    comp = Compensation("undo", f"step-{len(t.compensations)}")
    for i, w in enumerate(s.workers):
        owner = _owner(m, i)
        if w.token is None:
            yield f"{owner} acquire", "acquire", i, core_args("acquire", Chosen(owner, ttl_us=ttl))
            continue
        held = Chosen(owner, w.token, ttl, m.release_delay * TICK, comp, reason="boom")
        tries = [("release", "release", held)]
        if m.heartbeats < 0 or w.heartbeats < m.heartbeats:
            tries.insert(0, ("heartbeat", "heartbeat", held))
        if len(t.compensations) < m.compensations:
            tries.append(("register", "register_compensation", held))
        tries += [("complete", "complete", held), ("fail", "fail", held)]
        for index in range(len(t.compensations)):
            at = replace(held, index=index)
            tries.append((f"applied[{index}]", "compensation_applied", at))
            gone = replace(at, reason="gone")
            tries.append((f"comp-failed[{index}]", "compensation_failed", gone))
        for name, event, chosen in tries:
            yield f"{owner} {name}", event, i, core_args(event, chosen)
        yield f"{owner} crash", _Move.CRASH, i, {}
    if m.impostor and t.lease is not None:
        forged = Chosen("impostor", t.token, ttl, 0, reason="forged")
        for event in ("heartbeat", "complete", "fail", "release"):
            yield f"impostor {event}", event, None, core_args(event, forged)
    yield "reaper", "reap", None, {}
    if m.operator:
        operator = Chosen(reason="operator", by="op")
        yield "operator quarantine", "quarantine", None, core_args("quarantine", operator)
    yield "tick", _Move.TICK, None, {}


def _after_call(m: Model, w: _Worker, event: str, new: TaskSaga) -> _Worker:
    if event == "acquire":
        return _Worker(new.token, 0)
    if event == "heartbeat":
        return replace(w, heartbeats=w.heartbeats + 1) if m.heartbeats >= 0 else w
    if new.lease is None:  # given back, ended, or taken away
        return _Worker()
    return w


class _Violation(Exception):
    """A property failed; ``step`` is the offending move, ``key`` the bad state."""

    label: str | None = None
    after: _State | None = None
    key: tuple[Any, ...] | None = None


def _edge_checks(
    event: str, owner: str | None, args: dict[str, Any], s: _State, new: TaskSaga
) -> None:
    old = s.task
    now = s.now
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


def _state_checks(s: _State) -> None:
    if not core.well_formed(s.task):
        raise _Violation(f"record not well formed: {s.task}")
    holders = [w for w in s.workers if w.token is not None and w.token == s.task.token]
    if len(holders) > 1:
        raise _Violation("two workers hold the current token")


def _successors(m: Model, s: _State, handlers: dict[str, Any]) -> Iterator[tuple[str, str, _State]]:
    for label, event, index, args in _calls(m, s):
        if event is _Move.TICK:
            if s.task.state.is_terminal:
                continue
            yield label, event, replace(s, now=s.now + TICK)
            continue
        if event is _Move.CRASH:
            assert index is not None
            workers = list(s.workers)
            workers[index] = _Worker()
            yield label, event, replace(s, workers=tuple(workers))
            continue
        try:
            step = handlers[event](s.task, now_us=s.now, **args)
        except SagaLeaseError:
            continue  # refused: nothing changed (the core is pure)
        workers = list(s.workers)
        if index is not None:
            workers[index] = _after_call(m, workers[index], event, step.task)
        after = _State(step.task, s.now, tuple(workers))
        try:
            _edge_checks(event, args.get("owner"), args, s, step.task)
        except _Violation as exc:
            exc.label, exc.after = label, after
            raise
        yield label, event, after


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


def check(m: Model, *, contracts: bool = False) -> Result:
    """Explore ``m`` exhaustively and check every property (see the module doc).

    ``contracts`` runs the core with its icontract pre/postconditions on.
    """
    started = time.perf_counter()
    # Without icontract's checks unless asked: the state and edge checks here cover
    # the same ground.
    handlers = dict(core.handlers(contracts=contracts))
    result = Result(m)
    init = _initial(m)
    k0 = _key(m, init)
    seen: dict[tuple[Any, ...], tuple[tuple[Any, ...] | None, str, int]] = {k0: (None, "create", 0)}
    reps: dict[tuple[Any, ...], _State] = {k0: init}
    edges: dict[tuple[Any, ...], dict[tuple[Any, ...], str]] = {}
    covered: set[tuple[TaskState, str, TaskState]] = set()
    queue = deque([k0])

    def trace(key: tuple[Any, ...] | None) -> list[str]:
        steps: list[str] = []
        while key is not None:
            parent, label, _ = seen[key]
            steps.append(_describe(label, reps[key], init.now))
            key = parent
        return steps[::-1]

    try:
        _state_checks(init)
        while queue:
            key = queue.popleft()
            s = reps[key]
            depth = seen[key][2]
            result.depth = max(result.depth, depth)
            out = edges.setdefault(key, {})
            for label, event, nxt in _successors(m, s, handlers):
                result.transitions += 1
                if not isinstance(event, _Move):
                    covered.add((s.task.state, event, nxt.task.state))
                nk = _key(m, nxt)
                if nk != key:
                    out.setdefault(nk, label)
                if nk not in seen:
                    seen[nk] = (key, label, depth + 1)
                    reps[nk] = nxt
                    try:
                        _state_checks(nxt)
                    except _Violation as exc:
                        exc.key = nk
                        raise
                    queue.append(nk)
    except _Violation as exc:
        result.violation = str(exc)
        if exc.key is not None:
            result.trace = [*trace(exc.key), "  ^-- violates"]
        elif exc.label is not None and exc.after is not None:
            result.trace = [
                *trace(key),
                _describe(exc.label, exc.after, init.now) + "  <-- violates",
            ]
    result.states = len(seen)
    if result.violation is None:
        _liveness(result, reps, edges, trace)
    if result.violation is None:
        declared = {(t.source, t.event, t.target) for ts in CHART.values() for t in ts}
        result.uncovered = sorted(f"{a.value} --{e}--> {b.value}" for a, e, b in declared - covered)
    if m.figures is not None and result.violation is None:
        result.drift = {
            k: (v, result.figures[k]) for k, v in m.figures.items() if result.figures.get(k) != v
        }
    result.seconds = time.perf_counter() - started
    return result


def _liveness(
    result: Result,
    reps: dict[tuple[Any, ...], _State],
    edges: dict[tuple[Any, ...], dict[tuple[Any, ...], str]],
    trace: Any,
) -> None:
    """No non-terminal cycle, no stuck state; longest run to termination."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    longest: dict[tuple[Any, ...], int] = {}
    for root in edges:
        if color[root] != white:
            continue
        stack: list[tuple[tuple[Any, ...], Iterator[tuple[Any, ...]]]] = [(root, iter(edges[root]))]
        color[root] = grey
        while stack:
            node, it = stack[-1]
            advanced = False
            for nxt in it:
                if reps[nxt].task.state.is_terminal:
                    continue
                if color[nxt] == grey:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(nxt) :]
                    result.violation = (
                        f"a run can go on forever without ending ({len(cycle)}-state cycle)"
                    )
                    start = reps[nxt].now
                    result.trace = [
                        *trace(nxt),
                        "cycle (states repeat up to the clock):",
                        *(
                            _describe(edges[a][b], reps[b], start)
                            for a, b in zip(cycle, [*cycle[1:], nxt], strict=True)
                        ),
                    ]
                    return
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, iter(edges[nxt])))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                color[node] = black
                state = reps[node].task.state
                succ = [longest.get(n, 0) for n in edges[node]]
                if not state.is_terminal and not edges[node]:
                    result.violation = "a non-terminal state has no way forward"
                    result.trace = trace(node)
                    return
                longest[node] = 0 if state.is_terminal else 1 + max(succ, default=0)
    result.longest_run = max(longest.values(), default=0)
