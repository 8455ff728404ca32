"""The operator view in a real browser: headless Chromium (the system's, through
Playwright) against ``sagalease ui`` subprocesses, one per store.

Pinned here: the dashboard's counts are the store's, refreshed in place; a task
page lists every history entry and draws one lease bar per token; hostile ids,
saga ids, queues, owners, metadata, compensations and notes are shown as text and
run no script; actions answer 403 without ``--allow-actions`` or without a valid
CSRF token and change nothing, and the page's own forms work. Without Chromium
these tests skip (``SAGALEASE_REQUIRE_BROWSER=1``, as in CI: they fail).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from browser_support import copy_db, require_browser, simulate, ui_server
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request

from sagalease import Compensation, HistoryEntry, SQLiteStore, TaskSaga, TaskState
from sagalease.errors import SagaLeaseError

GUARD_MS = 30_000
"""How long a wait in the page may last before the test fails (a hang guard; the
page's refresh polls every few seconds)."""

PWNED = "window.__pwned=1"
"""What every hostile payload tries to run; the flag must never be set."""

HOSTILE_IDS = (
    f"<script>{PWNED};alert('id')</script>",
    f'"><img src=x onerror="{PWNED}">',
    f"'; {PWNED}; '",
    f'</svg><svg onload="{PWNED}"><text>x</text>',
    "\u202ehcraes\u202c שלום עולם مرحبا <b>rtl</b>",
    "a/b?c=1&amp;d#e%2F f",
    "ends/like/a/route/quarantine",
)
"""Task ids (1..200 characters, no control characters): markup, quotes, the end of
the timeline's SVG, right-to-left text, URL syntax, an action's path."""

HOSTILE_SAGA = f"</svg></td></table><script>{PWNED};alert('saga')</script>"
HOSTILE_QUEUE = f"q\"'<script>{PWNED}</script>"
HOSTILE_OWNER = f'w</text></svg><img src=x onerror="{PWNED}">'
HOSTILE_AUTHOR = f"<i onmouseover={PWNED}>op</i>"
_NOTE_UNIT = f"<script>{PWNED};alert('note')</script> \u202e«RTL»\u202c "
LONG_NOTE = (_NOTE_UNIT * 200)[:9_990] + "</svg>END"
LONG_NOTE += "x" * (10_000 - len(LONG_NOTE))
"""A note (also a failure and a quarantine reason) of 10,000 characters, the most allowed."""
HOSTILE_METADATA = {
    "<script>": f"<script>{PWNED}</script>",
    "quote": "\"'`",
    "svg": "</svg>",
    "long": "y" * 10_000,
    "rtl": "\u202egnol\u202c עברית",
}
HOSTILE_TARGET = f'</svg><iframe src="javascript:{PWNED}"></iframe>'


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def _browser_required() -> None:
    require_browser()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's files: databases and server logs."""
    return tmp_path_factory.mktemp("ui-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless system Chromium for the module."""
    from browser_support import chromium

    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def sim_db(workdir: Path) -> Path:
    """A small simulated run, as the README's main job makes it."""
    db = workdir / "sim.db"
    simulate(db, workers=2, tasks=24, seed=3)
    return db


@dataclass
class Served:
    """A server and the store (the same file) the test reads and changes."""

    base: str
    store: SQLiteStore
    output: Any

    def url(self, path: str) -> str:
        return self.base + path

    def task_url(self, task_id: str) -> str:
        return self.url("/tasks/" + quote(task_id, safe=""))


@pytest.fixture(scope="module")
def readonly(sim_db: Path, workdir: Path) -> Iterator[Served]:
    """``sagalease ui`` without ``--allow-actions`` on a copy of the simulated run."""
    db = workdir / "readonly.db"
    copy_db(sim_db, db)
    store = SQLiteStore(db)
    try:
        with ui_server(f"sqlite:///{db}", log_dir=workdir) as server:
            yield Served(server.base_url, store, server.output)
    finally:
        store.close()


@pytest.fixture(scope="module")
def actions(sim_db: Path, workdir: Path) -> Iterator[Served]:
    """``sagalease ui --allow-actions`` on a copy of the simulated run plus hostile tasks."""
    db = workdir / "actions.db"
    copy_db(sim_db, db)
    store = SQLiteStore(db)
    try:
        _add_hostile_tasks(store, datetime.now(UTC) - timedelta(minutes=5))
        with ui_server(f"sqlite:///{db}", allow_actions=True, log_dir=workdir) as server:
            yield Served(server.base_url, store, server.output)
    finally:
        store.close()


def _add_hostile_tasks(store: SQLiteStore, start: datetime) -> None:
    """Each hostile id: created in a hostile saga and queue with hostile metadata and a
    hostile compensation, leased by a hostile owner with heartbeats, failed (so it
    compensates), annotated with a 10,000-character note by a hostile author, and the
    last ones quarantined with a hostile reason.
    """
    at = start
    step = timedelta(seconds=1)
    for n, task_id in enumerate(HOSTILE_IDS):
        store.create(
            task_id,
            saga_id=HOSTILE_SAGA,
            queue=HOSTILE_QUEUE,
            metadata=HOSTILE_METADATA,
            compensations=[Compensation("undo<b>", HOSTILE_TARGET, reason=LONG_NOTE)],
            now=at,
        )
        leased = store.acquire(task_id, owner=HOSTILE_OWNER, ttl=timedelta(seconds=30), now=at)
        for _ in range(2):
            at += step
            store.heartbeat(
                task_id, owner=HOSTILE_OWNER, token=leased.token, ttl=timedelta(seconds=30), now=at
            )
        at += step
        store.fail(task_id, owner=HOSTILE_OWNER, token=leased.token, reason=LONG_NOTE, now=at)
        store.annotate(task_id, text=LONG_NOTE, by=HOSTILE_AUTHOR, now=at)
        if n % 2:
            store.quarantine(task_id, reason=LONG_NOTE, by=HOSTILE_AUTHOR, now=at)


@dataclass
class Watch:
    """What a page did that it must not: dialogs, script errors, console errors,
    requests to any other origin.
    """

    origin: str
    refused: set[str] = field(default_factory=set)
    """URLs a test expects to fail (the browser logs each failed load)."""
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(self, message: ConsoleMessage) -> None:
        if message.location.get("url", "") in self.refused:
            return  # a request the test made to be refused
        if message.type == "error" or "pwned" in message.text:
            self.console.append(f"{message.text} ({message.location.get('url')})")

    def on_request(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            self.foreign.append(request.url)


@dataclass
class Tab:
    page: Page
    watch: Watch


def _open_tab(browser: Browser, base: str) -> Iterator[Tab]:
    context = browser.new_context()
    context.set_default_timeout(GUARD_MS)
    page = context.new_page()
    watch = Watch(base)
    page.on("dialog", watch.on_dialog)
    page.on("console", watch.on_console)
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    page.on("request", watch.on_request)
    try:
        yield Tab(page, watch)
    finally:
        context.close()
    assert not watch.dialogs, f"a dialog opened: {watch.dialogs}"
    assert not watch.errors, f"a script failed: {watch.errors}"
    assert not watch.console, f"console errors: {watch.console}"
    assert not watch.foreign, f"requests to other origins: {watch.foreign}"


@pytest.fixture
def ro_tab(browser: Browser, readonly: Served) -> Iterator[Tab]:
    """A fresh browser context (no cookies) on the read-only server."""
    yield from _open_tab(browser, readonly.base)


@pytest.fixture
def act_tab(browser: Browser, actions: Served) -> Iterator[Tab]:
    """A fresh browser context (no cookies) on the server with actions."""
    yield from _open_tab(browser, actions.base)


# ------------------------------------------------------------------ helpers


def _all_tasks(store: SQLiteStore) -> list[TaskSaga]:
    tasks: list[TaskSaga] = []
    after: str | None = None
    while page := store.list_tasks(limit=500, after=after):
        tasks += page
        after = page[-1].task_id
    return tasks


def _count_cells(page: Page) -> dict[tuple[str, str], str]:
    cells: list[list[str]] = page.eval_on_selector_all(
        "table#counts td[data-state][data-queue]",
        "tds => tds.map(td => [td.dataset.state, td.dataset.queue, td.textContent.trim()])",
    )
    result = {(state, queue): text for state, queue, text in cells}
    assert len(result) == len(cells), f"a (state, queue) cell is repeated: {cells}"
    return result


def _totals(page: Page) -> dict[str, str]:
    cells: list[list[str]] = page.eval_on_selector_all(
        "[data-total-state]",
        "els => els.map(el => [el.dataset.totalState, el.textContent.trim()])",
    )
    return {state: text for state, text in cells}


def _not_pwned(page: Page) -> None:
    """No payload ran and none became markup: the flag is unset, no element carries
    an event-handler attribute, no script or iframe holds a payload.
    """
    assert page.evaluate("() => window.__pwned") is None, "an injected script ran"
    handlers: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('*')].flatMap(el =>
               [...el.attributes].filter(a => a.name.toLowerCase().startsWith('on'))
                                 .map(a => el.tagName + ' ' + a.name))"""
    )
    assert not handlers, f"injected event handlers became attributes: {handlers}"
    injected: int = page.evaluate(
        """() => [...document.querySelectorAll('script, iframe, img, b, i')]
                 .filter(el => (el.textContent + el.outerHTML).includes('__pwned')
                               || el.tagName === 'IFRAME'
                               || (el.tagName === 'IMG' && el.getAttribute('src') === 'x')
                               || (el.tagName === 'B' && el.textContent === 'rtl')).length"""
    )
    assert injected == 0, "an injected element became markup"


def _next_refresh(page: Page) -> None:
    """Run the dashboard's refresh once: move the page's (installed) clock past the
    refresh interval, then wait for the script to have applied the JSON.
    """
    every = page.get_attribute("body", "data-refresh-seconds")
    assert every is not None, "the dashboard names no refresh interval"
    assert page.get_attribute("body", "data-refreshed") is None
    page.clock.run_for(int(float(every) * 1000) + 1)
    page.wait_for_function(
        "() => document.body.hasAttribute('data-refreshed')"
        " || document.body.hasAttribute('data-refresh-error')",
        timeout=GUARD_MS,
    )
    assert page.get_attribute("body", "data-refresh-error") is None


def _history_state(store: SQLiteStore, task_id: str) -> tuple[TaskSaga | None, list[HistoryEntry]]:
    return store.get(task_id), store.history(task_id)


def _csrf(page: Page) -> str:
    token = page.locator("form.action input[name=csrf_token]").first.get_attribute("value")
    assert token, "the action form carries no CSRF token"
    return token


# ------------------------------------------------------------------ the checks catch


@pytest.mark.parametrize(
    "markup",
    [
        f"<p>{HOSTILE_IDS[0]}</p>",
        f"<p>{HOSTILE_IDS[1]}</p>",
        f"<table><tr><td>{HOSTILE_SAGA}</td></tr></table>",
        f"<svg><text>{HOSTILE_OWNER}</text></svg>",
        f"<svg>{HOSTILE_IDS[3]}</svg>",
        f"<p>{HOSTILE_IDS[4]}</p>",
        f"<p>{HOSTILE_TARGET}</p>",
        f"<ul><li>{HOSTILE_AUTHOR}</li></ul>",
    ],
    ids=lambda markup: markup[:24],
)
def test_the_escaping_check_catches_values_left_unescaped(browser: Browser, markup: str) -> None:
    """:func:`_not_pwned` fails on a page that put a hostile value in as markup (each
    payload shape used above), and passes on the same page with it escaped.
    """
    page = browser.new_page()
    watch = Watch("about:")
    page.on("dialog", watch.on_dialog)
    try:
        page.set_content(f"<html><body>{html.escape(markup)}</body></html>")
        _not_pwned(page)
        assert watch.dialogs == []
        page.set_content(f"<html><body>{markup}</body></html>")
        with pytest.raises(AssertionError):
            _not_pwned(page)
        if "<script>" in markup and "alert(" in markup:
            assert watch.dialogs, "the watch missed a dialog"
    finally:
        page.close()


# ------------------------------------------------------------------ dashboard


def test_dashboard_counts_equal_the_store_per_state_and_queue(
    readonly: Served, ro_tab: Tab
) -> None:
    """After a simulated run, each (state, queue) cell holds ``store.counts(queue=Q)[S]``
    for every state and every queue of the store, and each total ``store.counts()[S]``.
    """
    page = ro_tab.page
    page.goto(readonly.url("/"))
    cells = _count_cells(page)
    queues = {t.queue for t in _all_tasks(readonly.store)}
    assert {"urgent", "bulk"} <= queues  # what the simulation makes
    for queue in queues:
        counts = readonly.store.counts(queue=queue)
        for state in TaskState:
            assert cells.get((state.value, queue)) == str(counts[state]), (state, queue)
    assert {q for _, q in cells} == queues
    totals = _totals(page)
    for state, number in readonly.store.counts().items():
        assert totals.get(state.value) == str(number), state
    assert sum(int(v) for v in totals.values()) == len(_all_tasks(readonly.store))
    _not_pwned(page)


def test_dashboard_refreshes_in_place(readonly: Served, ro_tab: Tab) -> None:
    """A task created while the dashboard is open shows in its cell and total without a
    reload (the page's script polls the JSON and updates the cells).
    """
    page = ro_tab.page
    page.clock.install()
    page.goto(readonly.url("/"))
    page.evaluate("() => { window.__sameDocument = true; }")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    before = readonly.store.counts(queue="urgent")[TaskState.PENDING]
    cell = page.locator("table#counts td[data-state=pending][data-queue=urgent]")
    total = page.locator("table#counts [data-total-state=pending]")
    assert cell.text_content() == str(before)
    readonly.store.create("refresh-me", queue="urgent")
    assert readonly.store.counts(queue="urgent")[TaskState.PENDING] == before + 1
    _next_refresh(page)
    assert cell.text_content() == str(before + 1)
    assert total.text_content() == str(readonly.store.counts()[TaskState.PENDING])
    assert _count_cells(page) == {
        (s.value, q): str(n)
        for q in {t.queue for t in _all_tasks(readonly.store)}
        for s, n in readonly.store.counts(queue=q).items()
    }
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
    assert navigations == []


def test_dashboard_shows_stale_leases_lag_and_failures(readonly: Served, ro_tab: Tab) -> None:
    """An expired lease is listed under ``#stale``; a queue whose oldest available task
    was created ten minutes ago has a lag of at least 600 s (and no more than its
    age when the page was read); every failed or quarantined task is under
    ``#recent-failures`` with the targets of the compensations it still owes.
    """
    store = readonly.store
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    store.create("stale-one", queue="stale-q", now=ten_minutes_ago)
    store.acquire("stale-one", owner="gone", ttl=timedelta(seconds=1), now=ten_minutes_ago)
    store.create("waiting-one", queue="lagging", now=ten_minutes_ago)
    assert [t.task_id for t in store.list_stale()] == ["stale-one"]

    page = ro_tab.page
    page.goto(readonly.url("/"))
    read_at = datetime.now(UTC)
    assert "stale-one" in (page.locator("#stale").text_content() or "")
    lag = page.locator("#queue-lag [data-queue=lagging]").get_attribute("data-lag-seconds")
    assert lag is not None
    assert 600 <= float(lag) <= (read_at - ten_minutes_ago).total_seconds()

    failures = page.locator("#recent-failures").text_content() or ""
    ended_badly = store.list_tasks(state=[TaskState.FAILED, TaskState.QUARANTINED], limit=1000)
    assert ended_badly, "the simulation fails and quarantines some tasks"
    for task in ended_badly:
        assert task.task_id in failures
        for owed in task.compensations:
            if owed.status.value == "pending":
                assert owed.target in failures, (task.task_id, owed)


# ------------------------------------------------------------------ task pages


def test_task_pages_list_every_history_entry_and_one_bar_per_token(
    readonly: Served, ro_tab: Tab
) -> None:
    """For every task of the simulated run: ``li.history-entry`` count and order are the
    history's; ``rect.lease-bar`` is one per distinct token, with the owner that
    acquired it; one ``line.heartbeat`` per heartbeat; a ``.mark`` per reaper entry.
    """
    page = ro_tab.page
    tasks = [t for t in _all_tasks(readonly.store) if t.task_id.startswith("sim-")]
    assert len(tasks) == 24
    bars_seen = 0
    for task in tasks:
        history = readonly.store.history(task.task_id)
        page.goto(readonly.task_url(task.task_id))
        assert task.task_id in (page.locator("#record").text_content() or "")
        entries = page.locator("ol#history > li.history-entry")
        assert entries.count() == len(history), task.task_id
        texts = entries.all_text_contents()
        for text, entry in zip(texts, history, strict=True):
            assert entry.event in text, (task.task_id, entry.seq, text)
        owners: dict[int, str] = {}
        for entry in history:
            if entry.token is not None and entry.owner is not None:
                owners.setdefault(entry.token, entry.owner)
        bars: list[list[str]] = page.eval_on_selector_all(
            "svg#lease-timeline rect.lease-bar",
            "rs => rs.map(r => [r.dataset.token, r.dataset.owner])",
        )
        assert sorted((int(t), o) for t, o in bars) == sorted(owners.items()), task.task_id
        bars_seen += len(bars)
        beats = sum(e.event == "heartbeat" for e in history)
        assert page.locator("svg#lease-timeline line.heartbeat").count() == beats
        reaps = sum(e.event == "reap" for e in history)
        assert page.locator("svg#lease-timeline .mark[data-kind]").count() >= reaps
    assert bars_seen == sum(
        len({e.token for e in readonly.store.history(t.task_id) if e.token}) for t in tasks
    )
    _not_pwned(page)


def test_list_page_pages_in_creation_order(readonly: Served, ro_tab: Tab) -> None:
    """``/tasks?limit=5`` shows the first five tasks in creation order and ``#next-page``
    leads through the rest; following every page gives ``list_tasks``' order.
    """
    page = ro_tab.page
    page.goto(readonly.url("/tasks?limit=5"))
    seen: list[str] = []
    for _ in range(100):
        ids = page.eval_on_selector_all(
            "table#tasks tr.task-row[data-task-id]", "rows => rows.map(r => r.dataset.taskId)"
        )
        assert len(ids) <= 5
        seen += ids
        link = page.locator("a#next-page")
        if link.count() == 0:
            break
        link.click()
        page.wait_for_load_state()
    assert seen == [t.task_id for t in _all_tasks(readonly.store)]


# ------------------------------------------------------------------ hostile values


def test_hostile_values_are_shown_as_text_and_run_nothing(actions: Served, act_tab: Tab) -> None:
    """Each hostile task id, reached from the list of its saga, shows its id, saga,
    queue, metadata, compensation target and 10,000-character note as text (the
    exact strings) on a page where no payload ran; its lease bar names the hostile
    owner. The dashboard (the quarantined ones and what they owe) and the saga list
    holding them run nothing either.
    """
    page = act_tab.page
    page.goto(actions.url("/"))
    _not_pwned(page)
    assert HOSTILE_QUEUE in {q for _, q in _count_cells(page)}
    failures = page.locator("#recent-failures").text_content() or ""
    for task_id in HOSTILE_IDS[1::2]:  # the quarantined ones
        assert task_id in failures
    assert HOSTILE_TARGET in failures  # the compensation they still owe
    saga_list = actions.url("/tasks?saga=" + quote(HOSTILE_SAGA, safe=""))
    page.goto(saga_list)
    listed = page.eval_on_selector_all(
        "table#tasks tr.task-row[data-task-id]", "rows => rows.map(r => r.dataset.taskId)"
    )
    assert listed == list(HOSTILE_IDS)
    links: list[str] = page.eval_on_selector_all(
        "table#tasks tr.task-row[data-task-id]", "rows => rows.map(r => r.querySelector('a').href)"
    )
    _not_pwned(page)
    page.locator("table#tasks tr.task-row a").first.click()  # the others: their links' targets
    for n, task_id in enumerate(HOSTILE_IDS):
        if n:
            page.goto(links[n])
        page.wait_for_selector("#record")
        assert urlsplit(page.url).path == urlsplit(actions.task_url(task_id)).path
        record = page.locator("#record").text_content() or ""
        for text in (task_id, HOSTILE_SAGA, HOSTILE_QUEUE):
            assert text in record, text
        whole = page.locator("body").text_content() or ""
        for value in HOSTILE_METADATA.values():
            assert value in whole or json.dumps(value)[1:-1] in whole, value
        assert HOSTILE_TARGET in (page.locator("#compensations").text_content() or "")
        notes = page.locator("#notes").text_content() or ""
        assert LONG_NOTE in notes
        assert HOSTILE_AUTHOR in notes
        owners = page.eval_on_selector_all(
            "svg#lease-timeline rect.lease-bar", "rs => rs.map(r => r.dataset.owner)"
        )
        assert owners == [HOSTILE_OWNER]
        assert page.locator("svg#lease-timeline line.heartbeat").count() == 2
        _not_pwned(page)


def test_search_finds_hostile_ids_and_sagas(actions: Served, act_tab: Tab) -> None:
    """``/search?q=`` with a hostile task id lands on that task's page; with the hostile
    saga id it lists the saga's tasks; nothing runs.
    """
    page = act_tab.page
    for task_id in HOSTILE_IDS:
        page.goto(actions.url("/search?q=" + quote(task_id, safe="")))
        assert task_id in (page.locator("#record").text_content() or "")
        _not_pwned(page)
    page.goto(actions.url("/search?q=" + quote(HOSTILE_SAGA, safe="")))
    listed = page.eval_on_selector_all(
        "table#tasks tr.task-row[data-task-id]", "rows => rows.map(r => r.dataset.taskId)"
    )
    assert listed == list(HOSTILE_IDS)
    _not_pwned(page)


def test_refresh_in_place_with_a_hostile_queue_runs_nothing(actions: Served, act_tab: Tab) -> None:
    """The refresh script writes the hostile queue's new count into its cell as text."""
    page = act_tab.page
    page.clock.install()
    page.goto(actions.url("/"))
    store = actions.store
    before = store.counts(queue=HOSTILE_QUEUE)[TaskState.PENDING]
    assert _count_cells(page)[("pending", HOSTILE_QUEUE)] == str(before)
    store.create("hostile-refresh", queue=HOSTILE_QUEUE)
    _next_refresh(page)
    assert _count_cells(page)[("pending", HOSTILE_QUEUE)] == str(before + 1)
    _not_pwned(page)


# ------------------------------------------------------------------ actions


def test_actions_answer_403_without_allow_actions(readonly: Served, ro_tab: Tab) -> None:
    """Without ``--allow-actions`` no action form is rendered, and every action POST
    (from Playwright's request API and from a ``fetch`` in the page, with or without
    a token) answers 403 and changes nothing.
    """
    store = readonly.store
    store.create("ro-target", queue="urgent")
    page = ro_tab.page
    page.goto(readonly.task_url("ro-target"))
    assert page.locator("form.action").count() == 0
    before = _history_state(store, "ro-target")
    for action, fields in (
        ("quarantine", {"reason": "no"}),
        ("annotate", {"text": "no"}),
        ("requeue", {}),
    ):
        url = readonly.task_url("ro-target") + "/" + action
        ro_tab.watch.refused.add(url)
        answer = page.request.post(url, form={**fields, "csrf_token": "x"}, max_redirects=0)
        assert answer.status == 403, (action, answer.status)
        status = page.evaluate(
            """async ([url, fields]) => (await fetch(url, {method: 'POST',
                 body: new URLSearchParams(fields), redirect: 'manual'})).status""",
            [url, fields],
        )
        assert status == 403, (action, status)
    assert _history_state(store, "ro-target") == before


def test_actions_refuse_a_missing_or_wrong_csrf_token(
    actions: Served, act_tab: Tab, browser: Browser
) -> None:
    """With ``--allow-actions``: no token, a wrong token, the right token without its
    cookie, a forged cookie/field pair, all answer 403 and change nothing.
    """
    store = actions.store
    store.create("csrf-target", queue="urgent")
    page = act_tab.page
    page.goto(actions.task_url("csrf-target"))
    token = _csrf(page)
    assert any(c["name"] == "sagalease_csrf" for c in page.context.cookies())
    url = actions.task_url("csrf-target") + "/quarantine"
    before = _history_state(store, "csrf-target")

    def refused(answer_status: int, case: str) -> None:
        assert answer_status == 403, (case, answer_status)
        assert _history_state(store, "csrf-target") == before, case

    request = page.request
    refused(request.post(url, form={"reason": "r"}, max_redirects=0).status, "no field")
    wrong = ("0" if token[0] != "0" else "1") + token[1:]
    refused(
        request.post(url, form={"reason": "r", "csrf_token": wrong}, max_redirects=0).status,
        "wrong field",
    )
    refused(
        request.post(url, form={"reason": "r", "csrf_token": ""}, max_redirects=0).status,
        "empty field",
    )
    stranger = browser.new_context()
    try:
        refused(
            stranger.request.post(
                url, form={"reason": "r", "csrf_token": token}, max_redirects=0
            ).status,
            "token without its cookie",
        )
        host = urlsplit(actions.base).hostname or "127.0.0.1"
        stranger.add_cookies(
            [{"name": "sagalease_csrf", "value": "forged", "domain": host, "path": "/"}]
        )
        refused(
            stranger.request.post(
                url, form={"reason": "r", "csrf_token": "forged"}, max_redirects=0
            ).status,
            "forged cookie and field",
        )
    finally:
        stranger.close()


@pytest.mark.parametrize("task_id", ["to-quarantine", "looks/like/a/route/annotate"])
def test_quarantine_form_works(actions: Served, act_tab: Tab, task_id: str) -> None:
    """The page's quarantine form (with its token) quarantines the task, also one whose
    id ends like another action's path: back on the task page, the record says
    quarantined and the history's last entry is the quarantine with its reason.
    """
    store = actions.store
    store.create(task_id, queue="bulk")
    page = act_tab.page
    page.goto(actions.task_url(task_id))
    form = page.locator("form.action[data-action=quarantine]")
    form.locator("[name=reason]").fill('operator says <stop> & "wait"')
    with page.expect_navigation():
        form.locator("[type=submit]").click()
    assert urlsplit(page.url).path == urlsplit(actions.task_url(task_id)).path
    task = store.get(task_id)
    assert task is not None
    assert task.state is TaskState.QUARANTINED
    history = store.history(task_id)
    assert history[-1].event == "quarantine"
    entries = page.locator("ol#history > li.history-entry")
    assert entries.count() == len(history)
    assert 'operator says <stop> & "wait"' in (entries.last.text_content() or "")
    _not_pwned(page)


@pytest.mark.parametrize(
    "target", [HOSTILE_IDS[0], HOSTILE_IDS[5], HOSTILE_IDS[6]], ids=["markup", "url", "route"]
)
def test_annotate_form_works_and_shows_the_note_as_text(
    actions: Served, act_tab: Tab, target: str
) -> None:
    """The page's annotate form, on a task with a hostile id (markup; ``/ ? & # %``),
    appends the (hostile) note; it shows under ``#notes`` and in the history as text,
    and runs nothing.
    """
    before = len(actions.store.history(target))
    page = act_tab.page
    page.goto(actions.task_url(target))
    text = f'<img src=x onerror="{PWNED}"> checked by ops \u202eRTL'
    form = page.locator("form.action[data-action=annotate]")
    form.locator("[name=text]").fill(text)
    with page.expect_navigation():
        form.locator("[type=submit]").click()
    assert urlsplit(page.url).path == urlsplit(actions.task_url(target)).path
    history = actions.store.history(target)
    assert len(history) == before + 1
    assert history[-1].event == "annotate"
    task = actions.store.get(target)
    assert task is not None
    assert task.notes[-1].text == text
    assert text in (page.locator("#notes").text_content() or "")
    assert page.locator("ol#history > li.history-entry").count() == len(history)
    _not_pwned(page)


def test_requeue_form_works(actions: Served, act_tab: Tab) -> None:
    """The requeue form of a FAILED task makes its copy (``requeued_from`` the task)."""
    store = actions.store
    failed = store.list_tasks(state=TaskState.FAILED, limit=1)
    assert failed, "the simulation fails a task"
    task_id = failed[0].task_id
    page = act_tab.page
    page.goto(actions.task_url(task_id))
    form = page.locator("form.action[data-action=requeue]")
    with page.expect_navigation():
        form.locator("[type=submit]").click()
    copies = [t for t in _all_tasks(store) if t.requeued_from == task_id]
    assert len(copies) == 1
    assert copies[0].state is TaskState.PENDING
    assert page.locator("#record").count() == 1
    _not_pwned(page)


def test_a_refused_action_answers_409_with_the_stores_message(
    actions: Served, act_tab: Tab
) -> None:
    """Quarantining a task that already ended, with a valid token, answers 409 with the
    store's typed error message, and changes nothing.
    """
    store = actions.store
    done = store.list_tasks(state=TaskState.COMPLETED, limit=1)[0]
    store.create("token-source", queue="bulk")
    page = act_tab.page
    page.goto(actions.task_url("token-source"))
    token = _csrf(page)
    before = _history_state(store, done.task_id)
    with pytest.raises(SagaLeaseError) as refusal:
        store.quarantine(done.task_id, reason="late", by="ui")
    assert _history_state(store, done.task_id) == before
    answer = page.request.post(
        actions.task_url(done.task_id) + "/quarantine",
        form={"reason": "late", "csrf_token": token},
        max_redirects=0,
    )
    assert answer.status == 409
    assert str(refusal.value) in html.unescape(answer.text())
    assert _history_state(store, done.task_id) == before
