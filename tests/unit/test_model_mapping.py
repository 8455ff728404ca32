"""specs/model-mapping.md is kept true: it is the table generated from the code, every
store method is mapped to a model action or is a read, every action and method it
names exists, and a new store method without a model action is reported.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from sagalease import core
from sagalease.lifecycle import EVENTS
from sagalease.store import EVENT_OF_METHOD, READERS, SagaStore
from sagalease.verification import checker, many
from sagalease.verification.many import ManyModel, TaskSpec

SPEC = Path(__file__).resolve().parents[2] / "specs" / "model-mapping.md"

TINY = ManyModel(
    name="tiny",
    tasks=(
        TaskSpec(queue="a", max_attempts=1, deadline=3, compensations=1),
        TaskSpec(queue="b", priority=5, max_attempts=1),
    ),
    workers=1,
    ttl=2,
    batch=2,
    claim_queues=(None,),
    reap_limit=False,
    quarantine=True,
)
"""A multi-task model small enough for a unit test (under 2,000 states) that offers
every action of :data:`many.ACTIONS`."""


def test_committed_table_is_the_generated_one() -> None:
    """specs/model-mapping.md reads exactly as ``many.mapping_table()`` generates it
    (regenerate it with the command the file gives when a model or the store changes).
    """
    assert SPEC.read_text(encoding="utf-8") == many.mapping_table()


def test_every_store_method_is_mapped_or_a_read() -> None:
    """Each public method of the SagaStore protocol is a model action's or a read,
    and the table has no section of unmapped methods.
    """
    methods = many.store_methods()
    assert {"claim_next", "complete_many", "reap", "get", "close"} <= set(methods)
    assert many.unmapped_methods() == []
    mapped = {m for row in many.mapping_rows() for m in row[2]}
    assert set(methods) == mapped | (READERS & set(methods))
    assert "without a model action" not in many.mapping_table()


def test_a_new_store_method_without_a_model_action_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A method added to the protocol, neither a read nor a model action, is reported
    as unmapped and the generated table differs from the committed one.
    """

    def purge(self: SagaStore, *, queue: str) -> int:
        """Delete the ended tasks of a queue (a hypothetical new method)."""
        raise NotImplementedError

    monkeypatch.setattr(SagaStore, "purge", purge, raising=False)
    assert many.unmapped_methods() == ["purge"]
    assert "- `purge`" in many.mapping_table()
    assert SPEC.read_text(encoding="utf-8") != many.mapping_table()


def test_every_method_named_exists_and_applies_its_event() -> None:
    """Each store method in the table is a SagaStore method; a mutating one applies
    the event of the action (claims: acquire; complete_many: complete).
    """
    methods = set(many.store_methods())
    for _model, action, named, _calls in many.mapping_rows():
        for method in named:
            assert method in methods, (action, method)
            assert method in EVENT_OF_METHOD, method
        if action in EVENTS:
            assert all(EVENT_OF_METHOD[m] == action for m in named), action


def test_one_task_actions_exist_in_checker() -> None:
    """The one-task checker's actions are the chart's events (each has a core
    function, and the checker's coverage property has it taken) and its moves.
    """
    handlers = core.handlers(contracts=False)
    rows = [row for row in many.mapping_rows() if row[0].startswith("one task")]
    actions = [action for _m, action, _n, _c in rows]
    assert actions == ["init", *EVENTS, *many.ONE_TASK_MOVES]
    assert all(event in handlers for event in EVENTS)
    source = inspect.getsource(checker)
    assert any(p.startswith("coverage: every declared transition") for p in checker.PROPERTIES)
    for move in many.ONE_TASK_MOVES:
        assert f'"{move}"' in source, move


def test_many_actions_are_the_ones_the_model_takes() -> None:
    """Every action of many.ACTIONS is taken in a small multi-task run, and the run
    takes no other (the table names exactly what the model does).
    """
    result = many.check_many(TINY)
    assert result.ok, (result.violation, result.uncovered)
    assert set(result.taken) == set(many.ACTIONS)
