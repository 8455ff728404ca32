"""The SQLite store: the embedded default (``sqlite:///path/to/file.db``).

Plain :mod:`sqlite3` in WAL mode. Every event is one short write transaction
that applies the pure core's transition as a compare-and-set:

* ``acquire``, ``heartbeat``, ``complete``... start from the last record this
  store saw of the task (or read the row, no lock), compute the step with the
  core, then write the columns it changes with ``UPDATE ... WHERE task_id = ?
  AND version = ?`` inside ``BEGIN IMMEDIATE``. If another writer got there
  first the update matches no row; the call is then evaluated again against
  the fresh row, inside the same write transaction, so the loser gets the
  core's typed error (or succeeds if the event still applies) and the
  winner's write stands. Never last-writer-wins.
* ``claim_next``, ``claim_batch`` and ``reap`` read their candidates inside
  the write transaction, on partial indexes over the tasks that have not
  ended, so that their cost does not grow with the finished tasks kept.
  Claims take the highest priority first, then the oldest (creation order,
  ``seq``): over every queue one walk of ``tasks_claim`` ``(priority DESC,
  seq)``; for named queues one range of ``tasks_claim_queue`` ``(queue,
  priority DESC, seq)`` per queue, merged by SQLite in that order (no sort).
  Queue names are always bound parameters, never SQL text.
* ``create_many`` is one write transaction: one multi-row ``INSERT`` into
  ``tasks`` and one into ``history`` (split only where SQLite's limit on bound
  variables requires), after one look-up of the ids already in use; a
  duplicate stores nothing.

Writers first take a writer lock beside the database file (``<db>.lock``,
``flock``) with a bounded wait, so that SQLite's busy handler cannot starve a
heartbeat for seconds under contention; a wait past ``timeout`` is a
:class:`StoreUnavailableError`. Each thread uses its own connection.

The schema is package data, the numbered ``migrations/NNNN_*.sql``, versioned
with ``PRAGMA user_version``: a new file runs them all, an older file the ones
it lacks, in place; a newer one is refused with
:class:`SchemaVersionError` and left untouched. Every :mod:`sqlite3` error is
wrapped into a :class:`SagaLeaseError` at this boundary.

Idle workers poll: this store does not implement
:class:`~sagalease.store.WakeUps`. SQLite has no cross-process notification
(nothing like PostgreSQL's ``LISTEN``/``NOTIFY``); writers in other processes
only change the file, and watching it for changes would be platform-specific
(inotify, kqueue, ...) and still need the poll as a fallback for missed or
coalesced events, so a worker sleeps its poll interval between empty claims.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any, Final

from sagalease import core
from sagalease.clock import Clock
from sagalease.errors import (
    DuplicateTaskError,
    InvalidInputError,
    SagaLeaseError,
    SchemaVersionError,
    StoreUnavailableError,
    TaskNotFoundError,
)
from sagalease.expr import sqlite_repr
from sagalease.lifecycle import ENDED_STATES, OPEN_STATES
from sagalease.records import HistoryEntry, TaskSaga, TaskState
from sagalease.store import QueueStats
from sagalease.stores import _engine
from sagalease.stores._base import Mutation
from sagalease.stores._rows import (
    COLUMNS,
    HISTORY_COLUMNS,
    TASK_COLUMNS,
    ClaimCursor,
    changes,
    choose_claims,
    decode_entry,
    decode_task,
    entry_values,
    task_values,
)
from sagalease.stores._sql import (
    CLAIM_ORDER,
    DEADLINE_BARS_ACQUIRE,
    DEADLINE_REAPS,
    ENDED,
    OPEN,
    Counted,
    SQLStoreBase,
    add_ended,
    chunks,
    claim_after,
    marks,
    queue_stats_from_rows,
    read_migrations,
    value_rows,
)

__all__ = ["SQLiteStore", "latest_schema_version", "migrations", "schema_sql"]


@cache
def schema_sql() -> str:
    """The current schema: the definitions every migration run on an empty database
    leaves, as SQLite keeps them, one statement each (a new database is created by
    running the migrations themselves).
    """
    conn = sqlite3.connect(":memory:")
    try:
        for _number, _name, sql in migrations():
            for statement in _statements(sql):
                conn.execute(statement)
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    return "".join(f"{sql};\n\n" for (sql,) in rows)


def migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, sql)`` of every migration, in order (1, 2, ...)."""
    return read_migrations("sagalease.stores.sqlite")


def latest_schema_version() -> int:
    """The schema version this library writes (``PRAGMA user_version``)."""
    return len(migrations())


def _statements(script: str) -> Iterator[str]:
    """The statements of ``script`` (``executescript`` would commit first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    rest = "\n".join(
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise RuntimeError(f"incomplete SQL statement at the end of a script: {rest!r}")


_PAGE_SIZE: Final = 2048
"""The page size of a new store file. Each commit writes every page it dirtied to
the WAL, and a lease write dirties the row's page and a page of each index it
touches: at SQLite's default 4096 bytes the commit was most of a write's cost.
Interleaved, one process (``/tmp``, 3 runs each): 2048-byte pages did 1.29x the
lease cycles of 4096 with ``synchronous=NORMAL`` and 1.10x with ``FULL``; 1024
did no better than 2048 and spills more rows into overflow pages. Reads pay a
little (100,000 tasks, medians of 5 while another run loaded the machine:
``list_tasks(limit=100)`` 0.45 to 0.73 ms, ``counts()`` 22.9 to 27.7 ms, a first
``queue_stats()`` 50.5 to 58.7 ms, ``list_stale()`` 4.1 to 4.2 ms).
"""

_SELECT = f"SELECT {COLUMNS} FROM tasks"
# OPEN is, to the letter, the predicate of the tasks_open index, which INDEXED BY
# requires (tests/stores/test_schema_declaration.py pins the schema's copy).
_SELECT_OPEN = f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_open WHERE {OPEN}"
_HISTORY_WIDTH: Final = len(HISTORY_COLUMNS.split(","))
_TASK_WIDTH: Final = len(TASK_COLUMNS)
_INSERT_HISTORY = f"INSERT INTO history ({HISTORY_COLUMNS}) VALUES ({marks(_HISTORY_WIDTH)})"


def _claimable(now: str) -> str:
    """What a claim candidate passes besides being open, from the ``tasks_claim``
    index's columns where it can (``now``: the placeholder of the instant).
    """
    return (
        f" AND available_us <= {now} AND (lease_expires_us IS NULL OR lease_expires_us <= {now})"
        " AND attempts < max_attempts"
        f" AND (deadline_us IS NULL OR deadline_us > {now} OR NOT ({DEADLINE_BARS_ACQUIRE}))"
    )


_CLAIMABLE = _claimable("?")
"""The prefilter of the claim through the core (params: now three times); the
core's acquire still decides.
"""

_MERGED_QUEUES: Final = 32
"""The most named queues a claim merges as index ranges, one per queue (SQLite
allows 500 terms in a compound SELECT); beyond, one walk in claim order over every
queue keeps the named ones, given as one JSON array (``json_each``, built into
SQLite since 3.38), so that no count of names can pass the bound-variable limit.
"""

_REAP = (
    f"{_SELECT_OPEN} AND seq > ?"
    " AND (lease_expires_us <= ? OR attempts >= max_attempts"
    f" OR (deadline_us <= ? AND {DEADLINE_REAPS}))"
    " ORDER BY seq LIMIT ?"
)
_STALE = f"{_SELECT_OPEN} AND lease_expires_us <= ? ORDER BY seq"

_BATCH: Final = 32
"""Candidates read per statement by claim_next (after the first) and reap."""

_ALL_COUNTED = (
    "SELECT queue, state, count(*) FROM tasks INDEXED BY tasks_by_queue GROUP BY queue, state"
)
"""Every task by queue and state: one walk of the covering ``tasks_by_queue``."""

_NEW_COUNTED = (
    "SELECT queue, state, count(*) FROM tasks NOT INDEXED WHERE seq > ? GROUP BY queue, state"
)
"""The tasks created after a seq, by queue and state: a range of the table's rowid
(``NOT INDEXED``: else the planner walks all of ``tasks_by_queue`` for its order).
"""

_OPEN_SEQS = f"SELECT group_concat(seq) FROM tasks INDEXED BY tasks_open WHERE {OPEN}"
"""The seqs of the tasks that have not ended, from ``tasks_open`` alone, as one text
(``1,5,9``: half the time of a row per task in Python).
"""

_OPEN_VALUES: Final = tuple(s.value for s in OPEN_STATES)

_WAITING = (
    "SELECT queue, count(CASE WHEN lease_expires_us <= ? THEN 1 END),"
    " min(CASE WHEN lease_expires_us IS NULL AND available_us <= ? THEN available_us END)"
    " FROM tasks INDEXED BY tasks_claim_queue WHERE terminal_reason IS NULL GROUP BY queue"
)
"""Per queue with open tasks: the stale leases at ``now`` and the earliest
``available_us`` of the unleased tasks available at ``now`` (params: ``now`` twice),
from ``tasks_claim_queue`` alone (the open tasks; it covers both columns).
"""


@cache
def _claim_sql(arms: int | None, after: bool) -> str:
    """The claim query: candidates in claim order (:data:`CLAIM_ORDER`).

    ``arms``: ``None`` for every queue (one walk of ``tasks_claim``), ``0`` for
    more than :data:`_MERGED_QUEUES` queues (the same walk keeping the names of
    one JSON array parameter), else that many ranges of ``tasks_claim_queue``
    (``queue = ?``, one per queue) that SQLite merges in claim order. ``after``:
    with the cursor predicate of :func:`claim_after`. Parameters, per range: its
    queue (or the JSON array), the cursor's, ``now`` three times; then the limit.
    The predicate ``terminal_reason IS NULL`` is the claim indexes' own.
    """
    cursor = claim_after((0, 0))[0] if after else ""
    if arms is None:
        where = ["INDEXED BY tasks_claim WHERE terminal_reason IS NULL"]
    elif arms == 0:
        where = [
            "INDEXED BY tasks_claim WHERE terminal_reason IS NULL"
            " AND queue IN (SELECT value FROM json_each(?))"
        ]
    else:
        where = ["INDEXED BY tasks_claim_queue WHERE terminal_reason IS NULL AND queue = ?"] * arms
    selects = [f"{_SELECT} {w}{cursor}{_CLAIMABLE}" for w in where]
    return f"{' UNION ALL '.join(selects)} ORDER BY {CLAIM_ORDER} LIMIT ?"


@cache
def _claim_ids(arms: int | None) -> str:
    """The engine claim's candidates (:func:`_engine.sqlite_claim`): the ids of the
    first ``:limit`` open rows in claim order that the prefilter keeps and
    ``acquire``'s rendered guard admits, by the walks of :func:`_claim_sql` (``arms``
    as there; named parameters: ``:now_us``, ``:limit``, ``:q0``... or ``:queues``).
    """
    tail = f"{_claimable(':now_us')} AND {_engine.sqlite_claim_guard()}"
    scan = "SELECT task_id, priority, seq FROM tasks"
    if arms is None:
        where = ["INDEXED BY tasks_claim WHERE terminal_reason IS NULL"]
    elif arms == 0:
        where = [
            "INDEXED BY tasks_claim WHERE terminal_reason IS NULL"
            " AND queue IN (SELECT value FROM json_each(:queues))"
        ]
    else:
        where = [
            f"INDEXED BY tasks_claim_queue WHERE terminal_reason IS NULL AND queue = :q{i}"
            for i in range(arms)
        ]
    selects = " UNION ALL ".join(f"{scan} {w}{tail}" for w in where)
    return f"SELECT task_id FROM ({selects} ORDER BY {CLAIM_ORDER} LIMIT :limit)"


def _claim_scope(queues: tuple[str, ...] | None) -> tuple[int | None, dict[str, str]]:
    """The ``arms`` of :func:`_claim_ids` for ``queues`` and their parameters."""
    if queues is None:
        return None, {}
    if len(queues) > _MERGED_QUEUES:
        return 0, {"queues": json.dumps(list(queues))}
    return len(queues), {f"q{i}": queue for i, queue in enumerate(queues)}


def _claim_query(
    queues: tuple[str, ...] | None, cursor: ClaimCursor, now_us: int, n: int
) -> tuple[str, tuple[Any, ...]]:
    """The claim query of :func:`_claim_sql` for ``queues`` after ``cursor``, and its
    parameters (the queue names among them, never in the SQL text).
    """
    tail = (*claim_after(cursor)[1], now_us, now_us, now_us)
    after = cursor is not None
    if queues is None:
        return _claim_sql(None, after), (*tail, n)
    if len(queues) > _MERGED_QUEUES:
        return _claim_sql(0, after), (json.dumps(list(queues)), *tail, n)
    params = [value for queue in queues for value in (queue, *tail)]
    return _claim_sql(len(queues), after), (*params, n)


@lru_cache(maxsize=8)
def _insert_rows(table: str, columns: str, width: int, rows: int) -> str:
    """A multi-row ``INSERT`` of ``rows`` rows into ``table`` (names from the row
    codec, never input); a few sizes kept, as a producer tends to repeat its own.
    """
    return f"INSERT INTO {table} ({columns}) VALUES {value_rows(rows, width)}"


_LAST_SEQ: Final = 2**63 - 1
"""Above every ``seq`` (SQLite's largest integer): where a newest-first listing starts."""


def _listing(
    states: frozenset[TaskState] | None,
    saga_id: str | None,
    queue: str | None,
    after: int | None,
    newest_first: bool = False,
) -> tuple[str, list[Any]]:
    """A listing's query in creation order (``newest_first``: the reverse), without
    its ``LIMIT ?``, and its parameters; ``after``: the ``seq`` the page starts past
    in that order (``None``: from the start).

    A saga's tasks are few: its index, the other filters on the rows. Otherwise one
    index range per state, merged by SQLite in ``seq`` order (no sort; newest first,
    each range read backwards): of ``tasks_by_queue`` for a queue, else of
    ``tasks_ended`` per ended state and one walk of ``tasks_open`` for the open ones
    (whose partial-index predicates are written out, to the letter, so that the
    planner takes them).
    """
    past, order = ("seq < ?", "seq DESC") if newest_first else ("seq > ?", "seq")
    if after is None:
        after = _LAST_SEQ if newest_first else 0
    if saga_id is not None:
        clauses, params = ["saga_id = ?", past], [saga_id, after]
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if states is not None:
            clauses.append(f"state IN ({marks(len(states))})")
            params.extend(sorted(s.value for s in states))
        return f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY {order}", params
    arms: list[tuple[str, list[Any]]] = []
    if queue is not None:
        for state in TaskState if states is None else _in_order(states):
            arms.append((f"queue = ? AND state = ? AND {past}", [queue, state.value, after]))
    elif states is None:
        arms.append((past, [after]))
    else:
        open_ones = [s.value for s in OPEN_STATES if s in states]
        if len(open_ones) == len(OPEN_STATES):
            arms.append((f"{OPEN} AND {past}", [after]))
        elif open_ones:
            arms.append(
                (f"{OPEN} AND state IN ({marks(len(open_ones))}) AND {past}", [*open_ones, after])
            )
        for state in ENDED_STATES:
            if state in states:
                arms.append((f"{ENDED} AND state = ? AND {past}", [state.value, after]))
    sql = " UNION ALL ".join(f"{_SELECT} WHERE {where}" for where, _params in arms)
    return f"{sql} ORDER BY {order}", [value for _where, params in arms for value in params]


def _in_order(states: frozenset[TaskState]) -> list[TaskState]:
    """``states`` in declaration order (one SQL text per set of states)."""
    return [s for s in TaskState if s in states]


@cache
def _update(columns: tuple[str, ...]) -> str:
    """The compare-and-set ``UPDATE`` of ``columns`` (names from the row codec, never
    input; a handful of distinct sets, one per kind of event).
    """
    sets = ", ".join(f"{column} = ?" for column in columns)
    return f"UPDATE tasks SET {sets} WHERE task_id = ? AND version = ?"


# ---------------------------------------------------------------- writer lock


class _FlockWaiter:
    """Waits for a contended ``flock`` in a thread of its own, for a caller that
    waits with a deadline: ``flock`` blocks without a timeout, and a blocked
    ``flock`` is woken by the kernel the moment the holder lets go (polling slept
    through most of those moments: 8 processes on 2 cores did 1,444 lease cycles/s
    polling at most every 0.5 ms, 2,255-2,294 blocked in ``flock``).

    One thread per lock file, started on the first contended wait, holding its own
    duplicate of the descriptor (the same open file, so the same lock; never a
    number the store has closed and the process reused). At most one caller waits
    at a time (the store's thread lock is held). When the thread gets the lock it
    hands it to the caller waiting then; if that caller has given up (its deadline
    passed), it lets the lock go at once.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._waiting: threading.Event | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def wait(self, deadline: float) -> bool:
        """Whether the lock was taken before ``deadline`` (``time.monotonic()``)."""
        granted = threading.Event()
        with self._mutex:
            self._waiting = granted
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sagalease-sqlite-lock", daemon=True
                )
                self._thread.start()
            self._wake.set()
        if granted.wait(max(0.0, deadline - time.monotonic())):
            return True
        with self._mutex:
            self._waiting = None
            return granted.is_set()  # granted just as the wait ended: it holds the lock

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._mutex:
                self._wake.clear()
                if self._closed:
                    break
                if self._waiting is None:
                    continue
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError:  # pragma: no cover - flock on an open descriptor: ENOLCK only
                with self._mutex:
                    self._thread = None  # the next wait starts another thread
                return
            with self._mutex:
                waiting, self._waiting = self._waiting, None
                if waiting is None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                else:
                    waiting.set()
        os.close(self._fd)

    def close(self) -> None:
        """End the thread (once a ``flock`` it is blocked in returns) and its descriptor."""
        with self._mutex:
            self._closed = True
            self._waiting = None
            if self._thread is None:
                os.close(self._fd)
            self._wake.set()


class _WriterLock:
    """One writer at a time across threads (a lock) and processes (``flock`` on
    ``<db>.lock``), waiting at most ``timeout`` seconds.

    An uncontended lock is one non-blocking ``flock``; a contended one is waited
    for by a :class:`_FlockWaiter`, so the wait is bounded (which SQLite's busy
    handler under contention was not) and ends when the holder lets go.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._thread_lock = threading.Lock()
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._waiter: _FlockWaiter | None = None

    def _unavailable(self, waited: float) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the writer lock {str(self.path)!r} was not free within {waited:.3f} s"
        )

    def __enter__(self) -> None:
        """Take the lock (a wait past ``timeout``: :class:`StoreUnavailableError`)."""
        start = time.monotonic()
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise self._unavailable(time.monotonic() - start)
        try:
            fd = self._fd
            if fd is None:
                raise StoreUnavailableError("the store is closed")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if self._waiter is None:
                self._waiter = _FlockWaiter(fd)
            if not self._waiter.wait(start + self.timeout):
                raise self._unavailable(time.monotonic() - start)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        """Release the lock."""
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        """Close the lock file (a lock still held is released by the kernel)."""
        fd, self._fd = self._fd, None
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.close()
        if fd is not None:
            os.close(fd)


class _Boundary:
    """Driver errors inside the block become :class:`SagaLeaseError` subclasses."""

    __slots__ = ("action", "where")

    def __init__(self, where: str, action: str) -> None:
        self.where = where
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if isinstance(exc, sqlite3.IntegrityError):
            raise SagaLeaseError(
                f"the database refused the write of {self.action} on {self.where!r}"
                f" ({exc}); nothing was stored"
            ) from exc
        if isinstance(exc, (sqlite3.Error, OSError)):
            raise StoreUnavailableError(f"{self.action} on {self.where!r} failed: {exc}") from exc


class _WriteTransaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the writer lock; an exception rolls back."""

    __slots__ = ("conn", "lock")

    def __init__(self, lock: _WriterLock, conn: sqlite3.Connection) -> None:
        self.lock = lock
        self.conn = conn

    def __enter__(self) -> None:
        self.lock.__enter__()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.__exit__()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        try:
            if exc is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                    raise
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
        finally:
            self.lock.__exit__()


# ---------------------------------------------------------------- the store


class SQLiteStore(SQLStoreBase):
    """A store in one SQLite file, safe across threads and processes of one machine.

    ``timeout`` (seconds) bounds every wait for the writer lock or a busy
    database; ``synchronous`` is SQLite's ``PRAGMA synchronous``: ``"FULL"``
    (default) flushes every commit, so that a granted fencing token survives a
    power cut and is never granted twice; ``"NORMAL"`` is faster and still safe
    against process crashes. ``contracts``: check the core's contracts on every
    event (``None``: as ``$SAGALEASE_CONTRACTS`` says; off by default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        timeout: float = 5.0,
        synchronous: str = "FULL",
        contracts: bool | None = None,
    ) -> None:
        super().__init__(clock=clock, contracts=contracts)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidInputError("timeout must be a positive number of seconds")
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise InvalidInputError("synchronous must be 'FULL', 'NORMAL' or 'EXTRA'")
        raw = os.fspath(path)
        if not isinstance(raw, str) or not raw or raw == ":memory:" or raw.startswith("file:"):
            raise InvalidInputError(
                f"SQLiteStore needs a file path, not {raw!r} (use memory:// for memory)"
            )
        self.path = Path(os.path.abspath(raw))
        self.timeout = float(timeout)
        self.synchronous = synchronous
        self._pid = os.getpid()
        self._closed = False
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._before_write: Callable[[str], None] | None = None
        """Test hook: called between the optimistic read and the write transaction."""
        self._stats_lock = threading.Lock()
        self._counted: Counted | None = None
        """What the last queue_stats counted."""
        self._lock: _WriterLock | None = None
        self._fast_events = _engine.FAST_EVENTS
        self._check_path()
        conn = self._connect()
        try:
            self._lock = self._open_schema(conn)
        except BaseException:
            conn.close()
            if self._lock is not None:
                self._lock.close()
            raise
        self._local.conn = conn
        self._conns.append(conn)

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"SQLiteStore({str(self.path)!r}{state})"

    # ------------------------------------------------------------ opening

    def _check_path(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            raise StoreUnavailableError(
                f"cannot open {str(self.path)!r}: directory {str(parent)!r} does not exist"
            )
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if not os.access(parent, os.W_OK | os.X_OK):
                raise StoreUnavailableError(
                    f"cannot create {str(self.path)!r}: directory is not writable"
                ) from None
            return
        except OSError as exc:
            raise StoreUnavailableError(f"cannot open {str(self.path)!r}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise StoreUnavailableError(f"cannot open {str(self.path)!r}: not a regular file")
        # Root may write anything; a file without any write bit is still read-only to us.
        if not os.access(self.path, os.R_OK | os.W_OK) or not st.st_mode & 0o222:
            raise StoreUnavailableError(
                f"cannot open {str(self.path)!r}: the file is read-only"
                f" (mode {stat.filemode(st.st_mode)}); a store must be writable"
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open {str(self.path)!r}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            # What the engine's statements call for Python's repr (sagalease.expr.py_repr).
            conn.create_function("sagalease_repr", 1, sqlite_repr, deterministic=True)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailableError(f"cannot open {str(self.path)!r}: {exc}") from exc
        return conn

    def _open_schema(self, conn: sqlite3.Connection) -> _WriterLock:
        """Check the file's schema version; create or migrate it under the writer
        lock. Returns the lock. A newer version: :class:`SchemaVersionError`
        before anything is written.
        """
        latest = latest_schema_version()
        where = repr(str(self.path))
        try:
            version = self._schema_version(conn)
            lock = _WriterLock(Path(f"{self.path}.lock"), self.timeout)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open {where}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailableError(f"cannot open the writer lock of {where}: {exc}") from exc
        try:
            with lock:
                # Only a new, empty file takes it (before its first write); a file
                # that has pages keeps its own size, and WAL mode fixes it for good.
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreUnavailableError(f"cannot use WAL mode on {where} (got {mode})")
                # A migration may rebuild a table that history references (0005),
                # which SQLite allows with foreign keys off only; they are checked
                # before the commit. The pragma cannot change inside a transaction.
                conn.execute("PRAGMA foreign_keys = OFF")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = self._schema_version(conn)
                    if version < latest:
                        self._migrate(conn, version, latest)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                finally:
                    conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            lock.close()
            raise StoreUnavailableError(f"cannot open {where}: {exc}") from exc
        except BaseException:
            lock.close()
            raise
        return lock

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        latest = latest_schema_version()
        if version > latest:
            raise SchemaVersionError(
                f"{str(self.path)!r} has schema version {version}; this sagalease writes"
                f" version {latest} and cannot use it (upgrade sagalease); the file was not"
                " changed"
            )
        if version == 0:
            names = conn.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchall()
            if names:
                raise StoreUnavailableError(
                    f"{str(self.path)!r} is an SQLite database but not a sagalease store"
                    f" (it has {', '.join(repr(n) for (n,) in names[:5])})"
                )
        return version

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int, latest: int) -> None:
        """Run the migrations after ``version`` (all of them for a new file)."""
        for number, _name, sql in migrations():
            if number > version:
                for statement in _statements(sql):
                    conn.execute(statement)
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:  # pragma: no cover - the migrations keep every reference
            raise StoreUnavailableError(f"a migration broke {len(broken)} foreign key(s)")
        conn.execute(f"PRAGMA user_version = {latest}")

    # ------------------------------------------------------------ plumbing

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailableError(f"the store {str(self.path)!r} is closed")
        if os.getpid() != self._pid:
            raise StoreUnavailableError(
                f"the store {str(self.path)!r} was opened in another process (fork);"
                " open a new store in this one"
            )
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            with self._conns_lock:
                if self._closed:
                    conn.close()
                    raise StoreUnavailableError(f"the store {str(self.path)!r} is closed")
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _boundary(self, action: str) -> _Boundary:
        """Wrap driver errors into :class:`SagaLeaseError` subclasses."""
        return _Boundary(str(self.path), action)

    def _writing(self, conn: sqlite3.Connection) -> _WriteTransaction:
        """One write transaction under the writer lock; any exception rolls back."""
        lock = self._lock
        if lock is None:  # pragma: no cover - set in __init__
            raise StoreUnavailableError("the store is closed")
        return _WriteTransaction(lock, conn)

    @staticmethod
    def _read(conn: sqlite3.Connection, task_id: str) -> TaskSaga | None:
        row = conn.execute(f"{_SELECT} WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else decode_task(row)

    @staticmethod
    def _write(conn: sqlite3.Connection, old: TaskSaga, step: core.Step) -> bool:
        """The compare-and-set: write the columns ``step`` changes if the row is
        still at ``old.version``, and the history entry.
        """
        names, values = changes(old, step.task)
        cursor = conn.execute(_update(names), (*values, old.task_id, old.version))
        if cursor.rowcount != 1:
            return False
        conn.execute(_INSERT_HISTORY, (step.entry.task_id, *entry_values(step.entry)))
        return True

    # ------------------------------------------------------------ primitives

    def _insert(self, step: core.Step) -> TaskSaga:
        return self._insert_many([step])[0]

    def _insert_many(self, steps: list[core.Step]) -> list[TaskSaga]:
        tasks = [step.task for step in steps]
        with self._boundary("create"):
            conn = self._conn()
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            with self._writing(conn):  # a duplicate raises before anything is written
                self._refuse_ids_in_use(conn, [t.task_id for t in tasks], variables)
                # One multi-row INSERT per table: 1000 tasks of 24 columns bind 24,000
                # variables, within SQLite's default limit since 3.32 (32,766; this
                # build's is read above). Only a build with a lower limit gets more
                # statements, as few as it allows, still in this one transaction.
                for part in chunks(tasks, variables, _TASK_WIDTH):
                    conn.execute(
                        _insert_rows("tasks", ", ".join(TASK_COLUMNS), _TASK_WIDTH, len(part)),
                        [value for t in part for value in (t.task_id, *task_values(t))],
                    )
                entries = [step.entry for step in steps]
                for run in chunks(entries, variables, _HISTORY_WIDTH):
                    conn.execute(
                        _insert_rows("history", HISTORY_COLUMNS, _HISTORY_WIDTH, len(run)),
                        [value for e in run for value in (e.task_id, *entry_values(e))],
                    )
        return tasks

    @staticmethod
    def _refuse_ids_in_use(conn: sqlite3.Connection, task_ids: list[str], variables: int) -> None:
        """:class:`DuplicateTaskError` naming the first of ``task_ids`` (in their
        order) that a stored task has, with that task's state.
        """
        found: dict[str, str] = {}
        for part in chunks(task_ids, variables, 1):
            found.update(
                conn.execute(
                    f"SELECT task_id, state FROM tasks WHERE task_id IN ({marks(len(part))})",
                    part,
                ).fetchall()
            )
        for task_id in task_ids:
            if task_id in found:
                raise DuplicateTaskError(
                    "a task with this id already exists",
                    task_id=task_id,
                    state=TaskState(found[task_id]),
                )

    def _apply(
        self, conn: sqlite3.Connection, task: TaskSaga, step: core.Step, mutation: Mutation
    ) -> core.Step:
        """Write ``step`` inside the write transaction; if the row moved on since
        ``task`` (another writer, or a stale remembered record), evaluate the event
        again against the stored row, now under the lock, so that the answer (or
        the typed error) is current. Never last-writer-wins.
        """
        if self._write(conn, task, step):
            return step
        fresh = self._read(conn, task.task_id)
        if fresh is None:  # pragma: no cover - rows are never deleted
            raise TaskNotFoundError("no such task", task_id=task.task_id)
        self._remember(fresh)
        step = mutation(fresh)
        if not self._write(conn, fresh, step):  # pragma: no cover
            raise StoreUnavailableError(
                "the row changed inside a write transaction", task_id=task.task_id
            )
        return step

    def _fast(
        self, task_id: str, event: str, now_us: int, args: Mapping[str, Any]
    ) -> TaskSaga | None:
        """``event`` as the engine's two statements in one write transaction (no
        read first; with contracts on, the row is read and the result checked
        against the core). ``None``: it did not apply; the slow path decides.
        """
        values = _engine.params(event, task_id, now_us, args)
        if values is None:
            return None
        insert, update, read = _engine.sqlite_write(event)
        with self._boundary("update"):
            conn = self._conn()
            hook = self._before_write
            if hook is not None:
                hook(task_id)
            with self._writing(conn):
                old = self._read(conn, task_id) if self.contracts else None
                row = None
                if conn.execute(insert, values).rowcount == 1:
                    if conn.execute(update, values).rowcount != 1:  # pragma: no cover
                        raise StoreUnavailableError(
                            "the row changed inside a write transaction", task_id=task_id
                        )
                    row = conn.execute(read, values).fetchone()
                if self.contracts:
                    written = None if row is None else _engine.split_row(row)
                    _engine.check_against_core(old, event, now_us, args, written, self._core)
        # decoded after the writer lock is let go (other writers wait for it)
        return None if row is None else self._rendered(event, *_engine.written(event, row))

    def _fast_many(
        self, event: str, items: list[tuple[str, Mapping[str, Any]]], now_us: int
    ) -> list[TaskSaga] | None:
        """``event`` on every item as the engine's two batch statements in one write
        transaction (:func:`_engine.sqlite_write_many`; with contracts on, the rows
        are read first and each result checked against the core).
        """
        values = _engine.batch_params(event, "sqlite", now_us, items)
        if values is None:
            return None
        insert, update, read = _engine.sqlite_write_many(event)
        with self._boundary("update"):
            conn = self._conn()
            with self._writing(conn):
                olds = {i: self._read(conn, i) for i, _ in items} if self.contracts else {}
                if conn.execute(insert, values).rowcount < len(items):
                    return None
                conn.execute(update, values)
                found = {row[_engine.AT["task_id"]]: row for row in conn.execute(read, values)}
                rows = [found[task_id] for task_id, _ in items]
                if self.contracts:
                    written = [_engine.split_row(row) for row in rows]
                    _engine.check_batch_against_core(
                        olds, event, now_us, items, written, self._core
                    )
        return [self._rendered(event, *_engine.written(event, row)) for row in rows]

    def _mutate(self, task_id: str, mutation: Mutation) -> TaskSaga:
        core.check_id("task_id", task_id)
        with self._boundary("update"):
            conn = self._conn()
            task, step = self._start(task_id, mutation, partial(self._read, conn, task_id))
            hook = self._before_write
            if hook is not None:
                hook(task_id)
            with self._writing(conn):
                step = self._apply(conn, task, step, mutation)
        return self._remember(step.task)

    def _mutate_many(self, mutations: list[tuple[str, Mutation]]) -> list[TaskSaga]:
        if not mutations:
            return []
        with self._boundary("update"):
            conn = self._conn()
            started = [
                (*self._start(task_id, m, partial(self._read, conn, task_id)), m)
                for task_id, m in mutations
            ]
            with self._writing(conn):  # a refusal inside rolls every write back
                steps = [self._apply(conn, task, step, m) for task, step, m in started]
        return [self._remember(step.task) for step in steps]

    def _claim(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        """The engine's claim (:func:`_engine.sqlite_claim`): the candidate scan and
        three statements in one write transaction, no row read (with contracts on,
        each claimed row is read before its update and the result checked against
        the core).
        """
        values = _engine.claim_params(owner, ttl_us, now_us, limit)
        if values is None:
            return self._claim_slowly(owner, ttl_us, now_us, limit, queues)
        arms, scope = _claim_scope(queues)
        insert, update, read = _engine.sqlite_claim()
        with self._boundary("claim_next"):
            conn = self._conn()
            with self._writing(conn):
                ids = [i for (i,) in conn.execute(_claim_ids(arms), values | scope)]
                if not ids:
                    return []
                values["ids"] = json.dumps(ids)
                old = {i: self._read(conn, i) for i in ids} if self.contracts else {}
                conn.execute(insert, values)
                conn.execute(update, values)
                rows = conn.execute(read, values).fetchall()
                if self.contracts:
                    args = {"owner": owner, "ttl_us": ttl_us}
                    for written in map(_engine.split_row, rows):
                        before = old[written[0].task_id]
                        _engine.check_against_core(
                            before, "acquire", now_us, args, written, self._core
                        )
        # sorted and decoded after the writer lock is let go (other writers wait for it)
        rows.sort(key=lambda row: (-row[_engine.AT["priority"]], row[0]))
        return [self._rendered("acquire", *_engine.split_row(row)) for row in rows]

    def _claim_slowly(
        self, owner: str, ttl_us: int, now_us: int, limit: int, queues: tuple[str, ...] | None
    ) -> list[TaskSaga]:
        """A claim through the core: walk the candidates, acquire in Python, write each."""
        acquire = self._core["acquire"]
        with self._boundary("claim_next"):
            conn = self._conn()
            with self._writing(conn):
                chosen = choose_claims(
                    lambda cursor, n: conn.execute(
                        *_claim_query(queues, cursor, now_us, n)
                    ).fetchall(),
                    lambda t: acquire(t, owner=owner, ttl_us=ttl_us, now_us=now_us),
                    limit,
                    _BATCH,
                )
                for task, step in chosen:
                    if not self._write(conn, task, step):  # pragma: no cover
                        raise StoreUnavailableError(
                            "the row changed inside a write transaction", task_id=task.task_id
                        )
        return [self._remember(step.task) for _task, step in chosen]

    def _reap(self, now_us: int, limit: int | None) -> list[TaskSaga]:
        with self._boundary("reap"):
            conn = self._conn()
            return self._reap_batches(
                now_us,
                limit,
                batch=_BATCH,
                transaction=partial(self._writing, conn),
                read=lambda after, n: conn.execute(_REAP, (after, now_us, now_us, n)).fetchall(),
                write=partial(self._write, conn),
            )

    def _stale(self, now_us: int) -> list[TaskSaga]:
        with self._boundary("list_stale"):
            rows = self._conn().execute(_STALE, (now_us,)).fetchall()
        return [decode_task(row) for row in rows]

    def get(self, task_id: str) -> TaskSaga | None:
        """The task, or ``None``."""
        core.check_id("task_id", task_id)
        with self._boundary("get"):
            return self._read(self._conn(), task_id)

    def _list(
        self,
        states: frozenset[TaskState] | None,
        saga_id: str | None,
        queue: str | None,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> list[TaskSaga]:
        with self._boundary("list_tasks"):
            conn = self._conn()
            after_seq = None
            if after is not None:
                row = conn.execute("SELECT seq FROM tasks WHERE task_id = ?", (after,)).fetchone()
                if row is None:
                    raise TaskNotFoundError("unknown 'after' task", task_id=after)
                after_seq = row[0]
            sql, params = _listing(states, saga_id, queue, after_seq, newest_first)
            rows = conn.execute(f"{sql} LIMIT ?", (*params, limit)).fetchall()
        return [decode_task(row) for row in rows]

    def history(self, task_id: str) -> list[HistoryEntry]:
        """The task's history, oldest first."""
        core.check_id("task_id", task_id)
        with self._boundary("history"):
            rows = (
                self._conn()
                .execute(
                    f"SELECT {HISTORY_COLUMNS} FROM history WHERE task_id = ? ORDER BY seq",
                    (task_id,),
                )
                .fetchall()
            )
        if not rows:
            raise TaskNotFoundError("no such task", task_id=task_id)
        return [decode_entry(row) for row in rows]

    def _counts(self, queue: str | None) -> dict[TaskState, int]:
        result = dict.fromkeys(TaskState, 0)
        with self._boundary("counts"):
            if queue is None:
                rows = self._conn().execute(
                    f"SELECT state, count(*) FROM tasks WHERE {OPEN} GROUP BY state UNION ALL"
                    f" SELECT state, count(*) FROM tasks WHERE {ENDED} GROUP BY state"
                )
            else:  # within tasks_by_queue alone (queue, state, seq)
                rows = self._conn().execute(
                    "SELECT state, count(*) FROM tasks WHERE queue = ? GROUP BY state", (queue,)
                )
            for state, number in rows.fetchall():
                result[TaskState(state)] = number
        return result

    def queue_stats(self, *, now: datetime | None = None) -> dict[str, QueueStats]:
        """See :meth:`SagaStore.queue_stats`, read in one transaction (one snapshot).

        The first call counts every task (one walk of ``tasks_by_queue``: linear in
        the tasks kept); later calls of this store object start from what the
        previous one counted (:class:`~sagalease.stores._sql.Counted`) and read
        only the tasks created since and the open ones, so their cost follows the
        open tasks and the changes in between, not the finished tasks kept. The
        open tasks are counted afresh by queue and state with ``tasks_by_queue``
        seeks (queue, state); stale leases and the oldest waiting task come from
        ``tasks_claim_queue`` alone.
        """
        now_us = self._now(now)
        with self._boundary("queue_stats"), self._stats_lock:
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                counted = self._count_ended(conn)
                rows: list[tuple[Any, ...]] = [
                    (queue, state, n, None, None) for (queue, state), n in counted.ended.items()
                ]
                variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
                for part in chunks(sorted(counted.queues), variables - len(_OPEN_VALUES), 1):
                    rows += [
                        (*row, None, None)
                        for row in conn.execute(
                            "SELECT queue, state, count(*) FROM tasks INDEXED BY tasks_by_queue"
                            f" WHERE queue IN ({marks(len(part))})"
                            f" AND state IN ({marks(len(_OPEN_VALUES))}) GROUP BY queue, state",
                            (*part, *_OPEN_VALUES),
                        )
                    ]
                rows += [
                    (queue, None, None, stale, oldest)
                    for queue, stale, oldest in conn.execute(_WAITING, (now_us, now_us))
                ]
            finally:
                if conn.in_transaction:  # a read: nothing to keep, the snapshot released
                    conn.execute("COMMIT")
            self._counted = counted
        return queue_stats_from_rows(now_us, rows)

    def _count_ended(self, conn: sqlite3.Connection) -> Counted:
        """The ended tasks by (queue, state) in this transaction's snapshot, from the
        previous count when there is one (see :class:`~sagalease.stores._sql.Counted`;
        SQLite has no gaps: one writer at a time, a seq is visible once taken).
        """
        top = conn.execute("SELECT max(seq) FROM tasks").fetchone()[0] or 0
        (seqs,) = conn.execute(_OPEN_SEQS).fetchone()
        open_now = frozenset(map(int, seqs.split(","))) if seqs else frozenset()
        last = self._counted
        ended: dict[tuple[str, str], int] = {}
        if last is None or top < last.top:
            rows = conn.execute(_ALL_COUNTED).fetchall()
            queues = {queue for queue, _state, _n in rows}
        else:
            ended, queues = dict(last.ended), set(last.queues)
            rows = conn.execute(_NEW_COUNTED, (last.top,)).fetchall()
            queues.update(queue for queue, _state, _n in rows)
            finished = sorted(last.open_seqs - open_now)  # open then, ended since
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            for part in chunks(finished, variables, 1) if finished else []:
                rows += conn.execute(
                    "SELECT queue, state, count(*) FROM tasks"
                    f" WHERE seq IN ({marks(len(part))}) GROUP BY queue, state",
                    part,
                ).fetchall()
        add_ended(ended, rows)
        return Counted(top, ended, open_now, frozenset(queues))

    def close(self) -> None:
        """Close every connection and the writer lock; closing twice is harmless."""
        with self._conns_lock:
            if self._closed:
                return
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if self._lock is not None:
            self._lock.close()

    # ------------------------------------------------------------ diagnostics

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` (``["ok"]`` when the file is sound)."""
        with self._boundary("integrity_check"):
            rows = self._conn().execute("PRAGMA integrity_check").fetchall()
        return [str(r[0]) for r in rows]
