"""``open_store(url)``: the one entry point that picks a backend."""

from __future__ import annotations

from sagalease.clock import Clock
from sagalease.errors import InvalidInputError
from sagalease.store import SagaStore

DEFAULT_URL = "sqlite:///sagalease.db"


def open_store(url: str, *, clock: Clock | None = None) -> SagaStore:
    """A store for ``url``: ``memory://``, ``sqlite:///path/to/file.db``.

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
    raise InvalidInputError(f"unsupported store scheme {scheme!r} (supported: memory, sqlite)")
