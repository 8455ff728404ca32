"""The PostgreSQL store (``postgresql://...``; needs the ``postgres`` extra).

Its schema migrations are package data beside it (``migrations/NNNN_*.sql``);
:func:`channel_name` is the channel its writes notify (``LISTEN`` to it to watch
work arrive: the payload is the queue).
"""

from sagalease.stores.postgres._store import DEFAULT_SCHEMA as DEFAULT_SCHEMA
from sagalease.stores.postgres._store import PostgresStore as PostgresStore
from sagalease.stores.postgres._store import channel_name as channel_name
from sagalease.stores.postgres._store import latest_schema_version as latest_schema_version
from sagalease.stores.postgres._store import migrations as migrations
from sagalease.stores.postgres._store import scratch_store as scratch_store

__all__ = [
    "DEFAULT_SCHEMA",
    "PostgresStore",
    "channel_name",
    "latest_schema_version",
    "migrations",
    "scratch_store",
]
