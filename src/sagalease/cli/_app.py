"""The ``sagalease`` command line (click; rich tables for people, ``--json`` for machines).

Commands::

    init                       create the store (or check an existing one)
    ls [--state S[,S...]]... [--queue Q] [--saga ID] [--stale] [--limit N] [--after TASK]
    show TASK                  record, compensations, notes and history
    stale                      non-terminal tasks whose lease expired
    reap [--limit N]           drop expired leases, quarantine exhausted tasks, fail overdue ones
    quarantine TASK --reason R [--by WHO]
    annotate TASK --text T [--by WHO]
    requeue TASK [--as NEW_ID] [--by WHO]   run a failed or quarantined task again
    stats [--queue Q]          tasks per state
    verify [--all-ended]       check every recorded history against the invariants
    simulate [--workers N] [--tasks M] [--seed S] [--db URL] [--json]
    spec [--json]              the lifecycle spec generated from the code
    check [MODEL] [--workers N ...]   model-check the lifecycle
    conformance ARGS...        run the conformance suite (sagalease.conformance.main)
    ui [--db URL] [--host H] [--port P] [--allow-actions]   the web view (the [ui] extra)

The store is ``--db URL``, else ``$SAGALEASE_DB``, else ``sqlite:///sagalease.db``
in the current directory. Only ``init`` creates a database; every other
command refuses a missing one. ``simulate`` uses its own fresh
``./sagalease-sim.db`` unless ``--db`` is given on the command line.

Exit status:

- 0: success (a check, verification or simulation passed);
- 1: a check, verification or simulation found a violation (FAIL);
- 2: bad usage or input: unknown command or option, bad store URL, unknown
  task, a refused operation (e.g. quarantining a task that already ended,
  requeueing one that did not fail),
  conformance suite not installed, the ``ui`` command without the ``[ui]`` extra;
- 3: the store is unavailable: missing database or directory, a file that is
  not a sagalease database, a database locked past ``--timeout``, a PostgreSQL
  server still unreachable after ``--connect-timeout`` seconds (default 5: a
  restarting server is waited for), a schema newer than this sagalease.

Every error is one line on stderr (``sagalease: error: ...``), never a traceback.
"""

from __future__ import annotations

import importlib
import random
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sagalease.cli._render import (
    new_console,
    print_json,
    print_report,
    show_task,
    tasks_table,
)
from sagalease.errors import (
    SagaLeaseError,
    SchemaVersionError,
    StoreUnavailableError,
    TaskNotFoundError,
)
from sagalease.operations import requeue as requeue_task
from sagalease.records import TaskSaga, TaskState
from sagalease.store import SagaStore
from sagalease.stores import DEFAULT_URL, open_store, parse_url
from sagalease.stores._open import redact_url

if TYPE_CHECKING:
    from sagalease.verification.checker import Result

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

_STATES = [s.value for s in TaskState]


class _Fail(Exception):
    """A one-line error with its exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Options:
    db: str
    db_given: bool
    timeout: float
    connect_timeout: float | None = None


# ---------------------------------------------------------------- the store


def _open(options: _Options, *, create: bool = False) -> SagaStore:
    url = options.db
    parsed = parse_url(url)
    if parsed.path is None:
        return open_store(url, connect_timeout=options.connect_timeout)
    from sagalease.stores.sqlite import SQLiteStore

    path = parsed.path.absolute()

    if not path.parent.is_dir():
        raise StoreUnavailableError(
            f"cannot open {str(path)!r}: directory {str(path.parent)!r} does not exist"
        )
    if not create and not path.exists():
        raise StoreUnavailableError(
            f"no store at {str(path)!r} (create one with `sagalease --db {redact_url(url)} init`)"
        )
    return SQLiteStore(path, timeout=options.timeout)


def _with_store(options: _Options, body: Callable[[SagaStore], int]) -> int:
    store = _open(options)
    try:
        return body(store)
    finally:
        store.close()


def _operator_call(
    options: _Options,
    as_json: bool,
    call: Callable[[SagaStore], TaskSaga],
    summary: Callable[[TaskSaga], str],
) -> int:
    """Make an operator's call on one task; print the new record (``--json``) or
    its one-line ``summary``.
    """

    def body(store: SagaStore) -> int:
        task = call(store)
        if as_json:
            print_json(task.to_json())
        else:
            click.echo(summary(task))
        return EXIT_OK

    return _with_store(options, body)


def _get(store: SagaStore, task_id: str) -> TaskSaga:
    task = store.get(task_id)
    if task is None:
        raise TaskNotFoundError("no such task", task_id=task_id)
    return task


# ---------------------------------------------------------------- commands

_JSON = click.option("--json", "as_json", is_flag=True, help="print JSON")
_QUEUE = click.option("--queue", help="only tasks of this queue")
_BY = click.option("--by", default="operator", show_default=True, help="who")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="sagalease: leases, fencing tokens and saga compensations of tasks.",
)
@click.option(
    "--db",
    envvar="SAGALEASE_DB",
    default=DEFAULT_URL,
    show_default=True,
    help="store URL (also $SAGALEASE_DB): sqlite:///path.db, memory://, postgresql://...",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="seconds to wait for a locked database",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.01, max=86400.0),
    default=None,
    help="seconds to keep trying a PostgreSQL server that is briefly unavailable"
    " (restarting, refusing connections for now) before giving up  [default: 5]",
)
@click.pass_context
def cli(ctx: click.Context, db: str, timeout: float, connect_timeout: float | None) -> None:
    """The command group."""
    source = ctx.get_parameter_source("db")
    ctx.obj = _Options(
        db, source is click.core.ParameterSource.COMMANDLINE, timeout, connect_timeout
    )


@cli.command()
@_JSON
@click.pass_obj
def init(options: _Options, as_json: bool) -> int:
    """Create the store (an existing one is checked and migrated in place)."""
    path = parse_url(options.db).path
    existed = path is not None and path.exists()
    store = _open(options, create=True)
    try:
        total = sum(store.counts().values())
    finally:
        store.close()
    shown = redact_url(options.db)
    if as_json:
        print_json({"db": shown, "created": not existed, "tasks": total})
    else:
        verb = "store ready (already there)" if existed else "store created"
        click.echo(f"{verb}: {shown} ({total} tasks)")
    return EXIT_OK


def _parse_states(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> frozenset[TaskState] | None:
    """``--state`` given any number of times, each a state or a comma-separated list."""
    names = [name.strip() for value in values for name in value.split(",")]
    for name in names:
        if name not in _STATES:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(_STATES)}")
    return frozenset(TaskState(name) for name in names) or None


def _list(
    options: _Options,
    *,
    states: frozenset[TaskState] | None = None,
    queue: str | None = None,
    saga: str | None = None,
    stale: bool = False,
    limit: int,
    after: str | None = None,
    newest_first: bool = False,
    as_json: bool,
) -> int:
    def body(store: SagaStore) -> int:
        if stale:
            found = store.list_stale()
            tasks = [
                t
                for t in (found[::-1] if newest_first else found)
                if (states is None or t.state in states)
                and (saga is None or t.saga_id == saga)
                and (queue is None or t.queue == queue)
            ][:limit]
        else:
            tasks = store.list_tasks(
                state=states,
                saga_id=saga,
                queue=queue,
                limit=limit,
                after=after,
                newest_first=newest_first,
            )
        if as_json:
            print_json([t.to_json() for t in tasks])
            return EXIT_OK
        title = f"{len(tasks)} {'stale ' if stale else ''}task(s)"
        console = new_console()
        console.print(tasks_table(tasks, title))
        if len(tasks) == limit and not stale:
            order = "--newest-first " if newest_first else ""
            console.print(f"more: {order}--after {tasks[-1].task_id}")
        return EXIT_OK

    return _with_store(options, body)


@cli.command("ls")
@click.option(
    "--state",
    "states",
    multiple=True,
    callback=_parse_states,
    metavar="STATE[,STATE...]",
    help=f"only tasks in these states (repeat, or separate with commas): {', '.join(_STATES)}",
)
@_QUEUE
@click.option("--saga", help="only tasks of this saga")
@click.option("--stale", is_flag=True, help="only non-terminal tasks whose lease expired")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--after", help="the last task id of the previous page")
@click.option(
    "--newest-first", is_flag=True, help="the newest tasks first (--after: in that order too)"
)
@_JSON
@click.pass_obj
def ls_command(
    options: _Options,
    states: frozenset[TaskState] | None,
    queue: str | None,
    saga: str | None,
    stale: bool,
    limit: int,
    after: str | None,
    newest_first: bool,
    as_json: bool,
) -> int:
    """List tasks in creation order (--newest-first: the reverse)."""
    return _list(
        options,
        states=states,
        queue=queue,
        saga=saga,
        stale=stale,
        limit=limit,
        after=after,
        newest_first=newest_first,
        as_json=as_json,
    )


@cli.command()
@_JSON
@click.pass_obj
def stale(options: _Options, as_json: bool) -> int:
    """List non-terminal tasks whose lease expired (the reaper's work)."""
    return _list(options, stale=True, limit=10_000, as_json=as_json)


@cli.command()
@click.argument("task_id", metavar="TASK")
@_JSON
@click.pass_obj
def show(options: _Options, task_id: str, as_json: bool) -> int:
    """Show one task: record, compensations, notes and history."""

    def body(store: SagaStore) -> int:
        task = _get(store, task_id)
        history = store.history(task_id)
        if as_json:
            print_json({"task": task.to_json(), "history": [e.to_json() for e in history]})
            return EXIT_OK
        show_task(task, history)
        return EXIT_OK

    return _with_store(options, body)


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most this many tasks")
@_JSON
@click.pass_obj
def reap(options: _Options, limit: int | None, as_json: bool) -> int:
    """Drop expired leases, quarantine tasks out of attempts, fail tasks past their deadline."""

    def body(store: SagaStore) -> int:
        changed = store.reap(limit=limit)
        if as_json:
            print_json([t.to_json() for t in changed])
        else:
            new_console().print(tasks_table(changed, f"reaped {len(changed)} task(s)"))
        return EXIT_OK

    return _with_store(options, body)


# quarantine, annotate and requeue are one pattern (_operator_call); each stays a function of
# its own because click reads a command's options, names and --help from it.
@cli.command()
@click.argument("task_id", metavar="TASK")
@click.option("--reason", required=True, help="why (recorded as the terminal reason)")
@_BY
@_JSON
@click.pass_obj
def quarantine(options: _Options, task_id: str, reason: str, by: str, as_json: bool) -> int:
    """Operator: move a non-terminal task to QUARANTINED."""
    return _operator_call(
        options,
        as_json,
        lambda store: store.quarantine(task_id, reason=reason, by=by),
        lambda task: f"{task.task_id}: quarantined ({reason})",
    )


@cli.command()
@click.argument("task_id", metavar="TASK")
@click.option("--text", required=True, help="the note")
@_BY
@_JSON
@click.pass_obj
def annotate(options: _Options, task_id: str, text: str, by: str, as_json: bool) -> int:
    """Append an audit note to a task (terminal tasks included)."""
    return _operator_call(
        options,
        as_json,
        lambda store: store.annotate(task_id, text=text, by=by),
        lambda task: f"{task.task_id}: note {len(task.notes)} added",
    )


@cli.command("requeue")
@click.argument("task_id", metavar="TASK")
@click.option(
    "--as", "new_id", metavar="NEW_ID", help="the new task's id (default: TASK~r1, ~r2, ...)"
)
@_BY
@_JSON
@click.pass_obj
def requeue_command(
    options: _Options, task_id: str, new_id: str | None, by: str, as_json: bool
) -> int:
    """Operator: run a FAILED or QUARANTINED task again as a new PENDING task of its
    queue, priority and saga (sagalease.requeue); the original gets a note naming it.
    A second requeue with the default id is refused, naming the first copy.
    """
    return _operator_call(
        options,
        as_json,
        lambda store: requeue_task(store, task_id, new_id=new_id, by=by),
        lambda copy: f"{task_id}: requeued as {copy.task_id}",
    )


@cli.command()
@_QUEUE
@_JSON
@click.pass_obj
def stats(options: _Options, queue: str | None, as_json: bool) -> int:
    """Tasks per state, and how many leases are stale (of one queue with --queue)."""

    def body(store: SagaStore) -> int:
        counts = store.counts(queue=queue)
        stale_count = sum(queue is None or t.queue == queue for t in store.list_stale())
        total = sum(counts.values())
        if as_json:
            print_json(
                {
                    "queue": queue,
                    "counts": {s.value: counts[s] for s in TaskState},
                    "total": total,
                    "stale": stale_count,
                }
            )
            return EXIT_OK
        from rich.table import Table

        title = f"{total} task(s), {stale_count} stale"
        if queue is not None:
            title += f" in queue {queue}"
        # The title on a line of its own: a table's title wraps at the table's width.
        table = Table()
        table.add_column("state")
        table.add_column("tasks", justify="right")
        for s in TaskState:
            table.add_row(s.value + (" (terminal)" if s.is_terminal else ""), str(counts[s]))
        console = new_console()
        console.print(title, markup=False)
        console.print(table)
        return EXIT_OK

    return _with_store(options, body)


@cli.command()
@click.option("--all-ended", is_flag=True, help="also require every task to be terminal")
@_JSON
@click.pass_obj
def verify(options: _Options, all_ended: bool, as_json: bool) -> int:
    """Check every task's recorded history against the invariants (exit 1 on FAIL)."""
    from sagalease.verification.history import verify_store

    def body(store: SagaStore) -> int:
        result = verify_store(store, require_terminal=all_ended)
        if as_json:
            print_json(
                {
                    "result": "PASS" if result.ok else "FAIL",
                    "tasks": result.tasks,
                    "history_entries": result.entries,
                    "problems": result.problems,
                }
            )
        else:
            for problem in result.problems[:50]:
                click.echo(f"VIOLATION: {problem}")
            click.echo(
                f"{'PASS' if result.ok else 'FAIL'}: {result.tasks} task(s),"
                f" {result.entries} history entries, {len(result.problems)} problem(s)"
            )
        return EXIT_OK if result.ok else EXIT_FAIL

    return _with_store(options, body)


@cli.command()
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--tasks", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--seed", type=int, default=None, help="fixes every choice (default: random)")
@click.option(
    "--ttl", type=click.FloatRange(0.2, 60), default=1.0, show_default=True, help="lease seconds"
)
@click.option("--kills", type=click.IntRange(min=0), default=None, help="SIGKILLs (tasks/25)")
@click.option("--pauses", type=click.IntRange(min=0), default=None, help="zombies (tasks/25)")
@click.option(
    "--timeout",
    "time_limit",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="seconds before the run stops (unfinished tasks make it FAIL)",
)
@click.option("--db", "sim_db", default=None, help="sqlite URL (default: ./sagalease-sim.db)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.pass_obj
def simulate(
    options: _Options,
    workers: int,
    tasks: int,
    seed: int | None,
    ttl: float,
    kills: int | None,
    pauses: int | None,
    time_limit: float,
    sim_db: str | None,
    as_json: bool,
) -> int:
    """Run a fleet of worker processes through crashes, pauses and failures on
    SQLite, then verify the whole history (exit 1 on FAIL).
    """
    from sagalease.verification.simulate import SimulationSettings, run_simulation

    if seed is None:
        seed = random.randrange(1_000_000)
    settings = SimulationSettings(
        workers=workers,
        tasks=tasks,
        seed=seed,
        ttl=ttl,
        kills=kills,
        pauses=pauses,
        timeout=time_limit,
    )
    settings.validate()
    db = sim_db if sim_db is not None else (options.db if options.db_given else None)
    if as_json or not sys.stderr.isatty():
        report = run_simulation(settings, db=db)
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as bar:
            job = bar.add_task(f"{workers} workers, seed {seed}", total=tasks)
            report = run_simulation(
                settings, db=db, progress=lambda done, total: bar.update(job, completed=done)
            )
    if as_json:
        print_json(report.to_json())
    else:
        print_report(report.to_json())
    return EXIT_OK if report.ok else EXIT_FAIL


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print specs/lifecycle.json instead")
def spec(as_json: bool) -> int:
    """Print the lifecycle spec generated from the code."""
    from sagalease.verification.spec import render_json, render_markdown

    sys.stdout.write(render_json() if as_json else render_markdown())
    return EXIT_OK


@cli.command()
@click.argument("model", default="default")
@click.option("--workers", type=int, default=None)
@click.option("--ttl", type=int, default=None)
@click.option("--max-attempts", type=int, default=None)
@click.option("--deadline", type=int, default=None)
@click.option("--compensations", type=int, default=None)
@click.option("--heartbeats", type=int, default=None)
def check(
    model: str,
    workers: int | None,
    ttl: int | None,
    max_attempts: int | None,
    deadline: int | None,
    compensations: int | None,
    heartbeats: int | None,
) -> int:
    """Model-check the lifecycle (MODEL: a name in models/ or models/many/, or a .toml
    path; a model with [[tasks]] runs the multi-task checker).
    """
    from sagalease.verification import many
    from sagalease.verification.checker import check as run_check
    from sagalease.verification.checker import load_model

    overrides = {
        "workers": workers,
        "ttl": ttl,
        "max_attempts": max_attempts,
        "deadline": deadline,
        "compensations": compensations,
        "heartbeats": heartbeats,
    }
    if model in many.many_model_names() or _has_tasks(model):
        return _check_many(model, {k: v for k, v in overrides.items() if v is not None})
    try:
        loaded = load_model(model, **overrides)
    except (OSError, TypeError, ValueError) as exc:
        raise _Fail(f"check: cannot load model {model!r}: {exc}", EXIT_USAGE) from exc
    print(f"model {loaded.name}: {loaded.description or loaded}")
    result = run_check(loaded)
    print(
        f"states {result.states:,}  transitions {result.transitions:,}  depth {result.depth}"
        f"  longest run to termination {result.longest_run}  time {result.seconds:.1f}s"
        f" ({result.states / max(result.seconds, 1e-9):,.0f} states/s)"
    )
    return _findings(result, loaded.expect, "declared transition ")


def _has_tasks(model: str) -> bool:
    """Whether ``model`` is a .toml path whose model lists its tasks ([[tasks]])."""
    path = Path(model)
    if path.suffix != ".toml" or not path.is_file():
        return False
    try:
        return "tasks" in tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # load_model reports it


def _check_many(model: str, overrides: dict[str, int]) -> int:
    """Run the multi-task checker on ``model`` and print what it found."""
    from sagalease.verification.many import check_many, load_many

    try:
        loaded = load_many(model, **overrides)
    except (OSError, TypeError, ValueError) as exc:
        raise _Fail(f"check: cannot load model {model!r}: {exc}", EXIT_USAGE) from exc
    print(f"model {loaded.name}: {loaded.description}")
    result = check_many(loaded)
    print(result.summary())
    return _findings(result, loaded.expect)


def _findings(result: Result[Any], expect: str, uncovered: str = "") -> int:
    """Print what a model-checker run found (a violation and its shortest trace, what
    no run exercised, drifted figures) and its verdict; the exit status.
    """
    if result.violation is not None:
        print(f"VIOLATION: {result.violation}")
        print("shortest trace:")
        for line in result.trace:
            print(f"  {line}")
    for item in result.uncovered:
        print(f"NOT EXERCISED: {uncovered}{item}")
    for name, (recorded, found) in result.drift.items():
        print(f"FIGURES DRIFTED: {name} recorded {recorded:,}, found {found:,}")
    print(f"{'PASS' if result.ok else 'FAIL'} (expected: {expect})")
    return EXIT_OK if result.ok else EXIT_FAIL


@cli.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    }
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def conformance(args: tuple[str, ...]) -> int:
    """Run the conformance suite against a store factory (module:factory)."""
    try:
        module = importlib.import_module("sagalease.conformance")
    except ImportError as exc:
        raise _Fail(
            f"conformance: the conformance suite is not available in this installation ({exc})",
            EXIT_USAGE,
        ) from exc
    run = getattr(module, "main", None)
    if not callable(run):
        raise _Fail("conformance: sagalease.conformance has no main(argv)", EXIT_USAGE)
    code = run(list(args))
    return int(code) if isinstance(code, int) else EXIT_OK


UI_EXTRA = "sagalease ui needs the [ui] extra: pip install 'sagalease[ui]'"
"""The one line ``ui`` prints when the web stack is not installed."""

_UI_PACKAGES = frozenset(
    {"starlette", "jinja2", "markupsafe", "uvicorn", "multipart", "prometheus_client"}
)


@cli.command("ui")
@click.option(
    "--db",
    "ui_db",
    default=None,
    metavar="URL",
    help="store URL (default: the group's --db, $SAGALEASE_DB, sqlite:///sagalease.db)",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="enable quarantine, annotate and requeue (POST forms with CSRF tokens)",
)
@click.pass_obj
def ui_command(
    options: _Options, ui_db: str | None, host: str, port: int, allow_actions: bool
) -> int:
    """Serve the web view: dashboard, task pages with lease timelines, lists,
    search, /metrics and /healthz; read-only unless --allow-actions.
    """
    try:
        import sagalease.ui.app as app  # the [ui] extra: imported only for this command
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in _UI_PACKAGES:
            raise
        raise _Fail(f"{UI_EXTRA} (missing: {exc.name})", EXIT_USAGE) from exc
    if ui_db is not None:
        options = _Options(ui_db, True, options.timeout, options.connect_timeout)
    store = _open(options)
    try:
        app.serve(store, host=host, port=port, allow_actions=allow_actions, url=options.db)
    except OSError as exc:
        raise _Fail(f"ui: {exc}", EXIT_USAGE) from exc
    finally:
        store.close()
    return EXIT_OK


# ---------------------------------------------------------------- entry point


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sagalease`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        ctx = click.Context(cli, info_name="sagalease", **cli.context_settings)
        click.echo(cli.get_help(ctx))
        return EXIT_USAGE
    try:
        result = cli.main(args=args, prog_name="sagalease", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx is not None else "", err=True)
        return EXIT_USAGE
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _error(f"{exc.format_message()}{hint}")
        return EXIT_USAGE
    except click.exceptions.Abort:
        _error("interrupted")
        return 130
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except _Fail as exc:
        _error(str(exc))
        return exc.code
    except (SchemaVersionError, StoreUnavailableError) as exc:
        _error(str(exc))
        return EXIT_UNAVAILABLE
    except SagaLeaseError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    if isinstance(result, int):
        return result
    return EXIT_OK


def _error(message: str) -> None:
    click.echo(f"sagalease: error: {_one_line(message)}", err=True)
