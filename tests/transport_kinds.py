"""The kinds of destination the transport contract suite runs against, one factory each.

A factory gets the test's request, a base dir of this host (where the far side
stores the files: the tests read it directly) and TransferOptions, and returns
an open transport to that dir. Adding a kind is one factory and one line in KINDS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rsyncd_server import RsyncDaemon, start_rrsync_sshd, start_rsyncd
from sshd_server import SshServer

from suprsync.transport import Access, TransferOptions, Transport, open_destination

Factory = Callable[[pytest.FixtureRequest, Path, TransferOptions], Transport]


def local_kind(request: pytest.FixtureRequest, base: Path,
               options: TransferOptions) -> Transport:
    """A directory of this host, named by file:// URL."""
    return open_destination(f"file://{base}", options)


def ssh_kind(request: pytest.FixtureRequest, base: Path, options: TransferOptions) -> Transport:
    """The same directory reached through the real sshd of the tests (ssh:// URL)."""
    sshd: SshServer = request.getfixturevalue("sshd")
    access = Access(key=str(sshd.key), known_hosts=str(sshd.known_hosts), connect_timeout=10)
    return open_destination(f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{base}", options, access)


@pytest.fixture(scope="session")
def contract_rsyncd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyncDaemon]:
    """An rsync daemon whose module is this host's /, so any base dir can be named."""
    daemon = start_rsyncd(tmp_path_factory.mktemp("contract-rsyncd"), root=Path("/"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def contract_rrsync_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd whose test key is forced to ``rrsync -no-lock /``.

    rrsync locks its DIR for each session unless told not to, and ``/`` is the DIR of
    every test worker's server: their sessions would collide. The servers of
    test_shellless keep the lock, each with a DIR of its own.
    """
    server = start_rrsync_sshd(tmp_path_factory.mktemp("contract-rrsync"), Path("/"),
                               "-no-lock")
    yield server
    server.stop()


def rsyncd_kind(request: pytest.FixtureRequest, base: Path,
                options: TransferOptions) -> Transport:
    """The directory as a path inside an rsync daemon's module (rsync:// URL, password)."""
    daemon: RsyncDaemon = request.getfixturevalue("contract_rsyncd")
    return open_destination(daemon.url(str(base).lstrip("/")), options,
                            Access(password_file=str(daemon.password_file)))


def rrsync_kind(request: pytest.FixtureRequest, base: Path,
                options: TransferOptions) -> Transport:
    """The directory through an ssh key that runs nothing but rrsync (--remote-shell=no)."""
    sshd: SshServer = request.getfixturevalue("contract_rrsync_sshd")
    access = Access(key=str(sshd.key), known_hosts=str(sshd.known_hosts), connect_timeout=10,
                    remote_shell=False)
    return open_destination(f"ssh://{sshd.user}@{sshd.host}:{sshd.port}{base}", options, access)


@dataclass(frozen=True)
class KindUnderTest:
    """One kind of destination in the contract suite."""

    name: str
    open: Factory


#: Every kind the contract suite runs against.
KINDS = [
    KindUnderTest("local", local_kind),
    KindUnderTest("ssh", ssh_kind),
    KindUnderTest("rsyncd", rsyncd_kind),
    KindUnderTest("ssh-rrsync", rrsync_kind),
]
