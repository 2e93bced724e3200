"""The catalog on both backends: every test runs on sqlite and on a real PostgreSQL server.

Rows are changed behind the manager's back with plain SQL through SQLAlchemy core, as
another program writing to the catalog would.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from helpers import (
    ARCHIVE,
    AddFn,
    Clock,
    catalog_agent,
    file_adder,
    ids,
    make_file,
    managed,
    md5,
)
from sqlalchemy import event, text

from suprsync import SupRsyncFilesManager
from suprsync.catalog import filecount, maintenance, pathkeys
from suprsync.catalog.conflicts import list_conflicts, pinned_ids
from suprsync.catalog.pathkeys import partners, scan_path_keys
from suprsync.catalog.store import CopyResult
from suprsync.catalog.timecode import dir_states, timecode_at

OTHER = "smurf"
#: A fixed "now" in the middle of timecode 17000.
NOW = 17000 * 1e5 + 40_000.0
NOW_TC = timecode_at(NOW)


def sql(manager: SupRsyncFilesManager, query: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement with SQLAlchemy core on the manager's database and commit."""
    with manager.engine.begin() as conn:
        result = conn.execute(text(query), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def set_row(manager: SupRsyncFilesManager, file_id: int, **values: Any) -> None:
    """Set columns of one supersync_v0 row with plain SQL."""
    assignments = ", ".join(f'"{k}" = :{k}' for k in values)
    sql(manager, f"UPDATE supersync_v0 SET {assignments} WHERE id = :file_id", **values,
        file_id=file_id)


def mark_synced(manager: SupRsyncFilesManager, file_id: int) -> None:
    """Make a row synced: remote checksum equal to the local one."""
    sql(manager, "UPDATE supersync_v0 SET remote_md5sum = local_md5sum WHERE id = :i", i=file_id)


def insert_plain(manager: SupRsyncFilesManager, local: Path, remote: str, archive: str,
                 timestamp: float) -> int:
    """Insert a row with only the NOT NULL columns, as a foreign writer may; return its id."""
    sql(manager, "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                 "remote_path, timestamp) VALUES (:l, :m, :a, :r, :t)",
        l=str(local), m=md5(local.read_bytes()), a=archive, r=remote, t=timestamp)
    return sql(manager, "SELECT max(id) FROM supersync_v0")[0][0]


def db_flags(catalog: str) -> list[str]:
    """How `suprsync run` is told the catalog: --db-url for a URL, --db-path for a file."""
    return ["--db-url", catalog] if "://" in catalog else ["--db-path", catalog]


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def manager(catalog_url: str, clock: Clock) -> Iterator[SupRsyncFilesManager]:
    """A manager on a fresh catalog of the backend under test, driven by the test clock."""
    yield from managed(catalog_url, clock)


@pytest.fixture
def add(manager: SupRsyncFilesManager, tmp_path: Path) -> AddFn:
    """Register a real file at a given timestamp; return its row id."""
    return file_adder(manager, tmp_path / "local")


# ------------------------------------------------------------------ add_file


def test_add_file_stores_row_and_creates_its_timecode_dir(
    manager: SupRsyncFilesManager, tmp_path: Path, clock: Clock
) -> None:
    """add_file stores the md5, the clock's time, defaults and the dir row of its timecode."""
    content = b"payload\n" * 100
    local = make_file(tmp_path, "a.g3", content)
    row = manager.add_file(str(local), "16750//sub/./a.g3", ARCHIVE)
    kept = manager.add_file(str(make_file(tmp_path, "b.g3")), "16750/b.g3", ARCHIVE,
                            deletable=False, timestamp=123.5)
    got = sql(manager, "SELECT id, local_path, local_md5sum, archive_name, remote_path, "
                       "timestamp, remote_md5sum, copied, removed, failed_copy_attempts, "
                       "deletable, ignore FROM supersync_v0 ORDER BY id")
    assert got == [
        (row.id, str(local), md5(content), ARCHIVE, "16750/sub/a.g3", clock.now, None, None,
         None, 0, True, False),
        (kept.id, str(tmp_path / "b.g3"), md5((tmp_path / "b.g3").read_bytes()), ARCHIVE,
         "16750/b.g3", 123.5, None, None, None, 0, False, False),
    ]
    assert sql(manager, "SELECT timecode, archive_name, completed, synced, finalized, "
                        "finalize_file_id FROM timecode_dirs_v0") == [
        (16750, ARCHIVE, False, False, False, None)]


@pytest.mark.parametrize(
    "remote",
    ["/abs/16750/f.g3", "", "16750/../../f.g3", "../f.g3", "16750/sub/..", "16750/sub/",
     "16750/f\x00.g3"],
    ids=["absolute", "empty", "dotdot-inside", "dotdot-first", "dotdot-last", "directory",
         "nul"],
)
def test_add_file_rejects_bad_remote_path(
    manager: SupRsyncFilesManager, tmp_path: Path, remote: str
) -> None:
    """A remote path that is empty, absolute, a dir, climbs with '..' or holds NUL: ValueError."""
    local = make_file(tmp_path, "f.g3")
    with pytest.raises(ValueError):
        manager.add_file(str(local), remote, ARCHIVE)
    assert sql(manager, "SELECT count(*) FROM supersync_v0") == [(0,)]
    assert sql(manager, "SELECT count(*) FROM timecode_dirs_v0") == [(0,)]


# ---------------------------------------------------------------- selections


def test_copyable_excludes_removed_ignored_synced_and_exhausted(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """Removed, ignored, synced and at/above-limit files are never copyable."""
    plain = add(100)
    removed = add(101)
    set_row(manager, removed, removed=5.0)
    removed_zero = add(102)
    set_row(manager, removed_zero, removed=0.0)
    ignored = add(103)
    set_row(manager, ignored, ignore=True)
    synced = add(104)
    mark_synced(manager, synced)
    mismatch = add(105)
    set_row(manager, mismatch, remote_md5sum="0" * 32, failed_copy_attempts=1)
    at_limit = add(106)
    set_row(manager, at_limit, failed_copy_attempts=3)
    above_limit = add(107)
    set_row(manager, above_limit, failed_copy_attempts=9)
    below_limit = add(108)
    set_row(manager, below_limit, failed_copy_attempts=2)

    assert ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=3)) == [
        plain, mismatch, below_limit]
    assert ids(manager.get_copyable_files(ARCHIVE)) == [
        plain, mismatch, at_limit, above_limit, below_limit]


def test_plain_sql_row_with_null_defaults_is_copyable_then_deletable(
    manager: SupRsyncFilesManager, tmp_path: Path, clock: Clock
) -> None:
    """NULL attempts count as 0, NULL ignore as not ignored, NULL deletable as deletable."""
    local = make_file(tmp_path, "plain.g3")
    plain = insert_plain(manager, local, "16750/plain.g3", ARCHIVE, clock.now - 500)
    assert sql(manager, "SELECT failed_copy_attempts, deletable, ignore, remote_md5sum "
                        "FROM supersync_v0") == [(None, None, None, None)]
    assert ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=1)) == [plain]
    assert manager.get_deletable_files(ARCHIVE, 100) == []
    mark_synced(manager, plain)
    assert manager.get_copyable_files(ARCHIVE) == []
    assert ids(manager.get_deletable_files(ARCHIVE, 100)) == [plain]
    assert manager.get_archive_stats(ARCHIVE)["uncopied_files"] == 0


def test_copyable_oldest_first_and_num_files_takes_the_oldest(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """Copyable files come back by timestamp (then id), at most num_files of them."""
    stamps = [500, 100, 400, 200, 300, 100]
    by_order = [add(t) for t in stamps]
    expected = [by_order[1], by_order[5], by_order[3], by_order[4], by_order[2], by_order[0]]
    assert ids(manager.get_copyable_files(ARCHIVE)) == expected
    assert ids(manager.get_copyable_files(ARCHIVE, num_files=3)) == expected[:3]
    assert ids(manager.get_copyable_files(ARCHIVE, num_files=100)) == expected


def test_deletable_selection(manager: SupRsyncFilesManager, add: AddFn, clock: Clock) -> None:
    """Only synced, deletable (NULL counts), not removed files older than delete_after."""
    now = clock.now
    old_synced = add(now - 500)
    null_deletable = add(now - 400)
    set_row(manager, null_deletable, deletable=None)
    young_synced = add(now - 50)
    add(now - 600)  # old but unsynced
    keep_local = add(now - 700, deletable=False)
    removed = add(now - 800)
    set_row(manager, removed, removed=now - 10)
    mismatch = add(now - 900)
    set_row(manager, mismatch, remote_md5sum="f" * 32)
    for fid in (old_synced, null_deletable, young_synced, keep_local, removed):
        mark_synced(manager, fid)

    assert ids(manager.get_deletable_files(ARCHIVE, 100)) == [old_synced, null_deletable]
    assert ids(manager.get_deletable_files(ARCHIVE, 100, limit=1)) == [old_synced]
    clock.now += 1000
    assert ids(manager.get_deletable_files(ARCHIVE, 100)) == [
        old_synced, null_deletable, young_synced]


def test_known_files_after_min_ctime_oldest_first(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """Known files: every row with timestamp > min_ctime (whatever its state), oldest first."""
    t300 = add(300)
    t100 = add(100)
    t150 = add(150)
    t200 = add(200)
    set_row(manager, t200, removed=1.0, ignore=True)
    mark_synced(manager, t300)
    assert ids(manager.get_known_files(ARCHIVE, min_ctime=150)) == [t200, t300]
    assert ids(manager.get_known_files(ARCHIVE)) == [t100, t150, t200, t300]


def test_archives_are_independent(
    manager: SupRsyncFilesManager, add: AddFn, clock: Clock
) -> None:
    """Files of one archive never show up in another archive's selections or stats."""
    a_synced = add(1000, archive=ARCHIVE)
    mark_synced(manager, a_synced)
    b_old = add(10, archive=OTHER)
    b_synced = add(20, archive=OTHER)
    mark_synced(manager, b_synced)
    b_new = add(5000, archive=OTHER)

    assert manager.get_copyable_files(ARCHIVE) == []
    assert ids(manager.get_deletable_files(ARCHIVE, 0)) == [a_synced]
    assert ids(manager.get_known_files(ARCHIVE)) == [a_synced]
    assert manager.get_finalized_until(ARCHIVE) == clock.now

    assert ids(manager.get_known_files(OTHER)) == [b_old, b_synced, b_new]
    assert ids(manager.get_copyable_files(OTHER)) == [b_old, b_new]
    assert ids(manager.get_deletable_files(OTHER, 0)) == [b_synced]
    assert manager.get_finalized_until(OTHER) == 9
    assert manager.archives() == sorted([ARCHIVE, OTHER])


def test_archive_stats_values(manager: SupRsyncFilesManager, add: AddFn, clock: Clock) -> None:
    """num_files, uncopied_files (ignored left out), last added/copied, finalized_until."""
    empty = manager.get_archive_stats(ARCHIVE)
    assert empty == {"finalized_until": clock.now, "num_files": 0, "uncopied_files": 0,
                     "last_file_added": "", "last_file_copied": ""}
    first = add(100)
    second = add(200)
    third = add(300)
    ignored = add(50)
    set_row(manager, ignored, ignore=True)
    add(1, archive=OTHER)
    mark_synced(manager, second)
    paths = dict(sql(manager, "SELECT id, local_path FROM supersync_v0"))

    stats = manager.get_archive_stats(ARCHIVE)
    assert stats == {"finalized_until": 99.0, "num_files": 4, "uncopied_files": 2,
                     "last_file_added": paths[third], "last_file_copied": paths[second]}
    mark_synced(manager, first)
    mark_synced(manager, third)
    stats = manager.get_archive_stats(ARCHIVE)
    assert stats["uncopied_files"] == 0
    assert stats["finalized_until"] == clock.now
    assert stats["last_file_copied"] == paths[third]


def num_files(catalog: str, clock: Clock, archive: str = ARCHIVE) -> int:
    """num_files as a fresh manager (a new process) reports it."""
    fresh = SupRsyncFilesManager(catalog, clock=clock)
    try:
        return fresh.get_archive_stats(archive)["num_files"]
    finally:
        fresh.close()


def wait_for(fn: Any, expected: Any, timeout: float = 15.0) -> Any:
    """fn() once it returns expected (PostgreSQL publishes deletions to its statistics
    views within about a second), or its last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    while (got := fn()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def test_num_files_is_kept_in_the_catalog_and_follows_other_programs(
    manager: SupRsyncFilesManager, add: AddFn, catalog_url: str, clock: Clock,
    tmp_path: Path
) -> None:
    """A fresh manager takes num_files from the count the catalog keeps, without counting
    the archive again, and adds rows other programs inserted; rows others delete or move
    to another archive are counted again, in this manager and in a fresh one."""
    rows = [add(100 + t) for t in range(6)]
    add(1, archive=OTHER)
    assert manager.get_archive_stats(ARCHIVE)["num_files"] == 6
    counts: list[str] = []

    def listen(_conn, _cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001
        if "count(" in statement and "supersync_v0" in statement:
            counts.append(statement)

    fresh = SupRsyncFilesManager(catalog_url, clock=clock)
    event.listen(fresh.engine, "before_cursor_execute", listen)
    try:
        assert fresh.get_archive_stats(ARCHIVE)["num_files"] == 6
        insert_plain(manager, make_file(tmp_path, "plain.g3"), "16750/plain.g3", ARCHIVE, 7.0)
        assert fresh.get_archive_stats(ARCHIVE)["num_files"] == 7
    finally:
        fresh.close()
    archive_wide = [c for c in counts if " > " not in c and "remote_md5sum" not in c]
    assert archive_wide == [], archive_wide

    sql(manager, "DELETE FROM supersync_v0 WHERE id IN (:a, :b)", a=rows[0], b=rows[1])
    assert wait_for(lambda: manager.get_archive_stats(ARCHIVE)["num_files"], 5) == 5
    assert num_files(catalog_url, clock) == 5
    sql(manager, "UPDATE supersync_v0 SET archive_name = :o WHERE id = :i", o=OTHER,
        i=rows[2])
    clock.advance(filecount.FULL_COUNT_INTERVAL + 1)  # PostgreSQL has no mark of a move
    assert manager.get_archive_stats(ARCHIVE)["num_files"] == 4
    assert num_files(catalog_url, clock) == 4
    assert num_files(catalog_url, clock, OTHER) == 2


def test_a_count_others_garbled_is_counted_again(
    manager: SupRsyncFilesManager, add: AddFn, catalog_url: str, clock: Clock
) -> None:
    """A kept count that is not what suprsync wrote is ignored: the archive is counted."""
    for t in range(3):
        add(100 + t)
    assert manager.get_archive_stats(ARCHIVE)["num_files"] == 3
    for value in ("not json", '{"top": 99, "rows": "x", "mark": null, "counted_at": 1}',
                  '{"top": 1}', None):
        sql(manager, "UPDATE suprsync_meta_v0 SET value = :v WHERE key = :k", v=value,
            k=filecount.COUNT_PREFIX + ARCHIVE)
        assert num_files(catalog_url, clock) == 3


def test_finalized_until_is_just_before_the_oldest_unsynced_non_ignored_file(
    manager: SupRsyncFilesManager, add: AddFn, clock: Clock
) -> None:
    """Now when all is synced; else the oldest unsynced non-ignored timestamp minus 1."""
    assert manager.get_finalized_until(ARCHIVE) == clock.now
    old_ignored = add(100)
    set_row(manager, old_ignored, ignore=True)
    middle = add(250.5)
    add(400)
    assert manager.get_finalized_until(ARCHIVE) == 249.5
    mark_synced(manager, middle)
    assert manager.get_finalized_until(ARCHIVE) == 399
    add(10, archive=OTHER)
    assert manager.get_finalized_until(ARCHIVE) == 399


# ------------------------------------------------------------ timecode dirs


def tc_states(manager: SupRsyncFilesManager, archive: str) -> dict[str, list[int]]:
    return manager.read(lambda s: dir_states(s, archive))


def test_timecode_dirs_of_rows_given_the_ids_of_deleted_newest_rows_are_detected(
    manager: SupRsyncFilesManager, tmp_path: Path
) -> None:
    """Another program deletes the newest rows, and sqlite gives their ids to the next
    registrations, below the last id detection read: their dirs are still detected, by
    this manager and by a new one."""
    local = make_file(tmp_path, "w.g3", b"w")
    insert_plain(manager, local, "16750/a.g3", ARCHIVE, 100.0)
    gone = [insert_plain(manager, local, f"16750/{n}.g3", ARCHIVE, 100.0) for n in "bc"]
    assert manager.detect_timecode_dirs(ARCHIVE) == 1
    sql(manager, f"DELETE FROM supersync_v0 WHERE id IN ({gone[0]}, {gone[1]})")
    new = insert_plain(manager, local, "16751/d.g3", ARCHIVE, 200.0)
    for n in "efg":
        insert_plain(manager, local, f"16750/{n}.g3", ARCHIVE, 100.0)
    if manager.dialect.reuses_ids:
        assert new == gone[0]
    assert manager.detect_timecode_dirs(ARCHIVE) == 1
    assert tc_states(manager, ARCHIVE)["open"] == [16750, 16751]
    # The same for a new process, which reads how far detection got from the catalog.
    top = manager.max_file_id()
    sql(manager, f"DELETE FROM supersync_v0 WHERE id IN ({top - 1}, {top})")
    again = SupRsyncFilesManager(manager.db_path)
    try:
        fresh = [insert_plain(again, local, rel, ARCHIVE, 300.0)
                 for rel in ("16752/h.g3", "16752/i.g3", "16750/j.g3")]
        if manager.dialect.reuses_ids:
            assert fresh[0] == top - 1
        assert again.detect_timecode_dirs(ARCHIVE) == 1
    finally:
        again.close()
    assert 16752 in tc_states(manager, ARCHIVE)["open"]


def test_a_newest_row_put_back_unchanged_does_not_hide_the_new_rows_below_it(
    manager: SupRsyncFilesManager, tmp_path: Path
) -> None:
    """The newest rows are deleted, a new row takes the first free id and the last of
    them is put back exactly as it was, at its old id: the new row is still read by
    timecode detection and by the spelling records."""
    local = make_file(tmp_path, "v.g3", b"v")
    insert_plain(manager, local, "16000/a.g3", ARCHIVE, 1.0)
    insert_plain(manager, local, "16000/b.g3", ARCHIVE, 2.0)
    last = insert_plain(manager, local, "16000/c.g3", ARCHIVE, 3.0)
    assert manager.detect_timecode_dirs(ARCHIVE) == 1
    manager.write(scan_path_keys)
    sql(manager, f"DELETE FROM supersync_v0 WHERE id >= {last - 1}")
    new = insert_plain(manager, local, "17000//new.g3", ARCHIVE, 9.0)
    back = insert_plain(manager, local, "16000/c.g3", ARCHIVE, 3.0)
    if manager.dialect.reuses_ids:
        assert (new, back) == (last - 1, last)
    assert manager.detect_timecode_dirs(ARCHIVE) == 1
    manager.write(scan_path_keys)
    assert {p.id for p in manager.read(lambda s: partners(s, ARCHIVE, ["17000/new.g3"]))} \
        == {new}


def test_a_producer_rewriting_its_newest_row_costs_no_reading_again(
    manager: SupRsyncFilesManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a deletion that lowers the highest id lets sqlite give an id again: changing
    the newest row, or deleting older rows, leaves the scans where they were."""
    local = make_file(tmp_path, "u.g3", b"u")
    first = insert_plain(manager, local, "16000/a.g3", ARCHIVE, 1.0)
    last = insert_plain(manager, local, "16000/b.g3", ARCHIVE, 2.0)
    manager.detect_timecode_dirs(ARCHIVE)
    sql(manager, f"UPDATE supersync_v0 SET timestamp = 5.0, remote_path = '16000/bb.g3' "
                 f"WHERE id = {last}")
    sql(manager, f"DELETE FROM supersync_v0 WHERE id = {first}")
    insert_plain(manager, local, "16001/c.g3", ARCHIVE, 3.0)
    with caplog.at_level(logging.WARNING):
        assert manager.detect_timecode_dirs(ARCHIVE) == 1
    assert not [r for r in caplog.records if "newest rows" in r.getMessage()]


def test_timecode_dirs_detected_and_rebuilt_per_archive(
    manager: SupRsyncFilesManager, tmp_path: Path
) -> None:
    """Rows written with plain SQL get dir rows by detection or by a full rebuild, once."""
    for i, (rel, archive, stamp) in enumerate([
        ("16750/a/x.g3", ARCHIVE, 100.0), ("16750/b/y.g3", ARCHIVE, 110.0),
        ("16751/z.g3", ARCHIVE, 120.0), ("16751/z.g3", OTHER, 130.0),
        ("16749/old.g3", OTHER, 5.0), ("no_timecode/w.g3", ARCHIVE, 140.0),
    ]):
        insert_plain(manager, make_file(tmp_path, f"p{i}.g3"), rel, archive, stamp)
    assert sql(manager, "SELECT count(*) FROM timecode_dirs_v0") == [(0,)]

    assert manager.detect_timecode_dirs(ARCHIVE) == 2
    assert manager.detect_timecode_dirs(ARCHIVE) == 0
    assert tc_states(manager, ARCHIVE)["open"] == [16750, 16751]
    assert tc_states(manager, OTHER)["open"] == []
    # A rebuild limited to files registered after t = 10 leaves 16749 out.
    assert manager.create_all_timecode_dirs(OTHER, min_ctime=10) == 1
    assert tc_states(manager, OTHER)["open"] == [16751]
    assert manager.create_all_timecode_dirs(OTHER) == 1
    assert manager.create_all_timecode_dirs(OTHER) == 0
    assert manager.create_all_timecode_dirs(ARCHIVE) == 0
    assert sorted(sql(manager, "SELECT archive_name, timecode FROM timecode_dirs_v0")) == [
        (OTHER, 16749), (OTHER, 16751), (ARCHIVE, 16750), (ARCHIVE, 16751)]


def test_timecode_completion_and_sync_are_per_archive(
    manager: SupRsyncFilesManager, add: AddFn, clock: Clock, tmp_path: Path
) -> None:
    """A newer dir completes older ones of its own archive only; a dir syncs when its files do."""
    a_old = add(clock.now, remote=f"{NOW_TC - 3}/s/a.g3")
    add(clock.now, remote=f"{NOW_TC}/s/b.g3")
    # OTHER has only a dir of the same old timecode and nothing newer: it is over a day
    # old, so it completes by age, and its unsynced file keeps it from syncing.
    add(clock.now, remote=f"{NOW_TC - 3}/s/c.g3", archive=OTHER)
    # The next timecode (a producer a little ahead) is a newer dir; one further ahead
    # would be dated in the future and complete nothing.
    b_future = add(clock.now, remote=f"{NOW_TC + 1}/s/d.g3")
    mark_synced(manager, b_future)
    root = str(tmp_path / "suprsync-files")

    assert manager.update_all_timecode_dirs(ARCHIVE, root, "sync-a") == []
    assert tc_states(manager, ARCHIVE) == {
        "open": [NOW_TC + 1], "completed_unsynced": [NOW_TC - 3, NOW_TC], "synced": [],
        "finalized": []}
    assert manager.update_all_timecode_dirs(OTHER, root, "sync-b") == []
    assert tc_states(manager, OTHER) == {
        "open": [], "completed_unsynced": [NOW_TC - 3], "synced": [], "finalized": []}

    mark_synced(manager, a_old)
    finalized = manager.update_all_timecode_dirs(ARCHIVE, root, "sync-a")
    assert [d.timecode for d in finalized] == [NOW_TC - 3]
    assert tc_states(manager, ARCHIVE)["finalized"] == [NOW_TC - 3]
    assert tc_states(manager, OTHER)["completed_unsynced"] == [NOW_TC - 3]
    # The finalization file is registered in the current timecode dir of the archive.
    rows = sql(manager, "SELECT remote_path, archive_name FROM supersync_v0 "
                        "WHERE remote_path LIKE :p", p="%_finalized.yaml")
    name = f"{int(NOW)}_{ARCHIVE}_{NOW_TC - 3}_finalized.yaml"
    assert rows == [(f"{NOW_TC}/suprsync/sync-a/{name}", ARCHIVE)]


def test_six_dirs_give_five_finalization_files(
    catalog_url: str, tmp_path: Path, clock: Clock
) -> None:
    """Agent iterations sync six dirs and finalize the five completed ones, once each."""
    agent = catalog_agent(tmp_path, catalog_url, "smurf", clock)
    try:
        tree: dict[str, bytes] = {}
        for i, tc in enumerate(range(NOW_TC - 5, NOW_TC + 1)):
            tree[f"{tc}/crate1/a{i}.g3"] = os.urandom(100)
            tree[f"{tc}/crate2/b{i}.g3"] = os.urandom(100)
            tree[f"{tc}/top{i}.txt"] = os.urandom(10)
        for rel, data in tree.items():
            path = make_file(tmp_path / "data", rel, data)
            agent.manager.add_file(str(path), rel, "smurf", timestamp=NOW - 1000)
        for _ in range(3):
            assert agent.iterate(), agent.session.snapshot()["last_copy"]

        remote = tmp_path / "remote" / "smurf"
        for rel, data in tree.items():
            assert (remote / rel).read_bytes() == data
        found = sorted(remote.glob("*/suprsync/*/*_finalized.yaml"))
        assert len(found) == 5
        by_tc = {}
        for path in found:
            data = yaml.safe_load(path.read_text())
            assert path.parent == remote / str(NOW_TC) / "suprsync" / "sync-test"
            assert path.name == f"{int(NOW)}_smurf_{data['timecode']}_finalized.yaml"
            assert data["num_files"] == 3
            assert data["subdirs"] == ["crate1", "crate2"]
            assert (data["archive_name"], data["instance_id"]) == ("smurf", "sync-test")
            by_tc[data["timecode"]] = data
        assert sorted(by_tc) == list(range(NOW_TC - 5, NOW_TC))
        rows = sql(agent.manager, "SELECT d.timecode, d.completed, d.synced, d.finalized, "
                                  "f.remote_path FROM timecode_dirs_v0 d LEFT JOIN "
                                  "supersync_v0 f ON f.id = d.finalize_file_id "
                                  "ORDER BY d.timecode")
        assert rows[-1] == (NOW_TC, False, False, False, None)
        for tc, completed, synced, finalized, final_path in rows[:-1]:
            assert (completed, synced, finalized) == (True, True, True)
            assert final_path == f"{NOW_TC}/suprsync/sync-test/{int(NOW)}_smurf_{tc}_finalized.yaml"
        assert agent.manager.get_archive_stats("smurf")["uncopied_files"] == 0
    finally:
        agent.manager.close()


# ---------------------------------------------------------- operator actions


def test_retry_failed_resets_only_unsynced_files_at_the_limit(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """Only unsynced, present files of the archive at or over the limit get 0 attempts again."""
    at_limit = add(100)
    over = add(101)
    below = add(102)
    synced_at_limit = add(103)
    removed_at_limit = add(104)
    other_at_limit = add(105, archive=OTHER)
    for fid, attempts in ((at_limit, 3), (over, 7), (below, 2), (synced_at_limit, 3),
                          (removed_at_limit, 3), (other_at_limit, 3)):
        set_row(manager, fid, failed_copy_attempts=attempts)
    mark_synced(manager, synced_at_limit)
    set_row(manager, removed_at_limit, removed=1.0)
    assert ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=3)) == [below]

    assert maintenance.retry_failed(manager, ARCHIVE, 3) == 2
    attempts = dict(sql(manager, "SELECT id, failed_copy_attempts FROM supersync_v0"))
    assert attempts == {at_limit: 0, over: 0, below: 2, synced_at_limit: 3,
                        removed_at_limit: 3, other_at_limit: 3}
    assert ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=3)) == [
        at_limit, over, below]


def test_retry_failed_limited_to_given_paths(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """With paths, only those files are reset."""
    first = add(100)
    second = add(101)
    for fid in (first, second):
        set_row(manager, fid, failed_copy_attempts=5)
    path = sql(manager, "SELECT local_path FROM supersync_v0 WHERE id = :i", i=second)[0][0]
    assert maintenance.retry_failed(manager, ARCHIVE, 5, paths=[path]) == 1
    assert dict(sql(manager, "SELECT id, failed_copy_attempts FROM supersync_v0")) == {
        first: 5, second: 0}


def test_set_ignore_and_unignore(manager: SupRsyncFilesManager, add: AddFn) -> None:
    """set_ignore takes files out of the copyable set (per archive when asked); unignore undoes."""
    mine = add(100)
    theirs = add(101, archive=OTHER)
    path = sql(manager, "SELECT local_path FROM supersync_v0 WHERE id = :i", i=mine)[0][0]
    # Register the same local file in the other archive too.
    twin = manager.add_file(path, "16750/twin.g3", OTHER, timestamp=102).id

    assert maintenance.set_ignore(manager, [path], archive_name=ARCHIVE) == 1
    assert manager.get_copyable_files(ARCHIVE) == []
    assert ids(manager.get_copyable_files(OTHER)) == [theirs, twin]
    assert maintenance.set_ignore(manager, [path]) == 2
    assert ids(manager.get_copyable_files(OTHER)) == [theirs]
    assert maintenance.set_ignore(manager, [path], ignore=False) == 2
    assert ids(manager.get_copyable_files(ARCHIVE)) == [mine]
    assert maintenance.set_ignore(manager, ["/nowhere/x.g3"]) == 0


def test_recheck_rehashes_and_requeues(
    manager: SupRsyncFilesManager, tmp_path: Path
) -> None:
    """recheck forgets the verification and the attempts of an unchanged file (its md5
    pinned), makes a verified file that changed a conflict, and reports the rest."""
    same = make_file(tmp_path, "same.g3", b"same")
    changed = make_file(tmp_path, "changed.g3", b"before")
    gone = make_file(tmp_path, "gone.g3", b"gone")
    ids_ = {p.name: manager.add_file(str(p), f"16750/{p.name}", ARCHIVE, timestamp=1).id
            for p in (same, changed, gone)}
    for fid in ids_.values():
        mark_synced(manager, fid)
        set_row(manager, fid, failed_copy_attempts=2)
    set_row(manager, ids_["gone.g3"], removed=5.0)
    changed.write_bytes(b"after")

    report = maintenance.recheck(manager, [str(same), str(changed), str(gone),
                                           str(tmp_path / "unknown.g3")])
    assert report.queued == [str(same)]
    assert report.conflicts == [str(changed)]
    assert report.gone == [str(gone)]
    assert report.not_found == [str(tmp_path / "unknown.g3")]
    rows = {r[0]: r[1:] for r in sql(manager, "SELECT id, local_md5sum, remote_md5sum, "
                                              "failed_copy_attempts FROM supersync_v0")}
    assert rows[ids_["same.g3"]] == (md5(b"same"), None, 0)
    assert rows[ids_["changed.g3"]] == (md5(b"before"), md5(b"before"), 2)
    assert rows[ids_["gone.g3"]] == (md5(b"gone"), md5(b"gone"), 2)
    assert ids(manager.get_copyable_files(ARCHIVE)) == [ids_["same.g3"]]
    assert manager.read(lambda s: pinned_ids(s, list(ids_.values()))) == {ids_["same.g3"]}
    assert [c["id"] for c in manager.read(lambda s: list_conflicts(s))] == [ids_["changed.g3"]]


# -------------------------------------------------------------------- claims


def claims(manager: SupRsyncFilesManager) -> dict[int, tuple[str, float]]:
    """file id -> (agent id, expiry) of every lease."""
    rows = sql(manager, "SELECT file_id, agent_id, expires FROM suprsync_claims_v0")
    return {r[0]: (r[1], r[2]) for r in rows}


def test_claims_give_disjoint_sets_to_two_agents(
    manager: SupRsyncFilesManager, add: AddFn, clock: Clock
) -> None:
    """Two agents claiming in turn get disjoint batches, oldest first; a third gets nothing."""
    files = [add(100 + i) for i in range(7)]
    first = ids(manager.claim_copyable(ARCHIVE, "agent-a", 60, num_files=4))
    second = ids(manager.claim_copyable(ARCHIVE, "agent-b", 60, num_files=4))
    assert first == files[:4]
    assert second == files[4:]
    assert manager.claim_copyable(ARCHIVE, "agent-c", 60) == []
    assert claims(manager) == {**{f: ("agent-a", clock.now + 60) for f in first},
                               **{f: ("agent-b", clock.now + 60) for f in second}}
    # Copyable (for reading) is still every unsynced file: leases only steer claiming.
    assert ids(manager.get_copyable_files(ARCHIVE)) == files


def test_claims_respect_archive_attempt_limit_and_state(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """Only copyable files of the archive are claimed."""
    good = add(100)
    exhausted = add(101)
    set_row(manager, exhausted, failed_copy_attempts=5)
    synced = add(102)
    mark_synced(manager, synced)
    add(103, archive=OTHER)
    got = manager.claim_copyable(ARCHIVE, "agent-a", 60, max_copy_attempts=5)
    assert ids(got) == [good]


def test_release_makes_claimed_files_available(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """Released leases (some, or all of an agent's) let another agent claim the files."""
    files = [add(100 + i) for i in range(4)]
    assert ids(manager.claim_copyable(ARCHIVE, "agent-a", 60)) == files
    manager.release_claims("agent-a", [files[1]])
    assert ids(manager.claim_copyable(ARCHIVE, "agent-b", 60)) == [files[1]]
    manager.release_claims("agent-b", [files[0]])  # not b's lease: nothing changes
    assert set(claims(manager)) == set(files)
    manager.release_claims("agent-a")
    assert {f: a for f, (a, _) in claims(manager).items()} == {files[1]: "agent-b"}
    assert ids(manager.claim_copyable(ARCHIVE, "agent-c", 60)) == [files[0], files[2], files[3]]


def test_record_results_ends_the_leases_of_the_recorded_files(
    manager: SupRsyncFilesManager, add: AddFn, clock: Clock
) -> None:
    """Recording results with the agent id releases those files' leases in the same step."""
    files = [add(100 + i) for i in range(3)]
    batch = manager.claim_copyable(ARCHIVE, "agent-a", 60)
    ok = CopyResult(batch[0].id, batch[0].local_md5sum, clock.now, True)
    bad = CopyResult(batch[1].id, "0" * 32, clock.now, False)
    manager.record_results([ok, bad], agent_id="agent-a")
    assert set(claims(manager)) == {files[2]}
    # The failed file is claimable again with one more attempt; the good one is synced.
    assert ids(manager.claim_copyable(ARCHIVE, "agent-b", 60)) == [files[1]]
    assert sql(manager, "SELECT failed_copy_attempts FROM supersync_v0 WHERE id = :i",
               i=files[1]) == [(1,)]


def test_expired_leases_are_taken_over(
    manager: SupRsyncFilesManager, add: AddFn, clock: Clock
) -> None:
    """Once a dead agent's lease expires, another agent claims its files."""
    files = [add(100 + i) for i in range(3)]
    assert ids(manager.claim_copyable(ARCHIVE, "dead", 30)) == files
    clock.now += 29
    assert manager.claim_copyable(ARCHIVE, "alive", 30) == []
    clock.now += 2
    assert ids(manager.claim_copyable(ARCHIVE, "alive", 30)) == files
    assert claims(manager) == {f: ("alive", clock.now + 30) for f in files}


def test_renew_extends_leases(manager: SupRsyncFilesManager, add: AddFn, clock: Clock) -> None:
    """renew_claims moves an agent's expiry to now + lease, keeping others' leases."""
    files = [add(100 + i) for i in range(2)]
    assert ids(manager.claim_copyable(ARCHIVE, "agent-a", 30, num_files=1)) == files[:1]
    assert ids(manager.claim_copyable(ARCHIVE, "agent-b", 30, num_files=1)) == files[1:]
    start = clock.now
    clock.now += 20
    manager.renew_claims("agent-a", 30)
    assert claims(manager) == {files[0]: ("agent-a", start + 50),
                               files[1]: ("agent-b", start + 30)}
    clock.now = start + 40  # past the first expiry, before the renewed one
    assert ids(manager.claim_copyable(ARCHIVE, "agent-c", 30)) == files[1:]
    assert claims(manager)[files[0]] == ("agent-a", start + 50)


def _register_200(catalog_url: str, tmp_path: Path) -> tuple[SupRsyncFilesManager, set[int]]:
    setup = SupRsyncFilesManager(catalog_url)
    expected = set()
    for i in range(200):
        expected.add(setup.add_file(str(tmp_path / f"f{i}"), f"16750/f{i}.g3", ARCHIVE,
                                    local_md5sum=md5(b"%d" % i), timestamp=float(i)).id)
    return setup, expected


def _claim_at_once(catalog_url: str, queue_of: Any) -> list[int]:
    """Four claimers, each with its own connection, claim and record batches of 10 from
    ``queue_of(manager)`` at the same moment; every id each of them claimed."""
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def claimer(name: str) -> None:
        m = SupRsyncFilesManager(catalog_url, create_all=False)
        queue = queue_of(m)
        mine: list[int] = []
        try:
            start.wait(timeout=30)
            while batch := queue.claim_copyable(ARCHIVE, name, 60, num_files=10):
                mine += ids(batch)
                queue.record_results([CopyResult(r.id, r.local_md5sum, 1.0, True)
                                      for r in batch], agent_id=name)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            got[name] = mine
            m.close()

    threads = [threading.Thread(target=claimer, args=(f"agent-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return [fid for mine in got.values() for fid in mine]


def test_concurrent_claimers_never_share_a_file(catalog_url: str, tmp_path: Path) -> None:
    """Agents claiming at the same moment from their own connections get disjoint batches."""
    setup, expected = _register_200(catalog_url, tmp_path)
    setup.close()
    every = _claim_at_once(catalog_url, lambda m: m)
    assert len(every) == len(set(every)), "a file was claimed by two agents"
    assert set(every) == expected


def test_concurrent_claimers_at_a_further_destination_never_share_a_file(
        catalog_url: str, tmp_path: Path) -> None:
    """Agents shipping to the same further destination, claiming at the same moment from
    their own connections, get disjoint batches; the primary's claims are not touched."""
    from suprsync.catalog.copies import Wanted, register
    from suprsync.catalog.destqueue import DestinationCopies

    setup, expected = _register_200(catalog_url, tmp_path)
    primary, further = setup.write(lambda s: register(
        s, ARCHIVE, [Wanted("a", "/srv/a", True), Wanted("b", "/srv/b", True)], 1.0))
    assert primary.primary and not further.primary
    assert DestinationCopies(setup, further).track(ARCHIVE) == len(expected)
    setup.close()
    every = _claim_at_once(catalog_url, lambda m: DestinationCopies(m, further))
    assert len(every) == len(set(every)), "a file was claimed by two agents"
    assert set(every) == expected
    check = SupRsyncFilesManager(catalog_url, create_all=False)
    try:
        # Verified at b only: the primary still has every file to copy.
        assert len(check.get_copyable_files(ARCHIVE)) == len(expected)
    finally:
        check.close()


# ------------------------------------------------------------------ the CLI


def test_cli_run_once_copies_verifies_and_stats_reports_it(
    catalog_url: str, tmp_path: Path, remote_dir: Path
) -> None:
    """`suprsync run --once` on the catalog ships every file; `stats --json` agrees."""
    manager = SupRsyncFilesManager(catalog_url)
    contents = {f"16750/crate{i % 2}/f{i}.g3": os.urandom(500 + i) for i in range(8)}
    for rel, data in contents.items():
        manager.add_file(str(make_file(tmp_path / "local", rel, data)), rel, ARCHIVE,
                         timestamp=1_675_000_000.0)
    manager.close()

    result = run_cli("run", "--once", "--sleep-time", "0", "--archive-name", ARCHIVE,
                     "--remote-basedir", str(remote_dir), *db_flags(catalog_url),
                     "--suprsync-file-root", str(tmp_path / "suprsync-files"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for rel, data in contents.items():
        assert (remote_dir / rel).read_bytes() == data
    shipped = [line for line in result.stderr.splitlines() if "copied and verified" in line]
    # The data files, then the finalization file of their (old) dir, in the same run.
    assert len(shipped) == len(contents) + 1, result.stderr
    assert "_finalized.yaml" in shipped[-1], shipped[-1]

    stats = run_cli("stats", "--db", catalog_url, "--json", timeout=60)
    assert stats.returncode == 0, stats.stderr
    out = json.loads(stats.stdout)
    assert list(out) == [ARCHIVE]
    # The old dir 16750 was finalized in that iteration, and its finalization file shipped.
    assert out[ARCHIVE]["num_files"] == len(contents) + 1
    assert out[ARCHIVE]["uncopied_files"] == 0
    assert out[ARCHIVE]["timecode_dirs"]["finalized"] == [16750]
    assert out[ARCHIVE]["last_file_copied"].endswith("_finalized.yaml")
    assert len(list(remote_dir.glob("*/suprsync/*/*_16750_finalized.yaml"))) == 1


# -------------------------------------------------------------------- collisions


def test_partners_find_same_parent_and_child_paths_in_any_spelling(
    manager: SupRsyncFilesManager, tmp_path: Path
) -> None:
    """The collision lookup finds every row meeting a path, on both backends, and no other:
    names that sort between ``P/`` and ``P0`` bytewise but do not lie below ``P`` stay out."""
    local = make_file(tmp_path, "x.g3", b"x")
    rows = {remote: insert_plain(manager, local, remote, ARCHIVE, 1.0)
            for remote in ("16750/p", "16750//p/child", "16750/p/./deep/er", "16750/p.x",
                           "16750/p-", "16750/p0", "16750/q/p", "16750")}
    other = insert_plain(manager, local, "16750/p", OTHER, 1.0)
    manager.write(scan_path_keys)

    def found(key: str) -> set[str]:
        hits = manager.read(lambda s: partners(s, ARCHIVE, [key]))
        by_id = {v: k for k, v in rows.items()}
        assert other not in {p.id for p in hits}, "another archive's row"
        return {by_id[p.id] for p in hits}

    assert found("16750/p") == {"16750/p", "16750//p/child", "16750/p/./deep/er", "16750"}
    assert found("16750/p/child") == {"16750/p", "16750//p/child", "16750"}
    assert found("16750/q") == {"16750/q/p", "16750"}


def test_path_keys_follow_the_ids_sqlite_gives_again_after_the_newest_rows_go(
    manager: SupRsyncFilesManager, tmp_path: Path
) -> None:
    """Another program deletes the newest rows; sqlite gives their ids to the next
    registrations, below the last id the scan read. Their spellings are still found,
    and the record of a deleted row names nothing any more."""
    local = make_file(tmp_path, "z.g3", b"z")
    insert_plain(manager, local, "16750/a.g3", ARCHIVE, 1.0)
    gone = [insert_plain(manager, local, "16750//b.g3", ARCHIVE, 1.0),
            insert_plain(manager, local, "16750/c.g3", ARCHIVE, 1.0)]
    manager.write(scan_path_keys)
    sql(manager, f"DELETE FROM supersync_v0 WHERE id IN ({gone[0]}, {gone[1]})")
    d = insert_plain(manager, local, "16750/./d.g3", ARCHIVE, 1.0)
    e = insert_plain(manager, local, "16750//e.g3", ARCHIVE, 1.0)
    insert_plain(manager, local, "16750/f.g3", ARCHIVE, 1.0)
    if manager.dialect.reuses_ids:
        assert [d, e] == gone
    manager.write(scan_path_keys)

    def ids_at(key: str) -> set[int]:
        return {p.id for p in manager.read(lambda s: partners(s, ARCHIVE, [key]))}

    assert ids_at("16750/d.g3") == {d}
    assert ids_at("16750/e.g3") == {e}
    assert ids_at("16750/b.g3") == set()


def test_path_keys_of_older_rows_are_backfilled_a_chunk_per_scan(
    manager: SupRsyncFilesManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows older than the first scan are found too, a bounded number of ids per scan,
    and new ones at once."""
    monkeypatch.setattr(pathkeys, "BACKFILL", 3)
    local = make_file(tmp_path, "y.g3", b"y")
    old = insert_plain(manager, local, "16750//old.g3", ARCHIVE, 1.0)
    for n in range(7):
        insert_plain(manager, local, f"16750/n{n}.g3", ARCHIVE, 1.0)

    def keyed() -> set[int]:
        return {p.id for p in manager.read(lambda s: partners(s, ARCHIVE, ["16750/old.g3"]))}

    assert manager.write(scan_path_keys) == 0
    assert old not in keyed()
    new = insert_plain(manager, local, "16750/./new.g3", ARCHIVE, 1.0)
    manager.write(scan_path_keys)
    assert {p.id for p in manager.read(lambda s: partners(s, ARCHIVE, ["16750/new.g3"]))} \
        == {new}
    manager.write(scan_path_keys)
    assert old in keyed()

