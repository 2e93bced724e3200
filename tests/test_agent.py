"""The agent loop: session data, published feeds, signals, a locked catalog, run flags."""

from __future__ import annotations

import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import SUPRSYNC, SshServer, run_cli
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    logged_commands,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    new_agent,
    running,
    wrapped_sshd,
    write_file,
)
from invariants import check_invariants

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent

SESSION_KEYS = {"activity", "timestamp", "last_copy", "archive_stats", "counters"}
COUNTER_KEYS = {"iterations", "copies", "errors_timeout", "errors_nonzero", "errors_sqlite"}
STATS_KEYS = {"finalized_until", "num_files", "uncopied_files", "last_file_added",
              "last_file_copied"}


def register(manager: SupRsyncFilesManager, folder: Path, count: int) -> dict[int, bytes]:
    files = {}
    for i in range(count):
        data = f"file {i}\n".encode() * 50
        path = write_file(folder / f"f{i}.dat", data)
        files[manager.add_file(str(path), f"r/f{i}.dat", ARCHIVE).id] = data
    return files


def synced_count(db: Path) -> int:
    """Rows whose remote checksum matches, read with plain sqlite (no suprsync code)."""
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM supersync_v0 WHERE remote_md5sum IS NOT NULL "
                            "AND remote_md5sum = local_md5sum").fetchone()[0]


@pytest.fixture
def make_agent(tmp_path: Path, remote_dir: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(publish=None, **overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote_dir, publish=publish, **overrides)

    yield from closing_agents(make)


def run_args(tmp_path: Path, db: Path, remote: Path, *extra: str) -> list[str]:
    return ["run", "--archive-name", ARCHIVE, "--remote-basedir", str(remote),
            "--db-path", str(db), "--suprsync-file-root", str(tmp_path / "srfroot"), *extra]


# --------------------------------------------------------------- session data


def test_session_data_after_one_iteration_has_exactly_the_documented_keys(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, clock: Clock) -> None:
    files = register(manager, tmp_path / "local", 3)
    agent = make_agent()
    assert agent.iterate() is True
    data = agent.session.snapshot()

    assert set(data) == SESSION_KEYS
    assert data["activity"] == "idle"
    assert data["timestamp"] == clock()
    assert set(data["counters"]) == COUNTER_KEYS
    assert data["counters"] == {"iterations": 1, "copies": 3, "errors_timeout": 0,
                                "errors_nonzero": 0, "errors_sqlite": 0}

    last = data["last_copy"]
    assert set(last) == {"start_time", "stop_time", "files"}
    assert last["start_time"] <= last["stop_time"]
    paths = {get_row(manager, i).local_path for i in files}
    assert isinstance(last["files"], list)
    for entry in last["files"]:
        assert isinstance(entry, list) and len(entry) == 2
        assert isinstance(entry[0], str) and entry[1] is True
    assert {p for p, _ in last["files"]} == paths

    assert set(data["archive_stats"]) == {ARCHIVE}
    stats = data["archive_stats"][ARCHIVE]
    assert set(stats) == STATS_KEYS
    assert stats["num_files"] == 3
    assert stats["uncopied_files"] == 0


def test_an_unforeseen_error_fails_the_iteration_and_the_agent_goes_on(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An error no rule foresaw (here raised by the screening of a batch) fails one
    iteration, counted and logged with its traceback once, a line each time after;
    the agent releases its leases and copies everything once the error is gone."""
    from suprsync import copying

    files = register(manager, tmp_path / "local", 2)
    agent = make_agent()
    real = copying.screen_batch

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise ValueError("a value no rule foresaw")

    monkeypatch.setattr(copying, "screen_batch", broken)
    with caplog.at_level(logging.ERROR):
        assert agent.iterate() is False
        assert agent.iterate() is False
    assert caplog.text.count("Traceback") == 1
    assert "failed unexpectedly again (ValueError: a value no rule foresaw)" in caplog.text
    data = agent.session.snapshot()
    assert data["counters"]["errors_nonzero"] == 2 and agent.session.degraded
    assert manager.claim_holders() == []
    monkeypatch.setattr(copying, "screen_batch", real)
    assert agent.iterate() is True
    assert synced_count(manager.db_path) == len(files)
    assert all((remote_dir / f"r/f{i}.dat").read_bytes() == data_
               for i, data_ in enumerate(files.values()))
    check_invariants(manager.db_path, {ARCHIVE: remote_dir})


def test_session_last_copy_error_only_when_the_transfer_failed(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        sshd: SshServer) -> None:
    files = register(manager, tmp_path / "local", 2)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    agent = make_agent(ssh_host=sshd.destination, ssh_key=str(sshd.key), ssh_port=sshd.port,
                       ssh_known_hosts=str(empty), cmd_timeout=10)
    assert agent.iterate() is False
    data = agent.session.snapshot()
    assert set(data) == SESSION_KEYS
    assert data["last_copy"]["error"] == "nonzero exit"
    assert set(data["last_copy"]) == {"start_time", "stop_time", "files", "error"}
    assert data["counters"]["errors_nonzero"] == 1
    assert data["counters"]["errors_timeout"] == 0

    good = make_agent(ssh_host=sshd.destination, ssh_key=str(sshd.key), ssh_port=sshd.port,
                      ssh_known_hosts=str(sshd.known_hosts), cmd_timeout=10)
    assert good.iterate() is True
    assert "error" not in good.session.snapshot()["last_copy"]
    for file_id, content in files.items():
        assert get_row(manager, file_id).remote_md5sum == md5(content)


def test_unknown_host_key_fails_the_iteration_and_copies_nothing(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        sshd: SshServer) -> None:
    files = register(manager, tmp_path / "local", 2)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    base = remote_dir / "archive"
    agent = make_agent(remote_basedir=str(base), ssh_host=sshd.destination,
                       ssh_key=str(sshd.key), ssh_port=sshd.port, ssh_known_hosts=str(empty),
                       cmd_timeout=10)
    assert agent.iterate() is False
    assert agent.session.counters["errors_nonzero"] == 1
    assert not base.exists() or not any(base.rglob("*"))
    for file_id in files:
        row = get_row(manager, file_id)
        assert row.remote_md5sum is None
        assert (row.failed_copy_attempts or 0) == 0


def test_cli_unknown_host_key_copies_nothing(
        manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path, remote_dir: Path,
        sshd: SshServer) -> None:
    files = register(manager, tmp_path / "local", 2)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    flags = sshd.agent_flags()
    flags[flags.index("--ssh-known-hosts") + 1] = str(empty)
    result = run_cli(*run_args(tmp_path, tmp_catalog, remote_dir, "--once", "--cmd-timeout",
                               "10", *flags), timeout=60)
    assert "Traceback" not in result.stderr
    assert "Host key verification failed" in result.stderr
    assert not any(remote_dir.rglob("*"))
    for file_id in files:
        assert get_row(manager, file_id).remote_md5sum is None


def test_feeds_archive_stats_every_iteration_transfer_stats_every_ten_minutes(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, clock: Clock) -> None:
    register(manager, tmp_path / "local", 1)
    published: list[tuple[str, dict]] = []
    agent = make_agent(publish=lambda feed, msg: published.append((feed, msg)))
    for _ in range(3):
        agent.iterate()
        clock.advance(60)
    clock.advance(600)
    agent.iterate()

    stats = [m for f, m in published if f == "archive_stats"]
    transfer = [m for f, m in published if f == "transfer_stats"]
    assert len(stats) == 4
    assert all(m["block_name"] == ARCHIVE and set(m["data"]) == STATS_KEYS for m in stats)
    assert len(transfer) == 2
    assert all(m["block_name"] == "block0" and set(m["data"]) == COUNTER_KEYS
               for m in transfer)


# --------------------------------------------------------------- run, signals


def test_run_once_exits_zero_after_one_iteration(
        manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path,
        remote_dir: Path) -> None:
    files = register(manager, tmp_path / "local", 3)
    result = run_cli(*run_args(tmp_path, tmp_catalog, remote_dir, "--once",
                               "--sleep-time", "600"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for file_id, data in files.items():
        row = get_row(manager, file_id)
        assert row.remote_md5sum == md5(data)
        assert (remote_dir / row.remote_path).read_bytes() == data


def test_run_once_over_ssh_prepares_the_destination_once_and_closes_its_connection(
        manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path) -> None:
    # The command line starts reaching the host while the catalog code loads; the copy
    # step then uses that connection instead of preparing the destination again.
    files = register(manager, tmp_path / "local", 3)
    remote = tmp_path / "remote"
    server = wrapped_sshd(tmp_path / "sshd")
    # A temporary directory of this run alone (short: it holds the control socket), so
    # that control dirs of agents other tests run meanwhile are not counted.
    tmpdir = Path(tempfile.mkdtemp(prefix="sst-"))
    try:
        with running(server):
            result = run_cli(*run_args(tmp_path, tmp_catalog, remote, "--once",
                                       *server.agent_flags()), timeout=60,
                             env={"TMPDIR": str(tmpdir)})
            commands = logged_commands(server)
        left = [d.name for d in tmpdir.glob("suprsync-ssh-*")]
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert [c for c in commands if c.startswith("mkdir ")] == [f"mkdir -p -- {remote}"]
    for file_id, data in files.items():
        row = get_row(manager, file_id)
        assert row.remote_md5sum == md5(data)
        assert (remote / row.remote_path).read_bytes() == data
    # The shared connection ended with the process: no control dir of the run is left.
    assert left == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_a_running_agent_with_status_zero(
        signum: signal.Signals, manager: SupRsyncFilesManager, tmp_path: Path,
        tmp_catalog: Path, remote_dir: Path) -> None:
    register(manager, tmp_path / "local", 3)
    err = tmp_path / "agent.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [SUPRSYNC, *run_args(tmp_path, tmp_catalog, remote_dir, "--sleep-time", "60")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        deadline = time.monotonic() + 60
        while synced_count(tmp_catalog) < 3:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "first iteration did not finish\n" + \
                err.read_text()
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err.read_text()
    assert "Traceback" not in log
    assert signum.name in log


# --------------------------------------------------------------- a locked catalog


def _hold_exclusive(db: Path, locked: threading.Event, released: threading.Event,
                    seconds: float) -> None:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        released.set()
    finally:
        conn.close()


def test_iteration_waits_for_a_briefly_locked_catalog(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path) -> None:
    files = register(manager, tmp_path / "local", 3)
    agent = make_agent()
    locked, released = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_exclusive,
                              args=(tmp_catalog, locked, released, 3.0), daemon=True)
    holder.start()
    assert locked.wait(30)
    try:
        ok = agent.iterate()
    finally:
        holder.join(timeout=30)
    # The iteration wrote its results, which was only possible once the lock was gone.
    assert released.is_set()
    assert ok is True
    assert agent.session.counters["errors_sqlite"] == 0
    for file_id, data in files.items():
        assert get_row(manager, file_id).remote_md5sum == md5(data)


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
"""


def test_run_once_survives_a_catalog_locked_by_another_process(
        manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path,
        remote_dir: Path) -> None:
    files = register(manager, tmp_path / "local", 3)
    manager.close()
    # A catalog in rollback-journal mode, as other programs leave it: an exclusive
    # lock there blocks readers too.
    with sqlite3.connect(tmp_catalog) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_catalog), "3"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli(*run_args(tmp_path, tmp_catalog, remote_dir, "--once"), timeout=90)
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for file_id, data in files.items():
        assert get_row(manager, file_id).remote_md5sum == md5(data)


# --------------------------------------------------------------- flag validation


def _assert_short_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, one `suprsync run: error:` line naming the problem."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("suprsync run: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], result.stderr
    return errors[0]


@pytest.mark.parametrize("value, reason", [("-5", "negative"), ("abc", "not a number")])
def test_bad_sleep_time_is_a_one_line_error(tmp_path: Path, tmp_catalog: Path,
                                            remote_dir: Path, value: str, reason: str) -> None:
    result = run_cli(*run_args(tmp_path, tmp_catalog, remote_dir, "--once",
                               f"--sleep-time={value}"), timeout=60)
    _assert_short_error(result, "--sleep-time", reason)
    assert not tmp_catalog.exists()


def test_missing_suprsync_file_root_is_a_usage_error(tmp_path: Path, tmp_catalog: Path,
                                                     remote_dir: Path) -> None:
    result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--remote-basedir",
                     str(remote_dir), "--db-path", str(tmp_catalog), timeout=60)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    line = _assert_short_error(result, "--suprsync-file-root")
    assert "required" in line


def test_ssh_key_readable_by_others_is_a_one_line_error(
        tmp_path: Path, tmp_catalog: Path, remote_dir: Path, sshd: SshServer) -> None:
    key = tmp_path / "open_key"
    key.write_bytes(sshd.key.read_bytes())
    key.chmod(0o644)
    flags = sshd.agent_flags()
    flags[flags.index("--ssh-key") + 1] = str(key)
    result = run_cli(*run_args(tmp_path, tmp_catalog, remote_dir, "--once", *flags),
                     timeout=60)
    _assert_short_error(result, "chmod 600")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
