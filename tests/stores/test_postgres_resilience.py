"""PostgreSQL store under faults: killed connections and a server that goes away and
comes back log one line per incident through ``sagalease.postgres`` and print
nothing; opening retries a briefly unavailable server for ``connect_timeout``, then
fails with one line naming the host (never the password).

Connections are killed with ``pg_terminate_backend`` from an admin connection,
restricted to this test's own ``application_name``; a server "restart" is a
:class:`~_pg_proxy.Proxy` in front of the shared server (which is never touched).
"""

from __future__ import annotations

import logging
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from _pg_proxy import Proxy
from conftest import POSTGRES_URL, T0, require_postgres
from sagalease import (
    InvalidInputError,
    NewTask,
    StoreUnavailableError,
    TaskSaga,
    TaskState,
    core,
    open_store,
)
from sagalease.cli import EXIT_UNAVAILABLE, main

psycopg = pytest.importorskip("psycopg")
from sagalease.stores.postgres import PostgresStore  # noqa: E402
from sagalease.stores.postgres import _store as postgres  # noqa: E402

TTL = timedelta(seconds=30)
S = timedelta(seconds=1)
PASSWORD = "Sekr1t-pa55w0rd"
DRIVER = ("psycopg", "psycopg.pool")


def _admin(statement: str, *params: object) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(statement, params)


def _kill(application_name: str) -> None:
    """Terminate every backend of ``application_name`` (this test's only)."""
    _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        application_name,
    )


def _url(base: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{base}{'&' if '?' in base else '?'}{query}"


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped after the test."""
    require_postgres()
    name = f"sagalease_test_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        _admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _store_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == postgres.LOGGER_NAME and r.levelno >= level
    ]


def _driver_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name in DRIVER and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- one line per incident


def test_killed_connections_are_one_warning_and_the_pool_recovers(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pooled connection killed under claims (pipeline mode) and writes: the
    calls raise StoreUnavailableError, the driver's warnings (an aborted pipeline, the
    discarded connections) become one WARNING line on sagalease.postgres with the
    rest at DEBUG, none is left on psycopg's loggers, and the next calls work on
    fresh, clean connections.
    """
    app = f"res_{schema}"
    url = _url(f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test", application_name=app)
    caplog.set_level(logging.DEBUG, logger=postgres.LOGGER_NAME)
    with PostgresStore(url, schema=schema, min_size=2, max_size=2) as store:
        store.create_many([NewTask(f"t{i}") for i in range(4)], now=T0)
        claimed = store.claim_next(owner="w", ttl=TTL, now=T0)
        assert claimed is not None
        _kill(app)
        failures = 0
        causes: list[BaseException | None] = []
        taken: list[TaskSaga | None] = [claimed]
        for _ in range(3):  # at most one failure per dead pooled connection
            try:
                taken.append(store.claim_next(owner="w", ttl=TTL, now=T0))
            except StoreUnavailableError as exc:
                causes.append(exc.__cause__)
                failures += 1
            else:
                break
        assert failures >= 1
        assert all(isinstance(cause, psycopg.Error) for cause in causes)
        taken.append(store.claim_next(owner="w2", ttl=TTL, now=T0))  # works again
        assert None not in taken
        assert store._incidents.incidents == 1
        for conn in list(store._pool._pool):  # what is pooled is idle and usable
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        stored = {t.task_id: t for t in store.list_tasks()}
        for task_id, task in stored.items():
            assert core.replay(store.history(task_id)) == task
        assert sum(t.state is TaskState.RUNNING for t in stored.values()) == len(taken)
    lines = _store_lines(caplog)
    assert len(lines) == 1, lines
    assert "connection trouble" in lines[0]
    assert "127.0.0.1:5432/test" in lines[0]
    assert _driver_records(caplog) == []
    assert store._incidents.messages >= 1
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_nothing_is_printed_without_logging_configured(tmp_path: Path) -> None:
    """A process that configures no logging (Python's last-resort handler would print
    every WARNING to stderr): killed connections and a server that goes away and comes
    back print nothing at all.
    """
    require_postgres()
    script = tmp_path / "quiet.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import secrets, sys
            from datetime import timedelta
            sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
            import psycopg
            from _pg_proxy import Proxy
            from sagalease import NewTask, StoreUnavailableError
            from sagalease.stores.postgres import PostgresStore

            schema = "sagalease_test_" + secrets.token_hex(6)
            app = "quiet_" + schema
            admin = psycopg.connect({POSTGRES_URL!r}, autocommit=True)
            proxy = Proxy()
            url = proxy.url({POSTGRES_URL!r}) + "&application_name=" + app
            store = PostgresStore(url, schema=schema, min_size=2, max_size=2, timeout=2)
            try:
                store.create_many([NewTask(f"t{{i}}") for i in range(8)])
                failed = 0
                for round in range(3):
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = %s", (app,))
                    for _ in range(3):
                        try:
                            store.claim_next(owner="w", ttl=timedelta(seconds=30))
                            break
                        except StoreUnavailableError:
                            failed += 1
                proxy.set_mode("drop")  # the server goes away
                for _ in range(3):
                    try:
                        store.get("t0")
                    except StoreUnavailableError:
                        failed += 1
                proxy.set_mode("forward")  # and comes back
                for _ in range(20):
                    try:
                        store.get("t0")
                        break
                    except StoreUnavailableError:
                        pass
                assert store.get("t0") is not None
                assert failed >= 4, failed
                print("ok", failed, store._incidents.incidents)
            finally:
                store.close()
                proxy.close()
                admin.execute(f'DROP SCHEMA IF EXISTS "{{schema}}" CASCADE')
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
    assert result.stderr == ""


def test_a_server_restart_is_one_line_and_the_store_works_after(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes away (every connection cut, new ones closed at once) and comes
    back: calls meanwhile raise StoreUnavailableError, the store logs one WARNING line,
    and once the server is back the calls work and nothing was half-written.
    """
    with Proxy() as proxy:
        url = proxy.url(POSTGRES_URL)
        with PostgresStore(url, schema=schema, min_size=2, max_size=2, timeout=2) as store:
            store.create("t", now=T0)
            store.acquire("t", owner="w", ttl=TTL, now=T0)
            proxy.set_mode("drop")
            with pytest.raises(StoreUnavailableError):
                store.heartbeat("t", owner="w", token=1, ttl=TTL, now=T0 + S)
            with pytest.raises(StoreUnavailableError):
                store.get("t")
            proxy.set_mode("forward")
            task = None
            for _ in range(20):  # the pool reconnects by itself; each try is bounded
                try:
                    task = store.get("t")
                    break
                except StoreUnavailableError:
                    continue
            assert task is not None
            assert task.lease is not None
            assert task.lease.token == 1
            assert core.replay(store.history("t")) == task
            done = store.complete("t", owner="w", token=1, now=T0 + 2 * S)
            assert done.state is TaskState.COMPLETED
    assert len(_store_lines(caplog)) <= 1
    assert _driver_records(caplog) == []


# ---------------------------------------------------------------- the incident rule


def _record(name: str = "psycopg.pool", level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "discarding %s", ("conn",), None)


def test_incidents_end_after_a_call_worked_and_a_quiet_period() -> None:
    """Messages close together are one incident; a long outage with no call that
    worked stays one incident; a call that worked and INCIDENT_QUIET seconds without
    a message end it, and the next message opens a new one (one WARNING each).
    """
    now = [0.0]
    logged: list[tuple[int, str]] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append((record.levelno, record.getMessage()))

    handler = Catch(logging.DEBUG)
    logger = logging.getLogger(postgres.LOGGER_NAME)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        incidents = postgres._Incidents("postgresql://u@h/db", lambda t: t, clock=lambda: now[0])
        incidents.noise(_record())
        now[0] += 0.1
        incidents.noise(_record())
        now[0] += 100 * postgres.INCIDENT_QUIET  # an outage: nothing worked meanwhile
        incidents.noise(_record())
        assert incidents.incidents == 1
        incidents.worked()
        now[0] += postgres.INCIDENT_QUIET / 2  # worked, but not quiet long enough
        incidents.noise(_record())
        assert incidents.incidents == 1
        incidents.worked()
        now[0] += postgres.INCIDENT_QUIET
        incidents.noise(_record())
        assert incidents.incidents == 2
        assert incidents.messages == 5
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    warnings = [text for level, text in logged if level == logging.WARNING]
    assert len(warnings) == 2
    assert all(text.startswith("postgresql://u@h/db: connection trouble") for text in warnings)
    assert [level for level, _ in logged].count(logging.DEBUG) == 3


def _seen_in_thread(name: str) -> postgres._Incidents | None:
    """The store a thread called ``name`` logs for."""
    seen: list[postgres._Incidents | None] = []
    thread = threading.Thread(target=lambda: seen.append(postgres._incidents_here()), name=name)
    thread.start()
    thread.join()
    return seen[0]


def test_driver_messages_of_other_pools_and_threads_pass_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The filter takes only records about a sagalease store's connections: those
    logged inside a store call, or by its pool's own threads. The application's own
    psycopg pools keep logging where they did, and INFO or DEBUG records pass.
    """
    incidents = postgres._Incidents("db", lambda t: t)
    pool_logger = logging.getLogger("psycopg.pool")
    caplog.set_level(logging.DEBUG, logger=postgres.LOGGER_NAME)
    pool_logger.warning("error connecting in %r: %s", "app-pool", "refused")  # not ours
    with postgres._using(incidents):
        pool_logger.warning("discarding closed connection: %s", "conn")  # ours
        pool_logger.error("rollback failed")  # ours
        assert postgres._incidents_here() is incidents
    assert postgres._incidents_here() is None
    with postgres._pools_lock:
        postgres._pools["sagalease-s-999999"] = incidents
    try:
        for name in ("sagalease-s-999999-worker-0", "sagalease-s-999999-scheduler"):
            assert _seen_in_thread(name) is incidents
        for name in ("sagalease-worker-0", "sagalease-listener", "sagalease-s-9999990-worker-0"):
            assert _seen_in_thread(name) is None
    finally:
        with postgres._pools_lock:
            postgres._pools.pop("sagalease-s-999999", None)
    passed = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert passed == ["error connecting in 'app-pool': refused"]
    assert incidents.messages == 2
    assert incidents.incidents == 1


def test_the_filter_is_installed_once_and_the_library_logger_has_a_null_handler() -> None:
    """Importing the store installs one filter on each psycopg logger; "sagalease" has
    a NullHandler (so that nothing reaches the last-resort handler).
    """
    postgres._install_driver_filter()
    postgres._install_driver_filter()
    for name in DRIVER:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, postgres._DriverFilter) for f in filters) == 1
    handlers = logging.getLogger("sagalease").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


# ---------------------------------------------------------------- opening: connect_timeout


def _closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _restore_after(proxy: Proxy, turned_away: int) -> threading.Thread:
    """Bring the proxy's server back once it turned ``turned_away`` connections away."""

    def restore() -> None:
        proxy.wait_turned_away(turned_away)
        proxy.set_mode("forward")

    thread = threading.Thread(target=restore, daemon=True)
    thread.start()
    return thread


def test_open_store_waits_for_a_restarting_server(schema: str) -> None:
    """Opened while the server is away (connections closed at once): open_store keeps
    trying, and once the server is back the store opens and works.
    """
    with Proxy() as proxy:
        proxy.set_mode("drop")
        restorer = _restore_after(proxy, 2)
        url = f"{proxy.url(POSTGRES_URL)}&schema={schema}"
        store = open_store(url, connect_timeout=120)
        try:
            restorer.join()
            assert proxy.turned_away >= 2
            store.create("t", now=T0)
            task = store.get("t")
            assert task is not None
            assert task.state is TaskState.PENDING
        finally:
            store.close()


def test_a_server_refusing_for_now_is_retried_then_one_clear_error(schema: str) -> None:
    """A server that answers "too many clients" (max_connections reached) is tried
    again until connect_timeout, then StoreUnavailableError: one line naming the host
    and the wait, never the password; no schema was created.
    """
    with Proxy() as proxy:
        proxy.set_mode("fatal")
        url = proxy.url(f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test")
        with pytest.raises(StoreUnavailableError) as info:
            PostgresStore(url, schema=schema, connect_timeout=2)
        message = str(info.value)
        assert proxy.turned_away >= 2
        assert proxy.forwarded == 0
    assert "\n" not in message
    assert f"127.0.0.1:{proxy.port}" in message
    assert "too many clients" in message
    assert "still unavailable after 2 s" in message
    assert PASSWORD not in message
    with psycopg.connect(POSTGRES_URL) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_a_refusal_that_will_not_change_fails_at_once(schema: str) -> None:
    """Wrong credentials (a FATAL 28P01): one attempt, then StoreUnavailableError,
    however long connect_timeout is.
    """
    with Proxy() as proxy:
        proxy.set_mode("fatal")
        proxy.sqlstate = "28P01"
        proxy.message = 'password authentication failed for user "postgres"'
        url = proxy.url(f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test")
        with pytest.raises(StoreUnavailableError, match="password authentication failed") as info:
            PostgresStore(url, schema=schema, connect_timeout=600)
        assert proxy.turned_away == 1
    assert "still unavailable" not in str(info.value)
    assert PASSWORD not in str(info.value)


def test_a_closed_port_fails_after_connect_timeout_naming_the_host() -> None:
    """Nothing listening: StoreUnavailableError after connect_timeout, one line."""
    port = _closed_port()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test"
    with pytest.raises(StoreUnavailableError) as info:
        open_store(url, connect_timeout=0.3)
    message = str(info.value)
    assert message.startswith(f"cannot connect to postgresql://postgres@127.0.0.1:{port}/test")
    assert "still unavailable after 0.3 s" in message
    assert "\n" not in message
    assert PASSWORD not in message


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "5"])
def test_connect_timeout_that_cannot_work_is_refused(value: object) -> None:
    """connect_timeout must be a positive, finite number of seconds, for every URL."""
    for url in ("memory://", "postgresql://postgres@127.0.0.1:1/test"):
        with pytest.raises(InvalidInputError, match="connect_timeout"):
            open_store(url, connect_timeout=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="connect_timeout"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=value)  # type: ignore[arg-type]


def test_the_transient_rule() -> None:
    """What opening retries: no answer from a server, or a refusal for now."""
    op = psycopg.OperationalError
    assert postgres._transient(op("connection failed: ... failed: Connection refused"))
    assert postgres._transient(op("failed: FATAL:  the database system is starting up"))
    assert postgres._transient(op("failed: FATAL:  sorry, too many clients already"))
    assert postgres._transient(psycopg.errors.AdminShutdown("terminating connection"))
    assert postgres._transient(psycopg.errors.CannotConnectNow("starting up"))
    assert not postgres._transient(op('failed: FATAL:  role "x" does not exist'))
    assert not postgres._transient(op('failed: FATAL:  database "x" does not exist'))
    assert not postgres._transient(psycopg.errors.InsufficientPrivilege("no"))
    assert not postgres._transient(psycopg.ProgrammingError("syntax"))
    assert not postgres._transient(None)
    assert not postgres._transient(ValueError("x"))


# ---------------------------------------------------------------- the CLI's --connect-timeout


def test_cli_connect_timeout_gives_one_line_and_exit_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server still away after --connect-timeout: exit 3, one line, no password."""
    port = _closed_port()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test"
    assert main(["--db", url, "--connect-timeout", "0.3", "stats"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sagalease: error: cannot connect to postgresql://postgres@127.0.0.1:")
    assert "still unavailable after 0.3 s" in err
    assert PASSWORD not in err


def test_cli_waits_for_a_restarting_server(schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With --connect-timeout long enough, a command run during a restart succeeds."""
    with Proxy() as proxy:
        proxy.set_mode("drop")
        restorer = _restore_after(proxy, 2)
        url = f"{proxy.url(POSTGRES_URL)}&schema={schema}"
        assert main(["--db", url, "--connect-timeout", "120", "stats", "--json"]) == 0
        restorer.join()
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.strip()
