"""Child process of the history workload: register new files, time two iterations.

``--mode agent`` builds an Agent and times ``iterate()``; ``--mode api`` does what
the original agent's loop does with the original's API: ``copy_files``,
``get_archive_stats``, ``delete_files`` and ``update_all_timecode_dirs``. The
first iteration's time includes building the manager (and agent or handler), as
a fresh process pays it. ``--db`` is an sqlite file or an SQLAlchemy URL.

Prints one JSON line: first_s, build_s, steady_s, checked, vmhwm_mb, rss_before_mb.
Run by ``benchmarks/workloads/history.py``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    INSTANCE_ID,
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


def _register(db: str, data: Path, batch: str, n: int, size: int, age: float,
              tc: int) -> dict[str, str]:
    """Write n new files into dir tc and register them as a producer does (one add_file
    each)."""
    from suprsync.catalog.store import SupRsyncFilesManager

    registered = time.time() - age
    expected = {}
    manager = SupRsyncFilesManager(db)
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


def _check_done(db: str, data: Path, remote: Path, expected: dict[str, str]) -> int:
    from sqlalchemy import select

    from suprsync.catalog.schema import SupRsyncFile as F
    from suprsync.catalog.store import SupRsyncFilesManager

    checked = check_tree(remote, expected, "history: copies")
    manager = SupRsyncFilesManager(db)
    try:
        rows = dict(manager.read(lambda s: s.execute(
            select(F.remote_path, (F.remote_md5sum == F.local_md5sum) & F.removed.is_not(None))
            .where(F.archive_name == ARCHIVE, F.remote_path.in_(list(expected)))).all()))
    finally:
        manager.close()
    bad = [rel for rel in expected if not rows.get(rel)]
    if bad:
        raise BenchmarkError(f"history: {len(bad)} new rows not verified and removed: {bad[:3]}")
    left = [rel for rel in expected if (data / rel).exists()]
    if left:
        raise BenchmarkError(f"history: {len(left)} local files not deleted: {left[:3]}")
    return checked


class AgentLoop:
    """suprsync's own loop: one ``Agent.iterate()`` per iteration."""

    def __init__(self, db: str, remote: Path, files: Path, delete_after: float) -> None:
        from suprsync.agent import Agent

        self.agent = Agent(agent_config(db, remote, files, delete_local_after=delete_after))

    def iterate(self) -> None:
        if not self.agent.iterate():
            raise BenchmarkError("history: iteration failed: "
                                 f"{self.agent.session.snapshot().get('last_copy')}")

    def close(self) -> None:
        self.agent.close()
        self.agent.manager.close()


class ApiLoop:
    """What the original agent's loop does, through the original's API."""

    def __init__(self, db: str, remote: Path, files: Path, delete_after: float) -> None:
        from suprsync import SupRsyncFileHandler, SupRsyncFilesManager

        self.manager = SupRsyncFilesManager(db)
        self.handler = SupRsyncFileHandler(self.manager, ARCHIVE, str(remote),
                                           chmod="g+rwX,o+rX")
        self.files, self.delete_after = str(files), delete_after

    def iterate(self) -> None:
        copied = self.handler.copy_files(max_copy_attempts=5)
        if not all(ok for _, ok in copied):
            raise BenchmarkError(f"history: copy_files: {copied[:3]}")
        self.stats = self.manager.get_archive_stats(ARCHIVE)
        report = self.handler.delete_files(self.delete_after)
        if report.error is not None:
            raise BenchmarkError(f"history: delete_files: {report.error}")
        self.manager.update_all_timecode_dirs(ARCHIVE, self.files, INSTANCE_ID)

    def close(self) -> None:
        self.handler.close()
        self.manager.close()


LOOPS: dict[str, Callable[..., Any]] = {"agent": AgentLoop, "api": ApiLoop}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True, help="sqlite file or SQLAlchemy URL")
    p.add_argument("--mode", choices=sorted(LOOPS), default="agent")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--new-files", type=int, default=100)
    p.add_argument("--size", type=int, default=16 << 10)
    p.add_argument("--delete-after", type=float, default=3600)
    p.add_argument("--age", type=float, default=7200)
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--timecode", type=int, default=None,
                   help="the dir the new files go into (default: today's)")
    ns = p.parse_args(argv)
    tc = now_tc() if ns.timecode is None else ns.timecode

    # What the process loads before its loop starts (as `suprsync run` does).
    import suprsync.agent  # noqa: F401

    from ..profiling import Profiled

    run_dir = ns.run_dir
    data, remote, files = run_dir / "data", run_dir / "remote", run_dir / "suprsync-files"
    setup_agent_logging(run_dir / "agent.log")
    batch1 = _register(ns.db, data, "a", ns.new_files, ns.size, ns.age, tc)
    rss_before = _status_mb("VmRSS")
    times: list[float] = []
    loop: Any = None
    try:
        for n, batch in enumerate(("a", "b")):
            if batch == "b":
                batch2 = _register(ns.db, data, "b", ns.new_files, ns.size, ns.age, tc)

            def step(first: bool = n == 0) -> None:
                nonlocal loop
                if first:
                    start = time.perf_counter()
                    loop = LOOPS[ns.mode](ns.db, remote, files, ns.delete_after)
                    times.append(time.perf_counter() - start)
                loop.iterate()

            if ns.profile is not None:
                with Profiled(Path(f"{ns.profile}-iteration{n + 1}")):
                    seconds, _ = timed(step)
            else:
                seconds, _ = timed(step)
            times.append(seconds)
    finally:
        if loop is not None:
            loop.close()
    checked = _check_done(ns.db, data, remote, {**batch1, **batch2})
    print(json.dumps({"first_s": times[1], "build_s": times[0], "steady_s": times[2],
                      "checked": checked, "vmhwm_mb": _status_mb("VmHWM"),
                      "rss_before_mb": rss_before, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
