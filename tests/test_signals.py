"""Stopping ``suprsync run`` with a signal, and killing it: no child of it is left running.

Every test runs the real ``suprsync run`` process against a local directory or
the real sshd, and watches its real children (rsync, ssh, the ssh connection
master) through /proc.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SUPRSYNC, SshServer
from helpers import (
    ARCHIVE,
    descendants,
    kill_hung,
    running,
    wait_until,
    wrapped_sshd,
    wrapper_dir,
    write_file,
)

from suprsync import SupRsyncFilesManager

STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
BIG = 4 << 20
#: KiB/s: the big file takes about 40 s, far longer than any test waits.
SLOW = "100"


def proc_start(pid: int) -> int | None:
    """Start time of a live (not zombie) process, from /proc; None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def catches(pid: int, signum: int) -> bool:
    """True when the process has a handler for signum (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Watched:
    """Processes seen below the agent (and its ssh connection master), by pid and start."""

    def __init__(self, agent_pid: int) -> None:
        self.agent_pid = agent_pid
        self.seen: dict[int, tuple[int, bytes]] = {}

    def look(self) -> list[bytes]:
        """Note every process now below the agent or serving its connections."""
        marker = f"suprsync-ssh-{self.agent_pid}-".encode()
        pids = set(descendants(self.agent_pid))
        for entry in os.listdir("/proc"):
            if entry.isdigit() and marker in cmdline(int(entry)):
                pids.add(int(entry))
        for pid in pids:
            started = proc_start(pid)
            if started is not None:
                self.seen.setdefault(pid, (started, cmdline(pid)))
        return [cmdline(p) for p in pids]

    def left_running(self) -> list[bytes]:
        """Command lines of the processes seen that still run."""
        return [cmd for pid, (started, cmd) in self.seen.items() if proc_start(pid) == started]

    def kill_left(self) -> None:
        for pid, (started, _) in self.seen.items():
            if proc_start(pid) == started:
                os.kill(pid, signal.SIGKILL)


def register(db: Path, folder: Path, sizes: dict[str, int]) -> list[Path]:
    manager = SupRsyncFilesManager(str(db), create_all=True)
    paths = []
    for name, size in sizes.items():
        path = write_file(folder / name, os.urandom(size))
        manager.add_file(str(path), f"r/{name}", ARCHIVE)
        paths.append(path)
    manager.close()
    return paths


def catalog_state(db: Path) -> list[tuple[str, int, int]]:
    """(remote path, synced, failed attempts) of every row, read with plain sqlite."""
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(
            "SELECT remote_path, coalesce(remote_md5sum = local_md5sum, 0),"
            " coalesce(failed_copy_attempts, 0) FROM supersync_v0 ORDER BY id").fetchall()


def ssh_args(server: SshServer) -> list[str]:
    return ["--ssh-host", server.destination, "--ssh-key", str(server.key),
            "--ssh-port", str(server.port), "--ssh-known-hosts", str(server.known_hosts)]


class AgentProcess:
    """One real ``suprsync run``, its stderr in a file, its processes watched."""

    def __init__(self, tmp_path: Path, db: Path, remote: Path, *extra: str) -> None:
        self.err = tmp_path / f"agent-{time.monotonic_ns()}.err"
        # Short enough to hold the ssh control dir, which then stays out of the shared
        # /tmp (where other runs on this host would clean it up).
        self.tmpdir = self.tmpdir_of(tmp_path)
        self.tmpdir.mkdir(exist_ok=True)
        argv = [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--remote-basedir", str(remote),
                "--db-path", str(db), "--suprsync-file-root", str(tmp_path / "srfroot"),
                *extra]
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         env={**os.environ, "TMPDIR": str(self.tmpdir)})
        self.watched = Watched(self.proc.pid)

    @staticmethod
    def tmpdir_of(tmp_path: Path) -> Path:
        """The agents' TMPDIR of a test."""
        return Path("/tmp") / f"sst-{hashlib.md5(bytes(tmp_path)).hexdigest()[:10]}"

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for_child(self, prefix: bytes, seconds: float = 30) -> None:
        """Watch until a child whose command starts with prefix runs."""
        def found() -> bool:
            assert self.proc.poll() is None, self.log()
            return any(cmd.startswith(prefix) for cmd in self.watched.look())
        wait_until(found, seconds, f"a {prefix.decode()} child\n{self.log()}", interval=0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.watched.kill_left()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.close()


def assert_stopped_cleanly(agent: AgentProcess, signum: int, seconds: float = 15) -> None:
    assert agent.proc.wait(timeout=seconds) == 0, agent.log()
    log = agent.log()
    assert "Traceback" not in log, log
    assert signal.Signals(signum).name in log, log
    # Children die with the agent's SIGKILL of their groups; give the kernel a moment.
    wait_until(lambda: not agent.watched.left_running(), 5,
               f"children of the stopped agent to end: {agent.watched.left_running()}")


# ----------------------------------------------------------------- stop signals


@pytest.mark.parametrize("via", ["local", "ssh"])
@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_stop_signal_mid_transfer_exits_zero_and_leaves_no_child(
        signum: signal.Signals, via: str, sshd: SshServer, tmp_path: Path,
        agents: list[AgentProcess]) -> None:
    db = tmp_path / "catalog.db"
    local = register(db, tmp_path / "local", {"small.dat": 1000, "big.dat": BIG})
    extra = ssh_args(sshd) if via == "ssh" else []
    agent = AgentProcess(tmp_path, db, tmp_path / "remote", "--bwlimit", SLOW,
                         "--delete-local-after", "0", "--sleep-time", "60", *extra)
    agents.append(agent)
    agent.wait_for_child(b"rsync")
    time.sleep(0.3)
    agent.watched.look()
    agent.proc.send_signal(signum)
    assert_stopped_cleanly(agent, signum)
    # Interrupted, not failed: no attempt charged, nothing deleted, no final name of big.dat.
    assert [attempts for _, _, attempts in catalog_state(db)] == [0, 0]
    assert all(path.exists() for path in local)
    assert not (tmp_path / "remote" / "r" / "big.dat").exists()
    assert "Traceback" not in agent.log()


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd whose md5sum checks hang while the switch file "hang" exists."""
    server = wrapped_sshd(tmp_path_factory.mktemp("wrapped-sshd"))
    with running(server):
        yield server


@pytest.fixture
def hang(wrapped: SshServer) -> Iterator[Path]:
    switch = wrapper_dir(wrapped) / "hang"
    yield switch
    switch.unlink(missing_ok=True)
    kill_hung(wrapper_dir(wrapped))


def hung(server: SshServer) -> bool:
    return (wrapper_dir(server) / "hung.pids").exists()


def test_sighup_during_a_hung_remote_md5_exits_zero_and_leaves_no_child(
        wrapped: SshServer, hang: Path, tmp_path: Path, agents: list[AgentProcess]) -> None:
    db = tmp_path / "catalog.db"
    register(db, tmp_path / "local", {"a.dat": 5000})
    hang.touch()
    agent = AgentProcess(tmp_path, db, tmp_path / "remote", "--sleep-time", "60",
                         *ssh_args(wrapped))
    agents.append(agent)
    wait_until(lambda: agent.watched.look() is not None and hung(wrapped), 30,
               "the remote md5sum to hang\n" + agent.log())
    agent.watched.look()
    agent.proc.send_signal(signal.SIGHUP)
    assert_stopped_cleanly(agent, signal.SIGHUP)
    assert catalog_state(db) == [("r/a.dat", 0, 0)]


def test_sigterm_during_deletion_exits_zero_keeps_the_file_and_leaves_no_child(
        wrapped: SshServer, hang: Path, tmp_path: Path, agents: list[AgentProcess]) -> None:
    """The md5 check before deletion hangs; SIGTERM ends it and the file stays."""
    db = tmp_path / "catalog.db"
    [path] = register(db, tmp_path / "local", {"a.dat": 5000})
    agent = AgentProcess(tmp_path, db, tmp_path / "remote", "--sleep-time", "0.2",
                         "--delete-local-after", "2", "--verify-before-delete",
                         *ssh_args(wrapped))
    agents.append(agent)
    wait_until(lambda: catalog_state(db) == [("r/a.dat", 1, 0)], 30,
               "the file to be copied and verified\n" + agent.log())
    hang.touch()  # the next md5sum is the check before deletion
    wait_until(lambda: agent.watched.look() is not None and hung(wrapped), 30,
               "the check before deletion to hang\n" + agent.log())
    agent.watched.look()
    agent.proc.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(agent, signal.SIGTERM)
    assert path.exists()


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_stop_signal_at_start_up_exits_zero(signum: signal.Signals, tmp_path: Path,
                                            agents: list[AgentProcess]) -> None:
    """A signal while the agent is still starting (loading, opening the catalog).

    It is sent as soon as the command line is parsed (the process catches the
    signal), long before the loop starts.
    """
    db = tmp_path / "catalog.db"
    register(db, tmp_path / "local", {"a.dat": 1000})
    agent = AgentProcess(tmp_path, db, tmp_path / "remote", "--sleep-time", "60")
    agents.append(agent)
    # SIGINT has Python's own handler from the start: wait for the one of SIGHUP.
    wait_until(lambda: catches(agent.proc.pid, signal.SIGHUP), 30, "the signals to be caught",
               interval=0.001)
    agent.proc.send_signal(signum)
    assert agent.proc.wait(timeout=30) == 0, agent.log()
    assert "Traceback" not in agent.log()


# ----------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_children_of_an_agent_killed_by_sigkill_end_at_once_and_its_master_at_next_start(
        via: str, sshd: SshServer, tmp_path: Path, agents: list[AgentProcess]) -> None:
    """rsync dies with its parent and what it started ends with it, with no time limit
    set; the ssh connection master (outside the agent's tree) is ended by the next start."""
    db = tmp_path / "catalog.db"
    register(db, tmp_path / "local", {"big.dat": BIG})
    extra = ssh_args(sshd) if via == "ssh" else []
    agent = AgentProcess(tmp_path, db, tmp_path / "remote", "--bwlimit", SLOW, *extra)
    agents.append(agent)
    agent.wait_for_child(b"rsync")
    time.sleep(0.3)
    below = set(descendants(agent.proc.pid))
    agent.watched.look()
    agent.proc.kill()
    agent.proc.wait()

    def running_of(pids: set[int]) -> list[bytes]:
        return [cmd for pid, (started, cmd) in agent.watched.seen.items()
                if pid in pids and proc_start(pid) == started]

    wait_until(lambda: not running_of(below), 5,
               f"the children of the killed agent to end: {running_of(below)}")
    # Still running outside the agent's tree: its connection master (ssh clients seen
    # earlier have ended).
    masters = {pid for pid in set(agent.watched.seen) - below if running_of({pid})}
    if via == "local":
        assert not masters
        return
    after = AgentProcess(tmp_path, db, tmp_path / "remote", "--once", *extra)
    agents.append(after)
    assert after.proc.wait(timeout=60) == 0, after.log()
    # Asked to exit at the start of the run; it may take a moment to close its channels.
    wait_until(lambda: not running_of(masters), 5,
               "the dead agent's connection master to end\n" + after.log())
    assert catalog_state(db) == [("r/big.dat", 1, 0)]


def test_next_start_ends_the_children_a_dead_run_left_and_spares_others(
        tmp_path: Path, agents: list[AgentProcess]) -> None:
    """The ledger of a dead run names its children by pid and start time."""
    tmpdir = AgentProcess.tmpdir_of(tmp_path)
    tmpdir.mkdir()
    left = subprocess.Popen(["sleep", "60"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        left_start, stranger_start = proc_start(left.pid), proc_start(stranger.pid)
        assert left_start is not None and stranger_start is not None
        # A dead keeper: its pid no longer runs. The stranger's pid is listed with
        # another start time, as after pid reuse.
        (tmpdir / f"suprsync-children-{gone.pid}-12345").write_text(
            f"{left.pid} {left_start}\n{stranger.pid} {stranger_start + 1}\n")
        # A live keeper (this test) whose child must be left alone.
        me = os.getpid()
        live_ledger = tmpdir / f"suprsync-children-{me}-{proc_start(me)}"
        live_ledger.write_text(f"{stranger.pid} {stranger_start}\n")

        db = tmp_path / "catalog.db"
        register(db, tmp_path / "local", {"a.dat": 1000})
        agent = AgentProcess(tmp_path, db, tmp_path / "remote", "--once")
        agents.append(agent)
        assert agent.proc.wait(timeout=60) == 0, agent.log()
        assert left.wait(timeout=5) == -signal.SIGKILL
        assert stranger.poll() is None, "a process that is not the dead run's was killed"
        assert not (tmpdir / f"suprsync-children-{gone.pid}-12345").exists()
        assert live_ledger.exists()
        assert f"ended process {left.pid}" in agent.log()
        # The run's own ledger is gone with it.
        assert sorted(p.name for p in tmpdir.glob("suprsync-children-*")) == [live_ledger.name]
    finally:
        for proc in (left, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
