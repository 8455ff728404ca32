"""The scenarios' plans, shared by the tests and the broken-variant tests."""

from __future__ import annotations

import contextlib
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from chaos import _fleet
from chaos._fleet import FINISHING, SCALE, ChaosResult, Child, Fault, Fleet, report, wall_us
from sagalease import SagaStore, SQLiteStore, StoreUnavailableError


def sqlite_fleet(tmp_path: Path, name: str, *, logs: Path | None = None, **options: Any) -> Fleet:
    """A fleet over a fresh SQLite file in ``tmp_path`` (its logs there too, unless
    ``logs`` says where).
    """
    db = tmp_path / f"{name}.db"
    SQLiteStore(db).close()
    return Fleet(
        name,
        {"backend": "sqlite", "path": str(db)},
        lambda: SQLiteStore(db, timeout=2.0),
        logs=logs or tmp_path / f"{name}-logs",
        **options,
    )


def postgres_fleet(
    server: Any, tmp_path: Path, name: str, *, clock: str = "local", **options: Any
) -> Fleet:
    """A fleet over a fresh schema of the private PostgreSQL server."""
    from sagalease.stores.postgres import PostgresStore

    schema = f"chaos_{name.replace('-', '_')}_{int(time.time() * 1000) % 10**8}"

    def parent() -> SagaStore:
        return PostgresStore(server.dsn, schema=schema, connect_timeout=5, max_size=2)

    parent().close()  # the schema, before any child opens it
    return Fleet(
        name,
        {"backend": "postgresql", "dsn": server.dsn, "schema": schema, "clock": clock},
        parent,
        logs=tmp_path / f"{name}-logs",
        **options,
    )


def fleet_on(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, name: str, **options: Any
) -> Fleet:
    """A fleet on ``backend`` (``"sqlite"`` or ``"postgres"``: the private server)."""
    if backend == "sqlite":
        return sqlite_fleet(tmp_path, name, **options)
    server = request.getfixturevalue("private_postgres")
    return postgres_fleet(server, tmp_path, name, **options)


def conclude(result: ChaosResult, table: list[dict[str, Any]], *, early_ok: bool = False) -> None:
    """Print the scenario's figures, add its row, and fail on any problem."""
    print(report(result))
    table.append(result.table_row())
    problems = result.problems(early_ok=early_ok)
    assert not problems, "\n".join(problems)


def _holder(fleet: Fleet) -> tuple[Child, str] | None:
    held = fleet.holders()
    for child in fleet.live():
        if child.owner in held:
            return child, held[child.owner]
    return None


def _wait_holder(fleet: Fleet) -> tuple[Child, str]:
    """A live worker holding a lease; while none does (every task ended), 5 more
    tasks are fed each second. At most GUARD seconds.
    """
    end = time.monotonic() + _fleet.GUARD
    quiet = time.monotonic() + 1.0
    while time.monotonic() < end:
        found = _holder(fleet)
        if found is not None:
            return found
        if time.monotonic() > quiet:
            fleet.feed(5)
            quiet = time.monotonic() + 1.0
        time.sleep(0.01)
    raise AssertionError(f"no worker held a lease within {_fleet.GUARD:g}s")


def zombies(fleet: Fleet) -> None:
    """SIGSTOP a worker holding a lease for 2.5 TTLs, then SIGCONT: it wakes a zombie."""
    fleet.feed(30 * SCALE)
    for _ in range(2 * SCALE):
        fleet.wait_progress(3)
        child, task = _wait_holder(fleet)
        fleet.faults.append(Fault("sigstop", wall_us(), frozenset([task]), after=child.owner))
        fleet.pause(child, 2.5 * fleet.ttl)
        fleet.feed(5)


def kills_mid_write(fleet: Fleet, kills: int | None = None) -> None:
    """SIGKILL a worker the moment it sends a finishing write."""
    armed = [3 * SCALE if kills is None else kills]

    def on_event(child: Child, event: dict[str, Any]) -> None:
        if event["ev"] == "begin" and event["event"] in FINISHING and armed[0] > 0:
            armed[0] -= 1
            fleet.kill(child)
            fleet.faults.append(
                Fault("sigkill-mid-write", wall_us(), frozenset([event["task"]]), child.owner)
            )

    fleet.listeners.append(on_event)
    fleet.feed(30 * SCALE)
    end = time.monotonic() + 60 * SCALE
    while armed[0] > 0 and time.monotonic() < end:
        fleet.feed(3)
        time.sleep(0.3)


def reaper_kills(fleet: Fleet) -> None:
    """SIGKILL the reaper (it is replaced) while workers are SIGKILLed too: the
    expired leases of the killed workers are dropped by the next reaper.
    """
    fleet.feed(30 * SCALE)
    for _ in range(2 * SCALE):
        fleet.wait_progress(3)
        reapers = fleet.live("reaper")
        if reapers:
            fleet.kill(reapers[0])
            fleet.faults.append(Fault("sigkill-reaper", wall_us(), reaper=True))
        found = _holder(fleet)
        if found is not None:
            fleet.kill(found[0])
        time.sleep(fleet.ttl)
        fleet.feed(5)


def skew(fleet: Fleet) -> None:
    """Workers 10 s behind and 10 s ahead: work that outlasts the pending tasks so
    that every worker meets leases of the others.
    """
    for skew in sorted({c.spec["skew"] for c in fleet.live() if c.spec["skew"]}):
        # Not a transient fault: no recovery to time (no task matches an empty set).
        fleet.faults.append(Fault(f"clock {skew:+g}s", wall_us(), frozenset()))
    fleet.feed(15 * SCALE)
    fleet.wait_progress(5)
    fleet.feed(8 * SCALE)


# ---------------------------------------------------------------- PostgreSQL server faults


def pg_restarts(server: Any, stop_seconds: float = 10.0) -> Any:
    """Restart the server three times mid-run, then stop it for ``stop_seconds`` once
    (ten times as many in the long form).
    """

    def plan(fleet: Fleet) -> None:
        fleet.feed(40 * SCALE)
        for _ in range(3 * SCALE):
            fleet.wait_progress(5)
            server.restart("fast")
            fleet.faults.append(Fault("restart", wall_us()))
            fleet.feed(10)
        for _ in range(SCALE):
            fleet.wait_progress(5)
            server.stop("fast")
            time.sleep(stop_seconds)
            server.start()
            fleet.faults.append(Fault(f"stopped {stop_seconds:g}s", wall_us()))
            fleet.feed(20)

    return plan


_TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE application_name LIKE 'sagalease%' AND pid <> pg_backend_pid()"
)


def terminate_fleet(server: Any, conn: Any = None) -> int:
    """``pg_terminate_backend`` every connection of the fleet (application name
    ``sagalease*``), through ``conn`` or a new connection; how many it ended.
    """
    import psycopg

    if conn is not None:
        return sum(1 for (ok,) in conn.execute(_TERMINATE).fetchall() if ok)
    with psycopg.connect(server.dsn, autocommit=True, connect_timeout=5) as own:
        return sum(1 for (ok,) in own.execute(_TERMINATE).fetchall() if ok)


def terminate_storm(server: Any, seconds: float) -> Any:
    """``pg_terminate_backend`` of the fleet's connections twice a second."""

    def plan(fleet: Fleet) -> None:
        fleet.feed(60 * SCALE)
        fleet.wait_progress(5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if terminate_fleet(server):
                fleet.faults.append(Fault("pg_terminate_backend", wall_us()))
            if len(fleet.faults) % 4 == 0:
                fleet.feed(5)
            time.sleep(0.5)

    return plan


class Hog:
    """Idle connections that take every free slot of the server (max_connections)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conns: list[Any] = []

    def fill(self) -> int:
        import psycopg

        while True:
            try:
                self.conns.append(psycopg.connect(self.dsn, autocommit=True, connect_timeout=3))
            except psycopg.OperationalError:
                return len(self.conns)

    def release(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()


def pool_exhaustion(server: Any, probe: Any, hold: float = 3.0) -> Any:
    """Fill every connection slot with idle connections and cut the fleet's own, so
    that nothing reconnects; ``probe()`` (a store opening now) must fail typed within
    its timeout; then the slots are freed and the fleet recovers.
    """

    def plan(fleet: Fleet) -> None:
        fleet.feed(40 * SCALE)
        for _ in range(SCALE):
            fleet.wait_progress(5)
            hog = Hog(server.dsn)
            try:
                hog.fill()
                for _ in range(3):  # the fleet's slots, taken as they free up
                    terminate_fleet(server, hog.conns[0])
                    time.sleep(0.05)
                    hog.fill()
                probe()
                time.sleep(hold)
            finally:
                hog.release()
            fleet.faults.append(Fault("max_connections reached", wall_us()))
            fleet.feed(10)

    return plan


# ---------------------------------------------------------------- SQLite file faults


def fill(where: Path) -> Path:
    """Fill the filesystem of ``where`` with one file; that file. Unbuffered: a
    buffered file's close flushes the rest of a short write and raises ENOSPC there,
    outside the suppression (seen about once in four runs).
    """
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def disk_full(where: Path, method: str) -> Any:
    """Fill the disk under the database (``"tmpfs"``: a filler file in ``where``;
    ``"rlimit"``: RLIMIT_FSIZE=0 on the workers) until a holder write meets it, then
    free the space.
    """

    def plan(f: Fleet) -> None:
        f.feed(40 * SCALE)
        for _ in range(SCALE):
            f.wait_progress(5)
            f.feed(20)  # work outstanding when the fault comes, however fast the fleet ran
            before = f.count("unavailable")
            limited = []
            if method == "tmpfs":
                filler = fill(where)
            else:
                for child in f.live("worker"):
                    resource.prlimit(child.proc.pid, resource.RLIMIT_FSIZE, (0, 0))
                    limited.append(child.proc.pid)
            end = time.monotonic() + 30
            while f.count("unavailable") <= before and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.5)
            if method == "tmpfs":
                filler.unlink()
            else:
                for pid in limited:
                    with contextlib.suppress(ProcessLookupError):
                        resource.prlimit(pid, resource.RLIMIT_FSIZE, (-1, -1))
            f.faults.append(Fault(f"disk full ({method})", wall_us()))
            assert f.count("unavailable") > before, "no write met the full disk"
            f.feed(10)

    return plan


def immutable(paths: list[Path], on: bool) -> bool:
    """``chattr +i`` (``on``) or ``-i`` on ``paths``; whether it was done."""
    flag = "+i" if on else "-i"
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True)
    return done.returncode == 0


def read_only(db: Path, refusals: list[str]) -> Any:
    """Make the database and its WAL immutable until a holder write meets it; a store
    opened meanwhile must be refused typed (its message appended to ``refusals``).
    """
    files = [db, Path(f"{db}-wal")]

    def plan(f: Fleet) -> None:
        f.feed(40 * SCALE)
        for _ in range(SCALE):
            f.wait_progress(5)
            f.feed(20)  # work outstanding when the fault comes, however fast the fleet ran
            before = f.count("unavailable")
            immutable(files, True)
            try:
                with pytest.raises(StoreUnavailableError) as caught:
                    SQLiteStore(db).close()
                refusals.append(str(caught.value))
                end = time.monotonic() + 30
                while f.count("unavailable") <= before and time.monotonic() < end:
                    time.sleep(0.05)
                time.sleep(0.5)
            finally:
                immutable(files, False)
            f.faults.append(Fault("database read-only", wall_us()))
            assert f.count("unavailable") > before, "no write met the read-only file"
            f.feed(10)

    return plan


def lock_removed(lock: Path) -> Any:
    """Remove the writer-lock file and SIGKILL a worker (its replacement locks a new
    file), twice (ten times in the long form).
    """

    def plan(f: Fleet) -> None:
        f.feed(40 * SCALE)
        for _ in range(2 * SCALE):
            f.wait_progress(5)
            lock.unlink(missing_ok=True)
            victims = f.live("worker")[:1]
            for child in victims:
                f.kill(child)
            f.faults.append(Fault("writer lock removed", wall_us()))
            f.feed(10)

    return plan
