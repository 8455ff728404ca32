"""The ``sagalease`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sagalease`` console script."""
    parser = argparse.ArgumentParser(prog="sagalease", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "spec", help="print the lifecycle spec (specs/lifecycle.md) generated from the code"
    )
    args = parser.parse_args(argv)
    if args.command == "spec":
        from sagalease.spec import render_markdown

        sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
