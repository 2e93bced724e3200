"""The invariant checker itself: each rule fires on a hand-made catalog that breaks it
and stays quiet on one that keeps it; poison rows never crash it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from helpers import md5
from invariants import (
    MAX_FINALIZATION_FILES,
    check_every_destination,
    check_invariants,
    snapshot_fence,
)
from sqlalchemy import create_engine, text

from suprsync import SupRsyncFilesManager
from suprsync.catalog.settings import FILES_TABLE

ARCH = "arch"
COLS = ("local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
        "remote_md5sum", "ignore")


class World:
    """A catalog, a local tree and one destination under tmp_path, filled by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.db = tmp_path / "catalog.db"
        # The files table as a program without NOT NULL constraints would create it.
        conn = sqlite3.connect(self.db)
        conn.execute(f"CREATE TABLE {FILES_TABLE} (id INTEGER PRIMARY KEY, "
                     "local_path VARCHAR, local_md5sum VARCHAR, archive_name VARCHAR, "
                     "remote_path VARCHAR, timestamp FLOAT, remote_md5sum VARCHAR, "
                     "copied FLOAT, removed FLOAT, failed_copy_attempts INTEGER, "
                     "deletable BOOLEAN, \"ignore\" BOOLEAN)")
        conn.close()
        self.local = tmp_path / "local"
        self.dest = tmp_path / "remote" / ARCH
        self.local.mkdir()
        self.dest.mkdir(parents=True)

    def local_file(self, name: str, data: bytes) -> str:
        path = self.local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def remote_file(self, remote: str, data: bytes) -> Path:
        path = self.dest / remote
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def row(self, **values: object) -> int:
        """Insert a row with plain SQL; unspecified columns are NULL (or the defaults)."""
        values.setdefault("timestamp", 1.0)
        conn = sqlite3.connect(self.db)
        try:
            names = [c for c in COLS if c in values] + [c for c in values if c not in COLS]
            cur = conn.execute(
                f"INSERT INTO {FILES_TABLE} ({', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)})"
                f" VALUES ({', '.join('?' * len(names))})", [values[n] for n in names])
            conn.commit()
            return int(cur.lastrowid)
        finally:
            conn.close()

    def shipped(self, name: str, data: bytes, verified: bool = True, remote: str | None = None,
                keep_local: bool = False) -> int:
        """A file copied to the destination; its local copy deleted unless keep_local."""
        local = self.local_file(name, data)
        remote = remote or f"16750/{name}"
        self.remote_file(remote, data)
        if not keep_local:
            os.remove(local)
        return self.row(local_path=local, local_md5sum=md5(data), archive_name=ARCH,
                        remote_path=remote, remote_md5sum=md5(data) if verified else None)

    def check(self, **kwargs: object):
        return check_invariants(self.db, {ARCH: self.dest}, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def fails(world: World, *fragments: str, **kwargs: object) -> str:
    with pytest.raises(AssertionError) as info:
        world.check(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- 1. no data lost


def test_clean_catalog_passes_and_reports_what_it_checked(world: World) -> None:
    world.shipped("a", b"aaa")
    world.shipped("b", b"bbb", keep_local=True)
    local = world.local_file("c", b"ccc")
    world.row(local_path=local, local_md5sum=md5(b"ccc"), archive_name=ARCH,
              remote_path="16750/c")
    report = world.check()
    assert (report.rows, report.verified_checked, report.gone_checked) == (3, 2, 1)


def test_gone_local_file_without_a_remote_copy_is_a_loss(world: World) -> None:
    local = world.local_file("a", b"aaa")
    file_id = world.row(local_path=local, local_md5sum=md5(b"aaa"), archive_name=ARCH,
                        remote_path="16750/a")
    world.check()
    os.remove(local)
    fails(world, "LOST", f"file id {file_id}", local, "does not exist")


def test_gone_local_file_with_a_wrong_remote_copy_is_a_loss(world: World) -> None:
    file_id = world.shipped("a", b"aaa", verified=False)
    world.check()
    world.remote_file("16750/a", b"not a")
    fails(world, "LOST", f"file id {file_id}", f"holds md5 {md5(b'not a')}")


def test_a_second_row_of_the_same_local_file_must_have_its_copy_too(world: World) -> None:
    world.shipped("a", b"aaa")
    second = world.row(local_path=str(world.local / "a"), local_md5sum=md5(b"aaa"),
                       archive_name=ARCH, remote_path="16750/other")
    fails(world, "LOST", f"file id {second}", "16750/other")
    world.remote_file("16750/other", b"aaa")
    world.check()


def test_gone_file_of_a_row_whose_remote_path_cannot_be_shipped_is_a_loss(world: World) -> None:
    world.shipped("a", b"aaa")
    bad = world.row(local_path=str(world.local / "a"), local_md5sum=md5(b"aaa"),
                    archive_name=ARCH, remote_path="../escape")
    fails(world, "LOST", f"file id {bad}", "does not normalize")


def test_gone_file_of_a_row_without_md5_is_a_loss(world: World) -> None:
    world.shipped("a", b"aaa")
    bad = world.row(local_path=str(world.local / "a"), archive_name=ARCH,
                    remote_path="16750/a")
    fails(world, "LOST", f"file id {bad}", "no usable md5")


def test_ignored_rows_unknown_archives_and_absent_ok_paths_are_not_losses(world: World
                                                                          ) -> None:
    gone = str(world.local / "never-written")
    world.row(local_path=gone, local_md5sum=md5(b"x"), archive_name=ARCH,
              remote_path="16750/x", ignore=1)
    world.row(local_path=gone, local_md5sum=md5(b"x"), archive_name="elsewhere",
              remote_path="16750/x")
    report = world.check()
    assert report.unknown_archive == 1
    other = str(world.local / "removed-by-the-test")
    world.row(local_path=other, local_md5sum=md5(b"y"), archive_name=ARCH,
              remote_path="16750/y")
    fails(world, "LOST", other)
    world.check(absent_ok=[other])


def test_ignore_stored_as_ambiguous_text_does_not_exempt_a_row(world: World) -> None:
    gone = str(world.local / "gone")
    world.row(local_path=gone, local_md5sum=md5(b"x"), archive_name=ARCH,
              remote_path="16750/x", ignore="yes")
    fails(world, "LOST", gone)
    conn = sqlite3.connect(world.db)
    conn.execute(f"UPDATE {FILES_TABLE} SET \"ignore\" = '1'")
    conn.commit()
    conn.close()
    world.check()


# ---------------------------------------------------------------- 2. no false verification


def test_verified_row_needs_its_md5_at_the_destination(world: World) -> None:
    file_id = world.shipped("a", b"aaa", keep_local=True)
    world.check()
    world.remote_file("16750/a", b"rot")
    fails(world, f"file id {file_id}", "reads verified", f"holds md5 {md5(b'rot')}")
    os.remove(world.dest / "16750" / "a")
    fails(world, "reads verified", "does not exist")


def test_verified_row_on_a_symlink_or_through_one_fails(world: World, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a").write_bytes(b"aaa")
    world.row(local_path=world.local_file("a", b"aaa"), local_md5sum=md5(b"aaa"),
              archive_name=ARCH, remote_path="16750/a", remote_md5sum=md5(b"aaa"))
    (world.dest / "16750").mkdir()
    (world.dest / "16750" / "a").symlink_to(outside / "a")
    fails(world, "reads verified", "is a symlink")
    (world.dest / "16750" / "a").unlink()
    (world.dest / "16750").rmdir()
    (world.dest / "16750").symlink_to(outside)
    fails(world, "reads verified", f"{str(world.dest / '16750')!r} is a symlink")


def test_verified_row_whose_destination_is_a_directory_fails(world: World) -> None:
    world.row(local_path=world.local_file("a", b"aaa"), local_md5sum=md5(b"aaa"),
              archive_name=ARCH, remote_path="16750/a", remote_md5sum=md5(b"aaa"))
    (world.dest / "16750" / "a").mkdir(parents=True)
    fails(world, "is not a regular file")


def test_verified_row_is_checked_at_its_normalized_path(world: World) -> None:
    world.remote_file("16750/sub/a", b"aaa")
    world.row(local_path=world.local_file("a", b"aaa"), local_md5sum=md5(b"aaa"),
              archive_name=ARCH, remote_path="16750//./sub/a", remote_md5sum=md5(b"aaa"))
    assert world.check().verified_checked == 1


@pytest.mark.parametrize("remote", ["../a", "/abs", "", "16750/", ".", "a/../../b",
                                    b"16750/\xff", "a\x00b"])
def test_row_whose_remote_path_does_not_normalize_must_not_read_verified(
        world: World, remote: object) -> None:
    world.remote_file("a", b"aaa")
    file_id = world.row(local_path=world.local_file("a", b"aaa"), local_md5sum=md5(b"aaa"),
                        archive_name=ARCH, remote_path=remote, remote_md5sum=md5(b"aaa"))
    fails(world, f"file id {file_id}", "does not normalize")


def test_row_without_archive_must_not_read_verified(world: World) -> None:
    world.row(local_path=world.local_file("a", b"aaa"), local_md5sum=md5(b"aaa"),
              remote_path="16750/a", remote_md5sum=md5(b"aaa"))
    fails(world, "has no archive")


# ---------------------------------------------------------------- poison rows


def test_poison_rows_never_crash_the_checker(world: World) -> None:
    present = world.local_file("p", b"ppp")
    world.row(local_path=None, local_md5sum=None, archive_name=None, remote_path=None,
              timestamp=None)
    world.row(local_path=b"/nowhere/\xff\xfe", local_md5sum=b"\xff", archive_name=b"\xfe",
              remote_path=b"\xff/x", timestamp=float("nan"))
    world.row(local_path=present, local_md5sum=12345, archive_name=ARCH,
              remote_path=12345, timestamp="soon", remote_md5sum="54321", ignore="maybe")
    world.row(local_path=present, local_md5sum=md5(b"ppp"), archive_name=ARCH,
              remote_path="16750/p", timestamp=-1e300, ignore=b"\xff")
    world.row(local_path="/with\x00nul", local_md5sum=md5(b"n"), archive_name=ARCH,
              remote_path="16750/n", timestamp=1e308)
    report = world.check(absent_ok=["/nowhere/" + b"\xff\xfe".decode("utf-8",
                                                                   "surrogateescape")])
    assert report.rows == 5
    assert report.verified_checked == 0


def test_poison_row_that_reads_verified_is_reported(world: World) -> None:
    file_id = world.row(local_path=b"/nowhere/\xff", local_md5sum=b"\xff\xfe",
                        archive_name=ARCH, remote_path="16750/p", remote_md5sum=b"\xff\xfe")
    message = fails(world, f"file id {file_id}", "reads verified")
    assert "\\udcff" in message  # the path is shown with the undecodable byte escaped


def test_poison_row_whose_non_utf8_local_file_is_gone_is_a_loss(world: World) -> None:
    name = os.fsdecode(b"\xffname")
    world.local_file(name, b"x")
    local = os.fsencode(str(world.local / name))
    world.row(local_path=local, local_md5sum=md5(b"x"), archive_name=ARCH,
              remote_path="16750/x")
    world.check()
    os.remove(world.local / name)
    fails(world, "LOST")
    world.remote_file("16750/x", b"x")
    world.check()


def test_missing_catalog_or_table_has_no_rows(tmp_path: Path) -> None:
    assert check_invariants(tmp_path / "none.db", {}).rows == 0
    sqlite3.connect(tmp_path / "empty.db").close()
    assert check_invariants(tmp_path / "empty.db", {}).rows == 0


# ---------------------------------------------------------------- 3. the fence


def test_fence_catches_files_written_outside_the_base_dirs(world: World, tmp_path: Path
                                                          ) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (tmp_path / "keep").mkdir()
    fence = snapshot_fence(tmp_path, [world.local, world.dest])
    world.shipped("a", b"aaa")
    (world.dest / "new-dir").mkdir()
    world.check(fence=fence, local_roots=[world.local])

    (tmp_path / "remote" / "sibling").write_bytes(b"x")
    fails(world, "sibling", "was created", fence=fence)
    (tmp_path / "remote" / "sibling").unlink()
    secret.write_bytes(b"SECRET")
    fails(world, "secret", "changed", fence=fence)
    secret.unlink()
    fails(world, "secret", "disappeared", fence=fence)
    secret.symlink_to(world.dest)
    fails(world, "secret", "changed", fence=fence)


def test_fence_allows_the_dirs_leading_to_a_new_base_dir(tmp_path: Path) -> None:
    fence = snapshot_fence(tmp_path, [])
    dest = tmp_path / "deep" / "remote" / ARCH
    dest.mkdir(parents=True)
    (dest / "f").write_bytes(b"f")
    check_invariants(tmp_path / "none.db", {ARCH: dest}, fence=fence)
    (dest.parent / "beside").write_bytes(b"b")
    with pytest.raises(AssertionError, match="beside.*was created"):
        check_invariants(tmp_path / "none.db", {ARCH: dest}, fence=fence)


def test_fence_catches_a_file_written_outside_through_a_symlinked_local_tree(
        world: World, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    fence = snapshot_fence(tmp_path, [world.local, world.dest])
    (tmp_path / "elsewhere" / "f").write_bytes(b"f")
    fails(world, "elsewhere", fence=fence)


# ---------------------------------------------------------------- 4. finalization files


def final(folder: Path, now: int, archive: str, timecode: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now}_{archive}_{timecode}_finalized.yaml"
    path.write_text(f"timecode: {timecode}\n")
    return path


def test_one_finalization_file_per_archive_timecode_and_instance(world: World, tmp_path: Path
                                                                 ) -> None:
    assert MAX_FINALIZATION_FILES == 1
    root = tmp_path / "srf"
    final(root / "17001" / "inst", 1700100000, ARCH, 16750)
    final(root / "17001" / "inst", 1700100001, ARCH, 16751)
    final(root / "17001" / "inst", 1700100002, "other_arch", 16750)
    final(root / "17001" / "inst2", 1700100003, ARCH, 16750)
    final(world.dest / "17001" / "suprsync" / "inst", 1700100000, ARCH, 16750)
    world.check(file_root=root)

    final(root / "17002" / "inst", 1700200000, ARCH, 16750)
    fails(world, "2 finalization files", "'arch', timecode 16750, instance 'inst'",
          file_root=root)
    world.check(file_root=root, instance_ids=["inst2"])


def test_two_finalization_files_of_a_dir_in_the_destination_fail(world: World) -> None:
    final(world.dest / "17001" / "suprsync" / "inst", 1700100000, ARCH, 16750)
    final(world.dest / "17001" / "suprsync" / "inst", 1700100005, ARCH, 16750)
    fails(world, "2 finalization files", "destination")
    (world.dest / "17001" / "suprsync" / "inst" / "1700100005_other_16750_finalized.yaml"
     ).write_text("")
    message = fails(world)
    assert "'other'" not in message  # another archive's files in this base dir are not its


def test_archive_names_with_underscores_and_digits_are_parsed(world: World, tmp_path: Path
                                                             ) -> None:
    root = tmp_path / "srf"
    final(root / "17001" / "i", 1, "a_12345", 16750)
    final(root / "17001" / "i", 2, "a", 12345)
    world.check(file_root=root)
    final(root / "17001" / "i", 3, "a_12345", 16750)
    fails(world, "'a_12345', timecode 16750", file_root=root)


# ---------------------------------------------------------------- PostgreSQL


def test_a_finalization_file_at_a_further_destination_needs_its_whole_dir_there(
        world: World, tmp_path: Path) -> None:
    b = tmp_path / "b"
    data = b"day 16750"
    world.row(local_path=world.local_file("x.g3", data), local_md5sum=md5(data),
              archive_name=ARCH, remote_path="16750/sub/x.g3", remote_md5sum=md5(data))
    world.remote_file("16750/sub/x.g3", data)
    yaml = final(b / "16751" / "suprsync" / "inst", 1675100000, ARCH, 16750)
    world.row(local_path=world.local_file("fin.yaml", yaml.read_bytes()),
              local_md5sum=md5(yaml.read_bytes()), archive_name=ARCH,
              remote_path="16751/suprsync/inst/1675100000_arch_16750_finalized.yaml")
    with pytest.raises(AssertionError, match="FALSE COMPLETION: destination b holds"):
        check_every_destination(world.db, ARCH, world.dest, {"b": b}, 1)
    (b / "16750/sub").mkdir(parents=True)
    (b / "16750/sub/x.g3").write_bytes(b"other bytes")
    with pytest.raises(AssertionError, match="FALSE COMPLETION"):
        check_every_destination(world.db, ARCH, world.dest, {"b": b}, 1)
    (b / "16750/sub/x.g3").write_bytes(data)
    check_every_destination(world.db, ARCH, world.dest, {"b": b}, 1)


def test_postgresql_catalog_by_url(pg, tmp_path: Path) -> None:
    url = "postgresql://" + pg.create_database().split("://", 1)[1]
    SupRsyncFilesManager(url).close()
    dest = tmp_path / "remote"
    (dest / "16750").mkdir(parents=True)
    (dest / "16750" / "a").write_bytes(b"aaa")
    engine = create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    with engine.begin() as conn:
        conn.execute(text(
            f"INSERT INTO {FILES_TABLE} (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, remote_md5sum) VALUES ('/gone/a', :m, :a, '16750/a', 1, :m), "
            "('/gone/b', :m, :a, '16750/b', 1, :m)"), {"m": md5(b"aaa"), "a": ARCH})
    engine.dispose()
    with pytest.raises(AssertionError, match="(?s)16750/b.*reads verified.*LOST") as info:
        check_invariants(url, {ARCH: dest})
    assert "'/gone/a'" not in str(info.value)
