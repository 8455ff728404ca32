"""What the SQL stores share beyond :class:`StoreBase`: numbered migrations
read from package data, and the remembered records.

A SQL store keeps the last version of each unfinished task it wrote or read
(:meth:`SQLStoreBase._remember`): a holder call computes its step from that
record and writes it with the compare-and-set on ``version``, so the common
case needs no read first. A stale record cannot do harm: its version no longer
matches, the write changes nothing, and the call is evaluated again against
the stored row. The memory store has no such cache: it holds the records.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Final, TypeVar

from sagalease import core, telemetry
from sagalease.clock import Clock
from sagalease.errors import SagaLeaseError, StoreUnavailableError, TaskNotFoundError
from sagalease.lifecycle import CHART, ENDED_STATES, OPEN_STATES
from sagalease.records import HistoryEntry, TaskSaga, TaskState
from sagalease.store import QueueStats
from sagalease.stores._base import Mutation, StoreBase
from sagalease.stores._rows import ClaimCursor, Row, decode_task

_T = TypeVar("_T")

KNOWN_TASKS: Final = 4096
"""How many unfinished tasks a store remembers (the oldest are forgotten first)."""

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def read_migrations(package: str) -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of every migration of the store in ``package``
    (package data ``migrations/NNNN_*.sql`` beside it), in order; they must be
    numbered 1..N.
    """
    found = []
    for entry in (resources.files(package) / "migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{package} migrations are not numbered 1..N: {found}")
    return found


def states_in(states: Iterable[TaskState]) -> str:
    """The SQL predicate ``state IN ('a', 'b', ...)`` over ``states``, in their order.

    The values are :class:`TaskState` strings fixed by the declaration, never
    input, so writing them into the SQL text is safe (and lets SQLite match a
    partial index's predicate, which a bound parameter would not).
    """
    return "state IN (" + ", ".join(f"'{TaskState(s).value}'" for s in states) + ")"


def _open_states_with(event: str, guard: str) -> tuple[TaskState, ...]:
    """The open states from which some transition of ``event`` names ``guard``."""
    return tuple(
        state
        for state in OPEN_STATES
        if any(guard in (*t.validators, *t.conds) for t in CHART.get((state, event), ()))
    )


OPEN: Final = "terminal_reason IS NULL"
"""The tasks that have not ended, as the SQLite ``tasks_open`` and claim indexes'
predicate: by the table's CHECK, a task has a reason exactly when it has ended (a
state list here would cost a temporary index per write; migration 0005).
"""

ENDED: Final = "terminal_reason IS NOT NULL"
"""The tasks that have ended (the SQLite ``tasks_ended`` index predicate; see :data:`OPEN`)."""

DEADLINE_BARS_ACQUIRE: Final = states_in(_open_states_with("acquire", "before_deadline"))
"""The open tasks that cannot be acquired past their deadline (the forward phase)."""

DEADLINE_REAPS: Final = states_in(_open_states_with("reap", "past_deadline"))
"""The open tasks that the reaper ends past their deadline (the forward phase)."""


CLAIM_ORDER: Final = "priority DESC, seq"
"""The claim order as an ``ORDER BY``: the highest priority first, then creation."""


def claim_after(cursor: ClaimCursor, mark: str = "?") -> tuple[str, tuple[int, ...]]:
    """The rows after ``cursor`` in :data:`CLAIM_ORDER`: a predicate (``" AND ..."``;
    ``""`` at the start) and its parameters, with ``mark`` as the placeholder.

    Written as ``priority <= p AND (priority < p OR seq > s)`` so that an index
    on ``(priority DESC, seq)`` (after any equality columns) can seek to it; a
    row-value comparison cannot mix the two directions.
    """
    if cursor is None:
        return "", ()
    priority, seq = cursor
    return (
        f" AND priority <= {mark} AND (priority < {mark} OR seq > {mark})",
        (priority, priority, seq),
    )


def marks(count: int, mark: str = "?") -> str:
    """``count`` placeholders separated by commas (``?, ?, ?``), for ``IN (...)``."""
    return ", ".join([mark] * count)


def value_rows(rows: int, columns: int, mark: str = "?") -> str:
    """The ``VALUES`` list of a multi-row ``INSERT``: ``rows`` tuples of ``columns``
    placeholders each (``(?, ?), (?, ?)``).
    """
    one = f"({marks(columns, mark)})"
    return ", ".join([one] * rows)


def chunks(items: Sequence[_T], variables: int, per_item: int) -> list[Sequence[_T]]:
    """``items`` cut into as few consecutive runs as a statement limited to
    ``variables`` bound parameters allows, at ``per_item`` parameters each (one run
    when they all fit; never an empty run).
    """
    size = max(1, variables // max(1, per_item))
    return [items[i : i + size] for i in range(0, len(items), size)]


def queue_stats_from_rows(now_us: int, rows: Iterable[Sequence[Any]]) -> dict[str, QueueStats]:
    """:meth:`~sagalease.store.SagaStore.queue_stats` from the rows of a SQL store's
    one statement: ``(queue, state, count, None, None)`` per queue and state held,
    and ``(queue, None, None, stale, oldest_available_us)`` per queue with open tasks.
    Sorted by queue name here (a database's collation may order text otherwise).
    """
    counts: dict[str, dict[TaskState, int]] = {}
    open_rows: dict[str, tuple[int, int | None]] = {}
    for queue, state, number, stale, oldest in rows:
        if state is None:
            open_rows[queue] = (int(stale or 0), None if oldest is None else int(oldest))
        else:
            counts.setdefault(queue, {})[TaskState(state)] = int(number)
    result = {}
    for queue in sorted(counts):
        stale, oldest = open_rows.get(queue, (0, None))
        result[queue] = QueueStats.of(
            queue, now_us, counts[queue], stale=stale, oldest_available_us=oldest
        )
    return result


@dataclass(frozen=True)
class Counted:
    """What a SQL store's ``queue_stats`` leaves for its next call: the ended tasks
    with ``seq <= top`` by (queue, state), the seqs of the tasks then open, every
    queue, and the seqs up to ``top`` that no row had then (``gaps``, in the
    :class:`Gaps` of the count that first saw them; PostgreSQL only, where a seq is
    taken before its row commits).

    Rows are never deleted, a task's seq and queue never change and an ended task
    never changes state (INV-3), so the next call only reads the tasks created
    since, those of ``open_seqs`` that have ended since and the rows that filled a
    gap: its cost follows the open tasks and the changes, not the tasks kept.
    """

    top: int
    ended: dict[tuple[str, str], int]
    open_seqs: frozenset[int]
    queues: frozenset[str]
    gaps: tuple[Gaps, ...] = ()


@dataclass(frozen=True)
class Gaps:
    """Seqs (inclusive ranges) that no visible row had when a count first saw them,
    with what retires them. A gap's seq was taken by a transaction T that had not
    committed then: still running, or rolled back (a duplicate id, a failed batch),
    in which case no row ever fills it and checking it again on every count would
    cost more and more.

    So gaps are retired in two steps, on the snapshots of later counts: *confirmed*
    once a snapshot's ``xmin`` reaches ``seen_xmax`` (every transaction that had an
    id when they were seen has ended) and ``settle`` seconds have passed; *retired*
    once a later snapshot's ``xmin`` reaches the ``xmax`` of the confirming one and
    ``settle`` more seconds have passed. T takes its seq and its transaction id in
    one INSERT statement, so it had an id by the confirming snapshot unless that one
    statement stalled between the two for ``settle`` seconds; and then it has ended
    by the retiring snapshot: a row it committed would be visible, and the gap would
    have been filled.
    """

    ranges: tuple[tuple[int, int], ...]
    seen_xmax: int
    seen_at: float  # monotonic seconds
    confirmed_xmax: int | None = None
    confirmed_at: float | None = None

    def aged(self, *, xmin: int, xmax: int, at: float, settle: float) -> Gaps | None:
        """These gaps after a count whose snapshot has ``xmin`` and ``xmax`` at the
        monotonic instant ``at``: confirmed, retired (``None``) or as they were.
        """
        if not self.ranges:
            return None
        if self.confirmed_xmax is None or self.confirmed_at is None:
            if xmin >= self.seen_xmax and at - self.seen_at >= settle:
                return replace(self, confirmed_xmax=xmax, confirmed_at=at)
            return self
        if xmin >= self.confirmed_xmax and at - self.confirmed_at >= settle:
            return None
        return self


_ENDED_VALUES: Final = frozenset(s.value for s in ENDED_STATES)


def add_ended(ended: dict[tuple[str, str], int], rows: Iterable[Sequence[Any]]) -> None:
    """Add the ``(queue, state, count)`` rows of ended states to ``ended``."""
    for queue, state, number in rows:
        if state in _ENDED_VALUES:
            ended[(queue, state)] = ended.get((queue, state), 0) + int(number)


def without(gaps: Iterable[tuple[int, int]], seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """The inclusive ranges ``gaps`` less the seqs ``seqs`` (ranges split as needed)."""
    taken = sorted(set(seqs))
    result: list[tuple[int, int]] = []
    for lo, hi in gaps:
        start = lo
        for seq in taken:
            if seq < start or seq > hi:
                continue
            if seq > start:
                result.append((start, seq - 1))
            start = seq + 1
        if start <= hi:
            result.append((start, hi))
    return tuple(result)


class SQLStoreBase(StoreBase):
    """:class:`StoreBase` with the remembered records of the SQL stores."""

    def __init__(self, *, clock: Clock | None = None, contracts: bool | None = None) -> None:
        super().__init__(clock=clock, contracts=contracts)
        self._known: OrderedDict[str, TaskSaga] = OrderedDict()

    def _remember(self, task: TaskSaga) -> TaskSaga:
        """Keep ``task`` as the last known version of its row (a finished task is
        forgotten: no holder call can change it any more). Returns ``task``.
        """
        known = self._known
        if task.state.is_terminal:
            known.pop(task.task_id, None)
        else:
            known[task.task_id] = task
            if len(known) > KNOWN_TASKS:
                with contextlib.suppress(KeyError):  # another thread emptied it first
                    known.popitem(last=False)
        return task

    def _rendered(self, event: str, task: TaskSaga, entry: HistoryEntry | None) -> TaskSaga:
        """Remember ``task``, which a statement rendered from the declaration wrote
        with ``entry``, and note a reclaim for telemetry as the core's acquire would
        be noted (its entry gives a reason only when it replaced an expired lease;
        ``None``: an entry not decoded, see ``_engine.written``).
        """
        if event == "acquire" and entry is not None and entry.reason is not None:
            telemetry.note_reclaim(task)
        return self._remember(task)

    def _start(
        self, task_id: str, mutation: Mutation, read: Callable[[], TaskSaga | None]
    ) -> tuple[TaskSaga, core.Step]:
        """The record a call starts from and its step: the remembered record if the
        event applies to it, else the stored row from ``read`` (a refusal there is
        the answer at the read). Unknown task: :class:`TaskNotFoundError`.
        """
        task = self._known.get(task_id)
        if task is not None:
            try:
                return task, mutation(task)
            except SagaLeaseError:
                pass  # the record may be stale: the stored row decides
        task = read()
        if task is None:
            raise TaskNotFoundError("no such task", task_id=task_id)
        self._remember(task)
        return task, mutation(task)

    def _reap_batches(
        self,
        now_us: int,
        limit: int | None,
        *,
        batch: int,
        transaction: Callable[[], AbstractContextManager[Any]],
        read: Callable[[int, int], Sequence[Row]],
        write: Callable[[TaskSaga, core.Step], bool],
    ) -> list[TaskSaga]:
        """Reap in creation order, one ``transaction()`` per batch: ``read(after, n)``
        returns up to ``n`` candidate rows (``seq`` first, locked for the transaction)
        created after ``after``; ``write`` is the backend's compare-and-set. Returns
        the records changed, at most ``limit``.
        """
        changed: list[TaskSaga] = []
        reap = self._core["reap"]
        after = 0
        while limit is None or len(changed) < limit:
            with transaction():
                rows = read(after, batch)
                for row in rows:
                    after = row[0]
                    task = decode_task(row)
                    if not core.needs_reap(task, now_us):
                        continue
                    step = reap(task, now_us=now_us)
                    if not write(task, step):  # pragma: no cover - the row is locked
                        raise StoreUnavailableError(
                            "the row changed while locked", task_id=task.task_id, state=task.state
                        )
                    changed.append(self._remember(step.task))
                    if limit is not None and len(changed) >= limit:
                        break
            if len(rows) < batch:
                break
        return changed
