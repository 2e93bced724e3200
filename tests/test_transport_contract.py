"""What every kind of destination must do, run against each kind in transport_kinds.KINDS.

Real rsync, a real sshd, real file systems (a small tmpfs for the full destination).
The far side's base dir is a directory of this host, so each test can read what
was stored there.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import mount_tmpfs, umount
from transport_kinds import (  # noqa: F401 - the fixtures of the kinds
    KINDS,
    KindUnderTest,
    contract_rrsync_sshd,
    contract_rsyncd,
)

from suprsync.transport import (
    Blame,
    Capabilities,
    SendStatus,
    TransferOptions,
    Transport,
    TransportError,
)

#: Names a shell, rsync's file list or a line-based parser would mangle.
HOSTILE = [
    "new\nline.dat",
    "-leading-dash.dat",
    "--long-option-like.dat",
    "with spaces/and more spaces.dat",
    "non-ascii/déjà vu €.dat",
    "#hash-first.dat",
    ";semicolon-first.dat",
    "back\\slash.dat",
]

Opener = Callable[..., Transport]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> KindUnderTest:
    return request.param


@pytest.fixture
def opened(request: pytest.FixtureRequest, kind: KindUnderTest) -> Iterator[Opener]:
    """open(base, **options) -> a ready transport of the kind; closed after the test."""
    made: list[Transport] = []

    def open_(base: Path, **options: object) -> Transport:
        settings = {"cmd_timeout": 30.0, "copy_timeout": 60.0, **options}
        transport = kind.open(request, base, TransferOptions(**settings))  # type: ignore[arg-type]
        made.append(transport)
        transport.ensure_ready()
        return transport

    yield open_
    for transport in made:
        transport.close()


def write(folder: Path, files: dict[str, bytes], mtime: float = 1_700_000_000) -> list[
        tuple[str, str]]:
    """Local files under folder, named by their remote paths; the (local, rel) pairs."""
    pairs = []
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        pairs.append((str(path), rel))
    return pairs


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_capabilities_are_a_frozen_declaration(opened: Opener, tmp_path: Path) -> None:
    transport = opened(tmp_path / "base")
    caps = transport.capabilities
    assert isinstance(caps, Capabilities)
    with pytest.raises(AttributeError):
        caps.rereads = not caps.rereads  # type: ignore[misc]
    assert caps.hashes <= {"md5"} and isinstance(caps.remote_shell, bool)


def test_send_verify_stat_and_list(opened: Opener, tmp_path: Path) -> None:
    base = tmp_path / "base"
    transport = opened(base)
    files = {"a.dat": b"alpha\n" * 50, "d1/b.dat": b"", "d1/d2/c.dat": b"gamma" * 999}
    staged = tmp_path / "elsewhere"
    # One file read in place (its local path ends with its remote path), two laid out.
    pairs = write(tmp_path / "src", {"a.dat": files["a.dat"]})
    pairs += [(local, rel) for (local, _), rel in
              zip(write(staged, {"x": files["d1/b.dat"], "y": files["d1/d2/c.dat"]}),
                  ["d1/b.dat", "d1/d2/c.dat"], strict=True)]
    result = transport.send(pairs)
    assert result.status is SendStatus.OK and result.failed == {}, result
    assert result.sent([rel for _, rel in pairs]) == [rel for _, rel in pairs]
    for rel, data in files.items():
        assert (base / rel).read_bytes() == data
    rels = sorted(files)
    if "md5" in transport.capabilities.hashes:
        assert transport.checksums(rels + ["missing.dat"]) == {r: md5(files[r]) for r in rels}
    there = transport.stat(rels + ["missing.dat", "d1"])
    assert set(there) == set(rels)
    for rel in rels:
        assert there[rel].size == len(files[rel])
        if transport.capabilities.keeps_mtime:
            assert there[rel].mtime == 1_700_000_000
    assert list(transport.list_files()) == sorted(rels, key=os.fsencode)


def test_hostile_names_arrive_and_are_answered_by_name(opened: Opener, tmp_path: Path) -> None:
    base = tmp_path / "base"
    transport = opened(base)
    files = {rel: rel.encode() * 3 for rel in HOSTILE}
    pairs = write(tmp_path / "src", files)
    result = transport.send(pairs)
    assert result.status is SendStatus.OK and result.failed == {}, result
    for rel, data in files.items():
        assert (base / rel).read_bytes() == data, rel
    if "md5" in transport.capabilities.hashes:
        assert transport.checksums(HOSTILE) == {rel: md5(d) for rel, d in files.items()}
    assert {rel: st.size for rel, st in transport.stat(HOSTILE).items()} == \
        {rel: len(d) for rel, d in files.items()}
    assert list(transport.list_files()) == sorted(HOSTILE, key=os.fsencode)
    # Nothing landed outside the base dir, nothing else was made inside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "src"]


def test_a_poison_file_fails_only_itself(opened: Opener, tmp_path: Path) -> None:
    base = tmp_path / "base"
    transport = opened(base)
    good = write(tmp_path / "src", {"ok1.dat": b"one", "sub/ok2.dat": b"two"})
    # Gone before it is read: once read in place, once laid out under another name.
    gone_in_place = (str(tmp_path / "src" / "gone.dat"), "gone.dat")
    gone_staged = (str(tmp_path / "nowhere" / "x.dat"), "sub/gone\n2.dat")
    result = transport.send([good[0], gone_in_place, good[1], gone_staged])
    assert result.status is SendStatus.OK, result
    assert set(result.failed) == {"gone.dat", "sub/gone\n2.dat"}, result
    assert all(f.blame is Blame.FILE for f in result.failed.values()), result.failed
    assert result.sent(["ok1.dat", "gone.dat"]) == ["ok1.dat"]
    assert (base / "ok1.dat").read_bytes() == b"one"
    assert (base / "sub" / "ok2.dat").read_bytes() == b"two"
    assert not (base / "gone.dat").exists() and not (base / "sub" / "gone\n2.dat").exists()
    assert set(transport.stat(["ok1.dat", "sub/ok2.dat", "gone.dat", "sub/gone\n2.dat"])) == \
        {"ok1.dat", "sub/ok2.dat"}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    path = tmp_path / "small"
    mount_tmpfs(path, "1m")
    try:
        yield path
    finally:
        umount(path)


def test_a_full_destination_fails_the_call_and_blames_no_file(
        opened: Opener, tmp_path: Path, small_fs: Path) -> None:
    transport = opened(small_fs / "base")
    pairs = write(tmp_path / "src", {f"f{n}.dat": os.urandom(300_000) for n in range(5)})
    result = transport.send(pairs)
    assert result.status is SendStatus.DESTINATION_FAILED, result
    assert "No space left on device" in result.reason
    assert not any(f.blame is Blame.FILE for f in result.failed.values())
    # Whatever is there under a final name is complete.
    for local, rel in pairs:
        stored = small_fs / "base" / rel
        if stored.exists():
            assert stored.read_bytes() == Path(local).read_bytes()


def slow_file(tmp_path: Path) -> list[tuple[str, str]]:
    """One file that takes seconds to send at --bwlimit=8 (KiB/s)."""
    return write(tmp_path / "src", {"slow.dat": os.urandom(96 << 10)})


def test_a_send_past_its_time_limit_times_out(opened: Opener, tmp_path: Path) -> None:
    base = tmp_path / "base"
    transport = opened(base, bwlimit="8", copy_timeout=1.0)
    result = transport.send(slow_file(tmp_path))
    assert result.status is SendStatus.TIMED_OUT, result
    assert not result.ok and result.sent(["slow.dat"]) == []
    assert not (base / "slow.dat").exists()


def test_abort_stops_a_running_send(opened: Opener, tmp_path: Path) -> None:
    base = tmp_path / "base"
    transport = opened(base, bwlimit="8", copy_timeout=None)
    results = []
    sender = threading.Thread(target=lambda: results.append(transport.send(slow_file(tmp_path))))
    sender.start()
    time.sleep(0.5)  # most likely running by now; if not, it must not start
    transport.abort()
    sender.join(timeout=30)
    assert not sender.is_alive(), "abort() did not stop the send"
    assert results[0].status is SendStatus.ABORTED, results[0]
    assert transport.aborted
    assert not (base / "slow.dat").exists()
    # Later calls stop too.
    assert transport.send(slow_file(tmp_path)).status is SendStatus.ABORTED


def test_force_sends_a_file_that_looks_unchanged(opened: Opener, tmp_path: Path) -> None:
    base = tmp_path / "base"
    transport = opened(base)
    pairs = write(tmp_path / "src", {"same.dat": b"first"})
    assert transport.send(pairs).ok
    write(tmp_path / "src", {"same.dat": b"other"})  # same size and mtime
    assert transport.send(pairs).ok
    assert (base / "same.dat").read_bytes() == b"first"
    assert transport.send(pairs, force=True).ok
    assert (base / "same.dat").read_bytes() == b"other"


def test_a_base_dir_that_cannot_be_made_fails_prepare(
        request: pytest.FixtureRequest, kind: KindUnderTest, tmp_path: Path) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("in the way")
    transport = kind.open(request, blocker / "base", TransferOptions(cmd_timeout=30))
    try:
        with pytest.raises(TransportError):
            transport.ensure_ready()
    finally:
        transport.close()
