"""The multi-task model checker (`sagalease.verification.many`): the CI model passes
with its recorded figures, and every property of :data:`many.PROPERTIES` is seen
failing, by name, on a deliberately broken variant (a core event, the claim order,
the claim walk, complete_many or the reaper replaced within the test, or a model
that cannot end or cannot cover its actions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import T0
from sagalease import core
from sagalease.clock import to_us
from sagalease.errors import LeaseConflictError, SagaLeaseError
from sagalease.records import NewTask, TaskSaga, TaskState
from sagalease.store import SagaStore
from sagalease.stores import _rows, _sql
from sagalease.verification import many
from sagalease.verification.many import ManyResult, check_many, load_many

Handler = Callable[..., core.Step]

SMALL: dict[str, Any] = {"workers": 2, "incarnations": 1}
"""Two workers with distinct ids: a few thousand states, for the runs that must
explore everything (liveness, coverage)."""


def _break(monkeypatch: pytest.MonkeyPatch, event: str, make: Callable[[Handler], Handler]) -> None:
    """Replace the core's ``event`` (as :func:`core.handlers` hands it out) by
    ``make(original)``.
    """
    real = core.handlers

    def handlers(*, contracts: bool) -> dict[str, Handler]:
        table = dict(real(contracts=contracts))
        table[event] = make(table[event])
        return table

    monkeypatch.setattr(core, "handlers", handlers)


def _caught(result: ManyResult, prop: str) -> None:
    """``result`` reports ``prop`` by name, with a trace from the initial state."""
    print(f"\n{prop}: {result.violation or result.uncovered}")  # shown with pytest -s
    assert prop in many.PROPERTIES
    assert result.property_name == prop, (result.violation, result.uncovered)
    assert not result.ok
    if prop != "coverage":
        assert result.violation is not None
        assert result.violation.startswith(f"{prop}: ")
        assert result.trace
        assert result.trace[0].startswith("create")


# ------------------------------------------------------------------ the passing run


def test_ci_model_passes_with_its_recorded_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled many model (2 tasks, 3 worker processes) passes every property,
    takes every action (a complete_many refused too), and its figures are the
    recorded ones (a difference would be drift, a failure).
    """
    model = load_many("many")
    assert model.figures is not None
    assert len(model.tasks) == 2
    result = check_many(model)
    with capsys.disabled():
        print(f"\n{result.summary()}")
    assert result.violation is None, result.trace
    assert result.uncovered == []
    assert result.drift == {}
    assert result.ok
    assert result.verdict == "pass"
    assert result.figures == model.figures
    assert set(result.taken) == set(many.ACTIONS) - {"compensation_applied", "quarantine"}


def test_bundled_many_models_parse() -> None:
    """Each file of models/many loads into a model of 2 or 3 tasks expected to pass."""
    names = many.many_model_names()
    assert {"many", "many3"} <= set(names)
    for name in names:
        model = load_many(name)
        assert 2 <= len(model.tasks) <= 3, name
        assert model.expect == "pass", name


def test_overrides_drop_the_recorded_figures() -> None:
    """A variant of a model is not compared with the figures recorded for the model."""
    assert load_many("many", workers=2).figures is None
    assert load_many("many").figures is not None


# ------------------------------------------------------------------ mutants


def test_one_holder_catches_a_claim_of_a_live_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquire that ignores a live lease (takes it over as if expired) lets a
    second worker hold the task: one-holder.
    """

    def make(acquire: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            lease = task.lease
            if lease is not None:
                task = dataclasses.replace(
                    task, lease=dataclasses.replace(lease, expires_us=kw["now_us"])
                )
            return acquire(task, **kw)

        return broken

    _break(monkeypatch, "acquire", make)
    _caught(check_many(load_many("many")), "one-holder")


def test_one_holder_catches_the_same_token_granted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A takeover of an expired lease that re-grants its token: the old holder (paused
    past its lease) and the new one both believe they hold it: one-holder.
    """

    def make(acquire: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            step = acquire(task, **kw)
            if task.lease is None or step.task.lease is None:
                return step
            lease = dataclasses.replace(step.task.lease, token=task.token)
            return core.Step(
                dataclasses.replace(step.task, token=task.token, lease=lease), step.entry
            )

        return broken

    _break(monkeypatch, "acquire", make)
    result = check_many(load_many("many"))
    _caught(result, "one-holder")
    assert "believe they hold" in (result.violation or "")


def test_single_grant_catches_a_release_rewinding_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release that steps the token back (the next claim would grant a token a
    second time): single-grant.
    """

    def make(release: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            step = release(task, **kw)
            return core.Step(dataclasses.replace(step.task, token=step.task.token - 1), step.entry)

        return broken

    _break(monkeypatch, "release", make)
    _caught(check_many(load_many("many")), "single-grant")


def test_well_formed_catches_attempts_past_the_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquire that counts attempts past max_attempts writes a record that is not
    well formed: well-formed.
    """

    def make(acquire: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            step = acquire(task, **kw)
            new = dataclasses.replace(step.task, attempts=step.task.max_attempts + 1)
            return core.Step(new, step.entry)

        return broken

    _break(monkeypatch, "acquire", make)
    _caught(check_many(load_many("many")), "well-formed")


def test_terminal_catches_a_completed_task_completed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A complete that accepts a repeat on a completed task (a zombie's late
    complete rewrites its reason): terminal.
    """

    def make(complete: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            if task.state is TaskState.COMPLETED:
                step = core.annotate(task, text="again", by="zombie", now_us=kw["now_us"])
                again = dataclasses.replace(step.task, notes=task.notes, terminal_reason="again")
                return core.Step(again, step.entry)
            return complete(task, **kw)

        return broken

    _break(monkeypatch, "complete", make)
    _caught(check_many(load_many("many")), "terminal")


def test_declared_catches_a_fail_back_to_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail that puts the task back to pending (a well-formed record, but an edge
    the chart does not declare): declared.
    """

    def make(fail: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            step = fail(task, **kw)
            back = dataclasses.replace(
                step.task, state=TaskState.PENDING, lease=None, terminal_reason=None
            )
            return core.Step(back, step.entry)

        return broken

    _break(monkeypatch, "fail", make)
    _caught(check_many(load_many("many")), "declared")


def test_fencing_catches_a_complete_ignoring_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete that checks the owner but not the token: the paused old process of a
    restarted worker completes the task its new self holds: fencing.
    """

    def make(complete: Handler) -> Handler:
        def broken(task: TaskSaga, **kw: Any) -> core.Step:
            return complete(task, **{**kw, "token": task.token})

        return broken

    _break(monkeypatch, "complete", make)
    result = check_many(load_many("many"))
    _caught(result, "fencing")


def test_claim_order_catches_a_claim_ignoring_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates sorted by creation only (``ORDER BY seq``): the older, lower
    priority task is claimed first: claim-order.
    """
    monkeypatch.setattr(_sql, "CLAIM_ORDER", "seq")
    result = check_many(load_many("many"))
    _caught(result, "claim-order")
    assert "priority 5" in (result.violation or "")


def test_claim_order_catches_a_walk_stopping_at_a_refused_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim walk that gives up at the first candidate the core refuses (instead of
    skipping it) finds nothing although a later task is leaseable: claim-order.
    """

    def stopping(
        fetch: Callable[[_rows.ClaimCursor, int], Sequence[_rows.Row]],
        acquire: Callable[[TaskSaga], core.Step],
        limit: int,
        more: int,
    ) -> list[tuple[TaskSaga, core.Step]]:
        chosen: list[tuple[TaskSaga, core.Step]] = []
        for row in fetch(None, 1000):
            task = _rows.decode_task(row)
            try:
                chosen.append((task, acquire(task)))
            except SagaLeaseError:
                break
            if len(chosen) == limit:
                break
        return chosen

    monkeypatch.setattr(_rows, "choose_claims", stopping)
    _caught(check_many(load_many("many")), "claim-order")


def test_batch_atomic_catches_a_complete_many_applying_part_of_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A complete_many that completes the tasks it can and skips a stale token:
    batch-atomic.
    """

    def partial(
        complete: Handler,
        tasks: Sequence[TaskSaga],
        items: Iterable[tuple[int, int]],
        *,
        owner: str,
        now_us: int,
    ) -> list[tuple[int, core.Step]]:
        done = []
        for i, token in items:
            try:
                done.append((i, complete(tasks[i], owner=owner, token=token, now_us=now_us)))
            except SagaLeaseError:
                continue
        if not done:
            raise LeaseConflictError("nothing completed")
        return done

    monkeypatch.setattr(many, "complete_many_steps", partial)
    result = check_many(load_many("many"))
    _caught(result, "batch-atomic")
    assert "complete_many[" in result.trace[-1]


def test_reaper_catches_a_reap_dropping_a_live_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper that drops every lease, live ones included: reaper."""
    needs = core.needs_reap

    def make(reap: Handler) -> Handler:
        def broken(task: TaskSaga, *, now_us: int) -> core.Step:
            lease = task.lease
            if lease is not None and now_us < lease.expires_us:
                early = dataclasses.replace(lease, expires_us=now_us)
                return reap(dataclasses.replace(task, lease=early), now_us=now_us)
            return reap(task, now_us=now_us)

        return broken

    monkeypatch.setattr(
        core, "needs_reap", lambda task, now_us: task.lease is not None or needs(task, now_us)
    )
    _break(monkeypatch, "reap", make)
    result = check_many(load_many("many"))
    _caught(result, "reaper")
    assert "live lease" in (result.violation or "")


def test_reaper_catches_a_pass_that_stops_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper pass without a limit that reaps one task only: reaper."""
    real = many.reap_steps

    def one_only(
        reap: Handler, tasks: Sequence[TaskSaga], *, now_us: int, limit: int | None, **kw: Any
    ) -> list[tuple[int, core.Step]]:
        return real(reap, tasks, now_us=now_us, limit=1, **kw)

    monkeypatch.setattr(many, "reap_steps", one_only)
    result = check_many(load_many("many"))
    _caught(result, "reaper")
    assert "needing reaping" in (result.violation or "")


def test_liveness_catches_endless_heartbeats() -> None:
    """Unbounded heartbeats on a task without a deadline: a run that never ends."""
    result = check_many(load_many("many", heartbeats=-1, **SMALL))
    _caught(result, "liveness")
    assert "forever" in (result.violation or "")
    assert any("heartbeat" in line for line in result.trace)


def test_liveness_catches_a_reaper_that_never_acts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper that never finds work leaves a task out of attempts pending forever."""
    monkeypatch.setattr(core, "needs_reap", lambda task, now_us: False)
    _caught(check_many(load_many("many", **SMALL)), "liveness")


def test_coverage_catches_a_model_without_batches() -> None:
    """Without claim_batch no worker holds two tasks: complete_many is never taken."""
    result = check_many(load_many("many", batch=1, **SMALL))
    _caught(result, "coverage")
    assert "complete_many" in result.uncovered


def test_every_property_has_a_mutant_here() -> None:
    """Each property of the checker is pinned by a test of this module."""
    source = Path(__file__).read_text(encoding="utf-8")
    for prop in many.PROPERTIES:
        assert f'"{prop}")' in source, prop


# ------------------------------------------------------------------ the model is the stores


def test_model_actions_are_what_the_stores_do(store: SagaStore) -> None:
    """On every backend, along random runs over three tasks of two queues and
    priorities (claims of 1..3 tasks over each queue list, complete_many with stale
    tokens, reaps with and without a limit, the clock moving on), the model's claim,
    complete_many and reap (``many.claim_steps``, ``complete_many_steps``,
    ``reap_steps``, from the stored records) predict exactly the tasks the store's
    call changes, the records it returns, and whether it refuses.
    """
    h = core.handlers(contracts=False)
    ttl = timedelta(seconds=2)
    specs = [("a", 0), ("b", 5), ("a", 5)]
    for seed in range(8):
        rng = random.Random(seed)
        ids = [f"s{seed}-t{i}" for i in range(len(specs))]
        now = T0
        store.create_many(
            [
                NewTask(ids[i], queue=q, priority=p, max_attempts=3)
                for i, (q, p) in enumerate(specs)
            ],
            now=now,
        )
        held: dict[str, dict[str, int]] = {"w0": {}, "w1": {}}  # owner -> task id -> token
        for _ in range(40):
            tasks = [store.get(task_id) for task_id in ids]
            records = [t for t in tasks if t is not None]
            assert len(records) == len(ids)
            now_us = to_us(now, "now")
            move = rng.choice(["tick", "claim", "claim", "complete_many", "release", "reap"])
            owner = rng.choice(["w0", "w1"])
            if move == "tick":
                now += timedelta(seconds=1)
            elif move == "claim":
                limit = rng.randint(1, 3)
                queues = rng.choice([None, ("a",), ("b",), ("a", "b")])
                predicted = many.claim_steps(
                    h["acquire"],
                    records,
                    owner=owner,
                    ttl_us=2_000_000,
                    now_us=now_us,
                    limit=limit,
                    queues=queues,
                )
                if limit == 1:
                    one = store.claim_next(owner=owner, ttl=ttl, queues=queues, now=now)
                    got = [] if one is None else [one]
                else:
                    got = store.claim_batch(
                        owner=owner, ttl=ttl, limit=limit, queues=queues, now=now
                    )
                assert got == [step.task for _, step in predicted], (seed, move)
                for t in got:
                    held[owner][t.task_id] = t.token
            elif move == "complete_many":
                items = sorted(held[owner].items())
                if len(items) < 2:
                    continue
                index = {task_id: i for i, task_id in enumerate(ids)}
                pairs = [(index[task_id], token) for task_id, token in items]
                try:
                    expected: list[TaskSaga] | None = [
                        step.task
                        for _, step in many.complete_many_steps(
                            h["complete"], records, pairs, owner=owner, now_us=now_us
                        )
                    ]
                except SagaLeaseError:
                    expected = None
                try:
                    done: list[TaskSaga] | None = store.complete_many(items, owner=owner, now=now)
                except SagaLeaseError:
                    done = None
                assert done == expected, (seed, move)
                assert [store.get(task_id) for task_id in ids] == tasks or done is not None
                held[owner].clear()
            elif move == "release":  # frees a task for the next claims
                if held[owner]:
                    task_id, token = rng.choice(sorted(held[owner].items()))
                    del held[owner][task_id]
                    with contextlib.suppress(SagaLeaseError):
                        store.release(task_id, owner=owner, token=token, now=now)
            else:
                limit_ = rng.choice([None, 1])
                reaped = many.reap_steps(h["reap"], records, now_us=now_us, limit=limit_)
                assert store.reap(now=now, limit=limit_) == [s.task for _, s in reaped]
        for task_id in ids:  # the next run's claims see its own tasks only
            with contextlib.suppress(SagaLeaseError):
                store.quarantine(task_id, reason="next run", by="test", now=now)


def test_check_command_runs_the_many_task_models(tmp_path: Path) -> None:
    """`sagalease check many --workers 2` runs the multi-task checker (exit 0, PASS); a
    model file with [[tasks]] and unbounded heartbeats exits 1 naming the liveness
    violation and its trace; an option the model does not have is a usage error (2).
    """

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sagalease.cli", "check", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    ok = check("many", "--workers", "2")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "many: PASS" in ok.stdout
    source = (many._many_dir() / "many.toml").read_text(encoding="utf-8")
    broken = tmp_path / "endless.toml"
    broken.write_text(
        source.replace("heartbeats = 1", "heartbeats = -1").split("[figures]")[0],
        encoding="utf-8",
    )
    bad = check(str(broken), "--workers", "2")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "VIOLATION: liveness" in bad.stdout
    assert "shortest trace" in bad.stdout
    usage = check("many", "--deadline", "3")
    assert usage.returncode == 2
    assert "cannot load model 'many'" in usage.stderr
