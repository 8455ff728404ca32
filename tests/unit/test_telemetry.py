"""OpenTelemetry metrics and spans, read with the SDK's in-memory reader and exporter:
a scripted worker run on a memory store whose every counter moves by exactly the
events that happened; the store-level counters on every backend; heartbeat lag; the
span per attempt and its children; configure(); and the no-op without OpenTelemetry
(the checks are shown to catch broken hooks).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import T0
from sagalease import (
    Compensation,
    InvalidInputError,
    LeaseConflictError,
    LeaseContext,
    ManualClock,
    MemoryStore,
    PermanentTaskError,
    Retry,
    SagaStore,
    TaskSaga,
    TaskState,
    Worker,
)
from sagalease import telemetry as tm

GUARD = 60.0
"""Seconds after which a wait is a hang, not an answer (never a tested threshold)."""

LONG = timedelta(hours=1)
"""A TTL whose heartbeats (every 20 minutes) never come during a test."""

Key = tuple[Any, ...]


@dataclass
class Otel:
    """The SDK's in-memory reader and exporter behind one test's providers."""

    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider

    def points(self, name: str) -> list[Any]:
        """Every data point of the metric ``name`` (none if it never recorded)."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in [] if data is None else data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def sums(self, metric: tm.MetricName, *keys: str) -> dict[Key, int]:
        """The counter's totals by the values of the attributes ``keys`` (zeros left out);
        every point's attributes must be among those documented, and never a task id.
        """
        assert metric.kind == "counter"
        totals: Counter[Key] = Counter()
        for point in self.points(metric.name):
            attributes = dict(point.attributes)
            _documented(metric, attributes)
            totals[tuple(attributes.get(k) for k in keys)] += int(point.value)
        return {k: v for k, v in totals.items() if v}

    def counts(self, metric: tm.MetricName, *keys: str) -> dict[Key, int]:
        """The histogram's sample counts by the values of the attributes ``keys``."""
        assert metric.kind == "histogram"
        totals: Counter[Key] = Counter()
        for point in self.points(metric.name):
            assert isinstance(point, HistogramDataPoint)
            attributes = dict(point.attributes or {})
            _documented(metric, attributes)
            totals[tuple(attributes.get(k) for k in keys)] += point.count
        return {k: v for k, v in totals.items() if v}

    def spans(self) -> list[ReadableSpan]:
        """The finished spans, in the order they ended."""
        return list(self.exporter.get_finished_spans())


def _documented(metric: tm.MetricName, attributes: dict[str, Any]) -> None:
    assert set(attributes) <= set(metric.attributes), (metric.name, attributes)
    assert attributes[tm.MESSAGING_SYSTEM] == "sagalease"
    assert tm.MESSAGE_ID not in attributes


@pytest.fixture
def otel() -> Iterator[Otel]:
    """Fresh SDK providers for sagalease (never the process-global ones), given back to
    the global providers afterwards.
    """
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tm.configure(meter_provider=meter_provider, tracer_provider=tracer_provider)
    try:
        yield Otel(reader, exporter, tracer_provider)
    finally:
        tm.configure()
        meter_provider.shutdown()
        tracer_provider.shutdown()


Q = tm.DESTINATION
OP = tm.OPERATION_NAME
STORE_OP = tm.STORE_OPERATION


# ---------------------------------------------------------------- checks from the history


def store_counters_agree_with_history(otel: Otel, store: SagaStore, task_ids: list[str]) -> None:
    """The store-level counters equal what the tasks' histories record: one reclaim per
    acquisition that names the expired lease it replaced, one quarantine per entry that
    moved a task to QUARANTINED (by its event); AssertionError otherwise.
    """
    reclaims: Counter[Key] = Counter()
    quarantines: Counter[Key] = Counter()
    for task_id in task_ids:
        task = store.get(task_id)
        assert task is not None
        for entry in store.history(task_id):
            if entry.event == "acquire" and entry.reason is not None:
                reclaims[(task.queue,)] += 1
            if entry.to_state is TaskState.QUARANTINED and entry.from_state != entry.to_state:
                quarantines[(task.queue, entry.event)] += 1
    assert otel.sums(tm.RECLAIMS, Q) == dict(reclaims), "reclaims"
    assert otel.sums(tm.QUARANTINES, Q, STORE_OP) == dict(quarantines), "quarantines"


# ---------------------------------------------------------------- the scripted worker run


@dataclass
class Script:
    """The worker run of :func:`scripted_run` and what it did."""

    store: MemoryStore
    clock: ManualClock
    outcomes: dict[str, list[Any]]
    child_parent: list[int]
    task_ids: list[str]


def scripted_run(otel: Otel) -> Script:
    """Run one worker ``w1`` on a memory store with a manual clock (queues alpha, beta, delta).

    - an empty claim (nothing claimable yet);
    - N = 4 completions: ok-0 (claim_next), ok-1 (opens a child span), ok-2 (beta), and
      ``retry`` on its third attempt after K = 2 retries (``Retry(after=5 s)``);
    - M = 2 failures: fail-0 (PermanentTaskError: FAILED), fail-1 (beta: registers a
      compensation, then ValueError with retry=None: COMPENSATING), then fail-1's
      compensation attempt (compensated);
    - a zombie (beta): its lease expires mid-handler and w2 reclaims it; w1's complete is
      fenced (LeaseConflictError);
    - a lost lease (alpha): the same takeover, then the handler's register_compensation
      is refused and the LeaseLostError ends the attempt;
    - the reaper quarantines q (delta, max_attempts=1, its one lease expired).
    """
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    tracer = otel.tracer_provider.get_tracer("test-handler")
    child_parent: list[int] = []

    def take_over(ctx: LeaseContext) -> None:
        clock.advance(2 * LONG)  # w1's lease expired (its heartbeats are 20 minutes apart)
        store.acquire(ctx.task_id, owner="w2", ttl=LONG)

    def handler(ctx: LeaseContext) -> None:
        name = ctx.task_id
        if name == "ok-1":
            child_parent.append(trace.get_current_span().get_span_context().span_id)
            with tracer.start_as_current_span("charge"):
                pass
        elif name == "retry" and ctx.task.attempts < 3:
            raise Retry("not yet", after=timedelta(seconds=5))
        elif name == "fail-0":
            raise PermanentTaskError("card declined")
        elif name == "fail-1":
            ctx.register_compensation(Compensation("refund", "order-1"))
            raise ValueError("boom")
        elif name == "zombie":
            take_over(ctx)
        elif name == "lost":
            take_over(ctx)
            ctx.register_compensation(Compensation("refund", "order-2"))  # LeaseLostError

    worker = Worker(
        store,
        handler,
        compensator=lambda _ctx, _c: None,
        owner="w1",
        ttl=LONG,
        retry=None,
    )
    outcomes: dict[str, list[Any]] = {}

    def run(task_id: str | None = None) -> None:
        outcome = worker.run_one(task_id)
        assert outcome is not None
        outcomes.setdefault(outcome.task_id, []).append(outcome)

    assert worker.run_one() is None  # the empty claim
    store.create("ok-0", queue="alpha")
    run()
    store.create("ok-1", queue="alpha")
    store.create("ok-2", queue="beta")
    store.create("retry", queue="alpha")
    store.create("fail-0", queue="alpha")
    store.create("fail-1", queue="beta")
    store.create("zombie", queue="beta")
    store.create("lost", queue="alpha")
    store.create("q", queue="delta", max_attempts=1)
    for task_id in ("ok-1", "ok-2", "retry"):
        run(task_id)
    for _ in range(2):
        clock.advance(timedelta(seconds=5))
        run("retry")
    for task_id in ("fail-0", "fail-1", "fail-1", "zombie", "lost"):
        run(task_id)
    store.acquire("q", owner="w3", ttl=timedelta(seconds=10))
    clock.advance(timedelta(minutes=1))
    reaped = store.reap()
    assert [t.task_id for t in reaped if t.state is TaskState.QUARANTINED] == ["q"]
    task_ids = ["ok-0", "ok-1", "ok-2", "retry", "fail-0", "fail-1", "zombie", "lost", "q"]
    return Script(store, clock, outcomes, child_parent, task_ids)


def test_scripted_run_moves_each_counter_by_exactly_the_events_that_happened(otel: Otel) -> None:
    """Every counter and histogram of a scripted run (N=4 completions, M=2 failures, K=2
    retries, one fenced zombie, one lost lease, two reclaims, one reaper quarantine)
    moved by exactly those events, with the queue, operation and outcome attributes.
    """
    script = scripted_run(otel)
    results = {k: [o.result for o in v] for k, v in script.outcomes.items()}
    assert results == {
        "ok-0": ["completed"],
        "ok-1": ["completed"],
        "ok-2": ["completed"],
        "retry": ["retried", "retried", "completed"],
        "fail-0": ["failed"],
        "fail-1": ["compensating", "compensated"],
        "zombie": ["fenced"],
        "lost": ["lost"],
    }
    assert otel.sums(tm.CLAIMS, Q, OP) == {
        ("alpha", "claim_next"): 1,
        ("alpha", "acquire"): 6,  # ok-1, retry x3, fail-0, lost
        ("beta", "acquire"): 4,  # ok-2, fail-1 x2, zombie
    }
    assert otel.counts(tm.CLAIM_DURATION, Q, OP, tm.ERROR_TYPE) == {
        (None, "claim_next", None): 1,  # the empty claim
        ("alpha", "claim_next", None): 1,
        ("alpha", "acquire", None): 6,
        ("beta", "acquire", None): 4,
    }
    assert otel.counts(tm.PROCESS_DURATION, Q, OP, tm.ERROR_TYPE) == {
        ("alpha", "process", None): 3,  # ok-0, ok-1, retry's third attempt
        ("beta", "process", None): 2,  # ok-2, zombie
        ("alpha", "process", "Retry"): 2,
        ("alpha", "process", "PermanentTaskError"): 1,
        ("beta", "process", "ValueError"): 1,
        ("alpha", "process", "LeaseLostError"): 1,
        ("beta", "compensate", None): 1,
    }
    assert otel.sums(tm.COMPLETIONS, Q, OP) == {("alpha", "process"): 3, ("beta", "process"): 1}
    assert otel.sums(tm.FAILURES, Q, tm.OUTCOME, tm.ERROR_TYPE) == {
        ("alpha", "failed", "PermanentTaskError"): 1,
        ("beta", "compensating", "ValueError"): 1,
    }
    assert otel.sums(tm.RETRIES, Q, OP, tm.ERROR_TYPE) == {("alpha", "process", "Retry"): 2}
    assert otel.sums(tm.FENCED, Q) == {("beta",): 1}
    assert otel.sums(tm.LOST_LEASES, Q) == {("alpha",): 1}
    assert otel.counts(tm.HEARTBEAT_LAG, Q) == {}  # no heartbeat came (20 minutes apart)
    assert otel.sums(tm.RECLAIMS, Q, STORE_OP) == {("beta", "acquire"): 1, ("alpha", "acquire"): 1}
    assert otel.sums(tm.FENCED_WRITES, Q, STORE_OP) == {
        ("beta", "complete"): 1,  # the zombie's complete
        ("alpha", "register_compensation"): 1,  # the lost lease's
    }
    assert otel.sums(tm.QUARANTINES, Q, STORE_OP) == {("delta", "reap"): 1}
    store_counters_agree_with_history(otel, script.store, script.task_ids)


def test_one_span_per_attempt_with_its_task_queue_owner_and_token(otel: Otel) -> None:
    """Each attempt of the scripted run has one CONSUMER span "process <queue>" (or
    "compensate <queue>") carrying the task id, queue, owner, token, attempt and outcome;
    status ERROR exactly for failed, compensating, fenced and lost; retry and fenced events;
    the exception a handler raised recorded on its span.
    """
    script = scripted_run(otel)
    spans = otel.spans()
    attempts = [s for s in spans if s.instrumentation_scope.name == "sagalease"]  # type: ignore[union-attr]
    expected = [o for task in script.outcomes.values() for o in task]
    assert len(attempts) == len(expected) == 11
    by_attempt = {(s.attributes[tm.MESSAGE_ID], s.attributes[tm.LEASE_TOKEN]): s for s in attempts}  # type: ignore[index]
    assert len(by_attempt) == 11
    for outcome in expected:
        span = by_attempt[(outcome.task_id, outcome.token)]
        task = script.store.get(outcome.task_id)
        assert task is not None
        operation = "compensate" if outcome.result == "compensated" else "process"
        assert span.name == f"{operation} {task.queue}"
        assert span.kind is SpanKind.CONSUMER
        attributes = dict(span.attributes or {})
        assert attributes == {
            "messaging.system": "sagalease",
            "messaging.operation.type": "process",
            "messaging.operation.name": operation,
            "messaging.destination.name": task.queue,
            "messaging.message.id": outcome.task_id,
            "messaging.client.id": "w1",
            "sagalease.lease.owner": "w1",
            "sagalease.lease.token": outcome.token,
            "sagalease.task.attempt": attributes["sagalease.task.attempt"],
            "sagalease.outcome": outcome.result,
        }
        error = outcome.result in ("failed", "compensating", "fenced", "lost")
        assert (span.status.status_code is StatusCode.ERROR) is error, outcome
        events = [e.name for e in span.events]
        assert ("sagalease.retry" in events) is (outcome.result == "retried")
        assert ("sagalease.fenced" in events) is (outcome.result == "fenced")
        assert ("sagalease.lease_lost" in events) is (outcome.result == "lost")
        raised = outcome.result in ("retried", "failed", "compensating", "lost")
        assert ("exception" in events) is raised, outcome
    retries = [by_attempt[("retry", token)] for token in (1, 2)]
    for span in retries:
        (event,) = [e for e in span.events if e.name == "sagalease.retry"]
        assert dict(event.attributes or {})["sagalease.retry.delay"] == 5.0
    assert [by_attempt[("retry", t)].attributes["sagalease.task.attempt"] for t in (1, 2, 3)] == [  # type: ignore[index]
        1,
        2,
        3,
    ]


def test_a_handlers_own_span_is_a_child_of_its_attempt_span(otel: Otel) -> None:
    """The handler runs inside the attempt span's context: a span it opens has the attempt
    span as parent, in the same trace; the attempt spans themselves are roots.
    """
    script = scripted_run(otel)
    spans = otel.spans()
    (charge,) = [s for s in spans if s.name == "charge"]
    (attempt,) = [s for s in spans if s.attributes and s.attributes.get(tm.MESSAGE_ID) == "ok-1"]
    assert charge.parent is not None
    assert attempt.context is not None
    assert charge.context is not None
    assert charge.parent.span_id == attempt.context.span_id == script.child_parent[0]
    assert charge.context.trace_id == attempt.context.trace_id
    assert all(s.parent is None for s in spans if s.name != "charge")


# ---------------------------------------------------------------- the stores


def test_every_store_counts_reclaims_fenced_writes_and_quarantines(
    otel: Otel, store: SagaStore
) -> None:
    """On each backend (all through StoreBase): acquire, claim_next and claim_batch that
    replace an expired lease are reclaims (fresh acquisitions are not); holder writes
    refused with LeaseConflictError are fenced writes (an acquire refused by a live lease
    is not); reap, quarantine and compensation_failed that end QUARANTINED are counted.
    """
    s = timedelta(seconds=1)
    ttl = 10 * s
    store.create("r", queue="alpha", now=T0)
    store.create("c", queue="beta", now=T0)
    store.create("b1", queue="gamma", now=T0)
    store.create("b2", queue="gamma", now=T0)
    store.create("q", queue="delta", max_attempts=1, now=T0)
    store.create("k", queue="epsilon", compensations=[Compensation("undo", "x")], now=T0)
    store.acquire("r", owner="w1", ttl=ttl, now=T0)
    assert store.claim_next(owner="w1", ttl=ttl, queues="beta", now=T0) is not None
    assert len(store.claim_batch(owner="w1", ttl=ttl, limit=2, queues="gamma", now=T0)) == 2
    store.acquire("q", owner="w1", ttl=ttl, now=T0)
    k = store.acquire("k", owner="w1", ttl=ttl, now=T0)
    with pytest.raises(LeaseConflictError):  # a live lease: a refused claim, not fencing
        store.acquire("r", owner="w2", ttl=ttl, now=T0 + s)
    assert otel.sums(tm.RECLAIMS, Q) == {}
    later = T0 + 11 * s  # every lease above expired
    store.acquire("r", owner="w2", ttl=ttl, now=later)
    assert store.claim_next(owner="w2", ttl=ttl, queues="beta", now=later) is not None
    assert len(store.claim_batch(owner="w2", ttl=ttl, limit=2, queues="gamma", now=later)) == 2
    assert otel.sums(tm.RECLAIMS, Q, STORE_OP) == {
        ("alpha", "acquire"): 1,
        ("beta", "claim_next"): 1,
        ("gamma", "claim_batch"): 2,
    }
    before = {t: store.get(t) for t in ("r", "c", "b1")}
    with pytest.raises(LeaseConflictError):
        store.complete("r", owner="w1", token=1, now=later)
    with pytest.raises(LeaseConflictError):
        store.heartbeat("c", owner="w1", token=1, ttl=ttl, now=later)
    with pytest.raises(LeaseConflictError):
        store.complete_many([("b1", 1)], owner="w1", now=later)
    assert {t: store.get(t) for t in before} == before  # the refusals changed nothing
    assert otel.sums(tm.FENCED_WRITES, Q, STORE_OP) == {
        ("alpha", "complete"): 1,
        ("beta", "heartbeat"): 1,
        ("gamma", "complete_many"): 1,
    }
    store.fail("k", owner="w1", token=k.token, reason="no", now=T0 + s)
    k = store.acquire("k", owner="w1", ttl=ttl, now=T0 + 2 * s)
    store.compensation_failed("k", owner="w1", token=k.token, index=0, reason="x", now=T0 + 2 * s)
    store.quarantine("r", reason="stop", by="ops", now=later)
    reaped = store.reap(now=T0 + 100 * s)
    assert {t.task_id for t in reaped if t.state is TaskState.QUARANTINED} == {"q"}
    assert {t.task_id for t in reaped} == {"q", "c", "b1", "b2"}  # the others: dropped leases
    assert otel.sums(tm.QUARANTINES, Q, STORE_OP) == {
        ("delta", "reap"): 1,
        ("alpha", "quarantine"): 1,
        ("epsilon", "compensation_failed"): 1,
    }
    store_counters_agree_with_history(otel, store, ["r", "c", "b1", "b2", "q", "k"])


# ---------------------------------------------------------------- heartbeat lag


def test_each_granted_heartbeat_records_its_lag_and_none_is_negative(otel: Otel) -> None:
    """A handler that runs through two heartbeats: the lag histogram has one sample per
    heartbeat the store granted (as many as the history's heartbeat entries), attributed
    to the queue, none below zero.
    """
    store = MemoryStore()  # the system clock: a heartbeat extends the lease only as time moves
    store.create("t", queue="alpha")

    def handler(ctx: LeaseContext) -> None:
        end = time.monotonic() + GUARD
        while sum(e.event == "heartbeat" for e in store.history("t")) < 2:
            assert time.monotonic() < end, "gave up waiting for two heartbeats"
            ctx.sleep(0.01)

    outcome = Worker(store, handler, owner="w1", ttl=timedelta(seconds=1.2)).run_one()
    assert outcome is not None
    assert outcome.result == "completed", outcome
    beats = sum(e.event == "heartbeat" for e in store.history("t"))
    assert beats >= 2
    assert otel.counts(tm.HEARTBEAT_LAG, Q) == {("alpha",): beats}
    (point,) = otel.points(tm.HEARTBEAT_LAG.name)
    assert point.min >= 0.0


# ---------------------------------------------------------------- configure and no-op


def test_configure_refuses_what_is_not_a_provider_and_keeps_the_configuration(
    otel: Otel,
) -> None:
    """configure() with something that is not a MeterProvider / TracerProvider:
    InvalidInputError, and the configuration in force keeps recording.
    """
    with pytest.raises(InvalidInputError, match="MeterProvider"):
        tm.configure(meter_provider=object())
    with pytest.raises(InvalidInputError, match="TracerProvider"):
        tm.configure(tracer_provider="not a provider")
    store = MemoryStore()
    store.create("t")
    assert Worker(store, lambda _ctx: None, owner="w1", ttl=LONG).run_one() is not None
    assert otel.sums(tm.COMPLETIONS, Q) == {("default",): 1}
    assert len(otel.spans()) == 1


def test_the_module_flag_off_makes_every_hook_a_no_op(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With telemetry.AVAILABLE false (as without OpenTelemetry) a worker and a store run
    the same outcomes and record nothing, though an SDK is configured.
    """
    monkeypatch.setattr(tm, "AVAILABLE", False)
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    store.create("t")
    store.create("z")
    worker = Worker(store, lambda _ctx: None, owner="w1", ttl=LONG)
    assert worker.run_one("t").result == "completed"  # type: ignore[union-attr]
    store.acquire("z", owner="w1", ttl=LONG)
    clock.advance(2 * LONG)
    store.acquire("z", owner="w2", ttl=LONG)  # a reclaim
    with pytest.raises(LeaseConflictError):
        store.complete("z", owner="w1", token=1)  # a fenced write
    store.quarantine("z", reason="x", by="ops")
    assert otel.reader.get_metrics_data() is None or all(
        not otel.points(m.name) for m in tm.METRICS
    )
    assert otel.spans() == []


def test_without_opentelemetry_sagalease_imports_and_works_and_telemetry_is_a_no_op() -> None:
    """In a process where ``import opentelemetry`` fails: ``import sagalease`` works,
    imports no opentelemetry module, telemetry.AVAILABLE is false, a worker completes,
    retries and is fenced as usual; configure() does nothing and a provider is refused
    with one line naming the [otel] extra.
    """
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # import opentelemetry raises ImportError
        from datetime import timedelta
        import sagalease
        from sagalease import InvalidInputError, ManualClock, MemoryStore, Retry, Worker
        from sagalease import telemetry
        assert telemetry.AVAILABLE is False
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        store.create("ok")
        store.create("again")
        store.create("zombie")

        def handler(ctx):
            if ctx.task_id == "again" and ctx.task.attempts == 1:
                raise Retry(after=timedelta(0))
            if ctx.task_id == "zombie":
                clock.advance(timedelta(hours=3))
                store.acquire("zombie", owner="w2", ttl=timedelta(hours=1))

        worker = Worker(store, handler, owner="w1", ttl=timedelta(hours=1))
        results = [worker.run_one(t).result for t in ("ok", "again", "again", "zombie")]
        assert results == ["completed", "retried", "completed", "fenced"], results
        store.reap()
        telemetry.configure()
        try:
            telemetry.configure(meter_provider=object())
        except InvalidInputError as exc:
            print(exc)
        loaded = [m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v]
        assert loaded == [], loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=GUARD, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "sagalease telemetry needs the [otel] extra: pip install 'sagalease[otel]'",
        "ok",
    ]


def test_import_sagalease_defers_the_opentelemetry_api_to_the_first_hook() -> None:
    """With the API installed, ``import sagalease`` (and making a store and a task)
    imports neither ``opentelemetry.metrics`` nor ``opentelemetry.trace`` (they cost
    tens of ms), yet telemetry.AVAILABLE is true; the first hook that records (a
    worker's claim and attempt) imports both.
    """
    code = textwrap.dedent(
        """
        import sys
        from datetime import timedelta
        import sagalease
        from sagalease import MemoryStore, Worker, telemetry
        api = ("opentelemetry.metrics", "opentelemetry.trace")
        print(telemetry.AVAILABLE, [m for m in api if m in sys.modules])
        store = MemoryStore()
        store.create("t")
        print([m for m in api if m in sys.modules])
        outcome = Worker(store, lambda ctx: None, owner="w", ttl=timedelta(seconds=30)).run_one()
        print(outcome.result, [m for m in api if m in sys.modules])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=GUARD, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True []",
        "[]",
        "completed ['opentelemetry.metrics', 'opentelemetry.trace']",
    ]


# ---------------------------------------------------------------- the checks catch broken hooks


def _counting_every_acquisition(
    operation: str, run: Callable[[], list[TaskSaga]]
) -> list[TaskSaga]:
    """A broken count_reclaims: every acquisition counts as a reclaim."""
    tasks = run()
    for task in tasks:
        tm._current().reclaims.add(
            1, {tm.MESSAGING_SYSTEM: "sagalease", Q: task.queue, STORE_OP: operation}
        )
    return tasks


def _counting_every_reaped_task(operation: str, tasks: Any) -> None:
    """A broken quarantines hook: every task the call returned counts."""
    for task in tasks:
        tm._current().quarantines.add(
            1, {tm.MESSAGING_SYSTEM: "sagalease", Q: task.queue, STORE_OP: operation}
        )


@pytest.mark.parametrize(
    ("hook", "broken"),
    [("count_reclaims", _counting_every_acquisition), ("quarantines", _counting_every_reaped_task)],
)
def test_the_history_check_catches_a_hook_that_over_counts(
    otel: Otel, monkeypatch: pytest.MonkeyPatch, hook: str, broken: Callable[..., Any]
) -> None:
    """store_counters_agree_with_history fails on a store whose reclaim hook counts every
    acquisition, or whose quarantine hook counts every reaped task.
    """
    monkeypatch.setattr(tm, hook, broken)
    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    store.create("a")
    store.create("b", max_attempts=1)
    store.acquire("a", owner="w1", ttl=timedelta(seconds=1))
    store.acquire("b", owner="w1", ttl=timedelta(seconds=1))
    clock.advance(timedelta(seconds=2))
    store.reap()  # a: its lease dropped; b: quarantined
    store.acquire("a", owner="w2", ttl=timedelta(seconds=1))
    with pytest.raises(AssertionError, match=r"reclaims|quarantines"):
        store_counters_agree_with_history(otel, store, ["a", "b"])


def test_metric_names_are_unique_and_documented() -> None:
    """Every instrument has a distinct name, a known kind, a unit and the system and
    queue attributes; the messaging ones use the semantic conventions' names.
    """
    names = [m.name for m in tm.METRICS]
    assert len(set(names)) == len(names)
    for metric in tm.METRICS:
        assert metric.kind in ("counter", "histogram")
        assert metric.unit
        assert metric.attributes[:2] == (tm.MESSAGING_SYSTEM, tm.DESTINATION)
        assert metric.name.startswith(("messaging.", "sagalease."))
        assert metric.reporter in ("worker", "store")
    assert {m.name for m in tm.METRICS if m.name.startswith("messaging.")} == {
        "messaging.client.consumed.messages",
        "messaging.client.operation.duration",
        "messaging.process.duration",
    }


def test_every_instrument_is_in_the_docs_table_with_its_unit() -> None:
    """docs/telemetry.md has one table row per instrument naming its kind and unit, and
    no row for an instrument that does not exist.
    """
    text = (Path(__file__).parents[2] / "docs" / "telemetry.md").read_text(encoding="utf-8")
    rows = {
        cells[1].strip("` "): cells
        for line in text.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 4
    }
    for metric in tm.METRICS:
        assert metric.name in rows, metric.name
        assert rows[metric.name][2].strip() == metric.kind
        assert rows[metric.name][3].strip() == f"`{metric.unit}`"
    spans = {name for name in rows if " " in name}
    assert set(rows) - spans == {m.name for m in tm.METRICS}
