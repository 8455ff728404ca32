"""The chaos suite's fixtures: the ``chaos`` marker, the closing table of figures, and a
private PostgreSQL server (never the shared one at 127.0.0.1:5432: this suite
restarts, stops and fills its server).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chaos._fleet import LONG

ROWS: list[dict[str, Any]] = []
"""One row per scenario run (tests append through the ``chaos_table`` fixture)."""

BROKEN_ROWS: list[dict[str, Any]] = []
"""One row per broken-variant run (test_broken.py, the ``broken_table`` fixture)."""

PRIVATE_MAX_CONNECTIONS = 40


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``chaos`` marker (no pyproject entry needed)."""
    config.addinivalue_line(
        "markers",
        "chaos: a fault-injection scenario on a real fleet of worker processes"
        " (tests/chaos; SAGALEASE_CHAOS=long for the long form)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``chaos`` (``-m "not chaos"`` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def chaos_table() -> list[dict[str, Any]]:
    """Where scenarios put their figures (printed at the end of the run)."""
    return ROWS


@pytest.fixture(scope="session")
def broken_table() -> list[dict[str, Any]]:
    """Where the broken-variant runs put what caught them (printed at the end)."""
    return BROKEN_ROWS


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 16 MiB tmpfs (``"tmpfs"``), or a plain directory (``"rlimit"``) when mounting
    is not permitted here.
    """
    where = tmp_path / "disk"
    where.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield where, "tmpfs" if mounted else "rlimit"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the table of every scenario's figures (and of the broken variants' runs)
    at the end of the run.
    """
    tr = terminalreporter
    if BROKEN_ROWS:
        tr.section(f"chaos suite, broken variants ({'long' if LONG else 'bounded'})")
        tr.write_line(
            "| scenario | variant | tasks | faults | caught by | lost | stale | early | verify |"
        )
        tr.write_line("|---|---|---|---|---|---|---|---|---|")
        for r in BROKEN_ROWS:
            tr.write_line(
                f"| {r['scenario']} | {r['variant']} | {r['tasks']} | {r['faults']}"
                f" | {r['caught']} | {r['lost']} | {r['stale']} | {r['early']} | {r['verify']} |"
            )
    if not ROWS:
        return
    tr.section(f"chaos suite ({'long' if LONG else 'bounded'})")
    tr.write_line(
        "| scenario | tasks | faults injected | tasks lost | stale writes accepted"
        " | early takeovers | verify | recovery p50 (s) | recovery max (s) |"
    )
    tr.write_line("|---|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        tr.write_line(
            f"| {r['scenario']} | {r['tasks']} | {r['faults']} | {r['lost']} | {r['stale']}"
            f" | {r['early']} | {r['verify']} | {_fmt(r['p50'])} | {_fmt(r['max'])} |"
        )


# ---------------------------------------------------------------- a private PostgreSQL


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test session only (its own data directory and port)."""

    bindir: Path
    datadir: Path
    port: int
    max_connections: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    @property
    def dsn(self) -> str:
        return self.url

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.datadir / "server.log"),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self._ctl(
            "-w",
            "-o",
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1"
            f" -c max_connections={self.max_connections} -c fsync=off"
            " -c superuser_reserved_connections=0",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _unavailable(reason: str) -> None:
    if os.environ.get("SAGALEASE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (SAGALEASE_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """Initdb into a temporary directory as the ``postgres`` OS user, start it on a
    free port with a small ``max_connections``, stop it at the end.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (the 'postgres' extra)")
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        _unavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        _unavailable("a private PostgreSQL needs root and runuser (initdb runs as postgres)")
    bindir = Path(initdbs[-1]).parent
    datadir = Path(tempfile.mkdtemp(prefix="sagalease-chaos-pg-"))
    os.chmod(datadir, 0o700)
    shutil.chown(datadir, "postgres", "postgres")
    subprocess.run(
        [
            "runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(datadir),
            "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    server = PrivatePostgres(bindir, datadir, _free_port(), PRIVATE_MAX_CONNECTIONS)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop("immediate")
        time.sleep(0.2)
        shutil.rmtree(datadir, ignore_errors=True)
