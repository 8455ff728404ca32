"""A base test class for backend authors (pytest).

Subclass it and override one fixture::

    from sagalease.conformance.testing import StoreConformanceTests

    class TestMyStore(StoreConformanceTests):
        @pytest.fixture
        def store_factory(self):
            return my_factory

Each check of the suite becomes one test; a failure is the suite's
:class:`~sagalease.conformance.ConformanceFailure` naming the invariant. Without a
subclass, ``pytest --sagalease-store=mod:factory --pyargs sagalease.conformance.testing``
runs :class:`TestStoreConformance` against the factory named on the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagalease.conformance._runner import checks, run

__all__ = ["StoreConformanceTests", "TestStoreConformance"]

_CHECK_NAMES = [c.name for c in checks()]


class StoreConformanceTests:
    """Every conformance check as a test; override ``store_factory``."""

    @pytest.fixture
    def store_factory(self, sagalease_store_factory: Callable[[], Any]) -> Callable[[], Any]:
        """The factory under test (default: ``--sagalease-store``)."""
        return sagalease_store_factory

    @pytest.mark.parametrize("check", _CHECK_NAMES)
    def test_conformance(
        self, store_factory: Callable[[], Any], check: str, request: pytest.FixtureRequest
    ) -> None:
        """The store passes this check of the sagalease conformance suite."""
        report = run(
            store_factory,
            examples=int(request.config.getoption("--sagalease-examples", 100)),
            seed=int(request.config.getoption("--sagalease-seed", 0)),
            only={check},
        )
        (result,) = [r for r in report.results if r.name == check]
        if result.failure is not None:
            # The calls that led there, in pytest's report (the message names only the step).
            result.failure.add_note("\n".join(["steps:", *result.failure.steps]))
            raise result.failure
        if result.skipped is not None:
            pytest.skip(result.skipped)


class TestStoreConformance(StoreConformanceTests):
    """The suite against ``--sagalease-store`` (skipped when the option is not given)."""
