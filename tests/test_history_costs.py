"""Work of an iteration that must not grow with the catalog's history: dirs held back
forever, the scan for late files of a new process, the sweep for quarantined rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import ARCHIVE, T0, Clock, catalog_agent, make_file, md5
from invariants import check_invariants
from sqlalchemy import event

from suprsync import SupRsyncFilesManager
from suprsync.catalog import timecode as tc_rules
from suprsync.catalog.lateness import SCAN_MARK_PREFIX
from suprsync.catalog.timecode import timecode_at
from suprsync.quarantine_log import MIN_SWEEP, QuarantineLog

NOW = 17000 * 1e5 + 40_000.0
COLUMNS = ("local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "failed_copy_attempts", "ignore")


def _rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(f"INSERT INTO supersync_v0 ({', '.join(COLUMNS)}, deletable) "
                     f"VALUES ({', '.join('?' * len(COLUMNS))}, 1)", rows)


def _row(remote: str, synced: bool = True, attempts: int = 0, ignore: int = 0) -> tuple:
    digest = md5(remote.encode())
    return (f"/data/{remote}", digest, ARCHIVE, remote, T0, digest if synced else None,
            attempts, ignore)


def _held_back_catalog(db: Path, n_dirs: int) -> SupRsyncFilesManager:
    """n_dirs completed dirs held back by a file at the attempt limit, one dir whose only
    unsynced file is ignored, one whose files are all verified."""
    manager = SupRsyncFilesManager(str(db))
    rows = []
    for n in range(n_dirs):
        rows += [_row(f"{16000 + n}/a.g3"), _row(f"{16000 + n}/b.g3", False, attempts=5)]
    rows += [_row("16900/a.g3"), _row("16900/b.g3", False, ignore=1), _row("16901/a.g3")]
    with sqlite3.connect(db) as conn:
        _rows(conn, rows)
    manager.create_all_timecode_dirs(ARCHIVE)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE timecode_dirs_v0 SET completed = 1")
    return manager


def _synced_and_statements(manager: SupRsyncFilesManager) -> tuple[list[int], int]:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(manager.engine, "before_cursor_execute", count)
    try:
        done = manager.write(lambda s: tc_rules.mark_synced(s, ARCHIVE))
    finally:
        event.remove(manager.engine, "before_cursor_execute", count)
    return sorted(done), len(statements)


def test_dirs_held_back_by_given_up_files_cost_the_same_however_many(tmp_path: Path) -> None:
    few = _held_back_catalog(tmp_path / "few.db", 3)
    many = _held_back_catalog(tmp_path / "many.db", 60)
    try:
        done_few, statements_few = _synced_and_statements(few)
        done_many, statements_many = _synced_and_statements(many)
    finally:
        few.close()
        many.close()
    # An ignored file holds nothing back; a file at the attempt limit holds its dir.
    assert done_few == done_many == [16900, 16901]
    assert statements_many == statements_few
    with sqlite3.connect(tmp_path / "many.db") as conn:
        held = conn.execute("SELECT count(*) FROM timecode_dirs_v0 WHERE synced = 0").fetchone()
    assert held[0] == 60


def _mark(db: Path) -> int | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM suprsync_meta_v0 WHERE key = ?",
                           (SCAN_MARK_PREFIX + ARCHIVE,)).fetchone()
    return None if row is None else int(row[0])


def _max_id(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT max(id) FROM supersync_v0").fetchone()[0])


def test_new_process_resumes_the_late_file_scan_at_the_recorded_mark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "catalog.db"
    clock = Clock(NOW)
    agent = catalog_agent(tmp_path, db, ARCHIVE, clock)
    old_tc = timecode_at(NOW) - 3
    for n in range(3):
        local = make_file(tmp_path / "data", f"{old_tc}/c1/{n}.g3", b"x%d" % n)
        agent.manager.add_file(str(local), f"{old_tc}/c1/{n}.g3", ARCHIVE, timestamp=NOW)
    for _ in range(3):
        assert agent.iterate()
        clock.advance(10)
    assert _mark(db) == _max_id(db)  # every row scanned, nothing late

    # A late file that cannot be copied yet: the mark stays below it.
    ghost = tmp_path / "data" / f"{old_tc}/c5/ghost.g3"
    late_id = agent.manager.add_file(str(ghost), f"{old_tc}/c5/ghost.g3", ARCHIVE,
                                     local_md5sum="0" * 32, timestamp=NOW).id
    for _ in range(2):
        assert agent.iterate()
    assert [f["file_id"] for f in agent.anomalies()["late_files"]] == [late_id]
    assert _mark(db) == late_id - 1
    agent.handler.close()
    agent.manager.close()

    # A new process starts its scan at the mark, not at the first row, and finds it.
    starts: list[int] = []
    real = tc_rules.find_late_files

    def spy(session: Any, archive_name: str, after_id: int = 0, **kw: Any) -> Any:
        starts.append(after_id)
        return real(session, archive_name, after_id=after_id, **kw)

    monkeypatch.setattr(tc_rules, "find_late_files", spy)
    again = catalog_agent(tmp_path, db, ARCHIVE, clock)
    try:
        assert again.iterate()
        assert starts[0] == late_id - 1
        assert [f["file_id"] for f in again.anomalies()["late_files"]] == [late_id]
    finally:
        again.handler.close()
        again.manager.close()
    check_invariants(db, {ARCHIVE: tmp_path / "remote" / ARCHIVE},
                     file_root=tmp_path / "suprsync-files", absent_ok=[ghost])


def test_quarantine_sweep_of_older_ids_follows_the_rows_added(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    manager = SupRsyncFilesManager(str(db))
    with sqlite3.connect(db) as conn:
        _rows(conn, [_row(f"17000/f{n}.g3") for n in range(3 * MIN_SWEEP)])
        conn.execute("UPDATE supersync_v0 SET timestamp = 'abc' WHERE id IN (500, 100)")
    watch = QuarantineLog(manager, ARCHIVE)
    try:
        # Few new rows: MIN_SWEEP older ids per check, from the newest down.
        assert watch.check() == [] and watch.check() == []
        assert [r["id"] for r in watch.check()] == [100, 500]
        # Many new rows: the sweep reads more older ids at once (4 per new row).
        with sqlite3.connect(db) as conn:
            _rows(conn, [_row(f"17001/f{n}.g3") for n in range(MIN_SWEEP)])
            conn.execute("UPDATE supersync_v0 SET timestamp = 'abc' WHERE id = 200")
        assert [r["id"] for r in watch.check()] == [200]
    finally:
        manager.close()
