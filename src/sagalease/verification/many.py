"""An explicit-state model checker for several tasks (:func:`check_many`).

The one-task checker (:mod:`~sagalease.verification.checker`) never sees the
choices a store makes *across* tasks. This one explores, breadth first, every
interleaving of a few worker processes around two or three tasks of different
queues and priorities: ``claim_next`` and ``claim_batch`` over named queues,
heartbeats, releases, ``complete``, ``complete_many``, ``fail``, compensations,
the reaper (with and without a limit), an operator, crashes and the passing of
time.

Nothing about the lifecycle or the claim order is restated. Every per-task
change is a call of the core functions the stores call (:func:`core.handlers`);
a claim is the SQL stores' walk (:func:`sagalease.stores._rows.choose_claims`)
over candidate rows encoded by their row codec and sorted by their ``ORDER BY``
(:data:`sagalease.stores._sql.CLAIM_ORDER`); ``complete_many`` and ``reap``
follow :class:`~sagalease.stores._base.StoreBase` and the backends (see
:func:`complete_many_steps` and :func:`reap_steps`). The properties
(:data:`PROPERTIES`) are written independently of those pieces, from the
store protocol's words.

As in the one-task checker, time is discrete (one tick = one second), every
instant is kept relative to ``now`` and clamped at zero, and worker ids are
interchangeable (states are keyed up to a permutation of them), so the space is
finite without a horizon.
"""

from __future__ import annotations

import functools
import itertools
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sagalease import core
from sagalease.errors import SagaLeaseError
from sagalease.lifecycle import CHART, EVENTS, HOLDER_EVENTS
from sagalease.records import Compensation, CompensationStatus, TaskSaga
from sagalease.store import READERS, SagaStore
from sagalease.stores import _rows, _sql
from sagalease.verification.checker import Result, Verdict

__all__ = [
    "ACTIONS",
    "PROPERTIES",
    "ManyModel",
    "ManyResult",
    "TaskSpec",
    "check_many",
    "claim_steps",
    "complete_many_steps",
    "load_many",
    "many_model_names",
    "mapping_rows",
    "mapping_table",
    "reap_steps",
    "store_methods",
    "unmapped_methods",
]

TICK = 1_000_000
_MEMO_LIMIT = 400_000

PROPERTIES: Mapping[str, str] = {
    "one-holder": "every edge: at most one worker process believes it holds the current"
    " token of a task, and a claim takes only a task without a live lease",
    "single-grant": "every edge: a claim grants each task it takes the token plus one, to"
    " the caller; no other action changes a token (token = number of grants, so no"
    " token is granted twice)",
    "well-formed": "every edge: each record it writes is well formed (`core.well_formed`)",
    "terminal": "every edge: an ended task never changes (but for notes)",
    "declared": "every edge: each task's change is a transition the chart declares for"
    " the event applied",
    "fencing": "every edge: a holder write (heartbeat, release, complete, fail,"
    " compensation_applied, each item of complete_many) succeeds only for the owner of"
    " the live lease with the current token",
    "claim-order": "every claim: claim_next / claim_batch(k) take the first k tasks of the"
    " named queues that can be acquired, by priority (highest first) then creation;"
    " none when none can",
    "batch-atomic": "every complete_many: completes every task named when each complete"
    " alone would succeed, else changes nothing",
    "reaper": "every reap: never drops a live lease, changes tasks in creation order, and"
    " without a limit leaves no task that needs reaping",
    "liveness": "no cycle among states where a task has not ended and no such state"
    " without a way forward: under weak fairness every task ends",
    "coverage": "every model action succeeds in some run, and complete_many is also"
    " refused in some run",
}
"""What :func:`check_many` verifies, by name (a violation names its property)."""

ACTIONS: Mapping[str, str | None] = {
    "claim_next": "claim_next",
    "claim_batch": "claim_batch",
    "heartbeat": "heartbeat",
    "release": "release",
    "complete": "complete",
    "complete_many": "complete_many",
    "fail": "fail",
    "compensation_applied": "compensation_applied",
    "reap": "reap",
    "quarantine": "quarantine",
    "annotate": "annotate",
    "crash": None,
    "tick": None,
}
"""The actions of the multi-task model and the :class:`SagaStore` method each stands
for (``None``: no store call, a worker forgetting its leases or time passing).
"""

_ACTION_EVENT: Mapping[str, str] = {
    "claim_next": "acquire",
    "claim_batch": "acquire",
    "complete_many": "complete",
}


# ------------------------------------------------------------------ models


@dataclass(frozen=True)
class TaskSpec:
    """One task of a model. Times in ticks."""

    queue: str = "default"
    priority: int = 0
    max_attempts: int = 2
    deadline: int | None = None  # ticks after creation; absent: no deadline
    compensations: int = 0  # registered at creation (so `fail` leads to compensating)


@dataclass(frozen=True)
class ManyModel:
    """What the actors may do around several tasks. Times are in ticks.

    A worker process claims (``claim_next``, or ``claim_batch`` of ``batch``, over each
    entry of ``claim_queues``) only when it believes it holds nothing; it then writes
    to what it believes it holds (heartbeat, release, complete, fail,
    compensation_applied, ``complete_many`` of any two or more) until a write drops
    the lease or it crashes (forgets them all). Processes ``i`` share the worker id
    ``w{i // incarnations}``: a restarted worker and its paused old self.
    """

    name: str = "many"
    tasks: tuple[TaskSpec, ...] = (TaskSpec(), TaskSpec())
    workers: int = 2  # worker processes
    incarnations: int = 1  # processes sharing one worker id (a restarted worker's paused self)
    ttl: int = 2
    heartbeats: int = 1  # per lease; negative: unbounded
    release_delay: int = 1
    batch: int = 2  # claim_batch's limit; below 2: no claim_batch
    claim_queues: tuple[tuple[str, ...] | None, ...] = (None,)  # None: every queue
    reap_limit: bool = True  # the reaper also runs with limit=1
    quarantine: bool = True  # an operator may quarantine any task
    annotate: bool = True  # an operator may annotate any task (terminal ones included)
    expect: Verdict = Verdict.PASS
    description: str = ""
    figures: dict[str, int] | None = None  # recorded results; a difference is a failure


def _many_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "_models" / "many", here.parents[2] / "models" / "many"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no models/many directory")


def many_model_names() -> list[str]:
    """Names of the bundled multi-task models (``models/many/*.toml``)."""
    return sorted(p.stem for p in _many_dir().glob("*.toml"))


def load_many(name_or_path: str, **overrides: Any) -> ManyModel:
    """A model from ``models/many/<name>.toml`` (or a path), with overrides applied.

    In the file, ``[[tasks]]`` tables give the tasks (:class:`TaskSpec`'s fields)
    and ``claim_queues`` the queue lists claims name, ``[]`` standing for every
    queue (``queues=None``).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = _many_dir() / f"{name_or_path}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("name", path.stem)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        data.pop("figures", None)  # recorded for the model as written, not a variant
    data.update(changes)
    data["tasks"] = tuple(t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in data["tasks"])
    if "claim_queues" in data:
        data["claim_queues"] = tuple(
            None if q is None or not q else tuple(q) for q in data["claim_queues"]
        )
    data["expect"] = Verdict(data.get("expect", Verdict.PASS))
    return ManyModel(**data)


# ------------------------------------------------------------------ store pieces


_ROW_COLUMNS = ("seq", *_rows.TASK_COLUMNS)


def _row(seq: int, task: TaskSaga) -> _rows.Row:
    return (seq, task.task_id, *_rows.task_values(task))


@functools.lru_cache(maxsize=4)
def _claim_order(order: str) -> Callable[[_rows.Row], tuple[int, ...]]:
    """A sort key for rows from an ``ORDER BY`` of integer columns (``priority DESC, seq``)."""
    terms: list[tuple[int, bool]] = []
    for term in order.split(","):
        name, *direction = term.split()
        terms.append((_ROW_COLUMNS.index(name), [d.upper() for d in direction] == ["DESC"]))
    return lambda row: tuple(-row[i] if desc else row[i] for i, desc in terms)


def claim_steps(
    acquire: Callable[..., core.Step],
    tasks: Sequence[TaskSaga],
    *,
    owner: str,
    ttl_us: int,
    now_us: int,
    limit: int,
    queues: tuple[str, ...] | None,
    encode: Callable[[int, TaskSaga], _rows.Row] = _row,
) -> list[tuple[int, core.Step]]:
    """A claim of up to ``limit`` tasks, as the SQL stores make it: the open tasks of
    ``queues`` as rows (``seq`` = creation order) in :data:`_sql.CLAIM_ORDER`, walked
    by :func:`_rows.choose_claims` with the core's ``acquire`` (a refused row is
    skipped). Returns (task index, step) for each task taken.

    ``acquire`` receives the record decoded from its row (``encode``: the row codec).
    """
    rows = [
        encode(i + 1, t)
        for i, t in enumerate(tasks)
        if not t.state.is_terminal and (queues is None or t.queue in queues)
    ]
    rows.sort(key=_claim_order(_sql.CLAIM_ORDER))
    priority = _ROW_COLUMNS.index("priority")

    def fetch(cursor: _rows.ClaimCursor, n: int) -> list[_rows.Row]:
        start = 0
        if cursor is not None:
            start = 1 + next(j for j, r in enumerate(rows) if (r[priority], r[0]) == cursor)
        return rows[start : start + n]

    chosen = _rows.choose_claims(
        fetch, lambda t: acquire(t, owner=owner, ttl_us=ttl_us, now_us=now_us), limit, 1
    )
    index = {t.task_id: i for i, t in enumerate(tasks)}
    return [(index[task.task_id], step) for task, step in chosen]


def complete_many_steps(
    complete: Callable[..., core.Step],
    tasks: Sequence[TaskSaga],
    items: Sequence[tuple[int, int]],
    *,
    owner: str,
    now_us: int,
) -> list[tuple[int, core.Step]]:
    """``complete_many`` of (task index, token) pairs as
    :meth:`StoreBase.complete_many` hands it to a backend's ``_mutate_many``: every
    step is computed first and the first refusal raises, so none is applied.
    """
    return [
        (i, complete(tasks[i], owner=owner, token=token, reason=None, now_us=now_us))
        for i, token in items
    ]


def reap_steps(
    reap: Callable[..., core.Step],
    tasks: Sequence[TaskSaga],
    *,
    now_us: int,
    limit: int | None,
    needs_reap: Callable[[TaskSaga, int], bool] | None = None,
) -> list[tuple[int, core.Step]]:
    """A reaper's pass as the stores make it (``MemoryStore._reap``,
    ``SQLStoreBase._reap_batches``): in creation order, the core's ``reap`` of every
    open task that ``needs_reap`` (default :func:`core.needs_reap`) says needs it,
    at most ``limit``.
    """
    needs = core.needs_reap if needs_reap is None else needs_reap
    out: list[tuple[int, core.Step]] = []
    for i, task in enumerate(tasks):
        if limit is not None and len(out) >= limit:
            break
        if not task.state.is_terminal and needs(task, now_us):
            out.append((i, reap(task, now_us=now_us)))
    return out


# ------------------------------------------------------------------ states

_Belief = tuple[int, int] | None
"""What one process believes of one task: (token, heartbeats sent) or nothing."""

_NONE = (-1, 0)


@dataclass(frozen=True)
class _State:
    tasks: tuple[TaskSaga, ...]
    now: int
    procs: tuple[tuple[_Belief, ...], ...]  # per process, per task


@dataclass
class ManyResult(Result[ManyModel]):
    """What a run of :func:`check_many` found: :class:`~sagalease.verification.checker.Result`'s
    figures and findings, the property violated and the actions taken.
    """

    property_name: str | None = None  # the name (in PROPERTIES) of the property violated
    taken: dict[str, int] = field(default_factory=dict)  # successful actions, by name

    def summary(self) -> str:
        """One line: the verdict and the figures, as printed by the CLI."""
        rate = self.states / self.seconds if self.seconds else 0.0
        head = f"{self.model.name}: {self.verdict.value.upper()}"
        return (
            f"{head}  states={self.states:,} transitions={self.transitions:,}"
            f" depth={self.depth} longest_run={self.longest_run}"
            f" seconds={self.seconds:.1f} states/s={rate:,.0f}"
        )


class _Violation(Exception):
    def __init__(self, prop: str, message: str) -> None:
        super().__init__(f"{prop}: {message}")
        self.prop = prop
        self.label: str | None = None
        self.after: _State | None = None


def _rel(instant: int | None, now: int) -> int | None:
    return None if instant is None else max(instant - now, 0)


class _Space:
    """The model's fixed parts: owners, permutations, handlers."""

    def __init__(self, m: ManyModel, handlers: Mapping[str, Callable[..., core.Step]]) -> None:
        self.m = m
        self.handlers = handlers
        self.owner_of = [p // m.incarnations for p in range(m.workers)]
        self.owners = sorted(set(self.owner_of))
        self.names = [f"w{o}" for o in self.owners]
        self.index_of = {name: o for o, name in zip(self.owners, self.names, strict=True)}
        sizes = [self.owner_of.count(o) for o in self.owners]
        self.groups = [[p for p in range(m.workers) if self.owner_of[p] == o] for o in self.owners]
        # Permutations of worker ids that keep each id's number of processes.
        self.perms = [
            perm
            for perm in itertools.permutations(range(len(self.owners)))
            if all(sizes[perm[i]] == sizes[i] for i in range(len(self.owners)))
        ]
        # Memos of the pure core's answers for one (record object, arguments): the
        # same records recur in the successors of a state and across states.
        self._memo: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._needs_reap = core.needs_reap  # as the run starts (a test may replace it)
        self.refusals = 0  # complete_many calls refused (coverage asks for one)

    def call(self, event: str, task: TaskSaga, **kw: Any) -> core.Step:
        """``handlers[event](task, **kw)``, memoised (a refusal raises again)."""
        key = (event, id(task), *kw.items())
        hit = self._memo.get(key)
        if hit is not None and hit[0] is task:
            out = hit[1]
        else:
            if len(self._memo) > _MEMO_LIMIT:
                self._memo.clear()
            try:
                out = self.handlers[event](task, **kw)
            except SagaLeaseError as exc:
                out = exc
            self._memo[key] = (task, out)
        if isinstance(out, SagaLeaseError):
            raise out.with_traceback(None)
        result: core.Step = out
        return result

    def needs_reap(self, task: TaskSaga, now_us: int) -> bool:
        """:func:`core.needs_reap`, memoised."""
        key = ("needs_reap", id(task), now_us)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is task:
            answer: bool = hit[1]
            return answer
        answer = self._needs_reap(task, now_us)
        self._memo[key] = (task, answer)
        return answer

    def row(self, seq: int, task: TaskSaga) -> _rows.Row:
        """The task's row (the SQL stores' codec), memoised."""
        key = ("row", id(task), seq)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is task:
            row: _rows.Row = hit[1]
            return row
        row = _row(seq, task)
        self._memo[key] = (task, row)
        return row

    def claim(
        self,
        tasks: tuple[TaskSaga, ...],
        *,
        owner: str,
        now_us: int,
        limit: int,
        queues: tuple[str, ...] | None,
    ) -> list[tuple[int, core.Step]]:
        """:func:`claim_steps` with the memoised core, memoised."""
        key = ("claim", *map(id, tasks), owner, now_us, limit, queues)
        hit = self._memo.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], tasks, strict=True)):
            chosen: list[tuple[int, core.Step]] = hit[1]
            return chosen
        by_id = {t.task_id: t for t in tasks}
        ttl = self.m.ttl * TICK

        def acquire(t: TaskSaga, **kw: Any) -> core.Step:
            original = by_id[t.task_id]
            # The record decoded from its row is the record (same id and version in
            # one state): ask the memo about the original object.
            return self.call("acquire", original if original.version == t.version else t, **kw)

        chosen = claim_steps(
            acquire,
            tasks,
            owner=owner,
            ttl_us=ttl,
            now_us=now_us,
            limit=limit,
            queues=queues,
            encode=self.row,
        )
        self._memo[key] = (tasks, chosen)
        return chosen

    def key(self, s: _State) -> tuple[Any, ...]:
        now = s.now
        base = []
        leases = []
        for t in s.tasks:
            lease = t.lease
            base.append(
                (
                    t.state,
                    t.token,
                    t.attempts,
                    t.expirations,
                    tuple(c.status for c in t.compensations),
                    _rel(t.deadline_us, now),
                    _rel(t.available_us, now),
                )
            )
            leases.append(
                None
                if lease is None
                else (self.index_of[lease.owner], lease.token, _rel(lease.expires_us, now))
            )
        groups = [
            tuple(sorted(tuple(_NONE if b is None else b for b in s.procs[p]) for p in g))
            for g in self.groups
        ]
        best: tuple[Any, ...] | None = None
        for perm in self.perms:  # perm[i]: the new name of worker i
            inverse = [0] * len(perm)
            for i, j in enumerate(perm):
                inverse[j] = i
            tasks = tuple(
                (*b, None if lz is None else (perm[lz[0]], lz[1], lz[2]))
                for b, lz in zip(base, leases, strict=True)
            )
            candidate = (tasks, tuple(groups[inverse[j]] for j in range(len(perm))))
            if best is None or candidate < best:
                best = candidate
        assert best is not None
        return best


# ------------------------------------------------------------------ moves

_Change = tuple[int, str, str | None, int | None, TaskSaga, TaskSaga]
"""(task index, event, caller owner, caller token, old record, new record)."""


def _moves(sp: _Space, s: _State) -> Iterator[tuple[str, str, _State, list[_Change]]]:
    """Every successful action from ``s``: (label, action, new state, task changes).

    Claim, complete_many and reap are checked against their properties here.
    """
    m = sp.m
    tasks, now = s.tasks, s.now
    ttl = m.ttl * TICK
    for p, beliefs in enumerate(s.procs):
        owner = sp.names[sp.owners.index(sp.owner_of[p])]
        held = [(i, b) for i, b in enumerate(beliefs) if b is not None]
        if not held:
            for queues in m.claim_queues:
                shown = "*" if queues is None else ",".join(queues)
                limits = [("claim_next", 1)] + ([("claim_batch", m.batch)] if m.batch > 1 else [])
                for action, limit in limits:
                    label = f"p{p}:{owner} {action}[{shown}]"
                    chosen = sp.claim(tasks, owner=owner, now_us=now, limit=limit, queues=queues)
                    _check_claim(sp, s, owner, queues, limit, chosen, label)
                    if not chosen:
                        continue
                    new_tasks = list(tasks)
                    mine = list(beliefs)
                    changes: list[_Change] = []
                    for i, step in chosen:
                        changes.append((i, "acquire", owner, None, new_tasks[i], step.task))
                        new_tasks[i] = step.task
                        mine[i] = (step.task.token, 0)
                    procs = list(s.procs)
                    procs[p] = tuple(mine)
                    yield label, action, _State(tuple(new_tasks), now, tuple(procs)), changes
            continue
        for i, (token, beats) in held:
            t = tasks[i]
            tries: list[tuple[str, str, dict[str, Any]]] = []
            if m.heartbeats < 0 or beats < m.heartbeats:
                tries.append(("heartbeat", "heartbeat", {"ttl_us": ttl}))
            tries.append(("release", "release", {"delay_us": m.release_delay * TICK}))
            tries.append(("complete", "complete", {}))
            tries.append(("fail", "fail", {"reason": "boom"}))
            for j, c in enumerate(t.compensations):
                if c.status is CompensationStatus.PENDING:
                    tries.append((f"applied[{j}]", "compensation_applied", {"index": j}))
            for name, event, args in tries:
                try:
                    step = sp.call(event, t, owner=owner, token=token, now_us=now, **args)
                except SagaLeaseError:
                    continue
                mine = list(beliefs)
                if event == "heartbeat":
                    mine[i] = (token, beats + 1 if m.heartbeats >= 0 else beats)
                elif step.task.lease is None:
                    mine[i] = None
                procs = list(s.procs)
                procs[p] = tuple(mine)
                new_tasks = list(tasks)
                new_tasks[i] = step.task
                label = f"p{p}:{owner} {name} t{i}#{token}"
                action = "compensation_applied" if event == "compensation_applied" else event
                yield (
                    label,
                    action,
                    _State(tuple(new_tasks), now, tuple(procs)),
                    [(i, event, owner, token, t, step.task)],
                )
        for size in range(2, len(held) + 1):
            for subset in itertools.combinations(held, size):
                items = [(i, token) for i, (token, _) in subset]
                label = f"p{p}:{owner} complete_many[" + ",".join(f"t{i}#{tok}" for i, tok in items)
                label += "]"
                outcome = _complete_many(sp, s, owner, items, label)
                if outcome is None:
                    continue
                new_tasks = list(tasks)
                mine = list(beliefs)
                changes = []
                tokens = dict(items)
                for i, step in outcome:
                    changes.append((i, "complete", owner, tokens[i], tasks[i], step.task))
                    new_tasks[i] = step.task
                    if step.task.lease is None:
                        mine[i] = None
                procs = list(s.procs)
                procs[p] = tuple(mine)
                yield label, "complete_many", _State(tuple(new_tasks), now, tuple(procs)), changes
        procs = list(s.procs)
        procs[p] = tuple(None for _ in beliefs)
        yield f"p{p}:{owner} crash", "crash", _State(tasks, now, tuple(procs)), []
    for cap in (None, 1) if m.reap_limit else (None,):
        label = "reaper" if cap is None else "reaper(limit=1)"
        steps = reap_steps(
            lambda t, now_us: sp.call("reap", t, now_us=now_us),
            tasks,
            now_us=now,
            limit=cap,
            needs_reap=sp.needs_reap,
        )
        _check_reap(sp, s, cap, steps, label)
        if steps:
            new_tasks = list(tasks)
            for i, step in steps:
                new_tasks[i] = step.task
            yield (
                label,
                "reap",
                _State(tuple(new_tasks), now, s.procs),
                [(i, "reap", None, None, tasks[i], step.task) for i, step in steps],
            )
    operator = [
        (action, args)
        for action, args, on in (
            ("quarantine", {"reason": "operator", "by": "op"}, m.quarantine),
            ("annotate", {"text": "note", "by": "op"}, m.annotate),
        )
        if on
    ]
    if operator:
        for i, t in enumerate(tasks):
            for action, args in operator:
                try:
                    step = sp.call(action, t, now_us=now, **args)
                except SagaLeaseError:
                    continue
                new_tasks = list(tasks)
                new_tasks[i] = step.task
                yield (
                    f"operator {action} t{i}",
                    action,
                    _State(tuple(new_tasks), now, s.procs),
                    [(i, action, None, None, t, step.task)],
                )
    if not all(t.state.is_terminal for t in tasks):
        yield "tick", "tick", replace(s, now=now + TICK), []


def _fail(prop: str, message: str, label: str, after: _State | None = None) -> _Violation:
    exc = _Violation(prop, message)
    exc.label = label
    exc.after = after
    return exc


def _check_claim(
    sp: _Space,
    s: _State,
    owner: str,
    queues: tuple[str, ...] | None,
    limit: int,
    chosen: list[tuple[int, core.Step]],
    label: str,
) -> None:
    """claim-order: the tasks taken are the first ``limit`` that can be acquired, by
    priority (highest first), then creation.
    """
    ttl = sp.m.ttl * TICK

    def can(t: TaskSaga) -> bool:
        try:
            sp.call("acquire", t, owner=owner, ttl_us=ttl, now_us=s.now)
        except SagaLeaseError:
            return False
        return True

    able = [
        i
        for i, t in enumerate(s.tasks)
        if (queues is None or t.queue in queues) and not t.state.is_terminal and can(t)
    ]
    expected = sorted(able, key=lambda i: (-s.tasks[i].priority, i))[:limit]
    got = [i for i, _ in chosen]
    if got != expected:
        names = ", ".join(f"t{i} (priority {s.tasks[i].priority})" for i in able) or "none"
        raise _fail(
            "claim-order",
            f"the claim took {_names(got)}, not {_names(expected)}; leaseable: {names}",
            label,
        )


def _names(indices: Sequence[int]) -> str:
    return "[" + ", ".join(f"t{i}" for i in indices) + "]"


def _complete_many(
    sp: _Space, s: _State, owner: str, items: list[tuple[int, int]], label: str
) -> list[tuple[int, core.Step]] | None:
    """complete_many through :func:`complete_many_steps` (``None``: refused), checked
    against each ``complete`` alone (batch-atomic).
    """
    alone = 0
    for i, token in items:
        try:
            sp.call("complete", s.tasks[i], owner=owner, token=token, now_us=s.now)
            alone += 1
        except SagaLeaseError:
            pass
    try:
        outcome: list[tuple[int, core.Step]] | None = complete_many_steps(
            sp.handlers["complete"], s.tasks, items, owner=owner, now_us=s.now
        )
    except SagaLeaseError:
        outcome = None
    sp.refusals += outcome is None
    if alone == len(items):
        if outcome is None or sorted(i for i, _ in outcome) != sorted(i for i, _ in items):
            raise _fail(
                "batch-atomic",
                "complete_many did not complete every task although each complete alone would",
                label,
            )
    elif outcome is not None:
        done = sorted(i for i, _ in outcome)
        raise _fail(
            "batch-atomic",
            f"complete_many applied {_names(done)} although"
            f" {len(items) - alone} of its {len(items)} completes are refused alone",
            label,
        )
    return outcome


def _check_reap(
    sp: _Space, s: _State, limit: int | None, steps: list[tuple[int, core.Step]], label: str
) -> None:
    """reaper: no live lease dropped; creation order; nothing left to reap without a limit."""
    done = [i for i, _ in steps]
    if done != sorted(done):
        raise _fail("reaper", f"the reaper changed {done} out of creation order", label)
    for i, _ in steps:
        old = s.tasks[i].lease
        if old is not None and s.now < old.expires_us:
            raise _fail("reaper", f"the reaper dropped the live lease of t{i}", label)
    if limit is None:
        after = list(s.tasks)
        for i, step in steps:
            after[i] = step.task
        left = [
            i for i, t in enumerate(after) if not t.state.is_terminal and sp.needs_reap(t, s.now)
        ]
        if left:
            raise _fail("reaper", f"a reap without a limit left {left} needing reaping", label)


def _check_edge(sp: _Space, s: _State, after: _State, changes: list[_Change], label: str) -> None:
    """The per-edge properties, each over every task change, in the order of
    :data:`PROPERTIES` (the first one broken is reported).
    """
    now = s.now
    for i, t in enumerate(after.tasks):
        believers = [p for p, beliefs in enumerate(after.procs) if _believes(beliefs[i], t.token)]
        if len(believers) > 1:
            raise _fail(
                "one-holder",
                f"processes {believers} all believe they hold t{i} token {t.token}",
                label,
                after,
            )
    for i, event, _, _, old, _ in changes:
        lease = old.lease
        if event == "acquire" and lease is not None and now < lease.expires_us:
            raise _fail("one-holder", f"a claim took t{i} whose lease is live", label, after)
    for i, event, owner, _, old, new in changes:
        granted = (
            new.lease is not None and new.lease.owner == owner and new.lease.token == new.token
        )
        if event == "acquire" and not (new.token == old.token + 1 and granted):
            raise _fail(
                "single-grant",
                f"the claim of t{i} by {owner} granted token {new.token} after {old.token}"
                f" (lease: {new.lease})",
                label,
                after,
            )
        if event != "acquire" and new.token != old.token:
            raise _fail(
                "single-grant",
                f"{event} changed t{i}'s token from {old.token} to {new.token}"
                " (a later claim would grant a token again)",
                label,
                after,
            )
    for _, event, _, _, _, new in changes:
        if not core.well_formed(new):
            raise _fail(
                "well-formed", f"{event} wrote a record not well formed: {new}", label, after
            )
    for i, event, _, _, old, new in changes:
        if old.state.is_terminal and replace(new, notes=old.notes, version=old.version) != old:
            raise _fail(
                "terminal", f"{event} changed t{i}, which had ended ({old.state})", label, after
            )
    for i, event, _, _, old, new in changes:
        targets = {tr.target for tr in CHART.get((old.state, event), ())}
        if event != "annotate" and new.state not in targets:
            raise _fail(
                "declared",
                f"t{i} {old.state.value} --{event}--> {new.state.value} is not declared",
                label,
                after,
            )
    for i, event, owner, token, old, _ in changes:
        lease = old.lease
        if event in HOLDER_EVENTS and not (
            lease is not None
            and now < lease.expires_us
            and lease.owner == owner
            and lease.token == token == old.token
        ):
            raise _fail(
                "fencing",
                f"{event} of t{i} by {owner} with token {token} succeeded without the live"
                f" lease (lease: {lease})",
                label,
                after,
            )


def _believes(belief: _Belief, token: int) -> bool:
    return belief is not None and belief[0] == token


# ------------------------------------------------------------------ the run


def _describe(sp: _Space, label: str, s: _State, origin: int) -> str:
    parts = []
    for i, t in enumerate(s.tasks):
        lease = (
            "-"
            if t.lease is None
            else f"{t.lease.owner}#{t.lease.token} {max(t.lease.expires_us - s.now, 0) // TICK}s"
        )
        parts.append(f"t{i}:{t.state.value}/{t.token} a{t.attempts} {lease}")
    beliefs = " ".join(
        f"p{p}[" + ",".join("-" if b is None else str(b[0]) for b in bs) + "]"
        for p, bs in enumerate(s.procs)
    )
    return f"{label:<34} t+{(s.now - origin) // TICK}s  {'  '.join(parts)}  {beliefs}"


def _initial(m: ManyModel) -> _State:
    now = 10 * TICK
    tasks = []
    for i, spec in enumerate(m.tasks):
        deadline = None if spec.deadline is None else now + spec.deadline * TICK
        comps = tuple(Compensation("undo", f"t{i}-step-{j}") for j in range(spec.compensations))
        tasks.append(
            core.create(
                f"t{i}",
                now_us=now,
                queue=spec.queue,
                priority=spec.priority,
                max_attempts=spec.max_attempts,
                deadline_us=deadline,
                compensations=comps,
            ).task
        )
    procs = tuple(tuple(None for _ in tasks) for _ in range(m.workers))
    return _State(tuple(tasks), now, procs)


def check_many(m: ManyModel, *, contracts: bool = False) -> ManyResult:
    """Explore ``m`` exhaustively and check every property of :data:`PROPERTIES`.

    ``contracts`` runs the core with its icontract pre/postconditions on. A
    violation names its property (:attr:`ManyResult.property_name`) and comes with a
    trace from the initial state.
    """
    started = time.perf_counter()
    sp = _Space(m, dict(core.handlers(contracts=contracts)))
    result = ManyResult(m)
    init = _initial(m)
    k0 = sp.key(init)
    seen: dict[tuple[Any, ...], tuple[tuple[Any, ...] | None, str, int]] = {k0: (None, "create", 0)}
    reps: dict[tuple[Any, ...], _State] = {k0: init}
    edges: dict[tuple[Any, ...], dict[tuple[Any, ...], str]] = {}
    taken: dict[str, int] = dict.fromkeys(ACTIONS, 0)
    queue = deque([k0])

    def trace(key: tuple[Any, ...] | None) -> list[str]:
        steps: list[str] = []
        while key is not None:
            parent, label, _ = seen[key]
            steps.append(_describe(sp, label, reps[key], init.now))
            key = parent
        return steps[::-1]

    key: tuple[Any, ...] | None = None
    try:
        for t in init.tasks:
            if not core.well_formed(t):  # pragma: no cover - core.create's own
                raise _Violation("well-formed", f"initial record not well formed: {t}")
        while queue:
            key = queue.popleft()
            s = reps[key]
            depth = seen[key][2]
            result.depth = max(result.depth, depth)
            out = edges.setdefault(key, {})
            for label, action, nxt, changes in _moves(sp, s):
                _check_edge(sp, s, nxt, changes, label)
                result.transitions += 1
                taken[action] += 1
                nk = sp.key(nxt)
                if nk != key:
                    out.setdefault(nk, label)
                if nk not in seen:
                    seen[nk] = (key, label, depth + 1)
                    reps[nk] = nxt
                    queue.append(nk)
    except _Violation as exc:
        result.violation = str(exc)
        result.property_name = exc.prop
        if key is not None:
            result.trace = [*trace(key)]
            if exc.label is not None:
                shown = exc.after if exc.after is not None else reps[key]
                result.trace.append(_describe(sp, exc.label, shown, init.now) + "  <-- violates")
    result.states = len(seen)
    result.taken = {k: v for k, v in taken.items() if v}
    if result.violation is None:
        _liveness(sp, result, reps, edges, trace)
    if result.violation is None:
        result.uncovered = sorted(a for a, n in taken.items() if not n and _possible(m, a))
        if sp.refusals == 0 and taken["complete_many"]:
            result.uncovered.append("complete_many refused")
        if result.uncovered:
            result.property_name = "coverage"
    if m.figures is not None and result.violation is None:
        result.drift = {
            k: (v, result.figures[k]) for k, v in m.figures.items() if result.figures.get(k) != v
        }
    result.seconds = time.perf_counter() - started
    return result


def _possible(m: ManyModel, action: str) -> bool:
    """Whether the model offers ``action`` at all (coverage asks only for those)."""
    if action == "claim_batch":
        return m.batch > 1
    if action == "compensation_applied":
        return any(t.compensations for t in m.tasks)
    if action == "quarantine":
        return m.quarantine
    if action == "annotate":
        return m.annotate
    return True


def _liveness(
    sp: _Space,
    result: ManyResult,
    reps: dict[tuple[Any, ...], _State],
    edges: dict[tuple[Any, ...], dict[tuple[Any, ...], str]],
    trace: Callable[[tuple[Any, ...] | None], list[str]],
) -> None:
    """No cycle among states with an open task, no such state stuck; longest run."""

    def final(k: tuple[Any, ...]) -> bool:
        return all(t.state.is_terminal for t in reps[k].tasks)

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
                if final(nxt):
                    continue
                if color[nxt] == grey:
                    path = [n for n, _ in stack]
                    cycle = path[path.index(nxt) :]
                    result.violation = (
                        "liveness: a run can go on forever without every task ending"
                        f" ({len(cycle)}-state cycle)"
                    )
                    result.property_name = "liveness"
                    start = reps[nxt].now
                    result.trace = [
                        *trace(nxt),
                        "cycle (states repeat up to the clock):",
                        *(
                            _describe(sp, edges[a][b], reps[b], start)
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
                done = final(node)
                if not done and not edges[node]:
                    result.violation = "liveness: a state with an open task has no way forward"
                    result.property_name = "liveness"
                    result.trace = trace(node)
                    return
                longest[node] = (
                    0 if done else 1 + max((longest.get(n, 0) for n in edges[node]), default=0)
                )
    result.longest_run = max(longest.values(), default=0)


# ------------------------------------------------------------------ mapping


ONE_TASK_MOVES: tuple[str, ...] = ("crash", "tick")
"""The one-task checker's moves that call no store method (a worker forgetting its
lease, time passing); its other actions are the chart's events, each taken in some
run (its coverage property).
"""

_MANY_CALLS: Mapping[str, str] = {
    "claim_next": "`many.claim_steps`: `_rows.choose_claims` over rows in `_sql.CLAIM_ORDER`,"
    " `core.acquire`",
    "claim_batch": "`many.claim_steps` (limit k): `_rows.choose_claims`, `core.acquire`",
    "complete_many": "`many.complete_many_steps`: `core.complete` of each, all or none",
    "reap": "`many.reap_steps`: `core.needs_reap`, `core.reap`, creation order",
}


def store_methods() -> list[str]:
    """The public methods of the :class:`SagaStore` protocol."""
    return sorted(
        name
        for name, value in vars(SagaStore).items()
        if not name.startswith("_") and callable(value)
    )


def mapping_rows() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(model, action, store methods, what the model calls) for every action of both
    checkers, the initial state (``create``) as the action ``init``.
    """
    one = "one task (checker.py)"
    rows: list[tuple[str, str, tuple[str, ...], str]] = [
        (one, "init", ("create",), "`core.create`")
    ]
    rows += [(one, event, (event,), f"`core.{event}`") for event in EVENTS]
    rows += [(one, move, (), "-") for move in ONE_TASK_MOVES]
    many = "many tasks (many.py)"
    rows.append((many, "init", ("create", "create_many"), "`core.create` of each task"))
    for action, method in ACTIONS.items():
        calls = _MANY_CALLS.get(action, "-" if method is None else f"`core.{action}`")
        rows.append((many, action, () if method is None else (method,), calls))
    return rows


def unmapped_methods() -> list[str]:
    """The store methods that change state but no model action stands for (a
    new store method lands here until a model covers it, or :data:`READERS` lists it).
    """
    mapped = {method for row in mapping_rows() for method in row[2]}
    return [n for n in store_methods() if n not in READERS and n not in mapped]


def mapping_table() -> str:
    """specs/model-mapping.md as it must read (tests/unit/test_model_mapping.py)."""
    lines = [
        "# Model actions and the store methods that implement them",
        "",
        "Generated by `sagalease.verification.many.mapping_table()` and checked by",
        "`tests/unit/test_model_mapping.py`: every `SagaStore` method is mapped to a",
        "model action or is a read (`sagalease.store.READERS`), and every action and",
        "method named exists. A new store method that changes state fails the test",
        "until a model action stands for it. Regenerate with",
        "`uv run python -c 'from sagalease.verification.many import mapping_table;"
        ' print(mapping_table(), end="")\' > specs/model-mapping.md`.',
        "",
        "Both checkers call the core functions the stores call (`core.handlers`); the",
        "store method of an event loads the record, calls that function and writes",
        "the step. The statement column names the SQL each backend runs for the",
        "action once the store-engine issue generates it.",
        "",
        "| model | action | store method | the model calls | statement |",
        "|---|---|---|---|---|",
    ]
    for model, action, methods, calls in mapping_rows():
        shown = ", ".join(f"`{m}`" for m in methods) or "-"
        statement = "(after the store-engine issue)" if methods else "-"
        lines.append(f"| {model} | `{action}` | {shown} | {calls} | {statement} |")
    lines += ["", "## Reads (no state change, no model action)", ""]
    lines += [f"- `{name}`" for name in store_methods() if name in READERS]
    unmapped = unmapped_methods()
    if unmapped:
        lines += ["", "## Store methods without a model action (a failure)", ""]
        lines += [f"- `{name}`" for name in unmapped]
    return "\n".join(lines) + "\n"
