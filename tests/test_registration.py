"""Bulk registration: listing a tree, hashing its new files, `suprsync add-local-files`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import SUPRSYNC, run_cli
from helpers import descendants, make_file, run_on_terminal

from suprsync import SupRsyncFilesManager
from suprsync.registration import add_local_files
from suprsync.treescan import HASH_CHUNK_FILES, TreeScan, hash_chunks, list_tree
from suprsync.treescan import _list_with_find as list_with_find
from suprsync.treescan import _list_with_python as list_with_python

ARCHIVE = "timestreams"
OLD = time.time() - 7200


def md5(path: Path | str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def aged(path: Path, mtime: float = OLD) -> Path:
    os.utime(path, (mtime, mtime), follow_symlinks=False)
    return path


@pytest.fixture
def mixed_tree(tmp_path: Path) -> dict[str, list[str]]:
    """A tree with every kind of entry add-local-files meets; which ones it must take."""
    root = tmp_path / "root"
    outside = aged(make_file(tmp_path / "outside", "target.dat"))
    (tmp_path / "outside" / "dir").mkdir()
    taken = [aged(make_file(root, rel)) for rel in (
        "16750/a.dat", "16750/a.dat.d/inner", "16750/sub/b.g3", "16751/x y.dat",
        "16751/new\nline.dat", "16751/-lead.dat", "16751/é.dat", "top.txt")]
    link = root / "16750" / "link.dat"
    link.symlink_to(outside)
    aged(link)
    fresh = make_file(root, "16750/fresh.dat")  # modified just now
    skipped = [fresh, link]
    for name, target in (("dirlink", tmp_path / "outside" / "dir"),
                         ("dangling", tmp_path / "nowhere")):
        (root / "16750" / name).symlink_to(target)
        skipped.append(root / "16750" / name)
    os.mkfifo(root / "16751" / "fifo")
    skipped.append(root / "16751" / "fifo")
    bad = os.path.join(os.fsencode(root / "16751"), b"bad\xff.dat")
    Path(os.fsdecode(bad)).write_bytes(b"undecodable name")
    os.utime(bad, (OLD, OLD))
    return {"root": [str(root)], "taken": sorted(map(str, taken)),
            "skipped": [str(p) for p in skipped]}


def test_find_and_python_walk_list_the_same_regular_files(
    mixed_tree: dict[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Both listings take regular files old enough, in path order, and skip symlinks."""
    root = mixed_tree["root"][0]
    cutoff = time.time() - 60
    with caplog.at_level(logging.WARNING, logger="suprsync"):
        by_find = list_with_find(root, cutoff)
    find_warnings = caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="suprsync"):
        by_python = list_with_python(root, cutoff)
    assert by_find is not None
    assert sorted(by_find) == sorted(by_python) == mixed_tree["taken"]
    assert list_tree(root, cutoff) == mixed_tree["taken"]
    for warnings in (find_warnings, caplog.text):
        for link in ("link.dat", "dirlink", "dangling"):
            assert f"{link}: a symbolic link" in warnings
        assert "fifo: not a regular file" in warnings
        assert "not valid UTF-8" in warnings
        assert "fresh.dat" not in warnings  # too new is not a problem, only not yet


def test_cutoff_takes_files_modified_at_or_before_it(tmp_path: Path) -> None:
    """A file whose mtime is the cutoff is taken; one 10 ms after it is not."""
    at = aged(make_file(tmp_path, "at.dat"), 1_000_000_000.5)
    aged(make_file(tmp_path, "after.dat"), 1_000_000_000.51)
    assert list_with_find(str(tmp_path), 1_000_000_000.5) == [str(at)]
    assert list_with_python(str(tmp_path), 1_000_000_000.5) == [str(at)]


def test_hash_chunks_keep_order_and_bounds() -> None:
    """Chunks concatenate to the input; few files still make several chunks per worker."""
    few = [f"/d/{i}" for i in range(4)]
    assert hash_chunks(few, 2) == [[p] for p in few]
    many = [f"/data/{i:06d}.dat" for i in range(3 * HASH_CHUNK_FILES + 7)]
    chunks = hash_chunks(many, 2)
    assert [p for chunk in chunks for p in chunk] == many
    assert max(map(len, chunks)) <= HASH_CHUNK_FILES
    assert len(chunks) >= 8
    long_names = ["/" + "n" * 60_000 + str(i) for i in range(5)]
    assert all(len(chunk) <= 2 for chunk in hash_chunks(long_names, 1))


def test_tree_scan_hashes_only_new_files(tmp_path: Path) -> None:
    """Known and excluded paths are not hashed; the others get their true md5, in order."""
    files = [aged(make_file(tmp_path, f"16750/f{i:03d}.dat")) for i in range(40)]
    known = {str(files[3]), str(files[17])}
    excluded = {str(files[5])}
    with TreeScan(str(tmp_path), time.time(), lambda: known, exclude=excluded,
                  workers=3) as scan:
        expected = [str(f) for f in files if str(f) not in known | excluded]
        assert scan.paths() == expected
        hashed = list(scan.hashed())
    assert [p for chunk, _ in hashed for p in chunk] == expected
    sums = {p: m for _, chunk_sums in hashed for p, m in chunk_sums.items()}
    assert sums == {p: md5(p) for p in expected}


def test_tree_scan_leaves_out_a_file_gone_before_hashing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file deleted between listing and hashing is left out with a warning."""
    files = [aged(make_file(tmp_path, f"f{i}.dat")) for i in range(5)]

    def known() -> set[str]:  # runs after the listing, before any hashing
        files[2].unlink()
        return set()

    with caplog.at_level(logging.WARNING, logger="suprsync"), \
            TreeScan(str(tmp_path), time.time(), known) as scan:
        sums = {p: m for _, chunk_sums in scan.hashed() for p, m in chunk_sums.items()}
    assert sums == {str(f): md5(f) for i, f in enumerate(files) if i != 2}
    assert "f2.dat" in caplog.text and "No such file" in caplog.text


def test_tree_scan_close_kills_a_stuck_md5sum(tmp_path: Path) -> None:
    """close() ends hashing that would never finish (a file turned into a FIFO)."""
    victim = aged(make_file(tmp_path, "f.dat"))

    def known() -> set[str]:  # runs after the listing: md5sum will block on the FIFO
        victim.unlink()
        os.mkfifo(victim)
        return set()

    scan = TreeScan(str(tmp_path), time.time(), known).start()
    assert scan.paths() == [str(victim)]
    deadline = time.monotonic() + 30
    while not any(_is_md5sum(pid) for pid in descendants(os.getpid())):
        assert time.monotonic() < deadline, "md5sum never started"
        time.sleep(0.05)
    closer = threading.Thread(target=scan.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() did not stop the hashing"
    assert not any(_is_md5sum(pid) for pid in descendants(os.getpid()))


def test_tree_scan_warns_when_md5sum_is_killed(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """An md5sum killed from outside leaves its files out, with a warning that says so."""
    victim = aged(make_file(tmp_path, "f.dat"))

    def known() -> set[str]:  # runs after the listing: md5sum will block on the FIFO
        victim.unlink()
        os.mkfifo(victim)
        return set()

    with caplog.at_level(logging.WARNING, logger="suprsync"), \
            TreeScan(str(tmp_path), time.time(), known) as scan:
        scan.paths()
        deadline = time.monotonic() + 30
        while not (stuck := [p for p in descendants(os.getpid()) if _is_md5sum(p)]):
            assert time.monotonic() < deadline, "md5sum never started"
            time.sleep(0.05)
        os.kill(stuck[0], signal.SIGKILL)
        assert list(scan.hashed()) == [([str(victim)], {})]
    assert "md5sum ended with status -9: 1 of 1 files" in caplog.text


def _is_md5sum(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "md5sum"
    except OSError:
        return False


def _catalog_rows(db: Path) -> list[tuple[str, str, str, str, int, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT local_path, remote_path, archive_name, local_md5sum, "
            "failed_copy_attempts, deletable, ignore FROM supersync_v0 ORDER BY id").fetchall()


@pytest.mark.parametrize("db_form", ["path", "url"])
def test_add_local_files_registers_the_mixed_tree(
    mixed_tree: dict[str, list[str]], tmp_catalog: Path, db_form: str
) -> None:
    """Regular files (not symlinks) are registered in path order, with the remote
    path relative to ROOT, whether the catalog is named by path or by URL."""
    root = Path(mixed_tree["root"][0])
    tmp_catalog.parent.mkdir(parents=True)
    db = str(tmp_catalog) if db_form == "path" else f"sqlite:///{tmp_catalog}"
    SupRsyncFilesManager(str(tmp_catalog)).close()
    result = run_cli("add-local-files", str(root), ARCHIVE, "--db", db)
    assert result.returncode == 0, result.stderr
    assert f"added {len(mixed_tree['taken'])} files" in result.stdout
    assert _catalog_rows(tmp_catalog) == [
        (p, os.path.relpath(p, root), ARCHIVE, md5(p), 0, 1, 0) for p in mixed_tree["taken"]]
    for skipped in ("link.dat", "dirlink", "fifo", "dangling", "bad"):
        assert skipped in result.stderr
    with sqlite3.connect(tmp_catalog) as conn:
        dirs = conn.execute("SELECT timecode, archive_name FROM timecode_dirs_v0 "
                            "ORDER BY timecode").fetchall()
    assert dirs == [(16750, ARCHIVE), (16751, ARCHIVE)]


def test_add_local_files_skips_the_catalog_inside_root(tmp_path: Path) -> None:
    """A catalog kept inside ROOT (with its WAL files) is never registered."""
    root = tmp_path / "root"
    data = aged(make_file(root, "16750/a.dat"))
    db = root / "suprsync.db"
    args = ("add-local-files", str(root), ARCHIVE, "--db", str(db), "--create-db",
            "--last-edit", "0")
    for _ in range(2):  # the second run sees the catalog files left by the first
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    assert [r[0] for r in _catalog_rows(db)] == [str(data)]


def test_add_local_files_only_new_files_on_a_second_run(tmp_path: Path,
                                                        tmp_catalog: Path) -> None:
    """Files added since the first run, and only they, are registered by the second."""
    root = tmp_path / "root"
    first = [aged(make_file(root, f"16750/f{i}.dat")) for i in range(3)]
    args = ("add-local-files", str(root), ARCHIVE, "--db", str(tmp_catalog), "--create-db")
    assert run_cli(*args).returncode == 0
    second = [aged(make_file(root, f"16751/g{i}.dat")) for i in range(2)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "added 2 files" in result.stdout
    assert [r[0] for r in _catalog_rows(tmp_catalog)] == [str(p) for p in first + second]


def test_add_local_files_with_many_batches(tmp_path: Path, tmp_catalog: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows inserted over several batches and hash chunks are all there, in order."""
    import suprsync.registration as registration
    import suprsync.treescan as treescan

    monkeypatch.setattr(registration, "BATCH", 7)
    monkeypatch.setattr(treescan, "HASH_CHUNK_FILES", 3)
    files = [aged(make_file(tmp_path / "root", f"1675{i % 3}/f{i:02d}.dat")) for i in range(50)]
    manager = SupRsyncFilesManager(str(tmp_catalog), create_all=True)
    try:
        added = add_local_files(manager, str(tmp_path / "root"), ARCHIVE, last_edit=60)
    finally:
        manager.close()
    expected = sorted(map(str, files))
    assert added == expected
    assert [(r[0], r[3]) for r in _catalog_rows(tmp_catalog)] == [(p, md5(p)) for p in expected]


def test_add_local_files_without_find_uses_the_python_walk(
    mixed_tree: dict[str, list[str]], tmp_path: Path, tmp_catalog: Path
) -> None:
    """With no find on PATH the same files are registered."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("md5sum",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    root = mixed_tree["root"][0]
    result = run_cli("add-local-files", root, ARCHIVE, "--db", str(tmp_catalog), "--create-db",
                     env={"PATH": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in _catalog_rows(tmp_catalog)] == mixed_tree["taken"]


def test_add_local_files_draws_a_progress_bar_on_a_terminal(tmp_path: Path,
                                                            tmp_catalog: Path) -> None:
    """On a terminal, a progress bar counts the files up to the total."""
    for i in range(5):
        aged(make_file(tmp_path / "root", f"16750/f{i}.dat"))
    result, text = run_on_terminal(
        [SUPRSYNC, "add-local-files", str(tmp_path / "root"), ARCHIVE, "--db",
         str(tmp_catalog), "--create-db"], stdout_too=True)
    assert result.returncode == 0
    assert "[" + "#" * 30 + "] 5/5 files" in text
    assert "added 5 files" in text


def test_add_local_files_on_a_file_that_is_no_catalog_fails_in_one_line(tmp_path: Path) -> None:
    """The scan started before the catalog opens does not turn a bad catalog into a trace."""
    aged(make_file(tmp_path / "root", "16750/a.dat"))
    db = tmp_path / "not-a-catalog.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    result = run_cli("add-local-files", str(tmp_path / "root"), ARCHIVE, "--db", str(db))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("suprsync add-local-files: error:"), lines
    assert "Traceback" not in result.stderr


def test_a_failed_batch_leaves_no_rows(tmp_path: Path, tmp_catalog: Path) -> None:
    """The rows of a batch and its timecode-dir rows commit together or not at all."""
    files = [aged(make_file(tmp_path / "root", f"16750/f{i}.dat")) for i in range(3)]
    SupRsyncFilesManager(str(tmp_catalog)).close()
    with sqlite3.connect(tmp_catalog) as conn:  # the timecode-dir insert will fail
        conn.execute("CREATE TRIGGER no_dirs BEFORE INSERT ON timecode_dirs_v0 "
                     "BEGIN SELECT RAISE(ABORT, 'no new timecode dirs'); END")
    manager = SupRsyncFilesManager(str(tmp_catalog))
    try:
        with pytest.raises(Exception, match="no new timecode dirs"):
            add_local_files(manager, str(tmp_path / "root"), ARCHIVE, last_edit=0)
    finally:
        manager.close()
    assert _catalog_rows(tmp_catalog) == []
    assert len(files) == 3


def test_add_local_files_with_a_tilde_catalog_path(tmp_path: Path) -> None:
    """--db=~/x.db names the same catalog for every part of the command: a second run
    adds nothing, and the catalog never registers itself."""
    home = tmp_path / "home"
    home.mkdir()
    data = aged(make_file(home, "16750/a.dat"))
    args = ("add-local-files", str(home), ARCHIVE, "--db=~/catalog.db", "--create-db",
            "--last-edit", "0")
    first = run_cli(*args, env={"HOME": str(home)}, cwd=tmp_path)
    second = run_cli(*args, env={"HOME": str(home)}, cwd=tmp_path)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "added 1 files" in first.stdout and "added 0 files" in second.stdout
    assert [r[0] for r in _catalog_rows(home / "catalog.db")] == [str(data)]


def test_sigterm_stops_add_local_files_and_its_md5sum(tmp_path: Path) -> None:
    """SIGTERM ends the command with status 143 and leaves no md5sum running."""
    root = tmp_path / "root"
    big = root / "16750" / "big.dat"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:  # sparse: minutes of md5, no disk
        f.truncate(200 << 30)
    aged(big)
    proc = subprocess.Popen([SUPRSYNC, "add-local-files", str(root), ARCHIVE, "--db",
                             str(tmp_path / "c.db"), "--create-db"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (hashing := [p for p in descendants(proc.pid) if _is_md5sum(p)]):
            assert proc.poll() is None and time.monotonic() < deadline, "md5sum never started"
            time.sleep(0.05)
        proc.terminate()
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
        proc.wait()
    assert not any(_is_md5sum(p) for p in hashing)
    assert "Traceback" not in proc.stderr.read().decode()


def test_add_local_files_with_a_catalog_name_that_is_not_utf8(tmp_path: Path) -> None:
    """A catalog whose file name is not UTF-8 works, and a second run adds nothing."""
    data = aged(make_file(tmp_path / "root", "16750/a.dat"))
    db = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"cat\xff.db"))
    args = ("add-local-files", str(tmp_path / "root"), ARCHIVE, "--db", db, "--create-db")
    first, second = run_cli(*args), run_cli(*args)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "added 1 files" in first.stdout and "added 0 files" in second.stdout
    assert [r[0] for r in _catalog_rows(Path(db))] == [str(data)]


@pytest.mark.parametrize("lister", ["find", "python"])
def test_add_local_files_says_what_it_skipped_and_why(
    mixed_tree: dict[str, list[str]], tmp_path: Path, tmp_catalog: Path, lister: str
) -> None:
    """The counts of skipped files by reason, as text and as --json, with either lister;
    a second run counts the files registered by the first."""
    root = mixed_tree["root"][0]
    env = None
    if lister == "python":
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "md5sum").symlink_to(shutil.which("md5sum"))
        env = {"PATH": str(bin_dir)}
    args = ("add-local-files", root, ARCHIVE, "--db", str(tmp_catalog), "--create-db")
    first = run_cli(*args, "--json", env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["added"] == len(mixed_tree["taken"])
    assert report["files"] == mixed_tree["taken"]
    assert report["skipped"] == {"modified_recently": 1, "already_registered": 0,
                                 "unreadable": 0, "name_not_utf8": 1,
                                 "not_a_regular_file": 4, "catalog_file": 0}
    second = run_cli(*args, env=env)
    assert second.returncode == 0, second.stderr
    assert "added 0 files" in second.stdout
    assert (f"skipped: 1 modified within the last 60 s (--last-edit); "
            f"{len(mixed_tree['taken'])} already registered; 1 with a name that is not valid "
            "UTF-8; 4 not regular files (symlinks, FIFOs, devices, sockets)") in second.stdout
