"""The bundled stores: adapters that apply the pure core atomically.

``memory`` is the reference every backend is compared with; ``sqlite`` and
``postgres`` (each a package with its schema and migrations beside it) share
the SQL shell in ``_sql`` and the row codec in ``_rows``. Pick one by URL with
:func:`open_store`.
"""

from sagalease.stores._open import DEFAULT_URL as DEFAULT_URL
from sagalease.stores._open import Backend as Backend
from sagalease.stores._open import StoreURL as StoreURL
from sagalease.stores._open import open_store as open_store
from sagalease.stores._open import parse_url as parse_url
from sagalease.stores.memory import MemoryStore as MemoryStore
from sagalease.stores.sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "DEFAULT_URL",
    "Backend",
    "MemoryStore",
    "SQLiteStore",
    "StoreURL",
    "open_store",
    "parse_url",
]
