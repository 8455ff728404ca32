"""A TCP proxy in front of PostgreSQL that a test can take down and bring back.

It listens on a port of its own (it never touches the shared server): in
``"forward"`` mode every connection is piped to the server; ``"drop"`` cuts every
connection it carries and closes each new one at once, as a server that is
restarting does; ``"fatal"`` answers each new connection with a server's FATAL
refusal (``sqlstate``/``message``, say 53300 "sorry, too many clients already")
and closes it. :attr:`turned_away` counts the connections not forwarded, so a test
can wait for an opener's retries instead of a clock.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["forward", "drop", "fatal"]

_NEGOTIATIONS = (80877103, 80877104)  # SSLRequest, GSSENCRequest: answered "N"


class Proxy:
    """See the module documentation. Use as a context manager (closes everything)."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.upstream = upstream
        self.mode: Mode = "forward"
        self.sqlstate = "53300"
        self.message = "sorry, too many clients already"
        self.turned_away = 0
        self.forwarded = 0
        self._cond = threading.Condition()
        self._live: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, base: str) -> str:
        """``base`` (a postgresql:// URL) pointed at this proxy, without TLS."""
        parts = urlsplit(base)
        user = f"{parts.username}@" if parts.username else ""
        sep = "&" if parts.query else ""
        query = f"{parts.query}{sep}sslmode=disable"
        return urlunsplit((parts.scheme, f"{user}127.0.0.1:{self.port}", parts.path, query, ""))

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; any mode but ``"forward"`` cuts every connection carried now."""
        live: set[socket.socket] = set()
        with self._cond:
            self.mode = mode
            if mode != "forward":
                live, self._live = self._live, set()
        for sock in live:
            _shut(sock)

    def wait_turned_away(self, count: int, timeout: float = 60.0) -> bool:
        """Wait until at least ``count`` connections were turned away in all."""
        with self._cond:
            return self._cond.wait_for(lambda: self.turned_away >= count, timeout)

    def close(self) -> None:
        """Stop listening and cut everything."""
        self._closed = True
        _shut(self._server)
        self.set_mode("drop")

    # ------------------------------------------------------------ internals

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _addr = self._server.accept()
            except OSError:
                return
            with self._cond:
                mode = self.mode
                if mode != "forward":
                    self.turned_away += 1
                    self._cond.notify_all()
            if mode == "drop":
                _shut(client)
            elif mode == "fatal":
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
            else:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            _shut(client)
            return
        with self._cond:
            self.forwarded += 1
            self._live.update((client, server))
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        """Read the startup (answering TLS/GSS negotiation with "N"), then send a FATAL."""
        try:
            while True:
                (length,) = struct.unpack("!i", _read(client, 4))
                body = _read(client, length - 4)
                if len(body) >= 4 and struct.unpack("!i", body[:4])[0] in _NEGOTIATIONS:
                    client.sendall(b"N")
                    continue
                break
            fields = b"".join(
                key + value.encode() + b"\0"
                for key, value in (
                    (b"S", "FATAL"),
                    (b"V", "FATAL"),
                    (b"C", self.sqlstate),
                    (b"M", self.message),
                )
            )
            payload = fields + b"\0"
            client.sendall(b"E" + struct.pack("!i", len(payload) + 4) + payload)
        except OSError:
            pass
        finally:
            _shut(client)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _shut(src)
        _shut(dst)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
