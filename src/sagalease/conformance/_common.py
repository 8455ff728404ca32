"""What every stage of the conformance suite shares: the failure type, capabilities,
call tracing and "nothing changed" snapshots. No pytest, no Hypothesis here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, cast

from sagalease.records import HistoryEntry, NewTask, TaskSaga, TaskState
from sagalease.store import EVENT_OF_METHOD, SagaStore
from sagalease.verification.invariants import INVARIANTS

__all__ = [
    "T0",
    "Capabilities",
    "ConformanceFailure",
    "StoreFactory",
    "Trace",
    "at",
    "describe",
    "snapshot",
    "violated",
]

StoreFactory: TypeAlias = Callable[[], SagaStore]
"""A zero-argument callable returning a fresh, empty store."""

T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""The instant every check starts from; every call passes an explicit ``now``."""
T0_US = 1_767_225_600_000_000
"""``T0`` in microseconds since the epoch."""
SEC = 1_000_000
"""One second in microseconds."""

TITLES: dict[str, str] = {inv.id: inv.title for inv in INVARIANTS}


@dataclass(frozen=True)
class Capabilities:
    """What a backend author declares the store can do beyond the mandatory contract.

    ``reopen``: given a store made by the factory, return a *picklable* zero-argument
    callable that opens another handle on the same data in another process (for
    SQLite: ``functools.partial(SQLiteStore, store.path)``). Declaring it turns on
    the multi-process stage; without it that stage is reported as skipped.
    ``skip_locked_claims``: see the attribute. Nothing else is optional: thread
    safety, every event, guard and error are required.
    """

    reopen: Callable[[SagaStore], Callable[[], SagaStore]] | None = None
    skip_locked_claims: bool = False
    """``claim_next`` passes over candidates another transaction holds locked
    (PostgreSQL ``FOR UPDATE SKIP LOCKED``): under concurrency a claim then only
    promises *some* leaseable task or ``None``, not the oldest one. Every safety
    property (single holder, fencing, history) is still checked in full."""

    @classmethod
    def of(cls, factory: object) -> Capabilities:
        """The capabilities declared on ``factory`` (attribute ``conformance_capabilities``)."""
        declared = getattr(factory, "conformance_capabilities", None)
        if declared is None:
            return cls()
        if not isinstance(declared, Capabilities):
            raise TypeError(
                "conformance_capabilities must be a sagalease.conformance.Capabilities,"
                f" not {type(declared).__name__}"
            )
        return declared


class ConformanceFailure(AssertionError):
    """A store broke a rule: names the invariant (``INV-n``), the step that broke it,
    and the sequence of calls that led there (``steps``, a minimal one when Hypothesis
    shrank it).
    """

    def __init__(
        self,
        invariant: str,
        step: str,
        detail: str,
        *,
        steps: Sequence[str] = (),
        check: str = "",
    ) -> None:
        self.invariant = invariant
        self.step = step
        self.detail = detail
        self.steps = list(steps)
        self.check = check
        super().__init__(self._message())

    def _message(self) -> str:
        title = TITLES.get(self.invariant, "")
        where = f" in {self.check}" if self.check else ""
        return f"{self.invariant} ({title}) broken{where} at {self.step}: {self.detail}"

    def with_context(self, *, check: str, steps: Sequence[str]) -> ConformanceFailure:
        """A copy that names the check and, if it has none yet, the steps."""
        return ConformanceFailure(
            self.invariant,
            self.step,
            self.detail,
            steps=self.steps or list(steps),
            check=check,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_failure,
            (self.invariant, self.step, self.detail, self.steps, self.check),
        )


def _rebuild_failure(
    invariant: str, step: str, detail: str, steps: list[str], check: str
) -> ConformanceFailure:
    return ConformanceFailure(invariant, step, detail, steps=steps, check=check)


def violated(invariant: str, step: str, detail: str) -> ConformanceFailure:
    """The failure to raise, naming the invariant, the step and what went wrong."""
    if invariant not in TITLES:  # pragma: no cover - a bug in the suite itself
        raise ValueError(f"unknown invariant {invariant!r}")
    return ConformanceFailure(invariant, step, detail)


# ---------------------------------------------------------------- describing calls


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def _fmt_time(value: datetime) -> str:
    if value.tzinfo is None:
        return f"naive({value.isoformat()})"
    delta = value - T0
    micros = delta // timedelta(microseconds=1)
    sign = "-" if micros < 0 else "+"
    micros = abs(micros)
    whole, frac = divmod(micros, 1_000_000)
    return f"T0{sign}{whole}.{frac:06d}s" if frac else f"T0{sign}{whole}s"


def _fmt(value: object) -> str:
    if isinstance(value, datetime):
        return _fmt_time(value)
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, TaskState):
        return f"TaskState.{value.name}"
    if isinstance(value, NewTask):  # the fields that differ from the defaults
        chosen = {
            f.name: getattr(value, f.name)
            for f in fields(NewTask)[1:]
            if getattr(value, f.name) != f.default
        }
        return describe("NewTask", (value.task_id,), chosen)
    if isinstance(value, list | tuple) and value and not isinstance(value[0], str | int):
        shown = [_fmt(v) for v in value[:_SHOWN]]
        if len(value) > _SHOWN:  # a create_many of 1,000 items: its head and its size
            shown.append(f"... ({len(value)} items)")
        return "[" + ", ".join(shown) + "]"
    return repr(value)


_SHOWN = 4
"""How many items of a long list argument a step shows."""


def describe(method: str, args: Sequence[object], kwargs: dict[str, object]) -> str:
    """A call as text in Python call syntax, times relative to ``T0``."""
    parts = [_fmt(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kwargs.items()]
    return f"{method}({', '.join(parts)})"


def outcome_text(result: object) -> str:
    """A short rendering of what a call returned or raised."""
    if isinstance(result, BaseException):
        return f"raised {type(result).__name__}"
    if isinstance(result, TaskSaga):
        lease = result.lease
        held = "" if lease is None else f", lease {lease.owner}/{lease.token}"
        return f"ok: {result.task_id} {result.state.value} token {result.token}{held}"
    if isinstance(result, list):
        return f"ok: [{', '.join(t.task_id for t in result if isinstance(t, TaskSaga))}]"
    return f"ok: {result!r}"


_MUTATING = frozenset(EVENT_OF_METHOD)
"""The store methods a :class:`Trace` records (every one that changes something)."""


class Trace:
    """Wraps a store and records every mutating call (and its outcome) as a step."""

    def __init__(self, store: SagaStore) -> None:
        self.inner = store
        self.steps: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in _MUTATING or not callable(attr):
            return attr

        @functools.wraps(attr)
        def traced(*args: object, **kwargs: object) -> object:
            text = describe(name, args, kwargs)
            try:
                result = attr(*args, **kwargs)
            except BaseException as exc:
                self.steps.append(f"{text} -> {outcome_text(exc)}")
                raise
            self.steps.append(f"{text} -> {outcome_text(result)}")
            return result

        return traced

    @property
    def store(self) -> SagaStore:
        """The trace, typed as the store it wraps."""
        return cast(SagaStore, self)


# ---------------------------------------------------------------- snapshots

Snapshot: TypeAlias = tuple[list[TaskSaga], list[list[HistoryEntry]], dict[TaskState, int]]


def snapshot(store: SagaStore) -> Snapshot:
    """Every record, every history and the counts: what "nothing changed" compares."""
    inner = store.inner if isinstance(store, Trace) else store
    tasks = inner.list_tasks(limit=10_000)
    return tasks, [inner.history(t.task_id) for t in tasks], inner.counts()


def first_difference(before: Snapshot, after: Snapshot) -> str:
    """Where two snapshots differ, in words."""
    tasks_b, hist_b, counts_b = before
    tasks_a, hist_a, counts_a = after
    ids_b = [t.task_id for t in tasks_b]
    ids_a = [t.task_id for t in tasks_a]
    if ids_b != ids_a:
        return f"the task list changed from {ids_b} to {ids_a}"
    for old, new, h_old, h_new in zip(tasks_b, tasks_a, hist_b, hist_a, strict=True):
        if old != new:
            return f"task {old.task_id!r} changed: {record_difference(old, new)}"
        if h_old != h_new:
            return (
                f"the history of {old.task_id!r} changed from {len(h_old)} to {len(h_new)} entries"
            )
    if counts_b != counts_a:
        return f"counts changed from {counts_b} to {counts_a}"
    return "no difference"


_RECORD_FIELDS = tuple(f.name for f in fields(TaskSaga))


def record_difference(a: TaskSaga, b: TaskSaga) -> str:
    """The fields in which two records differ, as ``field: a != b``."""
    diffs = []
    for name in _RECORD_FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        if left != right:
            diffs.append(f"{name}: {left!r} != {right!r}")
    return "; ".join(diffs) or "no difference"


@dataclass
class Budget:
    """How much work each stage does (scaled from ``examples``)."""

    examples: int = 100
    steps: int = 40
    thread_trials: int = 20
    process_trials: int = 2
    shrink: bool = True

    @classmethod
    def from_examples(cls, examples: int, *, shrink: bool = True) -> Budget:
        """The budget for ``--examples N``."""
        return cls(
            shrink=shrink,
            examples=examples,
            steps=40 if examples >= 50 else 25,
            thread_trials=max(4, examples // 5),
            process_trials=1 if examples < 100 else 2,
        )
