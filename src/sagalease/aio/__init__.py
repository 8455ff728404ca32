"""asyncio: async stores and an async worker over the same stores and core.

::

    from sagalease.aio import AsyncWorker, open_async_store

    store = await open_async_store("sqlite:///tasks.db")   # also "memory://", "postgresql://..."
    task = await store.create("order-1")

:class:`AsyncSagaStore` is :class:`~sagalease.store.SagaStore` with every method
a coroutine. The bundled async stores run the sync stores' own logic; only the
execution differs (SQLite on one dedicated thread per store, memory inline: see
:mod:`sagalease.aio._store`; PostgreSQL's planned statements awaited on psycopg's
async pool, the rest on threads: see :mod:`sagalease.aio._postgres`).
``import sagalease`` does not import this package (nor asyncio).
"""

from __future__ import annotations

from sagalease.aio._store import AsyncSagaStore as AsyncSagaStore
from sagalease.aio._store import coroutine_methods as coroutine_methods
from sagalease.aio._store import open_async_store as open_async_store
from sagalease.aio._store import wrap as wrap
from sagalease.aio._worker import AsyncCompensator as AsyncCompensator
from sagalease.aio._worker import AsyncHandler as AsyncHandler
from sagalease.aio._worker import AsyncLeaseContext as AsyncLeaseContext
from sagalease.aio._worker import AsyncWorker as AsyncWorker

__all__ = [
    "AsyncCompensator",
    "AsyncHandler",
    "AsyncLeaseContext",
    "AsyncSagaStore",
    "AsyncWorker",
    "coroutine_methods",
    "open_async_store",
    "wrap",
]
