"""The sagalease conformance suite: prove that a store backend keeps the contract.

It ships inside the package and needs no pytest; the stateful stage needs
Hypothesis (``pip install 'sagalease[conformance]'``). Give it a *factory*, a
zero-argument callable returning a fresh, empty store::

    from sagalease.conformance import check_store, run

    check_store(my_factory)          # raises ConformanceFailure (an AssertionError)
    report = run(my_factory, examples=100, seed=0)
    print(report.summary())

Every failure names the invariant it broke (``INV-n`` of
:mod:`sagalease.verification.invariants`), the step that broke it and a (minimal, for the
stateful stage) sequence of calls that reproduces it. The stages:

1. ``contract/*``: every event, guard and error of the contract, each refusal checked
   for its exact error type and for changing nothing;
2. ``stateful/*``: a Hypothesis state machine driving the store and the memory
   reference side by side (workers, zombies, impostors, reaper, clock jumps onto
   expiries and deadlines);
3. ``concurrency/*``: threads (and processes, if declared) racing, with the
   recorded history checked for overlapping leases, token order, holder calls with
   the current token, and linearizability against the memory reference.

A backend that can be shared across processes says so with
``factory.conformance_capabilities = Capabilities(reopen=...)``; nothing else is
optional. From the command line: ``sagalease conformance package.module:factory``;
under pytest: ``--sagalease-store=package.module:factory`` or subclass
:class:`sagalease.conformance.testing.StoreConformanceTests`.
"""

from __future__ import annotations

from sagalease.conformance._cli import main as main
from sagalease.conformance._common import Capabilities as Capabilities
from sagalease.conformance._common import ConformanceFailure as ConformanceFailure
from sagalease.conformance._common import StoreFactory as StoreFactory
from sagalease.conformance._runner import Check as Check
from sagalease.conformance._runner import CheckResult as CheckResult
from sagalease.conformance._runner import Report as Report
from sagalease.conformance._runner import check_store as check_store
from sagalease.conformance._runner import checks as checks
from sagalease.conformance._runner import run as run

__all__ = [
    "Capabilities",
    "Check",
    "CheckResult",
    "ConformanceFailure",
    "Report",
    "StoreFactory",
    "check_store",
    "checks",
    "main",
    "run",
]
