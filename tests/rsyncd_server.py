"""Real far sides that speak nothing but rsync, for the tests of the shell-less kinds.

``start_rsyncd(base)`` runs an rsync daemon on 127.0.0.1 at a free port with one
module whose ``auth users`` are checked against a secrets file; ``start_rrsync_sshd``
runs an sshd whose only client key is forced to ``rrsync DIR`` (the authorized_keys
line an operator writes first).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import make_sshd
from sshd_server import START_TIMEOUT, SshServer, free_port, port_accepts

RRSYNC = "/usr/bin/rrsync"


@dataclass
class RsyncDaemon:
    """A running ``rsync --daemon`` serving ``module`` (its files under ``root``)."""

    host: str
    port: int
    module: str
    user: str
    password: str
    password_file: Path
    root: Path
    log: Path
    dir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, path: str = "") -> str:
        """The rsync:// URL of a path inside the module."""
        return f"rsync://{self.user}@{self.host}:{self.port}/{self.module}/{path}".rstrip("/")

    def stop(self) -> None:
        """Terminate the daemon and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def start_rsyncd(base: Path, root: Path | None = None) -> RsyncDaemon:
    """Write rsyncd.conf, a 0600 secrets file and a 0600 client password file; start.

    ``root``: the module's path (default: a new dir under base).
    """
    base.mkdir(parents=True, exist_ok=True)
    if root is None:
        root = base / "module"
        root.mkdir()
    daemon = RsyncDaemon(host="127.0.0.1", port=free_port(), module="archive",
                         user="suprsync", password="s3cret pass", password_file=base / "client.pw",
                         root=root, log=base / "rsyncd.log", dir=base)
    secrets = base / "rsyncd.secrets"
    secrets.write_text(f"{daemon.user}:{daemon.password}\n")
    secrets.chmod(0o600)
    daemon.password_file.write_text(daemon.password + "\n")
    daemon.password_file.chmod(0o600)
    config = base / "rsyncd.conf"
    config.write_text("\n".join([
        f"pid file = {base / 'rsyncd.pid'}",
        f"log file = {daemon.log}",
        f"uid = {os.getuid()}",
        f"gid = {os.getgid()}",
        "use chroot = no",
        f"[{daemon.module}]",
        f"path = {root}",
        "read only = no",
        f"auth users = {daemon.user}",
        f"secrets file = {secrets}",
        "strict modes = yes",
    ]) + "\n")
    with daemon.log.open("ab") as log:
        daemon._proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={config}",
             f"--address={daemon.host}", f"--port={daemon.port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    _wait_listening(daemon.host, daemon.port, daemon._proc, daemon.log)
    return daemon


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if port_accepts(host, port):
            return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"rsync daemon did not listen on {host}:{port}: {log.read_text()}")


def start_rrsync_sshd(base: Path, restricted: Path, *options: str) -> SshServer:
    """A real sshd whose client key may only run ``rrsync [options] <restricted>``."""
    restricted.mkdir(parents=True, exist_ok=True)
    server = make_sshd(base)
    public = (base / "client_ed25519.pub").read_text().strip()
    command = " ".join([RRSYNC, *options, str(restricted)])
    (base / "authorized_keys").write_text(f'command="{command}",restrict {public}\n')
    server.start()
    return server
