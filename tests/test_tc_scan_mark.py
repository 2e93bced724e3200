"""Timecode-dir detection resumes, in a new process, where the last one left off."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from suprsync import SupRsyncFilesManager
from suprsync.catalog import store, tcscan

ARCHIVE = "arch"


def _catalog(tmp_path: Path) -> Path:
    """30 rows written with plain SQL, 10 per dir 16001..16003 (ids 1..30), no dir rows."""
    db = tmp_path / "catalog.db"
    SupRsyncFilesManager(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO supersync_v0 (id, local_path, local_md5sum, archive_name, "
            "remote_path, timestamp) VALUES (?, ?, 'x', ?, ?, ?)",
            [(i, f"/d/{i}", ARCHIVE, f"{16001 + (i - 1) // 10}/f{i}", float(i))
             for i in range(1, 31)])
    return db


def _dirs(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return sorted(r[0] for r in conn.execute("SELECT timecode FROM timecode_dirs_v0"))


def _detect_in_new_manager(db: Path) -> int:
    manager = SupRsyncFilesManager(str(db))
    try:
        return manager.detect_timecode_dirs(ARCHIVE)
    finally:
        manager.close()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "TC_SCAN_CHUNK", 10)


def test_new_managers_go_back_through_the_history(tmp_path: Path) -> None:
    db = _catalog(tmp_path)
    assert _detect_in_new_manager(db) == 1  # ids 21..30
    assert _dirs(db) == [16003]
    assert _detect_in_new_manager(db) == 1  # ids 11..20, not 21..30 again
    assert _dirs(db) == [16002, 16003]
    assert _detect_in_new_manager(db) == 1
    assert _dirs(db) == [16001, 16002, 16003]
    assert _detect_in_new_manager(db) == 0


def test_rows_added_between_processes_are_scanned(tmp_path: Path) -> None:
    db = _catalog(tmp_path)
    _detect_in_new_manager(db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO supersync_v0 (id, local_path, local_md5sum, archive_name, "
                     "remote_path, timestamp) VALUES (31, '/d/31', 'x', ?, '16009/f', 31)",
                     (ARCHIVE,))
    assert _detect_in_new_manager(db) == 2  # the new row's dir, and ids 11..20
    assert _dirs(db) == [16002, 16003, 16009]


def test_a_deletion_or_a_damaged_value_starts_afresh(tmp_path: Path) -> None:
    db = _catalog(tmp_path)
    _detect_in_new_manager(db)
    _detect_in_new_manager(db)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM timecode_dirs_v0")
        conn.execute("DELETE FROM supersync_v0 WHERE id = 5")  # raises the deletion mark
    assert _detect_in_new_manager(db) == 1  # the newest ids again
    assert _dirs(db) == [16003]
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM timecode_dirs_v0")
        conn.execute("UPDATE suprsync_meta_v0 SET value = 'not json' WHERE key = ?",
                     (tcscan.PREFIX + ARCHIVE,))
    assert _detect_in_new_manager(db) == 1
    assert _dirs(db) == [16003]


def test_rows_scanned_after_the_kept_range_are_scanned_again(tmp_path: Path) -> None:
    """The range is brought forward every STORE_STEP rows: a new process rescans the rest."""
    db = _catalog(tmp_path)
    for _ in range(4):
        _detect_in_new_manager(db)
    manager = SupRsyncFilesManager(str(db))
    try:
        manager.detect_timecode_dirs(ARCHIVE)
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO supersync_v0 (id, local_path, local_md5sum, "
                         "archive_name, remote_path, timestamp) "
                         "VALUES (31, '/d/31', 'x', ?, '16009/f', 31)", (ARCHIVE,))
        assert manager.detect_timecode_dirs(ARCHIVE) == 1
        with manager.Session() as session:
            assert tcscan.stored_range(session, ARCHIVE, 31) == (0, 30)  # one row: not kept
    finally:
        manager.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM timecode_dirs_v0 WHERE timecode = 16009")
    assert _detect_in_new_manager(db) == 1
    assert _dirs(db) == [16001, 16002, 16003, 16009]
