"""Progress bars: on a terminal only, never with --json."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

from conftest import SUPRSYNC
from helpers import make_file, run_on_terminal

from suprsync.progress import WIDTH, Bar

ARCHIVE = "timestreams"
OLD = 1_000_000_000.0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_phases_and_counts_on_a_terminal_only() -> None:
    term = _Terminal()
    with Bar("listing", out=term, every=0) as bar:
        bar.phase("hashing", total=4)
        bar.update(2)
        bar.update(4)
    text = term.getvalue()
    assert "\x1b[Khashing [" + "#" * (WIDTH // 2) + "." * (WIDTH // 2) + "] 2/4 files" in text
    assert "] 4/4 files\n" in text
    piped = io.StringIO()
    with Bar("listing", total=4, out=piped, every=0) as bar:
        bar.update(4)
    assert piped.getvalue() == ""
    off = _Terminal()
    with Bar("listing", total=4, out=off, every=0, enabled=False) as bar:
        bar.update(4)
    assert off.getvalue() == ""


def _stderr_on_a_terminal(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    result, shown = run_on_terminal([SUPRSYNC, *args])
    assert result.returncode == 0, shown
    return result, shown


def test_long_commands_draw_bars_on_a_terminal_and_none_with_json(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    root = tmp_path / "root"
    files = [make_file(root, f"16750/f{i}.dat", b"x" * i) for i in range(3)]
    for path in files:
        os.utime(path, (OLD, OLD))

    _, err = _stderr_on_a_terminal("add-local-files", str(root), ARCHIVE, "--db", db,
                                   "--create-db", "--json")
    assert "[" not in err and "listing" not in err
    (tmp_path / "c.db").unlink()
    _, err = _stderr_on_a_terminal("add-local-files", str(root), ARCHIVE, "--db", db,
                                   "--create-db")
    assert f"listing {root}" in err
    assert "hashing and registering [" + "#" * WIDTH + "] 3/3 files" in err

    _, err = _stderr_on_a_terminal("recheck", *map(str, files), "--db", db)
    assert "rechecking [" + "#" * WIDTH + "] 3/3 files" in err
    result, err = _stderr_on_a_terminal("recheck", *map(str, files), "--db", db, "--json")
    assert "rechecking" not in err and len(json.loads(result.stdout)["queued"]) == 3

    _, err = _stderr_on_a_terminal("migrate", "--from", db, "--to", str(tmp_path / "n.db"))
    assert "supersync_v0 [" + "#" * WIDTH + "] 3/3 rows" in err


def test_rebuild_timecode_dirs_in_short_transactions_with_a_bar(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """Every file's dir row is made over several transactions of a few ids each, once;
    the bar counts the ids on a terminal."""
    import argparse
    import sqlite3

    from suprsync import commands

    db = tmp_path / "c.db"
    root = tmp_path / "root"
    for i, tc in enumerate((16750, 16751, 16751, 16752, 16753)):
        path = make_file(root, f"{tc}/f{i}.dat", b"x")
        os.utime(path, (OLD, OLD))
    _stderr_on_a_terminal("add-local-files", str(root), ARCHIVE, "--db", str(db),
                          "--create-db")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM timecode_dirs_v0")
    monkeypatch.setattr(commands, "REBUILD_CHUNK", 2)
    ns = argparse.Namespace(db=str(db), archive_name=ARCHIVE, min_ctime=None, json=True)
    assert commands.cmd_rebuild_timecode_dirs(ns) == 0
    assert json.loads(capsys.readouterr().out)["created"] == 4
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute(
            "SELECT timecode FROM timecode_dirs_v0 ORDER BY timecode")] == [
            16750, 16751, 16752, 16753]
    assert commands.cmd_rebuild_timecode_dirs(ns) == 0
    assert json.loads(capsys.readouterr().out)["created"] == 0

    _, err = _stderr_on_a_terminal("rebuild-timecode-dirs", ARCHIVE, "--db", str(db))
    assert "scanning [" + "#" * WIDTH + "] 5/5 ids" in err


def test_retry_failed_of_many_paths_in_chunks_with_a_bar(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from suprsync import SupRsyncFilesManager
    from suprsync.catalog import maintenance

    db = tmp_path / "c.db"
    root = tmp_path / "root"
    files = [make_file(root, f"16750/f{i}.dat", b"x") for i in range(5)]
    for path in files:
        os.utime(path, (OLD, OLD))
    _stderr_on_a_terminal("add-local-files", str(root), ARCHIVE, "--db", str(db),
                          "--create-db")

    def fail_all() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE supersync_v0 SET failed_copy_attempts = 5")

    fail_all()
    monkeypatch.setattr(maintenance, "PATHS_PER_TRANSACTION", 2)
    manager = SupRsyncFilesManager(str(db))
    done: list[int] = []
    try:
        assert maintenance.retry_failed(manager, ARCHIVE, 5, [str(p) for p in files[:4]],
                                        progress=done.append) == 4
    finally:
        manager.close()
    assert done == [2, 4]
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute(
            "SELECT failed_copy_attempts FROM supersync_v0 ORDER BY id")] == [0, 0, 0, 0, 5]

    fail_all()
    args = [a for p in files for a in ("--path", str(p))]
    result, err = _stderr_on_a_terminal("retry-failed", ARCHIVE, *args, "--db", str(db))
    assert "resetting [" + "#" * WIDTH + "] 5/5 paths" in err
    assert "reset the failed attempts of 5 file(s)" in result.stdout
