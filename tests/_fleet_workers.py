"""What the worker-runtime tests share: a store wrapper that loses one answer, the
bodies of the worker processes tests/system/test_worker.py starts, and a proxy that
cuts a PostgreSQL connection between a write and its answer.

Each process opens its own store (a store never crosses a fork), runs a
:class:`~sagalease.Worker` over it and writes what it saw to a JSON file.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sagalease import (
    Compensation,
    LeaseContext,
    Outcome,
    PermanentTaskError,
    Retry,
    RetryPolicy,
    SagaStore,
    StoreUnavailableError,
    Worker,
    open_store,
)


class LostAnswer:
    """Wraps a store: the first call of the holder write ``event`` raises
    :class:`StoreUnavailableError`, after the real store applied it (``commits``:
    "the write committed, the answer was lost") or before it wrote anything.
    ``meanwhile`` (if given) runs between the write and the error, as another
    party would. Every other call goes straight to the store.
    """

    def __init__(
        self,
        inner: SagaStore,
        event: str,
        *,
        commits: bool,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        self.inner = inner
        self.event = event
        self.commits = commits
        self.meanwhile = meanwhile
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != self.event:
            return attr

        def write(task_id: str, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                first = self.calls == 1
            if not first:
                return attr(task_id, **kwargs)
            if self.commits:
                attr(task_id, **kwargs)
            if self.meanwhile is not None:
                self.meanwhile()
            raise StoreUnavailableError("the connection dropped before the answer", task_id=task_id)

        return write

    def store(self) -> SagaStore:
        """The wrapper, typed as the store a worker takes."""
        return cast(SagaStore, self)


def _report(out: str, outcomes: list[Outcome], **extra: Any) -> None:
    rows = [
        {
            "task_id": o.task_id,
            "token": o.token,
            "result": o.result,
            "detail": o.detail,
            "retry_in_us": None if o.retry_in is None else o.retry_in // timedelta(microseconds=1),
        }
        for o in outcomes
    ]
    Path(out).write_text(json.dumps({"outcomes": rows, **extra}))


def _policy(settings: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        initial=timedelta(microseconds=settings["initial_us"]),
        factor=settings["factor"],
        maximum=timedelta(microseconds=settings["maximum_us"]),
        jitter=settings["jitter"],
    )


def retrying_worker(url: str, out: str, mode: str, settings: dict[str, Any]) -> None:
    """Work until ``settings["tasks"]`` outcomes with a handler that fails as ``mode`` says.

    - ``"transient"``: raises ``ConnectionError`` ``settings["failures"]`` times per task,
      then returns (registering a compensation first when ``settings["compensate"]``);
    - ``"retry"``: raises ``Retry(after=settings["after_us"])`` every time;
    - ``"permanent"``: raises ``PermanentTaskError`` at once.

    The retry policy comes from ``settings`` and its jitter from ``Random(settings["seed"])``.
    """
    store = open_store(url)
    failures: dict[str, int] = {}
    applied: list[str] = []

    def handler(ctx: LeaseContext) -> None:
        if mode == "permanent":
            raise PermanentTaskError("the account is closed")
        if mode == "retry":
            raise Retry("rate limited", after=timedelta(microseconds=settings["after_us"]))
        if settings.get("compensate") and not ctx.task.compensations:
            ctx.register_compensation(Compensation("refund", ctx.task_id))
        seen = failures.get(ctx.task_id, 0)
        if seen < settings["failures"]:
            failures[ctx.task_id] = seen + 1
            raise ConnectionError(f"flaky {seen + 1}")

    def compensator(_ctx: LeaseContext, comp: Compensation) -> None:
        applied.append(comp.target)

    worker = Worker(
        store,
        handler,
        compensator=compensator,
        owner="retrier",
        ttl=timedelta(seconds=30),
        poll_interval=timedelta(milliseconds=10),
        retry=_policy(settings),
        rng=random.Random(settings["seed"]),
    )
    try:
        outcomes = worker.run(max_tasks=settings["tasks"])
    finally:
        store.close()
    _report(out, outcomes, applied=applied)


def lost_answer_worker(url: str, out: str, event: str, commits: bool | None) -> None:
    """Work one task through a :class:`LostAnswer` store: the first ``event`` write
    (``complete``, or ``fail`` from a PermanentTaskError) loses its answer
    (``commits=None``: no wrapper; a :class:`CuttingProxy` cuts the connection).
    """
    inner = open_store(url)
    wrapper = LostAnswer(inner, event, commits=bool(commits))
    if commits is None:
        wrapper.event = "-"  # every call goes straight to the store

    def handler(_ctx: LeaseContext) -> None:
        if event == "fail":
            raise PermanentTaskError("no such account")

    worker = Worker(
        wrapper.store(), handler, owner="dropper", poll_interval=timedelta(milliseconds=10)
    )
    try:
        outcomes = worker.run(max_tasks=1)
    finally:
        inner.close()
    _report(out, outcomes, calls=wrapper.calls)


# ---------------------------------------------------------------- a connection cut for real

_UNTYPED_REQUESTS = (80877103, 80877104)  # SSLRequest, GSSENCRequest: answered by one byte


class CuttingProxy:
    """A TCP proxy in front of PostgreSQL that cuts one client connection for real.

    The cut comes at the first ``Bind`` message whose parameters hold ``marker`` (say
    a text only the arguments of the write to cut hold):

    - ``commits=True``: the message goes through; the server's answers are held back
      until its ``ReadyForQuery`` (the statement's implicit transaction has ended, so
      a write has committed), then both sockets are closed: the answer is lost;
    - ``commits=False``: both sockets are closed before the message is forwarded: the
      server never sees the write.

    Every other connection, and every later message, passes through unchanged. The
    client must not use TLS (``sslmode=disable``): the proxy reads the protocol.
    """

    def __init__(self, upstream: tuple[str, int], marker: bytes, *, commits: bool) -> None:
        self.upstream = upstream
        self.marker = marker
        self.commits = commits
        self.cut = threading.Event()
        """Set once a connection was cut."""
        self.held: list[bytes] = []
        """The server's answers the client never got (``commits=True``)."""
        self._armed = True
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def close(self) -> None:
        """Stop accepting (connections already open end with their peers)."""
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            doomed = threading.Event()
            for target in (self._client_to_server, self._server_to_client):
                threading.Thread(target=target, args=(client, server, doomed), daemon=True).start()

    def _take(self) -> bool:
        with self._lock:
            armed, self._armed = self._armed, False
            return armed

    def _client_to_server(self, client: socket.socket, server: socket.socket, doomed: Any) -> None:
        reader = client.makefile("rb")
        try:
            while True:  # the untyped start: TLS/GSS requests (refused), then the startup
                head = reader.read(8)
                if len(head) < 8:
                    return
                length, code = struct.unpack("!ii", head)
                server.sendall(head + reader.read(length - 8))
                if code not in _UNTYPED_REQUESTS:
                    break
            while True:
                head = reader.read(5)
                if len(head) < 5:
                    return
                body = reader.read(struct.unpack("!i", head[1:])[0] - 4)
                if head[:1] == b"B" and self.marker in body and self._take():
                    if not self.commits:
                        _shut(client, server)
                        self.cut.set()
                        return
                    doomed.set()  # before forwarding: the answer is held from here on
                server.sendall(head + body)
        except OSError:
            _shut(client, server)

    def _server_to_client(self, client: socket.socket, server: socket.socket, doomed: Any) -> None:
        held = b""
        try:
            while True:
                chunk = server.recv(65536)
                if not chunk:
                    _shut(client, server)
                    return
                if not doomed.is_set():
                    client.sendall(chunk)
                    continue
                held += chunk
                if _ready_for_query(held):
                    self.held.append(held)
                    _shut(client, server)
                    self.cut.set()
                    return
        except OSError:
            _shut(client, server)


def message_kinds(stream: bytes) -> list[bytes]:
    """The type bytes of the whole backend messages in ``stream`` (from a message
    boundary): ``b"D"`` a data row, ``b"C"`` a command completed, ``b"E"`` an error,
    ``b"Z"`` ready for the next query.
    """
    kinds, at = [], 0
    while at + 5 <= len(stream):
        length = struct.unpack("!i", stream[at + 1 : at + 5])[0]
        if at + 1 + length > len(stream):
            break
        kinds.append(stream[at : at + 1])
        at += 1 + length
    return kinds


def _ready_for_query(stream: bytes) -> bool:
    return b"Z" in message_kinds(stream)


def _shut(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
