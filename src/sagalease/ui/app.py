"""The web view of a store (``sagalease ui``): a Starlette application.

:func:`create_app` builds it over any :class:`~sagalease.store.SagaStore`; the
command line serves it with uvicorn (:func:`serve`). Routes:

- ``GET /`` the dashboard; ``GET /tasks`` a page of tasks in creation order
  (``state`` (several, comma-separated or repeated), ``queue``, ``saga``, ``after``,
  ``limit``); ``GET /tasks/{task_id}`` a task (the id percent-encoded);
  ``GET /search?q=`` an exact task id redirects (303) to its page, anything else
  lists the tasks of that saga. Each answers JSON at the same URL when the
  request sends ``Accept: application/json``.
- ``POST /tasks/{task_id}/quarantine`` (field ``reason``), ``/annotate`` (``text``)
  and ``/requeue``: only when built with ``allow_actions=True`` and with a valid
  CSRF token (see :mod:`sagalease.ui._csrf`), else 403 and nothing is written; on
  success 303 back to the task page. A refusal of the store: 409 (an unknown task
  404, bad input 400, an unavailable store 503), with the typed error's message.
- ``GET /metrics`` (Prometheus text), ``GET /healthz`` (200 ``{"ok": true}`` when
  the store answers, else 503 and the error's message), ``/static/...``.

Every page is rendered with autoescaping and sent with a Content-Security-Policy
that allows scripts from ``/static`` only. Nothing shown contains the store URL's
password (:func:`sagalease.stores._open.redact_url`; store errors are scrubbed too).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, unquote, urlencode, urlsplit

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sagalease.errors import (
    InvalidInputError,
    SagaLeaseError,
    SchemaVersionError,
    StoreUnavailableError,
    TaskNotFoundError,
)
from sagalease.operations import requeue
from sagalease.records import TaskState
from sagalease.store import SagaStore
from sagalease.stores._open import MASK, redact_url
from sagalease.ui import _views, metrics, timeline
from sagalease.ui._csrf import COOKIE, FIELD, Csrf

__all__ = ["ACTOR", "CONTENT_SECURITY_POLICY", "create_app", "serve", "task_path"]

ACTOR = "ui"
"""The ``by`` of the operator actions taken in the web view."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Sent with every answer: only the vendored script and style may load, so that
a value that slipped past escaping still could not run."""

_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

_HERE = Path(__file__).parent
_PROBE = "sagalease-healthz-probe"  # the id /healthz looks up (a read that changes nothing)
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

_STATUS: tuple[tuple[type[SagaLeaseError], int], ...] = (
    (TaskNotFoundError, 404),
    (InvalidInputError, 400),
    (StoreUnavailableError, 503),
    (SchemaVersionError, 503),
)
"""The answer's status for a store error (first match); any other: 409."""

Clock = Callable[[], datetime]


def task_path(task_id: str) -> str:
    """The task page's path, the id percent-encoded (``/`` included)."""
    return "/tasks/" + quote(task_id, safe="")


def _tasks_path(pairs: list[tuple[str, str]]) -> str:
    return "/tasks" + ("?" + urlencode(pairs) if pairs else "")


def _task_id(request: Request, suffix: str = "") -> str:
    """The task id of a ``/tasks/{task_id}[suffix]`` request, percent-decoded once
    from the raw path (so that an id holding ``%2F`` stays itself); the router's
    decoded parameter when the server gives no raw path.
    """
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        text = raw.decode("latin-1")
        prefix = request.scope.get("root_path", "") + "/tasks/"
        if text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix):
            return unquote(text[len(prefix) : len(text) - len(suffix)])
    task_id: str = request.path_params["task_id"]
    return task_id


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def _secrets_of(url: str | None) -> list[str]:
    """The password(s) a store URL holds, as given and percent-decoded."""
    if url is None or url.partition("://")[0] in ("memory", "sqlite"):
        return []
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]  # not parsed: the whole URL is kept out of the pages
    userinfo, at, _hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for pair in parts.query.split("&"):
        key, _eq, value = pair.partition("=")
        if unquote(key).strip().lower() in ("password", "sslpassword"):
            found.append(value)
    decoded = [unquote(s) for s in found]
    return sorted({s for s in found + decoded if s}, key=len, reverse=True)


class _SecurityHeaders:
    """ASGI middleware: the security headers on every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["task_url"] = task_path
    env.filters["tasks_url"] = _tasks_path
    env.filters["seconds"] = _seconds
    env.filters["when"] = _when
    env.filters["pretty"] = _pretty
    env.globals["STATES"] = [s.value for s in TaskState]
    env.globals["TERMINAL"] = [s.value for s in TaskState if s.is_terminal]
    return env


def _seconds(value: float | None) -> str:
    """A duration for people: ``-`` when there is none."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _pretty(value: object) -> str:
    """A JSON value indented for a ``<pre>`` (escaped by the template like any text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _when(value: str | None) -> str:
    """An ISO instant to the second, as shown in tables (``-`` for none)."""
    if value is None:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


class _View:
    """The handlers, over one store."""

    def __init__(
        self,
        store: SagaStore,
        *,
        allow_actions: bool,
        clock: Clock | None,
        csrf: Csrf,
        url: str | None,
    ) -> None:
        self.store = store
        self.allow_actions = allow_actions
        self.clock = clock
        self.csrf = csrf
        self.store_label = None if url is None else redact_url(url)
        self.secrets = _secrets_of(url)
        self.templates = Jinja2Templates(env=_environment())

    # ------------------------------------------------------------ helpers

    def now(self) -> datetime:
        """The instant pages are drawn at: the injected clock, else the real one."""
        return self.clock() if self.clock is not None else datetime.now(UTC)

    def write_now(self) -> datetime | None:
        """The ``now`` of the actions' writes: the injected clock, else the store's own."""
        return None if self.clock is None else self.clock()

    def scrub(self, text: str) -> str:
        """``text`` with the store URL's password masked."""
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def page(
        self,
        request: Request,
        template: str,
        data: Mapping[str, Any],
        *,
        status: int = 200,
        extra: Mapping[str, Any] | None = None,
    ) -> Response:
        """``data`` as JSON when asked for, else rendered into ``template``."""
        headers = {"vary": "Accept"}
        if _wants_json(request):
            return JSONResponse(dict(data), status_code=status, headers=headers)
        context = {
            "data": data,
            "store_label": self.store_label,
            "actions": self.allow_actions,
            **(extra or {}),
        }
        return self.templates.TemplateResponse(
            request, template, context, status_code=status, headers=headers
        )

    def error(
        self,
        request: Request,
        status: int,
        kind: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """An error answer (HTML or JSON), its message scrubbed of secrets."""
        message = self.scrub(message)
        response = self.page(
            request,
            "error.html",
            {"status": status, "error": kind, "message": message},
            status=status,
        )
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    # ------------------------------------------------------------ errors

    async def on_store_error(self, request: Request, exc: Exception) -> Response:
        """A store's refusal: 404 / 400 / 503 / 409, with its typed message."""
        assert isinstance(exc, SagaLeaseError)
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 409)
        return self.error(request, status, type(exc).__name__, str(exc))

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own (unknown route, wrong method) and the actions' 403."""
        assert isinstance(exc, HTTPException)
        kind = HTTPStatus(exc.status_code).phrase
        return self.error(request, exc.status_code, kind, str(exc.detail), headers=exc.headers)

    # ------------------------------------------------------------ pages

    def dashboard(self, request: Request) -> Response:
        """``GET /``."""
        now = self.now()
        data = _views.dashboard_data(self.store, now=now)
        return self.page(request, "dashboard.html", data)

    def tasks(self, request: Request) -> Response:
        """``GET /tasks``: one page of the filtered list."""
        params = {key: request.query_params.getlist(key) for key in request.query_params}
        filters = _views.parse_filters(params)
        return self._list(request, filters, search=None)

    def _list(
        self, request: Request, filters: _views.ListFilters, *, search: str | None
    ) -> Response:
        data = _views.list_data(self.store, filters)
        next_after = data["next_after"]
        data["next_url"] = (
            None if next_after is None else _tasks_path(filters.query(after=next_after))
        )
        data["first_url"] = _tasks_path(filters.query(after=None))
        data["search"] = search
        return self.page(request, "tasks.html", data)

    def task(self, request: Request) -> Response:
        """``GET /tasks/{task_id}``."""
        task_id = _task_id(request)
        task = self.store.get(task_id)
        if task is None:
            raise TaskNotFoundError("no such task", task_id=task_id)
        history = self.store.history(task_id)
        now = self.now()
        data = _views.task_data(task, history, now=now)
        if _wants_json(request):
            return self.page(request, "task.html", data)
        svg = Markup(timeline.timeline_svg(history, now=now))  # escapes every text itself
        nonce = request.cookies.get(COOKIE)
        fresh = self.allow_actions and not self.csrf.usable_nonce(nonce)
        if fresh:
            nonce = self.csrf.new_nonce()
        token = self.csrf.token(nonce) if self.allow_actions and nonce is not None else None
        response = self.page(
            request,
            "task.html",
            data,
            extra={
                "svg": svg,
                "csrf_field": FIELD,
                "csrf_token": token,
                "path": task_path(task_id),
                "requeueable": task.state in (TaskState.FAILED, TaskState.QUARANTINED),
            },
        )
        if fresh and nonce is not None:
            response.set_cookie(COOKIE, nonce, httponly=True, samesite="strict", path="/")
        return response

    def search(self, request: Request) -> Response:
        """``GET /search?q=``: a task id's page (303), else the tasks of saga ``q``."""
        q = request.query_params.get("q", "")
        if not q.strip():
            raise InvalidInputError("search needs q: a task id or a saga id")
        for candidate in dict.fromkeys([q, q.strip()]):
            if self.store.get(candidate) is not None:
                return RedirectResponse(task_path(candidate), status_code=303)
        params = {key: request.query_params.getlist(key) for key in ("limit", "after")}
        paging = _views.parse_filters(params)
        filters = _views.ListFilters(saga=q.strip(), after=paging.after, limit=paging.limit)
        return self._list(request, filters, search=q)

    def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format."""
        text = metrics.prometheus_text(metrics.collect(self.store, now=self.now()))
        return Response(text, media_type=_PROMETHEUS)

    def healthz(self, request: Request) -> Response:
        """``GET /healthz``: whether the store answers a read."""
        try:
            self.store.get(_PROBE)
        except SagaLeaseError as exc:
            body = {"ok": False, "error": type(exc).__name__, "message": self.scrub(str(exc))}
            return JSONResponse(body, status_code=503)
        except Exception as exc:  # a backend's own failure: its type only (no message)
            body = {"ok": False, "error": type(exc).__name__, "message": "the store did not answer"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ok": True})

    # ------------------------------------------------------------ actions

    async def _form(self, request: Request, action: str) -> tuple[str, Mapping[str, str]]:
        """The task id and the text fields of an action, once it may run: 403
        without ``allow_actions`` or without a valid CSRF token.
        """
        if not self.allow_actions:
            raise HTTPException(403, "actions are disabled (start the UI with --allow-actions)")
        async with request.form(max_files=0, max_fields=20) as form:
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not self.csrf.valid(request.cookies.get(COOKIE), fields.get(FIELD)):
            raise HTTPException(403, "missing or invalid CSRF token (reload the task page)")
        return _task_id(request, "/" + action), fields

    def _back(self, task_id: str) -> Response:
        return RedirectResponse(task_path(task_id), status_code=303)

    async def quarantine(self, request: Request) -> Response:
        """``POST /tasks/{task_id}/quarantine`` (``reason``)."""
        task_id, fields = await self._form(request, "quarantine")
        await run_in_threadpool(
            lambda: self.store.quarantine(
                task_id, reason=_required(fields, "reason"), by=ACTOR, now=self.write_now()
            )
        )
        return self._back(task_id)

    async def annotate(self, request: Request) -> Response:
        """``POST /tasks/{task_id}/annotate`` (``text``)."""
        task_id, fields = await self._form(request, "annotate")
        await run_in_threadpool(
            lambda: self.store.annotate(
                task_id, text=_required(fields, "text"), by=ACTOR, now=self.write_now()
            )
        )
        return self._back(task_id)

    async def requeue(self, request: Request) -> Response:
        """``POST /tasks/{task_id}/requeue``: :func:`sagalease.requeue` (default new id)."""
        task_id, _fields = await self._form(request, "requeue")
        await run_in_threadpool(
            lambda: requeue(self.store, task_id, by=ACTOR, now=self.write_now())
        )
        return self._back(task_id)


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise InvalidInputError(f"the form has no field {name!r}")
    return value


def create_app(
    store: SagaStore,
    *,
    allow_actions: bool = False,
    clock: Clock | None = None,
    secret: bytes | None = None,
    url: str | None = None,
) -> Starlette:
    """The web view of ``store``.

    ``allow_actions`` enables the POST actions (quarantine, annotate, requeue);
    ``clock`` (a callable returning an aware UTC datetime) is the instant pages
    are drawn at and the actions write at (default: the machine's clock for pages
    and the store's own clock for writes); ``secret`` keys the CSRF tokens
    (default: random per application); ``url``, the store's URL, is shown with its
    password masked, and the password is masked in every error shown.
    """
    view = _View(store, allow_actions=allow_actions, clock=clock, csrf=Csrf(secret), url=url)
    routes: list[BaseRoute] = [
        Route("/", view.dashboard, methods=["GET"]),
        Route("/tasks", view.tasks, methods=["GET"]),
        Route("/search", view.search, methods=["GET"]),
        Route("/metrics", view.metrics, methods=["GET"]),
        Route("/healthz", view.healthz, methods=["GET"]),
        Route("/tasks/{task_id:path}/quarantine", view.quarantine, methods=["POST"]),
        Route("/tasks/{task_id:path}/annotate", view.annotate, methods=["POST"]),
        Route("/tasks/{task_id:path}/requeue", view.requeue, methods=["POST"]),
        Route("/tasks/{task_id:path}", view.task, methods=["GET"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={SagaLeaseError: view.on_store_error, HTTPException: view.on_http_error},
    )
    app.add_middleware(_SecurityHeaders)
    return app


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(
    store: SagaStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_actions: bool = False,
    url: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve the web view of ``store`` with uvicorn until interrupted (the caller
    closes the store). Says where on ``out`` (default: stderr), and warns when
    actions are enabled on an address other than the loopback. An address that
    cannot be bound (in use, not this machine's): :class:`OSError`.
    """
    import uvicorn

    out = sys.stderr if out is None else out
    label = "memory://" if url is None else redact_url(url)
    mode = "actions enabled" if allow_actions else "read-only"
    shown = f"[{host}]" if ":" in host else host
    print(f"sagalease ui: {label} at http://{shown}:{port}/ ({mode})", file=out)
    if not _loopback(host):
        if allow_actions:
            print(
                f"sagalease ui: warning: actions are enabled on {host}, which is not the"
                " loopback: anyone who can reach it can quarantine, annotate and requeue"
                " tasks (the UI has no login)",
                file=out,
            )
        else:
            print(
                f"sagalease ui: note: bound to {host}: anyone who can reach it can read the"
                " tasks (the UI has no login)",
                file=out,
            )
    app = create_app(store, allow_actions=allow_actions, url=url)
    # A store's first queue_stats counts every task (later ones start from it): pay
    # that here, not on the first visitor's dashboard. A store that does not answer
    # yet is the dashboard's and /healthz's to report.
    with contextlib.suppress(SagaLeaseError):
        store.queue_stats()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
    except SystemExit as exc:  # uvicorn exits when it cannot bind (it logged why)
        if exc.code not in (None, 0):
            raise OSError(f"cannot serve on {shown}:{port} (see the line above)") from None
        raise
