"""Local places that refuse writes: the finalization file root and the staging dir.

Real tmpfs mounts, remounted read-only or left without inodes. The iteration
fails, is counted (``errors_nonzero``) and logged in one line, charges no file,
and the next iteration after the fix does the work; never a traceback, and a
``suprsync run`` process keeps running through it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SUPRSYNC
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    is_synced,
    iterate_within,
    manager_fixture,  # noqa: F401 - the manager fixture
    mount_tmpfs,
    new_agent,
    umount,
    wait_until,
    write_file,
)
from invariants import check_invariants
from sqlalchemy import select

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent
from suprsync.catalog.schema import TimecodeDir


@pytest.fixture
def make_agent(tmp_path: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(**overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, tmp_path / "remote", **overrides)

    yield from closing_agents(make)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, unmounted afterwards."""
    path = tmp_path / "tmpfs"
    mount_tmpfs(path, "4m")
    try:
        yield path
    finally:
        umount(path)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True,
                   capture_output=True, timeout=30)


def register(manager: SupRsyncFilesManager, folder: Path, remotes: list[str]) -> list[int]:
    ids = []
    for n, remote in enumerate(remotes):
        path = write_file(folder / f"f{n}.dat", f"data {n}\n".encode() * 40)
        ids.append(manager.add_file(str(path), remote, ARCHIVE).id)
    return ids


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def finalized(manager: SupRsyncFilesManager, timecode: int) -> bool:
    return bool(manager.read(lambda s: s.scalar(
        select(TimecodeDir.finalized).where(TimecodeDir.archive_name == ARCHIVE,
                                            TimecodeDir.timecode == timecode))))


def test_read_only_file_root_fails_the_iteration_then_finalizes(
        tmpfs: Path, tmp_path: Path, manager: SupRsyncFilesManager, make_agent,
        caplog: pytest.LogCaptureFixture) -> None:
    ids = register(manager, tmp_path / "local", ["16750/a.g3", "16751/b.g3"])
    agent = make_agent(suprsync_file_root=str(tmpfs))
    remount(tmpfs, "ro")
    for n in (1, 2):
        caplog.clear()
        assert iterate_within(agent, 60) is False
        assert agent.session.counters["errors_nonzero"] == n
        logged = errors(caplog)
        assert len(logged) == 1 and "Read-only file system" in logged[0], logged
        assert not finalized(manager, 16750)
    assert all(is_synced(manager, i) for i in ids)
    assert not any("Traceback" in r.getMessage() for r in caplog.records)

    remount(tmpfs, "rw")
    assert iterate_within(agent, 60) is True
    assert finalized(manager, 16750)
    assert list(tmpfs.rglob("*_finalized.yaml"))
    check_invariants(manager.db_path, {ARCHIVE: tmp_path / "remote"}, file_root=tmpfs)


@pytest.mark.parametrize(("inodes", "reason"), [
    (1, "No space left on device"),      # not even the staging dir
    (2, "cannot stage files in"),        # the staging dir, but no link in it
])
def test_full_staging_dir_charges_no_file_and_recovers(
        inodes: int, reason: str, tmpfs: Path, tmp_path: Path,
        manager: SupRsyncFilesManager, make_agent, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = register(manager, tmp_path / "local", ["16750/a.g3", "16750/sub/b.g3"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmpfs))
    remount(tmpfs, f"nr_inodes={inodes}")
    agent = make_agent(max_copy_attempts=1)
    for n in (1, 2):
        caplog.clear()
        assert iterate_within(agent, 60) is False
        assert agent.session.counters["errors_nonzero"] == n
        logged = errors(caplog)
        assert len(logged) == 1 and reason in logged[0], logged
    for file_id in ids:
        row = get_row(manager, file_id)
        assert (row.failed_copy_attempts or 0) == 0, row
    assert manager.claim_holders() == []

    remount(tmpfs, "nr_inodes=1000")
    assert iterate_within(agent, 60) is True
    assert all(is_synced(manager, i) for i in ids)
    check_invariants(manager.db_path, {ARCHIVE: tmp_path / "remote"},
                     file_root=tmp_path / "srfroot")


def test_run_process_with_a_full_tmpdir_keeps_running_and_recovers(
        tmpfs: Path, tmp_path: Path, manager: SupRsyncFilesManager) -> None:
    ids = register(manager, tmp_path / "local", ["16750/a.g3"])
    # Python's tempfile passes over a TMPDIR it cannot write a file in: leave room
    # for its probe and the staging dir, none for the links.
    remount(tmpfs, "nr_inodes=2")
    err = tmp_path / "agent.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--remote-basedir",
             str(tmp_path / "remote"), "--db-path", manager.db_path, "--suprsync-file-root",
             str(tmp_path / "srfroot"), "--sleep-time", "0.2"],
            env={**os.environ, "TMPDIR": str(tmpfs)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        wait_until(lambda: err.read_text().count("iteration failed") >= 2 or
                   proc.poll() is not None, 60, "two failed iterations")
        assert proc.poll() is None, err.read_text()
        remount(tmpfs, "nr_inodes=1000")
        wait_until(lambda: is_synced(manager, ids[0]) or proc.poll() is not None, 60,
                   "the copy after the fix")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert "Traceback" not in text
    assert "cannot stage files in" in text and "No space left on device" in text
    assert get_row(manager, ids[0]).failed_copy_attempts in (0, None)
    check_invariants(manager.db_path, {ARCHIVE: tmp_path / "remote"},
                     file_root=tmp_path / "srfroot")
