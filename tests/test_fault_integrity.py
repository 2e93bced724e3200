"""Integrity faults: a remote copy that rots or vanishes, a local file that changes.

Each test copies real files with real rsync (to a local directory and over a real
sshd), damages one side with plain file operations, and checks that no local file
is deleted unless the remote copy still holds its content, and that the agent
repairs the damage by itself. Time moves with the catalog manager's clock.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import (
    ARCHIVE,
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
from suprsync.catalog.conflicts import list_conflicts

AFTER = 1000.0


@pytest.fixture(params=["local", "ssh"])
def make_agent(request: pytest.FixtureRequest, tmp_path: Path, remote_dir: Path,
               manager: SupRsyncFilesManager, clock: Clock):
    """Agents deleting after AFTER seconds, to remote_dir directly or over the real sshd."""
    ssh = ssh_config(request.getfixturevalue("sshd")) if request.param == "ssh" else {}

    def make(**overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote_dir,
                         **{"delete_local_after": AFTER, **ssh, **overrides})

    yield from closing_agents(make)


def copied(manager: SupRsyncFilesManager, agent: Agent, tmp_path: Path, name: str,
           data: bytes) -> tuple[int, Path]:
    """Register a real file and copy it; it is verified, and not yet due for deletion."""
    path = write_file(tmp_path / "local" / name, data)
    file_id = manager.add_file(str(path), f"i/{name}", ARCHIVE).id
    assert agent.iterate() is True
    assert is_synced(manager, file_id)
    return file_id, path


def assert_kept_and_requeued(manager: SupRsyncFilesManager, file_id: int, path: Path,
                             data: bytes) -> None:
    row = get_row(manager, file_id)
    assert path.read_bytes() == data, "the local file was deleted or changed"
    assert row.removed is None
    assert not is_synced(manager, file_id), "the row still claims a good remote copy"


def assert_recopied_then_deleted(manager: SupRsyncFilesManager, file_id: int, path: Path,
                                 remote: Path, data: bytes, clock: Clock) -> None:
    row = get_row(manager, file_id)
    assert row.remote_md5sum == row.local_md5sum == md5(data)
    assert remote.read_bytes() == data
    assert not path.exists()
    assert row.removed == clock()


# --------------------------------------------------------------- the remote copy is damaged


@pytest.mark.parametrize("damage", ["removed", "truncated"])
def test_damaged_remote_copy_keeps_local_file_then_is_recopied_and_deleted(
        damage: str, make_agent, manager: SupRsyncFilesManager, clock: Clock,
        tmp_path: Path, remote_dir: Path) -> None:
    data = os.urandom(64 * 1024)
    agent = make_agent()
    file_id, path = copied(manager, agent, tmp_path, "d.dat", data)
    remote = remote_dir / "i" / "d.dat"
    if damage == "removed":
        remote.unlink()
    else:
        st = remote.stat()
        with remote.open("r+b") as f:
            f.truncate(len(data) // 2)
        os.utime(remote, ns=(st.st_atime_ns, st.st_mtime_ns))

    clock.advance(AFTER + 1)
    assert agent.iterate() is True
    assert_kept_and_requeued(manager, file_id, path, data)
    # What the destination holds now (nothing, or the damaged bytes) is recorded.
    expected = None if damage == "removed" else md5(data[:len(data) // 2])
    assert get_row(manager, file_id).remote_md5sum == expected
    assert (get_row(manager, file_id).failed_copy_attempts or 0) == 0

    # Next iteration: copied again, verified, and only then deleted.
    assert agent.iterate() is True
    assert_recopied_then_deleted(manager, file_id, path, remote, data, clock)


def _rot(remote: Path) -> bytes:
    """Flip every byte of a remote copy; size and mtime stay as they were."""
    st = remote.stat()
    wrong = bytes(b ^ 0xFF for b in remote.read_bytes())
    remote.write_bytes(wrong)
    os.utime(remote, ns=(st.st_atime_ns, st.st_mtime_ns))
    return wrong


def test_verify_before_delete_catches_rot_with_same_size_and_mtime_and_repairs_it(
        make_agent, manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path,
        remote_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = os.urandom(32 * 1024)
    agent = make_agent(verify_before_delete=True)
    file_id, path = copied(manager, agent, tmp_path, "rot.dat", data)
    remote = remote_dir / "i" / "rot.dat"
    wrong = _rot(remote)

    clock.advance(AFTER + 1)
    with caplog.at_level(logging.ERROR):
        assert agent.iterate() is True
    assert f"not deleting {path}" in caplog.text
    assert_kept_and_requeued(manager, file_id, path, data)
    # What the destination holds now is recorded, so the next copy re-sends the file
    # although its size and mtime look current.
    assert get_row(manager, file_id).remote_md5sum == md5(wrong)

    assert agent.iterate() is True
    assert_recopied_then_deleted(manager, file_id, path, remote, data, clock)
    assert (get_row(manager, file_id).failed_copy_attempts or 0) == 0


def test_without_verify_before_delete_rot_with_same_size_and_mtime_is_not_caught(
        make_agent, manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path,
        remote_dir: Path) -> None:
    """The documented limit: size and mtime alone cannot see same-size rot."""
    data = os.urandom(32 * 1024)
    agent = make_agent()
    file_id, path = copied(manager, agent, tmp_path, "rot.dat", data)
    remote = remote_dir / "i" / "rot.dat"
    wrong = _rot(remote)

    clock.advance(AFTER + 1)
    assert agent.iterate() is True
    assert not path.exists()
    assert get_row(manager, file_id).removed == clock()
    assert remote.read_bytes() == wrong


# --------------------------------------------------------------- the local file changes


@pytest.mark.parametrize("change", ["grown", "same-size"])
def test_local_file_changed_after_registration_is_rehashed_logged_and_copied(
        change: str, make_agent, manager: SupRsyncFilesManager, clock: Clock,
        tmp_path: Path, remote_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = os.urandom(8 * 1024)
    path = write_file(tmp_path / "local" / "c.dat", old)
    file_id = manager.add_file(str(path), "i/c.dat", ARCHIVE).id
    clock.advance(60)
    new = old + b"appended" if change == "grown" else bytes(b ^ 0x55 for b in old)
    write_file(path, new, mtime=clock() - 30)  # modified after it was registered

    agent = make_agent()
    with caplog.at_level(logging.WARNING):
        assert agent.iterate() is True
    assert f"{path} changed after it was registered" in caplog.text
    row = get_row(manager, file_id)
    assert row.local_md5sum == row.remote_md5sum == md5(new)
    assert (row.failed_copy_attempts or 0) == 0
    assert (remote_dir / "i" / "c.dat").read_bytes() == new
    assert path.read_bytes() == new, "deleted although not yet due"


def test_local_rot_without_a_newer_mtime_is_not_taken_as_new_content(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path) -> None:
    """Bytes that change under an unchanged mtime are damage, not a new version."""
    good = os.urandom(8 * 1024)
    path = write_file(tmp_path / "local" / "r.dat", good)
    file_id = manager.add_file(str(path), "i/r.dat", ARCHIVE).id
    st = path.stat()
    path.write_bytes(bytes(b ^ 0xFF for b in good))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    agent = make_agent()
    agent.iterate()
    row = get_row(manager, file_id)
    assert row.local_md5sum == md5(good), "the damaged content became the reference"
    assert not is_synced(manager, file_id)
    assert row.failed_copy_attempts == 1
    assert path.exists()


@pytest.mark.parametrize("change", ["same-size", "truncated"])
def test_local_file_changed_after_its_copy_was_verified_is_a_conflict_and_kept(
        change: str, make_agent, manager: SupRsyncFilesManager, clock: Clock,
        tmp_path: Path, remote_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The verified copy is never overwritten by a later local change, and the changed
    local file is never deleted: the row becomes a conflict until an operator decides."""
    old = os.urandom(16 * 1024)
    agent = make_agent()
    file_id, path = copied(manager, agent, tmp_path, "m.dat", old)
    remote = remote_dir / "i" / "m.dat"
    clock.advance(AFTER + 1)
    new = bytes(b ^ 0x0F for b in old) if change == "same-size" else old[:100]
    write_file(path, new, mtime=clock() - 10)

    with caplog.at_level(logging.ERROR):
        assert agent.iterate() is True
        assert agent.iterate() is True
    assert caplog.text.count("conflict: not deleting") == 1, "logged once, not per iteration"
    assert "changed after its copy was verified" in caplog.text
    assert path.read_bytes() == new
    assert remote.read_bytes() == old
    row = get_row(manager, file_id)
    assert row.removed is None and row.local_md5sum == md5(old)
    conflicts = manager.read(lambda s: list_conflicts(s, ARCHIVE))
    assert [(c["id"], c["kind"]) for c in conflicts] == [(file_id, "changed")]
