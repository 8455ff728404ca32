"""SQLite file faults: the disk fills up mid-run (a size-limited tmpfs; where mounting
is refused, RLIMIT_FSIZE on the worker processes), the database file made read-only
(``chattr +i``: root ignores file modes), the writer-lock file removed, and files that
are not a database or are truncated opened (docs/chaos.md).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos import _scenarios as sc
from chaos._fleet import SCALE, Fault, Fleet, run_plan, wall_us
from sagalease import SQLiteStore, StoreUnavailableError


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A 16 MiB tmpfs (``"tmpfs"``), or a plain directory (``"rlimit"``) when mounting
    is not permitted here.
    """
    where = tmp_path / "disk"
    where.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield where, "tmpfs" if mounted else "rlimit"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(where: Path) -> Path:
    filler = where / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_disk_full(small_disk: tuple[Path, str], tmp_path: Path, chaos_table: list[Any]) -> None:
    """The disk fills up mid-run: typed errors, no committed write lost; space freed,
    the fleet finishes.
    """
    where, method = small_disk
    fleet = sc.sqlite_fleet(where, "diskfull")
    fleet.logs = tmp_path / "diskfull-logs"  # the workers' logs are pipes; these stay off it
    fleet.logs.mkdir()
    fleet.done_file = fleet.logs / "DONE"
    fleet.base["done_file"] = str(fleet.done_file)

    def plan(f: Fleet) -> None:
        f.feed(40 * SCALE)
        for _ in range(SCALE):
            f.wait_progress(5)
            before = f.count("unavailable")
            limited = []
            if method == "tmpfs":
                filler = _fill(where)
            else:
                for child in f.live("worker"):
                    resource.prlimit(child.proc.pid, resource.RLIMIT_FSIZE, (0, 0))
                    limited.append(child.proc.pid)
            end = time.monotonic() + 30
            while f.count("unavailable") <= before and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.5)
            if method == "tmpfs":
                filler.unlink()
            else:
                for pid in limited:
                    with contextlib.suppress(ProcessLookupError):
                        resource.prlimit(pid, resource.RLIMIT_FSIZE, (-1, -1))
            f.faults.append(Fault(f"disk full ({method})", wall_us()))
            assert f.count("unavailable") > before, "no write met the full disk"
            f.feed(10)

    result = run_plan(fleet, plan, f"SQLite disk full ({method})")
    sc.conclude(result, chaos_table)


def _immutable(paths: list[Path], on: bool) -> bool:
    flag = "+i" if on else "-i"
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True)
    return done.returncode == 0


def test_database_made_read_only(tmp_path: Path, chaos_table: list[Any]) -> None:
    """The database file (and its WAL) made read-only mid-run: writes fail typed, a
    store opened meanwhile is refused typed; writable again, the fleet finishes.
    """
    fleet = sc.sqlite_fleet(tmp_path, "readonly")
    db = Path(fleet.base["path"])
    files = [db, Path(f"{db}-wal")]
    if not _immutable([db], True):
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE on ext4/xfs)")
    _immutable([db], False)
    refusals: list[str] = []

    def plan(f: Fleet) -> None:
        f.feed(40 * SCALE)
        for _ in range(SCALE):
            f.wait_progress(5)
            before = f.count("unavailable")
            _immutable(files, True)
            try:
                with pytest.raises(StoreUnavailableError) as caught:
                    SQLiteStore(db).close()
                refusals.append(str(caught.value))
                end = time.monotonic() + 30
                while f.count("unavailable") <= before and time.monotonic() < end:
                    time.sleep(0.05)
                time.sleep(0.5)
            finally:
                _immutable(files, False)
            f.faults.append(Fault("database read-only", wall_us()))
            assert f.count("unavailable") > before, "no write met the read-only file"
            f.feed(10)

    result = run_plan(fleet, plan, "SQLite database read-only")
    print(f"opening the read-only file: {refusals[0]!r}")
    sc.conclude(result, chaos_table)


def test_writer_lock_removed(tmp_path: Path, chaos_table: list[Any]) -> None:
    """The writer-lock file removed mid-run while workers are replaced (the new ones
    lock a new file): SQLite's own transaction lock and the compare-and-set writes
    keep the history whole.
    """
    fleet = sc.sqlite_fleet(tmp_path, "lockfile")
    lock = Path(f"{fleet.base['path']}.lock")

    def plan(f: Fleet) -> None:
        f.feed(40 * SCALE)
        for _ in range(2 * SCALE):
            f.wait_progress(5)
            lock.unlink(missing_ok=True)
            victims = f.live("worker")[:1]
            for child in victims:
                f.kill(child)
            f.faults.append(Fault("writer lock removed", wall_us()))
            f.feed(10)

    result = run_plan(fleet, plan, "SQLite writer-lock file removed")
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
