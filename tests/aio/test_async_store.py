"""The async store port: the protocol is the sync one made coroutines, and the
bundled async stores run the sync stores' calls (SQLite on its own thread).
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from sagalease.aio import AsyncSagaStore, coroutine_methods, open_async_store
from sagalease.errors import DuplicateTaskError, InvalidInputError, LeaseConflictError
from sagalease.records import TaskState
from sagalease.store import SagaStore

TTL = timedelta(seconds=30)


def _sync_methods() -> dict[str, inspect.Signature]:
    """SagaStore's methods and signatures, read from the class."""
    return {
        name: inspect.signature(value)
        for name, value in vars(SagaStore).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }


def test_protocol_has_exactly_the_sync_methods_as_coroutines() -> None:
    """Protocol has exactly the sync methods as coroutines."""
    sync = _sync_methods()
    assert set(coroutine_methods()) == set(sync)
    for name, signature in sync.items():
        member = getattr(AsyncSagaStore, name)
        assert inspect.iscoroutinefunction(member), name
        assert inspect.signature(member) == signature, name
        assert member.__doc__ == getattr(SagaStore, name).__doc__


def test_the_adapters_are_coroutines_with_every_method() -> None:
    """The adapters are coroutines with every method."""

    async def main() -> None:
        for url in ("memory://", "sqlite:///:memory-test.db"):
            store = await open_async_store(url)
            try:
                assert isinstance(store, AsyncSagaStore)
                for name in coroutine_methods():
                    assert inspect.iscoroutinefunction(getattr(store, name)), (url, name)
            finally:
                await store.close()

    asyncio.run(main())
    Path(":memory-test.db").unlink(missing_ok=True)


@pytest.mark.parametrize("scheme", ["memory", "sqlite"])
def test_a_lease_cycle_and_errors(tmp_path: Path, scheme: str) -> None:
    """A lease cycle and errors."""
    url = "memory://" if scheme == "memory" else f"sqlite:///{tmp_path / 'a.db'}"

    async def main() -> None:
        store = await open_async_store(url)
        try:
            await store.create("t1", metadata={"n": 1})
            with pytest.raises(DuplicateTaskError):
                await store.create("t1")
            task = await store.claim_next(owner="w", ttl=TTL)
            assert task is not None
            assert task.token == 1
            with pytest.raises(LeaseConflictError):
                await store.complete("t1", owner="x", token=1)
            done = await store.complete("t1", owner="w", token=1)
            assert done.state is TaskState.COMPLETED
            assert [e.event for e in await store.history("t1")] == [
                "create",
                "acquire",
                "complete",
            ]
        finally:
            await store.close()
            await store.close()  # harmless

    asyncio.run(main())


def test_sqlite_calls_run_on_one_dedicated_thread(tmp_path: Path) -> None:
    """Sqlite calls run on one dedicated thread."""

    async def main() -> None:
        store = await open_async_store(f"sqlite:///{tmp_path / 'a.db'}")
        inner = store.inner  # type: ignore[attr-defined]
        seen: set[int] = set()
        original = inner.get

        def spy(task_id: str) -> object:
            seen.add(threading.get_ident())
            return original(task_id)

        inner.get = spy
        try:
            await asyncio.gather(*(store.get(f"t{i}") for i in range(20)))
        finally:
            await store.close()
        assert len(seen) == 1
        assert threading.get_ident() not in seen

    asyncio.run(main())


def test_bad_urls_and_options_are_refused_as_open_store_refuses_them() -> None:
    """Bad urls and options are refused as open store refuses them."""
    with pytest.raises(InvalidInputError, match="unsupported store scheme"):
        asyncio.run(open_async_store("redis://x"))
    with pytest.raises(InvalidInputError, match="connect_timeout"):
        asyncio.run(open_async_store("memory://", connect_timeout=-1))


def test_import_sagalease_does_not_import_the_aio_package() -> None:
    """Not even lazily; asyncio itself comes with python-statemachine, a dependency."""
    code = (
        "import sys, sagalease; from sagalease import open_store;"
        " open_store('memory://').close();"
        " print(sorted(m for m in sys.modules if m.startswith('sagalease.aio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_outside_aio_imports_asyncio() -> None:
    """No module outside aio imports asyncio."""
    src = Path(__file__).parents[2] / "src" / "sagalease"
    offenders = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "aio" not in path.relative_to(src).parts
        and "conformance" not in path.relative_to(src).parts  # the async facade, lazily
        and any(
            line.strip() in ("import asyncio",) or line.strip().startswith("from asyncio")
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
