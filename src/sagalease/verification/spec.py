"""Generate ``specs/lifecycle.md`` from the declaration (``sagalease spec``).

Nothing here is written by hand about transitions: states, events, targets and
guards are read from :data:`sagalease.lifecycle.CHART` (compiled from
:class:`~sagalease.lifecycle.Lifecycle`), the guards' SQL and the hot events'
effects from :data:`~sagalease.lifecycle.GUARDS` and
:data:`~sagalease.lifecycle.EFFECTS` (what the SQL stores render), the diagram
is python-statemachine's own Mermaid export of the same class, and the invariants come from
:data:`sagalease.verification.invariants.INVARIANTS`.
"""

from __future__ import annotations

import json
from typing import Any, Final

from sagalease.expr import Expr, param
from sagalease.lifecycle import (
    CHART,
    EFFECTS,
    EVENTS,
    GUARDS,
    STATE_DOCS,
    Lifecycle,
    move_effects,
)
from sagalease.records import TaskState
from sagalease.verification.invariants import INVARIANTS

__all__ = ["render_json", "render_markdown", "statechart_document"]

_PROSE = """\
## Choices this spec makes

- **Leases.** A lease is live while `now < expires_at`. RUNNING always holds a
  lease (it may have expired); PENDING never does; COMPENSATING may. Every
  holder call (heartbeat, release, register_compensation, complete, fail,
  compensation_applied, compensation_failed) must present the live lease's
  `(owner, token)`.
- **Fencing.** `token` grows by one at every successful acquisition and never
  decreases; an older token is refused even under the same owner id.
  Delivery is at-least-once: a paused worker may still *believe* it holds a
  lease, but no store write of it succeeds, and downstream systems that check
  the token can refuse it too.
- **Phases.** The deadline and `max_attempts` bound the forward phase
  (PENDING/RUNNING). Entering COMPENSATING (by `fail` or by the reaper past the
  deadline) drops the lease (the failing worker re-acquires under a new token
  to compensate), starts a fresh attempt count with the same `max_attempts`,
  and lifts the deadline.
- **Reaper.** `reap` is the only way time moves a task: an expired lease is
  dropped (counted in `expirations`; `available_at` moves to its expiry, so a
  claimer whose clock lags the reaper's cannot start an overlapping lease), a
  task out of attempts with no live lease is QUARANTINED, a forward-phase task
  past its deadline fails with reason "deadline exceeded".
- **create / annotate.** `create` enters the initial state PENDING. `annotate`
  is not a transition: it appends a note in any state, terminal included, and
  changes nothing else (not even `updated_at`).
- **Time.** Every instant is an aware UTC datetime at the API and an integer
  count of microseconds inside the core and the databases; a naive datetime is
  refused.
"""


def _guard_cell(names: tuple[str, ...], *, validators: bool) -> str:
    if not names:
        return ""
    parts = []
    for name in names:
        negated = name.startswith("!")
        guard = GUARDS[name.lstrip("!")]
        label = f"not `{guard.name}`" if negated else f"`{guard.name}`"
        if validators and guard.error is not None:
            label += f" ({guard.error.__name__})"
        parts.append(label)
    return ", ".join(parts)


def _cell(expr: Expr | str | None) -> str:
    """``expr`` read without a dialect, for a table cell."""
    if expr is None:
        return "—"
    text = expr if isinstance(expr, str) else expr.text()
    return "`" + text.replace("|", "\\|") + "`"


_ENTRY_REASON: Final = param("entry_reason", "text")
"""What the spec calls a move's history-entry reason (the event's own ``reason``)."""

_MOVES: Final = (
    ("any move", TaskState.RUNNING, TaskState.RUNNING),
    ("into a terminal state", TaskState.RUNNING, TaskState.COMPLETED),
    ("into `pending`", TaskState.RUNNING, TaskState.PENDING),
    ("into `compensating` from the forward phase", TaskState.RUNNING, TaskState.COMPENSATING),
)
"""One move of each kind :func:`move_effects` tells apart (its target is read as
``:target``)."""


def _move_rows() -> list[tuple[str, str, str]]:
    """What every move does, by the kind of move: (kind, column, value as text)."""
    base = move_effects(TaskState.RUNNING, TaskState.RUNNING, _ENTRY_REASON)
    rows: list[tuple[str, str, str]] = []
    for kind, source, target in _MOVES:
        for column, value in move_effects(source, target, _ENTRY_REASON).items():
            if kind == "any move" or column not in base:
                rows.append((kind, column, value.text().replace(f"'{target.value}'", ":target")))
    return rows


def _effects() -> list[str]:
    out = [
        "## Effects",
        "",
        "What the hot events write, declared once (`sagalease.lifecycle.EFFECTS`): the"
        " Python core computes the same record, and the SQL stores render these"
        " expressions into one statement per event (`tests/stores/test_sql_equivalence.py`"
        " proves both equal on random rows in SQLite and PostgreSQL). Columns are the row"
        " before the event; `:name` is a parameter of the call (`:target` the state the"
        " transition goes to, `:entry_reason` the history entry's reason); every value"
        " is bound, never interpolated.",
        "",
        "What every move does besides the event's own effects:",
        "",
        "| move | column | becomes |",
        "|---|---|---|",
    ]
    out += [f"| {kind} | `{column}` | {_cell(value)} |" for kind, column, value in _move_rows()]
    for event, effect in EFFECTS.items():
        out += [
            "",
            f"### {event}",
            "",
            effect.description[0].upper() + effect.description[1:] + ".",
            "",
        ]
        out += ["| column | becomes |", "|---|---|"]
        out += [f"| `{column}` | {_cell(value)} |" for column, value in effect.columns.items()]
        out += [
            f"| history `owner` | {_cell(effect.owner)} |",
            f"| history `token` | {_cell(effect.token)} |",
            f"| history `reason` | {_cell(effect.reason)} |",
        ]
        recorded = ", ".join(f"`{a}`" for a in effect.args)
        if effect.optional_args:
            recorded += " (and " + ", ".join(f"`{a}`" for a in effect.optional_args) + " if given)"
        out += ["", f"The history entry records {recorded}."]
    out.append("")
    return out


def _model_checking() -> list[str]:
    from sagalease.verification import many
    from sagalease.verification.checker import PROPERTIES, load_model, model_names

    out = [
        "## Model checking",
        "",
        "`sagalease check MODEL` explores every interleaving of the model's workers"
        " (including paused zombies, restarted workers under the same id and an"
        " impostor), the reaper, an operator and the clock, through the same core the"
        " stores run, and verifies:",
        "",
        *(f"- {p}" for p in PROPERTIES),
        "",
        "| model | what it runs | expected | states | transitions | depth | longest run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in model_names():
        m = load_model(name)
        f = m.figures or {}
        cells = [f"{f[k]:,}" if k in f else "-" for k in ("states", "transitions", "depth")]
        longest = f"{f['longest_run']:,}" if "longest_run" in f else "-"
        out.append(f"| `{name}` | {m.description} | {m.expect} | {' | '.join(cells)} | {longest} |")
    out += [
        "",
        "Recorded figures are checked on every run of the model: a difference fails"
        " `sagalease check` (CI runs `ci` and `deep`).",
        "",
        "### Many tasks",
        "",
        "`sagalease check many` explores several tasks in different queues and"
        " priorities, worker processes (two may share an id) and the clock, with"
        " claim_next and claim_batch through the stores' own claim choice, complete_many"
        " and the reaper, and verifies, by name:",
        "",
        *(f"- **{name}**: {text}" for name, text in many.PROPERTIES.items()),
        "",
        "| model | what it runs | expected | states | transitions | depth | longest run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in many.many_model_names():
        mm = many.load_many(name)
        f = mm.figures or {}
        cells = [f"{f[k]:,}" if k in f else "-" for k in ("states", "transitions", "depth")]
        longest = f"{f['longest_run']:,}" if "longest_run" in f else "-"
        out.append(
            f"| `{name}` | {mm.description} | {mm.expect} | {' | '.join(cells)} | {longest} |"
        )
    out += [
        "",
        "[model-mapping.md](model-mapping.md) names the store method behind each model action.",
        "",
    ]
    return out


def render_markdown() -> str:
    """The whole spec as Markdown (the content of ``specs/lifecycle.md``)."""
    out: list[str] = [
        "# sagalease lifecycle",
        "",
        "<!-- Generated by `sagalease spec` from sagalease.lifecycle; do not edit."
        " tests/unit/test_spec.py fails when this file drifts from the code. -->",
        "",
        "## States",
        "",
        "| state | terminal | meaning |",
        "|---|---|---|",
    ]
    for state in TaskState:
        out.append(
            f"| `{state.value}` | {'yes' if state.is_terminal else 'no'} | {STATE_DOCS[state]} |"
        )
    out += [
        "",
        "## Transitions",
        "",
        "For one event from one state the rows are tried in order: the validators"
        " run first and reject the event with the error shown; the first row whose"
        " conditions hold is taken. An event with no row for the current state is"
        " refused with TerminalTaskError from a terminal state; from another state the"
        " validators shared by every row of the event run first (so a holder call"
        " without the live lease is a LeaseConflictError wherever the task is), then"
        " InvalidTransitionError.",
        "",
        "| event | from | to | validators (error) | conditions |",
        "|---|---|---|---|---|",
        "| create | — | `pending` | id unused (DuplicateTaskError), inputs valid"
        " (InvalidInputError) | |",
    ]
    for event in EVENTS:
        for state in TaskState:
            for t in CHART.get((state, event), ()):
                out.append(
                    f"| {event} | `{t.source.value}` | `{t.target.value}` |"
                    f" {_guard_cell(t.validators, validators=True)} |"
                    f" {_guard_cell(t.conds, validators=False)} |"
                )
    out += [
        "| annotate | any | same | | |",
        "",
        "## Guards",
        "",
        "`sql` is the same predicate over a task row, as the SQL stores render it"
        " (— : read only by the Python core).",
        "",
        "| guard | kind | holds when | error when it fails | sql |",
        "|---|---|---|---|---|",
    ]
    for guard in GUARDS.values():
        kind = "validator" if guard.error is not None else "condition"
        error = guard.error.__name__ if guard.error is not None else ""
        out.append(
            f"| `{guard.name}` | {kind} | {guard.description} | {error} | {_cell(guard.sql)} |"
        )
    out += ["", *_effects(), "## Invariants", ""]
    for inv in INVARIANTS:
        out.append(f"- **{inv.id} {inv.title}.** {inv.statement}")
        for check in inv.checked_by:
            path, _, name = check.partition("::")
            out.append(f"  - checked by [`{name}`](../{path})")
    out += [
        "",
        _PROSE,
        *_model_checking(),
        "## Diagram",
        "",
        "```mermaid",
        f"{Lifecycle:mermaid}".rstrip(),
        "```",
        "",
    ]
    return "\n".join(out)


def statechart_document() -> dict[str, Any]:
    """The declaration in python-statemachine's native JSON vocabulary.

    Each transition's ``cond`` lists its validators, then its conditions (an
    ``unless`` as ``!name``); whether a name is a validator (rejects with an
    error) or a condition (only chooses the target) is in ``guards``.
    """
    states: dict[str, Any] = {}
    for state in Lifecycle.states:
        node: dict[str, Any] = {}
        if state.initial:
            node["initial"] = True
        if state.final:
            node["final"] = True
        transitions = []
        for t in state.transitions:
            (target,) = t.targets
            entry: dict[str, Any] = {
                "event": " ".join(str(e) for e in t.events),
                "target": target.id,
            }
            names = [str(v) for v in t.validators] + [str(c) for c in t.cond]
            if names:
                entry["cond"] = names
            transitions.append(entry)
        if transitions:
            node["transitions"] = transitions
        states[state.id] = node
    return {"name": "Lifecycle", "states": states}


def render_json() -> str:
    """``specs/lifecycle.json``: the language-neutral lifecycle."""
    doc = {
        "$comment": "Generated by `sagalease spec --json` from sagalease.lifecycle; do not edit."
        " `statechart` loads with statemachine.io.load(..., format='json').",
        "states": {
            s.value: {"terminal": s.is_terminal, "meaning": STATE_DOCS[s]} for s in TaskState
        },
        "events": list(EVENTS),
        "guards": {
            g.name: {
                "kind": "validator" if g.error is not None else "condition",
                "holds_when": g.description,
                "error": None if g.error is None else g.error.__name__,
                "sql": None if g.sql is None else g.sql.text(),
            }
            for g in GUARDS.values()
        },
        "effects": {
            event: {
                "description": e.description,
                "columns": {c: v.text() for c, v in e.columns.items()},
                "entry": {
                    "owner": e.owner.text(),
                    "token": e.token.text(),
                    "reason": e.reason.text(),
                },
                "records": list(e.args),
                "records_if_given": list(e.optional_args),
            }
            for event, e in EFFECTS.items()
        },
        "move_effects": [
            {"move": kind, "column": column, "becomes": value}
            for kind, column, value in _move_rows()
        ],
        "invariants": [
            {"id": i.id, "title": i.title, "statement": i.statement} for i in INVARIANTS
        ],
        "statechart": statechart_document(),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
