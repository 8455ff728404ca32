"""Running the suite: every check, its outcome, the report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sagalease.conformance._common import (
    TITLES,
    Budget,
    Capabilities,
    ConformanceFailure,
    StoreFactory,
    Trace,
    violated,
)
from sagalease.conformance._contract import CONTRACT_CHECKS

__all__ = ["Check", "CheckResult", "Report", "check_store", "checks", "run"]

DEFAULT_EXAMPLES = 100
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Check:
    """One check of the suite: ``stage/name``, the invariant it pins, what it does."""

    name: str
    invariant: str
    doc: str
    run: Callable[[StoreFactory, Capabilities, Budget, int], str | None]
    """Runs the check; returns ``None`` or the reason it was skipped; raises on failure."""


class Status(StrEnum):
    """How a check ended."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """What one check found."""

    name: str
    invariant: str
    status: Status
    seconds: float
    failure: ConformanceFailure | None = None
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the check passed (a skipped check did not fail)."""
        return self.status is not Status.FAILED

    def line(self) -> str:
        """One line for the terminal."""
        head = f"{self.status.upper():7} {self.name:50} {self.invariant:6}"
        if self.failure is not None:
            f = self.failure
            steps = " ; ".join(f.steps) if f.steps else f.step
            return (
                f"{head} {f.invariant} ({TITLES.get(f.invariant, '')}) at {f.step}:"
                f" {f.detail} | reproduce: {steps}"
            )
        if self.skipped is not None:
            return f"{head} skipped: {self.skipped}"
        return f"{head} {self.seconds:.2f}s"

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        data: dict[str, Any] = {
            "check": self.name,
            "invariant": self.invariant,
            "status": self.status,
            "seconds": round(self.seconds, 3),
        }
        if self.failure is not None:
            data["failure"] = {
                "invariant": self.failure.invariant,
                "title": TITLES.get(self.failure.invariant, ""),
                "step": self.failure.step,
                "detail": self.failure.detail,
                "steps": self.failure.steps,
            }
        if self.skipped is not None:
            data["skipped"] = self.skipped
        return data


@dataclass
class Report:
    """Every check's result."""

    results: list[CheckResult] = field(default_factory=list)
    examples: int = DEFAULT_EXAMPLES
    seed: int = DEFAULT_SEED

    @property
    def ok(self) -> bool:
        """Whether every check passed (skipped ones do not count as failures)."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The failed checks."""
        return [r for r in self.results if r.status is Status.FAILED]

    def summary(self) -> str:
        """``N passed, M failed, K skipped in S s``."""
        counts = ", ".join(f"{sum(r.status is s for r in self.results)} {s}" for s in Status)
        total = sum(r.seconds for r in self.results)
        return f"{counts} in {total:.1f}s (examples={self.examples}, seed={self.seed})"

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {
            "ok": self.ok,
            "examples": self.examples,
            "seed": self.seed,
            "results": [r.to_json() for r in self.results],
        }


# ---------------------------------------------------------------- the checks


def _contract(
    fn: Callable[[Trace], None], invariant: str
) -> Callable[[StoreFactory, Capabilities, Budget, int], None]:
    def run(factory: StoreFactory, _caps: Capabilities, _budget: Budget, _seed: int) -> None:
        store = factory()
        trace = Trace(store)
        try:
            fn(trace)
        except ConformanceFailure as exc:
            raise exc.with_context(check="", steps=trace.steps) from None
        except Exception as exc:
            step = trace.steps[-1] if trace.steps else "the start"
            err = violated(invariant, step, f"{type(exc).__name__}: {exc}")
            err.steps = list(trace.steps)
            raise err from None
        finally:
            store.close()

    return run


def _stateful(factory: StoreFactory, _caps: Capabilities, budget: Budget, seed: int) -> None:
    try:
        from sagalease.conformance._stateful import run_stateful
    except ImportError as exc:  # pragma: no cover - checked by the CLI first
        raise MissingHypothesis(str(exc)) from None
    try:
        run_stateful(
            factory,
            examples=budget.examples,
            seed=seed,
            steps=budget.steps,
            shrink=budget.shrink,
        )
    except ConformanceFailure:
        raise
    except Exception as exc:
        raise violated(
            "INV-8",
            "a step of the state machine",
            f"the store raised {type(exc).__name__} (not a SagaLeaseError): {exc}",
        ) from None


def _threads(factory: StoreFactory, caps: Capabilities, budget: Budget, seed: int) -> None:
    from sagalease.conformance._concurrency import run_threads

    run_threads(
        factory,
        trials=budget.thread_trials,
        seed=seed,
        skip_locked_claims=caps.skip_locked_claims,
    )


def _processes(factory: StoreFactory, caps: Capabilities, budget: Budget, seed: int) -> str | None:
    if caps.reopen is None:
        return "the backend did not declare Capabilities(reopen=...)"
    from sagalease.conformance._concurrency import run_processes

    run_processes(factory, caps, trials=budget.process_trials, seed=seed)
    return None


class MissingHypothesis(ImportError):
    """The stateful stage needs Hypothesis (``pip install 'sagalease[conformance]'``)."""


def checks() -> list[Check]:
    """Every check of the suite, in the order it runs."""
    out = [
        Check(f"contract/{c.name}", c.invariant, c.doc, _contract(c.run, c.invariant))
        for c in CONTRACT_CHECKS
    ]
    out.append(
        Check(
            "stateful/agrees_with_memory_reference",
            "INV-1..12",
            "Workers, zombies, impostors, reaper and a jumping clock over tasks in several"
            " queues and priorities (created alone and in batches); the store under test"
            " and the memory reference agree after every step and every invariant holds.",
            _stateful,
        )
    )
    out.append(
        Check(
            "concurrency/threads",
            "INV-1,2,7,9,11",
            "Threads race on one store; the recorded history has no overlapping leases,"
            " increasing tokens, current-token holder calls, claims within the queues"
            " named, and is linearizable; a create_many racing claims is seen whole or not.",
            _threads,
        )
    )
    out.append(
        Check(
            "concurrency/processes",
            "INV-1,2,7,9",
            "The same with processes sharing the store (declared capability).",
            _processes,
        )
    )
    return out


def _iter_results(
    factory: StoreFactory,
    capabilities: Capabilities,
    budget: Budget,
    seed: int,
    only: set[str] | None,
) -> Iterator[CheckResult]:
    for check in checks():
        if only is not None and not any(check.name.startswith(o) for o in only):
            continue
        start = time.perf_counter()
        failure: ConformanceFailure | None = None
        skipped: str | None = None
        try:
            skipped = check.run(factory, capabilities, budget, seed)
        except MissingHypothesis:
            raise
        except ConformanceFailure as exc:
            failure = exc
        except Exception as exc:
            failure = violated(
                "INV-8",
                check.name,
                f"the store raised {type(exc).__name__} (not a SagaLeaseError): {exc}",
            )
        seconds = time.perf_counter() - start
        if failure is not None:
            failure = failure.with_context(check=check.name, steps=failure.steps)
            yield CheckResult(check.name, check.invariant, Status.FAILED, seconds, failure)
        elif skipped is not None:
            yield CheckResult(check.name, check.invariant, Status.SKIPPED, seconds, skipped=skipped)
        else:
            yield CheckResult(check.name, check.invariant, Status.PASSED, seconds)


def _adapted(factory: StoreFactory, caps: Capabilities) -> tuple[StoreFactory, Capabilities]:
    """An async factory (its stores, or coroutines opening them, are
    :class:`~sagalease.aio.AsyncSagaStore`) seen through a sync facade; a sync one as is.
    """
    from sagalease.conformance._async import adapt, adapt_capabilities

    return adapt(factory), adapt_capabilities(caps)


def run(
    factory: StoreFactory,
    *,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = DEFAULT_SEED,
    capabilities: Capabilities | None = None,
    only: set[str] | None = None,
    progress: Callable[[CheckResult], None] | None = None,
    shrink: bool = True,
) -> Report:
    """Run every check against stores made by ``factory``; never raises on a failure.

    ``capabilities`` defaults to what the factory declares
    (``factory.conformance_capabilities``). ``only``: run the checks whose name starts
    with one of these prefixes (e.g. ``{"contract/"}``). ``shrink=False`` reports the
    first failing sequence the stateful stage finds without minimising it (faster).
    """
    caps = Capabilities.of(factory) if capabilities is None else capabilities
    factory, caps = _adapted(factory, caps)
    report = Report(examples=examples, seed=seed)
    budget = Budget.from_examples(examples, shrink=shrink)
    for result in _iter_results(factory, caps, budget, seed, only):
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def check_store(
    factory: StoreFactory,
    *,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = DEFAULT_SEED,
    capabilities: Capabilities | None = None,
    only: set[str] | None = None,
) -> None:
    """Run the suite; raise the first :class:`ConformanceFailure` (an ``AssertionError``)."""
    # run's keywords, spelled out: both signatures are public; this one stops at the
    # first failure instead of running every check.
    caps = Capabilities.of(factory) if capabilities is None else capabilities
    factory, caps = _adapted(factory, caps)
    for result in _iter_results(factory, caps, Budget.from_examples(examples), seed, only):
        if result.failure is not None:
            raise result.failure
