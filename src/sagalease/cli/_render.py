"""How the command line shows things: JSON objects for ``--json``, rich tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from sagalease.records import HistoryEntry, TaskSaga

__all__ = [
    "iso",
    "new_console",
    "print_json",
    "print_report",
    "short_time",
    "show_task",
    "tasks_table",
]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def new_console() -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else 200
    return Console(width=width, highlight=False, soft_wrap=False)


def short_time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def tasks_table(tasks: Sequence[TaskSaga], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = ("task", "saga", "queue", "priority", "state", "attempts", "token", "holder")
    for name in (*columns, "expires", "updated"):
        table.add_column(name, overflow="fold", justify="right" if name == "priority" else "left")
    for t in tasks:
        lease = t.lease
        table.add_row(
            t.task_id,
            t.saga_id or "",
            t.queue,
            str(t.priority),
            t.state.value,
            f"{t.attempts}/{t.max_attempts}",
            str(t.token),
            "" if lease is None else lease.owner,
            "" if lease is None else short_time(lease.expires_at),
            short_time(t.updated_at),
        )
    return table


def show_task(task: TaskSaga, history: Sequence[HistoryEntry]) -> None:
    from rich.table import Table

    console = new_console()
    lease = task.lease
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("task", task.task_id),
        ("saga", task.saga_id or "-"),
        ("queue", task.queue),
        ("priority", str(task.priority)),
        ("requeued from", task.requeued_from or "-"),
        ("state", task.state.value),
        ("terminal reason", task.terminal_reason or "-"),
        ("token", str(task.token)),
        ("attempts", f"{task.attempts}/{task.max_attempts} (expired leases: {task.expirations})"),
        (
            "lease",
            "-"
            if lease is None
            else f"{lease.owner}, token {lease.token}, expires {lease.expires_at.isoformat()}",
        ),
        ("available at", task.available_at.isoformat()),
        ("deadline", "-" if task.deadline is None else task.deadline.isoformat()),
        ("created", task.created_at.isoformat()),
        ("updated", task.updated_at.isoformat()),
        ("metadata", json.dumps(task.metadata, ensure_ascii=False)),
    ]
    for key, value in rows:
        info.add_row(key, value)
    console.print(info)
    comps = Table(title="compensations", title_justify="left")
    for name in ("#", "kind", "target", "reason", "status"):
        comps.add_column(name, overflow="fold")
    for i, c in enumerate(task.compensations):
        comps.add_row(str(i), c.kind, c.target, c.reason, c.status.value)
    console.print(comps)
    notes = Table(title="notes", title_justify="left")
    for name in ("at", "author", "text"):
        notes.add_column(name, overflow="fold")
    for n in task.notes:
        notes.add_row(short_time(n.at), n.author, n.text)
    console.print(notes)
    hist = Table(title="history", title_justify="left")
    for name in ("seq", "at", "event", "from", "to", "owner", "token", "reason"):
        hist.add_column(name, overflow="fold")
    for e in history:
        hist.add_row(
            str(e.seq),
            e.at.isoformat(timespec="milliseconds"),
            e.event,
            "-" if e.from_state is None else e.from_state.value,
            e.to_state.value,
            e.owner or "",
            "" if e.token is None else str(e.token),
            e.reason or "",
        )
    console.print(hist)


def print_report(data: dict[str, Any]) -> None:
    from rich.table import Table

    console = new_console()
    states = Table(title="how the tasks ended", title_justify="left")
    states.add_column("state")
    states.add_column("tasks", justify="right")
    for state, n in data["states"].items():
        states.add_row(state, str(n))
    console.print(states)
    queues = Table(title="tasks per queue (higher priority runs first)", title_justify="left")
    for name in ("queue", "priority", "tasks", "ended as"):
        queues.add_column(name, justify="left" if name in ("queue", "ended as") else "right")
    for queue, q in data["queues"].items():
        ended = ", ".join(f"{state} {n}" for state, n in q["states"].items())
        queues.add_row(queue, str(q["priority"]), str(q["tasks"]), ended)
    console.print(queues)
    facts = Table(title="what the fleet went through", title_justify="left")
    facts.add_column("")
    facts.add_column("count", justify="right")
    for label, key in (
        ("create_many calls (the tasks, in batches)", "create_many_calls"),
        ("worker processes started", "workers_started"),
        ("workers SIGKILLed by the simulator", "workers_killed"),
        ("workers killed by poison tasks", "workers_killed_by_poison_tasks"),
        ("workers paused past their lease", "workers_paused_past_lease"),
        ("leases expired", "leases_expired"),
        ("retries (releases for a retry, in the history)", "retries"),
        ("retries reported by the workers", "retries_reported_by_workers"),
        ("tasks reclaimed after an expired lease", "reclaims"),
        ("tasks changed by the reaper", "reaped"),
        ("zombie writes rejected by fencing", "zombie_writes_fenced"),
        ("compensations applied", "compensations_applied"),
        ("compensations failed for good", "compensations_failed"),
        ("tasks quarantined", "quarantined"),
    ):
        facts.add_row(label, str(data[key]))
    facts.add_row("seconds", f"{data['seconds']:.1f}")
    facts.add_row("throughput (tasks/s)", f"{data['throughput_tasks_per_second']:.1f}")
    console.print(facts)
    v = data["verification"]
    for problem in v["problems"]:
        console.print(f"VIOLATION: {problem}", markup=False)
    console.print(
        f"verification: {data['result']} ({v['tasks']} tasks, {v['history_entries']} history"
        f" entries, {v['acquisitions']} acquisitions, {v['problem_count']} problem(s))",
        markup=False,
    )
    console.print(
        "  checked: every history replays to its record; tokens +1 per acquisition; no"
        " acquisition while another lease was live; every holder write under the live"
        " (owner, token); no dropped compensation; attempts bounded; every task ended;"
        " the workers' own reports agree with the history",
        markup=False,
    )
    console.print(f"store: {data['db']}  seed: {data['seed']}", markup=False)
