"""The SQL stores' engine for the hot events: statements rendered from the declaration.

No I/O here. For each hot event (:data:`sagalease.lifecycle.EFFECTS`) the engine
renders, for SQLite or PostgreSQL, the write that applies the event in the
database itself: the event's guards (``applies``) in the ``WHERE`` clause, its
effects as the ``SET`` list, its history entry computed from the same row, every
value a bound parameter. A store's driver only executes what the engine gives it:

* :func:`params` checks the call's arguments as the core would and returns the
  statement's parameters, or ``None`` when the core must answer (bad input, an
  instant past year 9999): then the store takes its slow path.
* A statement that matches no row changed nothing: the event does not apply, or
  the row is one the rendering leaves to the Python core (:meth:`Expr.exact`).
  The store then reads the row and lets :mod:`sagalease.core` name the error (or
  apply the event, if it applies by now).

With the core's contracts on (``contracts=True``, or ``SAGALEASE_CONTRACTS=1``, as
in CI), a store also reads the row before the statement and checks that the
record and the entry the database wrote are exactly the core's
(:func:`check_against_core`): every SQL write of the test suite is then compared
with the Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Final

from sagalease import core
from sagalease.errors import InvalidInputError
from sagalease.expr import Dialect, Expr, all_of
from sagalease.lifecycle import EFFECTS, HOLDER_EVENTS, EventWrite, event_write
from sagalease.records import HistoryEntry, TaskSaga
from sagalease.stores._rows import COLUMNS, HISTORY_COLUMNS, Row, decode_entry, decode_task
from sagalease.stores._sql import DEADLINE_BARS_ACQUIRE

__all__ = [
    "FAST_EVENTS",
    "SqlMismatchError",
    "check_against_core",
    "claim_params",
    "params",
    "postgres_claim",
    "postgres_write",
    "sqlite_claim",
    "sqlite_claim_guard",
    "sqlite_write",
]

FAST_EVENTS: Final = frozenset(EFFECTS)
"""The events written by one rendered statement (the others: load, core, write)."""

_ENTRY_COLUMNS: Final = tuple(c.strip() for c in HISTORY_COLUMNS.split(","))[1:]
"""The history columns after ``task_id``, in :data:`HISTORY_COLUMNS` order."""

_TASK_COLUMNS: Final = tuple(c.strip() for c in COLUMNS.split(","))

_SQLITE = Dialect("sqlite")


class SqlMismatchError(AssertionError):
    """A rendered statement wrote something other than the Python core computes
    (a bug in sagalease: the check runs with the core's contracts on).
    """


def _duration(value: object, *, allow_zero: bool) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value > 0 or (allow_zero and value == 0))
    )


def params(event: str, task_id: str, now_us: int, args: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parameters of ``event``'s statement for this call, or ``None`` when the
    Python core must decide (an argument the core would refuse, or a resulting
    instant past the range): the store then takes its slow path, which raises the
    core's error in the core's order.
    """
    effect = EFFECTS[event]
    values: dict[str, Any] = {"task_id": task_id, "now_us": now_us}
    try:
        core.check_id("task_id", task_id)
        core.check_id("owner", args["owner"])
        if event in HOLDER_EVENTS:
            token = args["token"]
            if not isinstance(token, int) or isinstance(token, bool):
                return None
            values["token"] = token
        for name in ("ttl_us", "delay_us"):
            if name in args:
                value = args[name]
                if not _duration(value, allow_zero=name == "delay_us"):
                    return None
                if now_us + value > core.MAX_INSTANT_US:
                    return None
                values[name] = value
        if "reason" in args:
            reason = args["reason"]
            if reason is not None or event == "fail":
                core.check_text("reason", reason)
            values["reason"] = reason
    except InvalidInputError:
        return None
    values["owner"] = args["owner"]
    recorded = {name: args[name] for name in effect.args}
    recorded.update({n: args[n] for n in effect.optional_args if args.get(n) is not None})
    values["args_json"] = core.dump_args(recorded)
    return values


def claim_params(owner: str, ttl_us: int, now_us: int, limit: int) -> dict[str, Any] | None:
    """The parameters of a claim statement (:func:`postgres_claim`; the queues are
    added by the store), or ``None`` when the lease would end past the range (the
    core then raises).
    """
    if now_us + ttl_us > core.MAX_INSTANT_US:
        return None
    return {
        "owner": owner,
        "ttl_us": ttl_us,
        "now_us": now_us,
        "limit": limit,
        "args_json": core.dump_args({"owner": owner, "ttl_us": ttl_us}),
    }


# ---------------------------------------------------------------- SQLite


@cache
def sqlite_write(event: str) -> tuple[str, str]:
    """The two statements of ``event`` on SQLite, run in one write transaction:
    the history ``INSERT ... SELECT`` computed from the row (``RETURNING`` the
    entry) and then, if it inserted a row, the ``UPDATE ... RETURNING`` of the task.
    Both are guarded by the same ``applies``, so inside the transaction they match
    the same row or none. Named parameters (:func:`params`); SQLite evaluates every
    ``SET`` expression on the row before the update, as the declaration means.
    """
    write = event_write(event)
    where = all_of(write.applies, *_exact(write, _SQLITE)).sql(_SQLITE)
    entry = ", ".join(write.entry[c].sql(_SQLITE) for c in _ENTRY_COLUMNS)
    insert = (
        f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT task_id, {entry} FROM tasks"
        f" WHERE task_id = :task_id AND {where} RETURNING {HISTORY_COLUMNS}"
    )
    sets = ", ".join(f"{c} = {e.sql(_SQLITE)}" for c, e in write.columns.items())
    update = f"UPDATE tasks SET {sets} WHERE task_id = :task_id AND {where} RETURNING {COLUMNS}"
    return insert, update


def sqlite_claim_guard() -> str:
    """``acquire``'s rendered guard on SQLite, over an unqualified task row (what a
    claim's candidate scan adds to its index-friendly prefilter).
    """
    return event_write("acquire").applies.sql(_SQLITE)


@cache
def sqlite_claim(candidates: str) -> tuple[str, str]:
    """A claim on SQLite as two statements in one write transaction (the writer
    lock held): the history ``INSERT ... SELECT`` of the acquisitions of the rows
    ``candidates`` selects (a ``SELECT task_id`` in claim order, already limited and
    guarded by :func:`sqlite_claim_guard`; named parameters), ``RETURNING`` the
    entries; then the ``UPDATE ... RETURNING`` of exactly those rows, given as the
    JSON array ``:ids`` of the entries' task ids. SQLite's renderings are exact on
    every row (its ``py_repr`` is a registered function), so no candidate is left
    to the core.
    """
    write = event_write("acquire")
    if _exact(write, _SQLITE):  # pragma: no cover - a rendering that needs a fallback
        raise AssertionError("a SQLite claim needs every acquire expression exact")
    entry = ", ".join(write.entry[c].sql(_SQLITE) for c in _ENTRY_COLUMNS)
    insert = (
        f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT task_id, {entry} FROM tasks"
        f" WHERE task_id IN ({candidates}) RETURNING {HISTORY_COLUMNS}"
    )
    sets = ", ".join(f"{c} = {e.sql(_SQLITE)}" for c, e in write.columns.items())
    update = (
        f"UPDATE tasks SET {sets} WHERE task_id IN (SELECT value FROM json_each(:ids))"
        f" RETURNING {COLUMNS}"
    )
    return insert, update


def _exact(write: EventWrite, dialect: Dialect) -> list[Expr]:
    """The conditions under which every expression of ``write`` is exact in ``dialect``."""
    found = list(write.applies.exact(dialect))
    for expr in (*write.columns.values(), *write.entry.values()):
        found.extend(expr.exact(dialect))
    return found


# ---------------------------------------------------------------- PostgreSQL


def _pg_parts(event: str) -> tuple[str, str, str]:
    """``event``'s guard, ``SET`` list and ``RETURNING`` list on PostgreSQL, over the
    locked row ``o`` (the new row is ``t``; the entry is returned as ``e_<column>``).
    """
    write = event_write(event)
    old = Dialect("postgres", "o.")
    where = all_of(write.applies, *_exact(write, old)).sql(old)
    sets = ", ".join(f"{c} = {e.sql(old)}" for c, e in write.columns.items())
    entry = ", ".join(f"{write.entry[c].sql(old)} AS e_{c}" for c in _ENTRY_COLUMNS)
    returning = ", ".join(f"t.{c}" for c in _TASK_COLUMNS) + ", " + entry
    return where, sets, returning


def _pg_tail(notify: bool) -> str:
    """The history insert and the final select of a PostgreSQL write (with ``notify``:
    the task's queue sent to ``%(channel)s`` when the entry leaves it open and unleased).
    """
    cols = ", ".join(f"u.{c}" for c in _TASK_COLUMNS)
    entries = ", ".join(f"u.e_{c}" for c in _ENTRY_COLUMNS)
    text = (
        f", h AS (INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
        f" SELECT u.task_id, {entries} FROM u)"
    )
    if notify:
        text += (
            ", n AS (SELECT pg_notify(%(channel)s::text, u.queue) FROM u"
            " WHERE u.lease_owner IS NULL AND u.terminal_reason IS NULL)"
        )
        return f"{text} SELECT {cols}, {entries}, (SELECT count(*) FROM n) FROM u"
    return f"{text} SELECT {cols}, {entries} FROM u"


@cache
def postgres_write(event: str) -> str:
    """``event`` by task id on PostgreSQL as one statement (one round trip, its own
    transaction): lock the row (``FOR UPDATE``: a concurrent writer is waited for,
    then its row is the one judged), update it where the event applies, insert the
    entry, return both; an event that may free the task (:attr:`EventWrite.frees`)
    also sends its queue to ``%(channel)s`` when it did. ``{schema}`` is left for the
    store to fill in.
    """
    where, sets, returning = _pg_parts(event)
    return (
        f"WITH o AS (SELECT {COLUMNS} FROM {{schema}}.tasks WHERE task_id = %(task_id)s::text"
        " FOR UPDATE),"
        f" u AS (UPDATE {{schema}}.tasks AS t SET {sets} FROM o"
        f" WHERE t.task_id = o.task_id AND {where} RETURNING {returning})"
        + _pg_tail(event_write(event).frees)
    )


CLAIM_PREFILTER: Final = (
    "available_us <= %(now_us)s::bigint"
    " AND (lease_expires_us IS NULL OR lease_expires_us <= %(now_us)s::bigint)"
    " AND attempts < max_attempts"
    " AND (deadline_us IS NULL OR deadline_us > %(now_us)s::bigint"
    f" OR NOT ({DEADLINE_BARS_ACQUIRE}))"
)
"""The claim's candidate scan on PostgreSQL: on an open row, the same as ``acquire``'s
rendered guard (``tests/stores/test_sql_equivalence.py`` checks it), but written
without the per-state terms, so that the planner walks the claim index in claim
order instead of gathering the open rows by state and sorting them.
"""


@cache
def postgres_claim(scope: str) -> str:
    """A claim on PostgreSQL as one statement: the first ``%(limit)s`` open rows of
    ``scope`` (``""``, ``"queue = %(queue)s::text AND "`` or ``"queue = ANY(%(queues)s::text[])
    AND "``) that :data:`CLAIM_PREFILTER` keeps, in claim order, locked with ``SKIP
    LOCKED``; each acquired where the rendered guard applies, its entry inserted;
    returned in claim order, after the number of rows locked (a row locked but not
    acquired is one the rendering left to the Python core). Always at least one row:
    ``(locked, NULL, ...)`` when none was acquired.
    """
    where, sets, returning = _pg_parts("acquire")
    cols = ", ".join(f"u.{c}" for c in _TASK_COLUMNS)
    entries = ", ".join(f"u.e_{c}" for c in _ENTRY_COLUMNS)
    return (
        f"WITH o AS (SELECT {COLUMNS} FROM {{schema}}.tasks WHERE {scope}open_seq IS NOT NULL"
        f" AND {CLAIM_PREFILTER} ORDER BY priority DESC, open_seq LIMIT %(limit)s::bigint"
        " FOR UPDATE SKIP LOCKED),"
        f" u AS (UPDATE {{schema}}.tasks AS t SET {sets} FROM o"
        f" WHERE t.task_id = o.task_id AND {where} RETURNING {returning}),"
        f" h AS (INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
        f" SELECT u.task_id, {entries} FROM u)"
        f" SELECT (SELECT count(*) FROM o), {cols}, {entries}"
        " FROM (SELECT 1) AS one LEFT JOIN u ON TRUE ORDER BY u.priority DESC, u.seq"
    )


# ---------------------------------------------------------------- rows


_WIDTH: Final = len(_TASK_COLUMNS)


def split_row(row: Row) -> tuple[TaskSaga, HistoryEntry]:
    """A PostgreSQL write's returned row: the new record, then its entry's columns."""
    task = decode_task(row[:_WIDTH])
    entry = decode_entry((task.task_id, *row[_WIDTH : _WIDTH + len(_ENTRY_COLUMNS)]))
    return task, entry


def check_against_core(
    old: TaskSaga | None,
    event: str,
    now_us: int,
    args: Mapping[str, Any],
    written: tuple[TaskSaga, HistoryEntry] | None,
    handlers: Mapping[str, Any],
) -> None:
    """Raise :class:`SqlMismatchError` unless the statement did what the core does
    from ``old``: the same record and entry when it wrote (``written``), and when it
    wrote nothing, a refusal by the core (or a row the rendering leaves to it).
    """
    if old is None:
        if written is not None:
            raise SqlMismatchError(f"{event} wrote a task that did not exist")
        return
    try:
        step = handlers[event](old, now_us=now_us, **args)
    except Exception as refusal:
        if written is not None:
            raise SqlMismatchError(
                f"{event} on {old.task_id!r}: the SQL wrote {written[0]!r}; the core refused"
                f" with {refusal!r}"
            ) from None
        return
    if written is not None and (written[0], written[1]) != (step.task, step.entry):
        raise SqlMismatchError(
            f"{event} on {old.task_id!r} from {old!r}: the SQL wrote {written!r};"
            f" the core computes {(step.task, step.entry)!r}"
        )
