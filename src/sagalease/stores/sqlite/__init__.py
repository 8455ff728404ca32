"""The SQLite store, the embedded default (``sqlite:///path/to/file.db``).

Its schema migrations (``migrations/NNNN_*.sql``) are package data beside it;
a new database runs them all (:func:`schema_sql` shows the result).
"""

from sagalease.stores.sqlite._store import SQLiteStore as SQLiteStore
from sagalease.stores.sqlite._store import latest_schema_version as latest_schema_version
from sagalease.stores.sqlite._store import migrations as migrations
from sagalease.stores.sqlite._store import schema_sql as schema_sql

__all__ = ["SQLiteStore", "latest_schema_version", "migrations", "schema_sql"]
