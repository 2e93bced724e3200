"""A destination on another host, reached with ssh; nothing from the catalog meets a shell."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TypeVar

from ..leftovers import remove_stale_dirs
from ..procs import ProcResult, Stream, run
from .base import (
    FIND_FILES,
    SORT_BYTEWISE,
    Access,
    Capabilities,
    RemoteStat,
    TransferOptions,
    TransportError,
    Warn,
    list_timeout,
    read_listing,
    scaled_timeout,
)
from .destination import Destination
from .registry import register
from .rsync import STAGING_PREFIX, RsyncTransport, files_from, rsync_argv, rsync_files_from
from .rsyncproto import remove_stale_work

#: Exit status of ssh itself when the connection failed.
SSH_FAILED = 255


#: Ciphers offered first: fast AEAD ciphers, then OpenSSH's other defaults as fallback.
FAST_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                "aes128-ctr,aes192-ctr,aes256-ctr")
#: Control dirs are named <prefix><pid>-<random> so that a dead run's can be found.
CONTROL_PREFIX = "suprsync-ssh-"
#: Longest base directory for the control socket (ssh adds a temporary suffix to the path).
SOCKET_DIR_MAX = 60
#: Seconds an idle shared connection outlives its last use (bounds a crashed agent's leftover).
CONTROL_PERSIST = 120


@dataclass(frozen=True, kw_only=True)
class SshOptions(Access):
    """How to reach the remote host: the login (``[user@]host``) and the access options."""

    host: str

    def argv(self, control_dir: str | None = None) -> list[str]:
        """ssh and its options, without the host; control_dir shares one connection."""
        argv = [
            self.ssh,
            "-T", "-x",
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={self.strict_host_key_checking}",
            "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
            "-o", "Compression=no",
        ]
        user_set = {opt.split("=", 1)[0].strip().lower() for opt in self.extra_options}
        if self.fast_ciphers and "ciphers" not in user_set:
            argv += ["-o", f"Ciphers={FAST_CIPHERS}"]
        if control_dir is not None:
            argv += ["-o", "ControlMaster=auto",
                     "-o", f'ControlPath="{_escape_config(control_dir)}/c"',
                     "-o", f"ControlPersist={CONTROL_PERSIST}"]
        if self.key:
            argv += ["-o", f"IdentityFile={config_value(self.key)}", "-o", "IdentitiesOnly=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={config_value(self.known_hosts)}"]
        for opt in self.extra_options:
            argv += ["-o", opt]
        return argv


def end_connection_master(control_dir: str, ssh: str = "ssh") -> bool:
    """Ask the connection master listening in a control dir to exit; True if it did.

    The dir is private to the run that made it, so its master is that run's.
    """
    socket_path = os.path.join(control_dir, "c")
    if not os.path.exists(socket_path):
        return False
    try:
        option = f'ControlPath="{_escape_config(control_dir)}/c"'
    except ValueError:
        return False
    try:
        result = run([ssh, "-o", option, "-O", "exit", "--", "stale-connection"], timeout=10)
    except OSError:
        return False
    return result.ok


def config_value(value: str) -> str:
    """A path as an ssh -o value: quoted, with ssh's %-tokens escaped.

    ssh splits unquoted values on whitespace and expands ``%x`` and ``${VAR}`` in
    file options; ``${`` has no escape, so such a path is refused.
    """
    return f'"{_escape_config(value)}"'


def _escape_config(value: str) -> str:
    if "${" in value:
        raise ValueError(f"ssh cannot take a path containing '${{': {value!r}")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def remote_command(*args: str) -> str:
    """One command line for the remote shell, every word quoted."""
    return " ".join(shlex.quote(a) for a in args)


def parse_md5sum(output: bytes) -> dict[str, str]:
    """Parse GNU md5sum output, including its backslash-escaped names."""
    sums: dict[str, str] = {}
    for line in output.decode("utf-8", "surrogateescape").split("\n"):
        if line[32:34] == "  " and line[:1] != "\\":  # the common case, parsed fast
            sums[line[34:]] = line[:32].lower()
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line.partition("  ")
        if not sep:
            digest, sep, name = line.partition(" *")
        if not sep or len(digest) != 32:
            continue
        if escaped:
            name = _unescape(name)
        sums[name] = digest.lower()
    return sums


#: ``stat --printf`` format of one record: size, mtime, raw mode (hex) and name.
STAT_FORMAT = "%s %Y %f %n\\000"


def parse_stat(output: bytes) -> dict[str, RemoteStat]:
    """Parse the NUL-terminated records of STAT_FORMAT; only regular files are kept.

    A directory or a link at a file's path holds no copy of it.
    """
    found: dict[str, RemoteStat] = {}
    for record in output.split(b"\0"):
        parts = record.split(b" ", 3)
        if len(parts) != 4 or not parts[0].isdigit() or not parts[1].lstrip(b"-").isdigit():
            continue
        try:
            regular = stat.S_ISREG(int(parts[2], 16))
        except ValueError:
            continue
        if regular:
            found[parts[3].decode("utf-8", "surrogateescape")] = RemoteStat(int(parts[0]),
                                                                            int(parts[1]))
    return found


def _unescape(name: str) -> str:
    out = []
    chars = iter(name)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


V = TypeVar("V")


def _unprefixed(found: dict[str, V]) -> dict[str, V]:
    """Names as asked for: the ``./`` that _xargs put in front removed."""
    return {name.removeprefix("./"): value for name, value in found.items()}


def remove_stale_leftovers() -> int:
    """End the connection masters of runs that were killed; remove their dirs, staging
    and the rrsync variant's work dirs."""
    return (remove_stale_dirs(CONTROL_PREFIX, end_connection_master)
            + remove_stale_dirs(STAGING_PREFIX) + remove_stale_work())


class SshTransport(RsyncTransport):
    """rsync over ssh; checksums computed on the remote host by md5sum.

    Remote commands are fixed strings whose only variable part (the base dir)
    is quoted; file names travel on stdin, NUL-separated, to xargs -0.
    """

    capabilities = Capabilities(hashes=frozenset({"md5"}), rereads=True, keeps_mtime=True,
                                remote_shell=True)

    def __init__(self, remote_basedir: str, options: TransferOptions, ssh: SshOptions) -> None:
        super().__init__(remote_basedir, options)
        self.ssh = ssh
        self._control_dir: str | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.ssh.host}:{self.remote_basedir}"

    def _control(self) -> str | None:
        if not self.ssh.reuse_connection:
            return None
        with self._lock:
            if self._control_dir is None:
                # A private (0700) directory: nobody else can use our connection. Socket
                # paths are limited to ~100 bytes, so fall back to /tmp for a long $TMPDIR.
                base = tempfile.gettempdir()
                if len(base) > SOCKET_DIR_MAX:
                    base = "/tmp"
                self._control_dir = tempfile.mkdtemp(prefix=f"{CONTROL_PREFIX}{os.getpid()}-",
                                                     dir=base)
            return self._control_dir

    def ssh_argv(self) -> list[str]:
        """ssh with every option, sharing the connection when enabled."""
        return self.ssh.argv(self._control())

    def run_remote(self, command: str, input: bytes | None = None,
                   timeout: float | None = None) -> ProcResult:
        """Run one quoted command line on the remote host."""
        argv = [*self.ssh_argv(), "--", self.ssh.host, command]
        return run(argv, input=input, timeout=timeout, group=self.children)

    def close(self) -> None:
        """Close the shared connection and remove its private directory."""
        with self._lock:
            folder, self._control_dir = self._control_dir, None
        if folder is None:
            return
        try:
            run([*self.ssh.argv(folder), "-O", "exit", "--", self.ssh.host], timeout=10)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _check_ssh(self, result: ProcResult, what: str) -> None:
        if result.timed_out:
            raise TransportError(f"{what} on {self.ssh.host} timed out after "
                                 f"{result.duration:.1f} s", timed_out=True)
        if result.returncode == SSH_FAILED:
            raise TransportError(f"{what}: ssh to {self.ssh.host} failed: "
                                 f"{result.stderr_tail()}")

    def prepare(self) -> None:
        result = self.run_remote(remote_command("mkdir", "-p", "--", self.remote_basedir),
                                 timeout=self.options.cmd_timeout)
        self._check_ssh(result, "creating the remote base dir")
        if result.returncode != 0:
            raise TransportError(f"cannot create {self.describe()}: {result.stderr_tail()}")

    def copy(self, source_dir: str, rel_paths: list[str], force: bool = False) -> ProcResult:
        shell = " ".join(shlex.quote(a) for a in self.ssh_argv())
        destination = f"{self.ssh.host}:{self.remote_basedir.rstrip('/')}/"
        argv = rsync_argv(self.options, source_dir, destination, force=force,
                          remote_shell=shell)
        return run(argv, input=rsync_files_from(rel_paths), timeout=self.options.copy_timeout,
                   group=self.children)

    def _xargs(self, what: str, rel_paths: list[str], *command: str,
               timeout: float | None = None) -> bytes:
        """Run ``command -- ./<path>...`` in the base dir, the paths given on stdin.

        Each name gets a ``./`` in front, so that ``-`` is a file, not stdin.
        """
        line = (remote_command("cd", "--", self.remote_basedir) + " && "
                + remote_command("xargs", "-0", "-r", *command, "--"))
        result = self.run_remote(line, input=files_from(["./" + p for p in rel_paths]),
                                 timeout=timeout or self.options.cmd_timeout)
        self._check_ssh(result, what)
        # xargs exits 123 when the command failed for some files (e.g. missing ones).
        if result.returncode not in (0, 123) and not result.stdout:
            raise TransportError(f"{what} in {self.describe()} failed with exit "
                                 f"{result.returncode}: {result.stderr_tail()}")
        return result.stdout

    def checksums(self, rel_paths: list[str], total_bytes: int = 0) -> dict[str, str]:
        if not rel_paths:
            return {}
        timeout = scaled_timeout(self.options.cmd_timeout, total_bytes)
        sums = parse_md5sum(self._xargs("remote md5sum", rel_paths, "md5sum", timeout=timeout))
        return _unprefixed(sums)

    def stat(self, rel_paths: list[str]) -> dict[str, RemoteStat]:
        if not rel_paths:
            return {}
        out = self._xargs("remote stat", rel_paths, "stat", "--printf", STAT_FORMAT)
        return _unprefixed(parse_stat(out))

    def list_files(self, expected_files: int = 0,
                   on_warning: Warn | None = None) -> Iterator[str]:
        line = (remote_command("cd", "--", self.remote_basedir) + " && "
                + remote_command(*FIND_FILES) + " | " + remote_command(*SORT_BYTEWISE))
        stream = Stream([*self.ssh_argv(), "--", self.ssh.host, line],
                        timeout=list_timeout(self.options.cmd_timeout, expected_files),
                        group=self.children)
        return read_listing(stream, self.describe(), on_warning)


@register("ssh", remove_leftovers=remove_stale_leftovers)
def open_ssh(destination: Destination, options: TransferOptions, access: Access) -> SshTransport:
    """A directory of a host reached with ssh; a port in the URL wins over ``access.port``."""
    values = {f.name: getattr(access, f.name) for f in fields(Access)}
    values["port"] = destination.port or access.port
    ssh = SshOptions(host=destination.login or "", **values)
    if not access.remote_shell:
        from .rrsync import RrsyncTransport  # the key runs nothing but rsync

        return RrsyncTransport(destination.path, options, ssh)
    return SshTransport(destination.path, options, ssh)
