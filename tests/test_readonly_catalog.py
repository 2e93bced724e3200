"""Read-only commands on a catalog only the original agent wrote leave it as it is."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

from conftest import run_cli
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.schema import CreateTable

from suprsync.catalog.schema import FILES_TABLE, TIMECODE_TABLE, Base

ARCHIVE = "arch"


def _original_catalog(url: str, tmp_path: Path) -> tuple[str, Path]:
    """A catalog with the original's two tables only; two files synced to a local
    destination and one waiting. Returns the --db value and the destination."""
    remote = tmp_path / "remote"
    rows = []
    for i, name in enumerate(("a.dat", "b.dat", "c.dat")):
        local = tmp_path / "data" / "16750" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(name.encode() * 10)
        md5 = hashlib.md5(local.read_bytes()).hexdigest()
        synced = i < 2
        if synced:
            (remote / "16750").mkdir(parents=True, exist_ok=True)
            shutil.copy(local, remote / "16750" / name)
        rows.append({"local_path": str(local), "local_md5sum": md5, "archive_name": ARCHIVE,
                     "remote_path": f"16750/{name}", "timestamp": 1.0 + i,
                     "remote_md5sum": md5 if synced else None,
                     "copied": 2.0 if synced else None, "failed_copy_attempts": 0,
                     "deletable": True, "ignore": False})
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.begin() as conn:
        for name in (FILES_TABLE, TIMECODE_TABLE):
            table = Base.metadata.tables[name]
            plain = str(CreateTable(table).compile(dialect=engine.dialect))
            conn.execute(text(plain))
        conn.execute(Base.metadata.tables[FILES_TABLE].insert(), rows)
    engine.dispose()
    return url, remote


def _rows(url: str) -> list[tuple]:
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                f"SELECT * FROM {FILES_TABLE} ORDER BY id"))]
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_read_only_commands_on_an_original_catalog(catalog_url: str, tmp_path: Path) -> None:
    """stats, status, list, next, check, audit and the retention preview answer on a
    catalog without suprsync's tables, and add nothing to it."""
    Path(tmp_path / "catalog").mkdir(exist_ok=True)
    db, remote = _original_catalog(catalog_url, tmp_path)
    before = _rows(db)
    local = tmp_path / "data" / "16750"

    def ok(*args: str) -> str:
        result = run_cli(*args, "--db", db, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    assert json.loads(ok("stats", ARCHIVE, "--json"))[ARCHIVE]["uncopied_files"] == 1
    assert json.loads(ok("status", "--json"))[ARCHIVE]["conflicts"] == 0
    assert [r["remote_path"] for r in json.loads(ok("list", ARCHIVE, "--json"))] == [
        "16750/c.dat"]
    assert json.loads(ok("next", ARCHIVE, "--json"))["remote_path"] == "16750/c.dat"
    ok("check", str(local / "a.dat"))
    audit = json.loads(ok("audit", ARCHIVE, "--remote-basedir", str(remote), "--md5",
                          "--json"))
    assert audit["ok"] and audit["synced_checked"] == 2
    preview = json.loads(ok("retention", ARCHIVE, "--delete-local-after", "0", "--json"))
    assert sorted(d["local_path"] for d in preview["delete"]) == [
        str(local / "a.dat"), str(local / "b.dat")]

    assert _tables(db) == {FILES_TABLE, TIMECODE_TABLE}
    assert _rows(db) == before
    if "://" not in db:
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' "
                                "AND name LIKE 'ix_suprsync%'").fetchone() == (0,)
    assert all(p.exists() for p in local.iterdir()), "a preview deletes nothing"
