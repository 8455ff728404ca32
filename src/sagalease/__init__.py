"""sagalease: the durable record of leased tasks, fencing tokens and saga compensations.

Import everything from here; the submodules are internal unless documented.
"""

from __future__ import annotations

from sagalease._open import open_store as open_store
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
from sagalease.errors import SagaLeaseError as SagaLeaseError
from sagalease.errors import SchemaVersionError as SchemaVersionError
from sagalease.errors import ShutdownRequestedError as ShutdownRequestedError
from sagalease.errors import StoreUnavailableError as StoreUnavailableError
from sagalease.errors import TaskNotFoundError as TaskNotFoundError
from sagalease.errors import TerminalTaskError as TerminalTaskError
from sagalease.memory import MemoryStore as MemoryStore
from sagalease.records import Compensation as Compensation
from sagalease.records import CompensationStatus as CompensationStatus
from sagalease.records import HistoryEntry as HistoryEntry
from sagalease.records import Lease as Lease
from sagalease.records import Note as Note
from sagalease.records import TaskSaga as TaskSaga
from sagalease.records import TaskState as TaskState
from sagalease.sqlite import SQLiteStore as SQLiteStore
from sagalease.store import SagaStore as SagaStore
from sagalease.worker import LeaseContext as LeaseContext
from sagalease.worker import Outcome as Outcome
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
    "Note",
    "Outcome",
    "PermanentCompensationError",
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
]
