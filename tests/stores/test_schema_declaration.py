"""The SQL schemas restate facts of the lifecycle declaration; these tests pin them.

SQL cannot import :mod:`sagalease.lifecycle`, so the CHECK constraints, the
partial-index predicates and PostgreSQL's generated ``open_seq`` column write
state lists out. :func:`drift` reads every ``state IN (...)`` / ``state <> ...``
term of a schema (its live definitions, as the database prints them back; an
OR chain ``state = 'a' OR state = 'b' ...`` is one IN term: SQLite evaluates a
list of more than two constants through a temporary index, so what every write
evaluates spells its lists out as chains) and compares each with the
declaration's list for that place, in order (SQLite takes a partial index only
when the query's predicate is the index's to the letter, and the stores render
theirs from the declaration in its order).

Compensation statuses and event names are not restated: the schema keeps
compensations as JSON text and the history's event as free text.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

from conftest import POSTGRES_URL, require_postgres
from sagalease.lifecycle import CHART, ENDED_STATES, LEASE_STATES, OPEN_STATES, Lifecycle
from sagalease.records import TaskState
from sagalease.stores.sqlite import SQLiteStore

Term = tuple[str, tuple[TaskState, ...]]
"""``("IN" | "NOT IN", states)``: one state term of a schema definition."""

EVERY_STATE: tuple[TaskState, ...] = tuple(TaskState(s.id) for s in Lifecycle.states)

ALWAYS_LEASED: tuple[TaskState, ...] = tuple(
    state for state in LEASE_STATES if all(t.target is not state for t in CHART[(state, "release")])
)
"""The lease states that giving the lease back leaves (RUNNING): never unleased."""

SQLITE_TERMS: Mapping[str, tuple[Term, ...]] = {
    "table tasks": (
        ("IN", EVERY_STATE),  # the state CHECK
        ("IN", LEASE_STATES),  # a lease only in these states
        ("NOT IN", ALWAYS_LEASED),  # RUNNING always holds a lease
        ("IN", ENDED_STATES),  # a reason exactly when ended
    ),
}
"""Every SQLite definition with a state term; any other must have none (the open
and ended indexes test ``terminal_reason``, tied to the ended states by the
table's CHECK)."""

POSTGRES_TERMS: Mapping[str, tuple[Term, ...]] = {
    "constraint tasks_state": (("IN", EVERY_STATE),),
    "constraint tasks_lease_state": (("IN", LEASE_STATES),),
    "constraint tasks_running_leased": (("NOT IN", ALWAYS_LEASED),),
    "constraint tasks_terminal_reason": (("IN", ENDED_STATES),),
    # tasks_open, the claim and the reap prefilters test open_seq, which is this:
    "column tasks.open_seq": (("IN", OPEN_STATES),),
    # tasks_ended (listings of ended tasks by state) tests ended_state, which is this:
    "column tasks.ended_state": (("IN", ENDED_STATES),),
}
"""Every PostgreSQL definition with a state term; any other must have none."""

# SQLite prints its definitions as written; PostgreSQL normalises them, e.g.
# "state = ANY (ARRAY['pending'::text, ...])" and "state <> 'running'::text".
_TERM = re.compile(
    r"\bstate\s*(?P<op>NOT\s+IN|IN|=\s*ANY|<>\s*ALL|<>|!=|=)\s*"
    r"(?P<values>\((?:\s*ARRAY\s*\[)?[^)\]]*[)\]]|'[^']*')",
    re.IGNORECASE,
)
_LITERAL = re.compile(r"'([^']*)'")
_CHAIN = re.compile(r"\bstate\s*=\s*'[^']*'(?:\s+OR\s+state\s*=\s*'[^']*')+", re.IGNORECASE)
_NEGATED = {"NOT IN", "<> ALL", "<>", "!="}


def state_terms(definition: str) -> tuple[list[Term], list[str]]:
    """The state terms of one definition, in order, and what else in it names a state
    (literals outside a term, or a term's literal that is no state at all).
    """
    terms: list[Term] = []
    strays: list[str] = []
    definition = _CHAIN.sub(
        lambda chain: "state IN (" + ", ".join(map(repr, _LITERAL.findall(chain.group()))) + ")",
        definition,
    )
    for match in _TERM.finditer(definition):
        op = " ".join(match.group("op").upper().split())
        states = []
        for value in _LITERAL.findall(match.group("values")):
            try:
                states.append(TaskState(value))
            except ValueError:
                strays.append(f"{value!r} (no such state)")
        terms.append(("NOT IN" if op in _NEGATED else "IN", tuple(states)))
    rest = _TERM.sub(" ", definition)
    strays += [f"{v!r} outside a state term" for v in _LITERAL.findall(rest) if v in set(TaskState)]
    return terms, strays


def _show(term: Term) -> str:
    op, states = term
    return f"state {op} ({', '.join(s.value for s in states)})"


def drift(schema: Mapping[str, str], expected: Mapping[str, tuple[Term, ...]]) -> list[str]:
    """What in ``schema`` (definition name → SQL text) disagrees with the declaration:
    ``expected`` names every definition that has state terms, and its terms in order.
    """
    problems = [f"{name}: missing from the schema" for name in expected if name not in schema]
    for name, text in schema.items():
        got, strays = state_terms(text)
        want = list(expected.get(name, ()))
        problems += [f"{name}: names {stray}" for stray in strays]
        if len(got) != len(want):
            problems.append(
                f"{name}: {len(got)} state term(s) [{'; '.join(map(_show, got))}],"
                f" the declaration gives {len(want)} [{'; '.join(map(_show, want))}]"
            )
            continue
        for number, (g, w) in enumerate(zip(got, want, strict=True), 1):
            if g == w:
                continue
            missing = [s.value for s in w[1] if s not in g[1]]
            extra = [s.value for s in g[1] if s not in w[1]]
            detail = f"missing {missing}, extra {extra}" if missing or extra else "other order"
            problems.append(
                f"{name}: state term {number} is {_show(g)}; the declaration gives"
                f" {_show(w)} ({'other operator' if g[0] != w[0] else detail})"
            )
    return problems


# ---------------------------------------------------------------- live schemas


def sqlite_schema(path: Path) -> dict[str, str]:
    """The definitions of a freshly created SQLite store, as ``sqlite_master`` keeps them."""
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    return {f"{kind} {name}": sql for kind, name, sql in rows}


def postgres_schema() -> dict[str, str]:
    """The definitions of a freshly created PostgreSQL store, as the server prints them."""
    import psycopg

    from sagalease.stores.postgres import scratch_store

    store = scratch_store(POSTGRES_URL)
    try:
        with psycopg.connect(POSTGRES_URL) as conn:
            queries = (
                "SELECT 'constraint ' || c.conname, pg_get_constraintdef(c.oid)"
                " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
                " WHERE n.nspname = %(s)s",
                "SELECT 'index ' || indexname, indexdef FROM pg_indexes WHERE schemaname = %(s)s",
                "SELECT 'column ' || c.relname || '.' || a.attname, pg_get_expr(d.adbin, d.adrelid)"
                " FROM pg_attrdef d JOIN pg_attribute a"
                " ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
                " JOIN pg_class c ON c.oid = d.adrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s",
                "SELECT 'view ' || viewname, definition FROM pg_views WHERE schemaname = %(s)s",
            )
            schema: dict[str, str] = {}
            for query in queries:
                for name, text in conn.execute(query, {"s": store.schema}).fetchall():
                    assert name not in schema, name
                    schema[name] = text
    finally:
        store.close()
    return schema


@pytest.fixture(scope="module")
def sqlite_live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The live schema of one new SQLite store (read once; tests edit copies)."""
    return sqlite_schema(tmp_path_factory.mktemp("schema") / "store.db")


@pytest.fixture(scope="module")
def postgres_live() -> dict[str, str]:
    """The live schema of one new PostgreSQL store (read once; tests edit copies)."""
    require_postgres()
    return postgres_schema()


# ---------------------------------------------------------------- the schemas agree


def test_expected_lists_are_not_empty() -> None:
    """Each list the expectations read off the declaration names some state."""
    assert all((OPEN_STATES, ENDED_STATES, LEASE_STATES, ALWAYS_LEASED))
    assert set(EVERY_STATE) == set(TaskState) == set(OPEN_STATES) | set(ENDED_STATES)


def test_sqlite_schema_restates_the_declaration(sqlite_live: dict[str, str]) -> None:
    """Every state term of a new SQLite store is the declaration's list for its place."""
    assert drift(sqlite_live, SQLITE_TERMS) == []


def test_postgres_schema_restates_the_declaration(postgres_live: dict[str, str]) -> None:
    """Every state term of a new PostgreSQL store is the declaration's list for its place."""
    assert drift(postgres_live, POSTGRES_TERMS) == []


# ---------------------------------------------------------------- the checker bites


def _edit(schema: Mapping[str, str], name: str, old: str, new: str) -> dict[str, str]:
    assert old in schema[name], (name, old)
    return {**schema, name: schema[name].replace(old, new, 1)}


@pytest.mark.parametrize(
    ("name", "old", "new", "reported"),
    [
        ("table tasks", "OR state = 'quarantined'),", "),", "missing ['quarantined']"),
        ("table tasks", "'running', 'compensating')", "'running')", "missing ['compensating']"),
        ("table tasks", "state <> 'running'", "state <> 'pending'", "extra ['pending']"),
        ("table tasks", "state <> 'running'", "state = 'running'", "other operator"),
        (
            "table tasks",
            "'pending' OR state = 'running'",
            "'running' OR state = 'pending'",
            "order",
        ),
        ("table tasks", "state = 'failed' OR", "state = 'faild' OR", "'faild' (no such state)"),
        (
            "table tasks",
            "= (state = 'completed'",
            "= (state = 'running' OR state = 'completed'",
            "extra",
        ),
        ("index tasks_open", "terminal_reason IS NULL", "state IN ('a', 'b')", "1 state term"),
        ("index tasks_by_saga", "saga_id IS NOT NULL", "state = 'pending'", "1 state term"),
        ("index tasks_by_saga", "saga_id IS NOT NULL", "saga_id <> 'failed'", "outside"),
    ],
)
def test_drift_in_sqlite_schema_is_reported(
    sqlite_live: dict[str, str], name: str, old: str, new: str, reported: str
) -> None:
    """A state removed, added, reordered or misspelt, or a new state term, is reported."""
    problems = drift(_edit(sqlite_live, name, old, new), SQLITE_TERMS)
    assert problems, "the drift went unnoticed"
    assert all(p.startswith(f"{name}: ") for p in problems), problems
    assert any(reported in p for p in problems), problems


def test_missing_definition_is_reported(sqlite_live: dict[str, str]) -> None:
    """A definition the declaration expects (the tasks table) gone: reported."""
    schema = {k: v for k, v in sqlite_live.items() if k != "table tasks"}
    assert drift(schema, SQLITE_TERMS) == ["table tasks: missing from the schema"]


@pytest.mark.parametrize(
    ("name", "old", "new", "reported"),
    [
        ("constraint tasks_state", ", 'quarantined'::text", "", "missing ['quarantined']"),
        ("column tasks.open_seq", ", 'compensating'::text", "", "missing ['compensating']"),
        ("constraint tasks_lease_state", "'running'::text, ", "", "missing ['running']"),
    ],
)
def test_drift_in_postgres_schema_is_reported(
    postgres_live: dict[str, str], name: str, old: str, new: str, reported: str
) -> None:
    """The same checker reads PostgreSQL's normalised definitions."""
    problems = drift(_edit(postgres_live, name, old, new), POSTGRES_TERMS)
    assert problems, "the drift went unnoticed"
    assert all(p.startswith(f"{name}: ") for p in problems), problems
    assert any(reported in p for p in problems), problems
