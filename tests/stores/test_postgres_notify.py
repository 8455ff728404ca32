"""PostgreSQL wake-ups: LISTEN/NOTIFY behind ``wait_for_work``.

Every test waits for its waiter to be registered with the store's listener (its
``waiting`` count) and for the notifications of earlier writes to be heard before
the write under test, so that no result depends on how fast a thread runs. A
notification of another queue, or of nothing, is shown not to wake a waiter by a
later notification that is heard first (notifications arrive in commit order).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from conftest import POSTGRES_URL, T0, require_postgres
from sagalease import (
    Compensation,
    DuplicateTaskError,
    InvalidInputError,
    NewTask,
    StoreUnavailableError,
    TaskSaga,
    TaskState,
)

psycopg = pytest.importorskip("psycopg")
from sagalease.stores.postgres import PostgresStore, scratch_store  # noqa: E402
from sagalease.stores.postgres._store import channel_name  # noqa: E402

TTL = timedelta(seconds=30)
S = timedelta(seconds=1)
LONG = timedelta(seconds=60)
"""A waiter's timeout: far longer than any wake-up takes (it is never waited out)."""

HOSTILE_QUEUES = [
    "'; NOTIFY sagalease; --",
    'q"; LISTEN x; UNLISTEN *; "',
    "semi;colon;;",
    "$1 %s %(x)s {schema} ::text",
    "back\\slash 'quote' \"dq\"",
    "ünï©ødé ✓ 😀",
    "é" * 200,
    "😀" * 200,
    "x" * 200,
]


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    """A fresh store in its own schema."""
    require_postgres()
    s = scratch_store(POSTGRES_URL)
    try:
        yield s
    finally:
        s.close()


def _admin(statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (a bound only against hanging, never a measurement)."""
    for _ in range(4000):
        if condition():
            return
        time.sleep(0.005)
    pytest.fail(f"never happened: {what}")


def _listening(store: PostgresStore) -> int:
    """Start the store's listener (a wait that gives up at once) and wait until it
    listens; returns its server process id.
    """
    assert store.wait_for_work(timeout=timedelta(0)) is False
    _until(lambda: store._listener.backend_pid is not None, "the listener connects")
    pid = store._listener.backend_pid
    assert pid is not None
    return pid


def _heard(store: PostgresStore, queue: str, number: int) -> None:
    """Wait until the listener has heard ``number`` notifications of ``queue``."""
    _until(lambda: store._listener.heard(queue) >= number, f"{number} notification(s) of {queue}")
    assert store._listener.heard(queue) == number


class Waiter:
    """A thread in ``wait_for_work(queues=...)``, then (if woken) in ``then(store)``."""

    def __init__(
        self,
        store: PostgresStore,
        queues: str | list[str] | None,
        then: Callable[[PostgresStore], object] | None = None,
    ) -> None:
        self.woken: bool | None = None
        self.then: object = None
        self.error: BaseException | None = None
        listener = store._listener
        before = listener.waiting

        def run() -> None:
            try:
                self.woken = store.wait_for_work(queues=queues, timeout=LONG)
                if self.woken and then is not None:
                    self.then = then(store)
            except BaseException as exc:  # reported by result()
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        _until(lambda: listener.waiting > before, "the waiter waits")

    @property
    def waiting(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> bool | None:
        """Whether the wait was woken (join the thread first)."""
        self._thread.join(timeout=LONG.total_seconds())
        assert not self._thread.is_alive(), "the waiter was never woken"
        if self.error is not None:
            raise self.error
        return self.woken


def _claim(queue: str) -> Callable[[PostgresStore], TaskSaga | None]:
    return lambda store: store.claim_next(owner="waiter", ttl=TTL, queues=queue, now=T0 + S)


# ---------------------------------------------------------------- the writes that wake


def test_create_wakes_a_waiter_of_its_queue_whose_claim_finds_the_task(
    store: PostgresStore,
) -> None:
    """A ``create`` notifies its queue once committed: the waiter wakes (True) and the claim
    it makes right away finds the task.
    """
    _listening(store)
    waiter = Waiter(store, ["q"], then=_claim("q"))
    store.create("t", queue="q", now=T0)
    assert waiter.result() is True
    assert isinstance(waiter.then, TaskSaga)
    assert waiter.then.task_id == "t"


def test_create_many_wakes_each_queue_it_writes(store: PostgresStore) -> None:
    """create_many notifies every queue of its tasks (once per queue)."""
    _listening(store)
    waiters = {q: Waiter(store, q) for q in ("a", "b")}
    store.create_many(
        [NewTask("a1", queue="a"), NewTask("a2", queue="a"), NewTask("b1", queue="b")]
    )
    assert {q: w.result() for q, w in waiters.items()} == {"a": True, "b": True}
    _heard(store, "a", 1)
    _heard(store, "b", 1)


def test_release_wakes_the_queue(store: PostgresStore) -> None:
    """A ``release`` (the task is PENDING and unleased again) notifies its queue."""
    _listening(store)
    store.create("t", queue="q", now=T0)
    task = store.claim_next(owner="w", ttl=TTL, now=T0)
    assert task is not None
    _heard(store, "q", 1)
    waiter = Waiter(store, "q", then=_claim("q"))
    store.release("t", owner="w", token=task.token, reason="retry later", now=T0)
    assert waiter.result() is True
    assert isinstance(waiter.then, TaskSaga)
    assert waiter.then.token == task.token + 1


def test_reap_of_an_expired_lease_wakes_the_queue(store: PostgresStore) -> None:
    """reap, dropping an expired lease, notifies the task's queue."""
    _listening(store)
    store.create("t", queue="q", now=T0)
    assert store.claim_next(owner="w", ttl=TTL, now=T0) is not None
    _heard(store, "q", 1)
    waiter = Waiter(store, "q")
    reaped = store.reap(now=T0 + TTL + S)
    assert [t.task_id for t in reaped] == ["t"]
    assert waiter.result() is True
    assert reaped[0].state is TaskState.PENDING


def test_fail_into_compensating_wakes_the_queue(store: PostgresStore) -> None:
    """A ``fail`` with a compensation owed leaves the task COMPENSATING and unleased: a
    compensating worker can claim it, so its queue is notified.
    """
    _listening(store)
    store.create("t", queue="q", compensations=[Compensation("refund", "o-1")], now=T0)
    task = store.claim_next(owner="w", ttl=TTL, now=T0)
    assert task is not None
    _heard(store, "q", 1)
    waiter = Waiter(store, "q", then=_claim("q"))
    failed = store.fail("t", owner="w", token=task.token, reason="card declined", now=T0)
    assert failed.state is TaskState.COMPENSATING
    assert waiter.result() is True
    assert isinstance(waiter.then, TaskSaga)
    assert waiter.then.state is TaskState.COMPENSATING


def test_writes_that_free_nothing_send_nothing(store: PostgresStore) -> None:
    """claim, heartbeat and complete leave no task claimable: no notification (a later
    create of another queue is heard first).
    """
    _listening(store)
    store.create("t", queue="q", now=T0)
    task = store.claim_next(owner="w", ttl=TTL, now=T0)
    assert task is not None
    store.heartbeat("t", owner="w", token=task.token, ttl=TTL, now=T0 + S)
    store.complete("t", owner="w", token=task.token, now=T0 + S)
    store.create("barrier", queue="z", now=T0)
    _heard(store, "z", 1)
    assert store._listener.heard("q") == 1  # the create only


def test_another_stores_write_wakes_the_waiter_and_another_schema_does_not(
    store: PostgresStore,
) -> None:
    """Writes of another store on the same schema (another worker machine) wake the
    waiter; a store on another schema notifies another channel.
    """
    _listening(store)
    waiter = Waiter(store, "q")
    with scratch_store(POSTGRES_URL) as elsewhere:
        assert elsewhere.channel != store.channel
        elsewhere.create("t", queue="q", now=T0)
        with PostgresStore(POSTGRES_URL, schema=store.schema) as peer:
            assert peer.channel == store.channel
            peer.create("barrier", queue="z", now=T0)
            _heard(store, "z", 1)
            assert waiter.waiting
            assert store._listener.heard("q") == 0
            peer.create("t", queue="q", now=T0)
    assert waiter.result() is True


# ---------------------------------------------------------------- what does not wake


def test_another_queues_create_does_not_wake_the_waiter(store: PostgresStore) -> None:
    """A waiter of queue a stays asleep through a create in b (heard by the listener);
    the create in a then wakes it.
    """
    _listening(store)
    waiter = Waiter(store, ["a"])
    store.create("b1", queue="b", now=T0)
    _heard(store, "b", 1)
    assert waiter.waiting
    store.create("a1", queue="a", now=T0)
    assert waiter.result() is True


def test_a_rolled_back_create_sends_nothing(store: PostgresStore) -> None:
    """A create_many refused for a stored duplicate, and a duplicate create, store
    nothing and notify nothing: the waiter of their queue sleeps on past a later
    notification, and only a real create wakes it.
    """
    store.create("old", queue="other", now=T0)
    _listening(store)
    waiter = Waiter(store, "q")
    with pytest.raises(DuplicateTaskError):
        store.create_many([NewTask("new", queue="q"), NewTask("old", queue="q")], now=T0)
    with pytest.raises(DuplicateTaskError):
        store.create("old", queue="q", now=T0)
    store.create("barrier", queue="z", now=T0)
    _heard(store, "z", 1)
    assert waiter.waiting
    assert store._listener.heard("q") == 0
    assert store.get("new") is None
    store.create("new", queue="q", now=T0)
    assert waiter.result() is True


def test_the_notification_is_not_delivered_before_commit(store: PostgresStore) -> None:
    """A create held open after its statement ran (a test trigger waits on an advisory
    lock): nothing reaches the waiter, though a later notification does; once the
    create commits, the waiter wakes and its claim finds the task.
    """
    schema = store.schema
    _admin(
        f'CREATE FUNCTION "{schema}".hold() RETURNS trigger LANGUAGE plpgsql AS'
        " $$ BEGIN PERFORM pg_advisory_xact_lock_shared(424242); RETURN NULL; END $$"
    )
    _admin(
        f'CREATE TRIGGER hold AFTER INSERT ON "{schema}".history'
        f' FOR EACH ROW EXECUTE FUNCTION "{schema}".hold()'
    )
    _listening(store)
    waiter = Waiter(store, "q", then=_claim("q"))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(424242)")
        creating = threading.Thread(target=lambda: store.create("t", queue="q", now=T0))
        creating.start()
        _until(
            lambda: bool(
                _admin(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND objid = 424242"
                )
            ),
            "the create waits on the lock",
        )
        holder.execute("SELECT pg_notify(%s, 'barrier')", (store.channel,))
        _heard(store, "barrier", 1)
        assert waiter.waiting
        assert store._listener.heard("q") == 0
        assert store.get("t") is None
        holder.execute("SELECT pg_advisory_unlock(424242)")
        creating.join(timeout=LONG.total_seconds())
    assert waiter.result() is True
    assert isinstance(waiter.then, TaskSaga)
    assert waiter.then.task_id == "t"


@pytest.mark.parametrize("queue", HOSTILE_QUEUES, ids=range(len(HOSTILE_QUEUES)))
def test_hostile_queue_names_are_payload_only(store: PostgresStore, queue: str) -> None:
    """Queue names full of quotes, semicolons, SQL, 200 characters or unicode travel as
    the payload unchanged: the waiter of that queue is woken, the waiter of a name one
    character off is not, and the task is claimed from its queue.
    """
    _listening(store)
    near = queue[:-1] + ("y" if queue[-1] != "y" else "z")
    other = Waiter(store, near)
    waiter = Waiter(store, [queue], then=_claim(queue))
    store.create("t", queue=queue, now=T0)
    assert waiter.result() is True
    assert isinstance(waiter.then, TaskSaga)
    assert waiter.then.queue == queue
    _heard(store, queue, 1)
    assert other.waiting
    assert store._listener.heard(near) == 0
    store.create("u", queue=near, now=T0)
    assert other.result() is True
    assert _admin(f'SELECT count(*) FROM "{store.schema}".tasks') == [(2,)]


# ---------------------------------------------------------------- one listener, failures, close


def test_waiting_threads_share_one_listening_connection(store: PostgresStore) -> None:
    """Three threads wait on one connection: a create in a wakes the waiters of a and
    of every queue, not the waiter of b.
    """
    pid = _listening(store)
    waiters = {"a": Waiter(store, "a"), "b": Waiter(store, ["b"]), "any": Waiter(store, None)}
    store.create("a1", queue="a", now=T0)
    assert waiters["a"].result() is True
    assert waiters["any"].result() is True
    assert waiters["b"].waiting
    assert store._listener.backend_pid == pid
    store.create("b1", queue="b", now=T0)
    assert waiters["b"].result() is True


def test_a_terminated_listener_returns_false_then_reconnects(
    store: PostgresStore, capfd: pytest.CaptureFixture[str]
) -> None:
    """pg_terminate_backend of the listening connection: the waiter gets False (no
    error, nothing on stdout or stderr); the next wait connects again and is woken.
    """
    pid = _listening(store)
    waiter = Waiter(store, "q")
    assert _admin("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    assert waiter.result() is False
    _until(lambda: store._listener.backend_pid is None, "the listener thread ends")
    again = _listening(store)
    assert again != pid
    waiter = Waiter(store, "q")
    store.create("t", queue="q", now=T0)
    assert waiter.result() is True
    assert capfd.readouterr() == ("", "")


def test_close_ends_the_listener_and_wakes_its_waiters(capfd: pytest.CaptureFixture[str]) -> None:
    """close() wakes a waiter (False), closes the listening connection (its server
    process goes away) and a later wait is StoreUnavailableError.
    """
    require_postgres()
    store = scratch_store(POSTGRES_URL)
    try:
        pid = _listening(store)
        waiter = Waiter(store, "q")
    finally:
        store.close()
    assert waiter.result() is False
    assert store._listener.backend_pid is None
    _until(
        lambda: not _admin("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
        "the listener's server process exits",
    )
    with pytest.raises(StoreUnavailableError):
        store.wait_for_work(timeout=S)
    assert capfd.readouterr() == ("", "")


def test_no_server_means_false_after_the_timeout_not_an_error() -> None:
    """A store whose server went away (nothing listens on port 1 for the listener):
    wait_for_work returns False (the poll interval's fallback), never raises.
    """
    require_postgres()
    with scratch_store(POSTGRES_URL) as store:
        store._listener._connect = lambda: psycopg.connect(
            "postgresql://postgres@127.0.0.1:1/test", connect_timeout=1
        )
        assert store.wait_for_work(queues="q", timeout=timedelta(milliseconds=50)) is False
        _until(lambda: store._listener._thread is None, "the failed listener thread ends")
        assert store.wait_for_work(timeout=timedelta(milliseconds=50)) is False


@pytest.mark.parametrize(
    ("queues", "timeout"),
    [
        (None, 5),
        (None, timedelta(seconds=-1)),
        ("", S),
        ([], S),
        ("x" * 201, S),
        (b"q", S),
        (["ok", "tab\t"], S),
    ],
)
def test_bad_wait_arguments_are_refused(
    store: PostgresStore, queues: object, timeout: object
) -> None:
    """A timeout that is not a non-negative timedelta, or a malformed queue:
    InvalidInputError, and no listener is started.
    """
    with pytest.raises(InvalidInputError):
        store.wait_for_work(queues=queues, timeout=timeout)  # type: ignore[arg-type]
    assert store._listener._thread is None


def test_channel_names_are_short_fixed_and_per_schema() -> None:
    """The channel is 'sagalease_' and 16 hex digits, the same for a schema every time,
    different for different schemas, within PostgreSQL's 63 bytes for any schema name.
    """
    names = {channel_name(s) for s in ("sagalease", "a" * 63, "b", "sagalease_test_x")}
    assert len(names) == 4
    assert all(len(n) == 26 and n.startswith("sagalease_") and n == n.lower() for n in names)
    assert channel_name("a" * 63) == channel_name("a" * 63)


def test_a_notification_heard_while_the_claim_found_nothing_is_not_missed(
    store: PostgresStore,
) -> None:
    """A thread's wait counts from the end of its previous wait on the same queues: a
    task created between an empty claim and the next wait wakes that wait at once
    (a worker would otherwise sleep a whole poll interval), and only once.
    """
    _listening(store)
    assert store.wait_for_work(queues="q", timeout=timedelta(0)) is False
    assert store.claim_next(owner="w", ttl=TTL, queues="q", now=T0) is None
    store.create("t", queue="q", now=T0)
    _heard(store, "q", 1)  # heard before this thread waits again
    assert store.wait_for_work(queues="q", timeout=LONG) is True
    assert store.wait_for_work(queues="q", timeout=timedelta(0)) is False
