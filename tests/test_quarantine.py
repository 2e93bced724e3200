"""Poison rows: catalog rows whose values make no sense are quarantined, the others flow.

The catalogs here are created by hand without NOT NULL constraints (and, on
sqlite, without column types), as other programs may create them, and the poison
rows are inserted with plain sqlite3 or SQL: NULLs, bytes that are not UTF-8,
numbers stored as text, absurd timestamps, malformed md5s. Real agents, a real
``suprsync run`` process and the real CLI then work on them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from helpers import ARCHIVE, T0, Clock, catalog_agent, md5, new_agent, write_file
from invariants import check_invariants
from sqlalchemy import text

from suprsync import SupRsyncFilesManager
from suprsync.catalog.quarantine import (
    HEALTHY,
    MAX_TIMESTAMP,
    QUARANTINED,
    printable,
    raw_rows_query,
    why_quarantined,
)
from suprsync.catalog.timecode import dir_states
from suprsync.quarantine_log import QuarantineLog

GOOD_MD5 = md5(b"x")
GOOD = {"local_path": "/data/f.g3", "local_md5sum": GOOD_MD5, "archive_name": ARCHIVE,
        "remote_path": "17000/f.g3", "timestamp": T0}

#: (name, changes to GOOD, expected part of the reason or None for a sound row).
RULES: list[tuple[str, dict[str, Any], str | None]] = [
    ("plain", {}, None),
    ("utf8 names", {"local_path": "/data/café.g3", "remote_path": "17000/ünï.g3"}, None),
    ("integer timestamp", {"timestamp": int(T0)}, None),
    ("zero timestamp", {"timestamp": 0.0}, None),
    ("last timestamp", {"timestamp": MAX_TIMESTAMP}, None),
    ("uppercase md5", {"local_md5sum": GOOD_MD5.upper()}, None),
    ("optional columns set", {"remote_md5sum": "garbage", "copied": T0, "removed": 0,
                              "failed_copy_attempts": 3, "deletable": 1, "ignore": 0}, None),
    ("booleans", {"deletable": True, "ignore": False}, None),
    # Paths that leave the base dir are the copy step's business (it charges them).
    ("empty remote path", {"remote_path": ""}, None),
    ("NUL in remote path", {"remote_path": "17000/a\0b"}, None),
    ("NULL local_path", {"local_path": None}, "local_path is NULL"),
    ("NULL local_md5sum", {"local_md5sum": None}, "local_md5sum is NULL"),
    ("NULL archive_name", {"archive_name": None}, "archive_name is NULL"),
    ("NULL remote_path", {"remote_path": None}, "remote_path is NULL"),
    ("NULL timestamp", {"timestamp": None}, "timestamp is NULL"),
    ("all NULL", {k: None for k in GOOD}, "local_path is NULL; local_md5sum is NULL"),
    ("remote_path bytes", {"remote_path": b"17000/\xff.g3"},
     "remote_path is not valid UTF-8: b'17000/\\xff.g3' (a name suprsync cannot copy"),
    ("remote_path undecodable text", {"remote_path": "17000/\udcff.g3"},
     "remote_path is not valid UTF-8: b'17000/\\xff.g3'"),
    ("local_path bytes", {"local_path": b"/data/\xfe"}, "local_path is not valid UTF-8"),
    ("archive_name undecodable", {"archive_name": "ar\udce9"}, "archive_name is not valid"),
    ("remote_md5sum undecodable", {"remote_md5sum": b"\xff" * 32},
     "remote_md5sum is not valid UTF-8"),
    ("md5 as a BLOB", {"local_md5sum": GOOD_MD5.encode()}, "local_md5sum is stored as a BLOB"),
    ("remote_path a number", {"remote_path": 17000}, "remote_path is a int, not text"),
    ("NUL in local path", {"local_path": "/data/a\0b"}, "local_path contains a NUL byte"),
    ("short md5", {"local_md5sum": "abc"}, "local_md5sum is not 32 hex digits: 'abc'"),
    ("long md5", {"local_md5sum": GOOD_MD5 + "0"}, "not 32 hex digits"),
    ("non-hex md5", {"local_md5sum": "g" * 32}, "not 32 hex digits"),
    ("md5 with NUL", {"local_md5sum": "0" * 31 + "\0"}, "not 32 hex digits"),
    ("timestamp text", {"timestamp": "abc"}, "timestamp is not a number: 'abc'"),
    ("timestamp numeric text", {"timestamp": "12"}, "timestamp is not a number: '12'"),
    ("timestamp negative", {"timestamp": -1.0}, "timestamp is not a time"),
    ("timestamp far future", {"timestamp": 1e300}, "timestamp is not a time"),
    ("timestamp NaN", {"timestamp": math.nan}, "timestamp is not a number (0 to"),
    ("timestamp inf", {"timestamp": math.inf}, "timestamp is not a time"),
    ("timestamp -inf", {"timestamp": -math.inf}, "timestamp is not a time"),
    ("attempts text", {"failed_copy_attempts": "abc"}, "failed_copy_attempts is not an integer"),
    ("attempts numeric text", {"failed_copy_attempts": "12"}, "failed_copy_attempts is not"),
    ("attempts real", {"failed_copy_attempts": 2.5}, "failed_copy_attempts is not an integer"),
    ("copied text", {"copied": "yesterday"}, "copied is not a number"),
    ("removed text", {"removed": "gone"}, "removed is not a number"),
    ("deletable text", {"deletable": "yes"}, "deletable is not an integer"),
    ("ignore text", {"ignore": "no"}, "ignore is not an integer"),
]


@pytest.mark.parametrize("changes, expected", [(c, e) for _, c, e in RULES],
                         ids=[n for n, _, _ in RULES])
def test_rule(changes: dict[str, Any], expected: str | None) -> None:
    reason = why_quarantined({**GOOD, **changes})
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


def test_printable_escapes_bytes_and_undecodable_text() -> None:
    assert printable(b"17000/\xff.g3") == "17000/\\xff.g3"
    assert printable("17000/\udcff.g3") == "17000/\\xff.g3"
    assert printable("café") == "café"
    assert printable(None) is None and printable(3.5) == 3.5


# ------------------------------------------------------------------ catalogs

UNTYPED = ("CREATE TABLE supersync_v0 (id INTEGER PRIMARY KEY, local_path, local_md5sum, "
           "archive_name, remote_path, timestamp, remote_md5sum, copied, removed, "
           "failed_copy_attempts, deletable, ignore)")
TYPED_NULLABLE = ("CREATE TABLE supersync_v0 (id INTEGER PRIMARY KEY, local_path VARCHAR, "
                  "local_md5sum VARCHAR, archive_name VARCHAR, remote_path VARCHAR, "
                  "timestamp FLOAT, remote_md5sum VARCHAR, copied FLOAT, removed FLOAT, "
                  "failed_copy_attempts INTEGER, deletable BOOLEAN, ignore BOOLEAN)")
COLUMNS = ("local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "copied", "removed", "failed_copy_attempts", "deletable", "ignore")


def _placeholder(value: Any) -> tuple[str, Any]:
    """SQL and parameter storing value as the rule reads it: undecodable text as TEXT."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "CAST(? AS TEXT)", value.encode("utf-8", "surrogateescape")
    return "?", value


def insert(conn: sqlite3.Connection, values: dict[str, Any]) -> int:
    """Insert one row with plain sqlite3 (every column of COLUMNS, missing ones NULL)."""
    marks, params = zip(*(_placeholder(values.get(c)) for c in COLUMNS), strict=True)
    cur = conn.execute(f"INSERT INTO supersync_v0 ({', '.join(COLUMNS)}) "
                       f"VALUES ({', '.join(marks)})", params)
    assert cur.lastrowid is not None
    return cur.lastrowid


def raw_row(db: Path, file_id: int) -> tuple[Any, ...]:
    """Every column of a row as stored, read with plain sqlite3."""
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    try:
        return conn.execute("SELECT *, typeof(timestamp) FROM supersync_v0 WHERE id = ?",
                            (file_id,)).fetchone()
    finally:
        conn.close()


def classify(manager: SupRsyncFilesManager) -> tuple[set[int], set[int], dict[int, str | None]]:
    """Ids the SQL calls healthy, ids it calls quarantined, and the rule's verdict per id."""
    def read(session: Any) -> Any:
        healthy = {r.id for r in session.execute(raw_rows_query(HEALTHY))}
        quarantined = {r.id for r in session.execute(raw_rows_query(QUARANTINED))}
        verdicts = {r.id: why_quarantined(r._mapping) for r in session.execute(raw_rows_query())}
        return healthy, quarantined, verdicts

    return manager.read(read)


@pytest.mark.parametrize("ddl", [UNTYPED, TYPED_NULLABLE], ids=["untyped", "typed"])
def test_sql_condition_agrees_with_the_rule_on_sqlite(ddl: str, tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    with sqlite3.connect(db) as conn:
        conn.execute(ddl)
        for _, changes, _ in RULES:
            insert(conn, {**GOOD, **changes})
    manager = SupRsyncFilesManager(str(db))
    try:
        healthy, quarantined, verdicts = classify(manager)
    finally:
        manager.close()
    assert len(verdicts) == len(RULES)
    assert healthy | quarantined == set(verdicts) and not healthy & quarantined
    assert healthy == {i for i, reason in verdicts.items() if reason is None}
    expected = len([r for r in RULES if r[2] is not None])
    if ddl == UNTYPED:
        assert len(quarantined) == expected
    else:
        # Column affinity stores '12' as 12.0 or 12, and 17000 as '17000': sound values.
        assert len(quarantined) == expected - 3


#: The rules whose values a PostgreSQL table with the schema's column types can hold.
PG_NAMES = {"plain", "utf8 names", "integer timestamp", "zero timestamp", "last timestamp",
            "uppercase md5", "optional columns set", "booleans", "empty remote path",
            "NULL local_path", "NULL local_md5sum", "NULL archive_name", "NULL remote_path",
            "NULL timestamp", "all NULL", "short md5", "long md5", "non-hex md5",
            "timestamp negative", "timestamp far future", "timestamp NaN", "timestamp inf",
            "timestamp -inf"}
PG_RULES = [r for r in RULES if r[0] in PG_NAMES]

PG_TABLE = ("CREATE TABLE supersync_v0 (id SERIAL PRIMARY KEY, local_path VARCHAR, "
            "local_md5sum VARCHAR, archive_name VARCHAR, remote_path VARCHAR, "
            "timestamp DOUBLE PRECISION, remote_md5sum VARCHAR, copied DOUBLE PRECISION, "
            "removed DOUBLE PRECISION, failed_copy_attempts INTEGER, deletable BOOLEAN, "
            "ignore BOOLEAN)")


def pg_catalog(pg: Any) -> str:
    """A new PostgreSQL database whose files table has no NOT NULL constraints."""
    url = "postgresql://" + pg.create_database().split("://", 1)[1]
    manager = SupRsyncFilesManager(url, create_all=False)
    try:
        with manager.engine.begin() as conn:
            conn.execute(text(PG_TABLE))
    finally:
        manager.close()
    return url


def pg_insert(manager: SupRsyncFilesManager, values: dict[str, Any]) -> int:
    row = {c: values.get(c) for c in COLUMNS}
    for flag in ("deletable", "ignore"):
        if row[flag] is not None:
            row[flag] = bool(row[flag])
    with manager.engine.begin() as conn:
        return conn.execute(text(
            f"INSERT INTO supersync_v0 ({', '.join(COLUMNS)}) VALUES "
            f"({', '.join(':' + c for c in COLUMNS)}) RETURNING id"), row).scalar_one()


def test_sql_condition_agrees_with_the_rule_on_postgresql(pg: Any) -> None:
    assert len(PG_RULES) == len(PG_NAMES)
    manager = SupRsyncFilesManager(pg_catalog(pg))
    try:
        for _, changes, _ in PG_RULES:
            pg_insert(manager, {**GOOD, **changes})
        healthy, quarantined, verdicts = classify(manager)
    finally:
        manager.close()
    assert len(verdicts) == len(PG_RULES)
    assert healthy | quarantined == set(verdicts) and not healthy & quarantined
    assert healthy == {i for i, reason in verdicts.items() if reason is None}
    assert len(quarantined) == len([r for r in PG_RULES if r[2] is not None])


# ------------------------------------------------------------------ the agent

#: Poison rows of the agent tests: (changes to a row of a real file, reason).
POISON: list[tuple[dict[str, Any], str]] = [
    ({"local_path": None}, "local_path is NULL"),
    ({"local_md5sum": None}, "local_md5sum is NULL"),
    ({"remote_path": None}, "remote_path is NULL"),
    ({"timestamp": None}, "timestamp is NULL"),
    ({"remote_path": b"16991/\xff.g3"}, "remote_path is not valid UTF-8"),
    ({"remote_path": "16991/\udcfe.g3"}, "remote_path is not valid UTF-8"),
    ({"local_path": "LOCAL\udcff"}, "local_path is not valid UTF-8"),
    ({"timestamp": "abc"}, "timestamp is not a number"),
    ({"timestamp": "12"}, "timestamp is not a number"),
    ({"timestamp": -5.0}, "timestamp is not a time"),
    ({"timestamp": 1e300}, "timestamp is not a time"),
    ({"timestamp": math.inf}, "timestamp is not a time"),
    ({"failed_copy_attempts": "abc"}, "failed_copy_attempts is not an integer"),
    ({"failed_copy_attempts": "12"}, "failed_copy_attempts is not an integer"),
    ({"local_md5sum": "not-an-md5"}, "local_md5sum is not 32 hex digits"),
    # Looks synced, so it would be due for deletion.
    ({"timestamp": "abc", "remote_md5sum": "SAME"}, "timestamp is not a number"),
]


def poisoned_catalog(db: Path, local: Path, good: int = 3) -> tuple[list[int], dict[int, str],
                                                                    dict[int, Path]]:
    """An untyped catalog with good rows of real files in timecode dir 16990 and poison
    rows (each of a real file, in dir 16991, registered before the good ones).

    Returns the good ids, the poison ids with their expected reasons, and the local file
    of each poison row.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    poison: dict[int, str] = {}
    poison_files: dict[int, Path] = {}
    good_ids = []
    with sqlite3.connect(db) as conn:
        conn.execute(UNTYPED)
        for n, (changes, reason) in enumerate(POISON):
            data = f"poison {n}\n".encode()
            # A local path that is not UTF-8 names a real file too.
            name = f"p{n}\udcff.g3" if changes.get("local_path") == "LOCAL\udcff" else f"p{n}.g3"
            path = write_file(local / name, data)
            values = {"local_path": str(path), "local_md5sum": md5(data),
                      "archive_name": ARCHIVE, "remote_path": f"16991/p{n}.g3",
                      "timestamp": T0 - 7200 + n, **changes}
            if values["local_path"] == "LOCAL\udcff":
                values["local_path"] = str(path)
            if values.get("remote_md5sum") == "SAME":
                values["remote_md5sum"] = values["local_md5sum"]
            file_id = insert(conn, values)
            poison[file_id] = reason
            poison_files[file_id] = path
        for n in range(good):
            data = f"good {n}\n".encode()
            path = write_file(local / f"g{n}.g3", data)
            good_ids.append(insert(conn, {"local_path": str(path), "local_md5sum": md5(data),
                                          "archive_name": ARCHIVE,
                                          "remote_path": f"16990/sub/g{n}.g3",
                                          "timestamp": T0 - 3600 + n}))
        # Rows in no archive at all.
        for name in (None, b"\xffarchive"):
            poison[insert(conn, {**GOOD, "archive_name": name})] = "archive_name is"
    return good_ids, poison, poison_files


def forget_false_claims(db: Path) -> None:
    """Clear the verified look of the poison row inserted as synced with nothing sent.

    The row came in that way (another program's claim, not suprsync's); the invariant
    checker would take it at face value.
    """
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE supersync_v0 SET remote_md5sum = NULL WHERE timestamp = 'abc' "
                     "AND remote_md5sum = local_md5sum")


def remote_tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def quarantine_lines(text_: str, file_id: int) -> list[str]:
    return [ln for ln in text_.splitlines() if f"file id {file_id} " in ln and "quarantined" in ln]


def test_agent_copies_every_sound_row_and_leaves_poison_rows_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "catalog" / "suprsync.db"
    good, poison, poison_files = poisoned_catalog(db, tmp_path / "local")
    before = {i: raw_row(db, i) for i in poison}
    clock = Clock()
    manager = SupRsyncFilesManager(str(db), clock=clock)
    remote = tmp_path / "remote"
    agent = new_agent(manager, clock, tmp_path, remote, delete_local_after=0,
                      files_per_batch=2)
    try:
        with caplog.at_level(logging.INFO):
            # files_per_batch=2: the poison rows, older, must not take the batch.
            assert agent.iterate() is True
            assert agent.iterate() is True
            assert agent.iterate() is True
        log_text = caplog.text
        assert remote_tree(remote)[:3] == [f"16990/sub/g{n}.g3" for n in range(3)]
        assert not (remote / "16991").exists()
        for file_id in good:
            row = raw_row(db, file_id)
            assert row[6] == row[2], row  # remote_md5sum == local_md5sum
            assert row[8] is not None  # removed: the local copy was deleted
        for file_id, reason in poison.items():
            assert raw_row(db, file_id) == before[file_id], f"poison row {file_id} was changed"
            if file_id in poison_files:
                assert poison_files[file_id].exists(), "a quarantined file was deleted"
                lines = quarantine_lines(log_text, file_id)
                assert len(lines) == 1, (file_id, lines)
                assert reason in lines[0], lines[0]
        assert "Traceback" not in log_text
        # Dir 16990 holds only sound rows: finalized. 16991 waits for its poison rows.
        states = manager.read(lambda s: dir_states(s, ARCHIVE))
        assert 16990 in states["finalized"] and 16991 in states["completed_unsynced"], states
        stats = manager.get_archive_stats(ARCHIVE)
        # The newest row with a time (1e300 and 'abc' sort after it) is the finalization file.
        assert stats["last_file_added"].endswith("_timestreams_16990_finalized.yaml")
        assert stats["finalized_until"] == T0 - 7200 + 0 - 1  # the oldest poison row waits
    finally:
        agent.close()
        manager.close()
    forget_false_claims(db)
    check_invariants(db, {ARCHIVE: remote}, file_root=tmp_path / "srfroot")


def test_run_process_exits_0_and_reports_each_poison_row_once_per_process(
        tmp_path: Path) -> None:
    """`suprsync run --once` as a process: exit 0, no traceback, one line per poison row."""
    db = tmp_path / "catalog" / "suprsync.db"
    good, poison, poison_files = poisoned_catalog(db, tmp_path / "local")
    args = ["run", "--once", "--archive-name", ARCHIVE, "--remote-basedir",
            str(tmp_path / "remote"), "--db-path", str(db), "--suprsync-file-root",
            str(tmp_path / "srf"), "--delete-local-after", "0"]
    for _ in range(2):
        result = run_cli(*args, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        for file_id, reason in poison.items():
            if file_id in poison_files:
                lines = quarantine_lines(result.stderr, file_id)
                assert len(lines) == 1 and reason in lines[0], (file_id, lines)
    assert remote_tree(tmp_path / "remote")[:3] == [f"16990/sub/g{n}.g3" for n in range(3)]
    assert not (tmp_path / "remote" / "16991").exists()
    assert all(path.exists() for path in poison_files.values())
    assert not any((tmp_path / "local" / f"g{n}.g3").exists() for n in range(3))
    forget_false_claims(db)
    check_invariants(db, {ARCHIVE: tmp_path / "remote"}, file_root=tmp_path / "srf")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, timeout=60)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def test_cli_commands_work_on_a_poisoned_catalog(tmp_path: Path) -> None:
    db = tmp_path / "catalog" / "suprsync.db"
    good, poison, poison_files = poisoned_catalog(db, tmp_path / "local")
    in_archive = {i: r for i, r in poison.items() if i in poison_files}
    dbarg = ["--db", str(db)]
    SupRsyncFilesManager(str(db)).close()  # the tables an agent adds when it starts

    listed = cli("list", ARCHIVE, "--json", *dbarg)
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == good
    assert cli("list", ARCHIVE, *dbarg).returncode == 0
    nxt = cli("next", ARCHIVE, "--json", *dbarg)
    assert nxt.returncode == 0 and json.loads(nxt.stdout)["id"] == good[0]
    assert cli("next", ARCHIVE, *dbarg).returncode == 0

    checked_ids = []
    for file_id, path in poison_files.items():
        if raw_row(db, file_id)[1] != os.fsencode(path) or checked_ids:
            continue  # a row whose local path is NULL or not UTF-8 cannot be asked for
        checked_ids.append(file_id)
        rows = json.loads(cli("check", str(path), "--json", *dbarg).stdout)
        assert [r["id"] for r in rows] == [file_id]
        assert in_archive[file_id] in rows[0]["quarantined"]
        human = cli("check", str(path), *dbarg)
        assert human.returncode == 0, human.stderr
        assert f"quarantined: {in_archive[file_id]}" in human.stdout
    assert len(checked_ids) == 1

    for command in ("stats", "status"):
        human = cli(command, *dbarg)
        assert human.returncode == 0, human.stderr
        assert f"{len(in_archive)} quarantined" in human.stdout
        first = min(in_archive)
        assert f"id {first}: {in_archive[first]}" in human.stdout
        out = cli(command, "--json", *dbarg)
        assert out.returncode == 0, out.stderr
        # Rows that name no archive are reported on stderr.
        for text_ in (human.stderr, out.stderr):
            assert "2 catalog rows name no archive" in text_, text_
        data = json.loads(out.stdout)
        assert list(data) == [ARCHIVE], data.keys()
        entry = data[ARCHIVE]
        assert entry["quarantined"] == len(in_archive)
        shown = {r["id"]: r["reason"] for r in entry["quarantined_rows"]}
        assert set(shown) == set(in_archive)
        for file_id, reason in in_archive.items():
            assert reason in shown[file_id]
    status = json.loads(cli("status", "--json", *dbarg).stdout)[ARCHIVE]
    assert status["waiting"] == len(good) and status["registered"] == len(POISON) + len(good)

    ran = cli("run", "--once", "--archive-name", ARCHIVE, "--remote-basedir",
              str(tmp_path / "remote"), "--db-path", str(db), "--suprsync-file-root",
              str(tmp_path / "srf"))
    assert ran.returncode == 0, ran.stderr
    audit = cli("audit", ARCHIVE, "--remote-basedir", str(tmp_path / "remote"), "--md5",
                "--json", *dbarg)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    # The good files and the finalization file of their dir, shipped by the same run.
    finals = list((tmp_path / "remote").glob("*/suprsync/*/*_finalized.yaml"))
    assert len(finals) == 1
    assert report["ok"] is True and report["synced_checked"] == len(good) + 1


def test_catalog_with_typed_columns_and_undecodable_text(tmp_path: Path) -> None:
    """Undecodable TEXT (not BLOB) in a typed table: the agent still copies the others."""
    db = tmp_path / "catalog.db"
    local = tmp_path / "local"
    with sqlite3.connect(db) as conn:
        conn.execute(TYPED_NULLABLE)
        bad = insert(conn, {**GOOD, "local_path": str(write_file(local / "bad.g3", b"x")),
                            "remote_path": "16991/\udcff.g3"})
        data = b"good\n"
        ok = insert(conn, {**GOOD, "local_path": str(write_file(local / "ok.g3", data)),
                           "local_md5sum": md5(data), "remote_path": "16990/ok.g3"})
    clock = Clock()
    agent = catalog_agent(tmp_path, db, ARCHIVE, clock)
    try:
        assert agent.iterate() is True
        assert (tmp_path / "remote" / ARCHIVE / "16990" / "ok.g3").read_bytes() == data
        assert raw_row(db, ok)[6] == md5(data).encode()
        assert raw_row(db, bad)[6] is None
        assert not (tmp_path / "remote" / ARCHIVE / "16991").exists()
    finally:
        agent.close()
        agent.manager.close()
    for command in (["list", ARCHIVE], ["stats"], ["status"]):
        assert cli(*command, "--db", str(db)).returncode == 0
    check_invariants(db, {ARCHIVE: tmp_path / "remote" / ARCHIVE},
                     file_root=tmp_path / "suprsync-files")


def test_postgresql_catalog_without_not_null_constraints(pg: Any, tmp_path: Path) -> None:
    url = pg_catalog(pg)
    local = tmp_path / "local"
    manager = SupRsyncFilesManager(url, clock=Clock())
    good, poison = [], {}
    try:
        for n, changes in enumerate([{"local_path": None}, {"local_md5sum": None},
                                     {"archive_name": None}, {"remote_path": None},
                                     {"timestamp": None}, {"timestamp": math.nan},
                                     {"timestamp": -math.inf}, {"timestamp": 1e300},
                                     {"local_md5sum": "short"}]):
            path = write_file(local / f"p{n}.g3", b"poison")
            file_id = pg_insert(manager, {"local_path": str(path), "local_md5sum": md5(b"poison"),
                                          "archive_name": ARCHIVE,
                                          "remote_path": f"16991/p{n}.g3",
                                          "timestamp": T0 - 7200, **changes})
            poison[file_id] = path
        for n in range(3):
            data = f"good {n}".encode()
            path = write_file(local / f"g{n}.g3", data)
            good.append(pg_insert(manager, {"local_path": str(path), "local_md5sum": md5(data),
                                            "archive_name": ARCHIVE,
                                            "remote_path": f"16990/g{n}.g3",
                                            "timestamp": T0 - 60}))
    finally:
        manager.close()
    clock = Clock()
    agent = catalog_agent(tmp_path, url, ARCHIVE, clock)
    try:
        agent.config.delete_local_after = 0
        assert agent.iterate() is True
        shipped = remote_tree(tmp_path / "remote" / ARCHIVE)
        # The good files, and the finalization file of their dir, shipped in the same iteration.
        assert shipped[:3] == [f"16990/g{n}.g3" for n in range(3)]
        assert len(shipped) == 4 and shipped[3].endswith(f"_{ARCHIVE}_16990_finalized.yaml")
        assert all(path.exists() for path in poison.values())
        assert not any((local / f"g{n}.g3").exists() for n in range(3))
    finally:
        agent.close()
        agent.manager.close()
    for command in ("stats", "status"):
        out = cli(command, "--json", "--db", url)
        assert out.returncode == 0, out.stderr
        entry = json.loads(out.stdout)[ARCHIVE]
        assert entry["quarantined"] == len(poison) - 1  # one row names no archive
        assert {r["id"] for r in entry["quarantined_rows"]} < set(poison)
    for command in (["list", ARCHIVE], ["next", ARCHIVE], ["stats"], ["status"]):
        assert cli(*command, "--db", url).returncode == 0
    assert os.path.exists(poison[next(iter(poison))])
    check_invariants(url, {ARCHIVE: tmp_path / "remote" / ARCHIVE},
                     file_root=tmp_path / "suprsync-files")


# ------------------------------------------------------------------ the log


def test_log_finds_rows_spoiled_later_and_reports_each_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """New rows at once, older ones by a sweep in chunks that starts over; one line each,
    a changed reason is a new line, and past max_lines only a count."""
    db = tmp_path / "catalog.db"
    with sqlite3.connect(db) as conn:
        conn.execute(UNTYPED)
        for n in range(30):
            insert(conn, {**GOOD, "remote_path": f"17000/f{n}.g3", "timestamp": T0 + n})
    manager = SupRsyncFilesManager(str(db))
    watch = QuarantineLog(manager, ARCHIVE, chunk=5, max_lines=3)
    try:
        with caplog.at_level(logging.WARNING):
            assert watch.check() == []
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE supersync_v0 SET timestamp = 'abc' WHERE id = 3")
                new_id = insert(conn, {**GOOD, "local_path": None})
            assert [r["id"] for r in watch.check()] == [new_id]  # a new row: found at once
            found = []
            for _ in range(8):  # the sweep reaches id 3 within 30 / 5 checks
                found += [r["id"] for r in watch.check()]
            assert found == [3]
            assert len([ln for ln in caplog.text.splitlines() if "file id 3 " in ln]) == 1
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE supersync_v0 SET timestamp = -1 WHERE id = 3")
                for _ in range(3):
                    insert(conn, {**GOOD, "local_md5sum": "bad"})
            reported = [r for _ in range(10) for r in watch.check()]
        assert sorted(r["id"] for r in reported) == [3, new_id + 1, new_id + 2, new_id + 3]
        assert "timestamp is not a time" in watch.reported[3]
        lines = [ln for ln in caplog.text.splitlines() if "quarantined" in ln]
        # max_lines rows one by one (31, 3, 32), then counts: 33 and 34 together, then 3.
        assert len(lines) == 3 + 2, lines
        assert "2 more row(s) of archive 'timestreams' are quarantined" in lines[3]
        assert "1 more row(s) of archive 'timestreams' are quarantined" in lines[4]
    finally:
        manager.close()


@pytest.mark.parametrize("stored", ["blob", "text"])
def test_a_remote_path_that_is_not_utf8_holds_its_dir_back(tmp_path: Path, stored: str) -> None:
    """A row whose remote path is not UTF-8 (a BLOB, or undecodable TEXT) is in the dir
    its bytes name: quarantined, it keeps that dir from being finalized."""
    db = tmp_path / "catalog" / "suprsync.db"
    clock = Clock()
    manager = SupRsyncFilesManager(str(db), clock=clock)
    sound = write_file(tmp_path / "local" / "g.g3", b"sound\n")
    manager.add_file(str(sound), "16992/sub/g.g3", ARCHIVE, timestamp=T0 - 3600)
    poison = write_file(tmp_path / "local" / "p.g3", b"poison\n")
    raw = b"16992/sub/p\xff.g3"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                     "remote_path, timestamp) VALUES (?, ?, ?, "
                     + ("?" if stored == "blob" else "CAST(? AS TEXT)") + ", ?)",
                     (str(poison), md5(b"poison\n"), ARCHIVE, raw, T0 - 3000))
        assert conn.execute("SELECT typeof(remote_path) FROM supersync_v0 WHERE id = 2"
                            ).fetchone() == (stored,)
    remote = tmp_path / "remote"
    agent = new_agent(manager, clock, tmp_path, remote, delete_local_after=0)
    try:
        for _ in range(3):
            assert agent.iterate()
            clock.advance(60)
        assert (remote / "16992/sub/g.g3").exists()
        states = manager.read(lambda s: dir_states(s, ARCHIVE))
        assert 16992 in states["completed_unsynced"], states
        assert not list(remote.rglob("*_finalized.yaml")), "the dir was told complete"
    finally:
        agent.close()
        manager.close()
    check_invariants(db, {ARCHIVE: remote}, file_root=tmp_path / "srfroot")


def test_an_odd_path_in_an_archive_named_in_undecodable_text_stops_no_batch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A row spelled oddly (``a//b``) whose archive name is text that is not UTF-8 is in
    no archive suprsync serves: the collision check's spelling records pass it over,
    and every sound row is still copied."""
    db = tmp_path / "catalog" / "suprsync.db"
    good, _poison, _files = poisoned_catalog(db, tmp_path / "local")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                     "remote_path, timestamp) VALUES (?, ?, CAST(x'ff61' AS TEXT), "
                     "'16990//odd.g3', ?)", ("/data/odd.g3", GOOD_MD5, T0 - 7200))
    clock = Clock()
    manager = SupRsyncFilesManager(str(db), clock=clock)
    remote = tmp_path / "remote"
    agent = new_agent(manager, clock, tmp_path, remote, delete_local_after=0)
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                assert agent.iterate() is True
        assert remote_tree(remote)[:3] == [f"16990/sub/g{n}.g3" for n in range(3)]
        assert all(raw_row(db, i)[6] == raw_row(db, i)[2] for i in good)
        assert "Traceback" not in caplog.text
    finally:
        agent.close()
        manager.close()
    forget_false_claims(db)
    check_invariants(db, {ARCHIVE: remote}, file_root=tmp_path / "srfroot")
