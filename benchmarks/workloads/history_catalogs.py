"""Catalogs with a long history for the history workload, built with plain SQL.

A *shape* says how the old rows lie: how many rows a timecode dir holds, whether
some files were given up on, how many archives share the catalog. The rows are
written once per run with ``executemany`` (sqlite) or ``COPY`` (PostgreSQL) into a
template, in the state a long-running agent leaves a catalog in, and the template
is copied for every repetition.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import ARCHIVE, INSTANCE_ID, checkpoint, empty_catalog, now_tc

#: Columns of the files table written for each old row.
COLUMNS = ("id", "local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "copied", "removed", "failed_copy_attempts", "deletable", "ignore")
TD_COLUMNS = ("timecode", "archive_name", "completed", "synced", "finalized",
              "finalize_file_id")
#: Seconds of a timecode dir.
TC_SECONDS = 100_000
#: The attempt limit of the agents (files at it are never tried again).
MAX_ATTEMPTS = 5
#: The other archives of a shared catalog.
OTHER_ARCHIVES = ("smurf-b", "smurf-c", "smurf-d")


@dataclass(frozen=True)
class Shape:
    """How the old rows of a history catalog lie."""

    key: str
    #: Short name in the table.
    name: str
    #: Rows per timecode dir (of each archive).
    dir_rows: int
    #: One old row in ``stuck_every`` was given up on: alternately at the attempt limit
    #: (never synced, not removed: its dir never syncs) and ignored. 0: none.
    stuck_every: int = 0
    #: Archives sharing the catalog (the agent's and OTHER_ARCHIVES[:n - 1]).
    archives: int = 1

    def archive_names(self) -> tuple[str, ...]:
        return (ARCHIVE, *OTHER_ARCHIVES[:self.archives - 1])

    def describe(self) -> str:
        parts = [f"dirs of {self.dir_rows:,} rows"]
        parts.append("0.1 % given up (attempt limit or ignored)" if self.stuck_every
                     else "every row synced and removed")
        if self.archives > 1:
            parts.append(f"{self.archives} archives share the catalog")
        return ", ".join(parts)


SHAPES = (
    Shape("a", "synced", 2_740),
    Shape("b", "0.1% given up", 2_740, stuck_every=1000),
    Shape("c", "40k-row dirs", 40_000),
    Shape("d", "3k-row dirs", 3_000),
    Shape("e", "4 archives", 2_740, archives=4),
)


def history_rows(shape: Shape, n_rows: int, end: float, scale: float = 1.0,
                 ) -> tuple[Iterator[tuple], Callable[[], list[tuple]]]:
    """(old file rows in id order, timecode-dir rows) of a shape.

    The rows of each archive are evenly spaced in time, ``dir_rows`` per dir, and end
    at ``end``, in today's dir; the archives register in turn. Every dir but today's
    is completed; it is finalized (its finalization file registered, synced and
    removed, in the next dir) unless it holds a file at the attempt limit. ``scale``
    shrinks the dirs (quick runs). The dir rows are read from the second element
    once the first is exhausted (they need the finalization files' ids).
    """
    archives = shape.archive_names()
    per_archive = n_rows // len(archives)
    dir_rows = max(1, int(shape.dir_rows * scale))
    step = TC_SECONDS / dir_rows
    start = end - per_archive * step
    current = now_tc(end)
    first_tc = int(start // TC_SECONDS)
    tcs = list(range(first_tc, current + 1))
    stuck_tcs: set[tuple[str, int]] = set()
    if shape.stuck_every:
        for j in range(per_archive):
            if j % shape.stuck_every == shape.stuck_every - 1 and \
                    (j // shape.stuck_every) % 2 == 0:
                stuck_tcs.update((a, int((start + j * step) // TC_SECONDS)) for a in archives)
    fin_ids: dict[tuple[str, int], int] = {}
    # Finalization files: written 10 minutes into the next dir (or at the end).
    pending = sorted((min((tc + 1) * TC_SECONDS + 600, end), a, tc)
                     for a in archives for tc in tcs[:-1] if (a, tc) not in stuck_tcs)

    def rows() -> Iterator[tuple]:
        row_id = 0
        p = 0
        for j in range(per_archive):
            ts = start + j * step
            for archive in archives:
                while p < len(pending) and pending[p][0] <= ts:
                    t_fin, a_fin, tc_fin = pending[p]
                    p += 1
                    row_id += 1
                    fin_ids[(a_fin, tc_fin)] = row_id
                    yield _fin_row(row_id, t_fin, a_fin, tc_fin, end)
                tc = int(ts // TC_SECONDS)
                rel = f"{tc}/ufm_mv{j % 7}/{int(ts)}_{j % 1000:03d}.g3"
                md5 = f"{row_id + 1:032x}"
                local = f"/data/{archive}/{rel}"
                row_id += 1
                if shape.stuck_every and j % shape.stuck_every == shape.stuck_every - 1:
                    if (j // shape.stuck_every) % 2 == 0:
                        yield (row_id, local, md5, archive, rel, ts, None, None, None,
                               MAX_ATTEMPTS, 1, 0)
                    else:
                        yield (row_id, local, md5, archive, rel, ts, None, None, None, 0, 1, 1)
                    continue
                yield (row_id, local, md5, archive, rel, ts, md5, ts + 30,
                       min(ts + 86_400, end), 0, 1, 0)
        for t_fin, a_fin, tc_fin in pending[p:]:
            row_id += 1
            fin_ids[(a_fin, tc_fin)] = row_id
            yield _fin_row(row_id, t_fin, a_fin, tc_fin, end)

    def dirs() -> list[tuple]:
        out = []
        for archive in archives:
            for tc in tcs:
                if tc == current:
                    out.append((tc, archive, 0, 0, 0, None))
                elif (archive, tc) in stuck_tcs:
                    out.append((tc, archive, 1, 0, 0, None))
                else:
                    out.append((tc, archive, 1, 1, 1, fin_ids[(archive, tc)]))
        return out

    return rows(), dirs


def _fin_row(row_id: int, t: float, archive: str, tc: int, end: float) -> tuple:
    name = f"{int(t)}_{archive}_{tc}_finalized.yaml"
    rel = f"{int(t // TC_SECONDS)}/suprsync/{INSTANCE_ID}/{name}"
    md5 = f"f{row_id:031x}"
    return (row_id, f"/data/suprsync/{rel}", md5, archive, rel, t, md5, t + 30,
            min(t + 86_400, end), 0, 1, 0)


def _meta_rows(top: int, archives: tuple[str, ...]) -> list[tuple[str, str]]:
    """What a long-running agent has recorded: every id scanned for odd path spellings
    and, per archive, for late files."""
    from suprsync.catalog.lateness import SCAN_MARK_PREFIX
    from suprsync.catalog.pathkeys import BACKFILLED_KEY, SCANNED_KEY

    return [(SCANNED_KEY, str(top)), (BACKFILLED_KEY, "1"),
            *((SCAN_MARK_PREFIX + a, str(top)) for a in archives)]


def build_sqlite(path: Path, shape: Shape, n_rows: int, end: float,
                 scale: float = 1.0) -> dict[str, Any]:
    """A sqlite catalog of a shape, with suprsync's indexes; its row counts."""
    from suprsync.catalog.schema import INDEXES, CatalogMeta, TimecodeDir
    from suprsync.catalog.store import SupRsyncFilesManager

    empty_catalog(path)
    conn = sqlite3.connect(path)
    try:
        for index in INDEXES:  # faster to index once at the end; the manager re-creates them
            conn.execute(f"DROP INDEX IF EXISTS {index.name}")
        rows, dirs = history_rows(shape, n_rows, end, scale)
        with conn:
            conn.executemany(f"INSERT INTO supersync_v0 ({', '.join(COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            conn.executemany(f"INSERT INTO {TimecodeDir.__tablename__} "
                             f"({', '.join(TD_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)", dirs())
            top = conn.execute("SELECT max(id) FROM supersync_v0").fetchone()[0] or 0
            conn.executemany(f"INSERT INTO {CatalogMeta.__tablename__} (key, value) "
                             "VALUES (?, ?)", _meta_rows(top, shape.archive_names()))
        total = conn.execute("SELECT count(*) FROM supersync_v0").fetchone()[0]
        n_dirs = conn.execute(f"SELECT count(*) FROM {TimecodeDir.__tablename__}").fetchone()[0]
    finally:
        conn.close()
    SupRsyncFilesManager(str(path)).close()  # re-creates suprsync's indexes
    checkpoint(path)
    return {"rows": total, "timecode_dirs": n_dirs, "mb": round(path.stat().st_size / 2**20)}


def _pg_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return f"host={u.host} port={u.port} user={u.username} dbname={u.database}"


def build_postgresql(url: str, shape: Shape | None, n_rows: int, end: float,
                     scale: float = 1.0) -> dict[str, Any]:
    """Fill an empty PostgreSQL database with a shape's rows (None: leave it empty).

    The rows go in with COPY, indexes are made afterwards, the sequences are moved
    past the ids written, and the tables are analyzed (as autovacuum has done on a
    catalog in use for years).
    """
    import psycopg

    from suprsync.catalog.schema import INDEXES, CatalogMeta, SupRsyncFile, TimecodeDir
    from suprsync.catalog.store import SupRsyncFilesManager

    SupRsyncFilesManager(url).close()
    files, tds = SupRsyncFile.__tablename__, TimecodeDir.__tablename__
    with psycopg.connect(_pg_conninfo(url), autocommit=True) as conn:
        if shape is not None:
            for index in INDEXES:
                conn.execute(f"DROP INDEX IF EXISTS {index.name}")
            rows, dirs = history_rows(shape, n_rows, end, scale)
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY {files} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                with cur.copy(f"COPY {tds} ({', '.join(TD_COLUMNS)}) FROM STDIN") as copy:
                    for row in dirs():
                        copy.write_row(row)
                for table in (files, tds):
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"(SELECT coalesce(max(id), 1) FROM {table}))")
                top = cur.execute(f"SELECT coalesce(max(id), 0) FROM {files}").fetchone()
                cur.executemany(f"INSERT INTO {CatalogMeta.__tablename__} (key, value) "
                                "VALUES (%s, %s)",
                                _meta_rows(int(top[0]) if top else 0, shape.archive_names()))
        SupRsyncFilesManager(url).close()  # re-creates suprsync's indexes
        conn.execute("VACUUM ANALYZE")
        total = conn.execute(f"SELECT count(*) FROM {files}").fetchone()
        n_dirs = conn.execute(f"SELECT count(*) FROM {tds}").fetchone()
    return {"rows": total[0] if total else 0, "timecode_dirs": n_dirs[0] if n_dirs else 0}
