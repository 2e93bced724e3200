"""Concurrent writers: the agent runs while two other processes register files.

The agent is the real ``suprsync run`` process. One writer registers files with
``SupRsyncFilesManager.add_file``, the other with plain ``sqlite3`` INSERTs and
Python's default 5 s lock timeout. No process may crash or see "database is
locked", every file must arrive with the right md5, and the catalog's write lock
must never be held long enough to come near the plain writer's timeout.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import SUPRSYNC

from suprsync import SupRsyncFilesManager
from suprsync.catalog.timecode import timecode_at

ARCHIVE = "concurrent"
#: How long the two writers register files (seconds).
WRITE_SECONDS = 60.0
#: Pause between two registrations of one writer (seconds).
WRITE_PAUSE = 0.03
#: The plain writer gives up on a lock after Python's default 5 s; the agent's
#: write transactions must stay far below that.
MAX_LOCK_WAIT = 2.0
#: Timeout of one BEGIN IMMEDIATE attempt of the lock probe (seconds).
PROBE_TIMEOUT = 0.5
DRAIN_SECONDS = 90.0
LOCKED = "database is locked"

#: Registers a new small file every WRITE_PAUSE s through the project's API.
API_WRITER = """
import os, sys, time
from suprsync import SupRsyncFilesManager
db, root, archive, timecode, seconds, pause = sys.argv[1:]
manager = SupRsyncFilesManager(db)
deadline = time.monotonic() + float(seconds)
n = 0
while time.monotonic() < deadline:
    rel = f"{timecode}/api_writer/api_{n:06d}.dat"
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(256 + (n * 37) % 3000))
    manager.add_file(path, rel, archive)
    n += 1
    time.sleep(float(pause))
print(n)
"""

#: Registers a new small file every WRITE_PAUSE s with a plain INSERT, committed at once.
SQL_WRITER = """
import hashlib, os, sqlite3, sys, time
db, root, archive, timecode, seconds, pause = sys.argv[1:]
conn = sqlite3.connect(db)
deadline = time.monotonic() + float(seconds)
n = 0
while time.monotonic() < deadline:
    rel = f"{timecode}/sql_writer/sql_{n:06d}.dat"
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = os.urandom(256 + (n * 53) % 3000)
    with open(path, "wb") as f:
        f.write(data)
    conn.execute(
        "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path,"
        " timestamp) VALUES (?, ?, ?, ?, ?)",
        (path, hashlib.md5(data).hexdigest(), archive, rel, time.time()))
    conn.commit()
    n += 1
    time.sleep(float(pause))
conn.close()
print(n)
"""


@dataclass
class LockProbe:
    """Repeatedly takes the catalog's write lock and records how long each took."""

    db: Path
    waits: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Probe until stopped; a timed-out attempt is retried and counted in the wait."""
        conn = sqlite3.connect(self.db, timeout=PROBE_TIMEOUT, isolation_level=None)
        try:
            while not self.stop.is_set():
                start = time.monotonic()
                while True:
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        break
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) and "busy" not in str(exc):
                            self.errors.append(str(exc))
                            return
                        self.timeouts += 1
                        if self.stop.is_set():
                            return
                self.waits.append(time.monotonic() - start)
                conn.execute("ROLLBACK")
                self.stop.wait(0.01)
        finally:
            conn.close()


def md5_path(path: Path) -> str:
    """Hex md5 of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def unsynced(db: Path) -> tuple[int, int]:
    """(rows of the archive, rows not yet verified on the destination)."""
    with sqlite3.connect(db, timeout=30) as conn:
        total, pending = conn.execute(
            "SELECT count(*), coalesce(sum(remote_md5sum IS NULL OR"
            " remote_md5sum != local_md5sum), 0) FROM supersync_v0 WHERE archive_name = ?",
            (ARCHIVE,)).fetchone()
    return int(total), int(pending)


def test_agent_and_two_writers_share_the_catalog_without_lock_errors(tmp_path: Path) -> None:
    db = tmp_path / "catalog" / "suprsync.db"
    data = tmp_path / "data"
    remote = tmp_path / "remote"
    file_root = tmp_path / "suprsync-files"
    now_tc = timecode_at(time.time())

    # Older complete dirs, so the agent also finalizes (and registers) while writers run.
    manager = SupRsyncFilesManager(str(db))
    seeded = 0
    for tc in (now_tc - 3, now_tc - 2, now_tc - 1):
        for i in range(10):
            rel = f"{tc}/seed/seed_{i:03d}.dat"
            path = data / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(1000 + i))
            manager.add_file(str(path), rel, ARCHIVE)
            seeded += 1
    manager.close()

    logs = {name: (tmp_path / f"{name}.stderr").open("w+b") for name in ("agent", "api", "sql")}
    probe = LockProbe(db)
    prober = threading.Thread(target=probe.run, name="lock-probe", daemon=True)
    agent = subprocess.Popen(
        [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--remote-basedir", str(remote),
         "--db-path", str(db), "--suprsync-file-root", str(file_root), "--sleep-time", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logs["agent"],
        env={**os.environ, "TMPDIR": str(tmp_path)})
    writers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        prober.start()
        for name, script in (("api", API_WRITER), ("sql", SQL_WRITER)):
            writers[name] = subprocess.Popen(
                [sys.executable, "-c", script, str(db), str(data), ARCHIVE, str(now_tc),
                 str(WRITE_SECONDS), str(WRITE_PAUSE)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logs[name])
        counts = {}
        for name, proc in writers.items():
            out, _ = proc.communicate(timeout=WRITE_SECONDS + 60)
            assert proc.returncode == 0, f"{name} writer exited {proc.returncode}: " \
                + (tmp_path / f"{name}.stderr").read_text(errors="replace")
            counts[name] = int(out.decode().strip())

        # Let the agent drain: every registered row verified on the destination.
        deadline = time.monotonic() + DRAIN_SECONDS
        total, pending = unsynced(db)
        while pending and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.2)
            total, pending = unsynced(db)
        probe.stop.set()
        prober.join(timeout=30)
        assert agent.poll() is None, f"agent exited with {agent.returncode}"
        assert pending == 0, f"{pending} of {total} files still unverified after the drain"
    finally:
        probe.stop.set()
        for proc in writers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(timeout=30)
        for f in logs.values():
            f.close()
    assert agent.returncode == 0

    stderr = {name: (tmp_path / f"{name}.stderr").read_text(errors="replace")
              for name in logs}
    for name, text in stderr.items():
        assert LOCKED not in text.lower(), f"{name} saw '{LOCKED}':\n{text[-3000:]}"
        assert "Traceback" not in text, f"{name} crashed:\n{text[-3000:]}"
    assert "catalog unavailable" not in stderr["agent"], stderr["agent"][-3000:]
    # New files arrive all the time, yet iterations end (and finalize, delete, count):
    # what is registered during a copy step waits for the next one.
    assert stderr["agent"].count("] copied ") > 5, stderr["agent"][-3000:]
    assert stderr["api"] == "" and stderr["sql"] == "", stderr

    # Every registered row: on the destination, with the md5 of the local file.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT local_path, local_md5sum, remote_path, remote_md5sum "
                            "FROM supersync_v0 WHERE archive_name = ?", (ARCHIVE,)).fetchall()
        finalized = [tc for (tc,) in conn.execute(
            "SELECT timecode FROM timecode_dirs_v0 WHERE finalized = 1")]
    data_rows = [r for r in rows if not r[2].endswith("_finalized.yaml")]
    assert counts["api"] > 100 and counts["sql"] > 100, counts
    assert len(data_rows) == seeded + counts["api"] + counts["sql"]
    assert {now_tc - 3, now_tc - 2, now_tc - 1} <= set(finalized), finalized
    bad = []
    for local_path, local_md5, remote_path, remote_md5 in rows:
        copy = remote / remote_path
        if not copy.is_file():
            bad.append(f"{remote_path}: missing on the destination")
        elif not (md5_path(copy) == local_md5 == remote_md5 == md5_path(Path(local_path))):
            bad.append(f"{remote_path}: md5 differs")
    assert not bad, bad[:20]

    # The write lock was always free well within the plain writer's 5 s timeout.
    assert not probe.errors, probe.errors
    assert len(probe.waits) > 500, len(probe.waits)
    worst = max(probe.waits)
    waits = sorted(probe.waits)
    print(f"lock probe: {len(waits)} acquisitions, {probe.timeouts} timed-out attempts, "
          f"median {waits[len(waits) // 2] * 1e3:.1f} ms, "
          f"p99 {waits[int(len(waits) * 0.99)] * 1e3:.1f} ms, worst {worst * 1e3:.1f} ms; "
          f"files: api {counts['api']}, sql {counts['sql']}, seeded {seeded}; agent waited "
          f"on the lock {stderr['agent'].count('catalog is locked by another writer')} times")
    assert worst < MAX_LOCK_WAIT, f"write lock took {worst:.2f} s to acquire"
