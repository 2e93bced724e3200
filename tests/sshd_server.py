"""A real OpenSSH server on 127.0.0.1, for the tests (conftest's ``sshd`` fixture) and benchmarks.

``start_sshd(base)`` generates a host key and a client key under ``base``, writes
an sshd_config, a known_hosts file and an authorized_keys file there, and starts
sshd on a free port. It is imported by ``tests/conftest.py`` and by
``benchmarks/sshd.py``, so it must not depend on pytest.
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int) -> bool:
    """Return True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def keygen(path: Path, comment: str) -> None:
    """Create an ed25519 key pair without passphrase at path and path.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    path.chmod(0o600)


@dataclass
class SshServer:
    """A running OpenSSH server on localhost that accepts one client key."""

    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    log: Path
    dir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        """Path of the sshd_config file."""
        return self.dir / "sshd_config"

    @property
    def host_public_key(self) -> Path:
        """The server's public host key."""
        return self.dir / "ssh_host_ed25519_key.pub"

    @property
    def destination(self) -> str:
        """The ``user@host`` login string."""
        return f"{self.user}@{self.host}"

    def known_hosts_line(self, port: int | None = None) -> str:
        """A known_hosts line for this server's host key, as reached at ``port``."""
        key_type, key_b64 = self.host_public_key.read_text().split()[:2]
        return f"[{self.host}]:{port or self.port} {key_type} {key_b64}\n"

    def ssh_cmd(self, *remote_args: str) -> list[str]:
        """Return an ssh argument list that runs remote_args on this server."""
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "IdentitiesOnly=yes",
            self.destination,
            *remote_args,
        ]

    def agent_flags(self) -> list[str]:
        """The ``suprsync run`` flags that reach this server."""
        return [
            "--ssh-host", self.destination,
            "--ssh-key", str(self.key),
            "--ssh-port", str(self.port),
            "--ssh-known-hosts", str(self.known_hosts),
        ]

    def start(self) -> None:
        """Start sshd on self.port and wait until it accepts TCP connections."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("sshd is already running")
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"sshd did not accept connections on {self.host}:{self.port} "
            f"within {START_TIMEOUT:.0f} s; log {self.log}:\n{self.log.read_text(errors='replace')}"
        )

    def stop(self) -> None:
        """Terminate sshd and wait for it to exit; do nothing if it is not running."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def write_sshd_config(server: SshServer, host_key: Path, authorized_keys: Path,
                      log_level: str = "VERBOSE") -> None:
    """Write the sshd_config for server."""
    lines = [
        f"ListenAddress {server.host}",
        f"Port {server.port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        f"PidFile {server.dir / 'sshd.pid'}",
        "Subsystem sftp internal-sftp",
        f"LogLevel {log_level}",
    ]
    server.config.write_text("\n".join(lines) + "\n")


def start_sshd(base: Path, log_level: str = "VERBOSE") -> SshServer:
    """Set up keys, config and known_hosts under ``base`` and start sshd at a free port.

    The caller stops it with ``server.stop()``.
    """
    base.mkdir(parents=True, exist_ok=True)
    host_key = base / "ssh_host_ed25519_key"
    client_key = base / "client_ed25519"
    keygen(host_key, "suprsync-test-host")
    keygen(client_key, "suprsync-test-client")

    authorized_keys = base / "authorized_keys"
    authorized_keys.write_text((base / "client_ed25519.pub").read_text())
    authorized_keys.chmod(0o600)

    server = SshServer(
        host="127.0.0.1",
        port=free_port(),
        user=getpass.getuser(),
        key=client_key,
        known_hosts=base / "known_hosts",
        log=base / "sshd.log",
        dir=base,
    )
    server.known_hosts.write_text(server.known_hosts_line())
    write_sshd_config(server, host_key, authorized_keys, log_level=log_level)

    # sshd refuses to start without its privilege separation directory.
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        try:
            privsep.mkdir(parents=True)
            privsep.chmod(0o755)
        except PermissionError:
            pass

    for attempt in range(3):
        try:
            server.start()
            return server
        except RuntimeError:
            # Parallel test workers pick free ports too: one may have taken this one.
            if attempt == 2 or "Address already in use" not in server.log.read_text(
                    errors="replace"):
                raise
            server.port = free_port()
            server.known_hosts.write_text(server.known_hosts_line())
            write_sshd_config(server, host_key, authorized_keys, log_level=log_level)
    raise AssertionError("unreachable")
