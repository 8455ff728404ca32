"""The web view over HTTP (Starlette's TestClient), on a memory store and a SQLite file.

Pinned here: every route answers HTML and, with ``Accept: application/json``, JSON
of the same data; the dashboard's counts, lag and stale leases are the store's; the
list pages filter and page in creation order; search finds a task or a saga; an
unknown task is a 404 naming it; hostile values never appear as markup; actions
answer 403 without ``allow_actions`` or without a valid CSRF token and change
nothing, work with both, and map a store's refusal to 409; ``/healthz`` answers 503
on a closed store; no page shows a store URL's password; the ``ui`` command without
the [ui] extra is one line naming it.
"""

from __future__ import annotations

import html
import json
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from ui_scenario import (
    EXPECTED_STATES,
    HOSTILE_ID,
    HOSTILE_OWNER,
    HOSTILE_QUEUE,
    HOSTILE_SAGA,
    HOSTILE_TEXT,
    RTL_ID,
    RTL_SAGA,
    SECRET,
    VIEW_AT,
    Scenario,
    make_client,
    populate,
)

from conftest import T0
from sagalease import MemoryStore, SagaStore, SQLiteStore, TaskState
from sagalease.cli import main
from sagalease.errors import StoreUnavailableError
from sagalease.stores._open import redact_url
from sagalease.ui._csrf import COOKIE, Csrf
from sagalease.ui.app import CONTENT_SECURITY_POLICY, task_path
from sagalease.ui.metrics import collect, prometheus_text

JSON = {"accept": "application/json"}

# ------------------------------------------------------------------ a tiny DOM


_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


@dataclass
class Node:
    """One element of a parsed page."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """The text content, as a browser's ``textContent``."""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        """The element and every element inside it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def select(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        """The elements with ``tag`` whose attributes match (``class_`` is one class
        of the element; ``None`` only asks for the attribute to be there).
        """
        found = []
        for node in self.walk():
            if tag is not None and node.tag != tag:
                continue
            if all(_matches(node, name, value) for name, value in attrs.items()):
                found.append(node)
        return found

    def one(self, tag: str | None = None, **attrs: str | None) -> Node:
        """The single element that :meth:`select` finds."""
        found = self.select(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


def _matches(node: Node, name: str, value: str | None) -> bool:
    if name == "class_":
        return value in node.attrs.get("class", "").split()
    name = name.replace("_", "-")
    if value is None:
        return name in node.attrs
    return node.attrs.get(name) == value


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    """The page's element tree."""
    parser = _Parser()
    parser.feed(page)
    parser.close()
    return parser.root


# ------------------------------------------------------------------ fixtures


@pytest.fixture(params=["memory", "sqlite"])
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    """:func:`ui_scenario.populate` on a memory store and on a SQLite file."""
    path: Path | None = None
    store: SagaStore
    if request.param == "memory":
        store = MemoryStore()
    else:
        path = tmp_path / "ui.db"
        store = SQLiteStore(path)
    ids = populate(store)
    try:
        yield Scenario(store, path, ids)
    finally:
        store.close()


def _snapshot(store: SagaStore) -> list[tuple[Any, ...]]:
    """Every record and history of ``store`` (to show that nothing changed)."""
    tasks = store.list_tasks(limit=10_000)
    return [(t, tuple(store.history(t.task_id))) for t in tasks]


# ------------------------------------------------------------------ dashboard


def test_dashboard_counts_are_the_stores_per_queue_and_state(scenario: Scenario) -> None:
    """``table#counts`` holds one ``td[data-state][data-queue]`` per state and queue
    with ``store.counts(queue=Q)`` and ``[data-total-state]`` with ``store.counts()``;
    the JSON answer carries the same figures.
    """
    store = scenario.store
    client = make_client(store)
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    dom = parse(answer.text)
    table = dom.one("table", id="counts")
    queues = sorted({t.queue for t in store.list_tasks(limit=10_000)})
    assert queues == ["default", HOSTILE_QUEUE, "urgent"] or queues == sorted(
        ["default", HOSTILE_QUEUE, "urgent"]
    )
    cells = table.select("td", data_state=None, data_queue=None)
    assert len(cells) == len(queues) * len(TaskState)
    for cell in cells:
        queue, state = cell.attrs["data-queue"], TaskState(cell.attrs["data-state"])
        assert int(cell.text()) == store.counts(queue=queue)[state], (queue, state)
    totals = store.counts()
    for state in TaskState:
        assert int(table.one(data_total_state=state.value).text()) == totals[state]

    data = client.get("/", headers=JSON).json()
    assert data["queues"] == queues
    assert data["totals"] == {s.value: n for s, n in totals.items()}
    for queue in queues:
        assert data["counts"][queue] == {s.value: n for s, n in store.counts(queue=queue).items()}
    assert data["total"] == len(EXPECTED_STATES)


def test_dashboard_shows_lag_stale_leases_and_owed_compensations(scenario: Scenario) -> None:
    """``#queue-lag [data-queue]`` carries each queue's lag in ``data-lag-seconds``
    (the oldest available PENDING task's wait at the app's clock); ``#stale`` lists
    the expired lease; ``#recent-failures`` lists failed and quarantined tasks with
    the compensations they still owe.
    """
    client = make_client(scenario.store)
    dom = parse(client.get("/").text)
    lag = dom.one("table", id="queue-lag")
    # pending-1 (default) and pending-2 (urgent) have waited since T0; later-1 is not available.
    assert float(lag.one("tr", data_queue="default").attrs["data-lag-seconds"]) == 25.0
    assert float(lag.one("tr", data_queue="urgent").attrs["data-lag-seconds"]) == 25.0
    # The hostile queue holds one quarantined task: nothing waits.
    assert lag.one("tr", data_queue=HOSTILE_QUEUE).attrs["data-lag-seconds"] == ""
    assert lag.one("tr", data_queue="urgent").attrs["data-stale"] == "1"

    stale = dom.one("table", id="stale")
    assert [r.attrs["data-task-id"] for r in stale.select("tr", data_task_id=None)] == ["stale-1"]
    assert stale.attrs["data-count"] == "1"
    assert "worker-d" in stale.text()

    failures = dom.one("table", id="recent-failures")
    rows = {r.attrs["data-task-id"]: r for r in failures.select("tr", data_task_id=None)}
    assert set(rows) == {
        "failed-1",
        "quarantined-1",
        "operator-quarantined-1",
        HOSTILE_ID,
    }
    assert rows["failed-1"].attrs["data-owed"] == "0"
    assert rows["quarantined-1"].attrs["data-owed"] == "1"
    assert "notify → customer-7" in rows["quarantined-1"].text()
    assert "restock → sku-9" in rows["operator-quarantined-1"].text()

    data = client.get("/", headers=JSON).json()
    assert data["queue_lag_seconds"]["default"] == 25.0
    assert data["queue_lag_seconds"][HOSTILE_QUEUE] is None
    assert data["stale_count"] == 1
    assert [t["task_id"] for t in data["stale"]] == ["stale-1"]
    owed = {t["task_id"]: [c["target"] for c in t["owed"]] for t in data["failures"]}
    assert owed["quarantined-1"] == ["customer-7"]
    assert owed["failed-1"] == []


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_dashboard_failures_are_the_most_recent_newest_first(backend: str, tmp_path: Path) -> None:
    """With more failed and quarantined tasks than ``#recent-failures`` shows, it lists
    the 20 most recently created, newest first (not the 20 oldest), in HTML and JSON;
    ``a#all-failures`` leads to the whole list newest first, whose first page is the
    same 20 and whose next page goes on with the older ones.
    """
    store: SagaStore = MemoryStore() if backend == "memory" else SQLiteStore(tmp_path / "f.db")
    try:
        ended: list[str] = []
        for i in range(45):
            task_id = f"t{i:02d}"
            store.create(task_id, now=T0)
            if i % 3 == 1:
                store.quarantine(task_id, reason="poison", by="ops", now=T0)
                ended.append(task_id)
            elif i % 3 == 2:
                held = store.acquire(task_id, owner="w", ttl=timedelta(seconds=30), now=T0)
                store.fail(task_id, owner="w", token=held.token, reason="boom", now=T0)
                ended.append(task_id)
        newest = ended[::-1][:20]
        assert len(ended) == 30
        client = make_client(store)
        dom = parse(client.get("/").text)
        rows = dom.one("table", id="recent-failures").select("tr", data_task_id=None)
        assert [r.attrs["data-task-id"] for r in rows] == newest
        data = client.get("/", headers=JSON).json()
        assert [t["task_id"] for t in data["failures"]] == newest

        link = html.unescape(dom.one("a", id="all-failures").attrs["href"])
        assert link == "/tasks?state=failed%2Cquarantined&order=newest"
        listed = client.get(link + "&limit=20", headers=JSON).json()
        assert [t["task_id"] for t in listed["tasks"]] == newest
        assert listed["filters"]["order"] == "newest"
        rest = client.get(listed["next_url"], headers=JSON).json()
        assert [t["task_id"] for t in rest["tasks"]] == ended[::-1][20:]
        assert rest["next_url"] is None
    finally:
        store.close()


# ------------------------------------------------------------------ task page


def test_task_page_shows_record_history_compensations_and_notes(scenario: Scenario) -> None:
    """A task page lists every history entry in order (``ol#history >
    li.history-entry``), the record, the compensations and the notes; its JSON
    carries the record and the whole history.
    """
    store = scenario.store
    client = make_client(store)
    for task_id in EXPECTED_STATES:
        answer = client.get(task_path(task_id))
        assert answer.status_code == 200, task_id
        dom = parse(answer.text)
        history = store.history(task_id)
        entries = dom.one("ol", id="history").select("li", class_="history-entry")
        assert [int(e.attrs["data-seq"]) for e in entries] == [e.seq for e in history]
        assert [e.attrs["data-event"] for e in entries] == [e.event for e in history]
        record = dom.one(id="record")
        assert record.attrs["data-task-id"] == task_id
        assert record.attrs["data-state"] == EXPECTED_STATES[task_id].value
        task = store.get(task_id)
        assert task is not None
        rows = dom.one("table", id="compensations").select("tr", class_="compensation")
        assert [r.attrs["data-status"] for r in rows] == [c.status for c in task.compensations]
        notes = dom.one("ol", id="notes").select("li", class_="note")
        assert [n.one(class_="text").text() for n in notes] == [n.text for n in task.notes]

        data = client.get(task_path(task_id), headers=JSON).json()
        assert data["task"]["task_id"] == task_id
        assert data["task"]["state"] == EXPECTED_STATES[task_id].value
        assert [e["seq"] for e in data["history"]] == [e.seq for e in history]


def test_task_page_draws_the_lease_timeline(scenario: Scenario) -> None:
    """The task page embeds ``svg#lease-timeline`` with one ``rect.lease-bar`` per
    fencing token (reclaimed-1: worker-a's token 1, worker-b's token 2).
    """
    client = make_client(scenario.store)
    dom = parse(client.get(task_path("reclaimed-1")).text)
    svg = dom.one("svg", id="lease-timeline")
    bars = svg.select("rect", class_="lease-bar")
    assert [(b.attrs["data-token"], b.attrs["data-owner"]) for b in bars] == [
        ("1", "worker-a"),
        ("2", "worker-b"),
    ]
    data = client.get(task_path("reclaimed-1"), headers=JSON).json()
    assert [(b["token"], b["owner"]) for b in data["lease_bars"]] == [
        (1, "worker-a"),
        (2, "worker-b"),
    ]


def test_unknown_task_is_a_404_naming_it(scenario: Scenario) -> None:
    """An unknown task id answers 404 with the typed error's message (HTML and JSON)."""
    client = make_client(scenario.store)
    answer = client.get(task_path("no-such-task"))
    assert answer.status_code == 404
    assert "no such task" in answer.text
    assert "no-such-task" in answer.text
    data = client.get(task_path("no-such-task"), headers=JSON).json()
    assert data == {
        "status": 404,
        "error": "TaskNotFoundError",
        "message": "task 'no-such-task': no such task",
    }


def test_task_ids_with_url_syntax_round_trip(tmp_path: Path) -> None:
    """Ids holding ``/``, ``?``, ``#``, ``%`` and spaces are percent-encoded in links
    and found again from them.
    """
    store = MemoryStore()
    ids = ["a/b", "q?x=1&y=2", "frag#ment", "per%2Fcent", " spaced ", "a/quarantine"]
    for task_id in ids:
        store.create(task_id)
    client = make_client(store)
    dom = parse(client.get("/tasks").text)
    links = [a.attrs["href"] for a in dom.one("table", id="tasks").select("a", class_="task-link")]
    assert links == [task_path(t) for t in ids]
    for task_id, link in zip(ids, links, strict=True):
        data = client.get(link, headers=JSON).json()
        assert data["task"]["task_id"] == task_id


# ------------------------------------------------------------------ lists and search


def test_list_pages_in_creation_order_with_next_page(scenario: Scenario) -> None:
    """``/tasks?limit=N`` shows the first N tasks in creation order; following
    ``a#next-page`` until it is gone shows every task once, in order.
    """
    client = make_client(scenario.store)
    expected = scenario.task_ids()
    seen: list[str] = []
    url: str | None = "/tasks?limit=4"
    pages = 0
    while url is not None:
        dom = parse(client.get(url).text)
        rows = dom.one("table", id="tasks").select("tr", class_="task-row")
        seen += [r.attrs["data-task-id"] for r in rows]
        links = dom.select("a", id="next-page")
        url = html.unescape(links[0].attrs["href"]) if links else None
        pages += 1
        assert pages < 10
    assert seen == expected
    assert pages == -(-len(expected) // 4)

    first = client.get("/tasks?limit=4", headers=JSON).json()
    assert [t["task_id"] for t in first["tasks"]] == expected[:4]
    assert first["next_after"] == expected[3]
    assert first["next_url"] == f"/tasks?limit=4&after={quote(expected[3], safe='')}"


def test_list_pages_newest_first_with_order_newest(scenario: Scenario) -> None:
    """``/tasks?order=newest`` lists the newest first; ``a#next-page`` keeps the order
    (following it to the end shows every task once, newest first); filters combine
    with it as ``store.list_tasks(newest_first=True)``; ``a#order-toggle`` flips the
    order keeping the filters; the filter form's ``order`` checkbox is checked.
    """
    store = scenario.store
    client = make_client(store)
    expected = scenario.task_ids()[::-1]
    seen: list[str] = []
    url: str | None = "/tasks?order=newest&limit=4"
    pages = 0
    while url is not None:
        dom = parse(client.get(url).text)
        rows = dom.one("table", id="tasks").select("tr", class_="task-row")
        seen += [r.attrs["data-task-id"] for r in rows]
        links = dom.select("a", id="next-page")
        url = html.unescape(links[0].attrs["href"]) if links else None
        if url is not None:
            assert "order=newest" in url
        pages += 1
        assert pages < 10
    assert seen == expected

    first = parse(client.get("/tasks?order=newest&queue=default").text)
    assert first.one(id="order").attrs["data-order"] == "newest"
    assert first.one("input", name="order").attrs.get("checked") is not None
    toggle = html.unescape(first.one("a", id="order-toggle").attrs["href"])
    assert toggle == "/tasks?queue=default"
    oldest = parse(client.get("/tasks?queue=default").text)
    assert "checked" not in oldest.one("input", name="order").attrs
    assert html.unescape(oldest.one("a", id="order-toggle").attrs["href"]) == (
        "/tasks?queue=default&order=newest"
    )
    cases: list[tuple[str, dict[str, Any]]] = [
        ("state=pending,compensating", {"state": {TaskState.PENDING, TaskState.COMPENSATING}}),
        ("queue=urgent", {"queue": "urgent"}),
        ("saga=order-1", {"saga_id": "order-1"}),
    ]
    for query, kwargs in cases:
        want = [t.task_id for t in store.list_tasks(limit=10_000, newest_first=True, **kwargs)]
        got = client.get(f"/tasks?order=newest&{query}", headers=JSON).json()
        assert [t["task_id"] for t in got["tasks"]] == want, query
    assert client.get("/tasks?order=oldest", headers=JSON).json()["filters"]["order"] == "oldest"


def test_list_filters_by_states_queue_and_saga(scenario: Scenario) -> None:
    """``state`` (comma-separated or repeated), ``queue`` and ``saga`` filter the list
    as ``store.list_tasks`` does.
    """
    store = scenario.store
    client = make_client(store)
    cases: list[tuple[str, dict[str, Any]]] = [
        (
            "/tasks?state=pending,compensating",
            {"state": {TaskState.PENDING, TaskState.COMPENSATING}},
        ),
        (
            "/tasks?state=pending&state=compensating",
            {"state": {TaskState.PENDING, TaskState.COMPENSATING}},
        ),
        (
            "/tasks?state=quarantined&queue=urgent",
            {"state": TaskState.QUARANTINED, "queue": "urgent"},
        ),
        ("/tasks?saga=order-1", {"saga_id": "order-1"}),
        (f"/tasks?saga={quote(HOSTILE_SAGA)}", {"saga_id": HOSTILE_SAGA}),
        (f"/tasks?queue={quote(HOSTILE_QUEUE)}", {"queue": HOSTILE_QUEUE}),
        ("/tasks?state=&queue=", {}),
    ]
    for url, kwargs in cases:
        expected = [t.task_id for t in store.list_tasks(limit=10_000, **kwargs)]
        assert expected or url.endswith("=urgent") is False
        dom = parse(client.get(url).text)
        rows = dom.one("table", id="tasks").select("tr", class_="task-row")
        assert [r.attrs["data-task-id"] for r in rows] == expected, url
        data = client.get(url, headers=JSON).json()
        assert [t["task_id"] for t in data["tasks"]] == expected, url


def test_list_refuses_bad_filters_with_400(scenario: Scenario) -> None:
    """A state that does not exist, a limit out of range, an unknown ``after`` (in
    either order) and an order that is neither newest nor oldest answer 400 / 400 /
    404 / 400 with the typed message.
    """
    client = make_client(scenario.store)
    for url, status, text in [
        ("/tasks?state=sleeping", 400, "'sleeping' is not one of"),
        ("/tasks?limit=0", 400, "limit must be an integer between 1 and 500"),
        ("/tasks?limit=501", 400, "limit must be"),
        ("/tasks?limit=ten", 400, "limit must be"),
        ("/tasks?after=nobody", 404, "unknown 'after' task"),
        ("/tasks?order=sideways", 400, "order must be 'newest' or 'oldest'"),
        ("/tasks?order=newest&after=nobody", 404, "unknown 'after' task"),
        (f"/tasks?queue={'q' * 201}", 400, "queue is 201 characters long"),
    ]:
        answer = client.get(url, headers=JSON)
        assert answer.status_code == status, url
        assert text in answer.json()["message"], url


def test_search_finds_a_task_or_the_tasks_of_a_saga(scenario: Scenario) -> None:
    """``/search?q=`` redirects (303) to an exact task id's page; otherwise it lists
    the tasks of saga ``q`` (none: an empty list saying so); an empty ``q`` is 400.
    """
    client = make_client(scenario.store)
    for task_id in ("done-1", HOSTILE_ID, RTL_ID):
        answer = client.get("/search", params={"q": task_id})
        assert answer.status_code == 303
        assert answer.headers["location"] == task_path(task_id)
    answer = client.get("/search", params={"q": " done-1 "})
    assert answer.headers["location"] == task_path("done-1")

    for saga, expected in [
        ("order-1", ["done-1", "reclaimed-1"]),
        (HOSTILE_SAGA, [HOSTILE_ID]),
        (RTL_SAGA, [RTL_ID]),
        ("no-such-saga", []),
    ]:
        answer = client.get("/search", params={"q": saga})
        assert answer.status_code == 200
        rows = parse(answer.text).one("table", id="tasks").select("tr", class_="task-row")
        assert [r.attrs["data-task-id"] for r in rows] == expected, saga
        data = client.get("/search", params={"q": saga}, headers=JSON).json()
        assert [t["task_id"] for t in data["tasks"]] == expected
        assert data["search"] == saga
    assert client.get("/search", params={"q": " "}).status_code == 400
    assert client.get("/search", params={"q": "x" * 10_000}).status_code == 400
    followed = client.get("/search", params={"q": "done-1"}, headers=JSON, follow_redirects=True)
    assert followed.json()["task"]["task_id"] == "done-1"


# ------------------------------------------------------------------ escaping


def _pages(scenario: Scenario) -> list[str]:
    return [
        "/",
        "/tasks",
        "/tasks?limit=500",
        f"/tasks?saga={quote(HOSTILE_SAGA)}",
        f"/search?q={quote(HOSTILE_SAGA)}",
        *(task_path(t) for t in scenario.task_ids()),
        task_path(HOSTILE_ID + "-missing"),
        f"/tasks?after={quote(HOSTILE_ID + 'x')}",
    ]


def markup_problems(page: str) -> list[str]:
    """What in ``page`` is markup that no value may become: any ``<script`` but the
    vendored one, an event-handler attribute, an ``<img``, another script source.
    """
    problems = []
    if page.count("<script") != 1 or '<script src="/static/ui.js" defer></script>' not in page:
        problems.append(f"{page.count('<script')} <script elements")
    if "<img" in page:
        problems.append("an <img element")
    dom = parse(page)
    for node in dom.walk():
        problems += [f"{node.tag}[{a}]" for a in node.attrs if a.startswith("on")]
    sources = [n.attrs.get("src") for n in dom.select("script")]
    if sources != ["/static/ui.js"]:
        problems.append(f"scripts {sources}")
    return problems


def test_hostile_values_are_shown_escaped(scenario: Scenario) -> None:
    """Hostile task ids, saga ids, queues, owners, metadata, compensations, notes and
    reasons (``<script>``, quotes, ``</svg>``, 10,000 characters, right-to-left text)
    never appear as markup (:func:`markup_problems` finds nothing on any page) and
    come back as text.
    """
    client = make_client(scenario.store, allow_actions=True)
    for url in _pages(scenario):
        answer = client.get(url)
        assert answer.status_code in (200, 404), url
        assert markup_problems(answer.text) == [], url

    dom = parse(client.get(task_path(HOSTILE_ID)).text)
    assert dom.one(id="record").attrs["data-task-id"] == HOSTILE_ID
    note = dom.one("ol", id="notes").one(class_="text").text()
    assert note == HOSTILE_TEXT
    assert len(note) == 10_000
    assert dom.one("dd", data_field="terminal_reason").text() == HOSTILE_TEXT
    assert HOSTILE_OWNER in dom.one("ol", id="history").text()
    metadata = json.loads(dom.one("dd", data_field="metadata").text())
    assert metadata == scenario.store.get(HOSTILE_ID).metadata  # type: ignore[union-attr]
    rtl = parse(client.get(task_path(RTL_ID)).text)
    assert rtl.one(id="record").attrs["data-task-id"] == RTL_ID
    assert rtl.one("dd", data_field="task_id").one("bdi").text() == RTL_ID


def test_the_escaping_check_catches_pages_rendered_without_autoescape(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliberately broken app (Jinja autoescape off) lets the hostile values in
    as markup, and :func:`markup_problems` reports it on the hostile task's page,
    the dashboard and the list.
    """
    from sagalease.ui import app as app_module

    real = app_module._environment

    def broken() -> Any:
        env = real()
        env.autoescape = False
        return env

    monkeypatch.setattr(app_module, "_environment", broken)
    client = make_client(scenario.store)
    for url in [task_path(HOSTILE_ID), "/", "/tasks"]:
        assert markup_problems(client.get(url).text) != [], url


def test_every_answer_carries_a_strict_content_security_policy(scenario: Scenario) -> None:
    """Pages, JSON, errors, static files and /healthz send a CSP allowing scripts from
    ``'self'`` only (no inline script), and ``nosniff``.
    """
    client = make_client(scenario.store)
    for url in ["/", "/tasks", task_path("done-1"), task_path("nope"), "/static/ui.js", "/healthz"]:
        for headers in ({}, JSON):
            answer = client.get(url, headers=headers)
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert answer.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


# ------------------------------------------------------------------ actions


def _token(client: Any, task_id: str) -> str:
    """Load the task page (which sets the CSRF cookie) and read its form's token."""
    dom = parse(client.get(task_path(task_id)).text)
    tokens = {i.attrs["value"] for i in dom.select("input", name="csrf_token")}
    assert len(tokens) == 1
    return tokens.pop()


ACTIONS = [
    ("quarantine", "pending-1", {"reason": "stuck"}),
    ("annotate", "done-1", {"text": "looked at it"}),
    ("requeue", "failed-1", {}),
]


def test_actions_answer_403_without_allow_actions(scenario: Scenario) -> None:
    """Without ``allow_actions`` no action form is rendered and every POST answers
    403, even with a valid cookie and token, and nothing changes.
    """
    store = scenario.store
    client = make_client(store)
    dom = parse(client.get(task_path("pending-1")).text)
    assert dom.select("form", class_="action") == []
    assert dom.select("input", name="csrf_token") == []
    csrf = Csrf(SECRET)
    nonce = csrf.new_nonce()
    client.cookies.set(COOKIE, nonce)
    before = _snapshot(store)
    for action, task_id, fields in ACTIONS:
        answer = client.post(
            f"{task_path(task_id)}/{action}", data={**fields, "csrf_token": csrf.token(nonce)}
        )
        assert answer.status_code == 403, action
        assert "--allow-actions" in answer.text
    assert _snapshot(store) == before


def test_actions_answer_403_without_a_valid_csrf_token(scenario: Scenario) -> None:
    """With ``allow_actions``, a POST without the cookie, without the field, with a
    wrong field, with a token of another nonce or another secret answers 403 and
    changes nothing.
    """
    store = scenario.store
    client = make_client(store, allow_actions=True)
    token = _token(client, "pending-1")
    nonce = client.cookies[COOKIE]
    other = Csrf(SECRET).new_nonce()
    before = _snapshot(store)
    for action, task_id, fields in ACTIONS:
        url = f"{task_path(task_id)}/{action}"
        cases: list[tuple[str, dict[str, str], str | None]] = [
            ("no field", fields, nonce),
            ("empty field", {**fields, "csrf_token": ""}, nonce),
            ("wrong field", {**fields, "csrf_token": "0" * 64}, nonce),
            ("token of another nonce", {**fields, "csrf_token": Csrf(SECRET).token(other)}, nonce),
            ("another secret", {**fields, "csrf_token": Csrf(b"x" * 32).token(nonce)}, nonce),
            ("no cookie", {**fields, "csrf_token": token}, None),
            ("forged cookie", {**fields, "csrf_token": "forged"}, "forged"),
            ("non-ascii field", {**fields, "csrf_token": "é" * 64}, nonce),
        ]
        for case, data, cookie in cases:
            client.cookies.clear()
            if cookie is not None:
                client.cookies.set(COOKIE, cookie)
            answer = client.post(url, data=data)
            assert answer.status_code == 403, (action, case)
            assert "CSRF" in answer.text, (action, case)
    assert _snapshot(store) == before


def test_the_csrf_check_catches_a_server_that_accepts_any_token(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliberately broken token check (every token valid) lets a POST without a
    token through (303, the task quarantined): what the 403 tests above refuse.
    """
    monkeypatch.setattr(Csrf, "valid", lambda self, nonce, token: True)
    client = make_client(scenario.store, allow_actions=True)
    answer = client.post(f"{task_path('pending-1')}/quarantine", data={"reason": "forged"})
    assert answer.status_code == 303
    task = scenario.store.get("pending-1")
    assert task is not None
    assert task.state is TaskState.QUARANTINED


def test_actions_work_with_allow_actions_and_a_token(scenario: Scenario) -> None:
    """With both, quarantine, annotate and requeue write through the store (by
    ``ui``) and answer 303 to the task page; the history shows them.
    """
    store = scenario.store
    client = make_client(store, allow_actions=True)
    token = _token(client, "pending-1")
    for action, task_id, fields in ACTIONS:
        answer = client.post(f"{task_path(task_id)}/{action}", data={**fields, "csrf_token": token})
        assert answer.status_code == 303, (action, answer.text)
        assert answer.headers["location"] == task_path(task_id)
    quarantined = store.get("pending-1")
    assert quarantined is not None
    assert quarantined.state is TaskState.QUARANTINED
    assert quarantined.terminal_reason == "stuck"
    assert store.history("pending-1")[-1].event == "quarantine"
    done = store.get("done-1")
    assert done is not None
    assert (done.notes[-1].author, done.notes[-1].text) == ("ui", "looked at it")
    copy = store.get("failed-1~r1")
    assert copy is not None
    assert copy.requeued_from == "failed-1"
    assert copy.state is TaskState.PENDING
    page = parse(client.get(task_path("pending-1")).text)
    assert (
        page.one("ol", id="history").select("li", class_="history-entry")[-1].attrs["data-event"]
        == "quarantine"
    )
    # The forms on the page are the ones the contract names, each with the token.
    failed = parse(client.get(task_path("failed-1")).text)
    forms = failed.select("form", class_="action")
    assert {f.attrs["data-action"] for f in forms} == {"annotate", "requeue"}
    for form in forms:
        assert form.one("input", name="csrf_token").attrs["value"] == token


def test_a_refused_action_answers_409_with_the_typed_message(scenario: Scenario) -> None:
    """A store refusal is 409 with its message and changes nothing: quarantining a
    task that ended (TerminalTaskError), requeueing a pending one
    (InvalidTransitionError), a second requeue (DuplicateTaskError); an unknown task
    is 404 and an empty reason 400.
    """
    store = scenario.store
    client = make_client(store, allow_actions=True)
    token = _token(client, "done-1")
    assert (
        client.post(f"{task_path('failed-1')}/requeue", data={"csrf_token": token}).status_code
        == 303
    )
    before = _snapshot(store)
    for url, fields, status, error in [
        (f"{task_path('done-1')}/quarantine", {"reason": "r"}, 409, "TerminalTaskError"),
        (f"{task_path('pending-1')}/requeue", {}, 409, "InvalidTransitionError"),
        (f"{task_path('failed-1')}/requeue", {}, 409, "DuplicateTaskError"),
        (f"{task_path('nope')}/annotate", {"text": "t"}, 404, "TaskNotFoundError"),
        (f"{task_path('pending-1')}/quarantine", {"reason": " "}, 400, "InvalidInputError"),
        (f"{task_path('pending-1')}/quarantine", {}, 400, "InvalidInputError"),
    ]:
        answer = client.post(url, data={**fields, "csrf_token": token}, headers=JSON)
        assert answer.status_code == status, (url, answer.text)
        assert answer.json()["error"] == error, url
        html_answer = client.post(url, data={**fields, "csrf_token": token})
        assert html_answer.status_code == status
        assert error in html_answer.text
    assert _snapshot(store) == before
    message = client.post(
        f"{task_path('done-1')}/quarantine", data={"reason": "r", "csrf_token": token}, headers=JSON
    ).json()["message"]
    assert message.startswith("task 'done-1' in state completed:")


# ------------------------------------------------------------------ health, metrics, secrets


def test_healthz_is_200_while_the_store_answers_and_503_once_closed(tmp_path: Path) -> None:
    """``/healthz`` answers 200 ``{"ok": true}``, and 503 with the typed error's
    message once the SQLite store is closed.
    """
    store = SQLiteStore(tmp_path / "h.db")
    client = make_client(store)
    answer = client.get("/healthz")
    assert (answer.status_code, answer.json()) == (200, {"ok": True})
    store.close()
    answer = client.get("/healthz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["ok"] is False
    assert body["error"] == "StoreUnavailableError"
    assert "closed" in body["message"]


class _Failing(MemoryStore):
    """A store whose reads fail with a message that holds the URL's password."""

    def get(self, task_id: str) -> Any:
        raise StoreUnavailableError("cannot reach postgresql://ops:hunter2-secret@db/x")

    def queue_stats(self, *, now: Any = None) -> Any:
        raise StoreUnavailableError("password hunter2-secret refused")


def test_no_page_shows_the_store_urls_password(tmp_path: Path) -> None:
    """Built with a PostgreSQL URL holding a password, no page, JSON answer or error
    shows it (the header shows the URL with ``***``), even when a store error's
    message holds it.
    """
    url = "postgresql://ops:hunter2-secret@db.example:5432/prod?schema=s&sslpassword=p4ss-word"
    store = MemoryStore()
    populate(store)
    client = make_client(store, url=url, allow_actions=True)
    shown = redact_url(url)
    assert shown == "postgresql://ops:***@db.example:5432/prod?schema=s&sslpassword=***"
    for page in ["/", "/tasks", task_path("done-1"), task_path("nope"), "/healthz", "/metrics"]:
        for headers in ({}, JSON):
            answer = client.get(page, headers=headers)
            assert "hunter2-secret" not in answer.text, page
            assert "p4ss-word" not in answer.text, page
    assert html.escape(shown, quote=False) in client.get("/").text
    failing = make_client(_Failing(), url=url)
    for page in ["/", task_path("x"), "/healthz"]:
        for headers in ({}, JSON):
            answer = failing.get(page, headers=headers)
            assert answer.status_code == 503, page
            assert "hunter2-secret" not in answer.text, page
            assert "***" in answer.text, page


def test_redact_url_masks_passwords_only() -> None:
    """``redact_url`` masks a password in the user part and in ``password`` /
    ``sslpassword`` parameters, keeps everything else, and shows an unparsable
    PostgreSQL URL as its scheme only.
    """
    cases = {
        "postgresql://u:s3cret@h:5432/db?schema=x": "postgresql://u:***@h:5432/db?schema=x",
        "postgres://u:p%40ss@h1,h2/db": "postgres://u:***@h1,h2/db",
        "postgresql://u@h/db?password=s3cret&sslmode=require": (
            "postgresql://u@h/db?password=***&sslmode=require"
        ),
        "postgresql://u:@h/db": "postgresql://u:***@h/db",
        "postgresql://h/db": "postgresql://h/db",
        "postgresql://[::1": "postgresql://***",
        "sqlite:///tmp/a:b@c.db": "sqlite:///tmp/a:b@c.db",
        "memory://": "memory://",
    }
    for url, shown in cases.items():
        assert redact_url(url) == shown, url


def test_metrics_answers_the_prometheus_text_format(scenario: Scenario) -> None:
    """``/metrics`` answers ``prometheus_text(collect(store, now=<the app's clock>))``
    in the Prometheus text format, with or without ``Accept: application/json``.
    """
    client = make_client(scenario.store)
    expected = prometheus_text(collect(scenario.store, now=VIEW_AT))
    for headers in ({}, JSON):
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert answer.text == expected
    assert 'sagalease_stale_leases{queue="urgent"} 1.0' in expected


# ------------------------------------------------------------------ the command


def test_ui_command_without_the_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without starlette the ``ui`` command prints one line naming the [ui] extra and
    exits 2 (a usage error), before opening any store.
    """
    for name in list(sys.modules):
        if name == "sagalease.ui.app" or name.startswith("starlette"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    code = main(["ui", "--db", f"sqlite:///{tmp_path}/missing.db"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1
    assert "sagalease ui needs the [ui] extra: pip install 'sagalease[ui]'" in captured.err
    assert captured.out == ""


def test_ui_command_serves_the_store_it_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``sagalease ui --db URL`` and ``sagalease --db URL ui`` serve that store on
    127.0.0.1:8765 by default (uvicorn stubbed); ``--host``/``--port``/``--allow-actions``
    pass through, a non-loopback host with actions prints a warning, a missing
    SQLite file is refused with exit 3.
    """
    import uvicorn

    calls: list[dict[str, Any]] = []

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    db = tmp_path / "s.db"
    SQLiteStore(db).close()
    assert main(["ui", "--db", f"sqlite:///{db}"]) == 0
    assert main(["--db", f"sqlite:///{db}", "ui"]) == 0
    assert (
        calls[0]
        == calls[1]
        == {
            "host": "127.0.0.1",
            "port": 8765,
            "log_level": "info",
            "server_header": False,
        }
    )
    err = capsys.readouterr().err
    assert f"sqlite:///{db} at http://127.0.0.1:8765/ (read-only)" in err
    assert "warning" not in err
    assert (
        main(
            [
                "ui",
                "--db",
                f"sqlite:///{db}",
                "--host",
                "0.0.0.0",
                "--port",
                "9000",
                "--allow-actions",
            ]
        )
        == 0
    )
    assert calls[-1]["host"] == "0.0.0.0"
    assert calls[-1]["port"] == 9000
    err = capsys.readouterr().err
    assert "(actions enabled)" in err
    assert "warning: actions are enabled on 0.0.0.0" in err
    assert main(["ui", "--db", f"sqlite:///{tmp_path}/none.db"]) == 3
    assert "no store at" in capsys.readouterr().err
    assert len(calls) == 3


def test_ui_command_on_a_port_in_use_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A port another socket holds: uvicorn says why, then one ``sagalease: error:``
    line and exit 2 (real uvicorn, no request served).
    """
    db = tmp_path / "s.db"
    SQLiteStore(db).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["ui", "--db", f"sqlite:///{db}", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"sagalease: error: ui: cannot serve on 127.0.0.1:{port}" in err


def test_serve_masks_the_password_in_what_it_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve`` prints the store URL with its password masked (uvicorn stubbed)."""
    import uvicorn

    from sagalease.ui.app import serve

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    url = "postgresql://ops:hunter2-secret@db/prod?password=p4ss-word"
    serve(MemoryStore(), url=url, host="10.0.0.1", allow_actions=True)
    err = capsys.readouterr().err
    assert "postgresql://ops:***@db/prod?password=*** at http://10.0.0.1:8765/" in err
    assert "hunter2" not in err
    assert "p4ss-word" not in err
    assert "warning: actions are enabled on 10.0.0.1" in err


def test_init_json_masks_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI shows a store URL through ``redact_url`` (memory:// here, a PostgreSQL
    URL is checked by ``test_redact_url_masks_passwords_only``).
    """
    assert main(["--db", "memory://", "init", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["db"] == "memory://"


def test_view_at_is_after_every_scripted_event() -> None:
    """The scenario's clock sits after its last event (its stale lease expired)."""
    store = MemoryStore()
    populate(store)
    last = max(e.at for t in store.list_tasks(limit=1000) for e in store.history(t.task_id))
    assert last < VIEW_AT
    assert [t.task_id for t in store.list_stale(now=VIEW_AT)] == ["stale-1"]
    assert {t.task_id: t.state for t in store.list_tasks(limit=1000)} == EXPECTED_STATES
    assert VIEW_AT - last >= timedelta(seconds=3)
    assert re.fullmatch(r"[0-9a-f]{64}", Csrf(SECRET).token(Csrf.new_nonce()))
