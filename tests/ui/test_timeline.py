"""The lease timeline: bars per fencing token from real histories, and its SVG."""

from __future__ import annotations

import contextlib
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalease import Compensation, ManualClock, MemoryStore, TaskState
from sagalease.core import replay
from sagalease.errors import InvalidInputError, SagaLeaseError
from sagalease.records import HistoryEntry
from sagalease.ui.timeline import (
    END_KINDS,
    PALETTE,
    LeaseBar,
    lease_bars,
    marks,
    owner_colour,
    timeline_svg,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"
COMP = Compensation("refund", "order-1")


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def sec(seconds: float) -> timedelta:
    """``seconds`` as a timedelta."""
    return timedelta(seconds=seconds)


def parse(svg: str) -> ET.Element:
    """The SVG parsed as XML (raises if it is not well-formed)."""
    return ET.fromstring(svg)


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    """Every element of ``root`` whose class attribute names ``cls``."""
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def scripted() -> tuple[MemoryStore, list[HistoryEntry]]:
    """One task through acquire, heartbeats, expiry, a reclaim by another owner, a
    reaped lease, a release and a completion (a ManualClock drives the store).
    """
    clock = ManualClock(T0)
    s = MemoryStore(clock=clock)
    s.create("t")
    s.acquire("t", owner="w1", ttl=sec(10))  # token 1, expires at 10
    clock.advance(sec(4))
    s.heartbeat("t", owner="w1", token=1, ttl=sec(10))  # expires at 14
    clock.advance(sec(4))
    s.heartbeat("t", owner="w1", token=1, ttl=sec(10))  # expires at 18
    clock.advance(sec(12))
    s.acquire("t", owner="w2", ttl=sec(5))  # at 20: reclaims token 1 (expired at 18)
    clock.advance(sec(10))
    assert [r.task_id for r in s.reap()] == ["t"]  # at 30: drops token 2 (expired at 25)
    clock.advance(sec(1))
    s.acquire("t", owner="w3", ttl=sec(10))  # at 31: token 3
    clock.advance(sec(1))
    s.release("t", owner="w3", token=3)  # at 32
    clock.advance(sec(1))
    s.acquire("t", owner="w1", ttl=sec(10))  # at 33: token 4
    clock.advance(sec(2))
    s.complete("t", owner="w1", token=4)  # at 35
    return s, s.history("t")


def test_one_bar_per_token_from_acquisition_to_its_end() -> None:
    """A scripted history gives one bar per token, each from its acquire to its
    release, its expiry (reclaimed or reaped) or the task's end, with its heartbeats.
    """
    _s, history = scripted()
    bars = lease_bars(history, now=at(100))
    assert bars == [
        LeaseBar(1, "w1", T0, at(18), "replaced", (at(4), at(8)), at(18)),
        LeaseBar(2, "w2", at(20), at(25), "reaped", (), at(25)),
        LeaseBar(3, "w3", at(31), at(32), "released", (), at(41)),
        LeaseBar(4, "w1", at(33), at(35), "completed", (), at(43)),
    ]
    assert {b.end_kind for b in bars} <= set(END_KINDS)


def test_reclaims_and_reaper_actions_are_marked() -> None:
    """The acquire that took over the expired lease is a reclaim mark (token 2, its
    reason naming the lease replaced); the reaper's entry is a reap mark on token 2.
    """
    _s, history = scripted()
    found = marks(history, now=at(100))
    assert [(m.kind, m.at, m.token) for m in found] == [
        ("reclaim", at(20), 2),
        ("reap", at(30), 2),
    ]
    assert "'w1' (token 1) expired" in found[0].text


def end_of(events: str, *, now: datetime) -> list[tuple[int, str, datetime]]:
    """(token, end kind, end) of the bars of one task driven through ``events``."""
    s = MemoryStore()
    deadline = at(5) if events == "deadline" else None
    s.create("t", compensations=[COMP], deadline=deadline, now=T0)
    s.acquire("t", owner="w1", ttl=sec(30), now=T0)
    if events in ("failed", "compensated", "compensation_failed"):
        s.fail("t", owner="w1", token=1, reason="boom", now=at(1))
        s.acquire("t", owner="c1", ttl=sec(30), now=at(2))
        if events == "compensated":
            s.compensation_applied("t", owner="c1", token=2, index=0, now=at(3))
        elif events == "compensation_failed":
            s.compensation_failed("t", owner="c1", token=2, index=0, reason="no", now=at(3))
    elif events == "quarantine":
        s.quarantine("t", reason="poison", by="ops", now=at(3))
    elif events == "quarantine_after_expiry":
        s.quarantine("t", reason="poison", by="ops", now=at(40))
    return [(b.token, b.end_kind, b.end) for b in lease_bars(s.history("t"), now=now)]


@pytest.mark.parametrize(
    ("events", "now", "want"),
    [
        ("failed", at(10), [(1, "failed", at(1)), (2, "held", at(10))]),
        ("compensated", at(10), [(1, "failed", at(1)), (2, "compensated", at(3))]),
        ("compensation_failed", at(10), [(1, "failed", at(1)), (2, "quarantined", at(3))]),
        ("quarantine", at(10), [(1, "quarantined", at(3))]),
        ("quarantine_after_expiry", at(50), [(1, "expired", at(30))]),
        ("held", at(30) - timedelta(microseconds=1), [(1, "held", at(30) - sec(1e-6))]),
        ("held", at(30), [(1, "expired", at(30))]),
        ("deadline", at(100), [(1, "expired", at(5))]),
    ],
)
def test_end_kinds(events: str, now: datetime, want: list[tuple[int, str, datetime]]) -> None:
    """Each way a lease ends gives its end kind and instant: a failure into
    compensation, the last compensation applied, a permanent compensation failure, an
    operator quarantine (live lease: at the quarantine; expired: at the expiry), still
    held at ``now`` (up to the expiry, exclusive), and a lease capped at the deadline.
    """
    assert end_of(events, now=now) == want


def test_heartbeats_are_ticks_on_their_bar() -> None:
    """Each heartbeat is a ``line.heartbeat`` of its token, placed inside its bar."""
    _s, history = scripted()
    root = parse(timeline_svg(history, now=at(100)))
    ticks = by_class(root, "heartbeat")
    assert [t.get("data-token") for t in ticks] == ["1", "1"]
    (bar1,) = [r for r in by_class(root, "lease-bar") if r.get("data-token") == "1"]
    left = float(bar1.get("x", "nan"))
    right = left + float(bar1.get("width", "nan"))
    for tick in ticks:
        assert left <= float(tick.get("x1", "nan")) <= right


def test_svg_has_a_bar_per_token_coloured_by_owner_and_the_marks() -> None:
    """The SVG is ``svg#lease-timeline`` with one ``rect.lease-bar`` per token carrying
    ``data-token``/``data-owner``, filled with the owner's colour (the same owner, the
    same colour), and one ``.mark`` per reclaim and reaper action with ``data-kind``.
    """
    _s, history = scripted()
    root = parse(timeline_svg(history, now=at(100)))
    assert root.tag == f"{SVG}svg"
    assert root.get("id") == "lease-timeline"
    rects = by_class(root, "lease-bar")
    assert all(r.tag == f"{SVG}rect" for r in rects)
    assert [(r.get("data-token"), r.get("data-owner")) for r in rects] == [
        ("1", "w1"),
        ("2", "w2"),
        ("3", "w3"),
        ("4", "w1"),
    ]
    assert [r.get("fill") for r in rects] == [owner_colour(o) for o in ("w1", "w2", "w3", "w1")]
    assert [m.get("data-kind") for m in by_class(root, "mark")] == ["reclaim", "reap"]


def _axis(root: ET.Element) -> tuple[str, float, float]:
    """The ``axis-end`` label, the axis' right end and the last bar's right edge."""
    (label,) = by_class(root, "axis-end")
    (axis,) = by_class(root, "axis")
    last = by_class(root, "lease-bar")[-1]
    right = float(last.get("x", "nan")) + float(last.get("width", "nan"))
    return label.text or "", float(axis.get("x2", "nan")), right


def test_the_axis_ends_at_the_last_entry_once_the_task_has_ended() -> None:
    """An ended task's axis runs from its first entry to its last however late ``now``
    is (created at 0, completed at 35: ``+35.0 s``, the last bar reaching the axis'
    right end, token 1's 18 s a matching share of it); an open task's runs to ``now``.
    """
    _s, history = scripted()
    for now in (at(35), at(100), at(365 * 86_400)):
        root = parse(timeline_svg(history, now=now))
        label, axis_end, last_right = _axis(root)
        assert label == "+35.0 s", now
        assert last_right == pytest.approx(axis_end, abs=0.02), now
        first = by_class(root, "lease-bar")[0]
        left = float(first.get("x", "nan"))
        share = float(first.get("width", "nan")) / (axis_end - left)
        assert share == pytest.approx(18 / 35, abs=0.001), now

    s = MemoryStore()
    s.create("t", now=T0)
    s.acquire("t", owner="w1", ttl=sec(10), now=at(0))
    root = parse(timeline_svg(s.history("t"), now=at(100)))
    label, axis_end, last_right = _axis(root)
    assert label == "+100.0 s"
    (bar,) = by_class(root, "lease-bar")  # 0 to its expiry at 10 s: a tenth of the axis
    left = float(bar.get("x", "nan"))
    assert last_right == pytest.approx(left + (axis_end - left) / 10, abs=0.02)


def test_owner_colour_is_stable_and_from_the_palette() -> None:
    """An owner's colour is a palette colour fixed by its id (not by the process)."""
    assert owner_colour("w1") == owner_colour("w1") in PALETTE
    assert len({owner_colour(f"worker-{i}") for i in range(64)}) > 1


HOSTILE = [
    "</svg><script>alert(1)</script>",
    '"\' onload="alert(2)" x=\'',
    "&amp;&lt;]]><!--",
    "\u202eevil\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "x" * 200,
]


@pytest.mark.parametrize("owner", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_owners_are_escaped(owner: str) -> None:
    """Hostile owners (markup, quotes, CDATA/comment openers, right-to-left text, the
    longest id) come back as text: the SVG parses, holds no ``script`` element and no
    attribute it did not write, and the owner is the bar's ``data-owner`` as given.
    """
    s = MemoryStore()
    s.create("t", now=T0)
    s.acquire("t", owner=owner, ttl=sec(5), now=T0)
    s.acquire("t", owner="w2", ttl=sec(5), now=at(6))  # a reclaim: the reason names owner
    svg = timeline_svg(s.history("t"), now=at(7))
    root = parse(svg)
    assert not [e for e in root.iter() if e.tag.lower().endswith("script")]
    assert not [e for e in root.iter() if any(k.lower().startswith("on") for k in e.attrib)]
    assert [r.get("data-owner") for r in by_class(root, "lease-bar")] == [owner, "w2"]
    titles = " ".join(e.text or "" for e in root.iter(f"{SVG}title"))
    assert owner in titles


def test_text_xml_cannot_hold_is_replaced() -> None:
    """An entry with characters XML 1.0 cannot hold (a hand-made history: the store
    refuses control characters in ids) still gives a well-formed SVG.
    """
    entries = [
        HistoryEntry(1, "t", "create", None, TaskState.PENDING, 0),
        HistoryEntry(2, "t", "acquire", TaskState.PENDING, TaskState.RUNNING, 5, "a\x01\x00b", 1),
        HistoryEntry(3, "t", "reap", TaskState.RUNNING, TaskState.PENDING, 9, reason="\x1b[31m"),
    ]
    root = parse(timeline_svg(entries, now=at(0)))
    (rect,) = by_class(root, "lease-bar")
    assert rect.get("data-owner") == "a\ufffd\ufffdb"
    assert rect.get("data-end-kind") == "reaped"


def test_naive_now_is_refused() -> None:
    """A naive ``now`` is the library's InvalidInputError (time is aware UTC)."""
    _s, history = scripted()
    with pytest.raises(InvalidInputError):
        lease_bars(history, now=datetime(2026, 1, 1))
    with pytest.raises(InvalidInputError):
        timeline_svg(history, now=datetime(2026, 1, 1))


def test_a_task_never_leased_draws_no_bar() -> None:
    """No acquisition: no bar, and the SVG says so."""
    s = MemoryStore()
    s.create("t", now=T0)
    root = parse(timeline_svg(s.history("t"), now=at(1)))
    assert by_class(root, "lease-bar") == []
    assert by_class(root, "empty")


# ---------------------------------------------------------------- properties

OWNERS = ("w1", "w2", "w3")
Step = tuple[str, int, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("acquire", "acquire", "acquire", "heartbeat", "heartbeat", "heartbeat"),
                *("release", "complete", "fail", "reap", "applied", "applied", "quar"),
            ]
        ),
        st.integers(0, 2),  # the owner acquiring
        st.sampled_from([0, 0, 0, 1, 1, 2, 3, 5, 8, 12]),  # seconds the clock moves first
    ),
    max_size=25,
)


def act(s: MemoryStore, action: str, who: int) -> None:
    """One call of the plan on task ``t``, holder calls as its current holder."""
    rec = s.get("t")
    assert rec is not None
    owner, token = (rec.lease.owner, rec.lease.token) if rec.lease else ("nobody", rec.token)
    if action == "acquire":
        s.acquire("t", owner=OWNERS[who], ttl=sec(5))
    elif action == "heartbeat":
        s.heartbeat("t", owner=owner, token=token, ttl=sec(5))
    elif action == "release":
        s.release("t", owner=owner, token=token)
    elif action == "complete":
        s.complete("t", owner=owner, token=token)
    elif action == "fail":
        s.fail("t", owner=owner, token=token, reason="x")
    elif action == "applied":
        s.compensation_applied("t", owner=owner, token=token, index=0)
    elif action == "reap":
        s.reap()
    else:
        s.quarantine("t", reason="r", by="ops")


def drive(plan: list[Step], with_compensation: bool) -> tuple[MemoryStore, ManualClock]:
    """A store with task ``t`` driven through ``plan`` (refused calls are skipped)."""
    clock = ManualClock(T0)
    s = MemoryStore(clock=clock)
    s.create("t", compensations=[COMP] if with_compensation else (), max_attempts=20)
    for action, who, wait in plan:
        clock.advance(sec(wait))
        with contextlib.suppress(SagaLeaseError):
            act(s, action, who)
    return s, clock


def check_bars(bars: list[LeaseBar], history: list[HistoryEntry], now: datetime) -> None:
    """The properties of the bars of a store's ``history`` at ``now`` (AssertionError
    naming the first one broken): one bar per token acquired, in token order, with
    the heartbeats of that token; each starts no later than it ends and ends no later
    than the next one starts (distinct tokens never overlap in time); one that ran
    out ends at its expiry; only the last can be held, exactly when the record
    (replayed from the history) holds a lease live at ``now``, whose token, owner and
    expiry are the bar's.
    """
    rec = replay(history)
    acquired = [e.token for e in history if e.event == "acquire"]
    assert [b.token for b in bars] == acquired, "one bar per token, in order"
    for bar in bars:
        beats = [e.at for e in history if e.event == "heartbeat" and e.token == bar.token]
        assert list(bar.heartbeats) == beats, f"the heartbeats of token {bar.token}"
        assert bar.start <= bar.end, f"token {bar.token} ends before it starts"
        assert bar.end_kind in END_KINDS
        if bar.end_kind in ("expired", "replaced", "reaped"):
            assert bar.end == bar.expires, f"token {bar.token} ran out but not at its expiry"
    for before, after in itertools.pairwise(bars):
        assert before.end <= after.start, f"tokens {before.token} and {after.token} overlap"
    held = [b for b in bars if b.end_kind == "held"]
    live = rec.lease is not None and now < rec.lease.expires_at
    assert len(held) == (1 if live else 0), "held exactly when the record's lease is live"
    if held:
        assert held[0] is bars[-1], "only the last bar is held"
    if rec.lease is not None:
        last = bars[-1]
        assert (last.token, last.owner) == (rec.lease.token, rec.lease.owner), "the holder"
        assert last.expires == rec.lease.expires_at, "the last bar's expiry is the lease's"
        assert last.end_kind == ("held" if live else "expired")


@settings(max_examples=150, deadline=None)
@given(plan=steps, with_compensation=st.booleans(), later=st.integers(0, 10))
def test_bars_of_random_histories(plan: list[Step], with_compensation: bool, later: int) -> None:
    """For any history a store writes, the bars have the properties of
    :func:`check_bars`; the SVG parses with a ``rect.lease-bar`` per bar, a tick per
    heartbeat and a mark per reclaim and reaper action.
    """
    s, clock = drive(plan, with_compensation)
    now = clock.advance(sec(later))
    history = s.history("t")
    bars = lease_bars(history, now=now)
    check_bars(bars, history, now)
    root = parse(timeline_svg(history, now=now))
    assert len(by_class(root, "lease-bar")) == len(bars)
    assert len(by_class(root, "heartbeat")) == sum(len(b.heartbeats) for b in bars)
    reclaims = [e for e in history if e.event == "acquire" and e.reason]
    reaps = [e for e in history if e.event == "reap"]
    assert len(by_class(root, "mark")) == len(reclaims) + len(reaps)


def _until_next(bars: list[LeaseBar], now: datetime) -> list[LeaseBar]:
    ends = [b.start for b in bars[1:]] + [now]
    return [replace(b, end=end) for b, end in zip(bars, ends, strict=True)]


def _without_heartbeats(bars: list[LeaseBar], now: datetime) -> list[LeaseBar]:
    return [replace(b, heartbeats=()) for b in bars]


def _per_owner(bars: list[LeaseBar], now: datetime) -> list[LeaseBar]:
    seen: dict[str, LeaseBar] = {}
    for bar in bars:
        seen[bar.owner] = replace(seen.get(bar.owner, bar), end=bar.end)
    return list(seen.values())


def _expiry_from_first_ttl(bars: list[LeaseBar], now: datetime) -> list[LeaseBar]:
    return [replace(b, expires=b.start + sec(10)) for b in bars]


def _held_to_the_expiry(bars: list[LeaseBar], now: datetime) -> list[LeaseBar]:
    return [replace(b, end_kind="held") if b.end_kind == "expired" else b for b in bars]


@pytest.mark.parametrize(
    "broken",
    [_until_next, _without_heartbeats, _per_owner, _expiry_from_first_ttl, _held_to_the_expiry],
)
def test_the_properties_catch_broken_bars(
    broken: Callable[[list[LeaseBar], datetime], list[LeaseBar]],
) -> None:
    """Bars drawn wrong (each bar lasting until the next acquisition, heartbeats
    dropped, one bar per owner, an expiry that ignores heartbeats, an expired lease
    shown held) break a property of :func:`check_bars` on real histories.
    """
    _s, history = scripted()
    s = MemoryStore()
    s.create("t", now=T0)
    s.acquire("t", owner="w1", ttl=sec(10), now=T0)
    s.heartbeat("t", owner="w1", token=1, ttl=sec(10), now=at(5))
    expired = s.history("t")
    now = at(100)
    for h in (history, expired):
        check_bars(lease_bars(h, now=now), h, now)  # the real bars pass

    def caught(h: list[HistoryEntry]) -> bool:
        try:
            check_bars(broken(lease_bars(h, now=now), now), h, now)
        except AssertionError:
            return True
        return False

    assert caught(history) or caught(expired)
