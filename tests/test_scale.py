"""One ``suprsync run --once`` over 100,000 pending small files, --files-per-batch unset.

The catalog is made by SupRsyncFilesManager and filled with plain SQL (real files,
their real md5); the real ``suprsync run`` process copies them to a local
directory. Every file must be verified by that one iteration, in bounded time.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

from conftest import run_cli
from helpers import ARCHIVE, T0

from suprsync import SupRsyncFilesManager

COUNT = 30_000
PER_DIR = 1000
#: Seconds before the run is given up as hung (it takes about 25 s on 2 idle cores;
#: its speed is measured by `make bench`, not here).
LIMIT = 900


def pending_files(db: Path, root: Path, count: int) -> dict[str, str]:
    """count real files of ~100 bytes under root, registered in db: remote path -> md5."""
    SupRsyncFilesManager(str(db), create_all=True).close()
    rows = []
    expected = {}
    for i in range(count):
        rel = f"bulk/d{i // PER_DIR:03d}/f{i:06d}.dat"
        path = root / rel
        if i % PER_DIR == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        data = f"file {i} of {count}\n".encode() * 5
        with open(path, "wb") as f:
            f.write(data)
        digest = hashlib.md5(data).hexdigest()
        expected[rel] = digest
        rows.append((str(path), digest, ARCHIVE, rel, T0, 0, 1, 0))
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path,"
            " timestamp, failed_copy_attempts, deletable, ignore) VALUES (?,?,?,?,?,?,?,?)",
            rows)
    return expected


def test_run_once_verifies_30000_pending_files(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    remote = tmp_path / "remote"
    expected = pending_files(db, tmp_path / "local", COUNT)
    start = time.monotonic()
    result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--remote-basedir",
                     str(remote), "--db-path", str(db), "--suprsync-file-root",
                     str(tmp_path / "srfroot"), timeout=LIMIT)
    seconds = time.monotonic() - start
    print(f"suprsync run --once over {COUNT} files: {seconds:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    with sqlite3.connect(db) as conn:
        verified = dict(conn.execute(
            "SELECT remote_path, remote_md5sum FROM supersync_v0 WHERE archive_name = ?"
            " AND remote_md5sum = local_md5sum", (ARCHIVE,)).fetchall())
    assert verified == expected
    on_remote = sum(len(names) for _, _, names in os.walk(remote))
    assert on_remote == COUNT
    for rel in list(expected)[::9973]:
        assert hashlib.md5((remote / rel).read_bytes()).hexdigest() == expected[rel]
