"""Shared pytest fixtures: a real sshd on localhost and temporary catalog/remote paths."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parent.parent
#: The suprsync console script of the interpreter running the tests.
SUPRSYNC = str(Path(sys.executable).parent / "suprsync")


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the suprsync command with an argument list; capture text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([SUPRSYNC, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL, **kwargs)
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


def _keygen(path: Path, comment: str) -> None:
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
    def destination(self) -> str:
        """The ``user@host`` login string."""
        return f"{self.user}@{self.host}"

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


def _write_sshd_config(server: SshServer, host_key: Path, authorized_keys: Path) -> None:
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
        "LogLevel VERBOSE",
    ]
    server.config.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 at a free port, accepting a generated client key."""
    base = tmp_path_factory.mktemp("sshd")
    host_key = base / "ssh_host_ed25519_key"
    client_key = base / "client_ed25519"
    _keygen(host_key, "suprsync-test-host")
    _keygen(client_key, "suprsync-test-client")

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
    key_type, key_b64 = (base / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    server.known_hosts.write_text(f"[{server.host}]:{server.port} {key_type} {key_b64}\n")
    _write_sshd_config(server, host_key, authorized_keys)

    # sshd refuses to start without its privilege separation directory.
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        try:
            privsep.mkdir(parents=True)
            privsep.chmod(0o755)
        except PermissionError:
            pass

    server.start()
    try:
        yield server
    finally:
        server.stop()


def _tool(env_var: str, default: Path, what: str) -> Path:
    path = Path(os.environ.get(env_var) or default)
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: run the tests with 'make test', which "
                    f"installs it (or set {env_var})")
    return path


@pytest.fixture(scope="session")
def peer_python() -> Path:
    """Python of the environment holding socs 0.6.4, the original agent (a peer program)."""
    return _tool("SUPRSYNC_PEER_PYTHON", REPO / ".venv-peer" / "bin" / "python",
                 "the socs 0.6.4 peer environment")


@pytest.fixture(scope="session")
def crossbar_bin() -> Path:
    """The crossbar router executable."""
    return _tool("SUPRSYNC_CROSSBAR", REPO / ".venv-crossbar" / "bin" / "crossbar",
                 "the crossbar router")


def run_peer(peer_python: Path, script: str, *args: str,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a Python script with the original socs package; fail the test if it fails."""
    result = subprocess.run([str(peer_python), "-c", script, *args], capture_output=True,
                            text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail(f"peer script failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture
def tmp_catalog(tmp_path: Path) -> Path:
    """Path for a catalog database; neither the file nor its directory exists yet."""
    return tmp_path / "catalog" / "suprsync.db"


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    """An empty, existing directory to serve as the remote archive root."""
    path = tmp_path / "remote"
    path.mkdir()
    return path
