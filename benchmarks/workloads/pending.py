"""Workload 6: a large backlog, one ``suprsync run --once`` process.

200,000 pending files of about 100 bytes (2,000 with --quick) in 200 dirs,
registered with plain SQL into a catalog made by suprsync (untimed; the catalog
is copied for each run). The real ``suprsync run --once`` process, every option
at its default (--files-per-batch unset), copies and verifies them all, once to
a local directory and once over ssh to the loopback sshd. Reported: its wall
time and its own peak RSS (VmHWM of /proc/self/status, written by the process
when it ends, so rsync, ssh and md5sum, separate processes, are not counted); the
target is a peak RSS of at most 150 MB.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    BenchmarkError,
    check_catalog_synced,
    checkpoint,
    clear_dir,
    copy_catalog,
    empty_catalog,
)
from ..harness import Context, Target, value_result

PER_DIR = 1000
RSS_LIMIT_MB = 150.0


def pending_tree(db: Path, root: Path, count: int) -> dict[str, str]:
    """count small real files under root, registered in db by plain SQL: rel -> md5."""
    rows = []
    expected = {}
    for i in range(count):
        rel = f"backlog/d{i // PER_DIR:03d}/f{i:06d}.dat"
        path = root / rel
        if i % PER_DIR == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        data = f"pending file {i} of {count}\n".encode() * 4
        path.write_bytes(data)
        expected[rel] = hashlib.md5(data).hexdigest()
        rows.append((str(path), expected[rel], ARCHIVE, rel, time.time() - 3600))
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                "remote_path, timestamp, failed_copy_attempts, deletable, ignore) "
                "VALUES (?, ?, ?, ?, ?, 0, 1, 0)", rows)
    finally:
        conn.close()
    checkpoint(db)
    return expected


#: Runs the suprsync command line and writes the process's own peak RSS (KiB) to a file:
#: VmHWM, the high-water mark of its own memory since exec. Both wait4's and
#: getrusage's ru_maxrss would also count the forking parent's size at exec and the
#: largest waited-for child (an rsync, say).
_SELF_PEAK = (
    "import sys\n"
    "out = sys.argv[1]\n"
    "sys.argv = ['suprsync', *sys.argv[2:]]\n"
    "from suprsync.cli import main\n"
    "try:\n"
    "    code = main()\n"
    "finally:\n"
    "    with open(out, 'w') as f:\n"
    "        f.write(next(line.split()[1] for line in open('/proc/self/status')\n"
    "                     if line.startswith('VmHWM:')))\n"
    "sys.exit(code)\n")


def run_once(run_dir: Path, db: Path, remote: Path, *extra: str) -> tuple[float, float]:
    """One ``suprsync run --once`` process: (wall seconds, its own peak RSS in MB)."""
    peak = run_dir / "peak-rss-kib"
    argv = [sys.executable, "-c", _SELF_PEAK, str(peak), "run", "--once",
            "--archive-name", ARCHIVE,
            "--remote-basedir", str(remote), "--db-path", str(db),
            "--suprsync-file-root", str(run_dir / "suprsync-files"), *extra]
    log = run_dir / "agent.log"
    start = time.perf_counter()
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
        _, status, _usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchmarkError(f"suprsync run --once exited {proc.returncode}:\n"
                             + log.read_text(errors="replace")[-3000:])
    return seconds, int(peak.read_text()) / 1024


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "pending")
    n = 2_000 if ctx.quick else 200_000
    template = empty_catalog(base / "template.db")
    expected = pending_tree(template, base / "src", n)
    ctx.log(f"  {n} pending files registered")
    server = ctx.server()
    sides = {
        "local": [],
        "ssh": ["--ssh-host", server.destination, "--ssh-key", str(server.key),
                "--ssh-port", str(server.port), "--ssh-known-hosts", str(server.known_hosts)],
    }
    results = []
    for side, extra in sides.items():
        times, peaks = [], []
        for rep in range(1):  # one run each: the backlog is large
            run_dir = clear_dir(base / f"run-{side}")
            db = copy_catalog(template, run_dir / "catalog.db")
            seconds, rss = run_once(run_dir, db, run_dir / "remote", *extra)
            check_catalog_synced(db, expected, f"pending {side}: catalog")
            copied = sum(len(names) for _, _, names in os.walk(run_dir / "remote"))
            if copied != n:
                raise BenchmarkError(f"pending {side}: {copied} files on the destination, "
                                     f"expected {n}")
            ctx.log(f"  {side} rep {rep + 1}: {seconds:.1f} s, peak RSS {rss:.0f} MB")
            times.append(seconds)
            peaks.append(rss)
        label = f"{n // 1000}k pending, {side}"
        results.append(value_result(
            f"pending_{side}_seconds", "pending", f"{label}: wall time",
            f"One suprsync run --once over {n} pending small files, {side}", "s", times,
            None, ctx.quick, notes="every file verified; registration not timed"))
        results.append(value_result(
            f"pending_{side}_peak_rss", "pending", f"{label}: peak RSS",
            f"Peak RSS of the suprsync run --once process over {n} pending files, {side}",
            "MB", peaks, Target("<=", RSS_LIMIT_MB), ctx.quick,
            notes="rsync and ssh are separate processes, not counted"))
    return results
