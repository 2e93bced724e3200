"""A destination that refuses writes: a failure of the iteration, never of the files.

Real faults on real mounts: a tmpfs remounted read-only, a tmpfs out of inodes,
a read-only parent of a base dir that does not exist yet; through a local
destination and over ssh to the test sshd (which runs as this user, root, so
only a read-only mount stops it). While the fault lasts every iteration fails,
is counted and logged once, and no file is charged an attempt, however many
iterations pass; once the fault is fixed every file flows with no operator action.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    ssh_config,
    umount,
    write_file,
)
from invariants import check_invariants

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent

#: Attempts allowed per file; the fault outlasts them.
LIMIT = 2


@pytest.fixture
def make_agent(tmp_path: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(remote: Path, **overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote, max_copy_attempts=LIMIT,
                         **overrides)

    yield from closing_agents(make)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown, innermost last."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        umount(point)


def remount(path: Path, options: str) -> None:
    """Change the mount options of a mounted tmpfs (ro, rw, nr_inodes=...)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True,
                   capture_output=True, timeout=30)


def register(manager: SupRsyncFilesManager, folder: Path,
             remotes: list[str]) -> dict[int, bytes]:
    files = {}
    for n, remote in enumerate(remotes):
        data = os.urandom(1000 + n)
        path = write_file(folder / f"f{n}.dat", data)
        files[manager.add_file(str(path), remote, ARCHIVE).id] = data
    return files


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def fail_past_the_limit(agent: Agent, manager: SupRsyncFilesManager,
                        files: dict[int, bytes], caplog: pytest.LogCaptureFixture,
                        reason: str) -> None:
    """More failed iterations than the attempt limit: each counted, logged once, free."""
    for n in range(1, LIMIT + 2):
        caplog.clear()
        assert iterate_within(agent, 60) is False
        assert agent.session.counters["errors_nonzero"] == n
        assert agent.session.snapshot()["last_copy"]["error"] == "nonzero exit"
        logged = errors(caplog)
        assert len(logged) == 1, logged
        assert reason in logged[0]
        assert agent._pause(False) == 2.0 ** n
    for file_id in files:
        row = get_row(manager, file_id)
        assert (row.failed_copy_attempts or 0) == 0, row
        assert not is_synced(manager, file_id)


def flows(agent: Agent, manager: SupRsyncFilesManager, files: dict[int, bytes],
          base: Path) -> None:
    """The first iteration after the fix copies and verifies every file."""
    assert iterate_within(agent, 60) is True
    for file_id, data in files.items():
        assert is_synced(manager, file_id)
        assert (base / get_row(manager, file_id).remote_path).read_bytes() == data
    check_invariants(manager.db_path, {ARCHIVE: base},
                     file_root=agent.config.suprsync_file_root)


def _ssh(via: str, request: pytest.FixtureRequest) -> dict:
    return ssh_config(request.getfixturevalue("sshd")) if via == "ssh" else {}


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_base_dir_on_a_read_only_file_system(
        via: str, tmp_path: Path, manager: SupRsyncFilesManager, make_agent, mounts,
        caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    base = tmp_path / "remote" / "archive"
    mount_tmpfs(base, "4m")
    mounts.append(base)
    remount(base, "ro")
    files = register(manager, tmp_path / "local", ["16750/a/x.g3", "16750/b/y.g3", "z.g3"])
    agent = make_agent(base, **_ssh(via, request))

    fail_past_the_limit(agent, manager, files, caplog, "Read-only file system")

    remount(base, "rw")
    flows(agent, manager, files, base)


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_base_dir_missing_below_a_read_only_parent(
        via: str, tmp_path: Path, manager: SupRsyncFilesManager, make_agent, mounts,
        caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    parent = tmp_path / "remote"
    mount_tmpfs(parent, "4m")
    mounts.append(parent)
    remount(parent, "ro")
    base = parent / "archive"
    files = register(manager, tmp_path / "local", ["16750/a/x.g3", "z.g3"])
    agent = make_agent(base, **_ssh(via, request))

    fail_past_the_limit(agent, manager, files, caplog, "Read-only file system")
    assert not base.exists()

    remount(parent, "rw")
    flows(agent, manager, files, base)


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_one_read_only_subdir_fails_the_iteration_and_charges_nobody(
        via: str, tmp_path: Path, manager: SupRsyncFilesManager, make_agent, mounts,
        caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    base = tmp_path / "remote" / "archive"
    base.mkdir(parents=True)
    stuck = base / "16750"
    mount_tmpfs(stuck, "4m")
    mounts.append(stuck)
    remount(stuck, "ro")
    files = register(manager, tmp_path / "local", ["16750/x.g3", "16751/y.g3"])
    agent = make_agent(base, **_ssh(via, request))

    fail_past_the_limit(agent, manager, files, caplog, "Read-only file system")

    remount(stuck, "rw")
    flows(agent, manager, files, base)


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_destination_out_of_inodes(
        via: str, tmp_path: Path, manager: SupRsyncFilesManager, make_agent, mounts,
        caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    base = tmp_path / "remote" / "archive"
    base.mkdir(parents=True)
    # Room for the root and one directory: rsync can make 16750/ but no file in it.
    mount_tmpfs(base, "4m")
    mounts.append(base)
    remount(base, "nr_inodes=2")
    files = register(manager, tmp_path / "local", ["16750/x.g3", "16750/y.g3"])
    agent = make_agent(base, **_ssh(via, request))

    fail_past_the_limit(agent, manager, files, caplog, "No space left on device")

    remount(base, "nr_inodes=1000")
    flows(agent, manager, files, base)
