"""Helpers shared by the workloads: data trees, checksums, catalogs, one agent iteration."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = "smurf"
INSTANCE_ID = "suprsync-bench"


class BenchmarkError(RuntimeError):
    """A workload did not do what it should (wrong copy, failed command)."""


@dataclass
class Sample:
    """One timed run of one side of a comparison."""

    seconds: float
    #: Files whose arrival and md5 were checked after the run.
    checked: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: 1-minute load average of the machine when the run started.
    loadavg: float | None = None


def now_tc(now: float | None = None) -> int:
    """The timecode (first five digits of the unix time) of now."""
    return int((time.time() if now is None else now) // 1e5)


def clear_dir(path: Path) -> Path:
    """Delete path if it exists and create it empty."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to path (parents created); return their md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    block = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(block, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def make_tree(root: Path, layout: Iterable[tuple[str, int]]) -> dict[str, str]:
    """Write random files at the given (relative path, size) pairs; {rel path: md5}."""
    return {rel: write_random_file(root / rel, size) for rel, size in layout}


def md5_path(path: Path) -> str:
    """md5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_tree(dest: Path, expected: dict[str, str], what: str) -> int:
    """Raise BenchmarkError unless every expected file is under dest with its md5."""
    bad = []
    for rel, md5 in expected.items():
        path = dest / rel
        try:
            got = md5_path(path)
        except OSError as exc:
            bad.append(f"{rel}: {exc.strerror}")
            continue
        if got != md5:
            bad.append(f"{rel}: md5 {got}, expected {md5}")
    if bad:
        raise BenchmarkError(f"{what}: {len(bad)} of {len(expected)} files wrong in {dest}: "
                             f"{bad[:3]}")
    return len(expected)


def parse_md5sum_output(text: str) -> dict[str, str]:
    """{path without leading './': md5} from md5sum output."""
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if name.startswith("./"):
            name = name[2:]
        sums[name] = digest
    return sums


def check_md5sum_output(text: str, expected: dict[str, str], what: str) -> int:
    """Raise BenchmarkError unless md5sum's output lists every expected file and md5."""
    got = parse_md5sum_output(text)
    bad = [rel for rel, md5 in expected.items() if got.get(rel) != md5]
    if bad:
        raise BenchmarkError(f"{what}: {len(bad)} of {len(expected)} md5s wrong or missing: "
                             f"{bad[:3]}")
    return len(expected)


def run_checked(argv: list[str], what: str, timeout: float = 3600,
                **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a command; raise BenchmarkError when it fails."""
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise BenchmarkError(f"{what} failed with exit {result.returncode}: "
                             f"{result.stderr.decode(errors='replace')[-800:]}")
    return result


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of fn()."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def copy_catalog(template: Path, target: Path) -> Path:
    """Copy an sqlite catalog file (checkpointed, no -wal file) to target."""
    for suffix in ("", "-wal", "-shm"):
        stale = Path(str(target) + suffix)
        if stale.exists():
            stale.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return target


def checkpoint(db: Path) -> None:
    """Fold the WAL into the main file, so that the file alone is the whole catalog."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    wal = Path(str(db) + "-wal")
    if wal.exists() and wal.stat().st_size:
        raise BenchmarkError(f"{db}: WAL not empty after checkpoint")


def empty_catalog(path: Path) -> Path:
    """A new catalog with suprsync's tables and indexes and no rows."""
    from suprsync.catalog.store import SupRsyncFilesManager

    if path.exists():
        path.unlink()
    manager = SupRsyncFilesManager(str(path))
    manager.close()
    checkpoint(path)
    return path


def register_tree(db: Path, root: Path, archive: str = ARCHIVE) -> int:
    """Register every file under root (remote path relative to root); return the count."""
    from suprsync.catalog.store import SupRsyncFilesManager
    from suprsync.registration import add_local_files

    manager = SupRsyncFilesManager(str(db))
    try:
        added = add_local_files(manager, str(root), archive, last_edit=0)
    finally:
        manager.close()
    checkpoint(db)
    return len(added)


def check_catalog_synced(db: Path, expected_rel: Iterable[str], what: str,
                         archive: str = ARCHIVE) -> None:
    """Raise BenchmarkError unless each remote path has a verified row in the catalog."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT remote_path FROM supersync_v0 WHERE archive_name = ? AND "
            "remote_md5sum IS NOT NULL AND remote_md5sum = local_md5sum", (archive,)).fetchall()
    finally:
        conn.close()
    synced = {r[0] for r in rows}
    missing = [rel for rel in expected_rel if rel not in synced]
    if missing:
        raise BenchmarkError(f"{what}: {len(missing)} files not verified in the catalog: "
                             f"{missing[:3]}")


def setup_agent_logging(log_file: Path) -> None:
    """Log suprsync at INFO into a file, as ``suprsync run`` logs to stderr."""
    logger = logging.getLogger("suprsync")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def agent_config(db: Path, remote: Path, file_root: Path, **kwargs: Any):  # type: ignore[no-untyped-def]
    """An AgentConfig for the benchmark archive; kwargs override fields."""
    from suprsync.agent import AgentConfig

    return AgentConfig(archive_name=ARCHIVE, remote_basedir=str(remote), db_path=str(db),
                       suprsync_file_root=str(file_root), instance_id=INSTANCE_ID,
                       sleep_time=0, **kwargs)


def ssh_fields(server, port: int | None = None,  # type: ignore[no-untyped-def]
               known_hosts: Path | None = None) -> dict[str, Any]:
    """AgentConfig fields that reach the loopback sshd (or the proxy in front of it)."""
    return {"ssh_host": server.destination, "ssh_key": str(server.key),
            "ssh_port": port or server.port,
            "ssh_known_hosts": str(known_hosts or server.known_hosts)}


def run_agent_iteration(config, profile: Path | None = None) -> float:  # type: ignore[no-untyped-def]
    """Build an agent, time one ``Agent.iterate()``; raise BenchmarkError if it failed.

    Building the agent (engine, schema check) and closing its shared ssh
    connection afterwards are not timed.
    """
    from suprsync.agent import Agent

    from .profiling import Profiled

    agent = Agent(config)
    try:
        if profile is not None:
            with Profiled(profile):
                seconds, ok = timed(agent.iterate)
        else:
            seconds, ok = timed(agent.iterate)
        session = agent.session.snapshot()
    finally:
        agent.close()
        agent.manager.close()
    if not ok:
        raise BenchmarkError(f"agent iteration failed: {session.get('last_copy')}")
    return seconds
