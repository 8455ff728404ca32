"""Store URLs: the one parser (:func:`parse_url`) and ``open_store(url)``, the one
entry point that picks a backend.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from sagalease.clock import Clock
from sagalease.errors import InvalidInputError
from sagalease.store import SagaStore

DEFAULT_URL = "sqlite:///sagalease.db"

_OURS = ("schema", "clock")  # the PostgreSQL URL's parameters that libpq never sees

_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
"""libpq's URL parameters that hold a secret (masked by :func:`redact_url`)."""

MASK = "***"
"""What :func:`redact_url` shows instead of a secret."""


class Backend(enum.StrEnum):
    """The bundled backends, by URL scheme."""

    MEMORY = "memory"
    SQLITE = "sqlite"
    POSTGRES = "postgresql"


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. ``path``: the SQLite file (as given, relative paths
    stay relative); ``dsn``: the PostgreSQL URL without the store's own
    parameters; ``schema`` and ``database_clock``: those parameters.
    """

    backend: Backend
    path: Path | None = None
    dsn: str | None = None
    schema: str | None = None
    database_clock: bool = False


def parse_url(url: object) -> StoreURL:
    """Parse ``memory://``, ``sqlite:///relative.db`` / ``sqlite:////abs/path.db``
    or ``postgresql://...`` (also ``postgres://``; ``?schema=name``,
    ``?clock=database|local``). Anything else: :class:`InvalidInputError`, whose
    message never repeats a PostgreSQL URL (it may hold a password).
    """
    if not isinstance(url, str):
        raise InvalidInputError(f"store URL must be a string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInputError(f"not a store URL (expected scheme://...): {url!r}")
    if scheme == "memory":
        return StoreURL(Backend.MEMORY)
    if scheme == "sqlite":
        if not rest.startswith("/") or not rest[1:]:
            raise InvalidInputError(f"expected sqlite:///path/to/file.db, got {url!r}")
        return StoreURL(Backend.SQLITE, path=Path(rest[1:]))
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            raise InvalidInputError("not a valid postgresql:// URL (not shown)") from None
        ours = {k: v for k, v in query if k in _OURS}
        rest_query = [(k, v) for k, v in query if k not in _OURS]
        source = ours.get("clock")
        if source not in (None, "database", "local"):
            raise InvalidInputError(f"clock must be 'database' or 'local', not {source!r}")
        return StoreURL(
            Backend.POSTGRES,
            dsn=urlunsplit(parts._replace(query=urlencode(rest_query))),
            schema=ours.get("schema"),
            database_clock=source == "database",
        )
    raise InvalidInputError(
        f"unsupported store scheme {scheme!r} (supported: memory, sqlite, postgresql)"
    )


def redact_url(url: object) -> str:
    """``url`` as it may be shown (pages, logs, errors): a password in the user
    part (``postgresql://user:secret@host/db``) or in a ``password`` /
    ``sslpassword`` parameter becomes ``***``; everything else is kept. A URL
    that cannot be parsed is shown as its scheme only (``postgresql://***``), as
    it might hold a secret where the parser could not find it. ``memory://``
    and ``sqlite:///`` URLs hold no secret and are returned as given.
    """
    text = str(url)
    scheme, sep, _rest = text.partition("://")
    if not sep:
        return MASK if "@" in text or "password" in text.lower() else text
    if scheme in (Backend.MEMORY.value, Backend.SQLITE.value):
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return f"{scheme}://{MASK}"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if colon else netloc
    query = "&".join(
        f"{key}={MASK}"
        if unquote(key.replace("+", " ")).strip().lower() in _SECRET_PARAMETERS
        else pair
        for pair in parts.query.split("&")
        if pair
        for key in [pair.partition("=")[0]]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def open_store(
    url: str, *, clock: Clock | None = None, connect_timeout: float | None = None
) -> SagaStore:
    """A store for ``url`` (see :func:`parse_url`): ``memory://``,
    ``sqlite:///path/to/file.db``, ``postgresql://user@host:5432/dbname`` (needs
    the ``postgres`` extra; ``?schema=name`` picks the PostgreSQL schema, default
    ``sagalease``, and ``?clock=database`` makes calls without ``now`` use the
    server's clock).

    A bad URL: :class:`InvalidInputError`. ``clock`` (default: the system's UTC
    clock) is read when a call passes no ``now``. ``connect_timeout`` (seconds,
    PostgreSQL only; default
    :attr:`PostgresStore.connect_timeout <sagalease.stores.postgres.PostgresStore>`'s
    5 s): how long opening keeps trying a server that is briefly unavailable
    (restarting, refusing connections for now, unreachable); then one
    :class:`~sagalease.errors.StoreUnavailableError` that names the host (never the
    password). Wrong credentials or a missing database fail at once. The other
    stores open a local file or nothing, and ignore it.
    """
    if connect_timeout is not None and (
        isinstance(connect_timeout, bool)
        or not isinstance(connect_timeout, (int, float))
        or not 0 < connect_timeout < math.inf
    ):
        raise InvalidInputError(
            f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}"
        )
    parsed = parse_url(url)
    if parsed.backend is Backend.MEMORY:
        from sagalease.stores.memory import MemoryStore

        return MemoryStore(clock=clock)
    if parsed.backend is Backend.SQLITE:
        from sagalease.stores.sqlite import SQLiteStore

        assert parsed.path is not None
        return SQLiteStore(parsed.path, clock=clock)
    try:
        from sagalease.stores.postgres import DEFAULT_SCHEMA, PostgresStore
    except ImportError as exc:
        raise InvalidInputError(
            "postgresql:// stores need psycopg: pip install 'sagalease[postgres]'"
        ) from exc
    if parsed.database_clock and clock is not None:
        raise InvalidInputError("pass either clock= or ?clock=database, not both")
    assert parsed.dsn is not None
    return PostgresStore(
        parsed.dsn,
        schema=parsed.schema or DEFAULT_SCHEMA,
        clock="database" if parsed.database_clock else clock,
        connect_timeout=(
            PostgresStore.DEFAULT_CONNECT_TIMEOUT
            if connect_timeout is None
            else float(connect_timeout)
        ),
    )
