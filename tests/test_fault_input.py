"""Bad input: hostile catalog paths, odd local files, bad flags and a broken environment.

Catalog rows come from other programs, so their paths are untrusted. Flags and
the environment are checked once at start: a problem there is one line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import (
    ARCHIVE,
    T0,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    is_synced,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    new_agent,
    ssh_config,
    write_file,
)

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent

LIMIT = 3


@pytest.fixture
def make_agent(tmp_path: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(remote: Path, **overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote, max_copy_attempts=LIMIT, **overrides)

    yield from closing_agents(make)


def row_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM supersync_v0").fetchone()[0]


def tree(folder: Path) -> list[str]:
    """Every path below folder, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------- remote paths


@pytest.mark.parametrize("remote", [
    ".", "./..", "a/./../../x.dat", "//etc/x.dat", "/", "..", "x/sub/", "x/\x00/y.dat",
])
def test_add_file_refuses_remote_paths_that_leave_or_miss_the_base_dir(
        remote: str, manager: SupRsyncFilesManager, tmp_path: Path,
        tmp_catalog: Path) -> None:
    local = write_file(tmp_path / "local" / "f.dat", b"data")
    with pytest.raises(ValueError):
        manager.add_file(str(local), remote, ARCHIVE)
    assert row_count(tmp_catalog) == 0


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_bad_remote_paths_inserted_with_plain_sql_are_never_copied(
        via: str, manager: SupRsyncFilesManager, make_agent, tmp_path: Path,
        tmp_catalog: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    outer = tmp_path / "outer"
    base = outer / "base"
    base.mkdir(parents=True)
    local = write_file(tmp_path / "local" / "f.dat", b"some data\n")
    bad = [str(outer / "abs.dat"), "", "../up.dat", "a/../../up2.dat", "x/\x00/nul.dat",
           "x/dir/", "./..", "/"]
    good = manager.add_file(str(local), "ok/f.dat", ARCHIVE).id
    with sqlite3.connect(tmp_catalog) as conn:
        for remote in bad:
            conn.execute(
                "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                "remote_path, timestamp) VALUES (?, ?, ?, ?, ?)",
                (str(local), md5(b"some data\n"), ARCHIVE, remote, T0))
        ids = [r[0] for r in conn.execute("SELECT id FROM supersync_v0 WHERE id != ?",
                                          (good,))]
    assert len(ids) == len(bad)
    ssh = ssh_config(request.getfixturevalue("sshd")) if via == "ssh" else {}
    agent = make_agent(base, **ssh)

    with caplog.at_level(logging.ERROR):
        assert agent.iterate() is True  # bad rows do not fail the iteration
    for file_id in ids:
        row = get_row(manager, file_id)
        assert row.failed_copy_attempts == LIMIT, row
        assert row.remote_md5sum is None
        assert f"(file id {file_id})" in caplog.text
    assert is_synced(manager, good)
    assert tree(outer) == ["base", "base/ok", "base/ok/f.dat"]

    # At the limit they are not even selected again.
    assert agent.iterate() is True
    assert agent.session.snapshot()["last_copy"]["files"] == []
    assert tree(outer) == ["base", "base/ok", "base/ok/f.dat"]


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_remote_symlink_planted_in_base_dir_does_not_lead_outside(
        via: str, manager: SupRsyncFilesManager, make_agent, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    base = tmp_path / "remote" / "base"
    outside = tmp_path / "outside"
    base.mkdir(parents=True)
    outside.mkdir()
    (base / "link").symlink_to(os.path.relpath(outside, base))
    data = b"meant for the base dir\n"
    file_id = manager.add_file(str(write_file(tmp_path / "local" / "f.dat", data)),
                               "link/f.dat", ARCHIVE).id
    ssh = ssh_config(request.getfixturevalue("sshd")) if via == "ssh" else {}
    agent = make_agent(base, **ssh)
    agent.iterate()
    assert list(outside.iterdir()) == [], "a file was written outside the base dir"
    assert not (base / "link").is_symlink()
    assert (base / "link" / "f.dat").read_bytes() == data
    assert is_synced(manager, file_id)


# --------------------------------------------------------------- local paths


def test_local_files_replaced_by_symlinks_are_never_followed(
        manager: SupRsyncFilesManager, make_agent, tmp_path: Path, remote_dir: Path) -> None:
    local = tmp_path / "local"
    target = write_file(local / "target.dat", b"the real bytes\n")
    (local / "a dir").mkdir()
    os.mkfifo(local / "fifo")
    links = {
        "to-file": target,
        "to-dir": local / "a dir",
        "to-fifo": local / "fifo",
        "to-device": Path("/dev/null"),
        "dangling": local / "nowhere",
        "loop": local / "loop",
    }
    ids = {}
    for name, points_to in links.items():
        link = local / name
        placeholder = write_file(link, b"registered while still a file\n")
        ids[name] = manager.add_file(str(placeholder), f"s/{name}", ARCHIVE).id
        link.unlink()
        link.symlink_to(points_to)
    agent = make_agent(remote_dir)
    assert agent.iterate() is True

    # Not even a link to a regular file: what leaves the host is the registered file.
    for name, file_id in ids.items():
        row = get_row(manager, file_id)
        assert row.failed_copy_attempts == 1, (name, row)
        assert row.remote_md5sum is None
        assert not os.path.lexists(remote_dir / "s" / name), name
    assert stat.S_ISFIFO((local / "fifo").stat().st_mode)


def _not_regular(kind: str, tmp_path: Path) -> Path:
    if kind == "directory":
        path = tmp_path / "a dir"
        path.mkdir()
        return path
    if kind == "fifo":
        path = tmp_path / "a fifo"
        os.mkfifo(path)
        return path
    return Path("/dev/null")


@pytest.mark.parametrize("md5_given", [False, True], ids=["hashed", "md5-given"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_add_file_refuses_a_local_path_that_is_not_a_regular_file(
        kind: str, md5_given: bool, manager: SupRsyncFilesManager, tmp_path: Path,
        tmp_catalog: Path) -> None:
    path = _not_regular(kind, tmp_path)
    with pytest.raises(OSError, match="not a"):
        manager.add_file(str(path), f"x/{kind}", ARCHIVE,
                         local_md5sum=md5(b"") if md5_given else None)
    assert row_count(tmp_catalog) == 0


def test_add_file_with_md5_still_accepts_a_file_not_written_yet(
        manager: SupRsyncFilesManager, tmp_path: Path) -> None:
    """As in the original API: a producer may register before the file exists."""
    row = manager.add_file(str(tmp_path / "later.dat"), "x/later.dat", ARCHIVE,
                           local_md5sum=md5(b"later"))
    assert get_row(manager, row.id).local_md5sum == md5(b"later")


# --------------------------------------------------------------- flags and environment


def run_once(tmp_path: Path, db: Path, *extra: str, env: dict[str, str] | None = None,
             root: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("run", "--once", "--archive-name", ARCHIVE, "--remote-basedir",
                   str(tmp_path / "remote"), "--db-path", str(db),
                   "--suprsync-file-root", str(root or tmp_path / "srf"), *extra,
                   env=env, timeout=60)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Non-zero exit, no traceback, exactly one ``suprsync run: error:`` line."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("suprsync run: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("flag, value, reason", [
    ("--delete-local-after", "-3600", "negative"),
    ("--copy-timeout", "ten", "not a number"),
    ("--cmd-timeout", "nan", "finite"),
    ("--copy-timeout", "inf", "finite"),
    ("--max-copy-attempts", "0", "at least 1"),
    ("--max-copy-attempts", "2.5", "not a number"),
    ("--parallel", "0", "at least 1"),
    ("--files-per-batch", "0", "at least 1"),
    ("--ssh-port", "-22", "negative"),
])
def test_bad_flag_value_is_one_line_at_start(flag: str, value: str, reason: str,
                                             tmp_path: Path, tmp_catalog: Path) -> None:
    line = one_error_line(run_once(tmp_path, tmp_catalog, f"{flag}={value}"))
    assert flag in line and reason in line, line
    assert not tmp_catalog.exists()
    assert not (tmp_path / "remote").exists()


def test_directory_at_catalog_path_is_one_line_at_start(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    db.mkdir()
    result = run_once(tmp_path, db)
    line = one_error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "catalog" in line and str(db) in line
    assert db.is_dir() and list(db.iterdir()) == []
    assert not (tmp_path / "remote").exists()


def test_catalog_that_is_not_sqlite_is_one_line_at_start_and_left_alone(
        tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    content = b"site notes, not a database\n" * 100
    db.write_bytes(content)
    result = run_once(tmp_path, db)
    line = one_error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a database" in line
    assert db.read_bytes() == content
    assert not (tmp_path / "remote").exists()


def test_file_root_below_a_regular_file_is_one_line_at_start(
        tmp_path: Path, tmp_catalog: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("in the way")
    result = run_once(tmp_path, tmp_catalog, root=blocker / "sub")
    line = one_error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--suprsync-file-root" in line and "Not a directory" in line
    assert blocker.read_text() == "in the way"


@pytest.mark.parametrize("missing", ["rsync", "ssh"])
def test_missing_program_is_one_line_at_start(missing: str, tmp_path: Path,
                                              tmp_catalog: Path) -> None:
    # A PATH holding only the programs that are meant to be found.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if missing == "ssh":
        (bin_dir / "rsync").symlink_to("/usr/bin/rsync")
    extra = ["--ssh-host", "nobody@127.0.0.1"] if missing == "ssh" else []
    result = run_once(tmp_path, tmp_catalog, *extra, env={"PATH": str(bin_dir)})
    line = one_error_line(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{missing} is not installed" in line
    assert not (tmp_path / "remote").exists()
