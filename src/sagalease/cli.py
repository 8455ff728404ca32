"""The ``sagalease`` command line.

Exit status: 0 success; 1 a check found a violation; 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _check(args: argparse.Namespace) -> int:
    from sagalease.checker import check, load_model

    overrides = {
        "workers": args.workers,
        "ttl": args.ttl,
        "max_attempts": args.max_attempts,
        "deadline": args.deadline,
        "compensations": args.compensations,
        "heartbeats": args.heartbeats,
    }
    try:
        model = load_model(args.model, **overrides)
    except (OSError, TypeError, ValueError) as exc:
        print(f"sagalease check: cannot load model {args.model!r}: {exc}", file=sys.stderr)
        return 2
    print(f"model {model.name}: {model.description or model}")
    result = check(model)
    print(
        f"states {result.states:,}  transitions {result.transitions:,}  depth {result.depth}"
        f"  longest run to termination {result.longest_run}  time {result.seconds:.1f}s"
    )
    if result.violation is not None:
        print(f"VIOLATION: {result.violation}")
        print("shortest trace:")
        for line in result.trace:
            print(f"  {line}")
    for edge in result.uncovered:
        print(f"NOT EXERCISED: declared transition {edge}")
    print(f"{'PASS' if result.ok else 'FAIL'} (expected: {model.expect})")
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sagalease`` console script."""
    parser = argparse.ArgumentParser(prog="sagalease", description="sagalease tools")
    commands = parser.add_subparsers(dest="command", required=True)
    spec = commands.add_parser("spec", help="print the lifecycle spec generated from the code")
    spec.add_argument("--json", action="store_true", help="print specs/lifecycle.json instead")
    check = commands.add_parser("check", help="model-check the lifecycle")
    check.add_argument("model", nargs="?", default="default", help="model name or .toml path")
    for flag in ("workers", "ttl", "max-attempts", "deadline", "compensations", "heartbeats"):
        check.add_argument(f"--{flag}", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args)
    from sagalease.spec import render_json, render_markdown

    sys.stdout.write(render_json() if args.json else render_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
