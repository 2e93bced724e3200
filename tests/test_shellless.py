"""Shell-less destinations: an rsync daemon module and an ssh key forced to rrsync.

Both far sides are real (tests/rsyncd_server.py) and run nothing but rsync. Every
test drives the transport or a real Agent iteration against them and, for the
agent, ends with the invariant checker.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    get_row,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    write_file,
)
from invariants import check_invariants
from rsyncd_server import RsyncDaemon, start_rrsync_sshd, start_rsyncd
from sshd_server import SshServer

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent, AgentConfig
from suprsync.audit import audit_archive
from suprsync.transport import Access, open_destination
from suprsync.transport.base import TransferOptions, Transport
from suprsync.transport.rrsync import RrsyncTransport
from suprsync.transport.rsyncproto import decode_name, parse_sums, refusal
from suprsync.transport.ssh import SshOptions

OPTIONS = TransferOptions(cmd_timeout=30, copy_timeout=60)
AFTER = 1000.0


@dataclass
class FarSide:
    """A shell-less destination: how to reach a base dir there, and where it lies here."""

    kind: str
    root: Path
    connect: Callable[[str], Transport]

    def new_base(self) -> tuple[str, Path]:
        """A fresh, not yet existing base dir (as the transport names it, and on disk)."""
        rel = f"run {uuid.uuid4().hex[:8]}/-deep base"
        return rel, self.root / rel


@pytest.fixture(scope="module")
def rsyncd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyncDaemon]:
    daemon = start_rsyncd(tmp_path_factory.mktemp("rsyncd"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def rrsync_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rrsync-dir")


@pytest.fixture(scope="module")
def rrsync_sshd(tmp_path_factory: pytest.TempPathFactory,
                rrsync_dir: Path) -> Iterator[SshServer]:
    server = start_rrsync_sshd(tmp_path_factory.mktemp("rrsync-sshd"), rrsync_dir)
    yield server
    server.stop()


def rrsync_access(server: SshServer) -> Access:
    return Access(key=str(server.key), known_hosts=str(server.known_hosts),
                  remote_shell=False)


def ssh_options(server: SshServer) -> SshOptions:
    return SshOptions(host=server.destination, key=str(server.key), port=server.port,
                      known_hosts=str(server.known_hosts))


@pytest.fixture(params=["rsyncd", "rrsync"])
def far(request: pytest.FixtureRequest) -> FarSide:
    if request.param == "rsyncd":
        daemon: RsyncDaemon = request.getfixturevalue("rsyncd")
        return FarSide("rsyncd", daemon.root, lambda rel: open_destination(
            daemon.url(rel), OPTIONS, Access(password_file=str(daemon.password_file))))
    server: SshServer = request.getfixturevalue("rrsync_sshd")
    return FarSide("rrsync", request.getfixturevalue("rrsync_dir"),
                   lambda rel: open_destination(
                       f"ssh://{server.user}@{server.host}:{server.port}/{rel}", OPTIONS,
                       rrsync_access(server)))


#: Names a shell or rsync's list parsing would mangle; rsync prints several escaped.
HOSTILE = ["new\nline.dat", "-leading-dash.dat", "sp ace.dat", "ünïcødé-日本.dat",
           "#hash.dat", ";semi.dat", "back\\slash.dat", "back\\#134.dat",
           "$(touch pwned).dat"]


# ------------------------------------------------------------------ pure parsing


def test_names_printed_by_rsync_are_decoded() -> None:
    assert decode_name(b"new\\#012line") == "new\nline"
    assert decode_name(b"back\\slash") == "back\\slash"
    assert decode_name(b"back\\#134#123") == "back\\#123"
    assert decode_name(b"\\#303\\#274") == "ü"
    line = b">f+++++++++ 5d41402abc4b2a76b9719d911017c592 5 2026/12/02-14:34:34 a b\n"
    dirline = b"cd+++++++++                                  4096 2026/12/02-14:34:34 sub/\n"
    assert parse_sums(line + dirline + b"skipping non-regular file \"x\"\n") == {
        "a b": "5d41402abc4b2a76b9719d911017c592"}


def test_a_refusal_by_rrsync_is_reported_in_its_own_words() -> None:
    stderr = (b"/usr/bin/rrsync error: Another instance of rrsync is already accessing this "
              b"directory.\nrsync: connection unexpectedly closed (0 bytes received so far)\n"
              b"rsync error: error in rsync protocol data stream (code 12)\n")
    assert refusal(stderr).endswith("Another instance of rrsync is already accessing this "
                                    "directory.")
    assert refusal(b"rsync: x\nrsync error: y (code 5)\n") == "rsync error: y (code 5)"


# ------------------------------------------------------------------ no shell


def test_the_rrsync_key_runs_nothing_but_rsync(rrsync_sshd: SshServer, rrsync_dir: Path,
                                                tmp_path: Path) -> None:
    marker = rrsync_dir / "marker"
    for command in (["md5sum", "x"], ["sh", "-c", f"touch {marker}"]):
        result = subprocess.run(rrsync_sshd.ssh_cmd(*command), capture_output=True,
                                timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode != 0, command
        assert b"does not run rsync" in result.stderr, result.stderr
    assert not marker.exists()
    # --protect-args (-s) is refused: the kind must never send it.
    (tmp_path / "f").write_text("x")
    shell = " ".join(rrsync_sshd.ssh_cmd()[:-1])
    refused = subprocess.run(["rsync", "-s", "-e", shell, str(tmp_path / "f"),
                              f"{rrsync_sshd.destination}:f"], capture_output=True, timeout=30)
    assert refused.returncode != 0
    assert b"-s has been disabled" in refused.stderr, refused.stderr


# ------------------------------------------------------------------ the transport


def test_prepare_stat_list_and_checksums_through_rsync_alone(far: FarSide,
                                                            tmp_path: Path) -> None:
    rel, base = far.new_base()
    transport = far.connect(rel)
    try:
        assert not base.exists()
        transport.ensure_ready()
        assert base.is_dir()
        local = {name: write_file(tmp_path / "src" / f"{i}", name.encode() * 7)
                 for i, name in enumerate(HOSTILE)}
        stage = tmp_path / "stage"
        for name, path in local.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).symlink_to(path)
        assert transport.copy(str(stage), HOSTILE).ok
        (base / "a dir.dat").mkdir()
        (base / "link.dat").symlink_to(base / HOSTILE[0])
        asked = [*HOSTILE, "missing.dat", "a dir.dat", "link.dat"]

        sums = transport.checksums(asked)
        assert sums == {n: hashlib.md5(n.encode() * 7).hexdigest() for n in HOSTILE}
        stats = transport.stat(asked)
        assert {n: (s.size, s.mtime) for n, s in stats.items()} == {
            n: (p.stat().st_size, int(p.stat().st_mtime)) for n, p in local.items()}
        listed = list(transport.list_files())
        assert listed == sorted(HOSTILE, key=lambda n: n.encode())
    finally:
        transport.close()
    assert not (Path.cwd() / "pwned").exists()


def test_rrsync_sessions_of_overlapping_steps_are_serialized(
        rrsync_sshd: SshServer, rrsync_dir: Path) -> None:
    # rrsync lets one session of the user run at a time; overlapping checks must all work
    # (hashing a few MB keeps each session open long enough for the others to overlap it).
    data = b"same" * (4 << 20)
    (rrsync_dir / "s.dat").write_bytes(data)
    transport = RrsyncTransport("/", OPTIONS, ssh_options(rrsync_sshd))
    results: list[object] = []

    def check() -> None:
        try:
            results.append(transport.checksums(["s.dat"]))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            results.append(exc)

    threads = [threading.Thread(target=check) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        transport.close()
    assert results == [{"s.dat": md5(data)}] * 3


# ------------------------------------------------------------------ a real agent


def make_agent(far: FarSide, manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path,
               **overrides: object) -> tuple[Agent, Path]:
    rel, base = far.new_base()
    config = AgentConfig(archive_name=ARCHIVE, remote_basedir=rel, db_path=manager.db_path,
                         suprsync_file_root=str(tmp_path / "srfroot"), sleep_time=0,
                         cmd_timeout=30, copy_timeout=60, **overrides)
    agent = Agent(config, manager=manager, clock=clock, monotonic=clock.monotonic,
                  transport=far.connect(rel))
    return agent, base


def test_agent_copies_hostile_names_and_a_poison_fails_only_itself(
        far: FarSide, manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path) -> None:
    local = tmp_path / "local"
    good = {manager.add_file(str(write_file(local / name, name.encode() * 3)),
                             f"d/{name}", ARCHIVE).id: name.encode() * 3 for name in HOSTILE}
    gone = write_file(local / "gone.dat", b"gone")
    poison = [manager.add_file(str(gone), "d/gone.dat", ARCHIVE).id,
              manager.add_file(str(write_file(local / "blocked.dat", b"b")), "d/blocked.dat",
                               ARCHIVE).id]
    gone.unlink()
    agent, base = make_agent(far, manager, clock, tmp_path)
    # In the way on the far side: rsync fails this one name, inside the chunk.
    write_file(base / "d" / "blocked.dat" / "inside", b"x")
    try:
        agent.iterate()
    finally:
        agent.close()
    for file_id, data in good.items():
        row = get_row(manager, file_id)
        assert row.remote_md5sum == row.local_md5sum == md5(data), row
        assert (base / row.remote_path).read_bytes() == data
    for file_id in poison:
        row = get_row(manager, file_id)
        assert row.failed_copy_attempts == 1, row
        assert row.remote_md5sum is None
    check_invariants(manager.db_path, {ARCHIVE: base}, absent_ok=[gone])
    assert (base / "d" / "blocked.dat" / "inside").read_bytes() == b"x"


def test_agent_deletes_only_what_the_far_side_still_holds(
        far: FarSide, manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path) -> None:
    local = tmp_path / "local"
    files = {name: write_file(local / name, f"{name}\n".encode() * 50)
             for name in ("kept.dat", "tampered.dat", "vanished.dat")}
    ids = {name: manager.add_file(str(path), f"d/{name}", ARCHIVE).id
           for name, path in files.items()}
    agent, base = make_agent(far, manager, clock, tmp_path, delete_local_after=AFTER,
                             verify_before_delete=True)
    try:
        assert agent.iterate() is True
        assert all(path.exists() for path in files.values())
        # After verification, one copy changes (same size and mtime), one disappears.
        tampered = base / "d" / "tampered.dat"
        st = tampered.stat()
        tampered.write_bytes(bytes(st.st_size))
        os.utime(tampered, ns=(st.st_atime_ns, st.st_mtime_ns))
        (base / "d" / "vanished.dat").unlink()

        clock.advance(AFTER + 1)
        agent.iterate()
        assert not files["kept.dat"].exists()
        assert get_row(manager, ids["kept.dat"]).removed == clock()
        for name in ("tampered.dat", "vanished.dat"):
            assert files[name].exists(), f"{name} deleted although its far copy is bad"
            assert get_row(manager, ids[name]).removed is None
        check_invariants(manager.db_path, {ARCHIVE: base}, absent_ok=[files["kept.dat"]])

        # The bad copies are sent again; audit then finds all three in order, by rsync alone.
        assert agent.iterate() is True
        report = audit_archive(manager, agent.transport, ARCHIVE, md5=True)
        assert report.ok, report.as_json()
        assert (report.remote_files, report.checked) == (3, 3)
        check_invariants(manager.db_path, {ARCHIVE: base}, absent_ok=files.values())
    finally:
        agent.close()


def test_run_and_audit_take_the_shell_less_flags(rsyncd: RsyncDaemon, rrsync_sshd: SshServer,
                                                 rrsync_dir: Path, tmp_path: Path) -> None:
    """`run --once` and `audit --md5` over rsync:// with --rsync-password-file, and over
    ssh:// with --remote-shell=no; a password file others can read is refused."""
    from conftest import run_cli

    local = write_file(tmp_path / "data" / "16750" / "a b.dat", b"payload")
    rel = f"cli {uuid.uuid4().hex[:8]}"
    daemon_flags = ["--destination", rsyncd.url(rel), "--rsync-password-file",
                    str(rsyncd.password_file)]
    rrsync_flags = ["--destination", f"ssh://{rrsync_sshd.user}@{rrsync_sshd.host}:"
                    f"{rrsync_sshd.port}/{rel}", "--remote-shell", "no",
                    "--ssh-key", str(rrsync_sshd.key), "--ssh-known-hosts",
                    str(rrsync_sshd.known_hosts)]
    for name, flags, root in (("daemon", daemon_flags, rsyncd.root),
                              ("rrsync", rrsync_flags, rrsync_dir)):
        db = str(tmp_path / f"{name}.db")
        manager = SupRsyncFilesManager(db, create_all=True)
        manager.add_file(str(local), "16750/a b.dat", ARCHIVE)
        manager.close()
        result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--db", db,
                         "--suprsync-file-root", str(tmp_path / "srf"), *flags)
        assert result.returncode == 0, result.stderr
        assert (root / rel / "16750" / "a b.dat").read_bytes() == b"payload"
        audit = run_cli("audit", ARCHIVE, "--db", db, "--md5", *flags)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        check_invariants(db, {ARCHIVE: root / rel})

    loose = tmp_path / "loose.pw"
    loose.write_text(rsyncd.password + "\n")
    loose.chmod(0o644)
    result = run_cli("audit", ARCHIVE, "--db", db, "--destination", rsyncd.url(rel),
                     "--rsync-password-file", str(loose))
    assert result.returncode == 2 and "can be read by others" in result.stderr


def test_work_dirs_of_a_killed_run_are_removed_by_the_next(
        far: FarSide, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shell-less operation works in ``suprsync-rsyncproto-<pid>-*`` dirs; those
    of a process that is gone are removed when an agent starts, those of a live one
    are kept."""
    import tempfile

    from suprsync.copying import remove_stale_temp_dirs
    from suprsync.transport import rsyncproto
    from suprsync.transport.rsyncproto import WORK_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base, _ = far.new_base()
    transport = far.connect(base)
    seen: set[str] = set()
    make = rsyncproto._work_dir
    try:
        # Record the names of the dirs the operations make (removed again at once).
        monkeypatch.setattr(rsyncproto, "_work_dir",
                            lambda: (seen.add(os.path.basename(d := make())), d)[1])
        transport.ensure_ready()
        assert transport.checksums(["absent.dat"], total_bytes=0) == {}
        assert list(transport.list_files()) == []
    finally:
        transport.close()
    assert len(seen) == 3, seen  # --mkpath, md5 pull, listing
    assert all(n.startswith(f"{WORK_PREFIX}{os.getpid()}-") for n in seen), seen
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(WORK_PREFIX)]
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        stale = tmp_path / f"{WORK_PREFIX}{gone.pid}-x1"
        (stale / "empty").mkdir(parents=True)
        (stale / "names").write_bytes(b"a\0" * 1000)
        kept = tmp_path / f"{WORK_PREFIX}{alive.pid}-x2"
        kept.mkdir()
        remove_stale_temp_dirs()
        assert not stale.exists()
        assert kept.exists()
    finally:
        alive.kill()
        alive.wait()
