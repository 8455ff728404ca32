"""The committed spec is what the code generates, and its links point at real tests."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from statemachine.io import load

from sagalease.conformance import checks
from sagalease.lifecycle import EFFECTS, GUARDS, Lifecycle
from sagalease.verification.invariants import INVARIANTS
from sagalease.verification.spec import render_json, render_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_committed_spec_matches_generated() -> None:
    """specs/lifecycle.md equals `sagalease spec` (regenerate: `uv run sagalease spec`)."""
    committed = (ROOT / "specs" / "lifecycle.md").read_text(encoding="utf-8")
    assert committed == render_markdown()


def _defined(path: str, node: str) -> bool:
    """Whether the pytest node ``function`` or ``Class::method`` (parameters stripped)
    is defined at the top of the file ``path``, or of that class.
    """
    *classes, function = node.split("::")
    scope = ast.parse((ROOT / path).read_text(encoding="utf-8")).body
    for name in classes:
        found = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == name]
        if not found:
            return False
        scope = found[0].body
    return any(isinstance(n, ast.FunctionDef) and n.name == function for n in scope)


def test_invariants_link_to_existing_tests() -> None:
    """Every INV-n names tests that exist (``path::function`` or ``path::Class::method``,
    optionally with a parameter id whose shipped conformance checks exist), and the ids
    are INV-1.. in order.
    """
    assert [inv.id for inv in INVARIANTS] == [f"INV-{i}" for i in range(1, len(INVARIANTS) + 1)]
    check_names = {c.name for c in checks()}
    for inv in INVARIANTS:
        assert inv.checked_by, inv.id
        for ref in inv.checked_by:
            path, _, node = ref.partition("::")
            node, bracket, param = node.partition("[")
            if bracket:
                assert param.endswith("]"), f"{inv.id}: {ref} has an unclosed parameter id"
                unknown = [p for p in param[:-1].split("-") if "/" in p and p not in check_names]
                assert not unknown, f"{inv.id}: {ref} names no shipped check {unknown}"
            assert _defined(path, node), f"{inv.id}: {ref} does not exist"


def test_committed_json_matches_generated() -> None:
    """specs/lifecycle.json equals `sagalease spec --json`."""
    committed = (ROOT / "specs" / "lifecycle.json").read_text(encoding="utf-8")
    assert committed == render_json()


def _shape(chart: object) -> list[tuple[str, bool, bool, list[tuple[str, str, list[str]]]]]:
    return [
        (
            s.id,
            bool(s.initial),
            bool(s.final),
            [
                (
                    " ".join(str(e) for e in t.events),
                    t.targets[0].id,
                    [str(v) for v in t.validators] + [str(c) for c in t.cond],
                )
                for t in s.transitions
            ],
        )
        for s in chart.states  # type: ignore[attr-defined]
    ]


def test_json_statechart_loads_back_equal_to_the_declaration() -> None:
    """python-statemachine's JSON loader rebuilds the declared states, events, targets, guards."""
    doc = json.loads((ROOT / "specs" / "lifecycle.json").read_text(encoding="utf-8"))
    loaded = load(json.dumps(doc["statechart"]), format="json")
    assert _shape(loaded) == _shape(Lifecycle)
    names = {n for _, _, _, ts in _shape(Lifecycle) for _, _, conds in ts for n in conds}
    assert names == set(doc["guards"])


def test_the_spec_prints_every_declared_effect_and_guard_sql() -> None:
    """Each hot event's section lists every column its declared effect assigns, as
    the dialect-free reading of the expression the SQL stores render, and each
    guard with SQL shows it; the JSON carries the same effects.
    """
    text = render_markdown()
    doc = json.loads(render_json())
    for event, effect in EFFECTS.items():
        section = text.split(f"### {event}\n", 1)[1].split("\n### ", 1)[0]
        for column, value in effect.columns.items():
            assert f"| `{column}` | `{value.text()}` |" in section, (event, column)
        assert f"| history `reason` | `{effect.reason.text()}` |" in section
        assert doc["effects"][event]["columns"] == {c: v.text() for c, v in effect.columns.items()}
    for guard in GUARDS.values():
        if guard.sql is not None:
            assert f"`{guard.sql.text()}` |" in text, guard.name
            assert doc["guards"][guard.name]["sql"] == guard.sql.text()
