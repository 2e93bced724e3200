"""Workload: the original agent (socs 0.6.4) vs suprsync's implementation of its API.

A catalog of 100,000 old rows in the history workload's shape a (every old row
synced and removed, timecode dirs of 2,740 rows, each finalized), left as a running
suprsync agent leaves it (its row count stored, every row scanned for timecode
dirs), is built once with plain sqlite3
and copied for each repetition. Each repetition runs, in turn, one child process
per side (``socs_child.py``): the peer environment's Python with ``socs.db.suprsync``
and this environment's Python with ``suprsync``. The child registers 100 new 16 KiB
files through the side's ``add_file`` (not timed) and times one iteration of the
original agent's loop: ``copy_files`` to a local destination, ``get_archive_stats``,
``delete_files`` and ``update_all_timecode_dirs``; then 100 more files and a second
iteration (the steady state). The third side is the floor: bare ``rsync -a`` of 100
such files to a new local dir and one ``md5sum`` of them.

After each run the copies are checked (md5 of every file), the catalog must hold
the new rows verified and removed, and the local files must be gone.

The peer interpreter is $SUPRSYNC_PEER_PYTHON, default .venv-peer/bin/python
(``make peer`` creates it), as for the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    REPO,
    BenchmarkError,
    Sample,
    check_catalog_synced,
    check_md5sum_output,
    check_tree,
    checkpoint,
    clear_dir,
    copy_catalog,
    make_tree,
    now_tc,
    run_checked,
)
from ..harness import Context, Target, alternate, pair_result
from .history import DELETE_AFTER, NEW_AGE, NEW_SIZE
from .history_catalogs import SHAPES, build_sqlite

CHILD = Path(__file__).resolve().parent / "socs_child.py"
NEW_FILES = 100
ROWS = 100_000
QUICK_ROWS = 2_000
QUICK_NEW_FILES = 20
TARGET = Target(">=", 50.0)


def peer_python() -> Path:
    """The Python of the socs 0.6.4 environment; BenchmarkError when it is missing."""
    path = Path(os.environ.get("SUPRSYNC_PEER_PYTHON") or REPO / ".venv-peer" / "bin" / "python")
    if not path.exists():
        raise BenchmarkError(f"the socs 0.6.4 peer environment is not at {path}: create it "
                             f"with 'make peer' or set SUPRSYNC_PEER_PYTHON")
    return path


def _run_child(python: Path, impl: str, db: Path, run_dir: Path, new_files: int,
               timecode: int, profile: Path | None = None) -> dict[str, Any]:
    # -P: the script's dir (which holds this module, socs.py) is not put on sys.path.
    argv = [str(python), "-P", str(CHILD), "--impl", impl, "--db", str(db), "--run-dir",
            str(run_dir), "--new-files", str(new_files), "--size", str(NEW_SIZE),
            "--delete-after", str(DELETE_AFTER), "--age", str(NEW_AGE),
            "--timecode", str(timecode)]
    if profile is not None:
        argv += ["--profile", str(profile)]
    env = dict(os.environ)
    if impl == "socs":  # nothing of this environment on the original's path
        env.pop("PYTHONPATH", None)
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=3600)
    if result.returncode != 0:
        raise BenchmarkError(f"socs workload: {impl} child failed ({result.returncode}):\n"
                             f"{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check(impl: str, db: Path, run_dir: Path, out: dict[str, Any], new_files: int) -> int:
    """Raise BenchmarkError unless every new file arrived, is verified, removed, deleted."""
    what = f"socs workload ({impl})"
    expected: dict[str, str] = out["expected"]
    if len(expected) != 2 * new_files or len(out["copied"]) != 2 * new_files:
        raise BenchmarkError(f"{what}: {len(expected)} files registered and "
                             f"{len(out['copied'])} copied, not {2 * new_files}")
    failed = [path for path, ok in out["copied"] if not ok]
    if failed:
        raise BenchmarkError(f"{what}: copy_files reported bad md5s: {failed[:3]}")
    checked = check_tree(run_dir / "remote", expected, what)
    check_catalog_synced(db, expected, what)
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(expected))
        kept = [r[0] for r in conn.execute(
            f"SELECT remote_path FROM supersync_v0 WHERE archive_name = ? AND remote_path IN "
            f"({marks}) AND removed IS NULL", (ARCHIVE, *expected))]
    finally:
        conn.close()
    left = [rel for rel in expected if (run_dir / "data" / rel).exists()]
    if kept or left:
        raise BenchmarkError(f"{what}: local copies not deleted: {(kept or left)[:3]}")
    return checked


def _warm(template: Path) -> None:
    """Leave the catalog as a running suprsync agent does: its row count stored, every
    row scanned for timecode dirs."""
    from suprsync.catalog.store import TC_SCAN_CHUNK, SupRsyncFilesManager

    manager = SupRsyncFilesManager(str(template))
    try:
        manager.get_archive_stats(ARCHIVE)
        for _ in range(manager.max_file_id() // TC_SCAN_CHUNK + 2):
            manager.detect_timecode_dirs(ARCHIVE)
    finally:
        manager.close()
    checkpoint(template)


def _floor_side(base: Path, new_files: int):  # type: ignore[no-untyped-def]
    """Bare ``rsync -a`` of the new files to a new local dir, then one ``md5sum`` of them."""
    src = clear_dir(base / "floor-src")
    expected = make_tree(src, [(f"{i // 50}/f{i:03d}.g3", NEW_SIZE)
                               for i in range(new_files)])

    def one(rep: int) -> Sample:
        dst = base / "floor-dst"
        if dst.exists():
            shutil.rmtree(dst)
        start = time.perf_counter()
        run_checked(["rsync", "-a", f"{src}/", f"{dst}/"], "socs workload: bare rsync")
        out = run_checked(["md5sum", "--", *expected], "socs workload: md5sum", cwd=dst)
        seconds = time.perf_counter() - start
        return Sample(seconds, checked=check_md5sum_output(out.stdout.decode(), expected,
                                                           "socs workload: bare rsync"))
    return one


def run(ctx: Context) -> list[dict[str, Any]]:
    python = peer_python()
    base = clear_dir(ctx.work / "socs")
    rows = QUICK_ROWS if ctx.quick else ROWS
    new_files = QUICK_NEW_FILES if ctx.quick else NEW_FILES
    template = base / "template.db"
    start = time.perf_counter()
    shape = next(s for s in SHAPES if s.key == "a")  # every old row synced and removed
    end = time.time() - 3 * NEW_AGE
    info = build_sqlite(template, shape, rows, end, rows / ROWS)
    # The new files go into the dir the history ends in: no iteration of either side
    # finalizes a dir, whatever the time of day.
    timecode = now_tc(end)
    _warm(template)
    ctx.log(f"  catalog: {info} built in {time.perf_counter() - start:.1f} s")
    pythons = {"socs": python, "suprsync": Path(sys.executable)}

    def side(impl: str):  # type: ignore[no-untyped-def]
        def one(rep: int) -> Sample:
            run_dir = clear_dir(base / f"run-{impl}")
            db = copy_catalog(template, run_dir / "catalog.db")
            out = _run_child(pythons[impl], impl, db, run_dir, new_files, timecode)
            checked = _check(impl, db, run_dir, out, new_files)
            for n, steps in enumerate(out["steps"]):
                ctx.log(f"    {impl} iteration {n + 1}: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in steps.items()))
            return Sample(out["first_s"], checked=checked, extra=out)
        return one

    samples = alternate([("socs", side("socs")), ("suprsync", side("suprsync")),
                         ("floor", _floor_side(base, new_files))], ctx.reps, ctx.log)
    ctx.log(f"  suprsync imported from {samples['suprsync'][0].extra['impl_file']}")

    if ctx.profile_dir is not None:
        run_dir = clear_dir(base / "profile-suprsync")
        db = copy_catalog(template, run_dir / "catalog.db")
        _run_child(pythons["suprsync"], "suprsync", db, run_dir, new_files, timecode,
                   ctx.profile_dir / "socs-api-suprsync")

    label = "2k" if ctx.quick else "100k"
    floor_s = statistics.median(s.seconds for s in samples["floor"])
    results = []
    for n, (key, short, when) in enumerate((
            ("first", "1st iteration", "First iteration in a fresh process"),
            ("steady", "2nd iteration", "Second iteration (steady state)"))):
        def pick(impl: str, n: int = n, key: str = key) -> list[Sample]:
            return [Sample(s.extra[f"{key}_s"], s.checked, loadavg=s.loadavg)
                    for s in samples[impl]]

        socs_s = statistics.median(s.seconds for s in pick("socs"))
        steps = {impl: {k: round(min(s.extra["steps"][n][k] for s in samples[impl]), 4)
                        for k in samples[impl][0].extra["steps"][n]}
                 for impl in ("socs", "suprsync")}
        results.append(pair_result(
            f"socs_api_{key}", "socs", f"socs vs suprsync API {label}: {short}",
            f"{when} of the original agent's loop ({new_files} new 16 KiB files, local "
            f"destination, deletion on) on {label} old rows: socs 0.6.4 vs suprsync's API",
            "socs 0.6.4", pick("socs"), "suprsync API", pick("suprsync"), TARGET, ctx.quick,
            notes=f"copy_files, get_archive_stats, delete_files, update_all_timecode_dirs; "
                  f"fastest step times (s): {json.dumps(steps)}",
            floor=f"rsync -a + md5sum of the files: {floor_s:.3f} s, so at most "
                  f"{socs_s / floor_s:.0f}x"))
    return results
