"""Work of an iteration that must not grow with the catalog's history: dirs held back
forever, the scan for late files of a new process, the sweep for quarantined rows."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ARCHIVE, T0, md5
from sqlalchemy import event

from suprsync import SupRsyncFilesManager
from suprsync.catalog import timecode as tc_rules
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


def test_new_process_goes_on_with_the_backfill_of_timecode_dirs(tmp_path: Path) -> None:
    """Rows written by other programs get their dir rows, TC_SCAN_CHUNK older ids per
    call; a new manager goes on below where the last one stopped."""
    from suprsync.catalog.store import TC_SCAN_CHUNK

    db = tmp_path / "catalog.db"
    SupRsyncFilesManager(str(db)).close()
    # Ids 1..C in dir 16001, then C ids in 16002, then C in 16003.
    with sqlite3.connect(db) as conn:
        _rows(conn, [_row(f"{16001 + n // TC_SCAN_CHUNK}/f{n}.g3")
                     for n in range(3 * TC_SCAN_CHUNK)])

    def dirs() -> set[int]:
        with sqlite3.connect(db) as conn:
            return {r[0] for r in conn.execute("SELECT timecode FROM timecode_dirs_v0")}

    seen = []
    for _ in range(3):
        manager = SupRsyncFilesManager(str(db))
        try:
            manager.detect_timecode_dirs(ARCHIVE)
        finally:
            manager.close()
        seen.append(dirs())
    assert seen == [{16003}, {16002, 16003}, {16001, 16002, 16003}]


def _dir_16000_finalized(manager: SupRsyncFilesManager) -> list[int]:
    """Two files in dir 16000, finalized up to the second, and one in 16001; their ids."""
    from sqlalchemy import update

    from suprsync.catalog.schema import TimecodeDir

    ids = [manager.add_file(f"/data/{rel}", rel, ARCHIVE, local_md5sum=md5(rel.encode()),
                            timestamp=T0).id
           for rel in ("16000/a/1.g3", "16000/a/2.g3", "16001/a/1.g3")]
    manager.write(lambda s: s.execute(
        update(TimecodeDir).where(TimecodeDir.timecode == 16000)
        .values(completed=True, synced=True, finalized=True, finalize_file_id=ids[1])))
    return ids


def test_scan_of_new_ids_finds_a_late_file_on_each_backend(catalog_url: str) -> None:
    """The scan from a given id (what every iteration after the first reads) finds the
    late row of a finalized dir and nothing of a dir still open."""
    from suprsync.catalog.lateness import find_late_files

    manager = SupRsyncFilesManager(catalog_url)
    try:
        ids = _dir_16000_finalized(manager)
        late = manager.add_file("/data/16000/b/3.g3", "16000/b/3.g3", ARCHIVE,
                                local_md5sum="0" * 32, timestamp=T0).id
        manager.add_file("/data/16001/a/2.g3", "16001/a/2.g3", ARCHIVE,
                         local_md5sum="1" * 32, timestamp=T0)
        found = manager.read(lambda s: find_late_files(s, ARCHIVE, after_id=ids[0]))
        assert [(f.timecode, f.file_id) for f in found] == [(16000, late)]
        assert manager.read(lambda s: find_late_files(s, ARCHIVE, after_id=late)) == []
    finally:
        manager.close()



def record_late_scan_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids the timecode step's late-file scans start after, as they run."""
    from suprsync import finalization

    starts: list[int] = []
    real = finalization.find_late_files

    def recording(session: Any, archive_name: str, after_id: int = 0, **kw: Any) -> Any:
        starts.append(after_id)
        return real(session, archive_name, after_id=after_id, **kw)

    monkeypatch.setattr(finalization, "find_late_files", recording)
    return starts


def test_each_iteration_scans_for_late_files_only_what_it_has_not_read(
        catalog_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first look, the late-file scan starts exactly at the last id it read (on
    PostgreSQL that id is read once the registrations in flight have ended). A late
    file registered between the two is found."""
    from suprsync import finalization
    from suprsync.catalog.anomalies import DirWatch

    starts = record_late_scan_starts(monkeypatch)
    manager = SupRsyncFilesManager(catalog_url)
    try:
        _dir_16000_finalized(manager)
        watch = DirWatch(ARCHIVE)
        for _ in range(2):
            finalization.update_timecode_dirs(manager, ARCHIVE, str(tmp_path / "files"),
                                              "test", lambda: NOW, watch=watch)
        top = manager.max_file_id()
        late = manager.add_file("/data/16000/b/3.g3", "16000/b/3.g3", ARCHIVE,
                                local_md5sum="0" * 32, timestamp=T0).id
        finalization.update_timecode_dirs(manager, ARCHIVE, str(tmp_path / "files"),
                                          "test", lambda: NOW, watch=watch)
        assert starts[-1] == top, starts
        assert [f.file_id for f in watch.late.values()] == [late]
    finally:
        manager.close()


@dataclass
class OutOfOrder:
    """A PostgreSQL catalog with dir 16000 finalized and looked at once; then a
    producer's row of the dir (id ``early``) inserted in ``slow``'s open transaction,
    and a row with a higher id (``later``) committed."""

    manager: SupRsyncFilesManager
    slow: Any
    watch: Any
    files: str
    early: int
    later: int

    def step(self) -> None:
        """One timecode step of the archive."""
        from suprsync import finalization

        finalization.update_timecode_dirs(self.manager, ARCHIVE, self.files, "test",
                                          lambda: NOW, watch=self.watch)


@contextmanager
def out_of_order(pg: Any, tmp_path: Path) -> Iterator[OutOfOrder]:
    import psycopg

    from suprsync.catalog.anomalies import DirWatch

    url = "postgresql://" + pg.create_database().split("://", 1)[1]
    manager = SupRsyncFilesManager(url)
    slow = psycopg.connect(url)
    try:
        _dir_16000_finalized(manager)
        case = OutOfOrder(manager, slow, DirWatch(ARCHIVE), str(tmp_path / "files"), 0, 0)
        case.step()
        rel = "16000/b/early.g3"
        case.early = slow.execute(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, failed_copy_attempts) VALUES (%s, %s, %s, %s, %s, 0) RETURNING id",
            (f"/data/{rel}", md5(rel.encode()), ARCHIVE, rel, T0)).fetchone()[0]
        case.later = manager.add_file("/data/16000/b/later.g3", "16000/b/later.g3", ARCHIVE,
                                      local_md5sum="0" * 32, timestamp=T0).id
        assert case.later > case.early
        yield case
    finally:
        slow.close()
        manager.close()


def test_a_row_that_commits_after_higher_ids_is_still_scanned_for_lateness(
        pg: Any, tmp_path: Path) -> None:
    """PostgreSQL: a producer's row with a lower id commits after a row with a higher
    id, while the timecode step runs. The step waits for it before it reads where its
    scan ends, so the scan after it (which starts at that id) cannot pass the row by."""
    with out_of_order(pg, tmp_path) as case:
        running = threading.Thread(target=case.step)
        running.start()
        time.sleep(0.5)
        case.slow.commit()
        running.join(60)
        assert not running.is_alive()
        case.step()
        assert sorted(case.watch.late) == [case.early, case.later]
        assert case.watch.settled


def test_a_long_producer_transaction_is_waited_for_briefly_then_ids_are_read_again(
        pg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL: while a producer keeps a transaction writing the files table open,
    the timecode step waits SETTLE_WAIT for it, not longer: it scans without the
    settled bound, says so once, and the next scan reads RESCAN_IDS again, which
    finds the producer's row once it commits."""
    from suprsync import finalization
    from suprsync.catalog.lateness import RESCAN_IDS

    monkeypatch.setattr(finalization, "SETTLE_WAIT", 0.2)
    starts = record_late_scan_starts(monkeypatch)
    with out_of_order(pg, tmp_path) as case:
        with caplog.at_level("WARNING", logger="suprsync.finalization"):
            case.step()
            case.step()
        warned = [r for r in caplog.records if "has been open for more than" in r.message]
        assert len(warned) == 1, [r.message for r in caplog.records]
        assert not case.watch.settled
        assert sorted(case.watch.late) == [case.later]
        case.slow.commit()
        case.step()
        assert starts[-1] == max(0, case.later - RESCAN_IDS), starts
        assert sorted(case.watch.late) == [case.early, case.later]
        assert case.watch.settled
        case.step()
        assert starts[-1] == case.later, starts
