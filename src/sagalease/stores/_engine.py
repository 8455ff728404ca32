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

import json
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import Any, Final

from sagalease import core
from sagalease.errors import InvalidInputError
from sagalease.expr import Dialect, Expr, all_of
from sagalease.lifecycle import EFFECTS, HOLDER_EVENTS, EventWrite, event_write
from sagalease.records import HistoryEntry, TaskSaga
from sagalease.stores._rows import COLUMNS, HISTORY_COLUMNS, Row, decode_entry, decode_task
from sagalease.stores._sql import DEADLINE_BARS_ACQUIRE

__all__ = [
    "AT",
    "BATCH_PARAMS",
    "FAST_EVENTS",
    "SqlMismatchError",
    "batch_params",
    "check_against_core",
    "check_batch_against_core",
    "claim_params",
    "params",
    "postgres_claim",
    "postgres_write",
    "postgres_write_many",
    "sqlite_claim",
    "sqlite_claim_guard",
    "sqlite_write",
    "sqlite_write_many",
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
    names = (*effect.args, *(n for n in effect.optional_args if args.get(n) is not None))
    recorded = tuple(args[name] for name in names)
    if any(isinstance(value, str) and len(value) > _CACHED_TEXT for value in recorded):
        values["args_json"] = core.dump_args(dict(zip(names, recorded, strict=True)))
    else:
        values["args_json"] = _args_json(names, recorded)
    return values


_CACHED_TEXT: Final = 256
"""The longest text argument (a reason) whose call's ``args_json`` is kept."""


@lru_cache(maxsize=4096)
def _args_json(names: tuple[str, ...], values: tuple[Any, ...]) -> str:
    """The entry's ``args_json`` of these checked arguments (short texts, integers
    and ``None``, so hashable): encoded once per distinct call, e.g. once per lease
    for its heartbeats (the same owner, token and ttl).
    """
    return core.dump_args(dict(zip(names, values, strict=True)))


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


BATCH_PARAMS: Final = ("task_id", "token", "args_json")
"""The parameters of a batch write that differ from row to row (the others are the
call's, the same for every row)."""


def batch_params(
    event: str, dialect: str, now_us: int, items: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any] | None:
    """The parameters of ``event``'s batch statement (:func:`sqlite_write_many`,
    :func:`postgres_write_many`) for ``items`` (task id, the call's arguments), or
    ``None`` when the core must answer for one of them (as :func:`params`). On
    SQLite the rows are one JSON array ``:batch``; on PostgreSQL one array per
    column. ``n``: how many rows must apply for the batch to be written.
    """
    rows = [params(event, task_id, now_us, args) for task_id, args in items]
    if not rows or any(row is None for row in rows):
        return None
    checked = [row for row in rows if row is not None]
    values = {k: v for k, v in checked[0].items() if k not in BATCH_PARAMS}
    values["n"] = len(checked)
    if dialect == "sqlite":
        values["batch"] = json.dumps([[row[k] for k in BATCH_PARAMS] for row in checked])
    else:
        values.update({k: [row[k] for row in checked] for k in BATCH_PARAMS})
    return values


# ---------------------------------------------------------------- SQLite


def _sqlite_parts(write: EventWrite, d: Dialect) -> tuple[str, str]:
    """``write``'s history entry (a ``SELECT`` list) and ``SET`` list on SQLite."""
    entry = ", ".join(write.entry[c].sql(d) for c in _ENTRY_COLUMNS)
    sets = ", ".join(f"{c} = {e.sql(d)}" for c, e in write.columns.items())
    return entry, sets


SQLITE_WRITTEN: Final = (
    "SELECT "
    + ", ".join(f"t.{c}" for c in _TASK_COLUMNS)
    + ", "
    + ", ".join(f"h.{c}" for c in _ENTRY_COLUMNS)
    + " FROM tasks AS t JOIN history AS h ON h.task_id = t.task_id AND h.seq = t.version"
)
"""What a SQLite write wrote: each task's record and its latest entry (the one the
write inserted), in :func:`split_row` order; the store adds which tasks.
"""


@cache
def sqlite_write(event: str) -> tuple[str, str, str]:
    """The three statements of ``event`` on SQLite, run in one write transaction:
    the history ``INSERT ... SELECT`` computed from the row, then, if it inserted a
    row, the ``UPDATE`` of the task, then the read of what they wrote
    (:data:`SQLITE_WRITTEN`). Both writes are guarded by the same ``applies``, so
    inside the transaction they match the same row or none. Named parameters
    (:func:`params`); SQLite evaluates every ``SET`` expression on the row before
    the update, as the declaration means.

    No ``RETURNING``: SQLite gathers a statement's returned rows in a temporary
    table, with a page cache of its own (87 KB allocated and freed per statement),
    which cost more than the read by primary key.
    """
    write = event_write(event)
    where = all_of(write.applies, *_exact(write, _SQLITE)).sql(_SQLITE)
    entry, sets = _sqlite_parts(write, _SQLITE)
    insert = (
        f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT task_id, {entry} FROM tasks"
        f" WHERE task_id = :task_id AND {where}"
    )
    update = f"UPDATE tasks SET {sets} WHERE task_id = :task_id AND {where}"
    return insert, update, f"{SQLITE_WRITTEN} WHERE t.task_id = :task_id"


_SQLITE_BATCH: Final = Dialect("sqlite", batch=frozenset(BATCH_PARAMS))

_SQLITE_ROWS: Final = (
    "(SELECT "
    + ", ".join(f"value ->> {i} AS b_{name}" for i, name in enumerate(BATCH_PARAMS))
    + " FROM json_each(:batch)) AS b"
)
"""A SQLite batch's rows: ``b_task_id``, ``b_token``, ... from the JSON array ``:batch``."""


@cache
def sqlite_write_many(event: str) -> tuple[str, str, str]:
    """``event`` on many tasks on SQLite (:func:`batch_params`), as
    :func:`sqlite_write` on one: the history ``INSERT ... SELECT`` of every entry,
    then the ``UPDATE ... FROM`` the batch of every row, then the read of what they
    wrote, in one write transaction. All or nothing: the insert requires the event
    to apply on all ``:n`` rows (else it inserts none and the update is not run).
    """
    write = event_write(event)
    d = _SQLITE_BATCH
    where = all_of(write.applies, *_exact(write, d)).sql(d)
    entry, sets = _sqlite_parts(write, d)
    rows = f"tasks JOIN {_SQLITE_ROWS} ON task_id = b_task_id"
    insert = (
        f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT task_id, {entry} FROM {rows}"
        f" WHERE {where} AND (SELECT count(*) FROM {rows} WHERE {where}) = :n"
    )
    update = f"UPDATE tasks SET {sets} FROM {_SQLITE_ROWS} WHERE task_id = b_task_id AND {where}"
    read = f"{SQLITE_WRITTEN} JOIN {_SQLITE_ROWS} ON t.task_id = b_task_id"
    return insert, update, read


def sqlite_claim_guard() -> str:
    """``acquire``'s rendered guard on SQLite, over an unqualified task row (what a
    claim's candidate scan adds to its index-friendly prefilter).
    """
    return event_write("acquire").applies.sql(_SQLITE)


@cache
def sqlite_claim() -> tuple[str, str, str]:
    """The writes of a claim on SQLite, in one write transaction (the writer lock
    held) after the store's candidate scan (a ``SELECT task_id`` in claim order,
    limited and guarded by :func:`sqlite_claim_guard`): the history ``INSERT ...
    SELECT`` of the acquisitions of the rows given as the JSON array ``:ids``, the
    ``UPDATE`` of exactly those rows, and the read of what they wrote
    (:data:`SQLITE_WRITTEN`). No ``RETURNING`` (:func:`sqlite_write` says why).
    SQLite's renderings are exact on every row (its ``py_repr`` is a registered
    function), so no candidate is left to the core.
    """
    write = event_write("acquire")
    if _exact(write, _SQLITE):  # pragma: no cover - a rendering that needs a fallback
        raise AssertionError("a SQLite claim needs every acquire expression exact")
    entry, sets = _sqlite_parts(write, _SQLITE)
    ids = "json_each(:ids) AS ids"
    insert = (
        f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT task_id, {entry}"
        f" FROM {ids} JOIN tasks ON tasks.task_id = ids.value"
    )
    update = f"UPDATE tasks SET {sets} WHERE task_id IN (SELECT value FROM json_each(:ids))"
    return insert, update, f"{SQLITE_WRITTEN} JOIN {ids} ON t.task_id = ids.value"


def _exact(write: EventWrite, dialect: Dialect) -> list[Expr]:
    """The conditions under which every expression of ``write`` is exact in ``dialect``."""
    found = list(write.applies.exact(dialect))
    for expr in (*write.columns.values(), *write.entry.values()):
        found.extend(expr.exact(dialect))
    return found


# ---------------------------------------------------------------- PostgreSQL


def _pg_parts(event: str, batch: bool = False) -> tuple[str, str, str]:
    """``event``'s guard, ``SET`` list and ``RETURNING`` list on PostgreSQL, over the
    locked row ``o`` (the new row is ``t``; the entry is returned as ``e_<column>``;
    ``batch``: the per-row parameters are ``o.b_<name>``).
    """
    write = event_write(event)
    old = Dialect("postgres", "o.", frozenset(BATCH_PARAMS) if batch else frozenset())
    where = all_of(write.applies, *_exact(write, old)).sql(old)
    sets = ", ".join(f"{c} = {e.sql(old)}" for c, e in write.columns.items())
    entry = ", ".join(f"{write.entry[c].sql(old)} AS e_{c}" for c in _ENTRY_COLUMNS)
    returning = ", ".join(f"t.{c}" for c in _TASK_COLUMNS) + ", " + entry
    return where, sets, returning


_PG_HISTORY: Final = (
    f" h AS (INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
    " SELECT u.task_id, " + ", ".join(f"u.e_{c}" for c in _ENTRY_COLUMNS) + " FROM u)"
)
"""The history insert of a PostgreSQL write: the entries its ``u`` returned."""


def _pg_tail(notify: bool) -> str:
    """The history insert and the final select of a PostgreSQL write (with ``notify``:
    the task's queue sent to ``%(channel)s`` when the entry leaves it open and unleased).
    The statements read ``*`` (``o``: the locked row; ``u``: what the update returned,
    in :func:`split_row` order) to stay short: psycopg caches the conversion of a
    query of at most 4096 bytes only.
    """
    text = f",{_PG_HISTORY}"
    if notify:
        text += (
            ", n AS (SELECT pg_notify(%(channel)s::text, u.queue) FROM u"
            " WHERE u.lease_owner IS NULL AND u.terminal_reason IS NULL)"
        )
        return f"{text} SELECT u.*, (SELECT count(*) FROM n) FROM u"
    return f"{text} SELECT * FROM u"


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
        "WITH o AS (SELECT * FROM {schema}.tasks WHERE task_id = %(task_id)s::text"
        " FOR UPDATE),"
        f" u AS (UPDATE {{schema}}.tasks AS t SET {sets} FROM o"
        f" WHERE t.task_id = o.task_id AND {where} RETURNING {returning})"
        + _pg_tail(event_write(event).frees)
    )


@cache
def postgres_write_many(event: str) -> str:
    """``event`` on many tasks on PostgreSQL as one statement (:func:`batch_params`):
    the batch's rows (``unnest`` of one array per column) joined to their tasks,
    locked in task-id order; every row updated and its entry inserted, all or
    nothing: the update requires the event to apply on all ``%(n)s`` rows.
    """
    where, sets, returning = _pg_parts(event, batch=True)
    arrays = ", ".join(
        f"%({name})s::{'bigint' if name == 'token' else 'text'}[]" for name in BATCH_PARAMS
    )
    names = ", ".join(f"b_{name}" for name in BATCH_PARAMS)
    return (
        f"WITH b AS (SELECT * FROM unnest({arrays}) AS b({names})),"
        f" o AS (SELECT tasks.*, {names} FROM {{schema}}.tasks JOIN b ON task_id = b_task_id"
        " ORDER BY task_id FOR UPDATE OF tasks),"
        f" u AS (UPDATE {{schema}}.tasks AS t SET {sets} FROM o"
        f" WHERE t.task_id = o.task_id AND {where}"
        f" AND (SELECT count(*) FROM o WHERE {where}) = %(n)s::bigint RETURNING {returning})"
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
    return (
        f"WITH o AS (SELECT * FROM {{schema}}.tasks WHERE {scope}open_seq IS NOT NULL"
        f" AND {CLAIM_PREFILTER} ORDER BY priority DESC, open_seq LIMIT %(limit)s::bigint"
        " FOR UPDATE SKIP LOCKED),"
        f" u AS (UPDATE {{schema}}.tasks AS t SET {sets} FROM o"
        f" WHERE t.task_id = o.task_id AND {where} RETURNING {returning}),{_PG_HISTORY}"
        " SELECT (SELECT count(*) FROM o), u.*"
        " FROM (SELECT 1) AS one LEFT JOIN u ON TRUE ORDER BY u.priority DESC, u.seq"
    )


# ---------------------------------------------------------------- rows


_WIDTH: Final = len(_TASK_COLUMNS)

AT: Final = {column: i for i, column in enumerate(_TASK_COLUMNS)}
"""Where each task column sits in a write's row (``seq`` first: :func:`split_row`)."""


def split_row(row: Row) -> tuple[TaskSaga, HistoryEntry]:
    """A write's row (returned on PostgreSQL, read back on SQLite): the new record,
    then its entry's columns.
    """
    task = decode_task(row[:_WIDTH])
    entry = decode_entry((task.task_id, *row[_WIDTH : _WIDTH + len(_ENTRY_COLUMNS)]))
    return task, entry


def written(event: str, row: Row) -> tuple[TaskSaga, HistoryEntry | None]:
    """What a store returns of ``event``'s write from its row (:func:`split_row`):
    the new record, and its entry only for an acquire (whose reason tells a reclaim
    apart); the other events' entries are not decoded.
    """
    if event == "acquire":
        return split_row(row)
    return decode_task(row[:_WIDTH]), None


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


def check_batch_against_core(
    olds: Mapping[str, TaskSaga | None],
    event: str,
    now_us: int,
    items: Sequence[tuple[str, Mapping[str, Any]]],
    written: Sequence[tuple[TaskSaga, HistoryEntry]],
    handlers: Mapping[str, Any],
) -> None:
    """:func:`check_against_core` for each item of a batch write that wrote
    ``written`` (in the items' order) over the rows ``olds`` (by task id).
    """
    for (task_id, args), pair in zip(items, written, strict=True):
        check_against_core(olds[task_id], event, now_us, args, pair, handlers)
