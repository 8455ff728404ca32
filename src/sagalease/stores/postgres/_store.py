"""The PostgreSQL store: for worker fleets on many machines (``postgresql://...``).

psycopg 3 with a :mod:`psycopg_pool` connection pool (the ``postgres`` extra:
``pip install sagalease[postgres]``). The behaviour is the memory and SQLite
stores': the store loads a row, applies the pure core's function in Python and
writes the new record together with its history entry as a compare-and-set on
``version``:

* every holder/operator event starts from the last record this store saw of
  the task (or reads the row, one statement), computes the step with
  :mod:`sagalease.core`, then writes the columns it changes with one
  statement: a CTE whose ``UPDATE ... WHERE task_id = %s AND version = %s``
  feeds the history
  ``INSERT``, so the record and its entry are written together or not at all
  (one round trip, one implicit transaction). If another writer got there
  first the update matches no row and nothing is written; the event is then
  evaluated again against the fresh row, locked with ``SELECT ... FOR
  UPDATE``, so the loser gets the core's typed error (or succeeds if the event
  still applies). Never last-writer-wins.
* ``claim_next``/``claim_batch`` pick their candidates with ``FOR UPDATE SKIP
  LOCKED`` (workers never wait for each other's candidate) in claim order:
  priority, highest first, then creation; ``reap`` locks its candidates (``FOR
  UPDATE``, it waits for a row being written) in creation order, and reads them
  again until that read returns only rows it holds, so that what it reaps is what
  one moment of the store would reap (``_reap_candidates``). Both apply
  ``core.acquire``/``core.reap`` and skip whatever the core refuses. They walk
  ``open_seq`` (a generated column: the seq of a task that has not ended, NULL
  after) through partial indexes that hold only open tasks and that no other
  index can answer, so the scan is independent of the number of finished tasks
  kept whatever the planner's statistics say: ``tasks_claim`` (priority, then
  open_seq) for a claim from every queue, ``tasks_queue_claim`` (queue first)
  for named queues, ``tasks_open`` for the reaper. Queue names are always bound
  parameters (``queue = %s`` for one, ``queue = ANY(%s)`` for several). A claim
  is one statement rendered by the engine (lock, acquire, history); rows it
  leaves to the core are claimed through it in two round trips (a pipelined
  ``BEGIN`` with the locking ``SELECT``, then the write with ``COMMIT``).
* ``create_many`` is one statement (so one implicit transaction): one
  multi-row ``INSERT`` into tasks and one into history, from arrays
  (``unnest``). A task id already stored fails the whole statement, so nothing
  is stored; it is then looked up and named in :class:`DuplicateTaskError`.

**Wake-ups.** Every write that leaves a task open and unleased where it was not
(``create``, ``create_many``, ``release``, ``reap``, ``fail`` into COMPENSATING,
a deadline reap) also runs ``pg_notify(channel, queue)`` in the same statement
(or transaction) as the write, so the notification goes out with the commit and
only if the write happened. The channel is fixed per schema:
``sagalease_<first 16 hex digits of the SHA-256 of the schema name>`` (see
:func:`channel_name`: short enough for PostgreSQL's 63-byte identifiers
whatever the schema); the queue name is the payload, a bound parameter, never
SQL. :meth:`PostgresStore.wait_for_work` listens on a dedicated autocommit
connection per store (opened by the first wait, shared by every waiting
thread, reopened by the first wait after it was lost) and returns ``True`` when
a notification of one of its queues arrives, from any process on the schema.

Statements are prepared on each connection (``prepare=True``).

**Schema.** Everything lives in the store's own PostgreSQL schema (``schema``,
default ``sagalease``), created and migrated on open by the numbered
``migrations/NNNN_*.sql`` files beside this module, under a transaction-scoped
advisory lock, so that many workers starting at once migrate exactly once. A
schema written by a newer sagalease is refused with :class:`SchemaVersionError`
and left untouched. A role without ``CREATE`` on the database can use a schema
that an owner created and migrated.

**Time.** An explicit ``now`` is always honoured (tests, models, the
conformance suite). A call without ``now`` reads the store's clock:
``clock=None`` is the machine's UTC clock (like the other stores);
``clock="database"`` reads the PostgreSQL server's ``clock_timestamp()``
instead (one extra short statement per call), so that every worker of a fleet
measures leases against one clock: a worker whose own clock is minutes off can
neither cut a live lease short (and steal it) nor stretch its own. Use it in
production fleets whose machines' clocks are not tightly synchronised.

**Failures.** A refused connection, a dropped connection, a server restart or
an exhausted pool surfaces as :class:`StoreUnavailableError` (with the driver's
error chained). The pool drops broken connections and reconnects by itself;
the next call works once the server is back. A call that failed this way has
an *unknown outcome*: its write may or may not have been committed. It is safe
to retry: the version compare-and-set means a retried call is evaluated
against the record as it now is, so a retried ``complete``, ``fail``,
``release``, ``acquire`` or ``compensation_*`` call either succeeds or raises
the typed error that describes what it finds (e.g. :class:`TerminalTaskError`
after a ``complete`` that had in fact been committed); it is never applied
twice to the same version. Two events whose repeat is itself a valid event,
``annotate`` and ``register_compensation``, would be recorded twice by a blind
retry: read the task (``get``) before retrying those. A connection password is
never shown: not in error messages, log lines or ``repr()``.

Opening retries a server that is briefly unavailable (refused or dropped
connections, "starting up", "shutting down", "too many clients") with a growing
pause for up to ``connect_timeout`` seconds, then raises one
:class:`StoreUnavailableError` naming the host; wrong credentials, a missing
database or a missing privilege fail at once. Nothing is printed: psycopg's and
psycopg_pool's warnings about a store's connections are taken off their loggers
and reported as one WARNING line per incident on the ``sagalease.postgres``
logger (their text at DEBUG): see :class:`_Incidents` and docs/logging.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, Literal, NamedTuple, Self, TypeVar, cast
from urllib.parse import quote, urlsplit

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from sagalease import core
from sagalease.clock import Clock, duration_us
from sagalease.core import MAX_PRIORITY
from sagalease.errors import (
    DuplicateTaskError,
    InvalidInputError,
    SagaLeaseError,
    SchemaVersionError,
    StoreUnavailableError,
    TaskNotFoundError,
)
from sagalease.lifecycle import OPEN_STATES
from sagalease.records import HistoryEntry, TaskSaga, TaskState, from_us
from sagalease.store import QueueStats
from sagalease.stores import _engine
from sagalease.stores._base import Mutation
from sagalease.stores._rows import (
    COLUMNS,
    HISTORY_COLUMNS,
    TASK_COLUMNS,
    ClaimCursor,
    Row,
    changes,
    choose_claims,
    decode_entry,
    decode_task,
    entry_values,
    task_values,
)
from sagalease.stores._sql import (
    DEADLINE_BARS_ACQUIRE,
    DEADLINE_REAPS,
    Counted,
    Gaps,
    SQLStoreBase,
    add_ended,
    queue_stats_from_rows,
    read_migrations,
    without,
)

DEFAULT_SCHEMA: Final = "sagalease"
TEST_URL_ENV: Final = "SAGALEASE_TEST_POSTGRES_URL"
DEFAULT_TEST_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
GAP_SETTLE = 1.0
"""Seconds each of a gap's two retirement steps waits at least (see ``_sql.Gaps``)."""

_LOCK_NAMESPACE: Final = 0x5A6A  # pg_advisory_xact_lock(int, int): (namespace, hash of schema)


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of every migration, in order (1, 2, ...)."""
    return read_migrations("sagalease.stores.postgres")


def latest_schema_version() -> int:
    """The schema version this library writes."""
    return len(migrations())


# ---------------------------------------------------------------- statements

_ENTRY_SELECT = (
    "%s::bigint, %s::text, %s::text, %s::text, %s::bigint, %s::text, %s::bigint, %s::text, %s::text"
)

# The text columns of TASK_COLUMNS (the others are bigint): the array types of
# write_many's and insert_many's unnest. Only the schema knows the types, so they are named here.
_TEXT_COLUMNS: Final = frozenset(
    {
        "task_id",
        "saga_id",
        "queue",
        "requeued_from",
        "state",
        "metadata_json",
        "compensations_json",
        "lease_owner",
        "terminal_reason",
        "notes_json",
    }
)
_HISTORY_TYPES: Final = (
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "bigint",
    "text",
    "bigint",
    "text",
    "text",
)
"""The types of ``HISTORY_COLUMNS``, in order."""


def _column_type(column: str) -> str:
    """The SQL type of a task column's array in ``unnest`` (the integer columns take
    bigint arrays by assignment).
    """
    return "text" if column in _TEXT_COLUMNS else "bigint"


_CLAIMABLE = (
    # The walk's cursor (choose_claims): a lower priority, or the same and a later seq.
    " AND priority <= %s AND (priority < %s OR open_seq > %s)"
    " AND available_us <= %s"
    " AND (lease_expires_us IS NULL OR lease_expires_us <= %s)"
    " AND attempts < max_attempts"
    f" AND (deadline_us IS NULL OR deadline_us > %s OR NOT ({DEADLINE_BARS_ACQUIRE}))"
    " ORDER BY priority DESC, open_seq LIMIT %s FOR UPDATE SKIP LOCKED"
)
"""The claim candidates' conditions and order after the queue scope (the open rows
through tasks_claim, or tasks_queue_claim for named queues).
"""

_TEMPLATES: Final = {
    "select_one": f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE task_id = %s",
    "lock_one": f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE task_id = %s FOR UPDATE",
    # The notification goes out with the commit of the statement's implicit
    # transaction, and only if the task was inserted.
    "insert": (
        f"WITH ins AS (INSERT INTO {{schema}}.tasks ({', '.join(TASK_COLUMNS)})"
        f" VALUES ({', '.join(['%s'] * len(TASK_COLUMNS))})"
        " ON CONFLICT (task_id) DO NOTHING RETURNING task_id, queue),"
        f" ent AS (INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
        f" SELECT ins.task_id, {_ENTRY_SELECT} FROM ins RETURNING seq)"
        " SELECT ent.seq, pg_notify(%s, ins.queue) FROM ent, ins"
    ),
    # One statement, so one implicit transaction: a duplicate id anywhere is a
    # unique violation that stores nothing and sends no notification. The arrays
    # travel in binary (%b): no quoting of every element, several times cheaper.
    "insert_many": (
        f"WITH ins AS (INSERT INTO {{schema}}.tasks ({', '.join(TASK_COLUMNS)})"
        " SELECT * FROM unnest("
        + ", ".join(f"%b::{_column_type(c)}[]" for c in TASK_COLUMNS)
        + ") RETURNING queue),"
        f" ent AS (INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
        " SELECT * FROM unnest(" + ", ".join(f"%b::{t}[]" for t in _HISTORY_TYPES) + "))"
        " SELECT pg_notify(%s, q.queue) FROM (SELECT DISTINCT queue FROM ins) AS q"
    ),
    "notify": "SELECT pg_notify(%s, q) FROM unnest(%s::text[]) AS q",
    "state_of": "SELECT state FROM {schema}.tasks WHERE task_id = %s",
    "states_of": "SELECT task_id, state FROM {schema}.tasks WHERE task_id = ANY(%s)",
    "claim": f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE open_seq IS NOT NULL{_CLAIMABLE}",
    "claim_queue": (
        f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE queue = %s AND open_seq IS NOT NULL"
        f"{_CLAIMABLE}"
    ),
    "claim_queues": (
        f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE queue = ANY(%s)"
        f" AND open_seq IS NOT NULL{_CLAIMABLE}"
    ),
    "reap": (
        f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE open_seq > %s"
        " AND (lease_expires_us <= %s OR attempts >= max_attempts"
        f" OR (deadline_us <= %s AND {DEADLINE_REAPS}))"
        # Not SKIP LOCKED: a row being written right now (a heartbeat, a note) is
        # waited for, so that a reap never misses an expired lease it should drop
        # (linearizable against the reference store).
        " ORDER BY open_seq LIMIT %s FOR UPDATE"
    ),
    "stale": (
        f"SELECT {COLUMNS} FROM {{schema}}.tasks WHERE open_seq IS NOT NULL"
        " AND lease_expires_us <= %s ORDER BY open_seq"
    ),
    "seq_of": "SELECT seq FROM {schema}.tasks WHERE task_id = %s",
    "history": (
        f"SELECT {HISTORY_COLUMNS} FROM {{schema}}.history WHERE task_id = %s ORDER BY seq"
    ),
    "counts": "SELECT state, count(*) FROM {schema}.tasks GROUP BY state",
    "counts_queue": "SELECT state, count(*) FROM {schema}.tasks WHERE queue = %s GROUP BY state",
    # queue_stats: read in one REPEATABLE READ transaction (one snapshot); see
    # PostgresStore.queue_stats. Every task by queue and state (the first call):
    "qs_all": "SELECT queue, state, count(*) FROM {schema}.tasks GROUP BY queue, state",
    # The top seq and this snapshot's xmin and xmax (to retire gaps: see _sql.Gaps):
    "qs_top": (
        "SELECT max(seq), pg_snapshot_xmin(pg_current_snapshot())::text::bigint,"
        " pg_snapshot_xmax(pg_current_snapshot())::text::bigint FROM {schema}.tasks"
    ),
    # The tasks created after a seq (a range of the primary key):
    "qs_new": (
        "SELECT queue, state, count(*) FROM {schema}.tasks WHERE seq > %s GROUP BY queue, state"
    ),
    # The seqs after a seq that no visible row has, as inclusive ranges (params: the
    # seq twice): taken by a transaction still running, or by one rolled back.
    "qs_gaps": (
        "SELECT lo, hi FROM (SELECT lag(seq, 1, %s) OVER (ORDER BY seq) + 1 AS lo,"
        " seq - 1 AS hi FROM {schema}.tasks WHERE seq > %s) AS g WHERE hi >= lo"
    ),
    # The rows that have filled gaps since (params: the ranges' bounds as two arrays):
    "qs_filled": (
        "SELECT t.seq, t.queue, t.state FROM {schema}.tasks AS t"
        " JOIN unnest(%s::bigint[], %s::bigint[]) AS g (lo, hi) ON t.seq BETWEEN g.lo AND g.hi"
    ),
    "qs_finished": (
        "SELECT queue, state, count(*) FROM {schema}.tasks WHERE seq = ANY(%s::bigint[])"
        " GROUP BY queue, state"
    ),
    # The open tasks (tasks_open): by queue and state, with their stale leases and
    # oldest waiting task at now (params: now twice) and their seqs.
    "qs_open": (
        "SELECT queue, state, count(*), count(*) FILTER (WHERE lease_expires_us <= %s),"
        " min(available_us) FILTER (WHERE lease_expires_us IS NULL AND available_us <= %s),"
        " array_agg(open_seq) FROM {schema}.tasks WHERE open_seq IS NOT NULL"
        " GROUP BY queue, state"
    ),
    # Exact: extract(epoch ...) is numeric (microsecond precision) since PostgreSQL 14.
    "server_now": "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
}

_BATCH: Final = 32
"""Candidates read per statement by reap (one transaction per batch)."""

_OPEN: Final = frozenset(OPEN_STATES)
_LAST_SEQ: Final = 2**63 - 1
"""Above every ``seq`` (bigint's largest): where a newest-first listing starts."""


def _cursor(cursor: ClaimCursor) -> tuple[int, int, int]:
    """The claim statement's cursor parameters for ``cursor`` (``None``: from the
    top, a priority above any task's).
    """
    priority, seq = (MAX_PRIORITY + 1, 0) if cursor is None else cursor
    return priority, priority, seq


def frees(old: TaskSaga, new: TaskSaga) -> bool:
    """Whether the step from ``old`` to ``new`` leaves the task open and unleased
    where it was not (leased before, or in another state): a claim may now take it,
    so its queue is notified. A created task is always notified.
    """
    return (
        new.lease is None
        and not new.state.is_terminal
        and (old.lease is not None or old.state is not new.state)
    )


class _Statements:
    """The statements of one schema, rendered once (the schema is a quoted identifier)."""

    def __init__(self, schema: str) -> None:
        ident = sql.Identifier(schema)
        self.schema = ident
        rendered = {
            name: sql.SQL(text).format(schema=ident).as_bytes(None)
            for name, text in _TEMPLATES.items()
        }
        self._writes: dict[tuple[str, ...], bytes] = {}
        """Compare-and-set statements by the columns they write."""
        self.select_one = rendered["select_one"]
        self.lock_one = rendered["lock_one"]
        self.insert = rendered["insert"]
        self.insert_many = rendered["insert_many"]
        self.notify = rendered["notify"]
        self.state_of = rendered["state_of"]
        self.states_of = rendered["states_of"]
        self.claim = rendered["claim"]
        self.claim_queue = rendered["claim_queue"]
        self.claim_queues = rendered["claim_queues"]
        self.reap = rendered["reap"]
        self.stale = rendered["stale"]
        self.seq_of = rendered["seq_of"]
        self.history = rendered["history"]
        self.counts = rendered["counts"]
        self.counts_queue = rendered["counts_queue"]
        self.qs = {name: rendered[name] for name in _TEMPLATES if name.startswith("qs_")}
        self.server_now = rendered["server_now"]

    def fast(self, event: str) -> bytes:
        """The engine's one-statement write of ``event`` (:func:`_engine.postgres_write`)."""
        return self._rendered(("fast", event), _engine.postgres_write, event)

    def _rendered(self, key: tuple[str, str], render: Callable[[str], str], arg: str) -> bytes:
        """The engine's statement ``render(arg)`` in this schema, rendered once."""
        query = self._writes.get(key)
        if query is None:
            text = render(arg)
            query = self._writes[key] = sql.SQL(text).format(schema=self.schema).as_bytes(None)
        return query

    def fast_many(self, event: str) -> bytes:
        """The engine's one-statement batch write of ``event``
        (:func:`_engine.postgres_write_many`).
        """
        return self._rendered(("many", event), _engine.postgres_write_many, event)

    def fast_claim(self, queues: tuple[str, ...] | None) -> tuple[bytes, dict[str, Any]]:
        """The engine's one-statement claim for ``queues`` (``None``: every queue) and
        its queue parameters (always bound).
        """
        values: dict[str, Any]
        if queues is None:
            scope, values = "", {}
        elif len(queues) == 1:  # equality: an ordered walk of that queue's index range
            scope, values = "queue = %(queue)s::text AND ", {"queue": queues[0]}
        else:
            scope, values = "queue = ANY(%(queues)s::text[]) AND ", {"queues": list(queues)}
        return self._rendered(("claim", scope), _engine.postgres_claim, scope), values

    def claim_for(self, queues: tuple[str, ...] | None) -> tuple[bytes, tuple[Any, ...]]:
        """The claim statement for ``queues`` (``None``: every queue) and its leading
        parameters (the queue names, always bound).
        """
        if queues is None:
            return self.claim, ()
        if len(queues) == 1:  # equality: an ordered walk of that queue's index range
            return self.claim_queue, (queues[0],)
        return self.claim_queues, (list(queues),)

    def write(self, columns: tuple[str, ...], *, notify: bool = False) -> bytes:
        """The compare-and-set of ``columns`` (names from the row codec, never input):
        the history entry is inserted only if the update matched, and with ``notify``
        the task's queue is sent to the channel (the last parameter) as well.
        """
        key = ("notify", *columns) if notify else columns
        query = self._writes.get(key)
        if query is None:
            sets = ", ".join(f"{column} = %s" for column in columns)
            head = (
                f"WITH upd AS (UPDATE {{schema}}.tasks SET {sets}"
                " WHERE task_id = %s AND version = %s RETURNING task_id, queue)"
            )
            entry = (
                f"INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
                f" SELECT upd.task_id, {_ENTRY_SELECT} FROM upd RETURNING seq"
            )
            if notify:  # the queue is sent only if the entry was written
                text = (
                    f"{head}, ent AS ({entry})"
                    " SELECT ent.seq, pg_notify(%s, upd.queue) FROM ent, upd"
                )
            else:
                text = f"{head} {entry}"
            query = sql.SQL(text).format(schema=self.schema).as_bytes(None)
            self._writes[key] = query
        return query

    def write_many(self, columns: tuple[str, ...]) -> bytes:
        """The compare-and-set of ``columns`` for many rows in one statement (arrays
        unnested: the keys, the new values, the history entries); returns the ids of
        the rows that matched, whose entries alone are inserted.
        """
        key = ("many", *columns)
        query = self._writes.get(key)
        if query is None:
            arrays = ", ".join(  # binary (%b): no quoting of every element
                f"%b::{_column_type(c)}[]" for c in ("task_id", "version", *columns)
            )
            names = ", ".join(columns)
            sets = ", ".join(f"{column} = u.{column}" for column in columns)
            entries = ", ".join(f"%b::{t}[]" for t in _HISTORY_TYPES)
            query = (
                sql.SQL(
                    f"WITH u AS (SELECT * FROM unnest({arrays})"
                    f" AS u(k_task_id, k_version, {names})),"
                    f" upd AS (UPDATE {{schema}}.tasks AS t SET {sets} FROM u"
                    " WHERE t.task_id = u.k_task_id AND t.version = u.k_version"
                    " RETURNING t.task_id),"
                    f" e AS (SELECT * FROM unnest({entries}) AS e({HISTORY_COLUMNS}))"
                    f" INSERT INTO {{schema}}.history ({HISTORY_COLUMNS})"
                    " SELECT e.* FROM e JOIN upd ON upd.task_id = e.task_id RETURNING task_id"
                )
                .format(schema=self.schema)
                .as_bytes(None)
            )
            self._writes[key] = query
        return query

    def listing(
        self,
        states: frozenset[TaskState] | None,
        saga_id: str | None,
        queue: str | None,
        after_seq: int | None,
        limit: int,
        *,
        newest_first: bool,
    ) -> tuple[sql.Composed, list[Any]]:
        """``list_tasks``' query and parameters: past ``after_seq`` (``None``: from the
        start) in creation order, or newest first (descending: the same indexes read
        backwards). Fixed clause texts only, every value a bound parameter; ordered by
        ``seq``, or by ``open_seq`` (the same values) when only open states are listed,
        so that the walk can take tasks_open; only ended states are matched on
        ``ended_state`` (tasks_ended).
        """
        # Only open states: open_seq is seq on exactly those rows (tasks_open).
        order: Literal["seq", "open_seq"] = (
            "open_seq" if states is not None and states <= _OPEN else "seq"
        )
        if after_seq is None:
            after_seq = _LAST_SEQ if newest_first else 0
        clauses = [f"{order} {'<' if newest_first else '>'} %s"]
        params: list[Any] = [after_seq]
        # Only ended states: ended_state is state on exactly those rows (tasks_ended).
        column = "ended_state" if states is not None and not states & _OPEN else "state"
        if states is not None and len(states) == 1:
            clauses.append(f"{column} = %s")
            params.append(next(iter(states)).value)
        elif states is not None:
            clauses.append(f"{column} = ANY(%s)")
            params.append(sorted(s.value for s in states))
        if saga_id is not None:
            clauses.append("saga_id = %s")
            params.append(saga_id)
        if queue is not None:
            clauses.append("queue = %s")
            params.append(queue)
        params.append(limit)
        where = sql.SQL(" AND ").join(sql.SQL(c) for c in clauses)
        query = sql.SQL(
            "SELECT {cols} FROM {schema}.tasks WHERE {where} ORDER BY {order}{direction} LIMIT %s"
        ).format(
            cols=sql.SQL(COLUMNS),
            schema=self.schema,
            where=where,
            order=sql.Identifier(order),
            direction=sql.SQL(" DESC" if newest_first else ""),
        )
        return query, params


# ---------------------------------------------------------------- DSN handling


class _Dsn:
    """A connection string and what may be shown of it (never the password)."""

    def __init__(self, dsn: str) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise InvalidInputError("a PostgreSQL DSN must be a non-empty string")
        self.dsn = dsn
        self._secrets: list[str] = []
        with contextlib.suppress(ValueError):
            raw = urlsplit(dsn).password
            if raw:
                self._secrets.append(raw)
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # The driver's message may quote the DSN, password included: not chained.
            raise InvalidInputError(
                "not a valid PostgreSQL connection string (details withheld: it may hold a"
                " password)"
            ) from None
        self.params: dict[str, Any] = dict(params)
        password = params.get("password")
        if password:
            text = str(password)
            self._secrets += [text, quote(text, safe="")]
        self._secrets = sorted({s for s in self._secrets if s}, key=len, reverse=True)
        user = params.get("user") or ""
        host = params.get("host") or params.get("hostaddr") or ""
        port = params.get("port") or ""
        dbname = params.get("dbname") or ""
        shown = f"{user}@" if user else ""
        shown += f"{host}" + (f":{port}" if port else "")
        self.display = f"postgresql://{shown}/{dbname}"

    def scrub(self, text: str) -> str:
        """``text`` with every form of the password replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------- driver messages

LOGGER_NAME: Final = "sagalease.postgres"
"""The logger of the PostgreSQL store: one WARNING per connection incident (see
:class:`_Incidents`), the driver's own messages of the incident at DEBUG.
"""

_log = logging.getLogger(LOGGER_NAME)

INCIDENT_QUIET: Final = 2.0
"""Seconds without a driver message, after a call that worked, that end an incident."""

_DRIVER_LOGGERS: Final = ("psycopg", "psycopg.pool")
"""The loggers psycopg and psycopg_pool write their warnings to (psycopg_pool's is a
child of psycopg's, but a logger's filters only see the records logged on it).
"""


def _quiet_by_default() -> None:
    """Give the library's logger a :class:`logging.NullHandler`, so that with no
    logging configured nothing reaches Python's last-resort handler (stderr). A
    handler the application configures (on the root logger, say) still gets every
    line.
    """
    root = logging.getLogger("sagalease")
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())


class _Incidents:
    """The driver messages of one store's connections, as incidents.

    An incident opens with the first WARNING psycopg or its pool logs about one of
    this store's connections (a connection found broken and discarded, a pipeline
    that could not be ended on a dead connection, a failed reconnection) and is
    reported as one WARNING line on ``sagalease.postgres``; its later messages go
    there at DEBUG (scrubbed of the password) and are counted. It ends once a call
    on the store has worked and :data:`INCIDENT_QUIET` seconds have passed without
    a driver message: the next message opens a new incident. ``clock`` is a
    monotonic clock in seconds (tests pass their own).
    """

    def __init__(
        self, where: str, scrub: Callable[[str], str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.where = where
        self._scrub = scrub
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        self._worked = False  # a call worked since the last message
        self._last = 0.0
        self.incidents = 0
        """Incidents reported so far (one WARNING line each)."""
        self.messages = 0
        """Driver messages taken over so far (every incident's)."""

    def noise(self, record: logging.LogRecord) -> None:
        """Take over one of the driver's records: the incident's line, or DEBUG."""
        text = " ".join(self._scrub(record.getMessage()).split())
        with self._lock:
            now = self._clock()
            first = not self._open or (self._worked and now - self._last >= INCIDENT_QUIET)
            if first:
                self._open = True
                self.incidents += 1
            self.messages += 1
            self._worked = False
            self._last = now
        if first:
            _log.warning(
                "%s: connection trouble, the store reconnects by itself (%s: %s);"
                " further driver messages of this incident at DEBUG",
                self.where,
                record.name,
                text,
            )
        else:
            _log.debug("%s: %s: %s", self.where, record.name, text)

    def worked(self) -> None:
        """A call on the store worked (cheap: called after every call)."""
        if self._open and not self._worked:
            with self._lock:
                self._worked = True


_current: ContextVar[_Incidents | None] = ContextVar("sagalease_postgres_incidents", default=None)
"""The :class:`_Incidents` of the store whose connection this thread (or asyncio
task) is using: inside ``_connection``, opening or closing; an async pool's own
tasks inherit the value their pool was opened under.
"""

_pools: dict[str, _Incidents] = {}
"""The incidents of each open store's pool, by pool name: the pool's own threads
(``<name>-worker-<i>``, ``<name>-scheduler``) log under it.
"""
_pools_lock = threading.Lock()
_pool_numbers = iter(range(1, 2**63))


@contextlib.contextmanager
def _using(incidents: _Incidents) -> Iterator[None]:
    """Attribute the driver's messages logged meanwhile by this thread (or asyncio
    task, and the tasks it starts) to ``incidents``.
    """
    token = _current.set(incidents)
    try:
        yield
    finally:
        _current.reset(token)


def _incidents_here() -> _Incidents | None:
    """The store the current thread logs for: a store call's, or a pool thread's."""
    incidents = _current.get()
    if incidents is not None:
        return incidents
    name = threading.current_thread().name
    if not name.startswith("sagalease-"):
        return None
    pool, _sep, role = name.rpartition("-worker-")
    if not _sep or not role.isdigit():
        pool = name.removesuffix("-scheduler") if name.endswith("-scheduler") else ""
    with _pools_lock:
        return _pools.get(pool)


class _DriverFilter(logging.Filter):
    """On psycopg's loggers: a WARNING (or worse) about a sagalease store's
    connection is taken over by that store's :class:`_Incidents` (and not logged
    where psycopg logged it); every other record passes unchanged, so the
    application's own psycopg pools log as before.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        incidents = _incidents_here()
        if incidents is None:
            return True
        try:
            incidents.noise(record)
        except Exception:  # pragma: no cover - a logging failure must not break a call
            return False
        return False


_FILTER = _DriverFilter("sagalease")


def _install_driver_filter() -> None:
    """Install :class:`_DriverFilter` on psycopg's loggers, once per process."""
    for name in _DRIVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DriverFilter) for f in logger.filters):
            logger.addFilter(_FILTER)


_quiet_by_default()
_install_driver_filter()


_FIRST_RETRY: Final = 0.1
"""Seconds before opening tries an unavailable server again (doubling after each
attempt, at most :data:`_LAST_RETRY`, never past ``connect_timeout``)."""

_LAST_RETRY: Final = 1.0

_RECONNECT_WINDOW: Final = 4.0
"""Seconds the pool retries a lost connection before it gives up on it (and opens a
new one when a call next needs it): bounds how long after a server's return the
store still waits for the pool's backoff."""

_TRANSIENT_STATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
"""SQLSTATEs that a server about to come back answers with: admin_shutdown,
crash_shutdown, cannot_connect_now (starting up), too_many_connections; and
every connection exception (class 08)."""

_TRANSIENT_REFUSALS: Final = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is in recovery mode",
    "too many clients already",
    "remaining connection slots are reserved",
    "terminating connection due to administrator command",
)
"""What a server that refuses a connection *for now* says (libpq reports a refused
connection without its SQLSTATE; a server with other ``lc_messages`` is not
recognised, and its refusal then fails at once)."""


def _transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (a driver error met while opening) may go away by itself: the
    server was unreachable, refused connections for now, or dropped the connection.
    Wrong credentials, a missing database or role, a missing privilege: not.
    """
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is not None:
        return state in _TRANSIENT_STATES or state.startswith("08")
    if not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return False
    text = str(exc)
    if "FATAL:" not in text:  # no answer from a server: refused, timed out, reset, lost
        return True
    return any(refusal in text for refusal in _TRANSIENT_REFUSALS)


# ---------------------------------------------------------------- clocks


class _DatabaseClock:
    """The PostgreSQL server's clock (``clock_timestamp()``), read per call."""

    def __init__(self, read_us: Callable[[], int]) -> None:
        self._read_us = read_us

    def now(self) -> datetime:
        """The server's current instant (UTC)."""
        return from_us(self._read_us())

    def now_us(self) -> int:
        """The server's current instant as integer microseconds since the epoch."""
        return self._read_us()

    def __repr__(self) -> str:
        return "DatabaseClock()"


# ---------------------------------------------------------------- wake-ups

_LISTEN_POLL: Final = 0.5
"""Seconds the listener thread waits for notifications before it looks whether the
store is closing (``close()`` also wakes it at once, with an empty payload).
"""


def channel_name(schema: str) -> str:
    """The notification channel of the store in ``schema``: ``sagalease_`` and the
    first 16 hex digits of the SHA-256 of the schema name. 26 characters whatever
    the schema (PostgreSQL cuts identifiers at 63 bytes, and ``pg_notify`` refuses a
    longer channel), lower case (the same text names it in ``LISTEN``, quoted, and
    in ``pg_notify``). Two schemas whose hashes collide would only wake each other's
    workers for nothing.
    """
    return "sagalease_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


class _Listener:
    """The store's ``LISTEN`` connection and the thread that reads it, shared by
    every thread that waits: each notification's payload (a queue name) is counted
    under a condition variable that wakes the waiters.

    The first wait opens the connection (and the first wait after it was lost opens
    it again). A lost connection ends the thread and wakes its waiters with
    ``False``; a connection that cannot be opened makes each waiter wait out its
    timeout and return ``False``, as polling would. Nothing is logged or printed.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str) -> None:
        self._connect = connect
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel)).as_bytes(None)
        self._cond = threading.Condition()
        self._heard: Counter[str] = Counter()
        self._total = 0
        self._seen = threading.local()  # per thread: the counts its last wait ended at
        self._thread: threading.Thread | None = None
        self._ready = False
        self._generation = 0
        """How many listening threads have ended."""
        self._closed = False
        self.waiting = 0
        """Threads waiting for a notification now (tests wait for their waiter)."""
        self.backend_pid: int | None = None
        """The listening connection's server process, while it is listening."""

    def heard(self, queue: str | None = None) -> int:
        """Notifications received for ``queue`` (``None``: for any queue) so far."""
        with self._cond:
            return self._total if queue is None else self._heard[queue]

    def _count(self, queues: tuple[str, ...] | None) -> int:
        return self._total if queues is None else sum(self._heard[q] for q in queues)

    def wait(self, queues: tuple[str, ...] | None, seconds: float) -> bool:
        """Wait up to ``seconds`` for a notification of ``queues`` (``None``: any)
        received after this thread's previous wait on them ended (its first: after
        the wait began); ``True`` if one came.
        """
        deadline = time.monotonic() + seconds

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        with self._cond:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sagalease-listener", daemon=True
                )
                self._thread.start()
            generation = self._generation
            self._cond.wait_for(
                lambda: self._ready or self._generation != generation or self._closed, left()
            )
            if not self._ready:  # not connected (yet): no better than polling
                self._cond.wait_for(lambda: self._closed, left())
                return False
            # Count from this thread's previous wait on these queues, so that a
            # notification heard while its claim found nothing is not missed.
            seen: dict[tuple[str, ...] | None, int] = self._seen.__dict__.setdefault("n", {})
            start = seen.get(queues, self._count(queues))
            self.waiting += 1
            try:
                self._cond.wait_for(
                    lambda: (
                        self._count(queues) != start
                        or self._generation != generation
                        or self._closed
                    ),
                    left(),
                )
            finally:
                self.waiting -= 1
            seen[queues] = self._count(queues)
            return seen[queues] != start

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._connect()
            conn.execute(self._listen)
            with self._cond:
                self.backend_pid = conn.info.backend_pid
                self._ready = True
                self._cond.notify_all()
            while not self._closed:
                for note in conn.notifies(timeout=_LISTEN_POLL):
                    if not note.payload:  # close() waking this thread (or another store's)
                        if self._closed:
                            break
                        continue
                    with self._cond:
                        self._heard[note.payload] += 1
                        self._total += 1
                        self._cond.notify_all()
        except Exception:  # the waiters learn of it (False); nothing is printed
            pass
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            with self._cond:
                self._ready = False
                self.backend_pid = None
                self._generation += 1
                self._thread = None
                self._cond.notify_all()

    def close(self, wake: Callable[[], None]) -> None:
        """Stop listening: wake the waiters (``False``), then the thread (``wake``
        sends it an empty notification) and wait for it to close its connection.
        """
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            with contextlib.suppress(Exception):
                wake()
            thread.join(timeout=4 * _LISTEN_POLL)


# ---------------------------------------------------------------- plans

_T = TypeVar("_T")


class _Op(NamedTuple):
    """One statement of a plan: its text, parameters, and whether to prepare it."""

    query: bytes
    params: Any = None
    prepare: bool = True


_BEGIN: Final = _Op(b"BEGIN", prepare=False)
_COMMIT: Final = _Op(b"COMMIT", prepare=False)

Plan = Generator[_Op, list[Row], _T]
"""The I/O of a store call as data: a generator that yields each statement, is sent
the statement's rows (or has the driver's error thrown in) and returns the call's
result. A plan performs no I/O itself; an executor runs its statements on one
connection: :meth:`PostgresStore._run` (sync) or the async store's
(:mod:`sagalease.aio._postgres`). A plan that opens a transaction (``_BEGIN``)
commits it (``_COMMIT``); an executor rolls back what an error leaves open.
"""


class _PlanStepper:
    """Where a plan is: :attr:`op` the statement to run next (``None``: done, its
    :attr:`result` set); :meth:`settle` hands it the statement's rows or error.
    """

    def __init__(self, plan: Plan[_T]) -> None:
        self._plan = plan
        self.op: _Op | None = None
        self.result: Any = None
        self._advance(partial(next, plan))

    def _advance(self, resume: Callable[[], _Op]) -> None:
        try:
            self.op = resume()
        except StopIteration as stop:
            self.op, self.result = None, stop.value

    def settle(self, outcome: list[Row] | psycopg.Error) -> None:
        """The rows of :attr:`op`, or its error (thrown into the plan)."""
        if isinstance(outcome, psycopg.Error):
            self._advance(partial(self._plan.throw, outcome))
        else:
            self._advance(partial(self._plan.send, outcome))


class _Driving:
    """How the current context runs a :class:`PostgresStore` call (the async
    store's mode, :data:`_driving`): the results of the plans already run for it,
    in the order the call asks for them (``(True, result)`` or ``(False, error)``),
    and whether this run may do I/O itself (``threaded``: on a worker thread).
    """

    def __init__(self, answers: list[tuple[bool, Any]], *, threaded: bool) -> None:
        self.answers = answers
        self.threaded = threaded


_driving: ContextVar[_Driving | None] = ContextVar("sagalease_postgres_driving", default=None)
"""Unset (the sync store's own calls): every plan is run at once on a pooled connection."""


class _Planned(BaseException):
    """Raised by :meth:`PostgresStore._run` on the event loop: the call needs
    ``plan`` run (by the async executor) before it can go on. Never escapes the
    async store. A BaseException, so that no ``except Exception`` on the way takes it.
    """

    def __init__(self, action: str, plan: Plan[Any]) -> None:
        super().__init__(action)
        self.action = action
        self.plan = plan


class _OffLoop(BaseException):
    """Raised on the event loop where a call needs I/O that no plan covers (the
    slow paths, reap, listings, ...): the async store runs the call on a thread.
    """


def _decoded(rows: list[Row]) -> TaskSaga | None:
    return decode_task(rows[0]) if rows else None


# ---------------------------------------------------------------- the store


class PostgresStore(SQLStoreBase):
    """A store in a PostgreSQL database, shared by workers on many machines.

    ``dsn`` is a libpq connection string or URL (``postgresql://user@host/db``);
    ``schema`` the PostgreSQL schema that holds the store's tables (created and
    migrated on open). ``clock``: ``None`` (the machine's UTC clock), a
    :class:`~sagalease.clock.Clock`, or ``"database"``: calls without ``now``
    use the server's ``clock_timestamp()`` so that workers with skewed clocks
    agree on when a lease expires (see the module documentation; integer
    microseconds are stored, exactly as the core computes them).

    ``connect_timeout`` (seconds, default 5) is how long opening keeps trying a
    server that is briefly unavailable (restarting, starting up, refusing for too
    many clients, unreachable), with a growing pause between attempts, before it
    raises one :class:`StoreUnavailableError` naming the host (never the
    password); an answer that will not change (wrong credentials, no such
    database or role, no privilege) fails at once. It also bounds each connection
    attempt of the pool. ``timeout`` bounds the wait for a pooled connection and
    every lock wait.
    ``min_size``/``max_size`` size the pool. ``contracts``: check the core's
    contracts on every event (``None``: as ``$SAGALEASE_CONTRACTS`` says).
    Every failure to reach the server is a :class:`StoreUnavailableError`; the
    outcome of a call that failed that way is unknown and the call is safe to
    retry (module documentation).

    Logging (docs/logging.md): nothing is printed. The store logs to
    ``logging.getLogger("sagalease.postgres")`` (a child of ``"sagalease"``, which
    has a :class:`logging.NullHandler`): one WARNING line per connection incident
    (a server restart, killed connections, failed reconnections), however many
    messages psycopg and psycopg_pool log about this store's connections meanwhile;
    those are taken off the ``"psycopg"`` and ``"psycopg.pool"`` loggers and logged
    at DEBUG on ``"sagalease.postgres"`` instead, the password scrubbed. A
    connection that broke mid-call (its pipeline aborted, say) is discarded by the
    pool and replaced; the call raises :class:`StoreUnavailableError`.
    """

    DEFAULT_CONNECT_TIMEOUT: Final = 5.0
    """Seconds opening waits for a briefly unavailable server by default."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        clock: Clock | Literal["database"] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        timeout: float = 10.0,
        min_size: int = 1,
        max_size: int = 8,
        contracts: bool | None = None,
    ) -> None:
        super().__init__(
            clock=None if clock == "database" or clock is None else clock, contracts=contracts
        )
        if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
            raise InvalidInputError(
                f"schema must be a lower-case PostgreSQL identifier ([a-z_][a-z0-9_]*, at most"
                f" 63 characters), not {schema!r}"
            )
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < float("inf")
            ):
                raise InvalidInputError(f"{name} must be a positive number of seconds")
        if not (isinstance(min_size, int) and isinstance(max_size, int) and min_size >= 0):
            raise InvalidInputError("min_size and max_size must be integers")
        if max_size < max(1, min_size):
            raise InvalidInputError("max_size must be at least 1 and at least min_size")
        self._dsn = _Dsn(dsn)
        self.schema = schema
        self.clock_source = "database" if clock == "database" else "local"
        if clock == "database":
            self.clock = _DatabaseClock(self._server_now_us)
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self._q = _Statements(schema)
        self._fast_events = _engine.FAST_EVENTS
        self._pid = os.getpid()
        self._closed = False
        self._close_lock = threading.Lock()
        self._before_write: Callable[[str], None] | None = None
        """Test hook: called between the optimistic read and the write."""
        self._stats_lock = threading.Lock()
        self._counted: Counted | None = None
        """What the last queue_stats counted (see :meth:`queue_stats`)."""
        # Keyword arguments override the DSN's own parameters: only add what it lacks
        # (its options are kept, with a bound on every lock wait appended).
        given = self._dsn.params
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in given:
            self._kwargs["connect_timeout"] = max(1, round(self.connect_timeout))
        if "application_name" not in given:
            self._kwargs["application_name"] = "sagalease"
        lock_timeout = f"-c lock_timeout={int(self.timeout * 1000)}"
        self._kwargs["options"] = f"{given.get('options') or ''} {lock_timeout}".strip()
        self.channel = channel_name(schema)
        """The channel that this schema's writes notify (payload: the task's queue)."""
        listener_kwargs = dict(self._kwargs)
        if "application_name" not in given:
            listener_kwargs["application_name"] = "sagalease-listener"
        self._listener_kwargs = listener_kwargs
        """The listening connection's options (the async store's listener takes them too)."""
        self._listener = _Listener(
            partial(psycopg.connect, self._dsn.dsn, **listener_kwargs), self.channel
        )
        self._incidents = _Incidents(f"{self._dsn.display} (schema {schema!r})", self._dsn.scrub)
        """This store's connection incidents (see :class:`_Incidents`)."""
        deadline = time.monotonic() + self.connect_timeout
        with _using(self._incidents):
            self._open_schema(deadline)
        self._pool_name = f"sagalease-{schema}-{next(_pool_numbers)}"
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            self._dsn.dsn,
            kwargs=self._kwargs,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=self.timeout,
            name=self._pool_name,
            # A lost connection is retried with psycopg_pool's doubling backoff (1 s,
            # 2 s, 4 s, ... for reconnect_timeout): a long outage would leave the next
            # attempt up to its length after the server is back. Given up after a few
            # seconds instead, the pool grows again at the next call's request, at once.
            reconnect_timeout=_RECONNECT_WINDOW,
        )
        with _pools_lock:
            _pools[self._pool_name] = self._incidents
        try:
            with _using(self._incidents):
                self._pool.open(
                    wait=min_size > 0,
                    timeout=max(0.0, deadline - time.monotonic()) + self.timeout,
                )
        except (PoolTimeout, psycopg.Error) as exc:
            self._close_pool(timeout=1.0)
            raise StoreUnavailableError(
                f"cannot open a connection pool to {self._dsn.display}: {self._scrub(exc)}"
            ) from exc

    def __enter__(self) -> Self:
        return self

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        clock = ", clock='database'" if self.clock_source == "database" else ""
        return f"PostgresStore({self._dsn.display!r}, schema={self.schema!r}{clock}{state})"

    # ------------------------------------------------------------ opening

    def _scrub(self, exc: BaseException) -> str:
        """The driver's message as one line, without the password."""
        return " ".join(self._dsn.scrub(str(exc)).split()) or type(exc).__name__

    def _open_schema(self, deadline: float) -> None:
        """Create or migrate the schema under an advisory lock; refuse a newer one.

        A server that cannot be reached, or that refuses connections for now
        (starting up, shutting down, too many clients), or a connection lost on the
        way, is tried again with a growing pause until ``deadline`` (monotonic
        seconds: ``connect_timeout`` from the start); then, or at once for an answer
        that will not change (wrong credentials, no such database, no privilege, a
        schema that is not a store's or is newer), :class:`StoreUnavailableError`
        (or :class:`SchemaVersionError`).
        """
        pause = _FIRST_RETRY
        attempts = 0
        while True:
            attempts += 1
            try:
                self._open_schema_once()
                return
            except StoreUnavailableError as exc:
                cause = exc.__cause__
                left = deadline - time.monotonic()
                if not _transient(cause) or left <= 0:
                    if _transient(cause):
                        raise StoreUnavailableError(
                            f"{exc.reason} (still unavailable after {self.connect_timeout:g} s"
                            f" and {attempts} attempt{'s' if attempts > 1 else ''};"
                            " connect_timeout sets how long opening waits)"
                        ) from cause
                    raise
                time.sleep(min(pause, left))
                pause = min(pause * 2, _LAST_RETRY)

    def _open_schema_once(self) -> None:
        where = f"{self._dsn.display} (schema {self.schema!r})"
        try:
            conn = psycopg.connect(self._dsn.dsn, **self._kwargs)
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to {self._dsn.display}: {self._scrub(exc)}"
            ) from exc
        try:
            with conn:
                latest = latest_schema_version()
                version = self._schema_version(conn)
                if version == latest:
                    return
                with conn.transaction():
                    # Exactly one opener migrates; the others wait here, then find it done.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (_LOCK_NAMESPACE, self.schema),
                    )
                    version = self._schema_version(conn)
                    if version < latest:
                        self._migrate(conn, version)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreUnavailableError(
                f"cannot create or migrate {where}: {self._scrub(exc)} (the role needs CREATE on"
                " the database, or an owner must open the store once to create the schema)"
            ) from exc
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot open {where}: {self._scrub(exc)}") from exc
        finally:
            if not conn.closed:  # the with block closes it, unless the server dropped it
                with contextlib.suppress(Exception):
                    conn.close()

    def _schema_version(self, conn: psycopg.Connection[Row]) -> int:
        ident = self._q.schema
        row = conn.execute(
            "SELECT to_regclass(format('%%I.schema_version', %s::text)) IS NOT NULL,"
            " EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)",
            (self.schema, self.schema),
        ).fetchone()
        assert row is not None
        has_table, has_schema = row
        if not has_table:
            if has_schema:
                found = conn.execute(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'p') LIMIT 5",
                    (self.schema,),
                ).fetchall()
                if found:
                    raise StoreUnavailableError(
                        f"schema {self.schema!r} on {self._dsn.display} exists but is not a"
                        f" sagalease store (it has {', '.join(repr(r[0]) for r in found)})"
                    )
            return 0
        version_row = conn.execute(
            sql.SQL("SELECT max(version) FROM {}.schema_version").format(ident)
        ).fetchone()
        version = int(version_row[0] or 0) if version_row is not None else 0
        latest = latest_schema_version()
        if version > latest:
            raise SchemaVersionError(
                f"schema {self.schema!r} on {self._dsn.display} has version {version}; this"
                f" sagalease writes version {latest} and cannot use it (upgrade sagalease);"
                " nothing was changed"
            )
        return version

    def _migrate(self, conn: psycopg.Connection[Row], version: int) -> None:
        ident = self._q.schema
        if version == 0:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.schema_version (version integer PRIMARY KEY,"
                    " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident)
            )
        for number, name, text in migrations():
            if number > version:
                conn.execute(sql.SQL(text).format(schema=ident))
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_version (version, name) VALUES (%s, %s)").format(
                        ident
                    ),
                    (number, name),
                )
        # Fresh statistics: the planner then takes the partial index for claims.
        conn.execute(sql.SQL("ANALYZE {}.tasks").format(ident))
        conn.execute(sql.SQL("ANALYZE {}.history").format(ident))

    # ------------------------------------------------------------ plumbing

    def _check_usable(self) -> None:
        """A closed store, or one opened before a fork: StoreUnavailableError."""
        if self._closed:
            raise StoreUnavailableError(f"the store {self._dsn.display} is closed")
        if os.getpid() != self._pid:
            raise StoreUnavailableError(
                "the store was opened in another process (fork); open a new store in this one"
            )

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection; driver errors become :class:`SagaLeaseError` subclasses
        (:meth:`_failure`). On the async store's event loop: :class:`_OffLoop`.
        What ``with pool.connection()`` does, without its commit of an idle
        autocommit connection (a locked round per call): a transaction left open
        is committed, or rolled back after an error.
        """
        driving = _driving.get()
        if driving is not None and not driving.threaded:
            raise _OffLoop(action)
        self._check_usable()
        pool = self._pool
        try:
            with _using(self._incidents):
                conn = pool.getconn(timeout=self.timeout)
                try:
                    yield conn
                    if conn.info.transaction_status != TransactionStatus.IDLE:
                        conn.commit()
                except BaseException:
                    self._roll_back(conn)
                    raise
                finally:
                    pool.putconn(conn)
            self._incidents.worked()
        except SagaLeaseError:
            raise
        except (PoolTimeout, psycopg.Error) as exc:
            error, broken = self._failure(action, exc)
            if broken:  # other pooled connections may have died too: drop them now
                with contextlib.suppress(Exception), _using(self._incidents):
                    self._pool.check()
            raise error from exc

    def _failure(self, action: str, exc: Exception) -> tuple[SagaLeaseError, bool]:
        """What a driver or pool error met by ``action`` is raised as, and whether the
        connection broke (a server restart, say: the pool is then checked).
        """
        if isinstance(exc, PoolTimeout):
            return StoreUnavailableError(
                f"{action}: no connection to {self._dsn.display} within {self.timeout:g} s:"
                f" {self._scrub(exc)}"
            ), False
        if isinstance(exc, psycopg.errors.IntegrityError):
            return SagaLeaseError(
                f"the database refused the write of {action} on {self._dsn.display}"
                f" ({self._scrub(exc)}); nothing was stored"
            ), False
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return StoreUnavailableError(
                f"{action}: a row lock was not free within {self.timeout:g} s: {self._scrub(exc)}"
            ), False
        return StoreUnavailableError(
            f"{action} on {self._dsn.display} failed (outcome unknown; safe to retry):"
            f" {self._scrub(exc)}"
        ), isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))

    def _run(self, action: str, plan: Plan[_T]) -> _T:
        """Run ``plan`` on a pooled connection (:meth:`_connection`) and return its
        result. Under the async store (:data:`_driving`): the plan's result if the
        async executor already ran it for this call, else (on the event loop)
        :class:`_Planned`, so that the async executor runs it.
        """
        driving = _driving.get()
        if driving is not None:
            if driving.answers:
                plan.close()
                ok, answer = driving.answers.pop(0)
                if not ok:
                    raise answer
                return cast(_T, answer)
            if not driving.threaded:
                raise _Planned(action, plan)
        with self._connection(action) as conn:
            stepper = _PlanStepper(plan)
            while (op := stepper.op) is not None:
                try:
                    cursor = conn.execute(op.query, op.params, prepare=op.prepare)
                except psycopg.Error as exc:
                    stepper.settle(exc)
                    continue
                # rownumber, not description: no Column objects built per statement
                stepper.settle(cursor.fetchall() if cursor.rownumber is not None else [])
            return cast(_T, stepper.result)

    def _server_now_us(self) -> int:
        return self._run("reading the server clock", self._server_now_plan())

    def _server_now_plan(self) -> Plan[int]:
        rows = yield _Op(self._q.server_now)
        return int(rows[0][0])

    def _read(self, conn: psycopg.Connection[Row], task_id: str, *, lock: bool) -> TaskSaga | None:
        query = self._q.lock_one if lock else self._q.select_one
        row = conn.execute(query, (task_id,), prepare=True).fetchone()
        return None if row is None else decode_task(row)

    def _write(self, conn: psycopg.Connection[Row], old: TaskSaga, step: core.Step) -> bool:
        """The compare-and-set: write the columns ``step`` changes and its entry if
        the row is still at ``old.version`` (one statement).
        """
        return self._send_write(conn, old, step).fetchone() is not None

    # ------------------------------------------------------------ primitives

    def _insert(self, step: core.Step) -> TaskSaga:
        return self._run("create", self._insert_plan(step))

    def _insert_plan(self, step: core.Step) -> Plan[TaskSaga]:
        task = step.task
        params = (task.task_id, *task_values(task), *entry_values(step.entry), self.channel)
        if not (yield _Op(self._q.insert, params)):
            existing = yield _Op(self._q.state_of, (task.task_id,), prepare=False)
            raise DuplicateTaskError(
                "a task with this id already exists",
                task_id=task.task_id,
                state=TaskState(existing[0][0]) if existing else None,
            )
        return task

    def _insert_many(self, steps: list[core.Step]) -> list[TaskSaga]:
        """One statement (so one implicit transaction): a multi-row ``INSERT`` into
        tasks and one into history, each from arrays (``unnest``), and the
        notification of each queue. A stored duplicate id fails the whole statement
        (nothing stored, nothing sent) and is then looked up to be named.
        """
        return self._run("create_many", self._insert_many_plan(steps))

    def _insert_many_plan(self, steps: list[core.Step]) -> Plan[list[TaskSaga]]:
        tasks = [step.task for step in steps]
        rows = [(task.task_id, *task_values(task)) for task in tasks]
        entries = [(step.entry.task_id, *entry_values(step.entry)) for step in steps]
        params = (
            *(list(column) for column in zip(*rows, strict=True)),
            *(list(column) for column in zip(*entries, strict=True)),
            self.channel,
        )
        try:
            yield _Op(self._q.insert_many, params)
        except psycopg.errors.UniqueViolation:
            ids = [task.task_id for task in tasks]
            found: dict[str, str] = dict((yield _Op(self._q.states_of, (ids,), prepare=False)))
            for task_id in ids:  # the first one given that is stored
                if task_id in found:
                    raise DuplicateTaskError(
                        "a task with this id already exists; create_many stored nothing",
                        task_id=task_id,
                        state=TaskState(found[task_id]),
                    ) from None
            raise
        return tasks

    def _again(self, conn: psycopg.Connection[Row], task_id: str, mutation: Mutation) -> core.Step:
        """Inside a transaction, after a compare-and-set matched nothing (another
        writer, or a stale remembered record): evaluate the event again against the
        stored row, locked, so that the answer (or the typed error) is current, and
        write it. Never last-writer-wins.
        """
        fresh = self._read(conn, task_id, lock=True)
        if fresh is None:  # pragma: no cover - rows are never deleted
            raise TaskNotFoundError("no such task", task_id=task_id)
        self._remember(fresh)
        step = mutation(fresh)
        if not self._write(conn, fresh, step):  # pragma: no cover
            raise StoreUnavailableError(
                "the row changed while locked", task_id=task_id, state=fresh.state
            )
        return step

    def _fast(
        self, task_id: str, event: str, now_us: int, args: Mapping[str, Any]
    ) -> TaskSaga | None:
        """``event`` as the engine's one statement (one round trip, no read first;
        with contracts on, the row is read in the same transaction and the result
        checked against the core). ``None``: it did not apply; the slow path decides.
        """
        values = _engine.params(event, task_id, now_us, args)
        if values is None:
            return None
        values["channel"] = self.channel
        row = self._run("update", self._fast_plan(task_id, event, now_us, args, values))
        return None if row is None else self._rendered(event, *_engine.written(event, row))

    def _fast_plan(
        self,
        task_id: str,
        event: str,
        now_us: int,
        args: Mapping[str, Any],
        values: dict[str, Any],
    ) -> Plan[Row | None]:
        """:meth:`_fast`'s statements: the row it wrote (the new record, then its
        entry), or ``None``.
        """
        query = _Op(self._q.fast(event), values)
        hook = self._before_write
        if hook is not None:
            hook(task_id)
        if not self.contracts:
            rows = yield query
            return rows[0] if rows else None
        yield _BEGIN
        old = _decoded((yield _Op(self._q.lock_one, (task_id,))))
        rows = yield query
        written = _engine.split_row(rows[0]) if rows else None
        _engine.check_against_core(old, event, now_us, args, written, self._core)
        yield _COMMIT
        return rows[0] if rows else None

    def _fast_many(
        self, event: str, items: list[tuple[str, Mapping[str, Any]]], now_us: int
    ) -> list[TaskSaga] | None:
        """``event`` on every item as the engine's one batch statement (one round
        trip, :func:`_engine.postgres_write_many`; with contracts on, the rows are
        read and locked first in the same transaction and each result checked).
        """
        values = _engine.batch_params(event, "postgres", now_us, items)
        if values is None:
            return None
        values["channel"] = self.channel
        rows = self._run("update", self._fast_many_plan(event, items, now_us, values))
        if rows is None:
            return None
        return [self._rendered(event, *_engine.written(event, row)) for row in rows]

    def _fast_many_plan(
        self,
        event: str,
        items: list[tuple[str, Mapping[str, Any]]],
        now_us: int,
        values: dict[str, Any],
    ) -> Plan[list[Row] | None]:
        """:meth:`_fast_many`'s statements: the rows written (records, then entries)
        in the items' order, or ``None`` (nothing written).
        """
        query = _Op(self._q.fast_many(event), values)
        olds: dict[str, TaskSaga | None] = {}
        if self.contracts:
            yield _BEGIN
            for task_id in sorted(dict(items)):
                olds[task_id] = _decoded((yield _Op(self._q.lock_one, (task_id,))))
        rows = yield query
        ordered = None
        if len(rows) >= len(items):
            found = {row[_engine.AT["task_id"]]: row for row in rows}
            ordered = [found[task_id] for task_id, _ in items]
            if self.contracts:
                written = [_engine.split_row(row) for row in ordered]
                _engine.check_batch_against_core(olds, event, now_us, items, written, self._core)
        if self.contracts:
            yield _COMMIT
        return ordered

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        core.check_id("task_id", task_id)
        with self._connection("update") as conn:
            task, step = self._start(
                task_id, mutation, partial(self._read, conn, task_id, lock=False)
            )
            hook = self._before_write
            if hook is not None:
                hook(task_id)
            if not self._write(conn, task, step):  # one statement, its own transaction
                with conn.transaction():
                    step = self._again(conn, task_id, mutation)
        return self._remember(step.task)

    def _mutate_many(self, mutations: list[tuple[str, Mutation]]) -> list[TaskSaga]:
        if not mutations:
            return []
        with self._connection("update") as conn:
            started = [
                (*self._start(task_id, m, partial(self._read, conn, task_id, lock=False)), m)
                for task_id, m in mutations
            ]
            steps: list[core.Step] = []
            # Pipeline mode: BEGIN and every compare-and-set in one round trip,
            # COMMIT in the next (or ROLLBACK on the first refusal).
            with conn.pipeline() as pipeline:
                conn.execute(b"BEGIN")
                cursors = self._send_writes(conn, [(task, step) for task, step, _ in started])
                pipeline.sync()
                matched = {row[0] for cursor in cursors for row in cursor.fetchall()}
                woken: set[str] = set()
                for task, step, mutation in started:
                    if task.task_id not in matched:
                        step = self._again(conn, task.task_id, mutation)  # notifies
                    elif frees(task, step.task):
                        woken.add(step.task.queue)
                    steps.append(step)
                if woken:
                    conn.execute(self._q.notify, (self.channel, sorted(woken)), prepare=True)
                conn.execute(b"COMMIT")
        return [self._remember(step.task) for step in steps]

    @staticmethod
    def _roll_back(conn: psycopg.Connection[Row]) -> None:
        """End the explicit transaction an exception left open (the write is undone)."""
        if conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute(b"ROLLBACK")

    def _send_write(
        self, conn: psycopg.Connection[Row], old: TaskSaga, step: core.Step
    ) -> psycopg.Cursor[Row]:
        """Send the compare-and-set of ``step`` over ``old`` (a row comes back if it
        matched); a step that :func:`frees` the task also notifies its queue, in the
        same statement, so only if it matched and only once it is committed.
        """
        names, values = changes(old, step.task)
        if frees(old, step.task):
            query = self._q.write(names, notify=True)
            notify: tuple[str, ...] = (self.channel,)
        else:
            query, notify = self._q.write(names), ()
        return conn.execute(
            query,
            (*values, old.task_id, old.version, *entry_values(step.entry), *notify),
            prepare=True,
        )

    def _send_writes(
        self, conn: psycopg.Connection[Row], pairs: list[tuple[TaskSaga, core.Step]]
    ) -> list[psycopg.Cursor[Row]]:
        """Send the compare-and-sets of many steps: one statement per set of changed
        columns (usually one); each returns the ids of the rows that matched.
        """
        groups: dict[tuple[str, ...], list[tuple[TaskSaga, core.Step, tuple[Any, ...]]]] = {}
        for old, step in pairs:
            names, values = changes(old, step.task)
            groups.setdefault(names, []).append((old, step, values))
        cursors = []
        for names, group in groups.items():
            keys = [[old.task_id for old, _, _ in group], [old.version for old, _, _ in group]]
            news = [
                list(column) for column in zip(*(values for _, _, values in group), strict=True)
            ]
            entries = [
                list(column)
                for column in zip(
                    *((step.entry.task_id, *entry_values(step.entry)) for _, step, _ in group),
                    strict=True,
                )
            ]
            cursors.append(
                conn.execute(self._q.write_many(names), (*keys, *news, *entries), prepare=True)
            )
        return cursors

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        """The engine's one-statement claim; the rows it locked but left to the core
        (see :func:`_engine.postgres_claim`), if any, are claimed by :meth:`_claim_slowly`.
        """
        values = _engine.claim_params(owner, ttl_us, now_us, limit)
        if values is None:
            return self._claim_slowly(owner, ttl_us, now_us, limit, queues)
        plan = self._claim_plan(owner, ttl_us, now_us, queues, values)
        claimed, locked = self._run("claim_next", plan)
        tasks = [self._rendered("acquire", task, entry) for task, entry in claimed]
        if locked > len(tasks) and len(tasks) < limit:  # some left to the core
            tasks += self._claim_slowly(owner, ttl_us, now_us, limit - len(tasks), queues)
        return tasks

    def _claim_plan(
        self,
        owner: str,
        ttl_us: int,
        now_us: int,
        queues: tuple[str, ...] | None,
        values: dict[str, Any],
    ) -> Plan[tuple[list[tuple[TaskSaga, HistoryEntry]], int]]:
        """:meth:`_claim`'s statement: the claimed records with their entries, and
        how many rows it locked (those it left to the core are claimed after).
        """
        query, scope = self._q.fast_claim(queues)
        rows = yield _Op(query, {**values, **scope})
        claimed = [_engine.split_row(row[1:]) for row in rows if row[1] is not None]
        if self.contracts:
            args = {"owner": owner, "ttl_us": ttl_us}
            for task, entry in claimed:
                history = yield _Op(self._q.history, (task.task_id,))
                old = core.replay([e for e in map(decode_entry, history) if e.seq < entry.seq])
                _engine.check_against_core(old, "acquire", now_us, args, (task, entry), self._core)
        return claimed, rows[0][0]

    def _claim_slowly(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        """A claim through the core: lock candidates, acquire in Python, write each."""
        acquire = self._core["acquire"]
        query, scope = self._q.claim_for(queues)
        with self._connection("claim_next") as conn:
            # Pipeline mode, two round trips: BEGIN travels with the SELECT that
            # locks the candidates, the compare-and-sets with COMMIT.
            with conn.pipeline() as pipeline:
                conn.execute(b"BEGIN")

                def fetch(after: ClaimCursor, n: int) -> list[Row]:
                    cursor = conn.execute(
                        query,
                        (*scope, *_cursor(after), now_us, now_us, now_us, n),
                        prepare=True,
                    )
                    pipeline.sync()
                    return cursor.fetchall()

                steps = choose_claims(
                    fetch,
                    lambda t: acquire(t, owner=owner, ttl_us=ttl_us, now_us=now_us),
                    limit,
                    1,  # a refused candidate stays locked: lock no more than needed
                )
                if len(steps) == 1:
                    written = [self._send_write(conn, *steps[0])]
                else:
                    written = self._send_writes(conn, steps)
                conn.execute(b"COMMIT")
            matched = sum(len(cursor.fetchall()) for cursor in written)
            if matched != len(steps):  # pragma: no cover - the rows were locked
                raise StoreUnavailableError("a claimed row changed while locked")
        return [self._remember(step.task) for _task, step in steps]

    def _reap(self, now_us: int, limit: int | None) -> list[TaskSaga]:
        with self._connection("reap") as conn:
            return self._reap_batches(
                now_us,
                limit,
                batch=_BATCH,
                transaction=conn.transaction,
                read=partial(self._reap_candidates, conn, now_us),
                write=partial(self._write, conn),
            )

    def _reap_candidates(
        self, conn: psycopg.Connection[Row], now_us: int, after: int, n: int
    ) -> list[Row]:
        """The next ``n`` reap candidates after ``after``, as one moment of the store
        holds them, locked.

        One ``FOR UPDATE`` read is not that moment: a row another transaction changed
        after the statement's snapshot is judged at its newest version, while a row
        that came to need a reap in the meantime is not seen at all (a reap waiting on
        a heartbeat's lock could drop the heartbeat's lease and miss a lease that had
        expired before that heartbeat began). So the read is repeated, in the same
        transaction, until it returns only rows already locked before it began: locked
        rows cannot change, and what that last read's snapshot did not return did not
        need a reap then. An empty first read costs one statement, a batch two.
        """
        held: set[int] = set()
        while True:
            rows: list[Row] = conn.execute(
                self._q.reap, (after, now_us, now_us, n), prepare=True
            ).fetchall()
            seqs = {row[0] for row in rows}
            if seqs <= held:
                return rows
            held |= seqs

    def _stale(self, now_us: int) -> list[TaskSaga]:
        with self._connection("list_stale") as conn:
            rows = conn.execute(self._q.stale, (now_us,), prepare=True).fetchall()
        return [decode_task(row) for row in rows]

    def get(self, task_id: str) -> TaskSaga | None:
        """The task, or ``None``."""
        core.check_id("task_id", task_id)
        return self._run("get", self._get_plan(task_id))

    def _get_plan(self, task_id: str) -> Plan[TaskSaga | None]:
        return _decoded((yield _Op(self._q.select_one, (task_id,))))

    def _list(
        self,
        states: frozenset[TaskState] | None,
        saga_id: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> list[TaskSaga]:
        with self._connection("list_tasks") as conn:
            after_seq = None
            if after is not None:
                row = conn.execute(self._q.seq_of, (after,), prepare=True).fetchone()
                if row is None:
                    raise TaskNotFoundError("unknown 'after' task", task_id=after)
                after_seq = row[0]
            query, params = self._q.listing(
                states, saga_id, queue, after_seq, limit, newest_first=newest_first
            )
            rows = conn.execute(query, params).fetchall()
        return [decode_task(row) for row in rows]

    def history(self, task_id: str) -> list[HistoryEntry]:
        """The task's history, oldest first."""
        core.check_id("task_id", task_id)
        with self._connection("history") as conn:
            rows = conn.execute(self._q.history, (task_id,), prepare=True).fetchall()
        if not rows:
            raise TaskNotFoundError("no such task", task_id=task_id)
        return [decode_entry(row) for row in rows]

    def _counts(self, queue: str | None) -> dict[TaskState, int]:
        result = dict.fromkeys(TaskState, 0)
        with self._connection("counts") as conn:
            if queue is None:
                rows = conn.execute(self._q.counts, prepare=True).fetchall()
            else:
                rows = conn.execute(self._q.counts_queue, (queue,), prepare=True).fetchall()
        for state, number in rows:
            result[TaskState(state)] = number
        return result

    def queue_stats(self, *, now: datetime | None = None) -> dict[str, QueueStats]:
        """See :meth:`SagaStore.queue_stats`, read in one ``REPEATABLE READ, READ
        ONLY`` transaction (one snapshot).

        The first call counts every task (a scan of the table: linear in the tasks
        kept); later calls of this store object start from what the previous one
        counted (:class:`~sagalease.stores._sql.Counted`) and read the tasks created
        since (a primary-key range), those open then and ended since, the rows that
        filled a gap (a seq taken by a transaction not yet committed at the previous
        count; a rolled-back one's gap is retired after two later snapshots show
        that its transaction ended, see :class:`~sagalease.stores._sql.Gaps`)
        and the open tasks (``tasks_open``): their cost follows the open tasks and
        the changes in between, not the finished tasks kept.
        """
        now_us = self._now(now)
        q = self._q.qs
        with (
            self._stats_lock,
            self._connection("queue_stats") as conn,
            conn.transaction(),
        ):
            conn.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            open_rows = conn.execute(q["qs_open"], (now_us, now_us), prepare=True).fetchall()
            open_now = frozenset(seq for row in open_rows for seq in row[5])
            counted = self._count_ended(conn, open_now)
        rows: list[tuple[Any, ...]] = [
            (queue, state, n, None, None) for (queue, state), n in counted.ended.items()
        ]
        waiting: dict[str, tuple[int, int | None]] = {}
        for queue, state, number, stale, oldest, _seqs in open_rows:
            rows.append((queue, state, number, None, None))
            was_stale, was_oldest = waiting.get(queue, (0, None))
            if oldest is not None and (was_oldest is None or oldest < was_oldest):
                was_oldest = oldest
            waiting[queue] = (was_stale + stale, was_oldest)
        rows += [(queue, None, None, stale, oldest) for queue, (stale, oldest) in waiting.items()]
        return queue_stats_from_rows(now_us, rows)

    def _count_ended(self, conn: psycopg.Connection[Row], open_now: frozenset[int]) -> Counted:
        """The ended tasks by (queue, state) in this transaction's snapshot, from the
        previous count when there is one; remembered for the next call.
        """
        q = self._q.qs
        top = conn.execute(q["qs_top"], prepare=True).fetchone()
        assert top is not None  # an aggregate without GROUP BY returns one row
        top_seq = int(top[0]) if top[0] is not None else 0
        xmin, xmax, at = int(top[1]), int(top[2]), time.monotonic()
        last = self._counted
        ended: dict[tuple[str, str], int] = {}
        found: list[tuple[Any, ...]] = []  # gaps first seen by this count
        cohorts: tuple[Gaps, ...] = ()
        if last is None or top_seq < last.top:
            rows = conn.execute(q["qs_all"], prepare=True).fetchall()
            queues = {queue for queue, _state, _n in rows}
            if sum(n for _q, _s, n in rows) < top_seq:  # seqs with no row (yet)
                found = conn.execute(q["qs_gaps"], (0, 0), prepare=True).fetchall()
        else:
            ended, queues = dict(last.ended), set(last.queues)
            new = conn.execute(q["qs_new"], (last.top,), prepare=True).fetchall()
            queues.update(queue for queue, _state, _n in new)
            rows = list(new)
            cohorts = last.gaps
            if cohorts:
                bounds = [r for cohort in cohorts for r in cohort.ranges]
                filled = conn.execute(
                    q["qs_filled"],
                    ([lo for lo, _ in bounds], [hi for _, hi in bounds]),
                    prepare=True,
                ).fetchall()
                rows += [(queue, state, 1) for _seq, queue, state in filled]
                queues.update(queue for _seq, queue, _state in filled)
                seqs = [seq for seq, _queue, _state in filled]
                cohorts = tuple(replace(c, ranges=without(c.ranges, seqs)) for c in cohorts)
            if sum(n for _q, _s, n in new) < top_seq - last.top:  # seqs with no row yet
                found = conn.execute(q["qs_gaps"], (last.top, last.top), prepare=True).fetchall()
            finished = sorted(last.open_seqs - open_now)  # open then, ended since
            if finished:
                rows += conn.execute(q["qs_finished"], (finished,), prepare=True).fetchall()
        add_ended(ended, rows)
        aged = (c.aged(xmin=xmin, xmax=xmax, at=at, settle=GAP_SETTLE) for c in cohorts)
        gaps = tuple(c for c in aged if c is not None)
        if found:
            seen = tuple((int(lo), int(hi)) for lo, hi in found)
            gaps = (*gaps, Gaps(seen, seen_xmax=xmax, seen_at=at))
        counted = Counted(top_seq, ended, open_now, frozenset(queues), gaps)
        self._counted = counted
        return counted

    def wait_for_work(
        self, *, queues: str | Collection[str] | None = None, timeout: timedelta
    ) -> bool:
        """See :meth:`~sagalease.store.WakeUps.wait_for_work`: ``True`` once a
        notification for one of ``queues`` (``None``: any queue) arrives on this
        schema's channel, from any process; ``False`` after ``timeout``.

        Every write that leaves a task open and unleased where it was not before
        (``create``, ``create_many``, ``release``, ``reap``, ``fail`` into
        COMPENSATING, ...) notifies the task's queue in its own transaction, so a
        waiter is woken only once the task is visible. One listening connection per
        store (opened by the first wait) serves every waiting thread. A lost
        listening connection is not an error: the waiters get ``False`` and the next
        wait connects again (notifications in between are lost: the poll interval
        covers them). A closed store: :class:`StoreUnavailableError`.
        """
        names = core.check_queues(queues)
        seconds = duration_us(timeout, "timeout", allow_zero=True) / 1_000_000
        self._check_usable()
        return self._listener.wait(names, seconds)

    def close(self) -> None:
        """Close the pool; closing twice is harmless."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if os.getpid() == self._pid:
            with _using(self._incidents):
                self._listener.close(self._wake_listener)
            self._close_pool(timeout=5.0)

    def _close_pool(self, *, timeout: float) -> None:
        """Close the pool (its messages are this store's) and forget its name."""
        with contextlib.suppress(Exception), _using(self._incidents):
            self._pool.close(timeout=timeout)
        with _pools_lock:
            _pools.pop(self._pool_name, None)

    def _wake_listener(self) -> None:
        with self._pool.connection(timeout=1.0) as conn:
            conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    # ------------------------------------------------------------ diagnostics

    def explain_claim(
        self,
        *,
        queues: str | Collection[str] | None = None,
        now: datetime | None = None,
        analyze: bool = False,
    ) -> str:
        """The plan PostgreSQL uses for ``claim_next``'s statement for ``queues`` (the
        engine's one statement; ``EXPLAIN``, with ``analyze`` ``EXPLAIN (ANALYZE,
        BUFFERS)``: the statement runs, and is rolled back).
        """
        values = _engine.claim_params("explain", 1, self._now(now), 1)
        assert values is not None
        query, scope = self._q.fast_claim(core.check_queues(queues))
        explain = b"EXPLAIN (ANALYZE, BUFFERS) " if analyze else b"EXPLAIN "
        with self._connection("explain") as conn, conn.transaction(force_rollback=True):
            rows = conn.execute(explain + query, {**values, **scope}).fetchall()
        return "\n".join(str(r[0]) for r in rows)

    def reopener(self) -> Callable[[], PostgresStore]:
        """A picklable zero-argument callable that opens another store on this
        store's database and schema (for worker processes).
        """
        return partial(PostgresStore, self._dsn.dsn, schema=self.schema, max_size=2)


# ---------------------------------------------------------------- scratch stores


class _ScratchStore(PostgresStore):
    """A store in a new, randomly named schema that is dropped on ``close()``
    (tests and the conformance suite).
    """

    def close(self) -> None:
        """Close the pool, then drop the schema."""
        already = self._closed
        super().close()
        if already or os.getpid() != self._pid:
            return
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self._dsn.dsn, **self._kwargs) as conn,
        ):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self._q.schema))


def scratch_store(
    dsn: str | None = None, *, clock: Clock | Literal["database"] | None = None
) -> PostgresStore:
    """A fresh, empty store in a new schema (``sagalease_test_<random>``) on ``dsn``
    (default: ``$SAGALEASE_TEST_POSTGRES_URL`` or the local test database),
    dropped again by ``close()``.
    """
    url = dsn or os.environ.get(TEST_URL_ENV) or DEFAULT_TEST_URL
    return _ScratchStore(
        url, schema=f"sagalease_test_{secrets.token_hex(6)}", clock=clock, min_size=1, max_size=4
    )
