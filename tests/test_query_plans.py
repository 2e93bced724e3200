"""The plans of the hot-path queries on a catalog of a million rows (sqlite).

The exact SQL each step issues is captured from the engine and planned with
EXPLAIN QUERY PLAN on the history catalog (tests/history_catalog.py), as another
program's sqlite3 would see it: without ANALYZE statistics. Each test asserts the
index its query uses, and that no step reads the archive unbounded: a step on the
files table is a primary-key lookup or range, or a search of a partial index, or
a search of an index bounded by more than the archive name.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from history_catalog import (
    ARCHIVE,
    ATTEMPTS,
    OPEN_TC,
    OTHER,
    build_history_catalog,
    build_pg_history_catalog,
)
from pg_server import PgServer
from sqlalchemy import event

from suprsync.catalog import timecode as tc_rules
from suprsync.catalog.conflicts import conflict_count, conflicted_ids
from suprsync.catalog.idmarks import id_mark
from suprsync.catalog.lateness import dir_bound, find_late_files, keep_late_scan, late_in_dirs
from suprsync.catalog.pathkeys import partners
from suprsync.catalog.quarantine import register_sqlite_functions
from suprsync.catalog.schema import INDEXES
from suprsync.catalog.store import SupRsyncFilesManager

ROWS = 1_000_000
#: A time two dirs after the open one.
NOW = (OPEN_TC + 2) * 1e5 + 500.0
#: sqlite's partial index of unverified rows.
UNVERIFIED = "ix_suprsync_unverified"
#: Indexes whose entries are only the rows a step looks for.
PARTIAL = (UNVERIFIED, "ix_suprsync_unsynced", "ix_suprsync_present",
           "ix_suprsync_verified_present")
FILES = "supersync_v0"

Statement = tuple[str, Any]


@pytest.fixture(scope="session")
def history_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The million-row catalog, built once for the session (read by every test here)."""
    path = tmp_path_factory.mktemp("history") / "catalog.db"
    build_history_catalog(path, ROWS)
    return path


@pytest.fixture
def manager(history_db: Path) -> Iterator[SupRsyncFilesManager]:
    """A fresh manager on the history catalog, with a fixed clock."""
    m = SupRsyncFilesManager(str(history_db), clock=lambda: NOW)
    yield m
    m.close()


def capture(manager: SupRsyncFilesManager, fn: Callable[[], Any],
            table: str = FILES) -> list[Statement]:
    """Every statement fn makes the manager's engine run that names table."""
    statements: list[Statement] = []

    def before(_conn, _cursor, statement, parameters, _context, many) -> None:  # noqa: ANN001
        if table in statement and not many:
            statements.append((statement, parameters))

    event.listen(manager.engine, "before_cursor_execute", before)
    try:
        fn()
    finally:
        event.remove(manager.engine, "before_cursor_execute", before)
    return statements


def plan(db: Path, statement: str, params: Any) -> list[str]:
    """The EXPLAIN QUERY PLAN steps of one statement, as a fresh sqlite3 connection
    plans it."""
    with sqlite3.connect(db) as conn:
        register_sqlite_functions(conn)
        return [str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}",
                                                     params or ())]


def aliases(statement: str) -> set[str]:
    """Names under which the files table appears in a statement."""
    found = {FILES}
    found.update(m.group(1) for m in re.finditer(
        rf"\b{FILES}\s+(?:AS\s+)?(\w+)", statement, re.IGNORECASE)
        if m.group(1).upper() not in {"WHERE", "SET", "ON", "JOIN", "ORDER", "GROUP",
                                      "LIMIT", "CROSS", "LEFT", "INNER", "USING"})
    return found


def archive_steps(statement: str, steps: list[str]) -> list[str]:
    """The steps that read the files table."""
    names = aliases(statement)
    return [s for s in steps if len(s.split()) > 1 and s.split()[0] in ("SCAN", "SEARCH")
            and s.split()[1] in names]


def unbounded(step: str, newest_first: bool = False) -> bool:
    """True for a step that may read every row of the archive.

    ``newest_first``: the statement reads the archive from its newest end in index
    order and a LIMIT stops it, so a search of the (archive, timestamp) index is
    bounded by the rows it skips (the newest ones).
    """
    index = re.search(r"USING (?:COVERING )?INDEX (\w+)(?: \((.*)\))?", step)
    if step.startswith("SCAN"):
        return index is None or index.group(1) not in PARTIAL
    if "INTEGER PRIMARY KEY" in step or len(step.split()) == 2:
        return False  # a rowid lookup or range; bare SEARCH: min()/max() of the rowid
    if index is None:
        return True
    if index.group(1) in PARTIAL:
        return False
    if newest_first and index.group(1) == "ix_suprsync_archive_time":
        return False
    constraint = index.group(2) or ""
    return {c.split("=")[0].split(">")[0].split("<")[0].strip()
            for c in constraint.split(" AND ")} <= {"archive_name"}


def check(db: Path, statements: list[Statement], uses: str | None = None,
          pick: str | None = None) -> list[str]:
    """Plan the statements (those containing ``pick``); assert every step on the files
    table is bounded and, with ``uses``, that one of them uses that index. Returns the
    steps on the files table."""
    chosen = [s for s in statements if pick is None or pick in s[0]]
    assert chosen, f"no statement containing {pick!r} among {[s for s, _ in statements]}"
    seen: list[str] = []
    for statement, params in chosen:
        if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            continue
        steps = plan(db, statement, params)
        on_files = archive_steps(statement, steps)
        newest_first = (re.search(r"ORDER BY \S+\.timestamp DESC", statement) is not None
                        and "LIMIT" in statement
                        and not any("TEMP B-TREE" in s for s in steps))
        bad = [s for s in on_files if unbounded(s, newest_first)]
        assert not bad, f"unbounded read of the archive: {bad}\n{statement}\n{steps}"
        seen += on_files
    if uses is not None:
        assert any(uses in s for s in seen), f"{uses} not used: {seen}"
    return seen


# ------------------------------------------------------------------ the rule itself


@pytest.mark.parametrize(("step", "bad"), [
    ("SCAN supersync_v0", True),
    ("SCAN f USING COVERING INDEX ix_suprsync_archive_time", True),
    ("SEARCH supersync_v0 USING INDEX ix_suprsync_archive_time (archive_name=?)", True),
    ("SEARCH supersync_v0 USING COVERING INDEX ix_suprsync_remote_path (archive_name=?)", True),
    ("SEARCH supersync_v0 USING INDEX ix_suprsync_unverified (archive_name=?)", False),
    ("SCAN supersync_v0 USING INDEX ix_suprsync_present", False),
    ("SEARCH supersync_v0 USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)", False),
    ("SEARCH f USING INDEX ix_suprsync_remote_path (archive_name=? AND remote_path>? AND "
     "remote_path<?)", False),
    ("SEARCH supersync_v0 USING INDEX ix_suprsync_local_path (local_path=?)", False),
    ("SEARCH supersync_v0", False),
])
def test_the_rule_tells_bounded_steps_from_scans(step: str, bad: bool) -> None:
    """A scan, or a search bounded only by the archive name, reads the whole archive."""
    assert unbounded(step) is bad


def test_a_walk_from_the_newest_end_is_bounded_only_in_time_order() -> None:
    """Newest first under a LIMIT, the (archive, timestamp) index stops early; no other."""
    step = "SEARCH supersync_v0 USING INDEX ix_suprsync_archive_time (archive_name=?)"
    assert not unbounded(step, newest_first=True)
    assert unbounded(step.replace("archive_time", "remote_path"), newest_first=True)


def test_the_catalog_has_the_history_shape(history_db: Path) -> None:
    """A million rows, few unsynced, every old dir finalized, no ANALYZE statistics."""
    with sqlite3.connect(history_db) as conn:
        total, unsynced = conn.execute(
            "SELECT count(*), sum(remote_md5sum IS NULL) FROM supersync_v0").fetchone()
        dirs = conn.execute("SELECT count(*) FROM timecode_dirs_v0 WHERE finalized").fetchone()
        stats = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
        assert total >= ROWS
        assert 0 < unsynced < total / 400
        assert dirs[0] >= 300
        assert stats.fetchone()[0] == 0


# ------------------------------------------------------------------------ queries


def test_copyable_searches_the_unsynced_index(history_db: Path,
                                              manager: SupRsyncFilesManager) -> None:
    """get_copyable_files reads only the archive's unsynced rows."""
    found: list[Any] = []
    statements = capture(manager, lambda: found.extend(
        manager.get_copyable_files(ARCHIVE, max_copy_attempts=ATTEMPTS, num_files=100)))
    assert found
    check(history_db, statements, uses=UNVERIFIED)


def test_claims_search_the_unsynced_index(history_db: Path,
                                          manager: SupRsyncFilesManager) -> None:
    """claim_copyable (first slice and a later one) reads only unsynced rows, and the
    claims and conflicts by primary key."""
    top = manager.max_file_id()
    first: list[Any] = []
    statements = capture(manager, lambda: first.extend(manager.claim_copyable(
        ARCHIVE, "plans", 60.0, ATTEMPTS, 5, up_to=top)))
    assert first
    last = first[-1]
    statements += capture(manager, lambda: manager.claim_copyable(
        ARCHIVE, "plans", 60.0, ATTEMPTS, 5, after=(last.timestamp, last.id), up_to=top))
    statements += capture(manager, lambda: manager.renew_claims("plans", 60.0))
    manager.release_claims("plans")
    steps = check(history_db, statements, uses=UNVERIFIED)
    assert all(UNVERIFIED in s or "PRIMARY KEY" in s for s in steps), steps


def test_deletable_searches_the_verified_present_index(history_db: Path,
                                                       manager: SupRsyncFilesManager) -> None:
    """get_deletable_files reads only verified rows not removed."""
    statements = capture(manager, lambda: manager.get_deletable_files(ARCHIVE, 3600.0,
                                                                      limit=1000))
    check(history_db, statements, uses="ix_suprsync_verified_present")


def test_finalized_until_searches_the_unsynced_index(history_db: Path,
                                                     manager: SupRsyncFilesManager) -> None:
    """get_finalized_until reads only unsynced rows, not the archive in time order."""
    statements = capture(manager, lambda: manager.get_finalized_until(ARCHIVE))
    check(history_db, statements, uses=UNVERIFIED)


def test_archive_stats_are_bounded(history_db: Path, manager: SupRsyncFilesManager) -> None:
    """get_archive_stats: the uncopied count on the unsynced index, the newest rows from
    the end of the (archive, time) index, num_files from the count the catalog keeps
    plus the rows above it; in a later call and in a fresh manager (a new process)."""
    manager.get_archive_stats(ARCHIVE)  # the catalog's first count ever reads the archive
    again = capture(manager, lambda: manager.get_archive_stats(ARCHIVE))
    check(history_db, again, uses=UNVERIFIED, pick="remote_md5sum IS NULL")
    check(history_db, again, uses="ix_suprsync_archive_time", pick="local_path")
    other = SupRsyncFilesManager(str(history_db), clock=lambda: NOW)
    try:
        fresh = capture(other, lambda: other.get_archive_stats(ARCHIVE))
    finally:
        other.close()
    check(history_db, fresh)


def test_timecode_detection_reads_id_ranges(history_db: Path,
                                            manager: SupRsyncFilesManager) -> None:
    """detect_timecode_dirs reads primary-key ranges, in a fresh manager and later."""
    statements = capture(manager, lambda: manager.detect_timecode_dirs(ARCHIVE))
    statements += capture(manager, lambda: manager.detect_timecode_dirs(ARCHIVE))
    steps = check(history_db, statements, uses="INTEGER PRIMARY KEY")
    assert all("INTEGER PRIMARY KEY" in s or len(s.split()) == 2 for s in steps), steps


def test_completion_uses_the_dir_index(history_db: Path,
                                       manager: SupRsyncFilesManager) -> None:
    """mark_completed reads the archive's dir rows by the (archive, timecode) index."""
    statements = capture(manager, lambda: manager.read(
        lambda s: tc_rules.mark_completed(s, ARCHIVE, NOW)), table="timecode_dirs_v0")
    assert statements
    for statement, params in statements:
        steps = plan(history_db, statement, params)
        assert any("ix_suprsync_tcdir" in s for s in steps), steps
        assert not any(s.startswith("SCAN timecode_dirs_v0") for s in steps), steps


def test_sync_check_searches_the_unsynced_index(history_db: Path,
                                                manager: SupRsyncFilesManager) -> None:
    """The sync check of a dir counts its unsynced rows from the unsynced index; the
    look for quarantined rows (once none is missing) reads the dir by path range."""
    statements = capture(manager, lambda: manager.read(
        lambda s: tc_rules.unsynced_count(s, ARCHIVE, OPEN_TC)))
    check(history_db, statements, uses=UNVERIFIED)
    done = capture(manager, lambda: manager.read(  # the other archive has no unsynced row
        lambda s: tc_rules.unsynced_count(s, OTHER, OPEN_TC - 5)))
    check(history_db, done, uses="ix_suprsync_remote_path", pick="typeof")
    # The open dir completes (a newer one exists at NOW) but holds unsynced rows; the
    # read session is rolled back.
    marked = capture(manager, lambda: manager.read(lambda s: (
        tc_rules.mark_completed(s, ARCHIVE, NOW), tc_rules.mark_synced(s, ARCHIVE))))
    check(history_db, marked, uses=UNVERIFIED)


def test_finalization_summary_reads_one_dir(history_db: Path,
                                            manager: SupRsyncFilesManager) -> None:
    """The summary and the checks of a finalization read the dir's rows by a range of
    the remote-path index."""
    tc = OPEN_TC - 5
    statements = capture(manager, lambda: manager.read(lambda s: (
        tc_rules.dir_content(s, ARCHIVE, tc), tc_rules.rows_above(s, ARCHIVE, tc, 0),
        dir_bound(s, ARCHIVE, tc))))
    steps = check(history_db, statements, uses="ix_suprsync_remote_path")
    assert all("ix_suprsync_remote_path" in s or "PRIMARY KEY" in s
               or any(p in s for p in PARTIAL) for s in steps), steps


def test_late_file_scan_reads_new_ids(history_db: Path,
                                      manager: SupRsyncFilesManager) -> None:
    """The look for late files reads a primary-key range of new ids."""
    top = manager.max_file_id()
    statements = capture(manager, lambda: manager.read(
        lambda s: find_late_files(s, ARCHIVE, after_id=top - 100)))
    check(history_db, statements, uses="INTEGER PRIMARY KEY")
    # The bounds are read for the dirs the new ids are in, by the dir index, not for
    # every finalized dir of the archive.
    dirs = capture(manager, lambda: manager.read(
        lambda s: find_late_files(s, ARCHIVE, after_id=top - 100)), table="timecode_dirs_v0")
    assert dirs
    for statement, params in dirs:
        assert " IN (" in statement, statement
        steps = plan(history_db, statement, params)
        assert any("ix_suprsync_tcdir (archive_name=? AND timecode=?)" in s for s in steps), steps
        assert not any(s.startswith("SCAN timecode_dirs_v0") for s in steps), steps


def test_dirs_left_with_late_files_are_read_by_path_range(
        history_db: Path, manager: SupRsyncFilesManager) -> None:
    """A new agent reads the dirs left with late files by the remote-path index."""
    statements = capture(manager, lambda: manager.read(
        lambda s: late_in_dirs(s, ARCHIVE, {OPEN_TC - 7, OPEN_TC - 90})))
    check(history_db, statements, uses="ix_suprsync_remote_path", pick="remote_path >=")


def test_anomaly_checks_are_bounded(history_db: Path, manager: SupRsyncFilesManager) -> None:
    """The newest timestamp of the archive is read from the end of its time index."""
    from suprsync.catalog.anomalies import newest_timestamp

    statements = capture(manager, lambda: manager.read(lambda s: newest_timestamp(s, ARCHIVE)))
    check(history_db, statements, uses="ix_suprsync_archive_time")


def test_collision_lookup_uses_the_path_indexes(history_db: Path,
                                                manager: SupRsyncFilesManager) -> None:
    """partners() reads equal paths, parents and children by remote-path index ranges."""
    keys = [f"{OPEN_TC}/ufm_mv1/x.g3", f"{OPEN_TC - 3}/ufm_mv2"]
    statements = capture(manager, lambda: manager.read(lambda s: partners(s, ARCHIVE, keys)))
    check(history_db, statements, uses="ix_suprsync_remote_path")


def test_conflict_checks_use_primary_keys(history_db: Path,
                                          manager: SupRsyncFilesManager) -> None:
    """The conflict checks read the conflicts table by key and by archive index."""
    statements = capture(manager, lambda: manager.read(
        lambda s: (conflicted_ids(s, [1, 2, 3]), conflict_count(s, ARCHIVE))),
        table="suprsync_conflicts_v0")
    plans = [" | ".join(plan(history_db, st, p)) for st, p in statements]
    assert any("PRIMARY KEY" in p or "sqlite_autoindex" in p for p in plans), plans
    assert any("ix_suprsync_conflicts_archive" in p for p in plans), plans
    assert not any(re.search(r"SCAN suprsync_conflicts_v0(?! USING)", p) for p in plans), plans


def test_agent_iterations_never_scan_the_archive(history_db: Path, tmp_path: Path) -> None:
    """Every statement of two iterations of an agent on (a copy of) the history catalog,
    with new files to copy, verify, delete and a dir to finalize, is bounded, and the
    finalization reads the rows of its dir once."""
    from helpers import make_file

    from suprsync.agent import Agent, AgentConfig

    db = tmp_path / "catalog.db"
    shutil.copy(history_db, db)
    data, remote, root = tmp_path / "data", tmp_path / "remote", tmp_path / "files"
    remote.mkdir()
    adder = SupRsyncFilesManager(str(db), clock=lambda: NOW)
    for i in range(20):
        rel = f"{OPEN_TC + 1 + i % 2}/ufm_mv1/new_{i}.g3"
        adder.add_file(str(make_file(data, rel)), rel, ARCHIVE, timestamp=NOW - 7200)
    # A catalog in use keeps a count of its rows and how far its late files were looked for.
    adder.get_archive_stats(ARCHIVE)
    top = adder.max_file_id()
    adder.write(lambda s: keep_late_scan(s, ARCHIVE, top, id_mark(s), set(), set()))
    adder.close()
    config = AgentConfig(archive_name=ARCHIVE, remote_basedir=str(remote), db_path=str(db),
                         suprsync_file_root=str(root), instance_id="plans", sleep_time=0,
                         delete_local_after=3600, max_copy_attempts=ATTEMPTS)
    start = time.monotonic()
    agent = Agent(config, clock=lambda: NOW + time.monotonic() - start)
    try:
        statements = capture(agent.manager, agent.iterate)
        statements += capture(agent.manager, agent.iterate)
        finalized = agent.manager.read(lambda s: tc_rules.dir_states(s, ARCHIVE))["finalized"]
    finally:
        agent.close()
        agent.manager.close()
    assert OPEN_TC + 1 in finalized
    assert not list((data / f"{OPEN_TC + 1}" / "ufm_mv1").iterdir())
    check(db, statements)
    # The finalized dir's rows were checked one by one (the quarantine rule) once.
    dir_reads = [st for st, _ in statements
                 if "suprsync_text_ok" in st and "remote_path >=" in st]
    assert len(dir_reads) == 1, dir_reads
    # Run again, each read does work bounded by what it looks for, not by the history;
    # sweeps of older ids read windows of a fixed size (both ends bound).
    heavy = [(n, st) for st, params in statements
             if st.lstrip().upper().startswith("SELECT") and not WINDOW.search(st)
             and (n := work(db, st, params)) > MAX_WORK]
    assert not heavy, heavy
    assert any(WINDOW.search(st) for st, _ in statements)
    # Statistics another program may have gathered do not lead sqlite astray either.
    with sqlite3.connect(db) as conn:
        conn.execute("ANALYZE")
    check(db, statements)


#: A read of a window of file ids.
WINDOW = re.compile(r"\.id >=? \? AND supersync_v0\.id <= \?")


#: Most sqlite VM instructions one read may take (in thousands). Reading every row of
#: the archive takes over 10,000 (ten million instructions).
MAX_WORK = 1000


def work(db: Path, statement: str, params: Any) -> int:
    """Thousands of sqlite VM instructions a statement takes to run to the end."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    with sqlite3.connect(db) as conn:
        register_sqlite_functions(conn)
        conn.set_progress_handler(tick, 1000)
        conn.execute(statement, params or ()).fetchall()
    return steps


# ------------------------------------------------------------------- PostgreSQL

PG_ROWS = 200_000
#: Indexes of the files table.
FILE_INDEXES = {ix.name for ix in INDEXES if ix.table is not None and ix.table.name == FILES}
FILE_INDEXES.add(f"{FILES}_pkey")


@pytest.fixture(scope="session")
def pg_history(pg: PgServer) -> str:
    """A PostgreSQL catalog of the same shape, 200,000 rows, analyzed (the test owns it)."""
    url = "postgresql://" + pg.create_database().split("://", 1)[1]
    build_pg_history_catalog(url, PG_ROWS)
    return url


@pytest.fixture
def pg_manager(pg_history: str) -> Iterator[SupRsyncFilesManager]:
    m = SupRsyncFilesManager(pg_history, clock=lambda: NOW)
    yield m
    m.close()


def pg_nodes(manager: SupRsyncFilesManager, statement: str, params: Any) -> list[dict]:
    """Every node of the EXPLAIN (FORMAT JSON) plan of a statement."""
    raw = manager.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(f"EXPLAIN (FORMAT JSON) {statement}", params)
        tree = cur.fetchone()[0][0]["Plan"]
        raw.rollback()
    finally:
        raw.close()
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def pg_unbounded(node: dict, limited: bool) -> bool:
    """True for a plan node that may read every row of the archive (see unbounded())."""
    if node["Node Type"] == "Seq Scan":
        return node.get("Relation Name") == FILES
    index = node.get("Index Name")
    if index not in FILE_INDEXES:
        return False
    if index in PARTIAL or index == f"{FILES}_pkey":
        return False
    if (index == "ix_suprsync_archive_time" and limited
            and node.get("Scan Direction") == "Backward"):
        return False
    cond = node.get("Index Cond", "")
    return not any(column in cond for column in ("remote_path", "local_path", "timestamp"))


def pg_check(manager: SupRsyncFilesManager, statements: list[Statement],
             uses: tuple[str, ...] = ()) -> list[str]:
    """Like check(), on PostgreSQL: no Seq Scan of the files table, no index walk over
    the whole archive; with ``uses``, one of these indexes is used. Returns the indexes
    of the files table that the plans use."""
    assert statements
    used: list[str] = []
    for statement, params in statements:
        if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            continue
        nodes = pg_nodes(manager, statement, params)
        limited = any(n["Node Type"] == "Limit" for n in nodes)
        bad = [n for n in nodes if pg_unbounded(n, limited)]
        assert not bad, f"unbounded read of the archive: {bad}\n{statement}"
        used += [n["Index Name"] for n in nodes if n.get("Index Name") in FILE_INDEXES]
    if uses:
        assert set(used) & set(uses), f"none of {uses} used: {used}"
    return used


def test_pg_copyable_and_claims_use_a_partial_index(pg_manager: SupRsyncFilesManager) -> None:
    """get_copyable_files and claim_copyable read the unsynced rows or the rows not
    removed, whichever index holds fewer (PostgreSQL knows their sizes)."""
    m = pg_manager
    statements = capture(m, lambda: m.get_copyable_files(ARCHIVE, max_copy_attempts=ATTEMPTS,
                                                         num_files=100))
    pg_check(m, statements, uses=PARTIAL)
    top = m.max_file_id()
    claimed = capture(m, lambda: m.claim_copyable(ARCHIVE, "plans", 60.0, ATTEMPTS, 5,
                                                  after=(0.0, 0), up_to=top))
    m.release_claims("plans")
    pg_check(m, claimed, uses=PARTIAL)


def test_pg_deletable_finalized_until_and_stats_are_bounded(
        pg_manager: SupRsyncFilesManager) -> None:
    """get_deletable_files on the index of verified local rows, get_finalized_until and
    the uncopied count on the unsynced index, the newest rows from the end of the time
    index."""
    m = pg_manager
    pg_check(m, capture(m, lambda: m.get_deletable_files(ARCHIVE, 3600.0, limit=1000)),
             uses=("ix_suprsync_verified_present",))
    from suprsync.deletion import candidate_rows

    pg_check(m, capture(m, lambda: m.read(
        lambda s: candidate_rows(s, ARCHIVE, None, NOW - 3600.0, 500))),
        uses=("ix_suprsync_verified_present",))
    # Copies at further destinations counted too: still only the local rows.
    pg_check(m, capture(m, lambda: m.read(
        lambda s: candidate_rows(s, ARCHIVE, None, NOW - 3600.0, 500, elsewhere=(7, 8)))),
        uses=("ix_suprsync_present",))
    pg_check(m, capture(m, lambda: m.get_finalized_until(ARCHIVE)),
             uses=("ix_suprsync_unsynced",))
    m.get_archive_stats(ARCHIVE)  # the catalog's first count ever reads the archive
    used = pg_check(m, capture(m, lambda: m.get_archive_stats(ARCHIVE)),
                    uses=("ix_suprsync_unsynced",))
    assert "ix_suprsync_archive_time" in used, used


def test_pg_timecode_steps_are_bounded(pg_manager: SupRsyncFilesManager) -> None:
    """Detection and late files by primary key; the sync check, the summary and the
    finalization checks by the dir's range of the remote-path index (or the unsynced
    rows); the newest timestamp from the end of the time index."""
    from suprsync.catalog.anomalies import newest_timestamp

    m = pg_manager
    tc = OPEN_TC - 5
    pg_check(m, capture(m, lambda: m.detect_timecode_dirs(ARCHIVE)),
             uses=(f"{FILES}_pkey",))
    top = m.max_file_id()
    pg_check(m, capture(m, lambda: m.read(lambda s: find_late_files(s, ARCHIVE, top - 100))),
             uses=(f"{FILES}_pkey",))
    pg_check(m, capture(m, lambda: m.read(lambda s: late_in_dirs(s, ARCHIVE, {tc}))),
             uses=("ix_suprsync_remote_path",))
    pg_check(m, capture(m, lambda: m.read(lambda s: (
        tc_rules.unsynced_count(s, ARCHIVE, OPEN_TC), tc_rules.unsynced_count(s, OTHER, tc),
        tc_rules.mark_completed(s, ARCHIVE, NOW), tc_rules.mark_synced(s, ARCHIVE)))),
        uses=("ix_suprsync_unsynced", "ix_suprsync_remote_path"))
    pg_check(m, capture(m, lambda: m.read(lambda s: (
        tc_rules.dir_content(s, ARCHIVE, tc), tc_rules.rows_above(s, ARCHIVE, tc, 0)))),
        uses=("ix_suprsync_remote_path",))
    pg_check(m, capture(m, lambda: m.read(lambda s: newest_timestamp(s, ARCHIVE))),
             uses=("ix_suprsync_archive_time",))


def test_pg_collision_lookup_uses_the_path_indexes(pg_manager: SupRsyncFilesManager) -> None:
    """partners() reads equal paths, parents and children by remote-path index ranges."""
    m = pg_manager
    keys = [f"{OPEN_TC}/ufm_mv1/x.g3", f"{OPEN_TC - 3}/ufm_mv2"]
    pg_check(m, capture(m, lambda: m.read(lambda s: partners(s, ARCHIVE, keys))),
             uses=("ix_suprsync_remote_path",))


def test_pg_connections_plan_without_jit(pg_manager: SupRsyncFilesManager) -> None:
    """The catalog's queries are short lookups whose costs PostgreSQL overestimates
    (ranges of parameters it cannot see): compiling them with JIT took longer than
    running them (5 to 25 ms against 0.3 ms for the collision lookup at 1,000,000
    rows), so the agent's connections plan without it."""
    m = pg_manager
    keys = [f"{OPEN_TC}/ufm_mv1/x{i}.g3" for i in range(500)]
    statements = capture(m, lambda: m.read(lambda s: partners(s, ARCHIVE, keys)))
    ranges = [st for st in statements if "unnest" in st[0]]
    assert ranges
    raw = m.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SHOW jit")
        assert cur.fetchone()[0] == "off"
        for statement, params in ranges:
            cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params)
            plan = cur.fetchone()[0][0]
            assert "JIT" not in plan, plan["JIT"]
        raw.rollback()
    finally:
        raw.close()


ORIGINAL_SCHEMA = """
CREATE TABLE supersync_v0 (id INTEGER PRIMARY KEY, local_path VARCHAR NOT NULL,
    local_md5sum VARCHAR NOT NULL, archive_name VARCHAR NOT NULL,
    remote_path VARCHAR NOT NULL, timestamp FLOAT NOT NULL, remote_md5sum VARCHAR,
    copied FLOAT, removed FLOAT, failed_copy_attempts INTEGER, deletable BOOLEAN,
    ignore BOOLEAN);
CREATE TABLE timecode_dirs_v0 (id INTEGER PRIMARY KEY, timecode INTEGER NOT NULL,
    archive_name VARCHAR NOT NULL, completed BOOLEAN, synced BOOLEAN, finalized BOOLEAN,
    finalize_file_id INTEGER);
"""


def test_queries_work_on_a_catalog_without_suprsyncs_indexes(tmp_path: Path) -> None:
    """A catalog only the original wrote, opened without creating anything (a read-only
    look): the index hints are left out, the answers are right."""
    db = tmp_path / "original.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(ORIGINAL_SCHEMA)
        conn.executemany(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, remote_md5sum) VALUES (?, ?, 'arch', ?, ?, ?)",
            [(f"/d/{i}", "0" * 32, f"16750/{i}", float(i), "0" * 32 if i < 3 else None)
             for i in range(5)])
    indexed = tmp_path / "indexed.db"
    shutil.copy(db, indexed)

    def answers(path: Path, create_all: bool) -> tuple[Any, ...]:
        manager = SupRsyncFilesManager(str(path), create_all=create_all)
        try:
            stats = manager.get_archive_stats("arch")
            copyable = [f.local_path for f in manager.get_copyable_files("arch")]
            return (stats["num_files"], stats["uncopied_files"], copyable,
                    manager.get_finalized_until("arch"))
        finally:
            manager.close()

    bare = answers(db, create_all=False)
    assert bare[:3] == (5, 2, ["/d/3", "/d/4"])
    assert bare == answers(indexed, create_all=True)
    # The read-only commands look at such a catalog without adding to it.
    for command in (["stats", "--json"], ["status", "--json"], ["list", "arch"]):
        result = run_cli(*command, "--db", str(db), timeout=60)
        assert result.returncode == 0, result.stderr
    assert json.loads(run_cli("status", "--json", "--db", str(db), timeout=60).stdout
                      )["arch"]["conflicts"] == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT IN "
                            "('supersync_v0', 'timecode_dirs_v0')").fetchall() == []


def test_a_further_destination_reads_only_its_pending_copies(
        history_db: Path, manager: SupRsyncFilesManager) -> None:
    """Claiming, recording and counting at a further destination read its pending copies
    through their partial index and the files by primary key, never the archive."""
    from sqlalchemy import delete, insert

    from suprsync.catalog.copies import Registered, counts
    from suprsync.catalog.destqueue import DestinationCopies
    from suprsync.catalog.schema import DestinationCopy, DestinationRecord
    from suprsync.catalog.store import CopyResult

    top = manager.max_file_id()
    key = manager.write(lambda s: s.execute(insert(DestinationRecord).values(
        archive_name=ARCHIVE, name="plans", url="/srv/plans", is_primary=False, added=NOW,
        tracked_up_to=top).returning(DestinationRecord.id)).scalar_one())
    some = list(range(top - 50, top + 1))
    manager.write(lambda s: s.execute(insert(DestinationCopy), [
        {"dest": key, "file_id": i, "failed_copy_attempts": 0, "verified": False,
         "lost": False} for i in some]))
    copies = DestinationCopies(manager, Registered(key, "plans", "/srv/plans", False))
    try:
        got: list[Any] = []
        statements = capture(manager, lambda: got.extend(copies.claim_copyable(
            ARCHIVE, "plans", 60.0, ATTEMPTS, 5, up_to=top)), table="suprsync_copies_v0")
        assert got
        statements += capture(manager, lambda: copies.record_results(
            [CopyResult(r.id, r.local_md5sum, NOW, True) for r in got], "plans"),
            table="suprsync_copies_v0")
        statements += capture(manager, lambda: copies.track(ARCHIVE), table="suprsync_copies_v0")
        counted = capture(manager, lambda: manager.read(lambda s: counts(s, key, ATTEMPTS)),
                          table="suprsync_copies_v0")
        statements += counted
        check(history_db, statements)
        # The counts by state read the range of that state in an index; the verified
        # and lost ones read that index alone (a table read per file the destination
        # holds, every iteration, cost a second per million files). Only the pending
        # rows are looked up, for their attempts.
        count_steps = [step for st, prm in counted for step in plan(history_db, st, prm)]
        assert count_steps and all(
            "ix_suprsync_copies_state (dest=? AND verified=?" in step
            or "ix_suprsync_copies_pending" in step for step in count_steps), count_steps
        assert sum("COVERING INDEX ix_suprsync_copies_state" in step
                   for step in count_steps) >= 2, count_steps
        claim = next(s for s, _ in statements if "suprsync_dest_claims_v0" in s
                     and s.lstrip().upper().startswith("SELECT"))
        steps = plan(history_db, claim, next(p for s, p in statements if s == claim))
        assert any("ix_suprsync_copies_pending" in s for s in steps), steps
    finally:
        manager.write(lambda s: s.execute(delete(DestinationCopy).where(
            DestinationCopy.dest == key)))
        manager.write(lambda s: s.execute(delete(DestinationRecord).where(
            DestinationRecord.id == key)))


def test_deletion_candidates_search_only_verified_local_files(
        history_db: Path, manager: SupRsyncFilesManager) -> None:
    """With one destination, the deletion step's candidates come from the partial index of
    verified local rows: local rows never verified (given up, waiting) are not read on
    every iteration however many accumulate."""
    from suprsync.deletion import candidate_rows

    statements = capture(manager, lambda: manager.read(
        lambda s: candidate_rows(s, ARCHIVE, None, NOW - 3600.0, 500)))
    statements += capture(manager, lambda: manager.read(
        lambda s: candidate_rows(s, ARCHIVE, (NOW - 7200.0, 5), NOW - 3600.0, 500)))
    steps = check(history_db, statements, uses="ix_suprsync_verified_present")
    on_files = [s for s in steps if FILES in s and "suprsync_conflicts" not in s]
    assert all("ix_suprsync_verified_present" in s for s in on_files), on_files


def test_deletion_counting_further_copies_reads_only_local_files(
        history_db: Path, manager: SupRsyncFilesManager) -> None:
    """With copies elsewhere counted, the deletion step's candidates and its newest-files
    read still search only the rows not removed, and each file's copies by its id."""
    from suprsync.deletion import candidate_rows, kept_newest
    from suprsync.retention import Policy

    policy = Policy.from_published(
        '{"rules": [{"match": "*", "delete_after": 3600, "keep_newest": 5}]}')
    assert policy is not None and policy.keeps_newest
    statements = capture(manager, lambda: manager.read(
        lambda s: candidate_rows(s, ARCHIVE, None, NOW - 3600.0, 500, elsewhere=(7, 8))))
    statements += capture(manager, lambda: kept_newest(manager, ARCHIVE, policy, (7, 8)))
    steps = check(history_db, statements, uses="ix_suprsync_present")
    copies = [s for st, p in statements for s in plan(history_db, st, p)
              if "suprsync_copies_v0" in s]
    # Each lookup is a search by file id (the primary key or the file index).
    assert copies and all(s.startswith("SEARCH") and "file_id=?" in s for s in copies), copies
    assert steps


def test_a_catalog_with_the_older_unsynced_index_is_read_through_it(tmp_path: Path) -> None:
    """A catalog made before ``ix_suprsync_unverified``, looked at without creating
    anything, is read through its ``ix_suprsync_unsynced``; opened to work, it gains the
    new index, which the reads name from then on, and keeps the old one (an agent of
    the older version may be naming it)."""
    db = tmp_path / "older.db"
    SupRsyncFilesManager(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX ix_suprsync_unverified")
        conn.execute("CREATE INDEX ix_suprsync_unsynced ON supersync_v0 "
                     "(archive_name, timestamp) WHERE remote_md5sum IS NULL "
                     "OR remote_md5sum != local_md5sum")
        conn.executemany(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, failed_copy_attempts) VALUES (?, ?, 'arch', ?, ?, ?)",
            [(f"/d/{i}", "0" * 32, f"16750/{i}", float(i), 5 if i < 3 else 0)
             for i in range(6)])

    def copyable(create_all: bool) -> tuple[list[str], list[Statement]]:
        manager = SupRsyncFilesManager(str(db), create_all=create_all)
        found: list[str] = []
        try:
            statements = capture(manager, lambda: found.extend(
                f.local_path for f in manager.get_copyable_files("arch", max_copy_attempts=5)))
        finally:
            manager.close()
        return found, statements

    found, statements = copyable(create_all=False)
    assert found == ["/d/3", "/d/4", "/d/5"]
    assert any("INDEXED BY ix_suprsync_unsynced" in s for s, _ in statements), statements
    found, statements = copyable(create_all=True)
    assert found == ["/d/3", "/d/4", "/d/5"]
    assert any(f"INDEXED BY {UNVERIFIED}" in s for s, _ in statements), statements
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {UNVERIFIED, "ix_suprsync_unsynced"} <= names
