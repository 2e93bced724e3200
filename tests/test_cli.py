"""The `suprsync` command's catalog subcommands: add, add-local-files, check, next, list, stats."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from suprsync import SupRsyncFilesManager

ARCHIVE = "timestreams"
STATS_KEYS = {"finalized_until", "num_files", "uncopied_files", "last_file_added",
              "last_file_copied"}
COLUMNS = {"id", "local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "copied", "removed", "failed_copy_attempts", "deletable", "ignore"}


def make_file(folder: Path, name: str, content: bytes | None = None) -> Path:
    """Write a real local file."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else f"content of {name}\n".encode() * 20)
    return path


def make_old(path: Path, age: float = 7200) -> None:
    """Set a file's mtime age seconds into the past."""
    then = time.time() - age
    os.utime(path, (then, then))


def rows(db: Path) -> list[tuple[Any, ...]]:
    """(local_path, remote_path, archive_name, local_md5sum) of every row, by id."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT local_path, remote_path, archive_name, local_md5sum "
                            "FROM supersync_v0 ORDER BY id").fetchall()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    """Exit 1 with exactly one stderr line `suprsync COMMAND: error: ...` and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"suprsync {command}: error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def catalog(tmp_catalog: Path, tmp_path: Path) -> dict[str, Path]:
    """A catalog with three files of ARCHIVE registered at t = 100, 200, 300 (out of order)."""
    m = SupRsyncFilesManager(str(tmp_catalog))
    files = {}
    for t in (300, 100, 200):
        path = make_file(tmp_path / "local", f"f{t}.g3")
        m.add_file(str(path), f"16750/sub/f{t}.g3", ARCHIVE, timestamp=float(t))
        files[f"f{t}"] = path
    m.close()
    return files


# --------------------------------------------------------------------- add


def test_add_with_create_db_registers_file(tmp_path: Path, tmp_catalog: Path) -> None:
    """`add LOCAL REMOTE --archive A --db DB --create-db` creates the catalog and the row."""
    local = make_file(tmp_path, "f.g3")
    result = run_cli("add", str(local), "16750/sub/f.g3", "--archive", ARCHIVE,
                     "--db", str(tmp_catalog), "--create-db")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_catalog) == [(str(local), "16750/sub/f.g3", ARCHIVE, md5(local))]


def test_add_without_create_db_on_missing_catalog_is_one_line_error(
    tmp_path: Path, tmp_catalog: Path
) -> None:
    """Without --create-db a missing catalog is an error, and it is not created."""
    local = make_file(tmp_path, "f.g3")
    result = run_cli("add", str(local), "16750/f.g3", "--archive", ARCHIVE,
                     "--db", str(tmp_catalog))
    assert result.returncode != 0
    assert_one_line_error(result, "add")
    assert not tmp_catalog.exists()


def test_suprsync_db_env_var_replaces_db_flag(tmp_path: Path, tmp_catalog: Path) -> None:
    """SUPRSYNC_DB names the catalog when --db is not given."""
    local = make_file(tmp_path, "f.g3")
    env = {"SUPRSYNC_DB": str(tmp_catalog)}
    added = run_cli("add", str(local), "16750/f.g3", "--archive", ARCHIVE, "--create-db",
                    env=env)
    assert added.returncode == 0, added.stderr
    assert rows(tmp_catalog) == [(str(local), "16750/f.g3", ARCHIVE, md5(local))]
    listed = run_cli("list", ARCHIVE, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [f["local_path"] for f in json.loads(listed.stdout)] == [str(local)]


@pytest.mark.parametrize("remote", ["/abs/16750/f.g3", "16750/../../etc/f.g3"],
                         ids=["absolute", "dotdot"])
def test_add_bad_remote_path_is_one_line_error(
    tmp_path: Path, tmp_catalog: Path, remote: str
) -> None:
    """An absolute remote path or one with '..' is refused with one line; nothing is added."""
    local = make_file(tmp_path, "f.g3")
    result = run_cli("add", str(local), remote, "--archive", ARCHIVE, "--db", str(tmp_catalog),
                     "--create-db")
    assert_one_line_error(result, "add")
    assert rows(tmp_catalog) == []


def test_add_missing_local_file_is_one_line_error(tmp_path: Path, tmp_catalog: Path) -> None:
    """A local file that does not exist is refused with one line; nothing is added."""
    result = run_cli("add", str(tmp_path / "missing.g3"), "16750/f.g3", "--archive", ARCHIVE,
                     "--db", str(tmp_catalog), "--create-db")
    line = assert_one_line_error(result, "add")
    assert "missing.g3" in line
    assert rows(tmp_catalog) == []


# --------------------------------------------------------- add-local-files


def test_add_local_files_registers_tree_relative_to_root_once(
    tmp_path: Path, tmp_catalog: Path
) -> None:
    """Every file under ROOT is registered with its path relative to ROOT; a rerun adds none."""
    root = tmp_path / "root"
    files = [make_file(root, rel) for rel in ("16750/a/x.g3", "16750/b/y.g3", "top.txt")]
    args = ("add-local-files", str(root), ARCHIVE, "--db", str(tmp_catalog), "--create-db",
            "--last-edit", "0")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    expected = {(str(f), str(f.relative_to(root)), ARCHIVE, md5(f)) for f in files}
    assert set(rows(tmp_catalog)) == expected

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert len(rows(tmp_catalog)) == len(files)
    assert set(rows(tmp_catalog)) == expected


def test_add_local_files_dry_lists_and_adds_nothing(tmp_path: Path, tmp_catalog: Path) -> None:
    """--dry prints the files it would add, and the catalog stays empty."""
    root = tmp_path / "root"
    files = [make_file(root, rel) for rel in ("16750/a/x.g3", "16750/y.g3")]
    result = run_cli("add-local-files", str(root), ARCHIVE, "--db", str(tmp_catalog),
                     "--create-db", "--last-edit", "0", "--dry")
    assert result.returncode == 0, result.stderr
    for f in files:
        assert str(f) in result.stdout
        assert str(f.relative_to(root)) in result.stdout
    assert rows(tmp_catalog) == []


def test_add_local_files_last_edit_skips_fresh_files(tmp_path: Path, tmp_catalog: Path) -> None:
    """--last-edit 3600 leaves out a file written just now and takes an old one."""
    root = tmp_path / "root"
    fresh = make_file(root, "16750/fresh.g3")
    old = make_file(root, "16750/old.g3")
    make_old(old)
    result = run_cli("add-local-files", str(root), ARCHIVE, "--db", str(tmp_catalog),
                     "--create-db", "--last-edit", "3600")
    assert result.returncode == 0, result.stderr
    registered = [r[0] for r in rows(tmp_catalog)]
    assert registered == [str(old)]
    assert str(fresh) not in registered


def test_add_local_files_unencodable_name_does_not_sink_the_batch(
    tmp_path: Path, tmp_catalog: Path
) -> None:
    """A file name that is not valid UTF-8 is skipped; the other files are still registered."""
    root = tmp_path / "root"
    good = make_file(root, "16750/good.g3")
    bad = os.path.join(os.fsencode(root / "16750"), b"bad\xff.g3")
    with open(bad, "wb") as fh:
        fh.write(b"undecodable name")
    result = run_cli("add-local-files", str(root), ARCHIVE, "--db", str(tmp_catalog),
                     "--create-db", "--last-edit", "0")
    assert "Traceback" not in result.stderr, result.stderr
    assert [r[0] for r in rows(tmp_catalog)] == [str(good)]


# ------------------------------------------------------------------- check


def test_check_prints_row_and_json(catalog: dict[str, Path], tmp_catalog: Path) -> None:
    """`check LOCAL` shows the row; with --json it is a parseable list of rows."""
    local = catalog["f200"]
    text = run_cli("check", str(local), "--db", str(tmp_catalog))
    assert text.returncode == 0, text.stderr
    assert str(local) in text.stdout
    assert "16750/sub/f200.g3" in text.stdout
    assert md5(local) in text.stdout

    js = run_cli("check", str(local), "--db", str(tmp_catalog), "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert isinstance(data, list) and len(data) == 1
    assert set(data[0]) == COLUMNS | {"quarantined"}
    assert data[0]["local_path"] == str(local)
    assert data[0]["remote_path"] == "16750/sub/f200.g3"
    assert data[0]["local_md5sum"] == md5(local)
    assert data[0]["timestamp"] == 200.0


def test_check_unknown_file_is_error(
    catalog: dict[str, Path], tmp_catalog: Path, tmp_path: Path
) -> None:
    """`check` of a file not in the catalog exits 1 with one line."""
    result = run_cli("check", str(tmp_path / "nope.g3"), "--db", str(tmp_catalog))
    assert_one_line_error(result, "check")


# -------------------------------------------------------------- next, list


def test_next_shows_oldest_copyable_file(catalog: dict[str, Path], tmp_catalog: Path) -> None:
    """`next ARCHIVE` shows the oldest copyable file, in text and as JSON."""
    text = run_cli("next", ARCHIVE, "--db", str(tmp_catalog))
    assert text.returncode == 0, text.stderr
    assert str(catalog["f100"]) in text.stdout
    assert str(catalog["f200"]) not in text.stdout

    js = run_cli("next", ARCHIVE, "--db", str(tmp_catalog), "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["local_path"] == str(catalog["f100"])
    assert set(data) == COLUMNS


def test_list_shows_copyable_files_oldest_first(
    catalog: dict[str, Path], tmp_catalog: Path
) -> None:
    """`list ARCHIVE` lists every copyable file oldest first, in text and as JSON."""
    order = [str(catalog[k]) for k in ("f100", "f200", "f300")]
    text = run_cli("list", ARCHIVE, "--db", str(tmp_catalog))
    assert text.returncode == 0, text.stderr
    positions = [text.stdout.index(p) for p in order]
    assert positions == sorted(positions)

    js = run_cli("list", ARCHIVE, "--db", str(tmp_catalog), "--json")
    assert js.returncode == 0, js.stderr
    assert [f["local_path"] for f in json.loads(js.stdout)] == order


@pytest.mark.parametrize("command", ["next", "list", "stats"])
def test_unknown_archive_is_one_line_error(
    catalog: dict[str, Path], tmp_catalog: Path, command: str
) -> None:
    """An archive the catalog does not know is an error: one line, exit 1."""
    result = run_cli(command, "no-such-archive", "--db", str(tmp_catalog))
    line = assert_one_line_error(result, command)
    assert "no-such-archive" in line


# ------------------------------------------------------------------- stats


def test_stats_json_has_stats_and_timecode_dir_states(
    catalog: dict[str, Path], tmp_catalog: Path
) -> None:
    """`stats ARCHIVE --json`: the five stats keys plus timecode_dirs with four states and
    the anomalies."""
    result = run_cli("stats", ARCHIVE, "--db", str(tmp_catalog), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {ARCHIVE}
    stats = data[ARCHIVE]
    assert set(stats) == STATS_KEYS | {"timecode_dirs", "quarantined", "quarantined_rows",
                                       "conflicts", "future_timecode_dirs", "late_files",
                                       "rows_ahead_of_clock"}
    assert stats["future_timecode_dirs"] == [] and stats["late_files"] == []
    assert stats["num_files"] == 3
    assert stats["uncopied_files"] == 3
    assert stats["last_file_added"] == str(catalog["f300"])
    assert stats["last_file_copied"] == ""
    assert stats["finalized_until"] == 99.0
    dirs = stats["timecode_dirs"]
    assert set(dirs) == {"open", "completed_unsynced", "synced", "finalized"}
    assert dirs["open"] == [16750]


# -------------------------------------------------------------------- help


def test_no_command_prints_help_and_exits_2() -> None:
    """Plain `suprsync` prints usage listing the commands and exits 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "usage:" in result.stdout
    for command in ("run", "add", "add-local-files", "check", "next", "list", "stats"):
        assert command in result.stdout
    assert "Traceback" not in result.stderr


def test_every_command_that_prints_data_has_json(tmp_path: Path) -> None:
    """add, retry-failed, set-ignore, recheck, rebuild-timecode-dirs and migrate print
    one JSON document with --json, with the keys docs/usage.md lists."""
    db = str(tmp_path / "c.db")
    data = tmp_path / "data" / "16750"
    data.mkdir(parents=True)
    (data / "a.dat").write_bytes(b"a")

    def cli(*args: str) -> Any:
        result = run_cli(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    added = cli("add", str(data / "a.dat"), "16750/a.dat", "--archive", ARCHIVE, "--db", db,
                "--create-db")
    assert added["remote_path"] == "16750/a.dat" and added["archive_name"] == ARCHIVE
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE supersync_v0 SET failed_copy_attempts = 5")
    assert cli("retry-failed", ARCHIVE, "--db", db) == {"archive": ARCHIVE, "reset": 1}
    assert cli("set-ignore", str(data / "a.dat"), "--db", db) == {"ignore": True, "rows": 1}
    assert cli("set-ignore", str(data / "a.dat"), "--unignore", "--db", db) == {
        "ignore": False, "rows": 1}
    assert cli("recheck", str(data / "a.dat"), "--db", db) == {
        "queued": [str(data / "a.dat")], "changed": [], "conflicts": [], "gone": [],
        "not_found": []}
    assert cli("rebuild-timecode-dirs", ARCHIVE, "--db", db) == {"archive": ARCHIVE,
                                                                 "created": 0}
    copied = cli("migrate", "--from", db, "--to", str(tmp_path / "new.db"))
    assert copied["copied"]["supersync_v0"] == 1


def test_the_command_loads_its_code_with_the_collector_paused_then_running(
        tmp_catalog: Path) -> None:
    """What the imports made is frozen out of the cyclic collector's reach (it would
    collect among them while they are made, and again at exit), and the collector runs
    again for what the command does: a long `suprsync run` must not grow unbounded."""
    SupRsyncFilesManager(str(tmp_catalog), create_all=True)
    probe = ("import gc, sys\n"
             "from suprsync import cli\n"
             "before = gc.get_freeze_count()\n"
             "code = cli.main(sys.argv[1:])\n"
             "print(code, gc.isenabled(), before, gc.get_freeze_count())\n")
    result = subprocess.run([sys.executable, "-c", probe, "stats", "--db", str(tmp_catalog)],
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    code, enabled, before, after = result.stdout.split()[-4:]
    assert (code, enabled, before) == ("0", "True", "0")
    assert int(after) > 10_000  # SQLAlchemy's and the catalog code's objects
