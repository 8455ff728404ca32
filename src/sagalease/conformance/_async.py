"""Async factories: a factory that returns an :class:`~sagalease.aio.AsyncSagaStore`
(or a coroutine function returning one) is run through a sync facade, so that
every check of the suite runs unchanged.

The facade drives each coroutine on a private event loop in its own thread; the
suite's threads submit their calls to that one loop, where they interleave at
the store's ``await`` points as asyncio tasks would.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from sagalease.conformance._common import Capabilities
from sagalease.store import SagaStore

__all__ = ["adapt", "adapt_capabilities"]

_R = TypeVar("_R")


class _SyncFacade:
    """An async store as a sync :class:`SagaStore` (methods generated below)."""

    def __init__(self, opened: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sagalease-conformance-loop", daemon=True
        )
        self._thread.start()
        self.inner: Any = self.run(opened) if inspect.iscoroutine(opened) else opened

    def run(self, coroutine: Coroutine[Any, Any, _R]) -> _R:
        """Run ``coroutine`` on the facade's loop; its result (or its exception)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __repr__(self) -> str:
        return f"sync facade over {self.inner!r}"

    def close(self) -> None:
        """Close the async store, then end the loop; a repeat does nothing."""
        if self._loop.is_closed():
            return
        try:
            self.run(self.inner.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


def _blocking(name: str) -> Callable[..., Any]:
    def method(self: _SyncFacade, /, *args: Any, **kwargs: Any) -> Any:
        return self.run(getattr(self.inner, name)(*args, **kwargs))

    method.__name__ = name
    return method


def _install() -> None:
    from sagalease.aio import coroutine_methods

    for name in coroutine_methods():
        if name not in vars(_SyncFacade):
            setattr(_SyncFacade, name, _blocking(name))


_install()


def _is_async_store(obj: object) -> bool:
    return inspect.iscoroutinefunction(getattr(obj, "create", None))


@dataclass(frozen=True)
class _Adapted:
    """A factory whose async stores are seen through a sync facade (picklable when
    the wrapped factory is, for the multi-process stage).
    """

    factory: Callable[[], Any]

    def __call__(self) -> SagaStore:
        made = self.factory()
        if inspect.iscoroutine(made) or _is_async_store(made):
            return cast(SagaStore, _SyncFacade(made))
        return cast(SagaStore, made)

    def __repr__(self) -> str:
        return repr(self.factory)


def adapt(factory: Callable[[], Any]) -> Callable[[], SagaStore]:
    """``factory``, its async stores (or coroutines opening one) made sync."""
    return factory if isinstance(factory, _Adapted) else _Adapted(factory)


def adapt_capabilities(caps: Capabilities) -> Capabilities:
    """The declared capabilities for the adapted factory: ``reopen`` is given the
    async store itself and its opener adapted like the factory.
    """
    reopen = caps.reopen
    if reopen is None:
        return caps

    def reopen_adapted(store: SagaStore) -> Callable[[], SagaStore]:
        inner = store.inner if isinstance(store, _SyncFacade) else store
        return adapt(reopen(inner))

    return replace(caps, reopen=reopen_adapted)
