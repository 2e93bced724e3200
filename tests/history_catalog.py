"""A catalog with years of history, built in seconds: the shapes the query-plan tests use.

Most rows are synced and removed; one in ``STUCK_EVERY`` is unsynced at the attempt
limit, one in ``IGNORED_EVERY`` was given up on (ignored, never synced); every
timecode dir of the history is finalized, with its finalization file registered in
the next dir. A second, small archive shares the catalog. The newest dir is open,
with a few unsynced rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from suprsync.catalog.schema import INDEXES
from suprsync.catalog.store import SupRsyncFilesManager

ARCHIVE = "smurf"
#: A second archive sharing the catalog, with OTHER_EVERY-th of the rows.
OTHER = "satp1"
OTHER_EVERY = 50
INSTANCE = "suprsync-history"
#: Timecode of the open (newest) dir; the history covers the DIRS dirs before it.
OPEN_TC = 17300
DIRS = 300
STUCK_EVERY = 2000
IGNORED_EVERY = 2000
#: Unsynced rows of the open dir.
OPEN_ROWS = 20
#: max_copy_attempts of the stuck rows.
ATTEMPTS = 5

COLUMNS = ("id", "local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "copied", "removed", "failed_copy_attempts", "deletable", "ignore")


def _rows(n_rows: int) -> Iterator[tuple[Any, ...]]:
    first_tc = OPEN_TC - DIRS
    per_dir = n_rows // DIRS
    step = 100_000 / per_dir
    row_id = 0
    for d in range(DIRS):
        tc = first_tc + d
        for j in range(per_dir):
            row_id += 1
            ts = tc * 100_000 + j * step
            archive = OTHER if row_id % OTHER_EVERY == 0 else ARCHIVE
            rel = f"{tc}/ufm_mv{j % 7}/{int(ts)}_{j % 1000:03d}.g3"
            md5 = f"{row_id:032x}"
            local = f"/data/{archive}/{rel}"
            if row_id % STUCK_EVERY == 7:
                yield (row_id, local, md5, archive, rel, ts, None, None, None, ATTEMPTS, 1, 0)
            elif row_id % IGNORED_EVERY == 11:
                yield (row_id, local, md5, archive, rel, ts, None, None, None, 1, 1, 1)
            else:
                yield (row_id, local, md5, archive, rel, ts, md5, ts + 30, ts + 3600, 0, 1, 0)
        for archive in (ARCHIVE, OTHER):
            row_id += 1
            t = (tc + 1) * 100_000 + 600
            name = f"{int(t)}_{archive}_{tc}_finalized.yaml"
            rel = f"{tc + 1}/suprsync/{INSTANCE}/{name}"
            md5 = f"f{row_id:031x}"
            yield (row_id, f"/data/suprsync/{rel}", md5, archive, rel, t, md5, t + 30,
                   t + 3600, 0, 1, 0)
    for j in range(OPEN_ROWS):
        row_id += 1
        ts = OPEN_TC * 100_000 + j
        rel = f"{OPEN_TC}/ufm_mv1/{int(ts)}_{j:03d}.g3"
        yield (row_id, f"/data/{ARCHIVE}/{rel}", f"{row_id:032x}", ARCHIVE, rel, ts, None,
               None, None, 0, 1, 0)


def _dir_rows(fins: list[tuple[int, str, str]]) -> list[tuple[int, str, int, int, int, Any]]:
    """Timecode-dir rows: every dir of the history finalized, the open dirs not."""
    rows: list[tuple[int, str, int, int, int, Any]] = [
        (int(remote.rsplit("_", 2)[-2]), archive, 1, 1, 1, fid) for fid, archive, remote in fins]
    return rows + [(OPEN_TC, ARCHIVE, 0, 0, 0, None), (OPEN_TC, OTHER, 0, 0, 0, None)]


_FINS = ("SELECT id, archive_name, remote_path FROM supersync_v0 "
         "WHERE remote_path LIKE '%/suprsync/%'")
_DIR_COLUMNS = "timecode, archive_name, completed, synced, finalized, finalize_file_id"


def build_history_catalog(path: Path, n_rows: int) -> None:
    """Write the sqlite catalog at path with about n_rows rows, then open it with
    suprsync (which creates its indexes and extra tables)."""
    SupRsyncFilesManager(str(path)).close()
    conn = sqlite3.connect(path)
    try:
        for index in INDEXES:  # indexing once at the end is faster
            conn.execute(f"DROP INDEX IF EXISTS {index.name}")
        with conn:
            conn.executemany(f"INSERT INTO supersync_v0 ({', '.join(COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(COLUMNS))})", _rows(n_rows))
            conn.executemany(f"INSERT INTO timecode_dirs_v0 ({_DIR_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             _dir_rows(conn.execute(_FINS).fetchall()))
    finally:
        conn.close()
    SupRsyncFilesManager(str(path)).close()


def build_pg_history_catalog(url: str, n_rows: int) -> None:
    """The same history in a PostgreSQL database (COPY), indexed by suprsync, analyzed."""
    manager = SupRsyncFilesManager(url)
    try:
        with manager.engine.begin() as conn:
            for index in INDEXES:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
        raw = manager.engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY supersync_v0 ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in _rows(n_rows):
                    copy.write_row(row)
            dirs = _dir_rows(cur.execute(_FINS).fetchall())
            with cur.copy(f"COPY timecode_dirs_v0 ({_DIR_COLUMNS}) FROM STDIN") as copy:
                for dir_row in dirs:
                    copy.write_row(dir_row)
            cur.execute("SELECT setval(pg_get_serial_sequence('supersync_v0', 'id'), "
                        "(SELECT max(id) FROM supersync_v0))")
            raw.commit()
        finally:
            raw.close()
    finally:
        manager.close()
    manager = SupRsyncFilesManager(url)
    try:
        with manager.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "ANALYZE supersync_v0, timecode_dirs_v0")
    finally:
        manager.close()
