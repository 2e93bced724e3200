"""Shared pytest fixtures: a real sshd on localhost and temporary catalog/remote paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import PgServer, start_pg
from sshd_server import (  # noqa: F401 - re-exported for the test modules
    SSHD,
    START_TIMEOUT,
    SshServer,
    free_port,
    port_accepts,
    start_sshd,
)

REPO = Path(__file__).resolve().parent.parent
#: The suprsync console script of the interpreter running the tests.
SUPRSYNC = str(Path(sys.executable).parent / "suprsync")


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the suprsync command with an argument list; capture text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([SUPRSYNC, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL, **kwargs)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 at a free port, accepting a generated client key."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
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


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session (missing binaries: the tests fail).

    Its directory is 0755 so that user postgres (the server's user when we are root) can
    reach it; tmp_path_factory directories are 0700.
    """
    base = Path(tempfile.mkdtemp(prefix="suprsync-pg-"))
    base.chmod(0o755)
    try:
        server = start_pg(base / "cluster")
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"cannot start the PostgreSQL server the tests need: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, not yet created catalog: an sqlite file path, or a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog" / "suprsync.db")
    server: PgServer = request.getfixturevalue("pg")
    return "postgresql://" + server.create_database().split("://", 1)[1]


#: Test files that take longest (a minute or more each in CI): under pytest-xdist they are
#: handed out first, so that no worker starts one of them when the others are nearly done.
SLOW_FIRST = ("test_benchmarks_smoke.py", "test_scale.py", "test_fault_concurrency.py",
              "test_fault_crash.py", "test_adversarial.py", "test_audit.py",
              "test_quarantine.py", "test_query_plans.py", "test_ocs_agent.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, put the slowest files first (the order within a file is kept)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
