"""`suprsync audit`: the catalog against the destination, locally and over a real sshd.

Archives are copied with real rsync (the copy step of the agent), then broken by
hand on the destination or locally; the audit runs as the `suprsync` command.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SUPRSYNC, SshServer, free_port, run_cli
from sqlalchemy import insert, update

from suprsync import SupRsyncFile, SupRsyncFilesManager
from suprsync.copying import copy_batch
from suprsync.procs import ProcGroup, Stream
from suprsync.transport import SshOptions, TransferOptions, TransportError, make_transport
from suprsync.transport.base import read_listing

ARCHIVE = "timestreams"
T_WRITTEN = 1_700_000_000.0


@dataclass
class Dest:
    """The destination: a local dir, or the same dir reached over ssh."""

    kind: str
    base: Path
    sshd: SshServer | None = None

    def flags(self) -> list[str]:
        """The destination flags of `suprsync audit` and `suprsync run`."""
        return ["--remote-basedir", str(self.base), *(self.sshd.agent_flags() if self.sshd
                                                      else [])]

    def sync(self, manager: SupRsyncFilesManager) -> None:
        """Copy and verify every copyable file of ARCHIVE, as the agent does."""
        ssh = None
        if self.sshd is not None:
            ssh = SshOptions(host=self.sshd.destination, key=str(self.sshd.key),
                             port=self.sshd.port, known_hosts=str(self.sshd.known_hosts))
        transport = make_transport(str(self.base), TransferOptions(cmd_timeout=30,
                                                                   copy_timeout=60), ssh)
        try:
            transport.prepare()
            report = copy_batch(manager, transport, ARCHIVE)
        finally:
            transport.close()
        assert not report.failed and report.files and all(ok for _, ok in report.files), report


@pytest.fixture(params=["local", "ssh"])
def dest(request: pytest.FixtureRequest, remote_dir: Path) -> Dest:
    if request.param == "ssh":
        return Dest("ssh", remote_dir, request.getfixturevalue("sshd"))
    return Dest("local", remote_dir)


@pytest.fixture
def manager(tmp_catalog: Path):
    m = SupRsyncFilesManager(str(tmp_catalog))
    yield m
    m.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_file(path: Path, data: bytes) -> Path:
    """A local file last modified before it is registered."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (T_WRITTEN, T_WRITTEN))
    return path


def register(manager: SupRsyncFilesManager, local_dir: Path, files: dict[str, bytes],
             prefix: str = "run1/") -> dict[str, int]:
    """Write and register files; their remote path is prefix + name. Returns ids by name."""
    return {name: manager.add_file(str(write_file(local_dir / name, data)), prefix + name,
                                   ARCHIVE).id
            for name, data in files.items()}


def row(manager: SupRsyncFilesManager, file_id: int) -> SupRsyncFile:
    return manager.read(lambda s: s.get(SupRsyncFile, file_id))


def audit(dest: Dest, db: Path | str, *extra: str, timeout: float = 120):
    return run_cli("audit", ARCHIVE, "--db", str(db), *dest.flags(), *extra, timeout=timeout)


def audit_json(dest: Dest, db: Path | str, *extra: str) -> tuple[int, dict[str, Any]]:
    """Exit status and parsed --json output of an audit that ran (status 0 or 1)."""
    result = audit(dest, db, "--json", *extra)
    assert result.returncode in (0, 1), (result.returncode, result.stderr)
    return result.returncode, json.loads(result.stdout)


def paths(report: dict[str, Any], category: str) -> set[str]:
    return {item if isinstance(item, str) else item["remote_path"]
            for item in report["files"][category]}


def nonzero_counts(report: dict[str, Any]) -> dict[str, int]:
    return {name: n for name, n in report["counts"].items() if n}


def lines_count(lines: list[str], title: str) -> int:
    """The count the human summary shows for a category."""
    found = [line for line in lines if line.strip().startswith(title + " ")
             and line.split()[-1].isdigit()]
    assert len(found) == 1, (title, lines)
    return int(found[0].split()[-1])


# ------------------------------------------------------ a broken archive


CONTENT = {name: f"{name}\n".encode() * (50 + i) for i, name in enumerate(
    ["ok.dat", "gone.dat", "short.dat", "flipped.dat", "lost.dat", "vanished.dat",
     "removed-ok.dat", "ignored.dat"])}
TEMP_NAME = ".short.dat.Ab12Cd"


@dataclass
class Broken:
    ids: dict[str, int]
    flipped_bytes: bytes


def break_archive(dest: Dest, manager: SupRsyncFilesManager, tmp_path: Path) -> Broken:
    """Copy an archive, then damage it in every way the audit distinguishes.

    - gone.dat: remote copy deleted (re-sendable);
    - short.dat: remote copy truncated (re-sendable);
    - flipped.dat: one byte changed, same size and mtime (only md5 sees it);
    - lost.dat: remote copy deleted, local copy deleted and recorded as removed;
    - vanished.dat: remote copy deleted, local copy gone without a record;
    - removed-ok.dat: local copy removed, remote copy fine (no problem);
    - ignored.dat: remote copy deleted, but the file is ignored (not checked);
    - a file registered but not copied yet (not checked);
    - an unknown remote file and an rsync temporary file.
    """
    local_dir = tmp_path / "local"
    ids = register(manager, local_dir, CONTENT)
    dest.sync(manager)
    remote = dest.base / "run1"
    for name in ("gone.dat", "lost.dat", "vanished.dat", "ignored.dat"):
        (remote / name).unlink()
    (remote / "short.dat").write_bytes(CONTENT["short.dat"][:10])
    flipped = remote / "flipped.dat"
    st = flipped.stat()
    data = bytearray(flipped.read_bytes())
    data[3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    os.utime(flipped, ns=(st.st_atime_ns, st.st_mtime_ns))
    for name in ("lost.dat", "vanished.dat", "removed-ok.dat"):
        (local_dir / name).unlink()
    manager.mark_removed(ids["lost.dat"], 1.0)
    manager.mark_removed(ids["removed-ok.dat"], 1.0)
    manager.write(lambda s: s.execute(update(SupRsyncFile)
                                      .where(SupRsyncFile.id == ids["ignored.dat"])
                                      .values(ignore=True)))
    register(manager, local_dir, {"later.dat": b"not copied yet\n"})
    (remote / "extra.dat").write_bytes(b"nobody registered me\n")
    (remote / TEMP_NAME).write_bytes(b"half a file")
    return Broken(ids, bytes(data))


def test_consistent_archive_audits_clean(dest: Dest, tmp_catalog: Path, tmp_path: Path,
                                         manager: SupRsyncFilesManager) -> None:
    files = {f"f{i}.dat": f"file {i}\n".encode() * (i + 1) for i in range(12)}
    register(manager, tmp_path / "local", files)
    dest.sync(manager)

    result = audit(dest, tmp_catalog, "--json", "--md5", "--batch", "5")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress display when stderr is not a terminal
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert nonzero_counts(report) == {}
    assert report["synced_checked"] == report["remote_files"] == len(files)


def test_every_kind_of_problem_is_reported_in_its_category(
        dest: Dest, tmp_catalog: Path, tmp_path: Path, manager: SupRsyncFilesManager) -> None:
    broken = break_archive(dest, manager, tmp_path)

    # Sizes only: the summary for people.
    human = audit(dest, tmp_catalog, "--batch", "3")
    assert human.returncode == 1
    lines = human.stdout.splitlines()
    counts = {title: lines_count(lines, title) for title in (
        "LOST-ON-REMOTE", "missing on remote", "size differs", "md5 differs",
        "unknown on remote", "temporary (rsync)")}
    assert counts == {"LOST-ON-REMOTE": 2, "missing on remote": 1, "size differs": 1,
                      "md5 differs": 0, "unknown on remote": 1, "temporary (rsync)": 1}
    assert "synced files checked 7" in human.stdout  # every synced file but the ignored one
    for name in ("gone.dat", "short.dat", "lost.dat", "vanished.dat", "extra.dat", TEMP_NAME):
        assert any(line.lstrip().startswith(f"run1/{name}") for line in lines), name
    assert "PROBLEMS FOUND" in lines
    assert "LOST-ON-REMOTE: 2 file(s)" in human.stderr

    # Same size, same mtime: only the md5 tells.
    status, report = audit_json(dest, tmp_catalog, "--md5")
    assert status == 1 and report["ok"] is False
    assert nonzero_counts(report) == {"missing": 1, "size_mismatch": 1, "md5_mismatch": 1,
                                      "lost_on_remote": 2, "unknown": 1, "temporary": 1}
    assert paths(report, "missing") == {"run1/gone.dat"}
    assert paths(report, "size_mismatch") == {"run1/short.dat"}
    assert paths(report, "md5_mismatch") == {"run1/flipped.dat"}
    assert md5(broken.flipped_bytes) in report["files"]["md5_mismatch"][0]["detail"]
    assert paths(report, "lost_on_remote") == {"run1/lost.dat", "run1/vanished.dat"}
    assert {i["reason"] for i in report["files"]["lost_on_remote"]} == {"missing"}
    assert paths(report, "unknown") == {"run1/extra.dat"}
    assert paths(report, "temporary") == {f"run1/{TEMP_NAME}"}
    assert report["synced_checked"] == 7
    assert report["requeued"] == 0

    # Without --requeue the catalog is left alone.
    for file_id in broken.ids.values():
        r = row(manager, file_id)
        assert r.remote_md5sum == r.local_md5sum


def test_requeue_queues_exactly_the_resendable_files_and_run_repairs_them(
        dest: Dest, tmp_catalog: Path, tmp_path: Path, manager: SupRsyncFilesManager) -> None:
    broken = break_archive(dest, manager, tmp_path)
    ids = broken.ids

    status, report = audit_json(dest, tmp_catalog, "--md5", "--requeue")
    assert status == 1
    assert report["requeued"] == 3
    requeued = {item["remote_path"] for cat in ("missing", "size_mismatch", "md5_mismatch")
                for item in report["files"][cat] if item["requeued"]}
    assert requeued == {"run1/gone.dat", "run1/short.dat", "run1/flipped.dat"}
    assert not any(item.get("requeued") for item in report["files"]["lost_on_remote"])

    assert row(manager, ids["gone.dat"]).remote_md5sum is None
    # The md5 seen on the remote is kept, so the next copy re-sends despite size and mtime.
    assert row(manager, ids["short.dat"]).remote_md5sum == md5(CONTENT["short.dat"][:10])
    assert row(manager, ids["flipped.dat"]).remote_md5sum == md5(broken.flipped_bytes)
    for name in ("ok.dat", "lost.dat", "vanished.dat", "removed-ok.dat", "ignored.dat"):
        r = row(manager, ids[name])
        assert r.remote_md5sum == r.local_md5sum, name

    run = run_cli("run", "--once", "--archive-name", ARCHIVE, "--db-path", str(tmp_catalog),
                  "--suprsync-file-root", str(tmp_path / "srfroot"), *dest.flags(),
                  "--cmd-timeout", "30", timeout=120)
    assert run.returncode == 0, run.stderr
    for name in ("gone.dat", "short.dat", "flipped.dat"):
        assert (dest.base / "run1" / name).read_bytes() == CONTENT[name], name
        r = row(manager, ids[name])
        assert r.remote_md5sum == r.local_md5sum and not r.failed_copy_attempts, name

    status, report = audit_json(dest, tmp_catalog, "--md5")
    assert status == 1
    assert nonzero_counts(report) == {"lost_on_remote": 2, "unknown": 1, "temporary": 1}


# ------------------------------------------------------------ file names


def _hostile_names(marker: str) -> list[str]:
    return [
        "sp ace.dat",
        "single'quote.dat",
        'double"quote.dat',
        f"$(touch {marker}).dat",
        f"`touch {marker}`.dat",
        "new\nline.dat",
        "-leading-dash.dat",
        "--double-dash.dat",
        "ünïcødé-日本語.dat",
        "back\\slash.dat",
        f"all 'of' \"them\" $(touch {marker}) ;| & \n\\ ü -x.dat",
    ]


def test_hostile_file_names(dest: Dest, tmp_path: Path, tmp_catalog: Path,
                            manager: SupRsyncFilesManager) -> None:
    marker = f"suprsync-pwned-{uuid.uuid4().hex[:12]}"
    dest.base = dest.base / f"base $(touch {marker}) 'q' `touch {marker}`" / "-x y"
    names = _hostile_names(marker)
    files = {name: f"{i}: {name}\n".encode() * (i + 1) for i, name in enumerate(names)}
    nested = f"dir $(touch {marker}) 'd'/"
    ids = register(manager, tmp_path / "local", files, prefix=nested)
    dest.sync(manager)
    deleted = {nested + name for name in names[::2]}
    for rel in deleted:
        (dest.base / rel).unlink()
    extras = {f"{nested}extra {name}" for name in names[1::2]}
    for rel in extras:
        (dest.base / rel).write_bytes(b"unregistered\n")

    status, report = audit_json(dest, tmp_catalog, "--md5", "--requeue", "--batch", "4")
    assert status == 1
    assert paths(report, "missing") == deleted
    assert paths(report, "unknown") == extras
    assert nonzero_counts(report) == {"missing": len(deleted), "unknown": len(extras)}
    assert report["requeued"] == len(deleted)
    assert report["synced_checked"] == len(names)
    for name, file_id in ids.items():
        r = row(manager, file_id)
        assert (r.remote_md5sum is None) == (nested + name in deleted), name

    human = audit(dest, tmp_catalog)
    assert "new\\nline.dat" in human.stdout  # one file, one line
    assert not list(tmp_path.rglob(marker))
    for place in (Path.cwd(), Path.home(), Path(tempfile.gettempdir())):
        assert not (place / marker).exists()


@pytest.fixture(params=["sqlite", "postgresql"])
def ordered_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty catalog whose text order is not bytewise when it is PostgreSQL (ICU 'en')."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.db")
    pg = request.getfixturevalue("pg")
    name = "t_" + uuid.uuid4().hex[:12]
    pg.psql(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
            f"ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    return "postgresql://" + pg.url(name).split("://", 1)[1]


def test_unknown_files_found_by_merging_in_bytewise_order(ordered_catalog: str,
                                                          remote_dir: Path) -> None:
    """The merge needs both sides in byte order, which a natural collation is not."""
    known = ["a-b", "a.b", "a/x", "B", "_u", "é/1", "Zz/1", "z/a b"]
    rows = [{"local_path": f"/l/{i}", "local_md5sum": "0" * 32, "archive_name": ARCHIVE,
             "remote_path": p, "timestamp": float(i)} for i, p in enumerate(known)]
    # Written by a producer with plain SQL: not in canonical form.
    rows.append({"local_path": "/l/odd", "local_md5sum": "0" * 32, "archive_name": ARCHIVE,
                 "remote_path": "./c//d", "timestamp": 50.0})
    rows.append({"local_path": "/l/other", "local_md5sum": "0" * 32, "archive_name": "other",
                 "remote_path": "o/p", "timestamp": 60.0})
    m = SupRsyncFilesManager(ordered_catalog)
    m.write(lambda s: s.execute(insert(SupRsyncFile), rows))
    m.close()
    unknown = {"a/y", "o/p", "Z", "a-a", "é/0", "bad\udcff"}
    for rel in [*known, "c/d", *unknown]:
        path = os.path.join(os.fsencode(remote_dir), rel.encode("utf-8", "surrogateescape"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")

    status, report = audit_json(Dest("local", remote_dir), ordered_catalog)
    assert status == 1
    assert paths(report, "unknown") == unknown
    assert nonzero_counts(report) == {"unknown": len(unknown)}
    assert report["remote_files"] == len(known) + 1 + len(unknown)


def test_json_lists_are_capped_but_counts_stay_exact(tmp_catalog: Path, tmp_path: Path,
                                                     remote_dir: Path,
                                                     manager: SupRsyncFilesManager) -> None:
    dest = Dest("local", remote_dir)
    register(manager, tmp_path / "local", {"a.dat": b"a\n"})
    dest.sync(manager)
    for i in range(7):
        (remote_dir / "run1" / f"extra{i}.dat").write_bytes(b"x")

    status, report = audit_json(dest, tmp_catalog, "--list-limit", "3")
    assert status == 1
    assert report["counts"]["unknown"] == 7
    assert len(report["files"]["unknown"]) == 3
    assert report["truncated"]["unknown"] is True and report["list_limit"] == 3
    assert report["truncated"]["missing"] is False


def test_progress_is_shown_on_a_terminal_only(tmp_catalog: Path, tmp_path: Path,
                                              remote_dir: Path,
                                              manager: SupRsyncFilesManager) -> None:
    dest = Dest("local", remote_dir)
    register(manager, tmp_path / "local", {f"f{i}.dat": b"x\n" for i in range(5)})
    dest.sync(manager)

    master, slave = pty.openpty()
    proc = subprocess.Popen([SUPRSYNC, "audit", ARCHIVE, "--db", str(tmp_catalog),
                             *dest.flags()], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        try:
            chunk = os.read(master, 4096) if ready else b""
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, shown
    assert b"listing the remote: 5 files" in shown
    assert b"checking synced files: 5/5" in shown
    assert b"\r" in shown and b"OK: the destination matches the catalog" in out


def _gone_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_listing_stream_is_killed_with_what_it_started_at_its_time_limit() -> None:
    """A listing that never ends is stopped at its time limit, children included."""
    script = 'sleep 600 & printf "%s\\0a\\0b\\0" "$!"; wait'
    stream = Stream(["sh", "-c", script], timeout=2)
    got = []
    with pytest.raises(TransportError) as failed:
        for name in read_listing(stream, "somewhere", None):
            got.append(name)
    assert failed.value.timed_out and "timed out" in str(failed.value)
    assert got[1:] == ["a", "b"]
    sleeper = int(got[0])
    # SIGKILL is immediate; init may take a moment to reap the orphan.
    for _ in range(200):
        if _gone_or_zombie(sleeper):
            break
        time.sleep(0.05)
    assert _gone_or_zombie(sleeper)


def test_aborted_listing_ends_even_if_another_process_holds_its_output() -> None:
    """As with an ssh connection master, which keeps a killed client's pipes open."""
    group = ProcGroup()
    holder = None
    try:
        # The holder prints its pid once it is in a session of its own.
        script = "setsid sh -c 'printf \"%s\\\\0\" \"$$\"; exec sleep 600' & wait"
        with Stream(["sh", "-c", script], group=group) as stream:
            records = stream.records()
            holder = int(next(records))
            group.kill_all()
            assert list(records) == []
        assert stream.result is not None and stream.result.returncode == -signal.SIGKILL
        assert not stream.result.timed_out
    finally:
        if holder is not None:
            os.kill(holder, signal.SIGKILL)


# ------------------------------------------------------------------ errors


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("suprsync audit: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert result.stdout == ""


def test_bad_input_is_a_one_line_error_with_status_2(
        tmp_catalog: Path, tmp_path: Path, remote_dir: Path, sshd: SshServer,
        manager: SupRsyncFilesManager) -> None:
    local = Dest("local", remote_dir)
    register(manager, tmp_path / "local", {"a.dat": b"a\n"})
    local.sync(manager)

    assert_one_line_error(audit(local, tmp_path / "nope.db"), "does not exist")
    assert_one_line_error(run_cli("audit", "nope", "--db", str(tmp_catalog), *local.flags()),
                          "unknown archive 'nope'", ARCHIVE)
    assert_one_line_error(audit(Dest("local", remote_dir / "missing"), tmp_catalog),
                          "No such file or directory")
    assert_one_line_error(audit(Dest("ssh", remote_dir / "missing", sshd), tmp_catalog),
                          "listing the files of", "missing")
    dead = Dest("ssh", remote_dir, sshd).flags()
    dead[dead.index("--ssh-port") + 1] = str(free_port())
    result = run_cli("audit", ARCHIVE, "--db", str(tmp_catalog), *dead, "--cmd-timeout", "10")
    assert_one_line_error(result, "Connection refused")

    usage = run_cli("audit", ARCHIVE, "--db", str(tmp_catalog), *local.flags(), "--batch", "0")
    assert usage.returncode == 2 and "usage:" in usage.stderr


# ---------------------------------------------------------------- memory

LARGE = 100_000
SMALL = 1_000
EMPTY_MD5 = md5(b"")
MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
sys.stdout.write(done.stdout.decode())
sys.stderr.write(f"{done.returncode} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def _synthetic_archive(root: Path, count: int) -> tuple[Path, Path]:
    """count synced rows whose local copies were removed, and count empty remote files.

    Names are long (about 140 bytes), as real ones are, so that holding them all
    would show in the memory used.
    """
    db, remote = root / "catalog.db", root / "remote"
    SupRsyncFilesManager(str(db)).close()

    def rel(i: int) -> str:
        return f"{17000 + i // 1000}/ufm_mv{i % 7}/{1700000000 + i}_{'x' * 100}_{i:06d}.g3"

    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, remote_md5sum, copied, removed, failed_copy_attempts, deletable, "
            "ignore) VALUES (?, ?, ?, ?, ?, ?, 1, 1, 0, 1, 0)",
            ((f"/gone/{i}", EMPTY_MD5, ARCHIVE, rel(i), float(i), EMPTY_MD5)
             for i in range(count)))
    for d in range(count // 1000 + 1):
        for sub in range(7):
            os.makedirs(remote / str(17000 + d) / f"ufm_mv{sub}", exist_ok=True)
    for i in range(count):
        os.mknod(remote / rel(i))
    os.unlink(remote / rel(count // 2))
    (remote / "17000" / "unregistered.g3").touch()
    return db, remote


def _peak_rss_mb(db: Path, remote: Path) -> tuple[dict[str, Any], float]:
    """Run an audit in a process of its own; its report and the peak RSS of its tree."""
    done = subprocess.run([sys.executable, "-c", MEASURE, SUPRSYNC, "audit", ARCHIVE,
                           "--db", str(db), "--remote-basedir", str(remote), "--json"],
                          capture_output=True, text=True, timeout=120)
    status, maxrss_kb = done.stderr.split()[-2:]
    assert status == "1", done.stderr
    return json.loads(done.stdout), int(maxrss_kb) / 1024


def test_memory_stays_bounded_on_a_large_archive(tmp_path: Path) -> None:
    small_report, small_mb = _peak_rss_mb(*_synthetic_archive(tmp_path / "small", SMALL))
    large_report, large_mb = _peak_rss_mb(*_synthetic_archive(tmp_path / "large", LARGE))

    for report, count in ((small_report, SMALL), (large_report, LARGE)):
        assert report["synced_checked"] == count
        assert report["remote_files"] == count
        assert nonzero_counts(report) == {"lost_on_remote": 1, "unknown": 1}
    # Holding 100,000 rows or names would take tens of MB more than a 1,000-row audit.
    assert large_mb < 150, large_mb
    assert large_mb - small_mb < 15, (small_mb, large_mb)
