"""Deleting local copies: only verified, deletable files older than --delete-local-after.

The agent copies real files with real rsync first; time moves with the catalog
manager's clock, so "older than" never needs a sleep.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SshServer
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    host_down,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    new_agent,
    write_file,
)
from sqlalchemy import update

from suprsync import SupRsyncFile, SupRsyncFilesManager
from suprsync.agent import Agent

AFTER = 1000.0


@pytest.fixture
def make_agent(tmp_path: Path, remote_dir: Path, manager: SupRsyncFilesManager,
               clock: Clock):
    def make(**overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote_dir,
                         **{"delete_local_after": AFTER, **overrides})

    yield from closing_agents(make)


@pytest.fixture
def add(tmp_path: Path, manager: SupRsyncFilesManager):
    """Register a new real local file; returns (row id, local path, content)."""

    def add_one(name: str, deletable: bool = True, remote: str | None = None):
        data = f"content of {name}\n".encode() * 10
        path = write_file(tmp_path / "local" / name, data)
        row = manager.add_file(str(path), remote or f"d/{name}", ARCHIVE, deletable=deletable)
        return row.id, path, data

    return add_one


# --------------------------------------------------------------- what is due


def test_due_synced_file_is_deleted_and_removed_set_to_clock_time(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock,
        remote_dir: Path) -> None:
    file_id, path, data = add("old.dat")
    agent = make_agent()
    assert agent.iterate() is True
    assert path.exists(), "deleted before delete_local_after had passed"
    assert get_row(manager, file_id).remote_md5sum == md5(data)

    clock.advance(AFTER + 1)
    assert agent.iterate() is True
    assert not path.exists()
    row = get_row(manager, file_id)
    assert row.removed == clock()
    assert (remote_dir / "d" / "old.dat").read_bytes() == data


def test_young_synced_file_is_kept(make_agent, add, manager: SupRsyncFilesManager,
                                   clock: Clock) -> None:
    file_id, path, data = add("young.dat")
    agent = make_agent()
    agent.iterate()
    clock.advance(AFTER - 1)
    agent.iterate()
    assert path.read_bytes() == data
    row = get_row(manager, file_id)
    assert row.remote_md5sum == md5(data)
    assert row.removed is None


def test_not_deletable_file_is_kept(make_agent, add, manager: SupRsyncFilesManager,
                                    clock: Clock) -> None:
    keep_id, keep_path, keep_data = add("keep.dat", deletable=False)
    gone_id, gone_path, _ = add("gone.dat")
    agent = make_agent()
    agent.iterate()
    clock.advance(AFTER * 10)
    agent.iterate()
    assert keep_path.read_bytes() == keep_data
    assert get_row(manager, keep_id).remote_md5sum == md5(keep_data)
    assert get_row(manager, keep_id).removed is None
    assert not gone_path.exists()
    assert get_row(manager, gone_id).removed == clock()


def test_unsynced_file_is_never_deleted_even_when_old(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock,
        remote_dir: Path) -> None:
    # Its destination name is held by a non-empty directory, so it never verifies.
    (remote_dir / "d" / "blocked.dat" / "x").mkdir(parents=True)
    blocked_id, blocked_path, _ = add("blocked.dat")
    # An ignored file is never copied, hence never synced.
    ignored_id, ignored_path, _ = add("ignored.dat")
    manager.write(lambda s: s.execute(update(SupRsyncFile)
                                      .where(SupRsyncFile.id == ignored_id).values(ignore=True)))
    agent = make_agent(max_copy_attempts=2)
    for _ in range(3):
        clock.advance(AFTER * 10)
        agent.iterate()
    for file_id, path in ((blocked_id, blocked_path), (ignored_id, ignored_path)):
        row = get_row(manager, file_id)
        assert row.remote_md5sum != row.local_md5sum
        assert row.removed is None
        assert path.exists()
    assert get_row(manager, blocked_id).failed_copy_attempts == 2


def test_file_already_gone_is_recorded_with_removed_zero(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock) -> None:
    file_id, path, _ = add("vanished.dat")
    agent = make_agent()
    agent.iterate()
    path.unlink()
    clock.advance(AFTER + 1)
    assert agent.iterate() is True
    assert get_row(manager, file_id).removed == 0


# --------------------------------------------------------------- a file that cannot go


def _immutable_supported(folder: Path) -> bool:
    """True when chattr +i works here and really stops an unlink (as root)."""
    probe = folder / ".chattr-probe"
    probe.write_text("probe")
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True,
                          timeout=30).returncode != 0:
            return False
        try:
            probe.unlink()
        except PermissionError:
            return True
        return False
    except FileNotFoundError:  # no chattr program
        return False
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True, timeout=30)
        probe.unlink(missing_ok=True)


@pytest.fixture
def undeletable() -> Iterator:
    """Make a synced local file impossible to delete: immutable, or else a directory."""
    made: list[Path] = []

    def make(path: Path) -> str:
        if _immutable_supported(path.parent):
            subprocess.run(["chattr", "+i", str(path)], check=True, timeout=30)
            made.append(path)
            return "immutable"
        path.unlink()
        path.mkdir()
        (path / "inside").write_text("a directory cannot be removed with os.remove")
        return "directory"

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=30)


def test_undeletable_file_is_logged_and_skipped_while_others_go(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock, undeletable,
        caplog: pytest.LogCaptureFixture) -> None:
    stuck_id, stuck_path, _ = add("stuck.dat")
    others = [add(f"other{i}.dat") for i in range(3)]
    agent = make_agent()
    assert agent.iterate() is True
    how = undeletable(stuck_path)

    clock.advance(AFTER + 1)
    with caplog.at_level(logging.ERROR):
        agent.iterate()
    assert stuck_path.exists(), how
    assert get_row(manager, stuck_id).removed is None
    assert str(stuck_path) in caplog.text
    for file_id, path, _ in others:
        assert not path.exists()
        assert get_row(manager, file_id).removed == clock()

    # The agent goes on: later files are copied and deleted as usual.
    later_id, later_path, later_data = add("later.dat")
    agent.iterate()
    assert get_row(manager, later_id).remote_md5sum == md5(later_data)
    clock.advance(AFTER + 1)
    agent.iterate()
    assert not later_path.exists()
    assert get_row(manager, later_id).removed == clock()
    assert stuck_path.exists()
    assert get_row(manager, stuck_id).removed is None


# --------------------------------------------------------------- the remote copy is asked again


def test_remote_copy_is_rechecked_before_the_local_file_is_deleted(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock,
        remote_dir: Path) -> None:
    missing_id, missing_path, missing_data = add("missing.dat")
    short_id, short_path, short_data = add("short.dat")
    fine_id, fine_path, _ = add("fine.dat")
    agent = make_agent()
    agent.iterate()
    (remote_dir / "d" / "missing.dat").unlink()
    (remote_dir / "d" / "short.dat").write_bytes(b"truncated")

    clock.advance(AFTER + 1)
    agent.iterate()
    for file_id, path in ((missing_id, missing_path), (short_id, short_path)):
        assert path.exists(), f"{path.name} deleted although its remote copy is bad"
        assert get_row(manager, file_id).removed is None
    assert not fine_path.exists()
    assert get_row(manager, fine_id).removed == clock()

    # The bad remote copies are sent again.
    agent.iterate()
    assert (remote_dir / "d" / "missing.dat").read_bytes() == missing_data
    assert (remote_dir / "d" / "short.dat").read_bytes() == short_data


def test_verify_before_delete_catches_same_size_corruption(
        make_agent, add, manager: SupRsyncFilesManager, clock: Clock,
        remote_dir: Path) -> None:
    file_id, path, data = add("rot.dat")
    agent = make_agent(verify_before_delete=True)
    agent.iterate()
    remote = remote_dir / "d" / "rot.dat"
    st = remote.stat()
    remote.write_bytes(bytes(len(data)))
    os.utime(remote, ns=(st.st_atime_ns, st.st_mtime_ns))

    clock.advance(AFTER + 1)
    agent.iterate()
    assert path.read_bytes() == data
    assert get_row(manager, file_id).removed is None


def test_nothing_deleted_while_the_remote_is_unreachable(
        sshd: SshServer, make_agent, add, manager: SupRsyncFilesManager, clock: Clock) -> None:
    flags = dict(ssh_host=sshd.destination, ssh_key=str(sshd.key), ssh_port=sshd.port,
                 ssh_known_hosts=str(sshd.known_hosts), cmd_timeout=10)
    file_id, path, data = add("due.dat")
    agent = make_agent(**flags)
    assert agent.iterate() is True
    assert get_row(manager, file_id).remote_md5sum == md5(data)

    clock.advance(AFTER + 1)
    with host_down(sshd):
        assert agent.iterate() is False
        assert path.read_bytes() == data
        assert get_row(manager, file_id).removed is None

    assert agent.iterate() is True
    assert not path.exists()
    assert get_row(manager, file_id).removed == clock()
