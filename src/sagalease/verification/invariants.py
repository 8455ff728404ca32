"""The invariants of the lifecycle, with stable ids and the checks behind them.

``checked_by`` names test functions (``path::name``) of this repository; a
test fails if any of them does not exist, so the spec never points at a
check that is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INVARIANTS", "Invariant"]


@dataclass(frozen=True, slots=True)
class Invariant:
    """One property every store must keep."""

    id: str
    title: str
    statement: str
    checked_by: tuple[str, ...]


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "INV-1",
        "Single holder",
        "At most one live lease per task; no two workers can both succeed at holder"
        " calls with overlapping live leases.",
        (
            "tests/unit/test_core_properties.py::test_single_holder",
            "tests/stores/test_store_contract.py::test_two_workers_race_one_wins",
            "tests/unit/test_checker_catches.py::test_catches_holder_check_ignoring_the_token",
            "tests/system/test_conformance.py::test_concurrency_stage_alone_catches_select_then_update",
        ),
    ),
    Invariant(
        "INV-2",
        "Fencing",
        "Tokens strictly increase with each acquisition; a call with a token other than"
        " the current one never changes anything.",
        (
            "tests/unit/test_core_properties.py::test_tokens_increase_and_stale_tokens_change_nothing",
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/zombie_cannot_write]",
            "tests/unit/test_checker_catches.py::test_catches_acquire_without_token_bump",
        ),
    ),
    Invariant(
        "INV-3",
        "Terminal immutability",
        "Once terminal, nothing changes but the notes, which only grow.",
        (
            "tests/unit/test_core_properties.py::test_terminal_is_absorbing",
            "tests/stores/test_store_contract.py::test_terminal_markers_reject_every_later_mutation",
            "tests/unit/test_checker_catches.py::test_catches_a_writable_terminal_state",
        ),
    ),
    Invariant(
        "INV-4",
        "No dropped compensation",
        "A failed task never ends with a compensation still pending, except in"
        " QUARANTINED, which lists them. COMPENSATED means every compensation applied;"
        " FAILED means none was registered.",
        (
            "tests/unit/test_core_properties.py::test_no_dropped_compensation",
            "tests/stores/test_store_contract.py::test_failure_with_compensations_ends_compensated_or_quarantined",
            "tests/unit/test_checker_catches.py::test_catches_a_failure_that_drops_compensations",
        ),
    ),
    Invariant(
        "INV-5",
        "Bounded attempts",
        "attempts <= max_attempts in every phase.",
        ("tests/unit/test_core_properties.py::test_attempts_bounded",),
    ),
    Invariant(
        "INV-6",
        "No lost task (liveness)",
        "With a fair reaper and at least one live worker, every task reaches a terminal"
        " state: the deadline and the attempt cap bound the forward phase, the attempt"
        " cap bounds the compensation phase.",
        (
            "tests/unit/test_core_properties.py::test_fair_reaper_ends_every_task",
            "tests/system/test_checker.py::test_default_model_exercises_every_declared_transition",
            "tests/unit/test_checker_catches.py::test_endless_heartbeats_are_a_liveness_violation",
        ),
    ),
    Invariant(
        "INV-7",
        "History is the truth",
        "Every change appends exactly one history entry; replaying a task's history"
        " reproduces its current record.",
        (
            "tests/unit/test_core_properties.py::test_history_replays_to_record",
            "tests/system/test_sqlite_crash.py::test_sigkill_mid_loop_leaves_every_task_whole_and_finishable",
            "tests/unit/test_core_properties.py::test_create_names_only_what_differs_from_the_defaults",
            "tests/unit/test_core_properties.py::test_release_records_its_reason",
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/release_reasons_and_requeue_links_are_recorded]",
        ),
    ),
    Invariant(
        "INV-8",
        "Failed calls change nothing",
        "Any call that raises leaves the stored record and its history exactly as they were.",
        (
            "tests/unit/test_core_properties.py::test_failed_calls_change_nothing",
            "tests/stores/test_store_contract.py::test_guard_failures_change_nothing",
            "tests/system/test_conformance.py::test_broken_backend_rejected_naming_the_invariant",
            "tests/unit/test_core_properties.py::test_bad_queue_priority_or_reason_changes_nothing",
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/queues_and_priorities_refuse_bad_input]",
        ),
    ),
    Invariant(
        "INV-9",
        "Queue routing",
        "A claim that names queues (one name, or a collection of names) leases only tasks"
        " of those queues; a claim that names none may lease a task of any queue. A task"
        " stays in the queue it was created in.",
        (
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/claims_route_by_queue]",
            "tests/unit/test_core_properties.py::test_create_records_queue_priority_and_link",
            "tests/system/test_conformance.py::test_broken_backend_rejected_naming_the_invariant"
            "[claim_ignores_queues]",
        ),
    ),
    Invariant(
        "INV-10",
        "Priority order",
        "Among the leaseable tasks of the queues a claim names, the highest priority is"
        " leased first, equal priorities in creation order; claim_batch leases what as many"
        " successive claim_next calls at the same instant would.",
        (
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/claims_take_the_highest_priority_first]",
            "tests/system/test_conformance.py::test_broken_backend_rejected_naming_the_invariant"
            "[priority_ignored]",
        ),
    ),
    Invariant(
        "INV-11",
        "Bulk create is atomic",
        "create_many stores every task it is given or none: an id in use or given twice in"
        " the batch, a bad item or more than 1,000 items is refused with no task and no"
        " history entry stored; the records it returns, in the order given, are those"
        " create returns for the same items.",
        (
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/create_many_is_all_or_nothing]",
            "tests/system/test_conformance.py::test_broken_backend_rejected_naming_the_invariant"
            "[create_many_half_writes]",
        ),
    ),
    Invariant(
        "INV-12",
        "Listings show the records",
        "list_tasks shows, in creation order (or newest first), exactly the stored"
        " records in the states (one or several), saga and queue it is asked for, paged"
        " by after and limit; counts, of every queue or of one, counts exactly those"
        " records by state; queue_stats gives, per queue, those counts, its stale leases"
        " and its oldest task waiting to be claimed, from one snapshot.",
        (
            "tests/stores/test_store_contract.py::TestShippedContractChecks::test_conformance"
            "[memory-contract/listings_filter_by_state_queue_and_saga]",
            "tests/stores/test_store_contract.py::test_list_tasks_pages_and_filters",
        ),
    ),
)
