"""A small expression language for the lifecycle's guards and effects, rendered as SQL.

:mod:`sagalease.lifecycle` writes each guard's predicate and each hot event's effect
twice, side by side: as the Python the core evaluates and as one of these
expressions, which the SQL stores render for SQLite or PostgreSQL
(:func:`render`). The two are proven equal on random records in both databases
(``tests/stores/test_sql_equivalence.py``).

The terms are a task row's columns (:func:`col`: a record's flat fields, as the
SQL stores name them), bound parameters (:func:`param`: the instant, the caller's
owner and token, the ttl...) and the declaration's own constants (:func:`const`:
state names, small integers, fixed texts). A value from a caller is always a
parameter, never SQL text: rendering only ever writes column names, operators,
parameter markers and those constants.

Predicates are written so that SQL's three-valued logic never yields ``NULL``
(every nullable column is tested with ``IS NULL`` before it is compared), so that
negating one is sound and its SQL value is exactly true or false, as in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "Dialect",
    "Expr",
    "all_of",
    "any_of",
    "case",
    "col",
    "concat",
    "const",
    "greatest",
    "least",
    "param",
    "py_repr",
    "render",
    "sqlite_repr",
]

Kind = Literal["int", "text"]


@dataclass(frozen=True)
class Dialect:
    """How one database spells what differs: parameter markers, a column's
    qualifier, and :func:`py_repr`.

    ``name`` is ``"sqlite"`` (markers ``:name``) or ``"postgres"`` (``%(name)s``
    with a cast, so that the server knows each parameter's type).
    """

    name: Literal["sqlite", "postgres"]
    qualifier: str = ""
    """Prefix of every column (``"o."`` in a PostgreSQL ``UPDATE ... FROM o``)."""
    batch: frozenset[str] = frozenset()
    """Parameters that differ from row to row of a batch statement: each is read from
    the batch's column ``b_<name>`` beside the task row (with its qualifier)."""

    def param(self, name: str, kind: Kind) -> str:
        """The marker of the parameter ``name``."""
        if name in self.batch:
            return f"{self.qualifier}b_{name}"
        if self.name == "sqlite":
            return f":{name}"
        return f"%({name})s::{'bigint' if kind == 'int' else 'text'}"

    def qualified(self, qualifier: str) -> Dialect:
        """The same dialect with columns prefixed by ``qualifier``."""
        return Dialect(self.name, qualifier, self.batch)


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgres")


class Expr:
    """An expression over a task row, the event's parameters and constants.

    Python's operators build larger expressions: ``+``, ``<``, ``<=``, ``>``,
    ``>=``, ``&`` (and), ``|`` (or), ``~`` (not); :meth:`eq`, :meth:`ne`,
    :meth:`is_null` and :meth:`not_null` for the rest (``==`` keeps its Python
    meaning: structural equality of two expressions).
    """

    __slots__ = ()

    def sql(self, d: Dialect) -> str:
        """The SQL text of this expression in dialect ``d``."""
        raise NotImplementedError

    def text(self) -> str:
        """A dialect-free reading of the expression (what the spec prints)."""
        raise NotImplementedError

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        """Conditions under which ``sql(d)`` computes exactly what the Python does
        (none: always). A statement that uses this expression only touches rows
        that meet them; the store leaves the others to the Python core.
        """
        return ()

    def params(self) -> frozenset[str]:
        """The names of the parameters this expression reads."""
        return frozenset()

    def __add__(self, other: Expr | int) -> Expr:
        return _Bin("+", self, _lift(other))

    def __lt__(self, other: Expr | int) -> Expr:
        return _Bin("<", self, _lift(other))

    def __le__(self, other: Expr | int) -> Expr:
        return _Bin("<=", self, _lift(other))

    def __gt__(self, other: Expr | int) -> Expr:
        return _Bin(">", self, _lift(other))

    def __ge__(self, other: Expr | int) -> Expr:
        return _Bin(">=", self, _lift(other))

    def __and__(self, other: Expr) -> Expr:
        return all_of(self, other)

    def __or__(self, other: Expr) -> Expr:
        return any_of(self, other)

    def __invert__(self) -> Expr:
        if self == TRUE:
            return FALSE
        if self == FALSE:
            return TRUE
        return _Not(self)

    def eq(self, other: Expr | int | str) -> Expr:
        """``self = other`` (two constants: decided here)."""
        right = _lift(other)
        if isinstance(self, _Const) and isinstance(right, _Const):
            return TRUE if self.value == right.value else FALSE
        return _Bin("=", self, right)

    def ne(self, other: Expr | int | str) -> Expr:
        """``self <> other``."""
        return _Bin("<>", self, _lift(other))

    def is_null(self) -> Expr:
        """``self IS NULL``."""
        return _Null(self, True)

    def not_null(self) -> Expr:
        """``self IS NOT NULL``."""
        return _Null(self, False)

    def __repr__(self) -> str:
        return f"<{self.text()}>"


def _lift(value: Expr | int | str | None) -> Expr:
    return value if isinstance(value, Expr) else const(value)


@dataclass(frozen=True, eq=True, repr=False)
class _Col(Expr):
    name: str

    def sql(self, d: Dialect) -> str:
        return f"{d.qualifier}{self.name}"

    def text(self) -> str:
        return self.name


@dataclass(frozen=True, eq=True, repr=False)
class _Param(Expr):
    name: str
    kind: Kind

    def sql(self, d: Dialect) -> str:
        return d.param(self.name, self.kind)

    def text(self) -> str:
        return f":{self.name}"

    def params(self) -> frozenset[str]:
        return frozenset({self.name})


@dataclass(frozen=True, eq=True, repr=False)
class _Const(Expr):
    value: int | str | None

    def sql(self, d: Dialect) -> str:
        if self.value is None:
            return "NULL"
        if isinstance(self.value, int):
            return str(self.value)
        return "'" + self.value.replace("'", "''") + "'"

    def text(self) -> str:
        return self.sql(SQLITE)


@dataclass(frozen=True, eq=True, repr=False)
class _Bin(Expr):
    op: str
    left: Expr
    right: Expr

    def sql(self, d: Dialect) -> str:
        return f"({self.left.sql(d)} {self.op} {self.right.sql(d)})"

    def text(self) -> str:
        return f"{self.left.text()} {self.op} {self.right.text()}"

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        return (*self.left.exact(d), *self.right.exact(d))

    def params(self) -> frozenset[str]:
        return self.left.params() | self.right.params()


@dataclass(frozen=True, eq=True, repr=False)
class _Many(Expr):
    op: Literal["AND", "OR"]
    parts: tuple[Expr, ...]

    def sql(self, d: Dialect) -> str:
        return "(" + f" {self.op} ".join(p.sql(d) for p in self.parts) + ")"

    def text(self) -> str:
        return "(" + f" {self.op.lower()} ".join(p.text() for p in self.parts) + ")"

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        return tuple(c for p in self.parts for c in p.exact(d))

    def params(self) -> frozenset[str]:
        return frozenset().union(*(p.params() for p in self.parts))


@dataclass(frozen=True, eq=True, repr=False)
class _Not(Expr):
    inner: Expr

    def sql(self, d: Dialect) -> str:
        return f"(NOT {self.inner.sql(d)})"

    def text(self) -> str:
        return f"not {self.inner.text()}"

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        return self.inner.exact(d)

    def params(self) -> frozenset[str]:
        return self.inner.params()


@dataclass(frozen=True, eq=True, repr=False)
class _Null(Expr):
    inner: Expr
    null: bool

    def sql(self, d: Dialect) -> str:
        return f"({self.inner.sql(d)} IS {'' if self.null else 'NOT '}NULL)"

    def text(self) -> str:
        return f"{self.inner.text()} is {'' if self.null else 'not '}null"

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        return self.inner.exact(d)

    def params(self) -> frozenset[str]:
        return self.inner.params()


@dataclass(frozen=True, eq=True, repr=False)
class _Case(Expr):
    whens: tuple[tuple[Expr, Expr], ...]
    default: Expr

    def sql(self, d: Dialect) -> str:
        arms = " ".join(f"WHEN {c.sql(d)} THEN {v.sql(d)}" for c, v in self.whens)
        return f"(CASE {arms} ELSE {self.default.sql(d)} END)"

    def text(self) -> str:
        arms = "; ".join(f"{c.text()} -> {v.text()}" for c, v in self.whens)
        return f"case({arms}; else {self.default.text()})"

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        found = [x for c, v in self.whens for x in (*c.exact(d), *v.exact(d))]
        return (*found, *self.default.exact(d))

    def params(self) -> frozenset[str]:
        found = frozenset().union(*(c.params() | v.params() for c, v in self.whens))
        return found | self.default.params()


@dataclass(frozen=True, eq=True, repr=False)
class _Func(Expr):
    name: Literal["least", "greatest", "concat", "py_repr", "has_pending"]
    args: tuple[Expr, ...] = field(default=())

    def sql(self, d: Dialect) -> str:
        args = [a.sql(d) for a in self.args]
        if self.name in ("least", "greatest"):
            if d.name == "sqlite":  # SQLite's scalar min/max
                return f"{'min' if self.name == 'least' else 'max'}({', '.join(args)})"
            return f"{self.name.upper()}({', '.join(args)})"
        if self.name == "concat":
            parts = [
                a if isinstance(e, _Const) else f"CAST({a} AS TEXT)"
                for a, e in zip(args, self.args, strict=True)
            ]
            return "(" + " || ".join(parts) + ")"
        if self.name == "has_pending":
            (column,) = args
            if d.name == "sqlite":
                return (
                    f"EXISTS (SELECT 1 FROM json_each({column}) AS c"
                    " WHERE json_extract(c.value, '$.status') = 'pending')"
                )
            return f"jsonb_path_exists({column}::jsonb, '$[*] ? (@.status == \"pending\")')"
        (value,) = args  # py_repr
        if d.name == "sqlite":
            return f"sagalease_repr({value})"
        # Python's repr of a printable ASCII string, by its own rules: single quotes
        # unless the text holds ' and no "; a backslash and the chosen quote escaped.
        return (
            f"(CASE WHEN strpos({value}, '''') > 0 AND strpos({value}, '\"') = 0"
            f" THEN '\"' || replace({value}, '\\', '\\\\') || '\"'"
            f" ELSE '''' || replace(replace({value}, '\\', '\\\\'), '''', '\\''') || ''''"
            " END)"
        )

    def text(self) -> str:
        return f"{self.name}({', '.join(a.text() for a in self.args)})"

    def exact(self, d: Dialect) -> tuple[Expr, ...]:
        inner = tuple(c for a in self.args for c in a.exact(d))
        if self.name == "py_repr" and d.name == "postgres":
            # Exact for printable ASCII only; other texts are left to the Python core.
            (value,) = self.args
            return (*inner, value.is_null() | _Raw(f"({value.sql(d)} ~ '^[ -~]*$')"))
        return inner

    def params(self) -> frozenset[str]:
        return frozenset().union(*(a.params() for a in self.args))


@dataclass(frozen=True, eq=True, repr=False)
class _Raw(Expr):
    """A condition already rendered (the exactness test of :func:`py_repr`)."""

    text_: str

    def sql(self, d: Dialect) -> str:
        return self.text_

    def text(self) -> str:
        return self.text_


def col(name: str) -> Expr:
    """The task row's column ``name``."""
    return _Col(name)


def param(name: str, kind: Kind = "int") -> Expr:
    """The bound parameter ``name`` (an integer, or text)."""
    return _Param(name, kind)


def const(value: int | str | None) -> Expr:
    """A constant of the declaration (a state name, a small integer, a fixed text,
    ``NULL``), never a caller's value.
    """
    return _Const(value)


TRUE: Final[Expr] = _Raw("TRUE")
FALSE: Final[Expr] = _Raw("FALSE")


def _joined(op: Literal["AND", "OR"], parts: Iterable[Expr]) -> Expr:
    """``parts`` joined by ``op``, flattened, repeats and neutral constants dropped."""
    unit, absorbing = (TRUE, FALSE) if op == "AND" else (FALSE, TRUE)
    flat: list[Expr] = []
    for part in parts:
        for q in part.parts if isinstance(part, _Many) and part.op == op else (part,):
            if q == absorbing:
                return absorbing
            if q != unit and q not in flat:
                flat.append(q)
    if not flat:
        return unit
    return flat[0] if len(flat) == 1 else _Many(op, tuple(flat))


def all_of(*parts: Expr) -> Expr:
    """Every part holds (``TRUE`` for none)."""
    return _joined("AND", parts)


def any_of(*parts: Expr) -> Expr:
    """Some part holds (``FALSE`` for none)."""
    return _joined("OR", parts)


def case(whens: Iterable[tuple[Expr, Expr]], default: Expr) -> Expr:
    """``CASE WHEN c THEN v ... ELSE default END``: arms that cannot be taken are
    dropped, an arm that is always taken ends the list; without arms, ``default``.
    """
    arms: list[tuple[Expr, Expr]] = []
    for cond, value in whens:
        if cond == FALSE:
            continue
        if cond == TRUE:
            default = value
            break
        arms.append((cond, value))
    while arms and arms[-1][1] == default:  # the last arm gives the default anyway
        arms.pop()
    return _Case(tuple(arms), default) if arms else default


def least(*args: Expr) -> Expr:
    """The smallest of ``args`` (none may be NULL)."""
    return _Func("least", args)


def greatest(*args: Expr) -> Expr:
    """The largest of ``args`` (none may be NULL)."""
    return _Func("greatest", args)


def concat(*parts: Expr | str) -> Expr:
    """The texts of ``parts`` joined (integers written in decimal)."""
    return _Func("concat", tuple(_lift(p) for p in parts))


def py_repr(value: Expr) -> Expr:
    """Python's ``repr`` of a text column (the core writes owners that way in its
    messages): exact on SQLite (a function the store registers,
    :func:`sqlite_repr`), exact on PostgreSQL for printable ASCII (see
    :meth:`Expr.exact`).
    """
    return _Func("py_repr", (value,))


def has_pending(column: Expr) -> Expr:
    """Some compensation in the JSON array ``column`` is pending."""
    return _Func("has_pending", (column,))


def sqlite_repr(value: object) -> str | None:
    """The ``sagalease_repr`` SQL function of SQLite connections: :func:`repr` of a
    text, ``NULL`` for ``NULL``.
    """
    return None if value is None else repr(value)


def render(expr: Expr, dialect: Literal["sqlite", "postgres"], qualifier: str = "") -> str:
    """``expr`` as SQL text for ``dialect``, its columns prefixed by ``qualifier``."""
    return expr.sql(Dialect(dialect, qualifier))


def substitute(expr: Expr, values: Mapping[str, Expr]) -> Expr:
    """``expr`` with the parameters named in ``values`` replaced by those expressions."""
    if isinstance(expr, _Param):
        return values.get(expr.name, expr)
    if isinstance(expr, _Bin):  # rebuilt through the folding constructors
        left, right = substitute(expr.left, values), substitute(expr.right, values)
        return left.eq(right) if expr.op == "=" else _Bin(expr.op, left, right)
    if isinstance(expr, _Many):
        return _joined(expr.op, (substitute(p, values) for p in expr.parts))
    if isinstance(expr, _Not):
        return ~substitute(expr.inner, values)
    if isinstance(expr, _Null):
        return _Null(substitute(expr.inner, values), expr.null)
    if isinstance(expr, _Case):
        return case(
            ((substitute(c, values), substitute(v, values)) for c, v in expr.whens),
            substitute(expr.default, values),
        )
    if isinstance(expr, _Func):
        return _Func(expr.name, tuple(substitute(a, values) for a in expr.args))
    return expr
