"""sagalease: the durable record of leased tasks, fencing tokens and saga compensations.

Users import from here and from the documented subpackages:
:mod:`sagalease.stores` (backends and store URLs), :mod:`sagalease.conformance`
(the suite for your own backend), :mod:`sagalease.verification` (model checker,
history verifier, spec, simulation) and :mod:`sagalease.lifecycle` (the
declaration). Modules whose names start with ``_`` are private.
"""

from __future__ import annotations

from sagalease.clock import Clock as Clock
from sagalease.clock import ManualClock as ManualClock
from sagalease.clock import SystemClock as SystemClock
from sagalease.errors import AttemptsExhaustedError as AttemptsExhaustedError
from sagalease.errors import DuplicateTaskError as DuplicateTaskError
from sagalease.errors import InvalidInputError as InvalidInputError
from sagalease.errors import InvalidTransitionError as InvalidTransitionError
from sagalease.errors import LeaseConflictError as LeaseConflictError
from sagalease.errors import LeaseLostError as LeaseLostError
from sagalease.errors import PermanentCompensationError as PermanentCompensationError
from sagalease.errors import PermanentTaskError as PermanentTaskError
from sagalease.errors import Retry as Retry
from sagalease.errors import SagaLeaseError as SagaLeaseError
from sagalease.errors import SchemaVersionError as SchemaVersionError
from sagalease.errors import ShutdownRequestedError as ShutdownRequestedError
from sagalease.errors import StoreUnavailableError as StoreUnavailableError
from sagalease.errors import TaskNotFoundError as TaskNotFoundError
from sagalease.errors import TerminalTaskError as TerminalTaskError
from sagalease.operations import requeue as requeue
from sagalease.records import Compensation as Compensation
from sagalease.records import CompensationStatus as CompensationStatus
from sagalease.records import HistoryEntry as HistoryEntry
from sagalease.records import Lease as Lease
from sagalease.records import NewTask as NewTask
from sagalease.records import Note as Note
from sagalease.records import TaskSaga as TaskSaga
from sagalease.records import TaskState as TaskState
from sagalease.store import QueueStats as QueueStats
from sagalease.store import SagaStore as SagaStore
from sagalease.stores import MemoryStore as MemoryStore
from sagalease.stores import SQLiteStore as SQLiteStore
from sagalease.stores import open_store as open_store
from sagalease.worker import LeaseContext as LeaseContext
from sagalease.worker import Outcome as Outcome
from sagalease.worker import RetryPolicy as RetryPolicy
from sagalease.worker import Worker as Worker

__version__ = "0.1.0"

__all__ = [
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
    "PermanentCompensationError",
    "PermanentTaskError",
    "QueueStats",
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
]
