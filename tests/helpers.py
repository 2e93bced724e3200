"""Helpers shared by the test modules: a settable clock, files, catalog rows, agents, the
``clock``/``manager`` fixtures, and real sshd servers that tests stop, kill or start.

A module uses the shared fixtures by importing them (``from helpers import clock_fixture``);
they are registered under their ``name`` (``clock``, ``manager``).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sshd_server import SshServer, free_port, keygen, write_sshd_config

from suprsync import SupRsyncFile, SupRsyncFilesManager
from suprsync.agent import Agent, AgentConfig, Publisher

ARCHIVE = "timestreams"
T0 = 1_700_000_000.0


class Clock:
    """A settable clock for the catalog manager and the agent.

    Setting ``now`` or calling :meth:`advance` moves time: the monotonic clock
    (:meth:`monotonic`) follows. :meth:`jump` sets the wall clock alone, as when the
    system clock is stepped.
    """

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self._stepped = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    def jump(self, seconds: float) -> None:
        """Step the wall clock by seconds; the monotonic clock does not move."""
        self.now += seconds
        self._stepped += seconds

    def monotonic(self) -> float:
        """The monotonic clock: the time elapsed, without the steps of :meth:`jump`."""
        return self.now - self._stepped


def md5(data: bytes) -> str:
    """Hex md5 of bytes."""
    return hashlib.md5(data).hexdigest()


def write_file(path: Path, data: bytes, mtime: float = T0 - 3600) -> Path:
    """A real local file, last modified before it is registered."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def make_file(folder: Path, name: str, content: bytes | None = None, repeat: int = 20,
              filler: str = "data of") -> Path:
    """Write a real local file; by default its content is unique to its name
    (``f"{filler} {name}\\n"`` repeated ``repeat`` times)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else f"{filler} {name}\n".encode() * repeat)
    return path


AddFn = Callable[..., int]


def file_adder(manager: SupRsyncFilesManager, folder: Path, **make_kwargs: Any) -> AddFn:
    """add(timestamp, archive=ARCHIVE, remote=None, **kwargs): register a new real file
    (``make_file(folder, ..., **make_kwargs)``) at a given timestamp; return its row id."""
    counter = iter(range(1_000_000))

    def _add(timestamp: float, archive: str = ARCHIVE, remote: str | None = None,
             **kwargs: Any) -> int:
        n = next(counter)
        local = make_file(folder, f"f{n}.g3", **make_kwargs)
        row = manager.add_file(str(local), remote or f"16750/sub/f{n}.g3", archive,
                               timestamp=timestamp, **kwargs)
        return row.id

    return _add


def ids(rows: list[Any]) -> list[int]:
    """The ids of catalog rows, in order."""
    return [r.id for r in rows]


def sql(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on an sqlite catalog file with plain sqlite3 and commit."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(query, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def get_row(manager: SupRsyncFilesManager, file_id: int) -> SupRsyncFile:
    """The catalog row of a file id, read fresh."""
    return manager.read(lambda s: s.get(SupRsyncFile, file_id))


def is_synced(manager: SupRsyncFilesManager, file_id: int) -> bool:
    """True when the row's remote md5 equals its local md5."""
    row = get_row(manager, file_id)
    return row.remote_md5sum is not None and row.remote_md5sum == row.local_md5sum


def new_agent(manager: SupRsyncFilesManager, clock: Clock, root: Path, remote_basedir: Path | str,
              /, publish: Publisher | None = None, **overrides: object) -> Agent:
    """An in-process agent on manager's catalog; no sleep, generous time limits by default.

    Any AgentConfig field (remote_basedir too) can be overridden by keyword.
    """
    kwargs: dict = dict(archive_name=ARCHIVE, remote_basedir=str(remote_basedir),
                        db_path=manager.db_path, suprsync_file_root=str(root / "srfroot"),
                        sleep_time=0, cmd_timeout=30, copy_timeout=60)
    kwargs.update(overrides)
    return Agent(AgentConfig(**kwargs), manager=manager, clock=clock, publish=publish,
                 monotonic=clock.monotonic)


def catalog_agent(tmp_path: Path, catalog: str | Path, archive: str, clock: Clock,
                  instance: str = "sync-test") -> Agent:
    """A real agent copying archive to tmp_path/remote/<archive>, on catalog (a path or
    URL) with its own manager; no sleep, no time limits."""
    config = AgentConfig(
        archive_name=archive,
        remote_basedir=str(tmp_path / "remote" / archive),
        db_path=str(catalog),
        suprsync_file_root=str(tmp_path / "suprsync-files"),
        sleep_time=0,
        instance_id=instance,
    )
    return Agent(config, manager=SupRsyncFilesManager(str(catalog), clock=clock), clock=clock,
                 monotonic=clock.monotonic)


def closing_agents(build: Callable[..., Agent]) -> Iterator[Callable[..., Agent]]:
    """Body of a ``make_agent`` fixture (``yield from closing_agents(build)``): hands out
    build, keeps every agent it makes and closes their handlers at teardown."""
    agents: list[Agent] = []

    def make(*args: Any, **kwargs: Any) -> Agent:
        agent = build(*args, **kwargs)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.handler.close()


def managed(catalog: str | Path, clock: Clock) -> Iterator[SupRsyncFilesManager]:
    """Body of a ``manager`` fixture (``yield from managed(catalog, clock)``): a manager on
    catalog driven by clock, closed at teardown."""
    m = SupRsyncFilesManager(str(catalog), clock=clock)
    yield m
    m.close()


@pytest.fixture(name="clock")
def clock_fixture() -> Clock:
    """A settable clock standing at T0."""
    return Clock()


@pytest.fixture(name="manager")
def manager_fixture(tmp_catalog: Path, clock: Clock) -> Iterator[SupRsyncFilesManager]:
    """A manager on a fresh sqlite catalog, driven by the test's ``clock``."""
    yield from managed(tmp_catalog, clock)


def iterate_within(agent: Agent, seconds: float) -> bool:
    """Run one agent iteration in a thread; fail if it has not returned after seconds."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["ok"] = agent.iterate()
        except BaseException as exc:  # handed to the test below
            result["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"agent.iterate() still running after {seconds} s"
    if "exc" in result:
        raise AssertionError(f"exception out of iterate(): {result['exc']!r}")
    return bool(result["ok"])


# ----------------------------------------------------------------- extra sshd servers


def make_sshd(base: Path, extra_config: Sequence[str] = (), port: int | None = None,
              allow_passwords: bool = False) -> SshServer:
    """A second real sshd (not started) with its own host key, client key and config.

    ``extra_config`` lines are appended to the config of tests/sshd_server.py.
    ``allow_passwords`` makes it offer password and keyboard-interactive login,
    so a client that is not in batch mode would prompt.
    """
    base.mkdir(parents=True, exist_ok=True)
    host_key = base / "ssh_host_ed25519_key"
    client_key = base / "client_ed25519"
    keygen(host_key, "suprsync-fault-host")
    keygen(client_key, "suprsync-fault-client")
    authorized_keys = base / "authorized_keys"
    authorized_keys.write_text((base / "client_ed25519.pub").read_text())
    authorized_keys.chmod(0o600)
    server = SshServer(host="127.0.0.1", port=port or free_port(), user=getpass.getuser(),
                       key=client_key, known_hosts=base / "known_hosts",
                       log=base / "sshd.log", dir=base)
    server.known_hosts.write_text(server.known_hosts_line())
    write_sshd_config(server, host_key, authorized_keys)
    lines = list(extra_config)
    if allow_passwords:
        text = server.config.read_text()
        for off in ("PasswordAuthentication no", "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password"):
            text = text.replace(off + "\n", "")
        server.config.write_text(text)
        lines += ["PasswordAuthentication yes", "KbdInteractiveAuthentication yes",
                  "PermitRootLogin yes"]
    if lines:
        with server.config.open("a") as f:
            f.write("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    return server


def descendants(pid: int) -> list[int]:
    """Every live process below pid, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        fields = stat[stat.rindex(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sigkill(pids: Iterable[int]) -> None:
    """SIGKILL every pid; one that is already gone is passed over."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_sshd_hard(server: SshServer) -> None:
    """SIGKILL the listener and every session process of this server: connections drop."""
    proc = server._proc
    if proc is None or proc.poll() is not None:
        return
    sigkill([proc.pid, *descendants(proc.pid)])
    proc.wait(timeout=10)
    server.stop()


@contextmanager
def host_down(sshd: SshServer) -> Iterator[None]:
    """The ssh host goes away: sshd stops and the connections it serves are cut.

    Stopping the listening sshd alone leaves established connections (such as a
    shared ControlMaster connection) alive, as on a real host. sshd is started
    again on the way out.
    """
    listener = int((sshd.dir / "sshd.pid").read_text().split()[0])
    sessions = descendants(listener)
    sshd.stop()
    sigkill(sessions)
    try:
        yield
    finally:
        sshd.start()


def kill_hung(folder: Path) -> None:
    """SIGKILL the hanging checksums a wrapped server started (they outlive their session)."""
    pids = folder / "hung.pids"
    if not pids.exists():
        return
    for pid in {int(p) for p in pids.read_text().split()}:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass
    pids.unlink()


@contextmanager
def running(server: SshServer) -> Iterator[SshServer]:
    """Start a server and, on the way out, kill it with every session it still has."""
    server.start()
    try:
        yield server
    finally:
        kill_sshd_hard(server)
        kill_hung(wrapper_dir(server))


#: ForceCommand script: logs every remote command (NUL-terminated) to commands.log
#: next to itself; while a file named "hang" is there, a checksum command becomes
#: ``sleep 300`` (its pid noted in hung.pids); any other command runs as asked.
WRAPPER = """#!/bin/sh
here=${0%/*}
printf '%s\\0' "$SSH_ORIGINAL_COMMAND" >> "$here/commands.log"
case "$SSH_ORIGINAL_COMMAND" in
  *"xargs -0 -r md5sum"*)
    if [ -e "$here/hang" ]; then echo $$ >> "$here/hung.pids"; exec sleep 300; fi ;;
esac
exec sh -c "$SSH_ORIGINAL_COMMAND"
"""


def wrapped_sshd(base: Path) -> SshServer:
    """A real sshd whose every session goes through the WRAPPER ForceCommand script."""
    script = base / "wrapper" / "force.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(WRAPPER)
    script.chmod(0o755)
    return make_sshd(base, [f"ForceCommand {script}"])


def wrapper_dir(server: SshServer) -> Path:
    """Folder of a wrapped server's script, log and hang switch."""
    return server.dir / "wrapper"


def logged_commands(server: SshServer) -> list[str]:
    """The remote command lines a wrapped server received, in order."""
    log = wrapper_dir(server) / "commands.log"
    if not log.exists():
        return []
    return [c for c in log.read_bytes().decode("utf-8", "surrogateescape").split("\0") if c]


def ssh_config(server: SshServer) -> dict:
    """AgentConfig fields that reach a server."""
    return {"ssh_host": server.destination, "ssh_key": str(server.key),
            "ssh_port": server.port, "ssh_known_hosts": str(server.known_hosts)}


def wait_until(predicate: Callable[[], object], seconds: float, what: str,
               interval: float = 0.05) -> None:
    """Poll predicate until it is true; fail with what after seconds."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def mount_tmpfs(path: Path, size: str) -> None:
    """Mount a fresh tmpfs of this size on path (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)


def remount_tmpfs(path: Path, size: str) -> None:
    """Change the size of a mounted tmpfs, keeping its content."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True,
                   capture_output=True, timeout=30)


def umount(path: Path) -> None:
    """Unmount path; lazily when it is still busy."""
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def run_on_terminal(argv: list[str], stdout_too: bool = False,
                    timeout: float = 120) -> tuple[subprocess.CompletedProcess, str]:
    """Run argv with stderr (and stdout with ``stdout_too``) on a pseudo-terminal.

    Returns the result (stdout captured as text unless on the terminal) and what
    the terminal showed.
    """
    import pty

    main, secondary = pty.openpty()
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                stdout=secondary if stdout_too else subprocess.PIPE,
                                stderr=secondary, timeout=timeout, text=True)
        os.close(secondary)
        output = b""
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not data:
                break
            output += data
    finally:
        os.close(main)
    return result, output.decode()

