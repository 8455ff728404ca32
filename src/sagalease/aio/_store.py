"""The async store port and its adapters over the sync stores.

:class:`AsyncSagaStore` has exactly the methods of
:class:`~sagalease.store.SagaStore`, each a coroutine with the same parameters
and result: every member below is *declared from* the sync method
(:func:`_coroutine_of`), so the two cannot drift apart, and mypy checks calls
and implementations against the sync signature.

The bundled async stores are the sync stores driven differently
(:class:`_AsyncAdapter`): the store logic (engine, SQL, row codec, core) is the
sync store's; only where its calls run differs.

- SQLite: every call runs on one dedicated thread per store (what aiosqlite
  does), so file I/O and the writer lock's wait (``busy_timeout``, ``flock``)
  happen there and never block the event loop. Calls of one store are run one
  after another, in the order they were awaited.
- PostgreSQL: not this adapter but :mod:`sagalease.aio._postgres`: the sync
  store's calls with their hot-path statements awaited on psycopg's async pool,
  the rest on threads.
- memory: the calls run inline, on the event loop. They are in-process and
  short (a dict update under a lock that no call holds for longer than one
  core step, and never across an I/O wait), so running them inline costs less
  than a thread hop, keeps the reference store's order exactly the order of
  the awaits, and cannot stall the loop for longer than one such step.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

from sagalease.clock import Clock
from sagalease.errors import InvalidInputError
from sagalease.store import SagaStore
from sagalease.stores import open_store
from sagalease.stores._open import Backend, parse_url

__all__ = ["AsyncSagaStore", "coroutine_methods", "open_async_store"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C")


def _coroutine_of(
    method: Callable[Concatenate[Any, _P], _R],
) -> Callable[[Callable[..., object]], Callable[Concatenate[Any, _P], Coroutine[Any, Any, _R]]]:
    """Declare a member of :class:`AsyncSagaStore` as ``method`` of the sync
    protocol made a coroutine: the same name, parameters, defaults and docstring,
    the result awaited. The decorated ``def`` only gives the member its name,
    which must be the sync method's.
    """

    def declare(
        named: Callable[..., object],
    ) -> Callable[Concatenate[Any, _P], Coroutine[Any, Any, _R]]:
        if named.__name__ != method.__name__:  # pragma: no cover - a typo here
            raise TypeError(f"{named.__name__} declared from SagaStore.{method.__name__}")

        async def member(self: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            raise NotImplementedError  # a protocol member: implementations define it

        member.__name__ = method.__name__
        member.__doc__ = method.__doc__
        member.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
        member.__qualname__ = f"AsyncSagaStore.{method.__name__}"
        return member

    return declare


@runtime_checkable
class AsyncSagaStore(Protocol):
    """:class:`~sagalease.store.SagaStore` with every method a coroutine (``await
    store.create(...)``); the same parameters, results, errors and atomicity.
    ``await store.close()`` releases the store (for a threaded store: its thread).
    """

    @_coroutine_of(SagaStore.create)
    def create(self) -> None: ...

    @_coroutine_of(SagaStore.create_many)
    def create_many(self) -> None: ...

    @_coroutine_of(SagaStore.get)
    def get(self) -> None: ...

    @_coroutine_of(SagaStore.acquire)
    def acquire(self) -> None: ...

    @_coroutine_of(SagaStore.claim_next)
    def claim_next(self) -> None: ...

    @_coroutine_of(SagaStore.claim_batch)
    def claim_batch(self) -> None: ...

    @_coroutine_of(SagaStore.heartbeat)
    def heartbeat(self) -> None: ...

    @_coroutine_of(SagaStore.release)
    def release(self) -> None: ...

    @_coroutine_of(SagaStore.register_compensation)
    def register_compensation(self) -> None: ...

    @_coroutine_of(SagaStore.complete)
    def complete(self) -> None: ...

    @_coroutine_of(SagaStore.complete_many)
    def complete_many(self) -> None: ...

    @_coroutine_of(SagaStore.fail)
    def fail(self) -> None: ...

    @_coroutine_of(SagaStore.compensation_applied)
    def compensation_applied(self) -> None: ...

    @_coroutine_of(SagaStore.compensation_failed)
    def compensation_failed(self) -> None: ...

    @_coroutine_of(SagaStore.quarantine)
    def quarantine(self) -> None: ...

    @_coroutine_of(SagaStore.annotate)
    def annotate(self) -> None: ...

    @_coroutine_of(SagaStore.reap)
    def reap(self) -> None: ...

    @_coroutine_of(SagaStore.list_stale)
    def list_stale(self) -> None: ...

    @_coroutine_of(SagaStore.list_tasks)
    def list_tasks(self) -> None: ...

    @_coroutine_of(SagaStore.history)
    def history(self) -> None: ...

    @_coroutine_of(SagaStore.counts)
    def counts(self) -> None: ...

    @_coroutine_of(SagaStore.queue_stats)
    def queue_stats(self) -> None: ...

    @_coroutine_of(SagaStore.close)
    def close(self) -> None: ...


def coroutine_methods(protocol: type = AsyncSagaStore) -> tuple[str, ...]:
    """The names of ``protocol``'s coroutine members, in declaration order."""
    return tuple(
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    )


# ---------------------------------------------------------------- running sync calls


class _Inline:
    """Runs a call at once, on the event loop (the memory store: see the module)."""

    async def run(self, call: Callable[[], _R]) -> _R:
        return call()

    def shutdown(self) -> None:
        """Nothing to release."""


class _Thread:
    """Runs calls one at a time on one dedicated thread, the awaiting task
    suspended meanwhile; the caller's context variables go with each call.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, call: Callable[[], _R]) -> _R:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, context.run, call)

    def shutdown(self) -> None:
        """Let the thread finish the calls it was given, then end it."""
        self._executor.shutdown(wait=True)


_Runner = _Inline | _Thread


class _AsyncAdapter:
    """A sync :class:`~sagalease.store.SagaStore` as an :class:`AsyncSagaStore`:
    each protocol method (generated below, one loop over the protocol) runs the
    sync store's method through the runner.
    """

    def __init__(self, inner: SagaStore, runner: _Runner) -> None:
        self.inner = inner
        """The sync store whose logic every call runs."""
        self._runner = runner
        self._closed = False

    def __repr__(self) -> str:
        return f"async {self.inner!r}"

    async def _forward(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The sync store's ``name`` run through the runner."""
        return await self._runner.run(functools.partial(getattr(self.inner, name), *args, **kwargs))

    @property
    def clock(self) -> object:
        """The sync store's clock (what a worker reads for the store's time)."""
        return getattr(self.inner, "clock", None)

    async def close(self) -> None:
        """Close the sync store on its runner, then end the runner; a repeat does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._runner.run(self.inner.close)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self._runner.shutdown)


def _forwarding(name: str, owner: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def method(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        return await self._forward(name, args, kwargs)

    method.__name__ = name
    method.__qualname__ = f"{owner}.{name}"
    method.__doc__ = f"``await`` :meth:`SagaStore.{name} <sagalease.store.SagaStore.{name}>`."
    return method


def install_forwarding(cls: type[_C]) -> type[_C]:
    """Give ``cls`` every :class:`AsyncSagaStore` method it does not define itself,
    each a coroutine awaiting ``self._forward(name, args, kwargs)``.
    """
    for name in coroutine_methods():
        if name not in vars(cls):
            setattr(cls, name, _forwarding(name, cls.__name__))
    return cls


install_forwarding(_AsyncAdapter)


def wrap(store: SagaStore, *, threaded: bool = True) -> AsyncSagaStore:
    """``store`` (a sync store already open) as an :class:`AsyncSagaStore`: its
    calls run on a dedicated thread (``threaded``) or inline on the event loop
    (only for a store whose calls never wait on I/O, like the memory store).
    """
    runner: _Runner = _Thread(f"sagalease-{type(store).__name__}") if threaded else _Inline()
    return cast(AsyncSagaStore, _AsyncAdapter(store, runner))


async def open_async_store(
    url: str, *, clock: Clock | None = None, connect_timeout: float | None = None
) -> AsyncSagaStore:
    """The async store for ``url``: the same URLs and options as
    :func:`~sagalease.stores.open_store` (parsed by the same parser), opened
    without blocking the event loop. ``memory://``: the memory store, its calls
    inline; ``sqlite:///path``: the SQLite store on a dedicated thread, which
    also opens (and migrates) the file.

    ``postgresql://...``: the PostgreSQL store's logic with its hot path awaited
    on psycopg's async pool and its other calls on threads (see
    :mod:`sagalease.aio._postgres`); it also offers ``await
    store.wait_for_work(...)``, which :class:`~sagalease.aio.AsyncWorker` awaits
    when idle. A bad URL or option: as :func:`~sagalease.stores.open_store` says.
    """
    parsed = parse_url(url)
    loop = asyncio.get_running_loop()
    if parsed.backend is Backend.POSTGRES:
        try:
            # psycopg's first import takes a few hundred ms: not on the loop.
            module = await loop.run_in_executor(
                None, importlib.import_module, "sagalease.aio._postgres"
            )
        except ImportError as exc:
            raise InvalidInputError(
                "postgresql:// stores need psycopg: pip install 'sagalease[postgres]'"
            ) from exc
        return cast(
            AsyncSagaStore,
            await module.open_async_postgres(url, clock=clock, connect_timeout=connect_timeout),
        )
    opening = functools.partial(open_store, url, clock=clock, connect_timeout=connect_timeout)
    if parsed.backend is Backend.MEMORY:
        return wrap(opening(), threaded=False)
    runner = _Thread("sagalease-sqlite")
    try:
        store = await runner.run(opening)
    except BaseException:
        await loop.run_in_executor(None, runner.shutdown)
        raise
    return cast(AsyncSagaStore, _AsyncAdapter(store, runner))
