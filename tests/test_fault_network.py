"""Network and destination faults injected into real parts, and ssh safety.

Every test runs real rsync against a real sshd (extra servers are started with
special configs where a fault needs one) or against a real tmpfs mount. While a
fault lasts the agent must survive, count it, back off, delete nothing; when the
fault ends it must recover by itself.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SUPRSYNC, run_cli
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    is_synced,
    iterate_within,
    kill_hung,
    kill_sshd_hard,
    logged_commands,
    make_sshd,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    mount_tmpfs,
    new_agent,
    remount_tmpfs,
    running,
    ssh_config,
    umount,
    wait_until,
    wrapped_sshd,
    wrapper_dir,
    write_file,
)
from sshd_server import SshServer, keygen

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent


@pytest.fixture
def make_agent(tmp_path: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(remote: Path, **overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote, **overrides)

    yield from closing_agents(make)


@pytest.fixture(scope="module")
def extra_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A second real sshd of this module, which tests may kill and restart."""
    server = make_sshd(tmp_path_factory.mktemp("extra-sshd"))
    with running(server):
        yield server


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd running every remote command through the logging/hanging wrapper."""
    server = wrapped_sshd(tmp_path_factory.mktemp("wrapped-sshd"))
    with running(server):
        yield server


def register(manager: SupRsyncFilesManager, folder: Path, sizes: dict[str, int],
             prefix: str = "r") -> dict[int, tuple[Path, bytes]]:
    """Real files of random content, registered as <prefix>/<name>."""
    files = {}
    for name, size in sizes.items():
        data = os.urandom(size)
        path = write_file(folder / name, data)
        files[manager.add_file(str(path), f"{prefix}/{name}", ARCHIVE).id] = (path, data)
    return files


def assert_all_local(files: dict[int, tuple[Path, bytes]]) -> None:
    for path, data in files.values():
        assert path.read_bytes() == data, f"{path} was deleted or changed during the fault"


def assert_untouched(manager: SupRsyncFilesManager, file_ids: list[int]) -> None:
    """The fault cost these files nothing: no verdict, no attempt, not removed."""
    for file_id in file_ids:
        row = get_row(manager, file_id)
        assert not is_synced(manager, file_id), row
        assert (row.failed_copy_attempts or 0) == 0, row
        assert row.removed is None, row


# --------------------------------------------------------------- (a) sshd killed mid-transfer


def test_sshd_killed_mid_transfer_then_restarted(
        extra_sshd: SshServer, tmp_path: Path, manager: SupRsyncFilesManager, make_agent,
        clock: Clock) -> None:
    remote = tmp_path / "remote"
    early = register(manager, tmp_path / "local", {"early.dat": 1000})
    agent = make_agent(remote, delete_local_after=0, bwlimit="1000", cmd_timeout=10,
                       **ssh_config(extra_sshd))
    # Copied before the fault; deletion is due only once the clock moves.
    assert iterate_within(agent, 60) is True
    assert all(is_synced(manager, i) for i in early)

    big = register(manager, tmp_path / "local", {"big.dat": 3 << 20})
    clock.advance(10)
    temp_dir = remote / "r"
    outcome: dict[str, bool] = {}
    worker = threading.Thread(target=lambda: outcome.update(ok=agent.iterate()), daemon=True)
    worker.start()
    # rsync is writing big.dat under a temporary name: cut the connection now.
    wait_until(lambda: any(p.name.startswith(".big.dat.") for p in temp_dir.iterdir()),
               30, "the transfer to start")
    time.sleep(0.5)
    kill_sshd_hard(extra_sshd)
    worker.join(60)
    assert not worker.is_alive(), "iterate() did not return after the connection was cut"
    try:
        assert outcome["ok"] is False
        counters = agent.session.counters
        assert counters["errors_nonzero"] == 1 and counters["errors_timeout"] == 0
        assert agent.session.snapshot()["last_copy"]["error"] == "nonzero exit"
        assert agent._pause(False) == 2
        # While the server stays down: a refused connection, counted, a longer pause.
        assert iterate_within(agent, 60) is False
        assert agent.session.counters["errors_nonzero"] == 2
        assert agent._pause(False) == 4
        assert not (temp_dir / "big.dat").exists()
        leftovers = [p.name for p in temp_dir.iterdir() if p.name != "early.dat"]
        assert all(name.startswith(".") for name in leftovers), leftovers
        assert_untouched(manager, list(big))
        assert_all_local({**early, **big})
        assert all(get_row(manager, i).removed is None for i in early)
    finally:
        extra_sshd.start()

    assert iterate_within(agent, 60) is True
    assert agent._pause(True) == agent.config.sleep_time
    for file_id, (path, data) in {**early, **big}.items():
        assert is_synced(manager, file_id)
        assert (remote / get_row(manager, file_id).remote_path).read_bytes() == data
        assert not path.exists()
        assert get_row(manager, file_id).removed == clock()


# --------------------------------------------------------------- (b) connection refused


def test_agent_process_backs_off_while_host_refuses_then_syncs_when_it_listens(
        tmp_path: Path, tmp_catalog: Path) -> None:
    manager = SupRsyncFilesManager(str(tmp_catalog))
    files = register(manager, tmp_path / "local", {f"f{i}.dat": 2000 for i in range(3)})
    # Nothing listens on this server's port until the test starts it.
    server = make_sshd(tmp_path / "later-sshd")
    remote = tmp_path / "remote"
    err = tmp_path / "agent.err"
    argv = [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--remote-basedir", str(remote),
            "--db-path", str(tmp_catalog), "--suprsync-file-root", str(tmp_path / "srf"),
            "--sleep-time", "0", "--delete-local-after", "0", "--cmd-timeout", "5",
            *server.agent_flags()]

    def log() -> str:
        return err.read_text(errors="replace")

    def check_nothing_lost() -> None:
        for file_id, (path, data) in files.items():
            if not path.exists():
                assert is_synced(manager, file_id), "deleted before it was verified"
                assert (remote / get_row(manager, file_id).remote_path).read_bytes() == data

    with err.open("wb") as err_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err_file)
    try:
        wait_until(lambda: log().count("backing off") >= 2 or proc.poll() is not None, 60,
                   "two failed iterations")
        assert proc.poll() is None, log()
        assert "Connection refused" in log()
        assert_all_local(files)
        assert_untouched(manager, list(files))
        with running(server):
            def done() -> bool:
                check_nothing_lost()
                assert proc.poll() is None, log()
                return all(not path.exists() for path, _ in files.values())

            wait_until(done, 60, "the agent to sync and delete every file")
            # A spinning agent would have failed hundreds of times in this window.
            failures = log().count("backing off")
            assert 2 <= failures <= 4, log()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()
    assert "Traceback" not in log()
    for file_id in files:
        assert is_synced(manager, file_id)
        assert get_row(manager, file_id).removed is not None


# --------------------------------------------------------------- (c) a remote command hangs


def test_hanging_remote_checksum_times_out_backs_off_and_recovers(
        wrapped: SshServer, tmp_path: Path, manager: SupRsyncFilesManager, make_agent,
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    remote = tmp_path / "remote"
    hang = wrapper_dir(wrapped) / "hang"
    early = register(manager, tmp_path / "local", {"early.dat": 1000})
    agent = make_agent(remote, delete_local_after=0, verify_before_delete=True, cmd_timeout=2,
                       **ssh_config(wrapped))
    assert iterate_within(agent, 60) is True
    assert all(is_synced(manager, i) for i in early)

    later = register(manager, tmp_path / "local", {"a.dat": 1000, "b.dat": 2000})
    clock.advance(10)  # every file is now due for deletion once verified
    hang.touch()
    try:
        with caplog.at_level(logging.ERROR):
            assert iterate_within(agent, 30) is False
        assert "timed out" in caplog.text
        counters = agent.session.counters
        assert counters["errors_timeout"] == 1 and counters["errors_nonzero"] == 0
        assert agent.session.snapshot()["last_copy"]["error"] == "timed out"
        assert agent._pause(False) == 2
        assert iterate_within(agent, 30) is False
        assert agent.session.counters["errors_timeout"] == 2
        assert agent._pause(False) == 4
        assert_untouched(manager, list(later))
        # The md5 check before deleting hung too: the verified file is kept.
        assert_all_local({**early, **later})
        assert all(get_row(manager, i).removed is None for i in early)
    finally:
        hang.unlink()

    assert iterate_within(agent, 60) is True
    assert agent._pause(True) == agent.config.sleep_time
    for file_id, (path, data) in {**early, **later}.items():
        assert is_synced(manager, file_id)
        assert (remote / get_row(manager, file_id).remote_path).read_bytes() == data
        assert not path.exists()


def test_stop_ends_an_iteration_stuck_on_a_hung_remote_command(
        wrapped: SshServer, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    """Without --cmd-timeout a hung check never ends by itself; stop() must still end it."""
    remote = tmp_path / "remote"
    hang = wrapper_dir(wrapped) / "hang"
    files = register(manager, tmp_path / "local", {"a.dat": 1000})
    agent = make_agent(remote, cmd_timeout=None, **ssh_config(wrapped))
    hang.touch()
    result: dict[str, bool] = {}
    worker = threading.Thread(target=lambda: result.update(ok=agent.iterate()), daemon=True)
    try:
        worker.start()
        wait_until(lambda: (wrapper_dir(wrapped) / "hung.pids").exists(), 30,
                   "the remote check to hang")
        agent.stop()
        worker.join(15)
        assert not worker.is_alive(), "iterate() still stuck 15 s after stop()"
    finally:
        hang.unlink()
        kill_hung(wrapper_dir(wrapped))
    # Interrupted by the stop: not counted as a failure of the destination, no attempt lost.
    assert agent.session.counters["errors_timeout"] == 0
    assert agent.session.counters["errors_nonzero"] == 0
    assert all(get_row(manager, i).failed_copy_attempts == 0 for i in files)
    assert all(path.exists() for path, _ in files.values())


# --------------------------------------------------------------- (d) remote file system full


class _FinalNameWatcher:
    """Polls final names in a thread and records any that held fewer bytes than expected."""

    def __init__(self, expected: dict[Path, int]) -> None:
        self.expected = expected
        self.partial: list[tuple[Path, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path, size in self.expected.items():
                try:
                    seen = path.stat().st_size
                except FileNotFoundError:
                    continue
                if seen != size:
                    self.partial.append((path, seen))
            self._stop.wait(0.002)

    def __enter__(self) -> _FinalNameWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def small_remote(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted as the remote base dir; unmounted afterwards."""
    base = tmp_path / "remote" / "archive"
    mount_tmpfs(base, "2m")
    try:
        yield base
    finally:
        umount(base)


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_remote_file_system_full(
        via: str, small_remote: Path, tmp_path: Path, manager: SupRsyncFilesManager,
        make_agent, clock: Clock, request: pytest.FixtureRequest) -> None:
    sizes = {f"f{i}.dat": 700_000 for i in range(5)}  # 3.5 MB for a 2 MiB file system
    files = register(manager, tmp_path / "local", sizes)
    ssh = ssh_config(request.getfixturevalue("sshd")) if via == "ssh" else {}
    agent = make_agent(small_remote, delete_local_after=0, **ssh)
    clock.advance(10)
    finals = {small_remote / "r" / name: size for name, size in sizes.items()}

    with _FinalNameWatcher(finals) as watcher:
        assert iterate_within(agent, 60) is False
        assert agent.session.counters["errors_nonzero"] == 1
        assert agent.session.snapshot()["last_copy"]["error"] == "nonzero exit"
        assert agent._pause(False) == 2
        assert iterate_within(agent, 60) is False
        assert agent.session.counters["errors_nonzero"] == 2
        assert agent._pause(False) == 4
    assert watcher.partial == [], "a partial file sat under its final name"
    assert_untouched(manager, list(files))
    assert_all_local(files)
    landed = [p for p in finals if p.exists()]
    assert len(landed) < len(finals)
    for path in landed:  # whatever fits is complete
        assert md5(path.read_bytes()) == md5(files_by_name(files)[path.name])
    assert [p.name for p in (small_remote / "r").iterdir() if p.name.startswith(".")] == []

    remount_tmpfs(small_remote, "16m")
    assert iterate_within(agent, 60) is True
    assert agent._pause(True) == agent.config.sleep_time
    for file_id, (path, data) in files.items():
        assert is_synced(manager, file_id)
        assert (small_remote / get_row(manager, file_id).remote_path).read_bytes() == data
        assert not path.exists()


def files_by_name(files: dict[int, tuple[Path, bytes]]) -> dict[str, bytes]:
    return {path.name: data for path, data in files.values()}


# --------------------------------------------------------------- (6) ssh safety

ASKPASS = """#!/bin/sh
touch "${0%/*}/askpass-was-run"
exit 1
"""


def test_batch_mode_never_asks_for_a_password_and_an_unauthorized_key_fails_fast(
        tmp_path: Path, manager: SupRsyncFilesManager, make_agent,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    server = make_sshd(tmp_path / "password-sshd", allow_passwords=True)
    stranger = tmp_path / "stranger_key"
    keygen(stranger, "not-authorized")
    trap = tmp_path / "askpass" / "askpass.sh"
    trap.parent.mkdir()
    trap.write_text(ASKPASS)
    trap.chmod(0o755)
    marker = trap.parent / "askpass-was-run"
    # ssh runs this program for any password prompt, tty or not.
    monkeypatch.setenv("SSH_ASKPASS", str(trap))
    monkeypatch.setenv("SSH_ASKPASS_REQUIRE", "force")
    monkeypatch.setenv("DISPLAY", ":0")
    files = register(manager, tmp_path / "local", {"f.dat": 100})
    with running(server):
        # The trap works: ssh without batch mode asks for the password.
        probe = subprocess.run(
            ["ssh", "-p", str(server.port), "-i", str(stranger), "-o", "IdentitiesOnly=yes",
             "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "NumberOfPasswordPrompts=1",
             "--", server.destination, "true"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        assert probe.returncode != 0
        assert marker.exists(), probe.stderr
        marker.unlink()

        # Options that try to relax batch mode are overridden by suprsync's own.
        agent = make_agent(tmp_path / "remote", **{**ssh_config(server), "ssh_key": str(stranger)},
                           ssh_options=("BatchMode=no", "PasswordAuthentication=yes"),
                           cmd_timeout=10)
        with caplog.at_level(logging.ERROR):
            assert iterate_within(agent, 30) is False
    assert not marker.exists(), "ssh asked for a password"
    assert "Permission denied" in caplog.text
    assert agent.session.counters["errors_nonzero"] == 1
    assert_untouched(manager, list(files))
    assert not (tmp_path / "remote").exists()


@pytest.mark.parametrize("known", ["default", "changed"])
def test_host_key_is_checked_and_failure_says_so(
        known: str, extra_sshd: SshServer, sshd: SshServer, tmp_path: Path,
        manager: SupRsyncFilesManager, make_agent, caplog: pytest.LogCaptureFixture) -> None:
    """No --ssh-known-hosts: ssh's own files, which do not know this server; or a changed key."""
    files = register(manager, tmp_path / "local", {"f.dat": 100})
    config = ssh_config(extra_sshd)
    user_known = Path.home() / ".ssh" / "known_hosts"
    before = user_known.read_bytes() if user_known.exists() else None
    if known == "default":
        config["ssh_known_hosts"] = None
    else:
        # The other server's key, recorded for this server's address.
        impostor = tmp_path / "known_hosts"
        impostor.write_text(sshd.known_hosts_line(port=extra_sshd.port))
        config["ssh_known_hosts"] = str(impostor)
    agent = make_agent(tmp_path / "remote", cmd_timeout=10, **config)
    with caplog.at_level(logging.ERROR):
        assert iterate_within(agent, 30) is False
    assert "Host key verification failed" in caplog.text
    assert agent.session.counters["errors_nonzero"] == 1
    assert_untouched(manager, list(files))
    assert not (tmp_path / "remote").exists()
    after = user_known.read_bytes() if user_known.exists() else None
    assert after == before, "ssh recorded the unknown host key"


@pytest.mark.parametrize("problem", ["group-readable", "missing"])
def test_bad_ssh_key_file_is_a_clear_one_line_error(
        problem: str, extra_sshd: SshServer, tmp_path: Path, tmp_catalog: Path) -> None:
    key = tmp_path / "key"
    if problem == "group-readable":
        key.write_bytes(extra_sshd.key.read_bytes())
        key.chmod(0o640)
    flags = extra_sshd.agent_flags()
    flags[flags.index("--ssh-key") + 1] = str(key)
    result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--remote-basedir",
                     str(tmp_path / "remote"), "--db-path", str(tmp_catalog),
                     "--suprsync-file-root", str(tmp_path / "srf"), *flags, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("suprsync run: error: --ssh-key"), \
        result.stderr
    assert ("chmod 600" if problem == "group-readable" else "No such file") in lines[0]
    assert not (tmp_path / "remote").exists()


def _expected_argv(base: str) -> dict[str, list[str]]:
    return {
        "mkdir": ["mkdir", "-p", "--", base],
        "md5sum": ["cd", "--", base, "&&", "xargs", "-0", "-r", "md5sum", "--"],
        "stat": ["cd", "--", base, "&&", "xargs", "-0", "-r", "stat", "--printf",
                 "%s %Y %f %n\\000", "--"],
    }


def test_remote_receives_only_quoted_commands_for_hostile_names_and_base_dir(
        wrapped: SshServer, tmp_path: Path, manager: SupRsyncFilesManager, make_agent,
        clock: Clock) -> None:
    tag = uuid.uuid4().hex[:10]
    markers = [f"pwned-{tag}-{i}" for i in range(4)]
    hostile = [f"$(touch {markers[0]})", f"`touch {markers[1]}`", f"; touch {markers[2]} ;",
               f"'q' \"dq\" \n touch {markers[3]}"]
    base = tmp_path / "remote" / f"base {' '.join(hostile)}" / "-x; y"
    files = {}
    for i, word in enumerate(hostile):
        data = f"file {i}\n".encode()
        path = write_file(tmp_path / "local" / f"{i}.dat", data)
        # Not at the start of the path: rsync's file list skips lines starting with ; or #.
        remote = f"h{i}/{word}/n{i} {word}.dat"
        files[manager.add_file(str(path), remote, ARCHIVE).id] = (path, data)
    log = wrapper_dir(wrapped) / "commands.log"
    log.unlink(missing_ok=True)

    agent = make_agent(base, delete_local_after=0, verify_before_delete=True,
                       **ssh_config(wrapped))
    assert iterate_within(agent, 60) is True
    clock.advance(10)
    assert iterate_within(agent, 60) is True  # deletion: remote stat and md5sum
    for file_id, (path, data) in files.items():
        assert (base / get_row(manager, file_id).remote_path).read_bytes() == data
        assert not path.exists()

    commands = logged_commands(wrapped)
    expected = _expected_argv(str(base))
    kinds = []
    for command in commands:
        argv = shlex.split(command)
        if argv[:2] == ["rsync", "--server"]:
            # Paths travel inside rsync's protocol (--protect-args): only options here.
            kinds.append("rsync")
            assert all(word.startswith("-") for word in argv[1:]), command
            continue
        kind = next((k for k, want in expected.items() if argv == want), None)
        assert kind is not None, f"unexpected remote command: {command!r} -> {argv}"
        kinds.append(kind)
    assert set(kinds) == {"mkdir", "rsync", "md5sum", "stat"}, commands
    names = [get_row(manager, i).remote_path for i in files]
    assert not any(name in command for name in names for command in commands)
    for marker in markers:
        assert not [p for p in tmp_path.rglob("*") if p.name == marker], marker
        for place in (Path.home(), Path("/tmp"), Path.cwd()):
            assert not (place / marker).exists(), f"{marker} created in {place}"
