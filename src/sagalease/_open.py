"""``open_store(url)``: the one entry point that picks a backend."""

from __future__ import annotations

from sagalease.clock import Clock
from sagalease.errors import InvalidInputError
from sagalease.store import SagaStore

DEFAULT_URL = "sqlite:///sagalease.db"


def open_store(url: str, *, clock: Clock | None = None) -> SagaStore:
    """A store for ``url``: ``memory://``, ``sqlite:///path/to/file.db``,
    ``postgresql://user@host:5432/dbname`` (also ``postgres://``; needs the
    ``postgres`` extra; ``?schema=name`` picks the PostgreSQL schema, default
    ``sagalease``, and ``?clock=database`` makes calls without ``now`` use the
    server's clock).

    An unknown scheme: :class:`InvalidInputError`. ``clock`` (default: the
    system's UTC clock) is read when a call passes no ``now``.
    """
    if not isinstance(url, str):
        raise InvalidInputError(f"store URL must be a string, not {type(url).__name__}")
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise InvalidInputError(f"not a store URL (expected scheme://...): {url!r}")
    if scheme == "memory":
        from sagalease.memory import MemoryStore

        return MemoryStore(clock=clock)
    if scheme == "sqlite":
        from sagalease.sqlite import SQLiteStore

        # sqlite:///relative/path.db, sqlite:////absolute/path.db
        if not _rest.startswith("/") or not _rest[1:]:
            raise InvalidInputError(f"expected sqlite:///path/to/file.db, got {url!r}")
        return SQLiteStore(_rest[1:], clock=clock)
    if scheme in ("postgresql", "postgres"):
        return _open_postgres(url, clock)
    raise InvalidInputError(
        f"unsupported store scheme {scheme!r} (supported: memory, sqlite, postgresql)"
    )


def _open_postgres(url: str, clock: Clock | None) -> SagaStore:
    """``postgresql://...``: the store's own query parameters (``schema``, ``clock``)
    are taken out; the rest of the URL goes to libpq unchanged.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        from sagalease.postgres import DEFAULT_SCHEMA, PostgresStore
    except ImportError as exc:
        raise InvalidInputError(
            "postgresql:// stores need psycopg: pip install 'sagalease[postgres]'"
        ) from exc
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise InvalidInputError("not a valid postgresql:// URL (not shown)") from None
    ours = {k: v for k, v in query if k in ("schema", "clock")}
    rest = [(k, v) for k, v in query if k not in ("schema", "clock")]
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    source = ours.get("clock")
    if source not in (None, "database", "local"):
        raise InvalidInputError(f"clock must be 'database' or 'local', not {source!r}")
    if source == "database" and clock is not None:
        raise InvalidInputError("pass either clock= or ?clock=database, not both")
    return PostgresStore(
        dsn,
        schema=ours.get("schema", DEFAULT_SCHEMA),
        clock="database" if source == "database" else clock,
    )
