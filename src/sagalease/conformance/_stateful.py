"""The stateful stage: a Hypothesis ``RuleBasedStateMachine`` drives the store under
test and the memory reference side by side.

Three simulated workers (and an operator and a reaper) act on a handful of tasks
under a controlled clock that is passed as ``now`` on every call. The clock
advances by small and large steps and jumps exactly onto a lease's expiry, a
deadline or an ``available_at`` (-1 µs, 0, +1 µs). Every lease ever granted stays
in a Bundle, so zombies keep presenting old leases; impostors present the current
token under another owner id. After every step the outcomes, records, histories
and listings of both stores must agree and every invariant must hold on the store
under test; each check names the invariant it pins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    multiple,
    precondition,
    rule,
)

from sagalease import core
from sagalease.conformance._common import (
    SEC,
    T0_US,
    ConformanceFailure,
    StoreFactory,
    describe,
    first_difference,
    outcome_text,
    record_difference,
    violated,
)
from sagalease.errors import (
    AttemptsExhaustedError,
    DuplicateTaskError,
    InvalidInputError,
    LeaseConflictError,
    SagaLeaseError,
    TerminalTaskError,
)
from sagalease.lifecycle import HOLDER_EVENTS, LEASE_STATES
from sagalease.records import (
    Compensation,
    CompensationStatus,
    NewTask,
    TaskSaga,
    TaskState,
    from_us,
)
from sagalease.store import EVENT_OF_METHOD, Queues, SagaStore
from sagalease.stores.memory import MemoryStore
from sagalease.verification.calls import Chosen, new_task, store_args

__all__ = ["run_stateful"]

WORKERS = ("w0", "w1", "w2")
MAX_TASKS = 4
TTLS = (1 * SEC, 5 * SEC, 30 * SEC)
QUEUES = ("default", "q0", "q1")
"""The queues tasks go to: few, so that claims over some of them find work and miss it."""


class CreateSpec(NamedTuple):
    """What a create chooses: compensations, the attempt cap, a deadline and a delay (µs
    from now), a saga, a queue and a priority (``None``: left to the default; a small
    range, so that ties happen), and whether the task links to the first as a requeue.
    """

    compensations: int
    max_attempts: int
    deadline: int | None
    delay: int | None
    saga: bool
    queue: str | None = None
    priority: int | None = None
    linked: bool = False


CREATE_SPECS = st.builds(
    CreateSpec,
    st.integers(0, 2),
    st.integers(1, 3),
    st.sampled_from([None, 3 * SEC, 20 * SEC]),
    st.sampled_from([None, 2 * SEC]),
    st.booleans(),
    st.sampled_from([None, *QUEUES[1:]]),
    st.sampled_from([None, 0, 1, -1]),
    st.booleans(),
)
CLAIM_QUEUES = st.sampled_from([None, None, "q0", "q1", ("q0", "default"), ["q1", "q0"]])
"""The queues a claim names (``None``: the argument left out, every queue)."""


_CLAIMS = frozenset(
    method for method, event in EVENT_OF_METHOD.items() if event == "acquire" and method != event
)
"""The store methods that pick the task they lease (claim_next, claim_batch)."""


@dataclass(frozen=True)
class Cred:
    """A lease as a worker remembers it: (task, owner, token)."""

    task_id: str
    owner: str
    token: int


_ERROR_INVARIANT: dict[type[BaseException], str] = {
    TerminalTaskError: "INV-3",
    AttemptsExhaustedError: "INV-5",
    InvalidInputError: "INV-8",
    DuplicateTaskError: "INV-8",
}


def _classify_record(sut: TaskSaga, ref: TaskSaga) -> str:
    """The invariant a record that differs from the reference's breaks."""
    if sut.token != ref.token or (sut.lease and sut.lease.token) != (ref.lease and ref.lease.token):
        return "INV-2"
    if sut.lease != ref.lease:
        return "INV-1"
    if sut.compensations != ref.compensations:
        return "INV-4"
    if ref.state.is_terminal or sut.state.is_terminal:
        if sut.state is not ref.state and TaskState.FAILED in (sut.state, ref.state):
            return "INV-4"
        return "INV-3"
    if (sut.attempts, sut.max_attempts) != (ref.attempts, ref.max_attempts):
        return "INV-5"
    if sut.queue != ref.queue:
        return "INV-9"
    if sut.priority != ref.priority:
        return "INV-10"
    return "INV-7"


def _claim_invariant(sut_out: Any, ref_out: Any) -> str:
    """The invariant a claim whose result differs from the reference's breaks: another
    number of tasks (one of them thought leaseable or not: INV-1), other tasks or another
    order (INV-10), or other records of the same tasks.
    """
    sut: list[TaskSaga] = sut_out if isinstance(sut_out, list) else [sut_out] if sut_out else []
    ref: list[TaskSaga] = ref_out if isinstance(ref_out, list) else [ref_out] if ref_out else []
    if len(sut) != len(ref):
        return "INV-1"
    if [t.task_id for t in sut] != [t.task_id for t in ref]:
        return "INV-10"
    return next((_classify_record(a, b) for a, b in zip(sut, ref, strict=True) if a != b), "INV-1")


class _Seen(NamedTuple):
    """One call as the checks see it: the method, its keyword arguments, the task it
    names, and the store under test's records before it.
    """

    method: str
    kwargs: dict[str, Any]
    task_id: str | None
    prev: dict[str, TaskSaga]


def _impostor(other: str, holder: str) -> str:
    """An owner id that is not ``holder``'s: ``other``, or ``holder`` disguised."""
    return other if other != holder else f"{holder}-impostor"


def make_machine(factory: StoreFactory) -> type[RuleBasedStateMachine]:
    """The state machine class for stores made by ``factory``."""

    class StoreAgreesWithReference(RuleBasedStateMachine):
        tasks = Bundle("tasks")
        leases = Bundle("leases")

        def __init__(self) -> None:
            super().__init__()
            self.steps: list[str] = []
            self.now = T0_US
            self.ids: list[str] = []
            self.ref = MemoryStore()
            self.sut: SagaStore = factory()
            self.sut_state: Any = self._snap(self.sut)
            """The store under test as the last step left it (records, histories, counts)."""
            self.failed = False
            self.touched: str | None = None
            self.batch: list[tuple[str, int]] = []
            """The (task_id, token) pairs of the last complete_many."""

        # ------------------------------------------------------------ plumbing

        def teardown(self) -> None:
            try:
                if not self.failed:
                    self._final_checks()
            finally:
                self.sut.close()
                self.ref.close()

        def _fail(self, invariant: str, detail: str) -> ConformanceFailure:
            err = violated(invariant, self.steps[-1] if self.steps else "the start", detail)
            err.steps = list(self.steps)
            self.failed = True
            return err

        def _snap(self, store: SagaStore) -> Any:
            tasks = store.list_tasks(limit=10_000)
            return tasks, [store.history(t.task_id) for t in tasks], store.counts()

        def _call(
            self,
            method: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            *,
            naive: bool = False,
        ) -> Any:
            """Run one call on both stores and check everything about it."""
            now = from_us(self.now)
            if naive:
                now = now.replace(tzinfo=None)
            kwargs = {**kwargs, "now": now}
            text = describe(method, args, kwargs)
            task_id = args[0] if args and isinstance(args[0], str) else None
            self.touched = task_id
            sut_before = self.sut_state
            call = _Seen(method, kwargs, task_id, {t.task_id: t for t in sut_before[0]})
            ref_out: Any
            sut_out: Any
            try:
                ref_out = getattr(self.ref, method)(*args, **kwargs)
            except SagaLeaseError as exc:
                ref_out = exc
            try:
                sut_out = getattr(self.sut, method)(*args, **kwargs)
            except Exception as exc:
                sut_out = exc
            self.steps.append(f"{text} -> {outcome_text(sut_out)}")
            self._check_outcome(call, sut_before, ref_out, sut_out)
            self._check_stores()
            return None if isinstance(sut_out, BaseException) else sut_out

        def _check_outcome(self, call: _Seen, sut_before: Any, ref_out: Any, sut_out: Any) -> None:
            ref_err = isinstance(ref_out, BaseException)
            if isinstance(sut_out, BaseException):
                if not isinstance(sut_out, SagaLeaseError):
                    raise self._fail(
                        "INV-8",
                        f"raised {type(sut_out).__name__} (not a SagaLeaseError): {sut_out}",
                    )
                after = self._snap(self.sut)
                if after != sut_before:
                    raise self._fail(
                        "INV-11" if call.method == "create_many" else "INV-8",
                        f"raised {type(sut_out).__name__} but changed the store:"
                        f" {first_difference(sut_before, after)}",
                    )
                if not ref_err:
                    lease_inv: dict[type[BaseException], str] = {LeaseConflictError: "INV-1"}
                    inv = lease_inv.get(type(sut_out)) or _ERROR_INVARIANT.get(
                        type(sut_out), "INV-6"
                    )
                    raise self._fail(
                        inv,
                        f"refused a legal call with {type(sut_out).__name__}: {sut_out}"
                        f" (the reference returned {outcome_text(ref_out)})",
                    )
                if type(sut_out) is not type(ref_out):
                    lease_err = sut_out if isinstance(sut_out, LeaseConflictError) else ref_out
                    inv = self._refused_invariant(call, lease_err)
                    raise self._fail(
                        inv,
                        f"raised {type(sut_out).__name__}, the reference raised"
                        f" {type(ref_out).__name__}: {ref_out}",
                    )
                return
            # The store under test accepted the call.
            self._check_accepted(call, sut_out)
            if ref_err:
                inv = self._refused_invariant(call, ref_out)
                raise self._fail(
                    inv,
                    f"accepted a call the reference refuses with {type(ref_out).__name__}:"
                    f" {ref_out}",
                )
            if sut_out != ref_out:
                if (
                    isinstance(sut_out, TaskSaga)
                    and isinstance(ref_out, TaskSaga)
                    and sut_out.task_id == ref_out.task_id
                ):
                    raise self._fail(
                        _classify_record(sut_out, ref_out),
                        f"returned a record that differs from the reference's:"
                        f" {record_difference(sut_out, ref_out)}",
                    )
                inv = _claim_invariant(sut_out, ref_out) if call.method in _CLAIMS else "INV-7"
                raise self._fail(
                    inv,
                    f"returned {outcome_text(sut_out)}, the reference {outcome_text(ref_out)}",
                )

        def _refused_invariant(self, call: _Seen, ref_err: BaseException) -> str:
            if call.method == "create_many":
                return "INV-11"
            if isinstance(ref_err, LeaseConflictError):
                old = call.prev.get(call.task_id or "")
                if (
                    call.method in HOLDER_EVENTS
                    and old is not None
                    and call.kwargs["token"] != old.token
                ):
                    return "INV-2"
                return "INV-1"
            return _ERROR_INVARIANT.get(type(ref_err), "INV-6")

        def _check_accepted(self, call: _Seen, result: Any) -> None:
            """What a successful call implies about the record it found (the store's own)."""
            method, kwargs, task_id, prev = call
            if method == "claim_batch" and isinstance(result, list):
                for rec in result:
                    self._check_accepted(_Seen("claim_next", kwargs, None, prev), rec)
            elif method == "complete_many":
                for item_id, token in self.batch:
                    each = _Seen("complete", {**kwargs, "token": token}, item_id, prev)
                    self._check_accepted(each, None)
            elif EVENT_OF_METHOD.get(method) == "acquire" and isinstance(result, TaskSaga):
                old = prev.get(result.task_id)
                if old is None:
                    raise self._fail("INV-7", f"granted a lease on unknown {result.task_id!r}")
                named = core.check_queues(kwargs.get("queues"))
                if named is not None and old.queue not in named:
                    raise self._fail(
                        "INV-9",
                        f"leased {old.task_id!r} of queue {old.queue!r}; the claim named {named}",
                    )
                if old.state.is_terminal:
                    raise self._fail("INV-3", f"leased terminal task {old.task_id!r}")
                if old.lease is not None and self.now < old.lease.expires_us:
                    raise self._fail(
                        "INV-1",
                        f"granted {result.task_id!r} to {kwargs['owner']!r} while"
                        f" {old.lease.owner!r} (token {old.lease.token}) held a live lease"
                        f" until {from_us(old.lease.expires_us).isoformat()}",
                    )
                if old.attempts >= old.max_attempts:
                    raise self._fail(
                        "INV-5",
                        f"granted attempt {old.attempts + 1} of {old.max_attempts}",
                    )
                if result.token != old.token + 1 or (
                    result.lease is None or result.lease.token != result.token
                ):
                    raise self._fail(
                        "INV-2",
                        f"acquisition gave token {result.token} after token {old.token}",
                    )
            elif method in HOLDER_EVENTS and task_id is not None:
                old = prev[task_id]
                lease = old.lease
                owner, token = kwargs["owner"], kwargs["token"]
                if old.state.is_terminal:
                    raise self._fail("INV-3", f"{method} changed terminal task {task_id!r}")
                if token != old.token or lease is None or lease.token != token:
                    raise self._fail(
                        "INV-2",
                        f"{method} succeeded with token {token}; the current token is {old.token}",
                    )
                if owner != lease.owner:
                    raise self._fail(
                        "INV-1",
                        f"{method} succeeded for {owner!r}; the lease is held by"
                        f" {lease.owner!r} (same token {token}: an impostor)",
                    )
                if self.now >= lease.expires_us:
                    raise self._fail(
                        "INV-1",
                        f"{method} succeeded on a lease that expired at"
                        f" {from_us(lease.expires_us).isoformat()}",
                    )
            elif method == "quarantine" and task_id is not None:
                if prev[task_id].state.is_terminal:
                    raise self._fail("INV-3", f"quarantine changed terminal task {task_id!r}")
            elif method == "annotate" and task_id is not None and isinstance(result, TaskSaga):
                old = prev[task_id]
                if replace(result, notes=old.notes, version=old.version) != old or (
                    result.notes[:-1] != old.notes
                ):
                    inv = "INV-3" if old.state.is_terminal else "INV-7"
                    raise self._fail(
                        inv,
                        "annotate changed more than the notes:"
                        f" {record_difference(result, replace(old, notes=result.notes))}",
                    )

        def _check_record(self, rec: TaskSaga) -> None:
            """Invariants of one stored record on its own."""
            if rec.attempts > rec.max_attempts:
                raise self._fail(
                    "INV-5", f"{rec.task_id!r} has {rec.attempts} of {rec.max_attempts} attempts"
                )
            if rec.state.is_terminal and rec.lease is not None:
                raise self._fail("INV-3", f"terminal {rec.task_id!r} holds a lease")
            pending = rec.pending_compensations
            if rec.state is TaskState.FAILED and rec.compensations:
                raise self._fail("INV-4", f"FAILED {rec.task_id!r} has compensations")
            if rec.state is TaskState.COMPENSATED and any(
                c.status is not CompensationStatus.APPLIED for c in rec.compensations
            ):
                raise self._fail("INV-4", f"COMPENSATED {rec.task_id!r} with one not applied")
            if rec.state in (TaskState.FAILED, TaskState.COMPENSATED) and pending:
                raise self._fail("INV-4", f"{rec.task_id!r} ended with {pending} pending")
            if rec.lease is not None and rec.lease.token != rec.token:
                raise self._fail(
                    "INV-2", f"{rec.task_id!r}: lease token {rec.lease.token} != {rec.token}"
                )

        def _check_stores(self) -> None:
            sut_tasks = self.sut.list_tasks(limit=10_000)
            ref_tasks = self.ref.list_tasks(limit=10_000)
            for rec in sut_tasks:
                self._check_record(rec)
            sut_ids = [t.task_id for t in sut_tasks]
            ref_ids = [t.task_id for t in ref_tasks]
            if sut_ids != ref_ids:
                raise self._fail("INV-7", f"list_tasks gives {sut_ids}, the reference {ref_ids}")
            histories = []
            for s_rec, r_rec in zip(sut_tasks, ref_tasks, strict=True):
                if s_rec != r_rec:
                    raise self._fail(
                        _classify_record(s_rec, r_rec),
                        f"stored {s_rec.task_id!r} differs from the reference:"
                        f" {record_difference(s_rec, r_rec)}",
                    )
                if s_rec.task_id == self.touched:
                    got = self.sut.get(s_rec.task_id)
                    if got != s_rec:
                        raise self._fail("INV-7", f"get({s_rec.task_id!r}) differs from list_tasks")
                s_hist = self.sut.history(s_rec.task_id)
                histories.append(s_hist)
                r_hist = self.ref.history(r_rec.task_id)
                if s_hist != r_hist:
                    raise self._fail(
                        "INV-7",
                        f"the history of {s_rec.task_id!r} differs from the reference's"
                        f" ({len(s_hist)} vs {len(r_hist)} entries;"
                        f" events {[e.event for e in s_hist]} vs {[e.event for e in r_hist]})",
                    )
            now = from_us(self.now)
            s_stale = [t.task_id for t in self.sut.list_stale(now=now)]
            r_stale = [t.task_id for t in self.ref.list_stale(now=now)]
            if s_stale != r_stale:
                terminal = [t for t in s_stale if t not in r_stale and self.ref.get(t) is not None]
                ended = [t for t in terminal if (r := self.ref.get(t)) and r.is_terminal]
                raise self._fail(
                    "INV-3" if ended else "INV-1",
                    f"list_stale(now) gives {s_stale}, the reference {r_stale}",
                )
            counts = self.sut.counts()
            if counts != self.ref.counts():
                raise self._fail("INV-12", f"counts {counts} differ from {self.ref.counts()}")
            s_stats, r_stats = self.sut.queue_stats(now=now), self.ref.queue_stats(now=now)
            if s_stats != r_stats:
                raise self._fail(
                    "INV-12", f"queue_stats(now) gives {s_stats}, the reference {r_stats}"
                )
            self.sut_state = (sut_tasks, histories, counts)
            # Where records change most: the leased states, and the touched task's queue.
            touched = self.ref.get(self.touched) if self.touched else None
            self._same_listing({"state": LEASE_STATES, "limit": 2})
            if touched is not None:
                self._same_listing({"state": list(LEASE_STATES), "queue": touched.queue})
            if len(ref_ids) >= 2:
                s_page = [t.task_id for t in self.sut.list_tasks(after=ref_ids[0], limit=2)]
                if s_page != ref_ids[1:3]:
                    raise self._fail("INV-12", f"the page after {ref_ids[0]!r} is {s_page}")
                s_newest = [t.task_id for t in self.sut.list_tasks(newest_first=True, limit=2)]
                if s_newest != ref_ids[::-1][:2]:
                    raise self._fail(
                        "INV-12", f"the newest-first page is {s_newest}, not {ref_ids[::-1][:2]}"
                    )

        def _same_listing(self, kwargs: dict[str, Any], *, count: bool = False) -> None:
            """list_tasks(**kwargs) (and counts of its queue) on both stores agree (INV-12)."""
            s_ids = [t.task_id for t in self.sut.list_tasks(**kwargs)]
            r_ids = [t.task_id for t in self.ref.list_tasks(**kwargs)]
            if s_ids != r_ids:
                call = describe("list_tasks", (), kwargs)
                raise self._fail("INV-12", f"{call} gives {s_ids}, the reference {r_ids}")
            queue = kwargs.get("queue")
            if count and queue is not None:
                s_counts, r_counts = self.sut.counts(queue=queue), self.ref.counts(queue=queue)
                if s_counts != r_counts:
                    raise self._fail(
                        "INV-12", f"counts(queue={queue!r}) gives {s_counts}, not {r_counts}"
                    )

        def _final_checks(self) -> None:
            self.steps.append("(end of run: replaying every history)")
            for rec in self.sut.list_tasks(limit=10_000):
                entries = self.sut.history(rec.task_id)
                try:
                    replayed = core.replay(entries)
                except Exception as exc:  # AssertionError, or the event refused on replay
                    raise self._fail("INV-7", f"the history of {rec.task_id!r}: {exc}") from None
                if replayed != rec:
                    raise self._fail(
                        "INV-7",
                        f"replaying {rec.task_id!r} gives a different record:"
                        f" {record_difference(replayed, rec)}",
                    )

        def _boundaries(self) -> list[int]:
            points: set[int] = set()
            for rec in self.ref.list_tasks(limit=10_000):
                if rec.is_terminal:
                    continue
                marks = [rec.available_us]
                if rec.lease is not None:
                    marks.append(rec.lease.expires_us)
                if rec.deadline_us is not None:
                    marks.append(rec.deadline_us)
                for mark in marks:
                    points.update(p for p in (mark - 1, mark, mark + 1) if p > self.now)
            return sorted(points)

        # ------------------------------------------------------------ rules

        def _do(
            self,
            method: str,
            args: tuple[Any, ...],
            chosen: Chosen,
            *,
            naive: bool = False,
            **extra: Any,
        ) -> Any:
            """:meth:`_call` with the store arguments of the event ``method`` applies."""
            kwargs = {**store_args(EVENT_OF_METHOD[method], chosen), **extra}
            return self._call(method, args, kwargs, naive=naive)

        def _holder(
            self,
            event: str,
            task_id: str,
            owner: str,
            token: int,
            ttl: int,
            index: int,
            delay: int,
            why: str | None = None,
        ) -> None:
            late = Compensation("undo", f"{task_id}-late")
            chosen = Chosen(
                owner, token, ttl, delay, late, index, reason="boom", release_reason=why
            )
            self._do(event, (task_id,), chosen)

        def _chosen(self, task_id: str, spec: CreateSpec) -> Chosen:
            return Chosen(
                compensations=tuple(
                    Compensation("undo", f"{task_id}-{i}") for i in range(spec.compensations)
                ),
                max_attempts=spec.max_attempts,
                deadline_us=None if spec.deadline is None else self.now + spec.deadline,
                available_us=None if spec.delay is None else self.now + spec.delay,
                saga_id="saga" if spec.saga else None,
                queue=spec.queue,
                priority=spec.priority,
                requeued_from=self.ids[0] if spec.linked and self.ids else None,
            )

        def _create(self, spec: CreateSpec) -> str:
            task_id = f"t{len(self.ids)}"
            chosen = self._chosen(task_id, spec)
            self.ids.append(task_id)
            self._do("create", (task_id,), chosen)
            return task_id

        @initialize(target=tasks, spec=CREATE_SPECS)
        def first_task(self, spec: CreateSpec) -> Any:
            return self._create(spec)

        @precondition(lambda self: len(self.ids) < MAX_TASKS)
        @rule(target=tasks, spec=CREATE_SPECS, again=st.integers(0, 9))
        def create(self, spec: CreateSpec, again: int) -> Any:
            if again == 0:  # now and then, a duplicate id
                self._call("create", (self.ids[-1],), {})
                return multiple()
            return self._create(spec)

        @precondition(lambda self: len(self.ids) < MAX_TASKS)
        @rule(
            target=tasks,
            specs=st.lists(CREATE_SPECS, min_size=1, max_size=3),
            duplicate=st.sampled_from([None, None, "stored", "given twice"]),
        )
        def create_many(self, specs: list[CreateSpec], duplicate: str | None) -> Any:
            """Several tasks in one call; now and then one of them with an id already
            stored or given twice (then none may be stored).
            """
            first = len(self.ids)
            specs = specs[: MAX_TASKS - first]
            new_ids = [f"t{first + i}" for i in range(len(specs))]
            items = [new_task(i, self._chosen(i, sp)) for i, sp in zip(new_ids, specs, strict=True)]
            if duplicate == "stored":
                items.insert(len(items) // 2, NewTask(self.ids[-1]))
            elif duplicate == "given twice":
                items.append(replace(items[0], priority=1))
            if self._call("create_many", (items,), {}) is None:
                return multiple()
            self.ids += new_ids
            return multiple(*new_ids)

        @rule(
            target=leases,
            task_id=tasks,
            worker=st.sampled_from(WORKERS),
            ttl=st.sampled_from(TTLS),
        )
        def acquire(self, task_id: str, worker: str, ttl: int) -> Any:
            rec = self._do("acquire", (task_id,), Chosen(worker, ttl_us=ttl))
            return multiple() if rec is None else Cred(task_id, worker, rec.token)

        @rule(
            target=leases,
            worker=st.sampled_from(WORKERS),
            ttl=st.sampled_from(TTLS),
            queues=CLAIM_QUEUES,
        )
        def claim_next(self, worker: str, ttl: int, queues: Queues) -> Any:
            """The first leaseable task of ``queues`` by priority, then creation order."""
            named: dict[str, Any] = {} if queues is None else {"queues": queues}
            rec = self._do("claim_next", (), Chosen(worker, ttl_us=ttl), **named)
            return multiple() if rec is None else Cred(rec.task_id, worker, rec.token)

        @rule(
            worker=st.sampled_from(WORKERS),
            ttl=st.sampled_from(TTLS),
            limit=st.integers(1, 3),
            queues=CLAIM_QUEUES,
        )
        def claim_batch(self, worker: str, ttl: int, limit: int, queues: Queues) -> None:
            """Several tasks at once: what as many claim_next calls would take."""
            named: dict[str, Any] = {} if queues is None else {"queues": queues}
            self._do("claim_batch", (), Chosen(worker, ttl_us=ttl), limit=limit, **named)

        @rule(
            states=st.sets(st.sampled_from(list(TaskState)), max_size=3),
            queue=st.sampled_from([None, *QUEUES]),
            saga=st.booleans(),
            limit=st.integers(1, 3),
            paged=st.booleans(),
            newest=st.booleans(),
        )
        def listing(
            self,
            states: set[TaskState],
            queue: str | None,
            saga: bool,
            limit: int,
            paged: bool,
            newest: bool,
        ) -> None:
            """list_tasks filtered by states, queue and saga, paged, oldest or newest
            first; counts of the queue.
            """
            kwargs: dict[str, Any] = {"limit": limit}
            if newest:
                kwargs["newest_first"] = True
            if states:
                kwargs["state"] = states if len(states) > 1 else next(iter(states))
            if queue is not None:
                kwargs["queue"] = queue
            if saga:
                kwargs["saga_id"] = "saga"
            if paged and self.ids:
                # Newest first, the page after the newest task (the reference's).
                newest_ref = self.ref.list_tasks(limit=1, newest_first=True) if newest else []
                kwargs["after"] = newest_ref[0].task_id if newest_ref else self.ids[0]
            self.steps.append(describe("list_tasks", (), kwargs))
            self._same_listing(kwargs, count=True)

        @precondition(lambda self: bool(self._leased()))
        @rule(data=st.data(), stale=st.integers(0, 3))
        def complete_many(self, data: st.DataObject, stale: int) -> None:
            """A holder completes several of its tasks at once; now and then one of them
            under an old token (then none may complete).
            """
            leased = self._leased()
            owner = data.draw(
                st.sampled_from(sorted({t.lease.owner for t in leased if t.lease})), label="owner"
            )
            mine = [t for t in leased if t.lease is not None and t.lease.owner == owner]
            chosen = data.draw(
                st.lists(
                    st.sampled_from(mine), min_size=1, max_size=3, unique_by=lambda t: t.task_id
                ),
                label="tasks",
            )
            self.batch = [(t.task_id, t.token) for t in chosen]
            if stale == 0:
                task_id, token = self.batch[-1]
                self.batch[-1] = (task_id, token - 1)
            self._call("complete_many", (list(self.batch),), {"owner": owner})

        @precondition(lambda self: bool(self._leased()))
        @rule(
            data=st.data(),
            event=st.sampled_from(("heartbeat", "heartbeat", *HOLDER_EVENTS)),
            ttl=st.sampled_from(TTLS),
            index=st.integers(0, 2),
            delay=st.sampled_from([0, SEC]),
            why=st.sampled_from([None, "retry 1 of 3: boom"]),
        )
        def holder(
            self, data: st.DataObject, event: str, ttl: int, index: int, delay: int, why: str | None
        ) -> None:
            """The current holder of a lease (a live one if there is) makes a holder call
            (a release, now and then, with a reason).
            """
            leased = self._leased()
            live = [t for t in leased if t.lease is not None and self.now < t.lease.expires_us]
            task = data.draw(st.sampled_from(live or leased), label="task")
            assert task.lease is not None
            owner, token = task.lease.owner, task.token
            self._holder(event, task.task_id, owner, token, ttl, index, delay, why)

        @rule(
            cred=leases,
            event=st.sampled_from(HOLDER_EVENTS),
            who=st.sampled_from(["zombie", "impostor", "next-token"]),
            other=st.sampled_from(WORKERS),
            ttl=st.sampled_from(TTLS),
            index=st.integers(0, 2),
            delay=st.sampled_from([0, SEC]),
        )
        def zombie_or_impostor(
            self, cred: Cred, event: str, who: str, other: str, ttl: int, index: int, delay: int
        ) -> None:
            """An old lease reused as it was (zombie), the current token under another
            owner id (impostor), or the old owner with the next token.
            """
            owner, token = cred.owner, cred.token
            current = self.ref.get(cred.task_id)
            if who == "impostor" and current is not None:
                token = current.token
                holder = current.lease.owner if current.lease is not None else cred.owner
                owner = _impostor(other, holder)
            elif who == "next-token":
                token += 1
            self._holder(event, cred.task_id, owner, token, ttl, index, delay)

        @precondition(lambda self: bool(self._leased()))
        @rule(
            data=st.data(),
            offset=st.sampled_from([-1, 0, 1]),
            action=st.sampled_from(
                ["acquire", "claim_next", "heartbeat", "complete", "impostor", "reap"]
            ),
            worker=st.sampled_from(WORKERS),
        )
        def at_expiry(self, data: st.DataObject, offset: int, action: str, worker: str) -> None:
            """Jump onto a lease's expiry (-1 µs, 0, +1 µs) and act on it at once: another
            worker takes over, the holder writes, or an impostor with the current token does.
            """
            leased = [
                t
                for t in self._leased()
                if t.lease is not None and t.lease.expires_us + offset >= self.now
            ]
            if not leased:
                return
            task = data.draw(st.sampled_from(leased), label="task")
            assert task.lease is not None
            self.now = task.lease.expires_us + offset
            self._clock_moved()
            if action == "reap":
                self._call("reap", (), {})
            elif action == "acquire":
                self._do("acquire", (task.task_id,), Chosen(worker, ttl_us=TTLS[1]))
            elif action == "claim_next":
                self._do("claim_next", (), Chosen(worker, ttl_us=TTLS[1]))
            else:
                owner = task.lease.owner
                if action == "impostor":
                    owner = _impostor(worker, owner)
                event = "complete" if action == "complete" else "heartbeat"
                if event == "complete" and task.state is TaskState.COMPENSATING:
                    event = "release"
                self._holder(event, task.task_id, owner, task.token, TTLS[1], 0, 0)

        @precondition(lambda self: bool(self._leased()))
        @rule(
            data=st.data(),
            event=st.sampled_from(HOLDER_EVENTS),
            other=st.sampled_from(WORKERS),
            index=st.integers(0, 2),
        )
        def impostor(self, data: st.DataObject, event: str, other: str, index: int) -> None:
            """The current token of a leased task under another owner id."""
            leased = self._leased()
            task = data.draw(st.sampled_from(leased), label="task")
            assert task.lease is not None
            owner = _impostor(other, task.lease.owner)
            self._holder(event, task.task_id, owner, task.token, TTLS[1], index, 0)

        # One call of each kind that needs no lease: a worker's, an operator's note and decision.
        @rule(task_id=tasks, event=st.sampled_from(["acquire", "annotate", "quarantine"]))
        def naive_now(self, task_id: str, event: str) -> None:
            """A naive datetime as ``now`` must be refused (InvalidInputError)."""
            chosen = Chosen("w0", ttl_us=5 * SEC, reason="naive", by="ops", text="naive")
            self._do(event, (task_id,), chosen, naive=True)

        @rule(task_id=tasks, action=st.sampled_from(["annotate"] * 4 + ["quarantine"]))
        def operator(self, task_id: str, action: str) -> None:
            self._do(action, (task_id,), Chosen(reason="poison", by="ops", text="seen"))

        @rule(
            data=st.data(),
            delta=st.sampled_from([0, 1, SEC, 3 * SEC, 10 * SEC]),
            reap=st.sampled_from([None, None, "all", "one"]),
        )
        def clock(self, data: st.DataObject, delta: int, reap: str | None) -> None:
            """Advance by ``delta``, or (0) jump onto a boundary -1 µs, 0 or +1 µs; then
            maybe run the reaper (all, or ``limit=1``).
            """
            points = self._boundaries() if delta == 0 else []
            if points:
                self.now = data.draw(st.sampled_from(points), label="boundary")
            else:
                self.now += max(delta, 1)
            self._clock_moved()
            if reap is None:
                self._check_stores()
            else:
                self._call("reap", (), {} if reap == "all" else {"limit": 1})

        def _clock_moved(self) -> None:
            self.steps.append(f"clock -> {describe('at', (), {'now': from_us(self.now)})}")

        def _leased(self) -> list[TaskSaga]:
            return [t for t in self.ref.list_tasks(limit=100) if t.lease is not None]

    return StoreAgreesWithReference


def run_stateful(
    factory: StoreFactory, *, examples: int, seed: int, steps: int = 40, shrink: bool = True
) -> None:
    """Run the state machine; raise :class:`ConformanceFailure` (with the minimal
    sequence of steps Hypothesis found) on the first broken rule.
    """
    machine = make_machine(factory)
    # Hypothesis's settings, one keyword each (cli/_app.py's SimulationSettings call only
    # has the same shape).
    test = get_state_machine_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=False,
            print_blob=False,
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
            phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )
    hypothesis_seed(seed)(test)
    test()
