"""The fleet's figures for the dashboard and ``/metrics`` (Prometheus text format).

:func:`collect` reads them with one :meth:`~sagalease.store.SagaStore.queue_stats`
call (index-backed on the bundled stores); :func:`prometheus_text` writes them as

* ``sagalease_tasks{queue, state}``: tasks per queue and state (every state of every
  queue that holds a task, zeros included), a gauge;
* ``sagalease_stale_leases{queue}``: tasks that have not ended whose lease expired;
* ``sagalease_queue_lag_seconds{queue}``: how long the oldest task waiting to be
  claimed (not ended, unleased, available: PENDING, or COMPENSATING between
  attempts) has waited since its ``available_at`` (0 when none waits).

The text is made by ``prometheus_client`` (the ``[ui]`` extra) from a fresh registry
per call, so label values (queue names are free text: quotes, backslashes, braces)
are escaped by the client library itself. Nothing is registered globally.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sagalease.clock import to_us
from sagalease.records import TaskState, from_us
from sagalease.store import SagaStore

UI_EXTRA: Final = "sagalease ui needs the [ui] extra: pip install 'sagalease[ui]'"
"""The one line raised when ``prometheus_client`` is not installed."""

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ModuleNotFoundError as exc:  # pragma: no cover - the [ui] extra is installed in tests
    raise ModuleNotFoundError(UI_EXTRA, name=exc.name) from None

__all__ = ["METRIC_NAMES", "UI_EXTRA", "Figures", "collect", "prometheus_text"]

METRIC_NAMES: Final = (
    "sagalease_tasks",
    "sagalease_stale_leases",
    "sagalease_queue_lag_seconds",
)
"""The metric families :func:`prometheus_text` writes, in order."""


@dataclass(frozen=True)
class Figures:
    """What the fleet looks like at ``at``, per queue holding a task (sorted by name).

    ``tasks``: tasks by state (every state present); ``stale_leases``: tasks that have
    not ended whose lease had expired; ``queue_lag_seconds``: the age of the oldest
    task waiting to be claimed at ``at`` (see :class:`~sagalease.store.QueueStats`;
    ``None``: none waits).
    """

    at: datetime
    tasks: Mapping[str, Mapping[TaskState, int]]
    stale_leases: Mapping[str, int]
    queue_lag_seconds: Mapping[str, float | None]

    @property
    def totals(self) -> dict[TaskState, int]:
        """Tasks by state over every queue (every state present)."""
        result = dict.fromkeys(TaskState, 0)
        for states in self.tasks.values():
            for state, number in states.items():
                result[state] += number
        return result


def collect(store: SagaStore, *, now: datetime) -> Figures:
    """The figures of ``store`` at ``now`` (an aware datetime; naive:
    :class:`~sagalease.errors.InvalidInputError`, from the store), from one
    ``queue_stats`` call.
    """
    stats = store.queue_stats(now=now)
    queues = sorted(stats)
    lag: dict[str, float | None] = {}
    for queue in queues:
        waited = stats[queue].lag
        lag[queue] = None if waited is None else waited.total_seconds()
    return Figures(
        at=from_us(to_us(now, "now")),
        tasks={q: stats[q].counts for q in queues},
        stale_leases={q: stats[q].stale for q in queues},
        queue_lag_seconds=lag,
    )


class _FiguresCollector(Collector):
    """A ``prometheus_client`` collector of one :class:`Figures` (never registered
    globally: :func:`prometheus_text` makes a fresh registry per call).
    """

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        """The three gauge families of the module documentation."""
        f = self.figures
        tasks = GaugeMetricFamily(
            "sagalease_tasks", "Tasks per queue and state.", labels=["queue", "state"]
        )
        for queue, states in f.tasks.items():
            for state in TaskState:
                tasks.add_metric([queue, state.value], states.get(state, 0))
        yield tasks
        stale = GaugeMetricFamily(
            "sagalease_stale_leases",
            "Tasks that have not ended whose lease expired (not yet reaped or reclaimed).",
            labels=["queue"],
        )
        for queue, number in f.stale_leases.items():
            stale.add_metric([queue], number)
        yield stale
        lag = GaugeMetricFamily(
            "sagalease_queue_lag_seconds",
            "Seconds the oldest task waiting to be claimed has waited since its"
            " available_at (0: none waits).",
            labels=["queue"],
        )
        for queue, seconds in f.queue_lag_seconds.items():
            lag.add_metric([queue], 0.0 if seconds is None else seconds)
        yield lag


def prometheus_text(figures: Figures) -> str:
    """``figures`` in the Prometheus text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FiguresCollector(figures))
    return generate_latest(registry).decode("utf-8")
