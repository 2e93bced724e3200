"""Child process of the history workload: register new files, time two agent iterations.

Prints one JSON line: first_s, steady_s, checked, vmhwm_mb, rss_before_mb.
Run by ``benchmarks/workloads/history.py``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

from ..common import (
    ARCHIVE,
    BenchmarkError,
    agent_config,
    check_tree,
    now_tc,
    setup_agent_logging,
    timed,
    write_random_file,
)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _register(db: Path, data: Path, batch: str, n: int, size: int, age: float) -> dict[str, str]:
    """Write n new files and register them as a producer does (one add_file each)."""
    from suprsync.catalog.store import SupRsyncFilesManager

    tc = now_tc()
    registered = time.time() - age
    expected = {}
    manager = SupRsyncFilesManager(str(db))
    try:
        for i in range(n):
            rel = f"{tc}/ufm_mv1/{int(registered)}_{batch}_{i:03d}.g3"
            md5 = write_random_file(data / rel, size)
            manager.add_file(str(data / rel), rel, ARCHIVE, local_md5sum=md5,
                             timestamp=registered)
            expected[rel] = md5
    finally:
        manager.close()
    return expected


def _check_done(db: Path, data: Path, remote: Path, expected: dict[str, str]) -> int:
    checked = check_tree(remote, expected, "history: copies")
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(expected))
        rows = dict(conn.execute(
            "SELECT remote_path, remote_md5sum = local_md5sum AND removed IS NOT NULL "
            f"FROM supersync_v0 WHERE archive_name = ? AND remote_path IN ({marks})",
            (ARCHIVE, *expected)).fetchall())
    finally:
        conn.close()
    bad = [rel for rel in expected if not rows.get(rel)]
    if bad:
        raise BenchmarkError(f"history: {len(bad)} new rows not verified and removed: {bad[:3]}")
    left = [rel for rel in expected if (data / rel).exists()]
    if left:
        raise BenchmarkError(f"history: {len(left)} local files not deleted: {left[:3]}")
    return checked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--new-files", type=int, default=100)
    p.add_argument("--size", type=int, default=16 << 10)
    p.add_argument("--delete-after", type=float, default=3600)
    p.add_argument("--age", type=float, default=7200)
    p.add_argument("--profile", type=Path, default=None)
    ns = p.parse_args(argv)

    from suprsync.agent import Agent

    from ..profiling import Profiled

    run_dir = ns.run_dir
    data, remote, files = run_dir / "data", run_dir / "remote", run_dir / "suprsync-files"
    setup_agent_logging(run_dir / "agent.log")
    batch1 = _register(ns.db, data, "a", ns.new_files, ns.size, ns.age)
    rss_before = _status_mb("VmRSS")
    agent = Agent(agent_config(ns.db, remote, files, delete_local_after=ns.delete_after))
    times = []
    try:
        for n, batch in enumerate(("a", "b")):
            if batch == "b":
                batch2 = _register(ns.db, data, "b", ns.new_files, ns.size, ns.age)
            if ns.profile is not None:
                with Profiled(Path(f"{ns.profile}-iteration{n + 1}")):
                    seconds, ok = timed(agent.iterate)
            else:
                seconds, ok = timed(agent.iterate)
            if not ok:
                raise BenchmarkError(f"history: iteration {n + 1} failed: "
                                     f"{agent.session.snapshot().get('last_copy')}")
            times.append(seconds)
    finally:
        agent.handler.close()
        agent.manager.close()
    checked = _check_done(ns.db, data, remote, {**batch1, **batch2})
    print(json.dumps({"first_s": times[0], "steady_s": times[1], "checked": checked,
                      "vmhwm_mb": _status_mb("VmHWM"), "rss_before_mb": rss_before,
                      "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
