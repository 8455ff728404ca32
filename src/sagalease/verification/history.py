"""Check a store's recorded history against the lifecycle invariants.

:func:`check_task` looks at one task's record and history; :func:`verify_store`
runs it over every task of a store. Used by ``sagalease verify`` and at the
end of ``sagalease simulate``. The checks read the history entries
themselves (tokens, owners, instants) and only use the core to rebuild the
record step by step, so a tampered entry is caught either by its own check or
because the replay no longer reproduces it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sagalease import core
from sagalease.errors import SagaLeaseError
from sagalease.lifecycle import HOLDER_EVENTS
from sagalease.records import Compensation, CompensationStatus, HistoryEntry, TaskSaga, TaskState
from sagalease.store import SagaStore

__all__ = ["TaskFacts", "Verification", "check_task", "verify_store"]


@dataclass(slots=True)
class TaskFacts:
    """What one task's history shows, beside the problems found."""

    acquisitions: int = 0
    reclaims: int = 0
    """Acquisitions after a lease that expired (taken over, or dropped by the reaper)."""
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Verification:
    """The outcome of checking many tasks."""

    tasks: int = 0
    entries: int = 0
    acquisitions: int = 0
    reclaims: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no invariant was violated."""
        return not self.problems

    def add(self, task_id: str, facts: TaskFacts, entries: int) -> None:
        """Fold one task's facts in."""
        self.tasks += 1
        self.entries += entries
        self.acquisitions += facts.acquisitions
        self.reclaims += facts.reclaims
        self.problems.extend(f"{task_id}: {p}" for p in facts.problems)


def check_task(
    record: TaskSaga | None, entries: Iterable[HistoryEntry], *, require_terminal: bool = True
) -> TaskFacts:
    """Check one task: its history replays to its record (INV-7), tokens grow by
    one per acquisition (INV-2), no acquisition while another lease was live
    (INV-1), every holder write carried the then-current owner and token of a
    live lease, compensations are not dropped (INV-4), attempts are bounded
    (INV-5) and, if ``require_terminal``, the task ended (INV-6).
    """
    facts = TaskFacts()
    problems = facts.problems
    history = list(entries)
    if record is None:
        problems.append("no record")
        return facts
    if not history:
        problems.append("no history")
        return facts
    if [e.seq for e in history] != list(range(1, len(history) + 1)):
        problems.append("history sequence numbers are not 1..n")
    if any(e.task_id != record.task_id for e in history):
        problems.append("history holds entries of another task")
    # Walk the history, rebuilding the record one entry at a time.
    task: TaskSaga | None = None
    last_token = 0
    expired_before = False
    for entry in history:
        if task is None:
            if entry.event != "create":
                problems.append(f"entry {entry.seq}: history does not start with create")
                break
            try:
                task = core.replay([entry])
            except (AssertionError, SagaLeaseError, TypeError, KeyError) as exc:
                problems.append(f"entry {entry.seq}: create does not replay ({exc})")
                break
            continue
        lease = task.lease
        if entry.event == "acquire":
            facts.acquisitions += 1
            if entry.token is None or entry.token != last_token + 1:
                problems.append(
                    f"entry {entry.seq}: token {entry.token} after {last_token}"
                    " (tokens must grow by one per acquisition)"
                )
            if lease is not None and entry.at_us < lease.expires_us:
                problems.append(
                    f"entry {entry.seq}: acquired by {entry.owner!r} while the lease of"
                    f" {lease.owner!r} (token {lease.token}) was still live"
                )
            if expired_before or (lease is not None and entry.at_us >= lease.expires_us):
                facts.reclaims += 1
            expired_before = False
            last_token = entry.token if entry.token is not None else last_token
        elif entry.event in HOLDER_EVENTS:
            if lease is None:
                problems.append(f"entry {entry.seq}: {entry.event} with no lease")
            elif (entry.owner, entry.token) != (lease.owner, lease.token) or (
                lease.token != task.token
            ):
                problems.append(
                    f"entry {entry.seq}: {entry.event} by ({entry.owner!r}, token"
                    f" {entry.token}) but the lease was ({lease.owner!r}, token {lease.token})"
                )
            elif entry.at_us >= lease.expires_us:
                problems.append(
                    f"entry {entry.seq}: {entry.event} by token {entry.token} after its lease"
                    " expired"
                )
        elif entry.event == "reap" and lease is not None and entry.at_us >= lease.expires_us:
            expired_before = True
        try:
            step = core.apply(task, entry.event, entry.at_us, **_args(entry))
        except (SagaLeaseError, TypeError, KeyError, ValueError) as exc:
            problems.append(f"entry {entry.seq}: {entry.event} does not replay ({exc})")
            task = None
            break
        if step.entry != entry:
            problems.append(f"entry {entry.seq}: replay gives {step.entry}, stored {entry}")
        task = step.task
        if task.attempts > task.max_attempts:
            problems.append(f"entry {entry.seq}: attempts {task.attempts} > {task.max_attempts}")
    if task is not None and task != record:
        problems.append("replaying the history does not reproduce the record")
    _check_end(record, problems, require_terminal=require_terminal)
    return facts


def _args(entry: HistoryEntry) -> dict[str, object]:
    args = entry.args
    if "compensation" in args:
        args["compensation"] = Compensation.from_json(args["compensation"])
    return args


def _check_end(record: TaskSaga, problems: list[str], *, require_terminal: bool) -> None:
    if require_terminal and not record.is_terminal:
        problems.append(f"not terminal (state {record.state.value})")
    if record.attempts > record.max_attempts:
        problems.append(f"attempts {record.attempts} > max_attempts {record.max_attempts}")
    pending = record.pending_compensations
    if record.state in (TaskState.FAILED, TaskState.COMPENSATED) and pending:
        problems.append(f"{record.state.value} with compensations pending: {list(pending)}")
    if record.state is TaskState.COMPENSATED and any(
        c.status is not CompensationStatus.APPLIED for c in record.compensations
    ):
        problems.append("compensated but not every compensation applied")
    if record.state is TaskState.FAILED and record.compensations:
        problems.append("failed although compensations were registered")
    if record.is_terminal and record.lease is not None:
        problems.append(f"{record.state.value} but still leased")


def verify_store(
    store: SagaStore, *, task_ids: Iterable[str] | None = None, require_terminal: bool = True
) -> Verification:
    """Check every task of ``store`` (or only ``task_ids``)."""
    result = Verification()
    for task_id in _ids(store) if task_ids is None else task_ids:
        record = store.get(task_id)
        try:
            history = store.history(task_id)
        except SagaLeaseError as exc:
            result.add(task_id, TaskFacts(problems=[f"no history ({exc})"]), 0)
            continue
        facts = check_task(record, history, require_terminal=require_terminal)
        result.add(task_id, facts, len(history))
    return result


def _ids(store: SagaStore) -> Iterable[str]:
    after: str | None = None
    while True:
        page = store.list_tasks(limit=1000, after=after)
        if not page:
            return
        for task in page:
            yield task.task_id
        after = page[-1].task_id
