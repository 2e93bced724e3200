"""Disk pressure (--min-free) on a real, small tmpfs filled by the test.

Verified files the rules would delete go early, oldest first, only as many as it
takes; unverified, never-deleted and not-deletable files stay. When only those are
left the agent says so every iteration: log, session data, metric and status.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    manager_fixture,  # noqa: F401 - the manager fixture
    mount_tmpfs,
    new_agent,
    umount,
)
from invariants import check_invariants

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent
from suprsync.metrics import MetricsServer
from suprsync.retention import parse_min_free, parse_policy

MIB = 1 << 20
WEEK = 604800.0
POLICY = """\
rules:
  - match: "**/tune/**"
    delete_after: never
  - match: "**"
    delete_after: 604800
"""


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A 10 MiB tmpfs holding the local files, unmounted afterwards."""
    path = tmp_path / "data"
    mount_tmpfs(path, "10m")
    try:
        yield path
    finally:
        umount(path)


@pytest.fixture
def make_agent(tmp_path: Path, remote_dir: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(**overrides) -> Agent:
        overrides.setdefault("retention", parse_policy(POLICY, "p.yaml"))
        overrides.setdefault("min_free", parse_min_free("3M"))
        return new_agent(manager, clock, tmp_path, remote_dir, **overrides)

    yield from closing_agents(make)


def fill(path: Path, mib: float) -> Path:
    """An unregistered file of this many MiB."""
    path.write_bytes(os.urandom(int(mib * MIB)))
    return path


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def pressure_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "disk pressure" in r.getMessage()]


def metric_lines(server: MetricsServer, name: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        return [line for line in r.read().decode().splitlines() if line.startswith(name)]


def test_disk_pressure_deletes_oldest_verified_only_as_needed_then_reports(
        data: Path, make_agent, manager: SupRsyncFilesManager, clock: Clock,
        remote_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    def add(name: str, **kwargs) -> int:
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fill(path, 1)
        row = manager.add_file(str(path), name, ARCHIVE, timestamp=clock(), **kwargs)
        clock.advance(10)
        return row.id

    tune = add("tune/t0.npy")                     # protected: never deleted
    fixed = add("keep.dat", deletable=False)      # protected: not deletable
    (remote_dir / "stuck.dat" / "x").mkdir(parents=True)
    stuck = add("stuck.dat")                      # never verifies: its destination is a dir
    verified = [add(f"v{n}.dat") for n in range(4)]
    agent = make_agent(max_copy_attempts=1)
    server = MetricsServer(0)
    server.attach(agent)
    try:
        agent.iterate()                           # copies; stuck.dat fails at its one attempt
        assert agent.iterate() is True
        assert all(get_row(manager, i).removed is None for i in verified), \
            "deleted although free space was at the mark"

        # 1.5 MiB of new data: 2 of the oldest verified files go, not more.
        fill(data / "new1.raw", 1.5)
        assert agent.iterate() is True
        removed = [get_row(manager, i).removed is not None for i in verified]
        assert removed == [True, True, False, False], removed
        assert free(data) >= 3 * MIB
        assert not pressure_errors(caplog)
        state = agent.session.snapshot()["retention"]
        assert state["deleted_for_space"] == 2
        assert state["disk_pressure"] == []
        assert state["filesystems"][0]["path"] == str(data)

        # 3 MiB more: the 2 verified files left are not enough; the rest is protected.
        fill(data / "new2.raw", 3)
        for _ in range(2):  # said again every iteration
            caplog.clear()
            assert agent.iterate() is True
            errors = pressure_errors(caplog)
            assert len(errors) == 1 and str(data) in errors[0], errors
            assert "only unverified or protected" in errors[0]
        assert all(get_row(manager, i).removed is not None for i in verified)
        for file_id in (tune, fixed, stuck):
            row = get_row(manager, file_id)
            assert row.removed is None and os.path.exists(row.local_path)
        state = agent.session.snapshot()["retention"]
        assert [fs["path"] for fs in state["disk_pressure"]] == [str(data)]
        assert state["deleted_bytes_by_rule"] == {"**": 4 * MIB}
        assert metric_lines(server, "suprsync_disk_pressure{") == [
            f'suprsync_disk_pressure{{filesystem="{data}"}} 1.0']
        deleted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                   for line in metric_lines(server, "suprsync_deleted_bytes_total{")}
        assert deleted == {'suprsync_deleted_bytes_total{rule="**"}': 4 * MIB,
                           'suprsync_deleted_bytes_total{rule="**/tune/**"}': 0}
        status = run_cli("status", ARCHIVE, "--db", manager.db_path)
        assert status.returncode == 0, status.stderr
        assert f"disk pressure: {data} has" in status.stdout

        # Space is freed by hand: the report clears.
        (data / "new2.raw").unlink()
        assert agent.iterate() is True
        assert agent.session.snapshot()["retention"]["disk_pressure"] == []
        assert metric_lines(server, "suprsync_disk_pressure{") == [
            f'suprsync_disk_pressure{{filesystem="{data}"}} 0.0']
        assert "disk pressure" not in run_cli("status", ARCHIVE, "--db",
                                              manager.db_path).stdout
    finally:
        server.close()
    check_invariants(manager.db_path, {ARCHIVE: remote_dir})


def test_preview_shows_early_deletions_under_disk_pressure(
        data: Path, manager: SupRsyncFilesManager, clock: Clock, make_agent,
        remote_dir: Path, tmp_path: Path) -> None:
    clock.now = time.time() - 3600  # the command runs on the real clock
    names = [f"v{n}.dat" for n in range(5)]
    for name in names:
        fill(data / name, 1)
        manager.add_file(str(data / name), name, ARCHIVE, timestamp=clock())
        clock.advance(10)
    assert make_agent().iterate() is True
    fill(data / "new.raw", 3.5)          # 1.5 MiB free: 2 files to go
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    result = run_cli("retention", ARCHIVE, "--db", manager.db_path, "--retention", str(policy),
                     "--min-free", "3M", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [os.path.basename(d["local_path"]) for d in shown["delete"]] == names[:2]
    assert all(d["for_space"] for d in shown["delete"])
    assert shown["filesystems"][0]["short"] > 0
    assert all(os.path.exists(data / name) for name in names), "the preview deleted a file"
    check_invariants(manager.db_path, {ARCHIVE: remote_dir})


def test_disk_pressure_keeps_every_deletion_check(
        data: Path, make_agent, manager: SupRsyncFilesManager, clock: Clock,
        remote_dir: Path, tmp_path: Path) -> None:
    """Early deletion still needs the remote copy checked and every sharer's consent."""
    def add(name: str) -> int:
        fill(data / name, 1)
        row = manager.add_file(str(data / name), name, ARCHIVE, timestamp=clock())
        clock.advance(10)
        return row.id

    lost, shared, plain = add("lost.dat"), add("shared.dat"), add("plain.dat")
    other_remote = tmp_path / "remote-other"
    manager.add_file(str(data / "shared.dat"), "shared.dat", "other", timestamp=clock())
    other = make_agent(archive_name="other", remote_basedir=str(other_remote), min_free=None)
    assert other.iterate() is True                 # publishes its rules: delete after a week
    agent = make_agent()
    assert agent.iterate() is True
    assert all(get_row(manager, i).removed is None for i in (lost, shared, plain))
    (remote_dir / "lost.dat").unlink()             # its verified copy disappears
    fill(data / "new.raw", 6)                      # 1 MiB free: all three would be needed
    assert agent.iterate() is True
    assert get_row(manager, plain).removed is not None and not (data / "plain.dat").exists()
    assert (data / "lost.dat").exists(), "deleted for space although its copy was gone"
    assert get_row(manager, lost).remote_md5sum is None, "not queued to be sent again"
    assert (data / "shared.dat").exists(), "deleted before the other archive's rule allows"
    assert get_row(manager, shared).removed is None
    assert agent.session.snapshot()["retention"]["disk_pressure"], "no pressure reported"
    check_invariants(manager.db_path, {ARCHIVE: remote_dir, "other": other_remote},
                     absent_ok=[str(remote_dir / "lost.dat")])
