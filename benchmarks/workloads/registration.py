"""Workload 4: registering files in the catalog.

(a) The pysmurf monitor's pattern: one ``SupRsyncFilesManager.add_file`` per new
    file, each in its own transaction, for 2,000 files of 16 KiB, vs the floor:
    hashlib md5 of each file and one plain sqlite3 INSERT + commit per file in
    WAL mode, into the same table (same schema and indexes). A fresh copy of an
    empty catalog per repetition; the manager is built before the clock starts.
(b) ``suprsync add-local-files ROOT ARCHIVE --last-edit 0 --create-db`` over
    100,000 files of 1 KiB in 100 dirs (a new catalog per repetition; the whole
    command is timed, Python start-up included) vs the plain pipeline a person
    would write for the same work: ``find ROOT -type f -print0 | xargs -0 md5sum |
    python3 insert.py``, the script reading md5sum's lines and inserting one row per
    file with one sqlite3 ``executemany`` in one transaction, into a copy (made
    before the clock starts) of an empty catalog with suprsync's table and indexes.
The files are warm in the page cache for both sides.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    BenchmarkError,
    Sample,
    clear_dir,
    copy_catalog,
    empty_catalog,
    make_tree,
    now_tc,
    run_checked,
    timed,
)
from ..harness import Context, Target, alternate, pair_result
from ..profiling import Profiled, pstats_summary

SMALL = 16 << 10
TINY = 1 << 10
SUPRSYNC = str(Path(sys.executable).parent / "suprsync")

INSERT = ("INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
          "timestamp, failed_copy_attempts, deletable, ignore) VALUES (?, ?, ?, ?, ?, 0, 1, 0)")


def _check_rows(db: Path, root: Path, expected: dict[str, str], what: str) -> int:
    conn = sqlite3.connect(db)
    try:
        rows = dict(conn.execute("SELECT remote_path, local_md5sum FROM supersync_v0 "
                                 "WHERE archive_name = ?", (ARCHIVE,)).fetchall())
        paths = {r[0] for r in conn.execute("SELECT local_path FROM supersync_v0")}
    finally:
        conn.close()
    bad = [rel for rel, md5 in expected.items() if rows.get(rel) != md5]
    missing_paths = [rel for rel in list(expected)[:100] if str(root / rel) not in paths]
    if bad or missing_paths or len(rows) != len(expected):
        raise BenchmarkError(f"{what}: {len(rows)} rows for {len(expected)} files, "
                             f"{len(bad)} wrong: {(bad or missing_paths)[:3]}")
    return len(expected)


def _add_file_side(base: Path, template: Path, root: Path, expected: dict[str, str]):  # type: ignore[no-untyped-def]
    def one(rep: int, profile: Path | None = None) -> Sample:
        from suprsync.catalog.store import SupRsyncFilesManager

        db = copy_catalog(template, base / "run-add-file" / "catalog.db")
        manager = SupRsyncFilesManager(str(db))
        paths = [(str(root / rel), rel) for rel in expected]

        def work() -> None:
            for local, rel in paths:
                manager.add_file(local, rel, ARCHIVE)

        try:
            if profile is not None:
                with Profiled(profile):
                    seconds, _ = timed(work)
            else:
                seconds, _ = timed(work)
        finally:
            manager.close()
        return Sample(seconds, _check_rows(db, root, expected, "add_file"))

    return one


def _floor_side(base: Path, template: Path, root: Path, expected: dict[str, str]):  # type: ignore[no-untyped-def]
    def one(rep: int) -> Sample:
        db = copy_catalog(template, base / "run-floor" / "catalog.db")
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        paths = [(str(root / rel), rel) for rel in expected]

        def work() -> None:
            for local, rel in paths:
                with open(local, "rb") as f:
                    md5 = hashlib.md5(f.read()).hexdigest()
                conn.execute(INSERT, (local, md5, ARCHIVE, rel, time.time()))
                conn.commit()

        try:
            seconds, _ = timed(work)
        finally:
            conn.close()
        return Sample(seconds, _check_rows(db, root, expected, "sqlite3 floor"))

    return one


def _bulk_layout(n_files: int, n_dirs: int) -> list[tuple[str, int]]:
    tc = now_tc()
    per_dir = n_files // n_dirs
    tcs = 4 if n_dirs >= 4 else 1
    return [(f"{tc - tcs + 1 + d % tcs}/ufm_mv{d // tcs:02d}/{i:05d}.dat", TINY)
            for d in range(n_dirs) for i in range(per_dir)]


def _cli_side(base: Path, root: Path, expected: dict[str, str]):  # type: ignore[no-untyped-def]
    def one(rep: int, profile: Path | None = None) -> Sample:
        run_dir = clear_dir(base / "run-cli")
        db = run_dir / "catalog.db"
        args = ["add-local-files", str(root), ARCHIVE, "--last-edit", "0", "--create-db",
                "--db", str(db)]
        if profile is not None:
            prof = Path(str(profile) + ".prof")
            argv = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "suprsync.cli",
                    *args]
        else:
            argv = [SUPRSYNC, *args]
        seconds, result = timed(lambda: run_checked(argv, "suprsync add-local-files"))
        if profile is not None:
            pstats_summary(prof, Path(str(profile) + ".txt"))
            (Path(str(profile) + ".txt")).write_text(
                f"whole command: {seconds:.3f} s wall (with profiler overhead)\n\n"
                + Path(str(profile) + ".txt").read_text())
        if f"added {len(expected)} files" not in result.stdout.decode():
            raise BenchmarkError(f"add-local-files said: {result.stdout.decode()[-300:]}")
        return Sample(seconds, _check_rows(db, root, expected, "add-local-files"))

    return one


#: The floor's insert step: one executemany in one transaction, inserting each line of
#: md5sum as it comes (so inserting overlaps hashing).
_INSERT_SCRIPT = (
    "import sqlite3, sys, time\n"
    "db, prefix, archive = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
    "now = time.time()\n"
    "def rows():\n"
    "    for line in sys.stdin.buffer:\n"
    "        path = line[34:-1].decode()\n"
    "        yield path, line[:32].decode(), archive, path[prefix:], now\n"
    "conn = sqlite3.connect(db)\n"
    "with conn:\n"
    f"    conn.executemany({INSERT!r}, rows())\n"
    "conn.close()\n")


def _pipeline_side(base: Path, template: Path, root: Path, expected: dict[str, str]):  # type: ignore[no-untyped-def]
    """find | xargs md5sum | python3 insert.py, three processes joined by pipes."""
    def one(rep: int) -> Sample:
        db = copy_catalog(template, base / "run-pipeline" / "catalog.db")
        stages = [
            ["find", str(root), "-type", "f", "-print0"],
            ["xargs", "-0", "md5sum"],
            [sys.executable, "-c", _INSERT_SCRIPT, str(db), str(len(str(root)) + 1), ARCHIVE],
        ]
        seconds, codes = timed(lambda: _pipe(stages))
        if any(codes):
            raise BenchmarkError(f"find | xargs md5sum | insert exited {codes}")
        return Sample(seconds, _check_rows(db, root, expected, "find | md5sum | insert"))

    return one


def _pipe(stages: list[list[str]]) -> list[int]:
    """Run the commands as one pipeline; their exit codes."""
    procs: list[subprocess.Popen[bytes]] = []
    stdin: Any = subprocess.DEVNULL
    for i, argv in enumerate(stages):
        last = i == len(stages) - 1
        proc = subprocess.Popen(argv, stdin=stdin,
                                stdout=subprocess.DEVNULL if last else subprocess.PIPE)
        if procs:
            assert procs[-1].stdout is not None
            procs[-1].stdout.close()  # only the next stage holds the read end
        stdin = proc.stdout
        procs.append(proc)
    return [proc.wait() for proc in procs]


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "registration")
    results = []

    # (a) one add_file per file
    n_small = 200 if ctx.quick else 2000
    root = base / "monitor"
    tc = now_tc()
    expected = make_tree(root, [(f"{tc}/ufm_mv5/{tc * 100_000 + i}_{i:04d}.g3", SMALL)
                                for i in range(n_small)])
    template = empty_catalog(base / "template.db")
    add_file = _add_file_side(base, template, root, expected)
    floor = _floor_side(base, template, root, expected)
    samples = alternate([("add_file", add_file), ("sqlite3", floor)], ctx.reps, ctx.log)
    if ctx.profile_dir is not None:
        add_file(0, profile=ctx.profile_dir / "registration-add-file")
    results.append(pair_result(
        "register_add_file", "registration", f"register {n_small} x 16 KiB, add_file",
        f"Registration, one add_file per file: {n_small} x 16 KiB, one transaction each",
        "add_file per file", samples["add_file"],
        "hashlib + sqlite3 INSERT", samples["sqlite3"], Target("<=", 2.0),
        ctx.quick, notes="one commit per file on both sides (sqlite default synchronous)",
        floor="hashlib md5 + one sqlite3 INSERT and commit per file"))

    # (b) add-local-files of a big tree
    n_tiny, n_dirs = (1000, 10) if ctx.quick else (100_000, 100)
    tree = base / "tree"
    start = time.perf_counter()
    expected_tree = make_tree(tree, _bulk_layout(n_tiny, n_dirs))
    ctx.log(f"  {len(expected_tree)} files of 1 KiB written in {time.perf_counter() - start:.1f} s")
    cli = _cli_side(base, tree, expected_tree)
    pipeline = _pipeline_side(base, template, tree, expected_tree)
    pipeline(0)  # warm the page cache and dentries, for both sides alike
    samples = alternate([("add-local-files", cli), ("pipeline", pipeline)], ctx.reps, ctx.log)
    if ctx.profile_dir is not None:
        cli(0, profile=ctx.profile_dir / "registration-add-local-files")
    results.append(pair_result(
        "register_add_local_files", "registration", f"register {n_tiny} x 1 KiB, bulk",
        f"Registration, bulk: suprsync add-local-files of {n_tiny} x 1 KiB in {n_dirs} dirs",
        "add-local-files", samples["add-local-files"],
        "find | md5sum | insert", samples["pipeline"], Target("<=", 2.0), ctx.quick,
        notes="a new catalog each repetition; whole command timed (Python start-up included)",
        floor="find | xargs md5sum | one sqlite3 executemany transaction"))
    return results
