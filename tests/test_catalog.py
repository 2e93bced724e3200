"""The catalog: schema identical to socs 0.6.4's, shared catalogs, selections, indexes, WAL."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from conftest import run_cli, run_peer
from helpers import (
    ARCHIVE,
    AddFn,
    Clock,
    file_adder,
    ids,
    make_file,
    manager_fixture,  # noqa: F401 - the manager fixture
    sql,
)
from sqlalchemy import event

from suprsync import SupRsyncFilesManager
from suprsync.catalog.pathkeys import partners
from suprsync.catalog.quarantine import register_sqlite_functions

TABLES = ("supersync_v0", "timecode_dirs_v0")
OTHER = "smurf"

# Scripts run by socs 0.6.4 in the peer interpreter (see conftest.run_peer); argv[1] is the
# catalog path.

#: Create a catalog with socs's manager (tables made by socs's create_all).
PEER_CREATE = dedent("""
    import sys
    from socs.db import suprsync as socs_db
    socs_db.SupRsyncFilesManager(sys.argv[1])
""")

#: Register files with socs's add_file: argv[2] archive, argv[3] JSON [[local, remote], ...].
PEER_ADD_FILES = dedent("""
    import json, sys
    from socs.db import suprsync as socs_db
    manager = socs_db.SupRsyncFilesManager(sys.argv[1])
    for local, remote in json.loads(sys.argv[3]):
        manager.add_file(local, remote, sys.argv[2])
""")

#: Read an existing catalog with socs (create_all=False): argv[2] archive; print JSON of its
#: stats, the ids of its copyable files and every row's [local_md5sum, remote_md5sum].
PEER_READ = dedent("""
    import json, sys
    from socs.db import suprsync as socs_db
    reader = socs_db.SupRsyncFilesManager(sys.argv[1], create_all=False)
    archive = sys.argv[2]
    with reader.Session() as session:
        rows = session.query(socs_db.SupRsyncFile).all()
        md5sums = [[r.local_md5sum, r.remote_md5sum] for r in rows]
    print(json.dumps({
        "stats": reader.get_archive_stats(archive),
        "copyable": [f.id for f in reader.get_copyable_files(archive)],
        "md5sums": md5sums,
    }))
""")


# ----------------------------------------------------------------- helpers


def table_info(db: Path, table: str) -> list[tuple[Any, ...]]:
    """PRAGMA table_info rows: (cid, name, type, notnull, dflt_value, pk)."""
    with sqlite3.connect(db) as conn:
        return conn.execute(f"PRAGMA table_info({table})").fetchall()


def foreign_keys(db: Path, table: str) -> list[tuple[Any, ...]]:
    """PRAGMA foreign_key_list rows of a table."""
    with sqlite3.connect(db) as conn:
        return conn.execute(f"PRAGMA foreign_key_list({table})").fetchall()


def index_names(db: Path) -> set[str]:
    """Names of the explicit indexes of the catalog file."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall()
    return {r[0] for r in rows}


def set_row(db: Path, file_id: int, **values: Any) -> None:
    """Set columns of one supersync_v0 row with plain SQL."""
    assignments = ", ".join(f'"{k}" = ?' for k in values)
    sql(db, f"UPDATE supersync_v0 SET {assignments} WHERE id = ?", (*values.values(), file_id))


def mark_synced(db: Path, file_id: int) -> None:
    """Make a row synced: remote checksum equal to the local one."""
    sql(db, "UPDATE supersync_v0 SET remote_md5sum = local_md5sum WHERE id = ?", (file_id,))


def row_count(db: Path) -> int:
    """Number of rows in supersync_v0."""
    return sql(db, "SELECT count(*) FROM supersync_v0")[0][0]


@pytest.fixture
def clock() -> Clock:
    """A clock standing at t = 1 000 000 (timecode 10)."""
    return Clock(1_000_000.0)


@pytest.fixture
def add(manager: SupRsyncFilesManager, tmp_path: Path) -> AddFn:
    """Register a real file at a given timestamp; return its row id."""
    return file_adder(manager, tmp_path / "local", repeat=50)


def run_once(db: Path, remote: Path, file_root: Path, archive: str = ARCHIVE) -> None:
    """One iteration of `suprsync run` to a local destination; must exit 0."""
    result = run_cli("run", "--once", "--sleep-time", "0", "--archive-name", archive,
                     "--remote-basedir", str(remote), "--db-path", str(db),
                     "--suprsync-file-root", str(file_root), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# ------------------------------------------------------------------ schema


def test_schema_matches_socs_column_for_column(tmp_path: Path, peer_python: Path) -> None:
    """Both tables have the same columns (name, type, nullability, pk) and FKs as socs's."""
    theirs_db = tmp_path / "socs" / "catalog.db"
    ours_db = tmp_path / "ours" / "catalog.db"
    run_peer(peer_python, PEER_CREATE, str(theirs_db))
    SupRsyncFilesManager(str(ours_db)).close()
    for table in TABLES:
        theirs = table_info(theirs_db, table)
        assert theirs, f"socs did not create {table}"
        assert table_info(ours_db, table) == theirs
        assert foreign_keys(ours_db, table) == foreign_keys(theirs_db, table)


def test_opening_socs_catalog_adds_indexes_but_changes_no_column(
    tmp_path: Path, peer_python: Path
) -> None:
    """Opening a socs-created catalog leaves every column as it was and adds indexes."""
    db = tmp_path / "catalog.db"
    run_peer(peer_python, PEER_CREATE, str(db))
    before = {t: table_info(db, t) for t in TABLES}
    indexes_before = index_names(db)
    SupRsyncFilesManager(str(db)).close()
    assert {t: table_info(db, t) for t in TABLES} == before
    added = index_names(db) - indexes_before
    assert added, "no index was added"
    assert indexes_before <= index_names(db)


# -------------------------------------------------- catalogs of other writers


def test_socs_created_catalog_is_synced_and_stays_readable_by_socs(
    tmp_path: Path, tmp_catalog: Path, remote_dir: Path, peer_python: Path
) -> None:
    """Files registered by socs's manager land intact; socs then sees nothing uncopied."""
    local = tmp_path / "local"
    remotes = {"16750/sub/f.g3": b"first\n" * 1000, "16750/sub2/g.g3": b"second\n" * 10,
               "16751/h.g3": b""}
    pairs = [[str(make_file(local, rel.replace("/", "_"), content)), rel]
             for rel, content in remotes.items()]
    run_peer(peer_python, PEER_ADD_FILES, str(tmp_catalog), ARCHIVE, json.dumps(pairs))

    file_root = tmp_path / "suprsync-files"
    run_once(tmp_catalog, remote_dir, file_root)
    for rel, content in remotes.items():
        assert (remote_dir / rel).read_bytes() == content
    # The first iteration finalized the completed dirs; the second ships those files too.
    run_once(tmp_catalog, remote_dir, file_root)

    seen_by_socs = json.loads(run_peer(peer_python, PEER_READ, str(tmp_catalog), ARCHIVE).stdout)
    stats = seen_by_socs["stats"]
    assert stats["uncopied_files"] == 0
    assert stats["num_files"] >= len(remotes)
    assert seen_by_socs["copyable"] == []
    assert all(remote == local for local, remote in seen_by_socs["md5sums"])


def test_plain_sql_rows_with_null_columns_are_copyable_and_synced(
    tmp_path: Path, tmp_catalog: Path, remote_dir: Path
) -> None:
    """Rows with only the NOT NULL columns (no tcdir row) are copyable, synced, get a tcdir."""
    SupRsyncFilesManager(str(tmp_catalog)).close()
    local = tmp_path / "local"
    contents = {"16750/a/x.g3": b"x" * 4096, "16750/b/y.g3": b"y" * 10}
    for i, (rel, content) in enumerate(contents.items()):
        path = make_file(local, f"p{i}.g3", content)
        sql(tmp_catalog,
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp) VALUES (?, ?, ?, ?, ?)",
            (str(path), hashlib.md5(content).hexdigest(), ARCHIVE, rel,
             1_675_000_000.0 + i))
    assert sql(tmp_catalog, "SELECT failed_copy_attempts, deletable, ignore FROM supersync_v0") \
        == [(None, None, None)] * 2
    assert sql(tmp_catalog, "SELECT count(*) FROM timecode_dirs_v0") == [(0,)]

    m = SupRsyncFilesManager(str(tmp_catalog))
    copyable = m.get_copyable_files(ARCHIVE, max_copy_attempts=5)
    m.close()
    assert sorted(r.remote_path for r in copyable) == sorted(contents)

    run_once(tmp_catalog, remote_dir, tmp_path / "suprsync-files")
    for rel, content in contents.items():
        assert (remote_dir / rel).read_bytes() == content
    rows = sql(tmp_catalog, "SELECT remote_md5sum = local_md5sum FROM supersync_v0 "
                            "WHERE remote_path LIKE '16750/%'")
    assert rows == [(1,), (1,)]
    assert sql(tmp_catalog, "SELECT count(*) FROM timecode_dirs_v0 "
                            "WHERE timecode = 16750 AND archive_name = ?", (ARCHIVE,)) == [(1,)]


# -------------------------------------------------------------- selections


def test_copyable_excludes_removed_ignored_synced_and_exhausted(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path
) -> None:
    """Removed, ignored, synced and at/above-limit files are never copyable."""
    plain = add(100)
    removed = add(101)
    set_row(tmp_catalog, removed, removed=5.0)
    removed_zero = add(102)
    set_row(tmp_catalog, removed_zero, removed=0.0)
    ignored = add(103)
    set_row(tmp_catalog, ignored, ignore=1)
    synced = add(104)
    mark_synced(tmp_catalog, synced)
    mismatch = add(105)
    set_row(tmp_catalog, mismatch, remote_md5sum="0" * 32, failed_copy_attempts=1)
    at_limit = add(106)
    set_row(tmp_catalog, at_limit, failed_copy_attempts=3)
    above_limit = add(107)
    set_row(tmp_catalog, above_limit, failed_copy_attempts=9)
    below_limit = add(108)
    set_row(tmp_catalog, below_limit, failed_copy_attempts=2)

    got = ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=3))
    assert got == [plain, mismatch, below_limit]
    without_limit = ids(manager.get_copyable_files(ARCHIVE))
    assert without_limit == [plain, mismatch, at_limit, above_limit, below_limit]


def test_copyable_counts_null_attempts_as_zero(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path
) -> None:
    """A NULL failed_copy_attempts is below any limit of at least 1, like 0."""
    null_attempts = add(100)
    set_row(tmp_catalog, null_attempts, failed_copy_attempts=None, ignore=None)
    one_attempt = add(101)
    set_row(tmp_catalog, one_attempt, failed_copy_attempts=1)
    assert ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=1)) == [null_attempts]
    assert ids(manager.get_copyable_files(ARCHIVE, max_copy_attempts=2)) == [
        null_attempts, one_attempt]


def test_copyable_is_ordered_oldest_first(manager: SupRsyncFilesManager, add: AddFn) -> None:
    """Copyable files come back by timestamp, not by insertion order."""
    late = add(300)
    early = add(100)
    middle = add(200)
    assert ids(manager.get_copyable_files(ARCHIVE)) == [early, middle, late]


def test_copyable_num_files_limits_to_the_oldest(
    manager: SupRsyncFilesManager, add: AddFn
) -> None:
    """num_files returns at most that many, the oldest ones."""
    stamps = [500, 100, 400, 200, 300]
    by_stamp = {t: add(t) for t in stamps}
    got = ids(manager.get_copyable_files(ARCHIVE, num_files=2))
    assert got == [by_stamp[100], by_stamp[200]]
    assert len(manager.get_copyable_files(ARCHIVE, num_files=10)) == 5


def test_deletable_selection(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path, clock: Clock
) -> None:
    """Only synced, deletable (NULL counts), not removed files older than delete_after."""
    now = clock.now
    old_synced = add(now - 500)
    null_deletable = add(now - 400)
    set_row(tmp_catalog, null_deletable, deletable=None)
    young_synced = add(now - 50)
    boundary = add(now - 100)
    old_unsynced = add(now - 600)
    keep_local = add(now - 700, deletable=False)
    removed = add(now - 800)
    set_row(tmp_catalog, removed, removed=now - 10)
    mismatch = add(now - 900)
    set_row(tmp_catalog, mismatch, remote_md5sum="f" * 32)
    for fid in (old_synced, null_deletable, young_synced, boundary, keep_local, removed):
        mark_synced(tmp_catalog, fid)

    got = ids(manager.get_deletable_files(ARCHIVE, 100))
    assert sorted(got) == sorted([old_synced, null_deletable])
    assert old_unsynced not in got
    clock.now += 1000
    later = ids(manager.get_deletable_files(ARCHIVE, 100))
    assert sorted(later) == sorted([old_synced, null_deletable, young_synced, boundary])


def test_known_files_after_min_ctime_oldest_first(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path
) -> None:
    """Known files: every row with timestamp > min_ctime (whatever its state), oldest first."""
    t300 = add(300)
    t100 = add(100)
    t150 = add(150)
    t200 = add(200)
    set_row(tmp_catalog, t200, removed=1.0, ignore=1)
    mark_synced(tmp_catalog, t300)
    assert ids(manager.get_known_files(ARCHIVE, min_ctime=150)) == [t200, t300]
    assert ids(manager.get_known_files(ARCHIVE)) == [t100, t150, t200, t300]


def test_archives_are_independent(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path, clock: Clock
) -> None:
    """Files of archive B never show up in archive A's selections or stats."""
    a_synced = add(1000, archive=ARCHIVE)
    mark_synced(tmp_catalog, a_synced)
    b_old = add(10, archive=OTHER)
    b_synced = add(20, archive=OTHER)
    mark_synced(tmp_catalog, b_synced)
    b_new = add(5000, archive=OTHER)
    b_ids = {b_old, b_synced, b_new}

    assert manager.get_copyable_files(ARCHIVE) == []
    assert ids(manager.get_deletable_files(ARCHIVE, 0)) == [a_synced]
    assert ids(manager.get_known_files(ARCHIVE)) == [a_synced]
    stats = manager.get_archive_stats(ARCHIVE)
    assert stats["num_files"] == 1
    assert stats["uncopied_files"] == 0
    assert stats["finalized_until"] == clock.now
    a_path = sql(tmp_catalog, "SELECT local_path FROM supersync_v0 WHERE id = ?", (a_synced,))
    assert stats["last_file_added"] == stats["last_file_copied"] == a_path[0][0]
    assert manager.get_finalized_until(ARCHIVE) == clock.now

    assert set(ids(manager.get_known_files(OTHER))) == b_ids
    assert ids(manager.get_copyable_files(OTHER)) == [b_old, b_new]
    assert manager.get_finalized_until(OTHER) == 9


# ------------------------------------------------------------ indexes, WAL


def test_copyable_query_uses_an_index(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path
) -> None:
    """The exact SQL of get_copyable_files is planned with an index on the file."""
    for t in range(5):
        add(t)
    statements: list[tuple[str, Any]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        if "supersync_v0" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(manager.engine, "before_cursor_execute", capture)
    try:
        manager.get_copyable_files(ARCHIVE, max_copy_attempts=5, num_files=10)
    finally:
        event.remove(manager.engine, "before_cursor_execute", capture)
    assert len(statements) == 1
    statement, params = statements[0]
    with sqlite3.connect(tmp_catalog) as conn:
        register_sqlite_functions(conn)  # the quarantine check calls one
        plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    details = " | ".join(str(row[-1]) for row in plan)
    assert "USING INDEX" in details or "USING COVERING INDEX" in details, details


def test_catalog_is_in_wal_mode_after_opening(tmp_path: Path) -> None:
    """A catalog created in rollback-journal mode is in WAL mode once suprsync opened it."""
    db = tmp_path / "catalog.db"
    sql(db, "CREATE TABLE unrelated (x INTEGER)")
    assert sql(db, "PRAGMA journal_mode")[0][0].lower() == "delete"
    SupRsyncFilesManager(str(db)).close()
    assert sql(db, "PRAGMA journal_mode")[0][0].lower() == "wal"


# ---------------------------------------------------------- add_file checks


@pytest.mark.parametrize(
    "remote",
    ["/abs/16750/f.g3", "", "16750/../../f.g3", "../f.g3", "16750/sub/..", "16750/f\x00.g3"],
    ids=["absolute", "empty", "dotdot-inside", "dotdot-first", "dotdot-last", "nul"],
)
def test_add_file_rejects_bad_remote_path(
    manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path, remote: str
) -> None:
    """A remote path that is empty, absolute, climbs with '..' or holds NUL: ValueError."""
    local = make_file(tmp_path, "f.g3", repeat=50)
    with pytest.raises(ValueError):
        manager.add_file(str(local), remote, ARCHIVE)
    assert row_count(tmp_catalog) == 0
    assert sql(tmp_catalog, "SELECT count(*) FROM timecode_dirs_v0") == [(0,)]


def test_add_file_missing_local_file_raises_file_not_found(
    manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path
) -> None:
    """A local path that does not exist raises FileNotFoundError and inserts nothing."""
    with pytest.raises(FileNotFoundError):
        manager.add_file(str(tmp_path / "missing.g3"), "16750/missing.g3", ARCHIVE)
    assert row_count(tmp_catalog) == 0


def test_add_file_directory_raises_oserror(
    manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path
) -> None:
    """A directory as local path raises OSError and inserts nothing."""
    folder = tmp_path / "a_dir"
    folder.mkdir()
    with pytest.raises(OSError):
        manager.add_file(str(folder), "16750/a_dir", ARCHIVE)
    assert row_count(tmp_catalog) == 0
    assert os.path.isdir(folder)


def test_prefetched_count_is_exact_and_followed_by_new_rows(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path
) -> None:
    """A full count started in the background gives the stats step the same num_files as
    counting there would, rows added after it included, other archives left out."""
    for t in range(5):
        add(100 + t)
    add(50, archive=OTHER)
    manager.prefetch_file_count(ARCHIVE)
    manager.prefetch_file_count(ARCHIVE)  # one already running or done: nothing new
    add(200)
    plain = 3
    with sqlite3.connect(tmp_catalog) as conn:  # another program's rows
        for i in range(plain):
            conn.execute("INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                         "remote_path, timestamp) VALUES (?, ?, ?, ?, ?)",
                         (f"/p/{i}", "0" * 32, ARCHIVE, f"p/{i}", 300.0 + i))
    assert manager.get_archive_stats(ARCHIVE)["num_files"] == 6 + plain
    assert manager.get_archive_stats(OTHER)["num_files"] == 1
    manager.prefetch_file_count(ARCHIVE)  # the count is fresh: no new one
    add(400)
    assert manager.get_archive_stats(ARCHIVE)["num_files"] == 7 + plain


def test_collision_lookups_use_the_remote_path_indexes(
    manager: SupRsyncFilesManager, add: AddFn, tmp_catalog: Path
) -> None:
    """Every statement of the collision lookup is planned on an index of remote paths
    (never a scan of the archive)."""
    for t in range(50):
        add(t)
    statements: list[tuple[str, Any]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(manager.engine, "before_cursor_execute", capture)
    try:
        manager.read(lambda s: partners(s, ARCHIVE, ["16750/sub/f1.g3", "16750/sub/f2.g3"]))
    finally:
        event.remove(manager.engine, "before_cursor_execute", capture)
    assert len(statements) == 4
    with sqlite3.connect(tmp_catalog) as conn:
        register_sqlite_functions(conn)
        for statement, params in statements:
            plan = " | ".join(str(row[-1]) for row in conn.execute(
                f"EXPLAIN QUERY PLAN {statement}", params).fetchall())
            assert ("ix_suprsync_remote_path" in plan or "ix_suprsync_path_keys" in plan), plan
            assert "SCAN supersync_v0" not in plan and "SCAN f" not in plan, plan
