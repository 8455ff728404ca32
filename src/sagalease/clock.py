"""Clocks: where a store reads ``now`` when a call does not pass one."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from sagalease.errors import InvalidInputError

__all__ = ["Clock", "ManualClock", "SystemClock", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


@runtime_checkable
class Clock(Protocol):
    """Anything with a ``now()`` returning an aware datetime.

    A clock may also offer ``now_us()``, the same instant as integer UTC
    microseconds; stores then read that (no datetime built and converted).
    """

    def now(self) -> datetime:
        """The current instant (timezone-aware)."""
        ...


class SystemClock:
    """The machine's UTC clock."""

    def now(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)

    def now_us(self) -> int:
        """The same instant as integer microseconds since the epoch."""
        return time.time_ns() // 1000

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to (tests, models, simulations)."""

    def __init__(self, start: datetime | None = None) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC) if start is None else start
        to_us(start, "start")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The clock's current instant."""
        with self._lock:
            return self._now

    def now_us(self) -> int:
        """The clock's current instant as integer microseconds since the epoch."""
        return to_us(self.now(), "now")

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by ``delta`` (negative deltas are refused) and return the new now."""
        if delta < timedelta(0):
            raise InvalidInputError("a ManualClock only moves forward")
        with self._lock:
            self._now += delta
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


def to_us(value: object, name: str) -> int:
    """Integer UTC microseconds of an aware datetime; anything else (a naive
    datetime above all) is an :class:`InvalidInputError`.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{name} must be timezone-aware (got naive {value.isoformat()})")
    instant = (value - _EPOCH) // _ONE_US
    if instant < 0:
        raise InvalidInputError(f"{name} is before 1970")
    return instant


def duration_us(value: object, name: str, *, allow_zero: bool = False) -> int:
    """Integer microseconds of a ``timedelta``: positive (or non-negative)."""
    if not isinstance(value, timedelta):
        raise InvalidInputError(f"{name} must be a timedelta, not {type(value).__name__}")
    micros = value // _ONE_US
    if micros < 0 or (micros == 0 and not allow_zero):
        raise InvalidInputError(
            f"{name} must be {'zero or positive' if allow_zero else 'positive'}, got {value}"
        )
    return micros
