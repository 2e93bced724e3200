"""Checks that the sshd fixture is a real, host-key-checked SSH server."""

from __future__ import annotations

import socket
import subprocess

import pytest
from conftest import SshServer


def test_ssh_runs_remote_command(sshd: SshServer) -> None:
    result = subprocess.run(
        sshd.ssh_cmd("echo", "hello"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello"


def test_unknown_host_key_is_rejected(sshd: SshServer) -> None:
    empty = sshd.dir / "empty_known_hosts"
    empty.write_text("")
    cmd = [
        f"UserKnownHostsFile={empty}" if arg.startswith("UserKnownHostsFile=") else arg
        for arg in sshd.ssh_cmd("echo", "hello")
    ]
    assert f"UserKnownHostsFile={empty}" in cmd
    result = subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20
    )
    assert result.returncode != 0
    assert "hello" not in result.stdout
    assert "Host key verification failed" in result.stderr


def test_stop_and_start(sshd: SshServer) -> None:
    sshd.stop()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((sshd.host, sshd.port), timeout=2).close()
        stopped = subprocess.run(
            sshd.ssh_cmd("echo", "hello"),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=20,
        )
        assert stopped.returncode != 0
    finally:
        sshd.start()
    result = subprocess.run(
        sshd.ssh_cmd("echo", "hello"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello"
