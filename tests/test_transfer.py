"""Copy and verification against real rsync, locally and over a real sshd.

Every test registers real files in a real sqlite catalog, runs the agent (in
process or as the ``suprsync`` command) and then checks the destination and the
catalog. Time is the catalog manager's clock, never a sleep.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import stat
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SshServer, run_cli
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    host_down,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    new_agent,
    ssh_config,
    write_file,
)
from sqlalchemy import update

from suprsync import SupRsyncFile, SupRsyncFilesManager
from suprsync.agent import Agent

BIG = 16 * 1024 * 1024


@dataclass
class Dest:
    """Where the agent copies to: a local dir, or the same dir reached over ssh."""

    kind: str
    base: Path
    sshd: SshServer | None = None

    def ssh_config(self) -> dict:
        return {} if self.sshd is None else ssh_config(self.sshd)

    def flags(self) -> list[str]:
        """`suprsync run` flags for this destination."""
        flags = ["--remote-basedir", str(self.base)]
        return flags + (self.sshd.agent_flags() if self.sshd else [])


def md5_path(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def assert_synced(manager: SupRsyncFilesManager, dest: Dest, file_id: int, data: bytes) -> None:
    row = get_row(manager, file_id)
    assert row.remote_md5sum == row.local_md5sum == md5(data), row
    assert (row.failed_copy_attempts or 0) == 0, row
    assert (dest.base / row.remote_path).read_bytes() == data


@pytest.fixture(params=["local", "ssh"])
def dest(request: pytest.FixtureRequest, remote_dir: Path) -> Dest:
    if request.param == "ssh":
        return Dest("ssh", remote_dir, request.getfixturevalue("sshd"))
    return Dest("local", remote_dir)


@pytest.fixture
def make_agent(tmp_path: Path, manager: SupRsyncFilesManager, clock: Clock):
    def make(dest: Dest, base: Path | None = None, **overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, base or dest.base,
                         **{**dest.ssh_config(), **overrides})

    yield from closing_agents(make)


def cli_run(dest: Dest, tmp_path: Path, db: Path, *extra: str, timeout: float = 60):
    return run_cli("run", "--once", "--archive-name", ARCHIVE, "--db-path", str(db),
                   "--suprsync-file-root", str(tmp_path / "srfroot"), *dest.flags(), *extra,
                   timeout=timeout)


# --------------------------------------------------------------- hostile names


def _hostile_names(m1: str, m2: str) -> list[str]:
    return [
        "sp ace.dat",
        "single'quote.dat",
        'double"quote.dat',
        f"$(touch {m1}).dat",
        f"`touch {m2}`.dat",
        "new\nline.dat",
        "-leading-dash.dat",
        "--double-dash.dat",
        "ünïcødé-日本語.dat",
        "back\\slash.dat",
        f"all 'of' \"them\" $(touch {m1}) `touch {m2}` ;| & \n\\ ü -x.dat",
    ]


def _marker_places(extra: list[Path]) -> list[Path]:
    return [Path.cwd(), Path(tempfile.gettempdir()), Path("/tmp"), Path.home(), *extra]


def _assert_no_marker(markers: list[str], places: list[Path], trees: list[Path]) -> None:
    for marker in markers:
        for place in places:
            assert not (place / marker).exists(), f"{place / marker} was created"
        for tree in trees:
            found = [p for p in tree.rglob("*") if p.name == marker]
            assert not found, f"marker created: {found}"


def test_hostile_names_copied_and_verified_in_one_iteration(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    tag = uuid.uuid4().hex[:12]
    m1, m2, m3, m4 = (f"suprsync-pwned-{tag}-{i}" for i in range(1, 5))
    names = _hostile_names(m1, m2)
    local_dir = tmp_path / f"local dir $(touch {m1}) 'q' \"dq\" `touch {m2}`"
    base = dest.base / f"remote base $(touch {m3}) 'q' `touch {m4}`" / "-x y"

    files = {}
    for i, name in enumerate(names):
        data = f"{i}: {name}\n".encode() * (i + 1)
        path = write_file(local_dir / name, data)
        remote = name if i % 2 == 0 else f"nested $(touch {m3})/`touch {m4}` 'd'/-{name}"
        row = manager.add_file(str(path), remote, ARCHIVE)
        files[row.id] = data

    agent = make_agent(dest, base=base)
    assert agent.iterate() is True

    counters = agent.session.counters
    assert counters["errors_timeout"] == counters["errors_nonzero"] == 0
    assert counters["errors_sqlite"] == 0
    last = agent.session.snapshot()["last_copy"]
    assert "error" not in last
    assert len(last["files"]) == len(names)
    assert all(ok for _, ok in last["files"])
    for file_id, data in files.items():
        row = get_row(manager, file_id)
        assert row.remote_md5sum == row.local_md5sum == md5(data)
        assert (row.failed_copy_attempts or 0) == 0
        assert (base / row.remote_path).read_bytes() == data

    home = Path(pwd.getpwnam(dest.sshd.user).pw_dir) if dest.sshd else Path.home()
    _assert_no_marker([m1, m2, m3, m4], _marker_places([home]), [tmp_path])


def test_ssh_key_and_known_hosts_paths_with_spaces_quotes_and_dollars(
        sshd: SshServer, remote_dir: Path, tmp_path: Path, manager: SupRsyncFilesManager,
        make_agent) -> None:
    tag = uuid.uuid4().hex[:12]
    marker = f"suprsync-pwned-{tag}"
    key_dir = tmp_path / f"key dir 'k' $(touch {marker}) `touch {marker}`"
    key_dir.mkdir()
    key = key_dir / "id key"
    shutil.copy(sshd.key, key)
    key.chmod(0o600)
    known = key_dir / "known hosts"
    shutil.copy(sshd.known_hosts, known)
    data = b"reached with odd paths\n"
    row = manager.add_file(str(write_file(tmp_path / "local" / "k.dat", data)), "k/k.dat",
                           ARCHIVE)
    dest = Dest("ssh", remote_dir, sshd)
    agent = make_agent(dest, ssh_key=str(key), ssh_known_hosts=str(known))
    assert agent.iterate() is True, agent.session.snapshot()["last_copy"]
    assert_synced(manager, dest, row.id, data)
    _assert_no_marker([marker], _marker_places([Path.home()]), [tmp_path])


def test_cli_known_hosts_path_with_percent_works_or_is_refused_up_front(
        sshd: SshServer, remote_dir: Path, tmp_path: Path, tmp_catalog: Path,
        manager: SupRsyncFilesManager) -> None:
    # ssh expands %-tokens in option values; a literal % must reach it as %%.
    folder = tmp_path / "100%yes"
    folder.mkdir()
    known = folder / "known_hosts"
    shutil.copy(sshd.known_hosts, known)
    data = b"percent\n"
    row = manager.add_file(str(write_file(tmp_path / "local" / "p.dat", data)), "p/p.dat",
                           ARCHIVE)
    dest = Dest("ssh", remote_dir, sshd)
    flags = dest.flags()
    flags[flags.index("--ssh-known-hosts") + 1] = str(known)
    result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--db-path", str(tmp_catalog),
                     "--suprsync-file-root", str(tmp_path / "srfroot"), *flags, timeout=60)
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert_synced(manager, dest, row.id, data)
    else:
        # Refused before any work: one line naming the flag.
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--ssh-known-hosts" in lines[0], result.stderr


# --------------------------------------------------------------- deep paths, atomicity


def test_parent_directories_created_for_deep_remote_paths(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    remotes = ["a/b/c/d/e/f/g/h/deep.dat", "a/b/other.dat", "x/y/z/w.dat", "top.dat"]
    ids = {}
    for i, remote in enumerate(remotes):
        data = f"deep {i}".encode()
        path = write_file(tmp_path / "local" / f"f{i}", data)
        ids[manager.add_file(str(path), remote, ARCHIVE).id] = data
    base = dest.base / "not" / "yet" / "there"
    agent = make_agent(dest, base=base)
    assert agent.iterate() is True
    assert (base / "a/b/c/d/e/f/g/h").is_dir()
    for file_id, data in ids.items():
        row = get_row(manager, file_id)
        assert row.remote_md5sum == row.local_md5sum
        assert (base / row.remote_path).read_bytes() == data


def test_names_starting_with_comment_characters_are_copied(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    """rsync's --files-from skips lines starting with # or ;: they must still be sent."""
    remotes = ["#hash.dat", ";semi.dat", "d/#inner.dat", "#dir/;both.dat"]
    ids = {}
    for i, remote in enumerate(remotes):
        data = f"comment-like {i}".encode()
        path = write_file(tmp_path / "local" / f"c{i}", data)
        ids[manager.add_file(str(path), remote, ARCHIVE).id] = data
    agent = make_agent(dest)
    assert agent.iterate() is True
    for file_id, data in ids.items():
        row = get_row(manager, file_id)
        assert row.remote_md5sum == row.local_md5sum
        assert (dest.base / row.remote_path).read_bytes() == data


class _Watcher:
    """Polls a path in a thread and remembers whether it ever existed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if os.path.lexists(self.path):
                self.seen = True
            self._stop.wait(0.005)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_timed_out_copy_leaves_no_partial_file_and_costs_no_attempt(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    data = os.urandom(BIG)
    path = write_file(tmp_path / "local" / "big.dat", data)
    row = manager.add_file(str(path), "run 1/big.dat", ARCHIVE)
    final = dest.base / "run 1" / "big.dat"

    # 16 MiB at 200 KiB/s would take 80 s; the copy timeout ends it after 2 s.
    slow = make_agent(dest, bwlimit="200", copy_timeout=2)
    with _Watcher(final) as watcher:
        assert slow.iterate() is False
    assert not watcher.seen, "the final name appeared during an interrupted copy"
    assert not os.path.lexists(final)
    if final.parent.exists():
        leftovers = [p.name for p in final.parent.iterdir()]
        assert all(name.startswith(".") for name in leftovers), leftovers

    counters = slow.session.counters
    assert counters["errors_timeout"] == 1
    assert counters["errors_nonzero"] == 0
    assert slow.session.snapshot()["last_copy"]["error"] == "timed out"
    after = get_row(manager, row.id)
    assert (after.failed_copy_attempts or 0) == 0
    assert after.remote_md5sum is None

    fast = make_agent(dest)
    assert fast.iterate() is True
    after = get_row(manager, row.id)
    assert after.remote_md5sum == after.local_md5sum == md5(data)
    assert (after.failed_copy_attempts or 0) == 0
    assert md5_path(final) == md5(data)


def test_cli_bwlimit_and_copy_timeout_bound_a_transfer(
        tmp_path: Path, tmp_catalog: Path, remote_dir: Path,
        manager: SupRsyncFilesManager) -> None:
    data = os.urandom(BIG)
    path = write_file(tmp_path / "local" / "big.dat", data)
    row = manager.add_file(str(path), "big.dat", ARCHIVE)
    local = Dest("local", remote_dir)

    result = cli_run(local, tmp_path, tmp_catalog, "--bwlimit", "200", "--copy-timeout", "2")
    assert "Traceback" not in result.stderr
    assert "timed out" in result.stderr
    assert not (remote_dir / "big.dat").exists()
    assert (get_row(manager, row.id).failed_copy_attempts or 0) == 0

    result = cli_run(local, tmp_path, tmp_catalog)
    assert result.returncode == 0, result.stderr
    after = get_row(manager, row.id)
    assert after.remote_md5sum == after.local_md5sum
    assert md5_path(remote_dir / "big.dat") == md5(data)


# --------------------------------------------------------------- chmod, compression


@pytest.mark.parametrize("chmod, expected", [(None, 0o664), ("u=rw,go=", 0o600)],
                         ids=["default", "custom"])
def test_chmod_applied_on_destination(dest: Dest, tmp_path: Path, tmp_catalog: Path,
                                      manager: SupRsyncFilesManager, chmod: str | None,
                                      expected: int) -> None:
    path = write_file(tmp_path / "local" / "secret.dat", b"mode test\n")
    path.chmod(0o600)
    row = manager.add_file(str(path), "modes/secret.dat", ARCHIVE)
    extra = [] if chmod is None else [f"--chmod={chmod}"]
    result = cli_run(dest, tmp_path, tmp_catalog, *extra)
    assert result.returncode == 0, result.stderr
    copied = dest.base / "modes" / "secret.dat"
    assert stat.S_IMODE(copied.stat().st_mode) == expected
    assert get_row(manager, row.id).remote_md5sum == md5(b"mode test\n")


def test_compression_copies_correctly(dest: Dest, tmp_path: Path, tmp_catalog: Path,
                                      manager: SupRsyncFilesManager) -> None:
    contents = {"zeros.dat": bytes(2 * 1024 * 1024),
                "random.dat": os.urandom(1024 * 1024),
                "text.dat": b"compress me please\n" * 50_000}
    ids = {}
    for name, data in contents.items():
        path = write_file(tmp_path / "local" / name, data)
        ids[manager.add_file(str(path), f"z/{name}", ARCHIVE).id] = data
    result = cli_run(dest, tmp_path, tmp_catalog, "--compression")
    assert result.returncode == 0, result.stderr
    for file_id, data in ids.items():
        assert_synced(manager, dest, file_id, data)


# --------------------------------------------------------------- poison files


def test_poison_files_cost_one_attempt_each_and_do_not_block_the_batch(
        dest: Dest, tmp_path: Path, tmp_catalog: Path, manager: SupRsyncFilesManager) -> None:
    local = tmp_path / "local"
    good = {}
    for i in range(4):
        data = f"good {i}\n".encode() * 100
        path = write_file(local / f"good{i}.dat", data)
        good[manager.add_file(str(path), f"batch/good{i}.dat", ARCHIVE).id] = data

    poison = {}
    for kind in ("deleted", "directory", "fifo", "symlink-to-dir"):
        path = write_file(local / f"{kind}.dat", f"{kind}\n".encode())
        poison[manager.add_file(str(path), f"batch/{kind}.dat", ARCHIVE).id] = path
    for path in poison.values():
        path.unlink()
    (local / "directory.dat").mkdir()
    (local / "directory.dat" / "inside").write_text("x")
    os.mkfifo(local / "fifo.dat")
    (local / "a dir").mkdir()
    (local / "symlink-to-dir.dat").symlink_to(local / "a dir")

    # A FIFO must never be opened: a hang would end here with TimeoutExpired.
    result = cli_run(dest, tmp_path, tmp_catalog, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "timed out" not in result.stderr
    assert "failed with exit" not in result.stderr

    for file_id, data in good.items():
        assert_synced(manager, dest, file_id, data)
    for file_id, path in poison.items():
        row = get_row(manager, file_id)
        assert row.failed_copy_attempts == 1, (path.name, row)
        assert row.remote_md5sum is None
        assert row.removed is None
        assert not os.path.lexists(dest.base / row.remote_path)


# --------------------------------------------------------------- md5 mismatch


def test_md5_mismatch_counts_attempts_up_to_the_limit_then_stops(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    # Registered with a checksum its content never had; the file was last modified an
    # hour before registration, so it did not change since and must not be re-hashed.
    data = b"the real content\n" * 64
    path = write_file(tmp_path / "local" / "wrong.dat", data)
    bad = manager.add_file(str(path), "m/wrong.dat", ARCHIVE, local_md5sum="0" * 32)
    good_data = b"fine\n"
    good = manager.add_file(str(write_file(tmp_path / "local" / "good.dat", good_data)),
                            "m/good.dat", ARCHIVE)
    remote = dest.base / "m" / "wrong.dat"
    limit = 3
    agent = make_agent(dest, max_copy_attempts=limit)

    for attempt in range(1, limit + 1):
        agent.iterate()
        row = get_row(manager, bad.id)
        assert row.failed_copy_attempts == attempt
        assert row.remote_md5sum == md5(data)
        assert row.local_md5sum == "0" * 32
        assert remote.read_bytes() == data
        files = agent.session.snapshot()["last_copy"]["files"]
        assert [str(path), False] in files
        if attempt == 1:
            assert_synced(manager, dest, good.id, good_data)
            # The destination copy disappears while the catalog says unsynced.
            remote.unlink()

    copies = agent.session.counters["copies"]
    remote.unlink()
    for _ in range(2):
        agent.iterate()
        assert agent.session.snapshot()["last_copy"]["files"] == []
    assert get_row(manager, bad.id).failed_copy_attempts == limit
    assert agent.session.counters["copies"] == copies
    assert not remote.exists(), "a file at the attempt limit was copied again"


def test_file_changed_after_registration_is_rehashed_and_synced(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent,
        clock: Clock) -> None:
    path = write_file(tmp_path / "local" / "grown.dat", b"first version\n")
    row = manager.add_file(str(path), "g/grown.dat", ARCHIVE)
    clock.advance(120)
    new = b"second, longer version\n"
    write_file(path, new, mtime=clock() - 60)

    agent = make_agent(dest)
    agent.iterate()
    after = get_row(manager, row.id)
    assert after.local_md5sum == after.remote_md5sum == md5(new)
    assert (after.failed_copy_attempts or 0) == 0
    assert (dest.base / "g" / "grown.dat").read_bytes() == new


def test_file_missing_on_destination_after_transfer_counts_an_attempt(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    # A non-empty directory holds the destination name: rsync cannot put the file there.
    (dest.base / "held" / "f.dat").mkdir(parents=True)
    (dest.base / "held" / "f.dat" / "keep").write_text("in the way")
    local = write_file(tmp_path / "local" / "f.dat", b"blocked\n")
    blocked = manager.add_file(str(local), "held/f.dat", ARCHIVE)
    fine_data = b"fine\n"
    fine = manager.add_file(str(write_file(tmp_path / "local" / "ok.dat", fine_data)),
                            "ok/ok.dat", ARCHIVE)
    agent = make_agent(dest)
    agent.iterate()

    assert_synced(manager, dest, fine.id, fine_data)
    row = get_row(manager, blocked.id)
    assert row.failed_copy_attempts == 1
    assert row.remote_md5sum is None
    assert (dest.base / "held" / "f.dat" / "keep").read_text() == "in the way"
    assert [str(local), False] in agent.session.snapshot()["last_copy"]["files"]


# --------------------------------------------------------------- corrupted remote copy


def _plant_lookalike(local: Path, remote: Path, wrong: bytes) -> None:
    """A destination file with the local file's size and mtime but other bytes."""
    assert len(wrong) == local.stat().st_size
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_bytes(wrong)
    st = local.stat()
    os.utime(remote, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_corrupted_remote_copy_is_resent_despite_same_size_and_mtime(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    data = b"A" * 4096
    wrong = b"B" * 4096
    path = write_file(tmp_path / "local" / "c.dat", data)
    row = manager.add_file(str(path), "c/c.dat", ARCHIVE)
    remote = dest.base / "c" / "c.dat"
    _plant_lookalike(path, remote, wrong)
    manager.write(lambda s: s.execute(update(SupRsyncFile).where(SupRsyncFile.id == row.id)
                                      .values(remote_md5sum=md5(wrong))))

    agent = make_agent(dest)
    assert agent.iterate() is True
    after = get_row(manager, row.id)
    assert after.remote_md5sum == after.local_md5sum == md5(data)
    assert remote.read_bytes() == data


def test_stale_lookalike_on_destination_is_eventually_replaced(
        dest: Dest, tmp_path: Path, manager: SupRsyncFilesManager, make_agent) -> None:
    data = b"A" * 4096
    wrong = b"B" * 4096
    path = write_file(tmp_path / "local" / "s.dat", data)
    row = manager.add_file(str(path), "s/s.dat", ARCHIVE)
    remote = dest.base / "s" / "s.dat"
    _plant_lookalike(path, remote, wrong)

    agent = make_agent(dest)
    for _ in range(2):
        agent.iterate()
        if get_row(manager, row.id).remote_md5sum == md5(data):
            break
    after = get_row(manager, row.id)
    assert after.remote_md5sum == after.local_md5sum == md5(data)
    assert (after.failed_copy_attempts or 0) <= 1
    assert remote.read_bytes() == data


# --------------------------------------------------------------- whole-transfer failure


def test_unreachable_host_charges_no_attempts_and_recovers(
        sshd: SshServer, remote_dir: Path, tmp_path: Path, manager: SupRsyncFilesManager,
        make_agent, caplog: pytest.LogCaptureFixture) -> None:
    dest = Dest("ssh", remote_dir, sshd)
    first = manager.add_file(str(write_file(tmp_path / "local" / "first.dat", b"first\n")),
                             "u/first.dat", ARCHIVE)
    agent = make_agent(dest, cmd_timeout=10, copy_timeout=30)
    assert agent.iterate() is True
    assert_synced(manager, dest, first.id, b"first\n")

    later = {}
    for i in range(3):
        data = f"later {i}\n".encode()
        path = write_file(tmp_path / "local" / f"later{i}.dat", data)
        later[manager.add_file(str(path), f"u/later{i}.dat", ARCHIVE).id] = (path, data)

    with host_down(sshd):
        with caplog.at_level(logging.ERROR):
            assert agent.iterate() is False
        counters = agent.session.counters
        assert counters["errors_nonzero"] + counters["errors_timeout"] == 1
        assert agent.session.snapshot()["last_copy"]["error"] in ("nonzero exit", "timed out")
        assert "Connection refused" in caplog.text
        for file_id, (path, _data) in later.items():
            row = get_row(manager, file_id)
            assert (row.failed_copy_attempts or 0) == 0
            assert row.remote_md5sum is None
            assert path.exists()
            assert not (remote_dir / row.remote_path).exists()
        assert (tmp_path / "local" / "first.dat").exists()

    assert agent.iterate() is True
    for file_id, (_path, data) in later.items():
        assert_synced(manager, dest, file_id, data)


def test_unreachable_host_on_first_iteration_charges_no_attempts(
        sshd: SshServer, remote_dir: Path, tmp_path: Path, manager: SupRsyncFilesManager,
        make_agent) -> None:
    dest = Dest("ssh", remote_dir, sshd)
    data = b"waiting\n"
    row = manager.add_file(str(write_file(tmp_path / "local" / "w.dat", data)), "w/w.dat",
                           ARCHIVE)
    agent = make_agent(dest, cmd_timeout=10, copy_timeout=30)
    with host_down(sshd):
        assert agent.iterate() is False
        counters = agent.session.counters
        assert counters["errors_nonzero"] + counters["errors_timeout"] == 1
        assert (get_row(manager, row.id).failed_copy_attempts or 0) == 0
    assert agent.iterate() is True
    assert_synced(manager, dest, row.id, data)


# --------------------------------------------------------------- preparing early


def test_a_failed_early_prepare_is_raised_once_then_tried_again(tmp_path: Path) -> None:
    from suprsync.transport import LocalTransport, TransferOptions, TransportError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    transport = LocalTransport(str(blocker / "base"), TransferOptions())
    transport.prepare_soon()
    with pytest.raises(TransportError, match="cannot create base dir"):
        transport.ensure_ready()  # the early attempt's own error
    blocker.unlink()
    transport.ensure_ready()  # a new attempt, which now succeeds
    assert (blocker / "base").is_dir()
    transport.prepare_soon()  # ready already: nothing more happens
    transport.ensure_ready()
