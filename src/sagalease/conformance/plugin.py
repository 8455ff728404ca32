"""The pytest plugin (entry point ``pytest11``): ``--sagalease-store=package.module:factory``.

It only adds options and one fixture, imports nothing heavy and does nothing unless a
test asks for the ``sagalease_store_factory`` fixture, so it costs nothing in a test
run that does not use it. Run the whole suite against a factory with::

    pytest --sagalease-store=mypkg.stores:make_store --pyargs sagalease.conformance.testing

or subclass :class:`sagalease.conformance.testing.StoreConformanceTests` in your own
tests and override its ``store_factory`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's options."""
    group = parser.getgroup("sagalease", "sagalease conformance suite")
    group.addoption(
        "--sagalease-store",
        default=None,
        metavar="MODULE:FACTORY",
        help="store factory the sagalease conformance tests run against",
    )
    group.addoption(
        "--sagalease-examples",
        type=int,
        default=100,
        help="Hypothesis examples of the conformance suite's stateful stage (default 100)",
    )
    group.addoption(
        "--sagalease-seed",
        type=int,
        default=0,
        help="Hypothesis seed of the conformance suite (default 0)",
    )


@pytest.fixture
def sagalease_store_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """The factory named by ``--sagalease-store`` (the test is skipped without it)."""
    spec = request.config.getoption("--sagalease-store")
    if spec is None:
        pytest.skip("no --sagalease-store=package.module:factory given")
    from sagalease.conformance._cli import UsageError, load_factory

    try:
        return load_factory(spec)
    except UsageError as exc:
        raise pytest.UsageError(f"--sagalease-store: {exc}") from None
