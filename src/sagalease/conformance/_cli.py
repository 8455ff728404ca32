"""``sagalease conformance package.module:factory [--examples N] [--seed S] [--json]``.

Prints one line per check (passed/failed/skipped, the invariant, and for a failure
the step that broke it and a minimal reproducing sequence), then a summary. Exit
status: 0 when every check passed, 1 when one failed, 2 on bad usage (an
unimportable factory, Hypothesis missing...), always with one clear line and no
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["add_arguments", "load_factory", "main", "run_from_args"]

INSTALL_HINT = "pip install 'sagalease[conformance]'"


class UsageError(Exception):
    """Bad usage: reported in one line, exit status 2."""


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``package.module:factory`` (attributes may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected package.module:factory, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UsageError(f"{spec!r} is not callable (a factory takes no arguments)")
    return obj  # type: ignore[no-any-return]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The conformance options (shared by ``sagalease conformance`` and this module)."""
    parser.add_argument("factory", help="package.module:factory returning a fresh, empty store")
    parser.add_argument(
        "--examples", type=_positive, default=100, help="Hypothesis examples (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON report")
    parser.add_argument(
        "--no-shrink",
        action="store_true",
        help="report the first failing sequence unminimised (faster; for mutation runs)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PREFIX",
        help="run only the checks whose name starts with PREFIX (repeatable)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the suite as the parsed ``args`` say; the exit status."""
    prog = "sagalease conformance"
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print(
            f"{prog}: the conformance suite needs Hypothesis; install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    from sagalease.conformance._common import Capabilities
    from sagalease.conformance._runner import CheckResult, run
    from sagalease.store import SagaStore

    try:
        from sagalease.conformance._async import adapt, adapt_capabilities

        factory = load_factory(args.factory)
        caps = adapt_capabilities(Capabilities.of(factory))
        factory = adapt(factory)
        try:
            probe = factory()
        except Exception as exc:
            raise UsageError(
                f"calling {args.factory} failed: {type(exc).__name__}: {exc}"
            ) from None
        try:
            if not isinstance(probe, SagaStore):
                raise UsageError(
                    f"{args.factory} returned {type(probe).__name__}, which does not implement"
                    " sagalease.SagaStore"
                )
        finally:
            close = getattr(probe, "close", None)
            if callable(close):
                close()
    except (UsageError, TypeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2

    def show(result: CheckResult) -> None:
        if not args.json:
            print(result.line(), flush=True)

    report = run(
        factory,
        examples=args.examples,
        seed=args.seed,
        capabilities=caps,
        only=set(args.only) if args.only else None,
        progress=show,
        shrink=not args.no_shrink,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{'PASS' if report.ok else 'FAIL'}: {report.summary()}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``sagalease conformance ...`` as a function: the exit status (0, 1 or 2)."""
    parser = argparse.ArgumentParser(
        prog="sagalease conformance",
        description="Run the sagalease conformance suite against a store factory.",
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one usage line
        return 0 if exc.code == 0 else 2
    return run_from_args(args)


if __name__ == "__main__":
    raise SystemExit(main())
