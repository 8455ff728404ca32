"""The public surface is small, explicit and pinned."""

from __future__ import annotations

import sagalease

EXPECTED = {
    "AttemptsExhaustedError",
    "Clock",
    "Compensation",
    "CompensationStatus",
    "DuplicateTaskError",
    "HistoryEntry",
    "InvalidInputError",
    "InvalidTransitionError",
    "Lease",
    "LeaseConflictError",
    "LeaseContext",
    "LeaseLostError",
    "ManualClock",
    "MemoryStore",
    "NewTask",
    "Note",
    "Outcome",
    "QueueStats",
    "PermanentCompensationError",
    "PermanentTaskError",
    "Retry",
    "RetryPolicy",
    "SQLiteStore",
    "SagaLeaseError",
    "SagaStore",
    "SchemaVersionError",
    "ShutdownRequestedError",
    "StoreUnavailableError",
    "SystemClock",
    "TaskNotFoundError",
    "TaskSaga",
    "TaskState",
    "TerminalTaskError",
    "Worker",
    "__version__",
    "open_store",
    "requeue",
}


def test_all_is_pinned() -> None:
    """`sagalease.__all__` is exactly the documented public API."""
    assert set(sagalease.__all__) == EXPECTED


def test_every_public_name_is_exported() -> None:
    """Every name in `__all__` is importable from the top-level package."""
    for name in sagalease.__all__:
        assert hasattr(sagalease, name), name


def test_errors_share_one_base() -> None:
    """Every error class exported derives from SagaLeaseError."""
    errors = [
        getattr(sagalease, n)
        for n in sagalease.__all__
        if n.endswith("Error") and n != "SagaLeaseError"
    ]
    assert errors
    for cls in errors:
        assert issubclass(cls, sagalease.SagaLeaseError), cls


def test_memory_store_satisfies_protocol() -> None:
    """The reference store implements the SagaStore protocol."""
    assert isinstance(sagalease.open_store("memory://"), sagalease.SagaStore)
