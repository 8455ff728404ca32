"""SQLite file faults: the disk fills up mid-run (a size-limited tmpfs, the
``small_disk`` fixture of conftest; where mounting is refused, RLIMIT_FSIZE on the
worker processes), the database file made read-only
(``chattr +i``: root ignores file modes), the writer-lock file removed, and files that
are not a database or are truncated opened (docs/chaos.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos import _scenarios as sc
from chaos._fleet import run_plan
from sagalease import SQLiteStore, StoreUnavailableError


def test_disk_full(small_disk: tuple[Path, str], tmp_path: Path, chaos_table: list[Any]) -> None:
    """The disk fills up mid-run: typed errors, no committed write lost; space freed,
    the fleet finishes.
    """
    where, method = small_disk
    # The workers' logs are pipes; the fleet's files stay off the small disk.
    fleet = sc.sqlite_fleet(where, "diskfull", logs=tmp_path / "diskfull-logs")
    result = run_plan(fleet, sc.disk_full(where, method), f"SQLite disk full ({method})")
    sc.conclude(result, chaos_table)


def test_database_made_read_only(tmp_path: Path, chaos_table: list[Any]) -> None:
    """The database file (and its WAL) made read-only mid-run: writes fail typed, a
    store opened meanwhile is refused typed; writable again, the fleet finishes.
    """
    fleet = sc.sqlite_fleet(tmp_path, "readonly")
    db = Path(fleet.base["path"])
    if not sc.immutable([db], True):
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE on ext4/xfs)")
    sc.immutable([db], False)
    refusals: list[str] = []
    result = run_plan(fleet, sc.read_only(db, refusals), "SQLite database read-only")
    print(f"opening the read-only file: {refusals[0]!r}")
    sc.conclude(result, chaos_table)


def test_writer_lock_removed(tmp_path: Path, chaos_table: list[Any]) -> None:
    """The writer-lock file removed mid-run while workers are replaced (the new ones
    lock a new file): SQLite's own transaction lock and the compare-and-set writes
    keep the history whole.
    """
    fleet = sc.sqlite_fleet(tmp_path, "lockfile")
    lock = Path(f"{fleet.base['path']}.lock")
    result = run_plan(fleet, sc.lock_removed(lock), "SQLite writer-lock file removed")
    sc.conclude(result, chaos_table)


# ---------------------------------------------------------------- files that are not stores

_OPEN_SCRIPT = (
    "import sys; from sagalease.worker import run_worker;"
    " sys.exit(run_worker('sqlite:///' + sys.argv[1], lambda ctx: None, max_tasks=1))"
)


def bad_file_problems(path: Path, opener: Any) -> list[str]:
    """Open ``path`` with ``opener(path)`` in-process and with run_worker in a child:
    what went wrong (a traceback, a success, an untyped error, a changed file).
    """
    before = path.read_bytes()
    siblings = sorted(p.name for p in path.parent.iterdir())
    problems = []
    try:
        opener(path)
        problems.append("opened without an error")
    except StoreUnavailableError:
        pass
    except Exception as exc:
        problems.append(f"untyped error {type(exc).__name__}: {exc}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[1:])}
    child = subprocess.run(
        [sys.executable, "-c", _OPEN_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if "Traceback" in child.stderr or child.returncode != 3 or child.stderr.count("\n") != 1:
        problems.append(f"run_worker: status {child.returncode}, stderr {child.stderr!r}")
    if path.read_bytes() != before:
        problems.append("the file was changed")
    after = sorted(p.name for p in path.parent.iterdir())
    if after != siblings:
        problems.append(f"files appeared: {sorted(set(after) - set(siblings))}")
    return problems


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.db"
    store = SQLiteStore(good)
    for i in range(50):
        store.create(f"t{i}", metadata={"pad": "x" * 200})
    store.close()
    raw = good.read_bytes()
    files = {
        "not a database": b"these are someone's notes, not a database\n" * 200,
        "truncated": raw[: len(raw) // 2],
        "header only": raw[:100],
    }
    made = {}
    for i, (name, data) in enumerate(files.items()):
        folder = tmp_path / f"bad{i}"
        folder.mkdir()
        made[name] = folder / "store.db"
        made[name].write_bytes(data)
    return made


def test_bad_files(tmp_path: Path, chaos_table: list[Any]) -> None:
    """A file that is not a database, truncated, or only a header: one typed error,
    never a traceback, nothing overwritten or created beside it.
    """
    for name, path in _bad_files(tmp_path).items():
        problems = bad_file_problems(path, lambda p: SQLiteStore(p).close())
        assert not problems, f"{name}: {problems}"
