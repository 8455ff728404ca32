"""How each event is called: the values chosen for one attempt, turned into the
keyword arguments of the core function (:mod:`sagalease.core`, instants and
durations in µs) and of the store method (:class:`~sagalease.store.SagaStore`,
datetimes and timedeltas).

The model checker, the conformance suite and the property tests decide *which*
values to try; this module alone says which of them each event takes, and how
an argument of the core is named and typed at the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sagalease.records import Compensation, NewTask, from_us

__all__ = ["BUILDERS", "Chosen", "core_args", "new_task", "store_args", "store_form"]


@dataclass(frozen=True, slots=True)
class Chosen:
    """The values an actor picked for one call; each event reads the ones it takes.

    For ``create`` a field left ``None`` is left to the core's default (so the
    entry's arguments name ``queue``, ``priority`` and ``requeued_from`` only when
    chosen); ``release_reason`` ``None``: a release that records no reason.
    """

    owner: str = ""
    token: int = 0
    ttl_us: int = 0
    delay_us: int = 0
    compensation: Compensation | None = None
    index: int = 0
    reason: str = ""
    by: str = ""
    text: str = ""
    compensations: tuple[Compensation, ...] | None = None
    max_attempts: int | None = None
    deadline_us: int | None = None
    available_us: int | None = None
    saga_id: str | None = None
    queue: str | None = None
    priority: int | None = None
    requeued_from: str | None = None
    release_reason: str | None = None


def _held(c: Chosen) -> dict[str, Any]:
    return {"owner": c.owner, "token": c.token}


_CREATE_FIELDS = (
    "saga_id",
    "compensations",
    "max_attempts",
    "deadline_us",
    "available_us",
    "queue",
    "priority",
    "requeued_from",
)


def _create(c: Chosen) -> dict[str, Any]:
    return {name: value for name in _CREATE_FIELDS if (value := getattr(c, name)) is not None}


def _release(c: Chosen) -> dict[str, Any]:
    kwargs = {**_held(c), "delay_us": c.delay_us}
    if c.release_reason is not None:
        kwargs["reason"] = c.release_reason
    return kwargs


BUILDERS: Mapping[str, Callable[[Chosen], dict[str, Any]]] = {
    "create": _create,
    "acquire": lambda c: {"owner": c.owner, "ttl_us": c.ttl_us},
    "heartbeat": lambda c: {**_held(c), "ttl_us": c.ttl_us},
    "release": _release,
    "register_compensation": lambda c: {**_held(c), "compensation": c.compensation},
    "complete": _held,
    "fail": lambda c: {**_held(c), "reason": c.reason},
    "compensation_applied": lambda c: {**_held(c), "index": c.index},
    "compensation_failed": lambda c: {**_held(c), "index": c.index, "reason": c.reason},
    "quarantine": lambda c: {"reason": c.reason, "by": c.by},
    "reap": lambda c: {},
    "annotate": lambda c: {"text": c.text, "by": c.by},
}
"""Per event (``create`` and ``annotate`` included): the core's keyword arguments
(besides the task and ``now_us``) from the chosen values. ``complete`` takes no
reason: its default ("completed") is what every actor here records."""


def core_args(event: str, chosen: Chosen) -> dict[str, Any]:
    """The keyword arguments of ``core.<event>`` (without the task and ``now_us``)."""
    return BUILDERS[event](chosen)


_DURATIONS = {"ttl_us": "ttl", "delay_us": "delay"}
_INSTANTS = {"deadline_us": "deadline", "available_us": "available_at", "now_us": "now"}


def store_form(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The store method's keyword arguments for the core's ``kwargs``: a duration
    in µs becomes a timedelta, an instant in µs an aware datetime, each under the
    store's name for it; every other argument is the same at both.
    """
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in _DURATIONS:
            out[_DURATIONS[name]] = timedelta(microseconds=value)
        elif name in _INSTANTS:
            out[_INSTANTS[name]] = None if value is None else from_us(value)
        else:
            out[name] = value
    return out


def store_args(event: str, chosen: Chosen) -> dict[str, Any]:
    """The keyword arguments of the store method applying ``event`` (without the
    task id and ``now``).
    """
    return store_form(BUILDERS[event](chosen))


def new_task(task_id: str, chosen: Chosen) -> NewTask:
    """The ``create_many`` item that creates ``task_id`` as ``create`` would with the
    store arguments of ``chosen`` (``NewTask``'s fields are ``create``'s).
    """
    return NewTask(task_id, **store_args("create", chosen))
