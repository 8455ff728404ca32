"""The SQL rendering of the declaration equals the Python core (issue 14).

Every guard that has an SQL predicate (:data:`sagalease.lifecycle.GUARDS`) and every
hot event's rendered write (:mod:`sagalease.stores._engine`) is evaluated on random
well-formed records stored in a real SQLite file and a real PostgreSQL schema, and
compared with the Python: the guard's value (never NULL), and the event's new row
and history entry, or its refusal (the statement writes nothing where the core
raises). The records' instants lie within a few microseconds of ``now`` so that
every boundary (``now == expires_at``, ``now == deadline``...) is met.

The same check is shown failing on deliberately wrong renderings: an expiry
compared with ``>`` instead of ``>=``, a token not incremented.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import POSTGRES_URL, require_postgres
from sagalease import core, lifecycle
from sagalease.errors import InvalidInputError, SagaLeaseError
from sagalease.expr import Dialect, col, param
from sagalease.lifecycle import EFFECTS, GUARDS, GuardContext
from sagalease.records import Compensation, CompensationStatus, Lease, TaskSaga, TaskState
from sagalease.stores import _engine
from sagalease.stores._rows import (
    TASK_COLUMNS,
    task_values,
)
from sagalease.stores.sqlite import SQLiteStore
from sagalease.stores.sqlite import _store as sqlite_store

NOW = 1_000_000
OWNERS = ("w", "v", "it's", 'say "hi"', "back\\slash", 'o\'k "both"', "é", "tab\u00a0space")
"""Lease and caller owners: plain, quoted both ways, a backslash, non-ASCII (which
PostgreSQL's rendering leaves to the core, see ``sagalease.expr.py_repr``)."""

instants = st.sampled_from(range(NOW - 3, NOW + 4))


def moments(task: TaskSaga) -> st.SearchStrategy[int]:
    """An instant to call at: near :data:`NOW`, often exactly one of the record's own
    (its lease's expiry, its deadline, when it is available): the boundaries.
    """
    own = [task.available_us, *([task.deadline_us] if task.deadline_us is not None else [])]
    if task.lease is not None:
        own += [task.lease.expires_us, task.lease.expires_us - 1, task.lease.heartbeat_us]
    return st.sampled_from(own) | instants


@st.composite
def records(draw: st.DrawFn) -> TaskSaga:
    """A well-formed record with every instant near :data:`NOW`."""
    state = draw(st.sampled_from(list(TaskState)))
    max_attempts = draw(st.integers(1, 3))
    attempts = draw(st.integers(0, max_attempts))
    token = draw(st.integers(attempts, attempts + 2))
    # What a state's compensations can be (forward phase: all pending).
    allowed = {
        TaskState.PENDING: [CompensationStatus.PENDING],
        TaskState.RUNNING: [CompensationStatus.PENDING],
        TaskState.COMPLETED: [CompensationStatus.PENDING],
        TaskState.COMPENSATING: [CompensationStatus.PENDING, CompensationStatus.APPLIED],
    }.get(state, list(CompensationStatus))
    statuses = draw(st.lists(st.sampled_from(allowed), max_size=2))
    lease = None
    if state is TaskState.RUNNING or (state is TaskState.COMPENSATING and draw(st.booleans())):
        acquired = draw(instants)
        heartbeat = draw(st.integers(acquired, acquired + 2))
        expires = draw(st.integers(heartbeat + 1, heartbeat + 4))
        lease = Lease(draw(st.sampled_from(OWNERS)), token, acquired, expires, heartbeat)
    task = TaskSaga(
        task_id="t",
        state=state,
        created_us=NOW - 10,
        updated_us=NOW - 5,
        compensations=tuple(Compensation("undo", f"x{i}", "", s) for i, s in enumerate(statuses)),
        lease=lease,
        token=token,
        attempts=attempts,
        expirations=draw(st.integers(0, 2)),
        max_attempts=max_attempts,
        available_us=draw(instants),
        deadline_us=draw(st.none() | instants),
        terminal_reason="ended" if state.is_terminal else None,
        version=draw(st.integers(1, 4)),
    )
    assume(core.well_formed(task))
    return task


@st.composite
def calls(draw: st.DrawFn, task: TaskSaga) -> tuple[str, int, dict[str, Any]]:
    """A hot event with arguments that sometimes match the lease and sometimes not."""
    event = draw(st.sampled_from(sorted(EFFECTS)))
    owner = draw(
        st.sampled_from((task.lease.owner,) if task.lease else OWNERS) | st.sampled_from(OWNERS)
    )
    args: dict[str, Any] = {"owner": owner}
    if event in lifecycle.HOLDER_EVENTS:
        args["token"] = draw(st.sampled_from((task.token, task.token - 1, task.token + 1)))
    if event in ("acquire", "heartbeat"):
        args["ttl_us"] = draw(st.integers(1, 6))
    if event == "release":
        args["delay_us"] = draw(st.integers(0, 2))
    if event in ("release", "complete", "fail"):
        args["reason"] = draw(
            st.sampled_from((None, "boom", "it's"))
            if event != "fail"
            else st.sampled_from(("boom", "it's"))
        )
    return event, draw(moments(task)), args


# ---------------------------------------------------------------- the databases


class Database:
    """One real database holding the record under test, rolled back after each use."""

    dialect: Dialect

    def store(self, task: TaskSaga) -> None:
        raise NotImplementedError

    def value(self, sql: str, values: dict[str, Any]) -> Any:
        """The single value of ``SELECT <sql> FROM tasks WHERE task_id = 't'``."""
        raise NotImplementedError

    def write(self, event: str, values: dict[str, Any]) -> tuple[TaskSaga, Any] | None:
        """Run ``event``'s rendered write, then roll it back; what it wrote, if anything."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class SQLiteDatabase(Database):
    dialect = Dialect("sqlite")

    def __init__(self, path: Path) -> None:
        SQLiteStore(path).close()  # the schema, by the store's own migrations
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.create_function("sagalease_repr", 1, repr, deterministic=True)
        self.conn.execute("PRAGMA foreign_keys = ON")

    def store(self, task: TaskSaga) -> None:
        self.conn.execute("BEGIN")
        marks = ", ".join("?" * len(TASK_COLUMNS))
        self.conn.execute(
            f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) VALUES ({marks})",
            (task.task_id, *task_values(task)),
        )

    def value(self, sql: str, values: dict[str, Any]) -> Any:
        return self.conn.execute(f"SELECT {sql} FROM tasks WHERE task_id = 't'", values).fetchone()[
            0
        ]

    def write(self, event: str, values: dict[str, Any]) -> tuple[TaskSaga, Any] | None:
        insert, update, read = _engine.sqlite_write(event)
        self.conn.execute("SAVEPOINT w")
        try:
            if self.conn.execute(insert, values).rowcount == 0:
                return None
            try:
                updated = self.conn.execute(update, values).rowcount
            except sqlite3.IntegrityError as exc:
                raise AssertionError(f"{event}: the database refused the SQL write: {exc}") from exc
            assert updated == 1, "the history insert matched but the update did not"
            return _engine.split_row(self.conn.execute(read, values).fetchone())
        finally:
            self.conn.execute("ROLLBACK TO w")
            self.conn.execute("RELEASE w")

    def reset(self) -> None:
        self.conn.execute("ROLLBACK")


class PostgresDatabase(Database):
    dialect = Dialect("postgres")

    def __init__(self) -> None:
        import psycopg
        from psycopg import sql

        from sagalease.stores.postgres import scratch_store

        self.store_ = scratch_store(POSTGRES_URL)
        self.schema = sql.Identifier(self.store_.schema)
        self.sql = sql
        self.conn = psycopg.connect(POSTGRES_URL)

    def _q(self, text: str) -> Any:
        return self.sql.SQL(text).format(schema=self.schema)

    def store(self, task: TaskSaga) -> None:
        self.conn.execute(
            self._q(
                f"INSERT INTO {{schema}}.tasks ({', '.join(TASK_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(TASK_COLUMNS))})"
            ),
            (task.task_id, *task_values(task)),
        )

    def value(self, sql: str, values: dict[str, Any]) -> Any:
        row = self.conn.execute(
            self._q(f"SELECT {sql} FROM {{schema}}.tasks WHERE task_id = 't'"), values
        ).fetchone()
        assert row is not None
        return row[0]

    def write(self, event: str, values: dict[str, Any]) -> tuple[TaskSaga, Any] | None:
        import psycopg

        text = _engine.postgres_write(event)
        try:
            with self.conn.transaction(force_rollback=True):
                rows = self.conn.execute(self._q(text), values).fetchall()
        except psycopg.IntegrityError as exc:
            raise AssertionError(f"{event}: the database refused the SQL write: {exc}") from exc
        if not rows:
            return None
        (row,) = rows
        return _engine.split_row(row)

    def reset(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()
        self.store_.close()


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A store's SQLite file (its own migrations), shared by the module's tests."""
    db = SQLiteDatabase(tmp_path_factory.mktemp("equivalence") / "store.db")
    yield db
    db.conn.close()


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[Database]:
    """A scratch PostgreSQL schema (the store's migrations), shared by the module's tests."""
    require_postgres()
    db = PostgresDatabase()
    yield db
    db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> Database:
    """Each database in turn."""
    found: Database = request.getfixturevalue(f"{request.param}_db")
    return found


# ---------------------------------------------------------------- the comparison


def _declined(db: Database, task: TaskSaga, event: str, values: dict[str, Any]) -> bool:
    """Whether the rendering leaves this row to the core (its exactness conditions)."""
    write = lifecycle.event_write(event)
    conditions = _engine._exact(write, db.dialect)
    return any(not db.value(c.sql(db.dialect), values) for c in conditions)


def check_guards(
    db: Database, task: TaskSaga, now_us: int, owner: str, token: int, new_expiry: int
) -> None:
    """Every guard with an SQL predicate has the Python's value on ``task``, never NULL."""
    ctx = GuardContext(task, now_us, owner=owner, token=token, new_expiry_us=new_expiry)
    values = {"now_us": now_us, "owner": owner, "token": token, "new_expiry_us": new_expiry}
    if db.dialect.name == "postgres" and not task.state.is_terminal:
        applies = lifecycle.event_write("acquire").applies.sql(db.dialect)
        pick = db.value(f"({_engine.CLAIM_PREFILTER}) = ({applies})", values)
        assert pick, f"the claim prefilter and acquire's guard differ on {task} at {now_us}"
    if db.dialect.name == "sqlite" and not task.state.is_terminal:
        applies = _engine.sqlite_claim_guard()
        kept = db.value(f"NOT ({applies}) OR (1{sqlite_store._claimable(':now_us')})", values)
        assert kept, f"the SQLite claim prefilter drops a row acquire admits: {task} at {now_us}"
    for name, guard in GUARDS.items():
        if guard.sql is None:
            continue
        got = db.value(guard.sql.sql(db.dialect), values)
        assert got is not None, f"guard {name} is NULL in SQL on {task}"
        assert bool(got) == guard.test(ctx), (
            f"guard {name}: SQL {got}, Python {guard.test(ctx)} on {task} at {now_us}"
        )


def check_event(
    db: Database, task: TaskSaga, event: str, now_us: int, args: dict[str, Any]
) -> None:
    """``event``'s rendered write does what the core does from ``task``: the same row
    and entry, or nothing where the core refuses (or leaves it to the core).
    """
    values = _engine.params(event, task.task_id, now_us, args)
    if values is None:  # the core refuses the arguments themselves: the slow path answers
        with pytest.raises(InvalidInputError):
            core.apply(task, event, now_us, **args)
        return
    if db.dialect.name == "postgres":
        values["channel"] = "unused"
    written = db.write(event, values)
    try:
        step = core.apply(task, event, now_us, **args)
    except SagaLeaseError as exc:
        refusal: SagaLeaseError | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert written is None, (
            f"{event} {args} at {now_us}: the core refused ({refusal}); SQL wrote {written}"
        )
        return
    if written is None:
        assert _declined(db, task, event, values), (
            f"{event} {args} at {now_us} on {task}: the core applies it, the SQL matched no row"
        )
        return
    assert written == (step.task, step.entry), (
        f"{event} {args} at {now_us} on {task}:\n SQL  {written}\n core {(step.task, step.entry)}"
    )


def equivalence(db: Database, examples: int) -> Callable[[], None]:
    """The property over ``examples`` random records and calls, on ``db``."""

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        report_multiple_bugs=False,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        task = data.draw(records())
        db.store(task)
        try:
            check_guards(
                db,
                task,
                data.draw(moments(task)),
                data.draw(st.sampled_from(OWNERS)),
                data.draw(st.integers(0, 5)),
                data.draw(st.integers(NOW - 4, NOW + 8)),
            )
            for _ in range(4):
                event, now_us, args = data.draw(calls(task))
                check_event(db, task, event, now_us, args)
        finally:
            db.reset()

    return run


def test_sql_guards_and_effects_equal_the_core(db: Database) -> None:
    """On random records, every rendered guard and hot event equals the Python core."""
    equivalence(db, 300)()


# ---------------------------------------------------------------- the check can fail


def _clear_caches() -> None:
    lifecycle.event_write.cache_clear()
    for rendered in (_engine.sqlite_write, _engine.postgres_write, _engine.postgres_claim):
        rendered.cache_clear()


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Install one deliberately wrong rendering by name (undone afterwards)."""

    def install(name: str) -> None:
        if name == "expiry_compared_with_gt":
            wrong = col("lease_expires_us").is_null() | (param("now_us") > col("lease_expires_us"))
            for guard in ("no_live_lease", "no_lease_or_expired"):
                monkeypatch.setitem(GUARDS, guard, dataclasses.replace(GUARDS[guard], sql=wrong))
        elif name == "token_not_incremented":
            acquire = EFFECTS["acquire"]
            columns = {**acquire.columns, "token": col("token"), "lease_token": col("token")}
            monkeypatch.setitem(EFFECTS, "acquire", dataclasses.replace(acquire, columns=columns))
        else:
            raise AssertionError(name)
        _clear_caches()

    yield install
    monkeypatch.undo()
    _clear_caches()


@pytest.mark.parametrize("mutant", ["expiry_compared_with_gt", "token_not_incremented"])
def test_the_check_catches_a_wrong_rendering(
    db: Database, broken: Callable[[str], None], mutant: str
) -> None:
    """A rendering that differs from the Python core is found (an AssertionError names
    the guard or the event and both results).
    """
    broken(mutant)
    with pytest.raises(AssertionError, match=r"guard no_live_lease|acquire"):
        equivalence(db, 300)()


@pytest.mark.parametrize("length", [8, 256, 257, core.MAX_TEXT_LENGTH])
def test_a_statements_args_json_is_the_cores_and_long_texts_are_not_kept(length: int) -> None:
    """The ``args_json`` a rendered write records is the core's encoding of the call's
    arguments, the same on a repeat (encoded once per distinct call); a reason longer
    than 256 characters is encoded each time and never kept in that cache.
    """
    args = {"owner": "w", "token": 3, "reason": "r" * length}
    _engine._args_json.cache_clear()
    first = _engine.params("fail", "t", 1, args)
    again = _engine.params("fail", "t", 2, args)
    assert first is not None
    assert again is not None
    assert first["args_json"] == again["args_json"] == core.dump_args(args)
    assert _engine._args_json.cache_info().currsize == (0 if length > 256 else 1)
