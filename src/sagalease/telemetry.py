"""OpenTelemetry metrics and spans of the worker runtime and the stores (the
``[otel]`` extra; a no-op when the OpenTelemetry API is not installed).

Nothing here needs configuring: sagalease takes the meter and the tracer named
``"sagalease"`` from the OpenTelemetry API's global providers, so an application
that sets up its SDK as usual (``metrics.set_meter_provider``,
``trace.set_tracer_provider``, or the ``opentelemetry-instrument`` agent) gets
them. :func:`configure` hands sagalease explicit providers instead (tests, or an
application that keeps several). Without the OpenTelemetry API every hook is a
no-op (:data:`AVAILABLE` is false) and sagalease works exactly as it does with it.

Names follow OpenTelemetry's semantic conventions for messaging where they have
one (a task is a message, its queue the destination, ``messaging.system`` is
``"sagalease"``); what messaging lacks is named ``sagalease.*``. Metrics never
carry a task id (cardinality): their attributes are the queue and, where it
tells something, the operation and the outcome. Who reports what:

- the worker runtime (:mod:`sagalease.worker`): claims and their latency, each
  handler's and compensator's duration, the outcome counters, heartbeat lag, and
  a span per attempt (:func:`attempt`);
- every bundled store, in :class:`~sagalease.stores._base.StoreBase` (the shell
  the memory, SQLite and PostgreSQL stores share): reclaims, writes refused by
  fencing and quarantines, whoever made the call.

docs/telemetry.md lists every name with its unit and
attributes (:data:`METRICS` is the same list, checked by the tests).
"""

from __future__ import annotations

import functools
import importlib.util
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from sagalease.errors import InvalidInputError
from sagalease.records import TaskSaga, TaskState

if TYPE_CHECKING:
    from datetime import timedelta

    from opentelemetry import metrics, trace

    from sagalease.core import Step


def _importable(*names: str) -> bool:
    """Whether every module of ``names`` can be imported: found, not imported (a
    parent package that cannot be imported, or a ``None`` in ``sys.modules``: no).
    """
    try:
        return all(importlib.util.find_spec(name) is not None for name in names)
    except (ImportError, ValueError):
        return False


AVAILABLE: bool = _importable("opentelemetry.metrics", "opentelemetry.trace")
"""Whether the OpenTelemetry API (the [otel] extra) is importable. False: every hook
is a no-op. It is imported when a hook first needs it (:func:`_load`), not by
``import sagalease`` (it takes tens of milliseconds)."""


@functools.cache
def _load() -> None:
    """Import the OpenTelemetry API's ``metrics`` and ``trace`` as this module's
    globals of those names (once; every use of them comes after a call of this).
    """
    global metrics, trace
    from opentelemetry import metrics, trace  # the [otel] extra (the app brings its SDK)


class _Outcome(Protocol):
    """What an attempt's end tells (:class:`sagalease.worker.Outcome`, a higher layer)."""

    @property
    def result(self) -> str: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def retry_in(self) -> timedelta | None: ...


__all__ = [
    "AVAILABLE",
    "METRICS",
    "SYSTEM",
    "Attempt",
    "Claim",
    "MetricName",
    "attempt",
    "claim",
    "configure",
]

SYSTEM: Final = "sagalease"
"""The ``messaging.system`` attribute of every metric and span, and the meter's and
the tracer's name."""

INSTALL_HINT: Final = "sagalease telemetry needs the [otel] extra: pip install 'sagalease[otel]'"

# Attribute names (messaging semantic conventions, then sagalease's own).
MESSAGING_SYSTEM: Final = "messaging.system"
DESTINATION: Final = "messaging.destination.name"
OPERATION_NAME: Final = "messaging.operation.name"
OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGE_ID: Final = "messaging.message.id"
CLIENT_ID: Final = "messaging.client.id"
ERROR_TYPE: Final = "error.type"
LEASE_OWNER: Final = "sagalease.lease.owner"
LEASE_TOKEN: Final = "sagalease.lease.token"
ATTEMPT: Final = "sagalease.task.attempt"
SAGA_ID: Final = "sagalease.saga.id"
OUTCOME: Final = "sagalease.outcome"
STORE_OPERATION: Final = "sagalease.operation"
REASON: Final = "sagalease.reason"
RETRY_DELAY: Final = "sagalease.retry.delay"


@dataclass(frozen=True, slots=True)
class MetricName:
    """One instrument: its name, kind (``counter`` or ``histogram``), unit, who
    reports it, the attributes it carries and what it counts or measures.
    """

    name: str
    kind: str
    unit: str
    reporter: str
    attributes: tuple[str, ...]
    description: str


_QUEUE = (MESSAGING_SYSTEM, DESTINATION)

CLAIMS: Final = MetricName(
    "messaging.client.consumed.messages",
    "counter",
    "{message}",
    "worker",
    (*_QUEUE, OPERATION_NAME),
    "Tasks the worker claimed (operation claim_next, or acquire for run_one(task_id)).",
)
CLAIM_DURATION: Final = MetricName(
    "messaging.client.operation.duration",
    "histogram",
    "s",
    "worker",
    (*_QUEUE, OPERATION_NAME, ERROR_TYPE),
    "How long each claim call took, found or not (no queue when nothing was claimed;"
    " error.type when the store raised).",
)
PROCESS_DURATION: Final = MetricName(
    "messaging.process.duration",
    "histogram",
    "s",
    "worker",
    (*_QUEUE, OPERATION_NAME, ERROR_TYPE),
    "How long each handler call (operation process) or compensator call (compensate)"
    " ran; error.type is the class of the exception it raised.",
)
COMPLETIONS: Final = MetricName(
    "sagalease.worker.completions",
    "counter",
    "{task}",
    "worker",
    (*_QUEUE, OPERATION_NAME),
    "Attempts that ended with the task completed (outcome completed).",
)
FAILURES: Final = MetricName(
    "sagalease.worker.failures",
    "counter",
    "{task}",
    "worker",
    (*_QUEUE, OPERATION_NAME, OUTCOME, ERROR_TYPE),
    "Forward attempts that failed the task: outcome failed (FAILED) or compensating"
    " (compensations owed).",
)
RETRIES: Final = MetricName(
    "sagalease.worker.retries",
    "counter",
    "{attempt}",
    "worker",
    (*_QUEUE, OPERATION_NAME, ERROR_TYPE),
    "Attempts handed back to run again (outcome retried: an exception with attempts left,"
    " or Retry).",
)
LOST_LEASES: Final = MetricName(
    "sagalease.worker.lost_leases",
    "counter",
    "{lease}",
    "worker",
    (*_QUEUE, OPERATION_NAME),
    "Attempts that stopped because the lease was lost and wrote nothing (outcome lost).",
)
FENCED: Final = MetricName(
    "sagalease.worker.fenced",
    "counter",
    "{attempt}",
    "worker",
    (*_QUEUE, OPERATION_NAME),
    "Attempts whose finishing write was fenced: refused because the lease was lost, or"
    " its outcome unknown until the lease's known expiry (outcome fenced).",
)
HEARTBEAT_LAG: Final = MetricName(
    "sagalease.worker.heartbeat.lag",
    "histogram",
    "s",
    "worker",
    _QUEUE,
    "For each heartbeat the store granted: how long after it was due it was granted. Due"
    " is heartbeat_interval after the previous granted heartbeat of the lease (the first:"
    " after the heartbeat thread started, right after the claim); granted is when the"
    " store's answer came back, on the worker's monotonic clock; never below 0. It"
    " includes the call's own latency and every failed try in between: a lag near"
    " ttl - heartbeat_interval means the lease nearly ran out.",
)
RECLAIMS: Final = MetricName(
    "sagalease.store.reclaims",
    "counter",
    "{lease}",
    "store",
    (*_QUEUE, STORE_OPERATION),
    "Acquisitions (acquire, claim_next, claim_batch) that replaced an expired lease that"
    " no one had released or reaped (the core counts it as one expiration).",
)
FENCED_WRITES: Final = MetricName(
    "sagalease.store.fenced_writes",
    "counter",
    "{write}",
    "store",
    (*_QUEUE, STORE_OPERATION),
    "Holder writes (heartbeat, release, register_compensation, complete, complete_many,"
    " fail, compensation_applied, compensation_failed) the store refused with"
    " LeaseConflictError: the caller's (owner, token) is not the live lease.",
)
QUARANTINES: Final = MetricName(
    "sagalease.store.quarantines",
    "counter",
    "{task}",
    "store",
    (*_QUEUE, STORE_OPERATION),
    "Tasks moved to QUARANTINED: by the reaper (reap: attempts used up), an operator"
    " (quarantine) or a permanent compensation failure (compensation_failed).",
)

METRICS: Final = (
    CLAIMS,
    CLAIM_DURATION,
    PROCESS_DURATION,
    COMPLETIONS,
    FAILURES,
    RETRIES,
    LOST_LEASES,
    FENCED,
    HEARTBEAT_LAG,
    RECLAIMS,
    FENCED_WRITES,
    QUARANTINES,
)
"""Every instrument sagalease creates, as documented in docs/telemetry.md."""

_SECONDS_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""The boundaries the messaging conventions give their duration histograms."""

_PROCESS_BUCKETS: Final = (*_SECONDS_BUCKETS, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Handlers run longer than client calls: the same, plus minutes to an hour."""

_ERROR_OUTCOMES: Final = frozenset({"failed", "compensating", "quarantined", "fenced", "lost"})
"""Outcomes whose attempt span gets the status ERROR."""

_MAX_TEXT = 500


# ---------------------------------------------------------------- providers


class _Live:
    """The instruments and the tracer of one configuration (built on first use)."""

    def __init__(self, meter_provider: Any, tracer_provider: Any) -> None:
        _load()
        meter = metrics.get_meter(SYSTEM, _version(), meter_provider=meter_provider)
        self.tracer = trace.get_tracer(SYSTEM, _version(), tracer_provider=tracer_provider)
        counter, histogram = meter.create_counter, meter.create_histogram

        def count(m: MetricName) -> metrics.Counter:
            return counter(m.name, unit=m.unit, description=m.description)

        def seconds(m: MetricName, buckets: tuple[float, ...]) -> metrics.Histogram:
            return histogram(
                m.name,
                unit=m.unit,
                description=m.description,
                explicit_bucket_boundaries_advisory=buckets,
            )

        self.claims = count(CLAIMS)
        self.claim_duration = seconds(CLAIM_DURATION, _SECONDS_BUCKETS)
        self.process_duration = seconds(PROCESS_DURATION, _PROCESS_BUCKETS)
        self.completions = count(COMPLETIONS)
        self.failures = count(FAILURES)
        self.retries = count(RETRIES)
        self.lost_leases = count(LOST_LEASES)
        self.fenced = count(FENCED)
        self.heartbeat_lag = seconds(HEARTBEAT_LAG, _SECONDS_BUCKETS)
        self.reclaims = count(RECLAIMS)
        self.fenced_writes = count(FENCED_WRITES)
        self.quarantines = count(QUARANTINES)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sagalease")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return ""


_providers: tuple[Any, Any] = (None, None)
_live: _Live | None = None
_live_lock = threading.Lock()


def configure(*, meter_provider: Any = None, tracer_provider: Any = None) -> None:
    """Take metrics from ``meter_provider`` and spans from ``tracer_provider``
    (``None``: the OpenTelemetry API's global provider, the default). Each call
    replaces the previous configuration for every store and worker of the
    process; ``configure()`` goes back to the global providers.

    A provider that is not an OpenTelemetry ``MeterProvider`` /
    ``TracerProvider``: :class:`~sagalease.errors.InvalidInputError` and nothing
    changes. Without the OpenTelemetry API, ``configure()`` does nothing and a
    provider raises :class:`~sagalease.errors.InvalidInputError` naming the extra.
    """
    global _providers, _live
    if not AVAILABLE:
        if meter_provider is not None or tracer_provider is not None:
            raise InvalidInputError(INSTALL_HINT)
        return
    _load()
    if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
        raise InvalidInputError(
            f"meter_provider must be an OpenTelemetry MeterProvider, not {meter_provider!r}"
        )
    if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
        raise InvalidInputError(
            f"tracer_provider must be an OpenTelemetry TracerProvider, not {tracer_provider!r}"
        )
    with _live_lock:
        _providers = (meter_provider, tracer_provider)
        _live = None


def _current() -> _Live:
    global _live
    live = _live
    if live is None:
        with _live_lock:
            if _live is None:
                _live = _Live(*_providers)
            live = _live
    return live


def _attrs(queue: str | None) -> dict[str, Any]:
    if queue is None:
        return {MESSAGING_SYSTEM: SYSTEM}
    return {MESSAGING_SYSTEM: SYSTEM, DESTINATION: queue}


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


# ---------------------------------------------------------------- worker: claims


class Claim:
    """One claim call of the worker (``with claim(...) as c: ...; c.claimed(task)``):
    its duration, and the task it claimed. This base class is the no-op.
    """

    __slots__ = ()

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def claimed(self, task: TaskSaga | None) -> None:
        """The call returned ``task`` (``None``: nothing was claimable)."""


_NO_CLAIM: Final = Claim()


class _LiveClaim(Claim):
    __slots__ = ("_live", "_operation", "_queue", "_started")

    def __init__(self, live: _Live, operation: str) -> None:
        self._live = live
        self._operation = operation
        self._queue: str | None = None
        self._started = 0.0

    def __enter__(self) -> Claim:
        self._started = time.perf_counter()
        return self

    def claimed(self, task: TaskSaga | None) -> None:
        if task is not None:
            self._queue = task.queue
            attributes = _attrs(task.queue)
            attributes[OPERATION_NAME] = self._operation
            self._live.claims.add(1, attributes)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        attributes = _attrs(self._queue)
        attributes[OPERATION_NAME] = self._operation
        if exc is not None:
            attributes[ERROR_TYPE] = _error_type(exc)
        self._live.claim_duration.record(time.perf_counter() - self._started, attributes)


def claim(operation: str) -> Claim:
    """Measure one claim call of the worker runtime (``claim_next`` or ``acquire``)."""
    if not AVAILABLE:
        return _NO_CLAIM
    return _LiveClaim(_current(), operation)


# ---------------------------------------------------------------- worker: attempts


class Attempt:
    """One attempt of the worker runtime on one leased task: its span (current
    in the worker's thread while the attempt runs, so that the handler's own
    spans are its children), the duration of the user code it runs, its
    heartbeats' lag and its outcome. This base class is the no-op.
    """

    __slots__ = ()

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def user_code(self) -> _UserCode:
        """A context around one handler or compensator call: its duration and any
        exception it raised (which still propagates).
        """
        return _NO_USER_CODE

    def heartbeat(self, lag: float) -> None:
        """A heartbeat was granted ``lag`` seconds after it was due (see :data:`HEARTBEAT_LAG`)."""

    def finish(self, outcome: _Outcome) -> None:
        """The attempt ended with ``outcome``: count it and close the span's story."""


class _UserCode:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NO_USER_CODE: Final = _UserCode()
NO_ATTEMPT: Final = Attempt()
"""The attempt of a :class:`~sagalease.worker.LeaseContext` the runtime does not observe."""


class _LiveUserCode(_UserCode):
    __slots__ = ("_attempt", "_started")

    def __init__(self, attempt: _LiveAttempt) -> None:
        self._attempt = attempt
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        at = self._attempt
        attributes = dict(at.attributes)
        if exc is not None:
            at.error_type = attributes[ERROR_TYPE] = _error_type(exc)
            at.span.record_exception(exc)
        at.live.process_duration.record(time.perf_counter() - self._started, attributes)


class _LiveAttempt(Attempt):
    __slots__ = ("_scope", "attributes", "error_type", "live", "span")

    def __init__(self, live: _Live, task: TaskSaga, owner: str) -> None:
        self.live = live
        operation = "compensate" if task.state is TaskState.COMPENSATING else "process"
        self.attributes: Mapping[str, Any] = MappingProxyType(
            {**_attrs(task.queue), OPERATION_NAME: operation}
        )
        self.error_type: str | None = None
        lease = task.lease
        span_attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: SYSTEM,
            OPERATION_TYPE: "process",
            OPERATION_NAME: operation,
            DESTINATION: task.queue,
            MESSAGE_ID: task.task_id,
            CLIENT_ID: owner,
            LEASE_OWNER: owner,
            LEASE_TOKEN: task.token if lease is None else lease.token,
            ATTEMPT: task.attempts,
        }
        if task.saga_id is not None:
            span_attributes[SAGA_ID] = task.saga_id
        self.span = live.tracer.start_span(
            f"{operation} {task.queue}", kind=trace.SpanKind.CONSUMER, attributes=span_attributes
        )
        self._scope: Any = None

    def __enter__(self) -> Attempt:
        self._scope = trace.use_span(self.span, end_on_exit=True)
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scope.__exit__(exc_type, exc, tb)

    def user_code(self) -> _UserCode:
        return _LiveUserCode(self)

    def heartbeat(self, lag: float) -> None:
        self.live.heartbeat_lag.record(lag, {k: self.attributes[k] for k in _QUEUE})

    def finish(self, outcome: _Outcome) -> None:
        result, detail = outcome.result, _cut(outcome.detail)
        span, live, attributes = self.span, self.live, self.attributes
        span.set_attribute(OUTCOME, result)
        if result == "retried":
            event: dict[str, Any] = {REASON: detail}
            if outcome.retry_in is not None:
                event[RETRY_DELAY] = outcome.retry_in.total_seconds()
            span.add_event("sagalease.retry", event)
            live.retries.add(1, self._with_error(attributes))
        elif result == "completed":
            live.completions.add(1, attributes)
        elif result == "fenced":
            span.add_event("sagalease.fenced", {REASON: detail})
            live.fenced.add(1, attributes)
        elif result == "lost":
            span.add_event("sagalease.lease_lost", {REASON: detail})
            live.lost_leases.add(1, attributes)
        elif result in ("failed", "compensating") and attributes[OPERATION_NAME] == "process":
            live.failures.add(1, self._with_error({**attributes, OUTCOME: result}))
        if result in _ERROR_OUTCOMES:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{result}: {detail}"))

    def _with_error(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(attributes)
        if self.error_type is not None:
            out[ERROR_TYPE] = self.error_type
        return out


def _cut(text: str | None) -> str:
    return "" if text is None else text[:_MAX_TEXT]


def attempt(task: TaskSaga, owner: str) -> Attempt:
    """The observed attempt of ``owner`` on ``task`` (just leased to it); enter it
    in the thread that runs the handler.
    """
    if not AVAILABLE:
        return NO_ATTEMPT
    return _LiveAttempt(_current(), task, owner)


# ---------------------------------------------------------------- stores

_acquired = threading.local()  # per thread: the reclaiming steps of the store call running


def watch_reclaims(
    handlers: Mapping[str, Callable[..., Step]],
) -> Mapping[str, Callable[..., Step]]:
    """``handlers`` (the core's event functions) with ``acquire`` noting, for the
    store call running in this thread (:func:`count_reclaims`), each step that
    replaced an expired lease (the core counted one expiration). A step that
    is computed but not written (a stale remembered record, a refused batch)
    is noted too: :func:`count_reclaims` counts only the records the call
    returned.
    """
    acquire = handlers["acquire"]

    def observed(task: TaskSaga, **kwargs: Any) -> Step:
        step = acquire(task, **kwargs)
        if step.task.expirations != task.expirations:
            note_reclaim(step.task)
        return step

    return MappingProxyType({**handlers, "acquire": observed})


def note_reclaim(task: TaskSaga) -> None:
    """Note, for :func:`count_reclaims`, that ``task`` was acquired over an expired
    lease (by the core, or by a statement rendered from it).
    """
    noted: list[TaskSaga] | None = getattr(_acquired, "steps", None)
    if noted is not None:
        noted.append(task)


def count_reclaims(operation: str, run: Callable[[], list[TaskSaga]]) -> list[TaskSaga]:
    """Run the store's acquisition ``run`` and count the records it returns
    whose acquisition replaced an expired lease (:func:`watch_reclaims`).
    """
    if not AVAILABLE:
        return run()
    outer = getattr(_acquired, "steps", None)
    noted: list[TaskSaga] = []
    _acquired.steps = noted
    try:
        tasks = run()
    finally:
        _acquired.steps = outer
    if noted:
        counter = _current().reclaims
        for task in tasks:
            if any(task is step_task for step_task in noted):
                counter.add(1, {**_attrs(task.queue), STORE_OPERATION: operation})
    return tasks


def fenced_write(operation: str, queue: str | None) -> None:
    """A holder write ``operation`` on a task of ``queue`` was refused by fencing."""
    if AVAILABLE:
        _current().fenced_writes.add(1, {**_attrs(queue), STORE_OPERATION: operation})


def quarantines(operation: str, tasks: Collection[TaskSaga]) -> None:
    """Count the ``tasks`` that ``operation`` left QUARANTINED."""
    if AVAILABLE:
        counter = None
        for task in tasks:
            if task.state is TaskState.QUARANTINED:
                counter = _current().quarantines if counter is None else counter
                counter.add(1, {**_attrs(task.queue), STORE_OPERATION: operation})
