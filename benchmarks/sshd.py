"""The loopback sshd of the tests, reused by the benchmarks.

The server code lives in ``tests/sshd_server.py`` (imported by the tests'
conftest); it is loaded here by file path so that ``tests/`` need not be a package.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"


def load_test_module(name: str):  # type: ignore[no-untyped-def]
    """A module of tests/ (sshd_server, pg_server), loaded by file path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_sshd_server = load_test_module("sshd_server")
SshServer = _sshd_server.SshServer
start_sshd = _sshd_server.start_sshd
free_port = _sshd_server.free_port


def plain_ssh_argv(server, port: int | None = None,  # type: ignore[no-untyped-def]
                   known_hosts: Path | None = None) -> list[str]:
    """ssh with the options a person would use by hand: key, port, known_hosts, BatchMode.

    No cipher choice and no connection sharing: ssh's own defaults.
    """
    return [
        "ssh",
        "-p", str(port or server.port),
        "-i", str(server.key),
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts or server.known_hosts}",
        "-o", "IdentitiesOnly=yes",
    ]


def plain_ssh_shell(server, port: int | None = None,  # type: ignore[no-untyped-def]
                    known_hosts: Path | None = None) -> str:
    """plain_ssh_argv as one string for ``rsync -e``."""
    return shlex.join(plain_ssh_argv(server, port, known_hosts))
