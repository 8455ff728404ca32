"""The model checker before and after issue 18's speed-up, in one run.

    uv run python -m bench.checker                     # the ci model, old then new
    uv run python -m bench.checker --model default     # a smaller model
    uv run python -m bench.checker --model deep --no-old   # the new checker alone

The old checker is the module as committed at ``--baseline`` (default: the commit
before the speed-up), read with ``git show`` into a temporary module that imports
the same core, lifecycle and call builders as the new one; both check the same
model (loaded by the new ``load_model``) in this process, one after the other.
Printed per checker: states, transitions, depth, longest run, wall seconds
(``perf_counter``), CPU seconds of this process (``process_time``: less sensitive
to other processes sharing the machine) and states per second for each, then the
ratios. The figures of the two must be equal (exit status 1 otherwise). The load
average is printed before and after. Measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from sagalease.verification import checker as new_checker

BASELINE = "13ddd3eae1a2cd363d07557189a92b28efd2d7f0"
"""The last commit with the checker as it was before issue 18's speed-up."""

ROOT = Path(__file__).resolve().parent.parent


def old_checker(commit: str) -> ModuleType:
    """``sagalease.verification.checker`` as committed at ``commit``, as a module."""
    source = subprocess.run(
        ["git", "show", f"{commit}:src/sagalease/verification/checker.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="sagalease-old-checker-"))
    path = folder / "old_checker.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("sagalease_old_checker", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(module: ModuleType, model: Any) -> dict[str, Any]:
    """Check ``model`` with ``module``'s checker; its figures and times."""
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    fields["expect"] = module.Verdict(model.expect)
    own = module.Model(**fields)
    wall, cpu = time.perf_counter(), time.process_time()
    result = module.check(own)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        **result.figures,
        "ok": result.ok,
        "violation": result.violation,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "states_per_second_wall": result.states / wall,
        "states_per_second_cpu": result.states / cpu,
    }


def _line(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name:<4} states {r['states']:,}  transitions {r['transitions']:,}  depth {r['depth']}"
        f"  longest run {r['longest_run']}  {'PASS' if r['ok'] else 'FAIL'}"
        f"  wall {r['wall_seconds']:.1f} s ({r['states_per_second_wall']:,.0f} states/s)"
        f"  cpu {r['cpu_seconds']:.1f} s ({r['states_per_second_cpu']:,.0f} states/s)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit status 1 when the two checkers' figures differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ci")
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--no-old", action="store_true", help="run the new checker only")
    args = parser.parse_args(argv)
    model = new_checker.load_model(args.model)
    print(f"model {model.name}: {model.description}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, dict[str, Any]] = {}
    if not args.no_old:
        results["old"] = run(old_checker(args.baseline), model)
        print(_line("old", results["old"]), flush=True)
    results["new"] = run(new_checker, model)
    print(_line("new", results["new"]))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "old" not in results:
        return 0
    old, new = results["old"], results["new"]
    print(
        f"speed-up: wall x{old['wall_seconds'] / new['wall_seconds']:.1f}"
        f"  cpu x{old['cpu_seconds'] / new['cpu_seconds']:.1f}"
    )
    same = all(old[k] == new[k] for k in ("states", "transitions", "depth", "longest_run", "ok"))
    print("figures: the same" if same else "figures: DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
