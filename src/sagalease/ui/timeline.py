"""The lease timeline of one task: its history drawn as bars, one per fencing token.

Pure functions of a task's history (:meth:`SagaStore.history`) and ``now``; no I/O.
Every lease is read from the entries alone, never by replaying them, so that a
history the core would refuse still draws:

* an ``acquire`` entry starts the bar of its token (``owner``, ``token``, ``at``);
  its lease expires ``ttl_us`` later (in the forward phase never past the task's
  deadline, from the ``create`` entry), as in :func:`sagalease.core.acquire`;
* a ``heartbeat`` of that token is a tick and moves the expiry to ``at + ttl_us``
  (capped the same way);
* the bar ends at the first entry that ends the lease: ``release``, ``complete``,
  ``fail``, the last ``compensation_applied`` (→ COMPENSATED), ``compensation_failed``
  or an operator's ``quarantine`` while the lease is live, at that entry's instant;
  once the lease has expired, at its expiry, as ``reaped`` when the reaper dropped
  it, ``replaced`` when the next ``acquire`` took the task over (a reclaim),
  ``expired`` otherwise; with no such entry, at its expiry if that has passed at
  ``now`` (``expired``), else at ``now`` (``held``).

Reclaims (an ``acquire`` that replaced an expired lease) and the reaper's actions
(``reap`` entries) are drawn as marks. :func:`timeline_svg` writes every text and
attribute through :func:`html.escape` (quotes included) after removing the
characters XML cannot hold, so a hostile owner such as ``</svg><script>`` stays text.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sagalease.clock import to_us
from sagalease.records import HistoryEntry, TaskState, from_us

__all__ = ["END_KINDS", "PALETTE", "LeaseBar", "Mark", "lease_bars", "marks", "owner_colour"]

END_KINDS: Final = (
    "released",
    "expired",
    "reaped",
    "replaced",
    "completed",
    "failed",
    "compensated",
    "quarantined",
    "held",
)
"""How a bar ends (see the module documentation)."""

PALETTE: Final = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#999999",
)
"""The owners' colours (Okabe and Ito's palette, readable with colour blindness)."""

_ENDS_HELD: Final = {
    "release": "released",
    "complete": "completed",
    "fail": "failed",
    "compensation_failed": "quarantined",
    "quarantine": "quarantined",
}
"""Holder and operator events that end a live lease, and the end kind they give."""


@dataclass(frozen=True)
class LeaseBar:
    """One lease: ``owner`` held the task under ``token`` from ``start`` to ``end``.

    ``end_kind`` is one of :data:`END_KINDS`; ``heartbeats`` the instants of its
    heartbeats; ``expires`` the expiry it had last (``None``: its entries did not say).
    """

    token: int
    owner: str
    start: datetime
    end: datetime
    end_kind: str
    heartbeats: tuple[datetime, ...] = ()
    expires: datetime | None = None


@dataclass(frozen=True)
class Mark:
    """A point on the timeline: a ``reclaim`` (an acquire that replaced an expired
    lease) or a ``reap`` (the reaper's action), at ``at``, with the entry's reason.
    """

    kind: str
    at: datetime
    token: int | None
    text: str


def owner_colour(owner: str) -> str:
    """The colour of ``owner``: the same in every process and run (a hash, not
    :func:`hash`, which is salted per process).
    """
    digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).digest()
    return PALETTE[digest[0] % len(PALETTE)]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _deadline_us(history: Sequence[HistoryEntry]) -> int | None:
    for entry in history:
        if entry.event == "create":
            return _int(entry.args.get("deadline_us"))
    return None


def _expiry(entry: HistoryEntry, deadline_us: int | None) -> int | None:
    """The expiry an ``acquire``/``heartbeat`` entry gives its lease (``None``: unknown)."""
    ttl = _int(entry.args.get("ttl_us"))
    if ttl is None:
        return None
    expiry = entry.at_us + ttl
    if entry.to_state is TaskState.RUNNING and deadline_us is not None:
        expiry = min(expiry, deadline_us)
    return expiry


@dataclass
class _Open:
    token: int
    owner: str
    start_us: int
    expires_us: int | None
    heartbeats: list[int] = field(default_factory=list)

    def close(self, end_us: int, kind: str) -> LeaseBar:
        return LeaseBar(
            token=self.token,
            owner=self.owner,
            start=from_us(self.start_us),
            end=from_us(max(end_us, self.start_us)),
            end_kind=kind,
            heartbeats=tuple(from_us(h) for h in self.heartbeats),
            expires=None if self.expires_us is None else from_us(self.expires_us),
        )

    def expired(self, at_us: int) -> bool:
        return self.expires_us is not None and at_us >= self.expires_us


def _ending(entry: HistoryEntry) -> str | None:
    """The end kind ``entry`` gives the live ``lease`` (``None``: it does not end it)."""
    if entry.event == "compensation_applied":
        return "compensated" if entry.to_state is TaskState.COMPENSATED else None
    if entry.event in ("annotate", "heartbeat", "register_compensation"):
        return None
    kind = _ENDS_HELD.get(entry.event)
    if kind is not None:
        return kind
    if entry.event == "reap":
        return "reaped"
    # Any other move out of a leased state ends the lease (a store's own event).
    if entry.to_state not in (TaskState.RUNNING, TaskState.COMPENSATING):
        return entry.to_state.value if entry.to_state.value in END_KINDS else "released"
    return None


def _read(history: Sequence[HistoryEntry], now_us: int) -> tuple[list[LeaseBar], list[Mark]]:
    """The bars and marks of ``history`` at ``now_us``, in one pass."""
    deadline_us = _deadline_us(history)
    bars: list[LeaseBar] = []
    found: list[Mark] = []
    lease: _Open | None = None
    for entry in history:
        if lease is not None and entry.event == "heartbeat" and entry.token == lease.token:
            lease.heartbeats.append(entry.at_us)
            expiry = _expiry(entry, deadline_us)
            if expiry is not None:
                lease.expires_us = expiry
            continue
        if entry.event == "acquire":
            if lease is not None:
                bars.append(lease.close(_end_us(lease, entry.at_us), "replaced"))
            token = entry.token if entry.token is not None else _next_token(bars)
            if lease is not None or entry.reason:  # the core names the lease it replaced
                found.append(Mark("reclaim", entry.at, token, entry.reason or "took over"))
            lease = _Open(token, entry.owner or "", entry.at_us, _expiry(entry, deadline_us))
            continue
        if entry.event == "reap":
            found.append(
                Mark("reap", entry.at, None if lease is None else lease.token, entry.reason or "")
            )
        if lease is None:
            continue
        kind = _ending(entry)
        if kind is None:
            continue
        if lease.expired(entry.at_us) and kind != "reaped":
            kind = "expired"  # it ran out before this entry; the entry did not end it
        bars.append(lease.close(_end_us(lease, entry.at_us), kind))
        lease = None
    if lease is not None:
        if lease.expires_us is not None and lease.expired(now_us):
            bars.append(lease.close(lease.expires_us, "expired"))
        else:
            bars.append(lease.close(now_us, "held"))
    return bars, found


def lease_bars(history: Sequence[HistoryEntry], *, now: datetime) -> list[LeaseBar]:
    """One :class:`LeaseBar` per fencing token acquired in ``history`` (a task's
    entries, oldest first), in acquisition order, as the module documentation says.
    ``now``: an aware datetime (naive: :class:`~sagalease.errors.InvalidInputError`).
    """
    return _read(history, to_us(now, "now"))[0]


def marks(history: Sequence[HistoryEntry], *, now: datetime) -> list[Mark]:
    """The reclaims (an ``acquire`` that replaced an expired lease, which its entry's
    reason names) and the reaper's actions (``reap`` entries) of ``history``, in order.
    """
    return _read(history, to_us(now, "now"))[1]


def _end_us(lease: _Open, at_us: int) -> int:
    """Where a bar ended by an entry at ``at_us`` stops: there, or at the expiry if
    the lease had run out first.
    """
    if lease.expires_us is not None and lease.expires_us < at_us:
        return lease.expires_us
    return at_us


def _next_token(bars: Sequence[LeaseBar]) -> int:
    return bars[-1].token + 1 if bars else 1


# ---------------------------------------------------------------- SVG

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LABEL: Final = 28
"""Characters of an owner shown beside its bar (the whole id is in the tooltip)."""

WIDTH: Final = 900
_LEFT: Final = 200
_RIGHT: Final = 16
_TOP: Final = 34
_ROW: Final = 24
_BAR: Final = 14


def _text(value: object) -> str:
    """``value`` as XML text or attribute content: characters XML cannot hold
    replaced by U+FFFD, then ``& < > " '`` escaped.
    """
    return html.escape(_NOT_XML.sub("\ufffd", str(value)), quote=True)


def _short(owner: str) -> str:
    return owner if len(owner) <= _LABEL else owner[: _LABEL - 1] + "\u2026"


def _iso(instant: datetime) -> str:
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span(instant: timedelta) -> str:
    seconds = instant.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def timeline_svg(history: Sequence[HistoryEntry], *, now: datetime) -> str:
    """The lease timeline as an ``<svg id="lease-timeline">`` string: per token a row
    with a ``rect.lease-bar`` (``data-token``, ``data-owner``, ``data-end-kind``,
    filled with :func:`owner_colour`), its heartbeats as ``line.heartbeat`` ticks,
    and above the rows the reclaims and reaper actions as ``.mark`` triangles
    (``data-kind``); every element has a ``<title>`` tooltip. No bars: a one-line
    note. Every text is escaped (see the module documentation). The axis runs from
    the first entry to ``now`` while the task is open, to its last entry once it has
    ended (``axis-end`` says how long that is).
    """
    now_us = to_us(now, "now")
    bars, found = _read(history, now_us)
    # The axis runs to ``now`` while the task is open; once it has ended, to its last
    # entry (a task that ended long ago would otherwise shrink to slivers).
    ended = bool(history) and history[-1].to_state.is_terminal
    instants = [e.at_us for e in history] + ([] if ended else [now_us])
    start_us = min(instants)
    end_us = max(instants + [to_us(b.end, "end") for b in bars])
    span_us = max(end_us - start_us, 1)
    scale = (WIDTH - _LEFT - _RIGHT) / span_us
    height = _TOP + _ROW * max(len(bars), 1) + 22

    def x(instant: datetime) -> float:
        return round(_LEFT + (to_us(instant, "instant") - start_us) * scale, 2)

    out = [
        f'<svg id="lease-timeline" xmlns="http://www.w3.org/2000/svg" role="img"'
        f' width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"'
        f' data-bars="{len(bars)}" font-family="sans-serif" font-size="12">',
        f"<title>{_text(f'Lease timeline: {len(bars)} lease(s), {len(found)} mark(s)')}</title>",
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP - 6}" x2="{WIDTH - _RIGHT}"'
        f' y2="{_TOP - 6}" stroke="#888"/>',
        f'<text class="axis-start" x="{_LEFT}" y="12">{_text(_iso(from_us(start_us)))}</text>',
        f'<text class="axis-end" x="{WIDTH - _RIGHT}" y="12" text-anchor="end">'
        f"{_text('+' + _span(timedelta(microseconds=span_us)))}</text>",
    ]
    if not bars:
        out.append(
            f'<text class="empty" x="{_LEFT}" y="{_TOP + 14}">{_text("never leased")}</text>'
        )
    for row, bar in enumerate(bars):
        y = _TOP + row * _ROW
        x0, x1 = x(bar.start), x(bar.end)
        width = max(x1 - x0, 1.0)
        tip = (
            f"token {bar.token}, {bar.owner}: {_iso(bar.start)} to {_iso(bar.end)}"
            f" ({bar.end_kind}, {_span(bar.end - bar.start)}, {len(bar.heartbeats)} heartbeat(s))"
        )
        out.append(
            f'<g class="lease" data-token="{bar.token}" data-owner="{_text(bar.owner)}">'
            f'<text class="owner" x="{_LEFT - 6}" y="{y + _BAR - 2}" text-anchor="end"'
            f' direction="ltr" unicode-bidi="isolate">'
            f"{_text(f'#{bar.token} ' + _short(bar.owner))}</text>"
            f'<rect class="lease-bar" data-token="{bar.token}" data-owner="{_text(bar.owner)}"'
            f' data-end-kind="{_text(bar.end_kind)}" data-start="{_text(_iso(bar.start))}"'
            f' data-end="{_text(_iso(bar.end))}" x="{x0}" y="{y}" width="{round(width, 2)}"'
            f' height="{_BAR}" rx="2" fill="{owner_colour(bar.owner)}"'
            f' fill-opacity="{0.55 if bar.end_kind == "held" else 0.85}">'
            f"<title>{_text(tip)}</title></rect>"
        )
        for beat in bar.heartbeats:
            hx = x(beat)
            out.append(
                f'<line class="heartbeat" data-token="{bar.token}" data-at="{_text(_iso(beat))}"'
                f' x1="{hx}" y1="{y - 2}" x2="{hx}" y2="{y + _BAR + 2}" stroke="#222"'
                f' stroke-width="1.5"><title>{_text(f"heartbeat {_iso(beat)}")}</title></line>'
            )
        out.append("</g>")
    for mark in found:
        mx = x(mark.at)
        colour = "#B00020" if mark.kind == "reap" else "#333333"
        token = "" if mark.token is None else f' data-token="{mark.token}"'
        points = f"{mx - 5},{_TOP - 18} {mx + 5},{_TOP - 18} {mx},{_TOP - 8}"
        tip = f"{mark.kind} at {_iso(mark.at)}: {mark.text}"
        out.append(
            f'<polygon class="mark" data-kind="{_text(mark.kind)}"{token}'
            f' data-at="{_text(_iso(mark.at))}" points="{points}" fill="{colour}">'
            f"<title>{_text(tip)}</title></polygon>"
        )
    out.append("</svg>")
    return "".join(out)
