"""A throwaway PostgreSQL cluster in a temporary directory, on a free port of 127.0.0.1."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30.0


def pg_bindir() -> Path:
    """Directory of initdb/pg_ctl of the newest installed PostgreSQL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql: "
                           "install Debian's postgresql package (make test does)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user(user: str | None) -> dict:
    """Popen arguments that run a command as another user (PostgreSQL refuses root)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)

    def demote() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return {"preexec_fn": demote, "env": {**os.environ, "HOME": entry.pw_dir}}


@dataclass
class PgServer:
    """A running PostgreSQL cluster; ``url(db)`` gives SQLAlchemy URLs."""

    dir: Path
    port: int
    user: str
    os_user: str | None
    bindir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             self.user, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m",
                        "immediate", "-w", "stop"], capture_output=True, timeout=60,
                       check=False, **_as_user(self.os_user))


def start_pg(base: Path) -> PgServer:
    """initdb a cluster in base and start it (as user postgres when we are root)."""
    bindir = pg_bindir()
    os_user = "postgres" if os.geteuid() == 0 else None
    base.mkdir(parents=True, exist_ok=True)
    if os_user is not None:
        entry = pwd.getpwnam(os_user)
        shutil.chown(base, entry.pw_uid, entry.pw_gid)
    data = base / "data"
    user = "suprsync"
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120,
                   **_as_user(os_user))
    log = base / "postgres.log"
    for attempt in range(3):
        port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={base}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                   " -c max_connections=200")
        result = subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                 "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start"],
                                capture_output=True, text=True, timeout=START_TIMEOUT + 30,
                                check=False, **_as_user(os_user))
        if result.returncode == 0:
            break
        text = log.read_text(errors="replace") if log.exists() else ""
        # Parallel test workers pick free ports too: one may have taken this one.
        if attempt == 2 or "Address already in use" not in text:
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{text}")
    deadline = time.monotonic() + START_TIMEOUT
    server = PgServer(base, port, user, os_user, bindir)
    while True:
        try:
            server.psql("SELECT 1")
            return server
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
