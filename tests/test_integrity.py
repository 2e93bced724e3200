"""Integrity against hostile catalog shapes: collisions, shared local files, symlinks, names.

Each test registers real files through add_file, the CLI or plain SQL, runs real
agents (real rsync, to a local directory and over the test sshd), and ends with
the invariant checker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    closing_agents,
    get_row,
    is_synced,
    manager_fixture,  # noqa: F401 - the manager fixture
    md5,
    new_agent,
    sql,
    ssh_config,
    write_file,
)
from invariants import check_invariants

from suprsync import SupRsyncFile, SupRsyncFilesManager
from suprsync.agent import Agent
from suprsync.catalog.conflicts import list_conflicts

OTHER = "smurf"


@pytest.fixture(params=["local", "ssh"])
def make_agent(request: pytest.FixtureRequest, tmp_path: Path, remote_dir: Path,
               manager: SupRsyncFilesManager, clock: Clock):
    """Agents deleting at once, to remote_dir directly or over the real sshd."""
    ssh = ssh_config(request.getfixturevalue("sshd")) if request.param == "ssh" else {}

    def make(**overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote_dir,
                         **{"delete_local_after": 0, **ssh, **overrides})

    yield from closing_agents(make)


@pytest.fixture
def local_agent(tmp_path: Path, remote_dir: Path, manager: SupRsyncFilesManager, clock: Clock):
    """Agents to remote_dir, deleting at once."""

    def make(**overrides) -> Agent:
        return new_agent(manager, clock, tmp_path, remote_dir,
                         **{"delete_local_after": 0, **overrides})

    yield from closing_agents(make)


def plain_insert(db: Path, local: Path | str, remote: str | bytes, data: bytes,
                 archive: str = ARCHIVE, timestamp: float = 1_699_999_000.0) -> int:
    """A row written by another program with plain SQL."""
    sql(db, "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp) VALUES (?, ?, ?, ?, ?)", (str(local), md5(data), archive, remote,
                                                  timestamp))
    return sql(db, "SELECT max(id) FROM supersync_v0")[0][0]


def register(manager: SupRsyncFilesManager, local: str, remote: str, archive: str,
             **kwargs) -> SupRsyncFile:
    """add_file, registered 10 s ago (so that a delay of 0 makes it due)."""
    return manager.add_file(local, remote, archive, timestamp=manager.clock() - 10, **kwargs)


def conflicts_of(manager: SupRsyncFilesManager) -> list[tuple[int, str, int | None]]:
    return [(c["id"], c["kind"], c["other_id"])
            for c in manager.read(lambda s: list_conflicts(s))]


def check(manager: SupRsyncFilesManager, remote_dir: Path, tmp_path: Path,
          **dests: Path) -> None:
    check_invariants(manager.db_path, {ARCHIVE: remote_dir, **dests},
                     file_root=tmp_path / "srfroot")


# ------------------------------------------------------------ one destination, two rows


@pytest.mark.parametrize("spelling", ["i/x.dat", "i//x.dat", "i/./x.dat", "./i/x.dat"])
def test_second_row_to_a_verified_destination_is_a_conflict_and_keeps_its_file(
        spelling: str, make_agent, manager: SupRsyncFilesManager, tmp_path: Path,
        remote_dir: Path, tmp_catalog: Path, caplog: pytest.LogCaptureFixture) -> None:
    first_data, second_data = os.urandom(4096), os.urandom(4096)
    first = write_file(tmp_path / "local" / "first.dat", first_data)
    first_id = register(manager, str(first), "i/x.dat", ARCHIVE).id
    agent = make_agent()
    assert agent.iterate() is True
    assert is_synced(manager, first_id) and not first.exists()

    second = write_file(tmp_path / "local" / "second.dat", second_data)
    second_id = plain_insert(tmp_catalog, second, spelling, second_data)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert agent.iterate() is True
    assert (remote_dir / "i" / "x.dat").read_bytes() == first_data
    assert second.read_bytes() == second_data
    assert not is_synced(manager, second_id)
    assert conflicts_of(manager) == [(second_id, "collision", first_id)]
    assert caplog.text.count("conflict:") == 1, "logged once, not every iteration"
    assert f"file id {first_id}" in caplog.text and str(second) in caplog.text
    check(manager, remote_dir, tmp_path)


def test_rows_with_the_same_md5_share_one_copy(local_agent, manager: SupRsyncFilesManager,
                                               tmp_path: Path, remote_dir: Path,
                                               tmp_catalog: Path) -> None:
    data = os.urandom(2048)
    a = write_file(tmp_path / "local" / "a.dat", data)
    b = write_file(tmp_path / "local" / "b.dat", data)
    a_id = register(manager, str(a), "i/same.dat", ARCHIVE).id
    b_id = plain_insert(tmp_catalog, b, "i//same.dat", data)
    agent = local_agent()
    assert agent.iterate() is True  # a is sent; b waits for it
    assert is_synced(manager, a_id) and not is_synced(manager, b_id)
    assert agent.iterate() is True  # b is satisfied by a's copy: checked, not sent
    assert is_synced(manager, b_id)
    assert not a.exists() and not b.exists()
    assert conflicts_of(manager) == []
    check(manager, remote_dir, tmp_path)


def test_two_new_rows_to_one_destination_in_one_batch_send_only_the_older(
        local_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path) -> None:
    old_data, new_data = os.urandom(1024), os.urandom(1024)
    old = write_file(tmp_path / "local" / "old.dat", old_data)
    new = write_file(tmp_path / "local" / "new.dat", new_data)
    old_id = register(manager, str(old), "i/one.dat", ARCHIVE).id
    new_id = register(manager, str(new), "i/one.dat", ARCHIVE).id
    agent = local_agent()
    assert agent.iterate() is True
    assert agent.iterate() is True
    assert (remote_dir / "i" / "one.dat").read_bytes() == old_data
    assert is_synced(manager, old_id) and not is_synced(manager, new_id)
    assert new.read_bytes() == new_data
    assert conflicts_of(manager) == [(new_id, "collision", old_id)]
    check(manager, remote_dir, tmp_path)


@pytest.mark.parametrize("first_remote,second_remote", [("i/p", "i/p/child"),
                                                        ("i/p/child", "i/p")])
def test_a_file_and_a_path_below_it_never_shadow_each_other(
        first_remote: str, second_remote: str, make_agent, manager: SupRsyncFilesManager,
        tmp_path: Path, remote_dir: Path) -> None:
    one, two = os.urandom(512), os.urandom(512)
    first = write_file(tmp_path / "local" / "first", one)
    first_id = register(manager, str(first), first_remote, ARCHIVE).id
    agent = make_agent()
    assert agent.iterate() is True
    assert is_synced(manager, first_id)
    second = write_file(tmp_path / "local" / "second", two)
    second_id = register(manager, str(second), second_remote, ARCHIVE).id
    assert agent.iterate() is True
    assert (remote_dir / first_remote).read_bytes() == one
    assert second.read_bytes() == two
    assert conflicts_of(manager) == [(second_id, "collision", first_id)]
    check(manager, remote_dir, tmp_path)


def test_conflicts_are_shown_by_status_stats_and_audit(
        local_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        tmp_catalog: Path) -> None:
    a = write_file(tmp_path / "local" / "a.dat", b"A" * 100)
    b = write_file(tmp_path / "local" / "b.dat", b"B" * 100)
    a_id = register(manager, str(a), "i/c.dat", ARCHIVE).id
    agent = local_agent()
    agent.iterate()
    b_id = register(manager, str(b), "i/c.dat", ARCHIVE).id
    agent.iterate()
    status = json.loads(run_cli("status", "--db", str(tmp_catalog), "--json").stdout)
    assert status[ARCHIVE]["conflicts"] == 1
    stats = json.loads(run_cli("stats", ARCHIVE, "--db", str(tmp_catalog), "--json").stdout)
    assert [(c["id"], c["other_id"]) for c in stats[ARCHIVE]["conflicts"]] == [(b_id, a_id)]
    audit = run_cli("audit", ARCHIVE, "--db", str(tmp_catalog), "--remote-basedir",
                    str(remote_dir), "--json")
    report = json.loads(audit.stdout)
    assert [c["id"] for c in report["files"]["conflict"]] == [b_id]
    text = run_cli("status", "--db", str(tmp_catalog)).stdout
    assert "conflict" in text
    check(manager, remote_dir, tmp_path)


# ------------------------------------------------------------- resolving a conflict


def test_resolve_keep_remote_and_send_new(local_agent, manager: SupRsyncFilesManager,
                                          tmp_path: Path, remote_dir: Path,
                                          tmp_catalog: Path) -> None:
    a_data, b_data = b"A" * 300, b"B" * 300
    a = write_file(tmp_path / "local" / "a.dat", a_data)
    a_id = register(manager, str(a), "i/r.dat", ARCHIVE).id
    agent = local_agent()
    agent.iterate()
    b = write_file(tmp_path / "local" / "b.dat", b_data)
    b_id = register(manager, str(b), "i/r.dat", ARCHIVE).id
    agent.iterate()
    assert conflicts_of(manager) == [(b_id, "collision", a_id)]

    done = run_cli("resolve", str(b), "--send-new", "--db", str(tmp_catalog))
    assert done.returncode == 0, done.stderr
    assert f"superseded: file id {a_id}" in done.stdout
    agent.iterate()
    assert (remote_dir / "i" / "r.dat").read_bytes() == b_data
    assert is_synced(manager, b_id) and not is_synced(manager, a_id)
    assert get_row(manager, a_id).ignore
    assert conflicts_of(manager) == []

    c = write_file(tmp_path / "local" / "c.dat", b"C" * 300)
    c_id = register(manager, str(c), "i/r.dat", ARCHIVE).id
    agent.iterate()
    assert conflicts_of(manager) == [(c_id, "collision", b_id)]
    kept = run_cli("resolve", str(c), "--keep-remote", "--db", str(tmp_catalog))
    assert kept.returncode == 0, kept.stderr
    agent.iterate()
    assert (remote_dir / "i" / "r.dat").read_bytes() == b_data
    assert get_row(manager, c_id).ignore and c.exists()
    assert conflicts_of(manager) == []
    missing = run_cli("resolve", str(c), "--keep-remote", "--db", str(tmp_catalog))
    assert missing.returncode == 1 and "no conflict recorded" in missing.stdout
    check(manager, remote_dir, tmp_path, )


def test_resolve_send_new_after_a_local_change(local_agent, manager: SupRsyncFilesManager,
                                               clock: Clock, tmp_path: Path, remote_dir: Path,
                                               tmp_catalog: Path) -> None:
    old, new = os.urandom(2000), os.urandom(1000)
    path = write_file(tmp_path / "local" / "n.dat", old)
    file_id = register(manager, str(path), "i/n.dat", ARCHIVE).id
    agent = local_agent(delete_local_after=100)
    agent.iterate()
    clock.advance(200)
    write_file(path, new, mtime=clock() - 5)
    agent.iterate()
    assert conflicts_of(manager) == [(file_id, "changed", None)]
    assert (remote_dir / "i" / "n.dat").read_bytes() == old
    assert run_cli("resolve", str(path), "--send-new", "--db", str(tmp_catalog)).returncode == 0
    agent.iterate()  # sent
    assert (remote_dir / "i" / "n.dat").read_bytes() == new
    assert get_row(manager, file_id).local_md5sum == md5(new)
    agent.iterate()
    assert not path.exists()
    check(manager, remote_dir, tmp_path)


def test_recheck_of_a_verified_file_that_changed_records_a_conflict(
        local_agent, manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path,
        remote_dir: Path, tmp_catalog: Path) -> None:
    old = os.urandom(500)
    path = write_file(tmp_path / "local" / "k.dat", old)
    file_id = register(manager, str(path), "i/k.dat", ARCHIVE).id
    agent = local_agent(delete_local_after=None)
    agent.iterate()
    write_file(path, old[:10], mtime=clock() + 5)
    out = run_cli("recheck", str(path), "--db", str(tmp_catalog))
    assert "conflict" in out.stdout
    agent.iterate()
    assert (remote_dir / "i" / "k.dat").read_bytes() == old
    assert conflicts_of(manager) == [(file_id, "changed", None)]
    check(manager, remote_dir, tmp_path)


# ----------------------------------------------------------- one local file, many rows


def test_file_shared_by_two_archives_waits_for_both(
        manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path, remote_dir: Path) -> None:
    data = os.urandom(3000)
    path = write_file(tmp_path / "local" / "shared.dat", data)
    a_id = register(manager, str(path), "i/shared.dat", ARCHIVE).id
    b_id = register(manager, str(path), "j/shared.dat", OTHER).id
    other_remote = tmp_path / "remote-other"
    first = new_agent(manager, clock, tmp_path, remote_dir, delete_local_after=0)
    second = new_agent(manager, clock, tmp_path, other_remote, archive_name=OTHER,
                       delete_local_after=50)
    try:
        first.iterate()
        first.iterate()
        assert is_synced(manager, a_id) and path.exists(), "smurf still needs it"
        second.iterate()  # verified there, but too young for smurf's rule
        assert is_synced(manager, b_id) and path.exists()
        first.iterate()
        assert path.exists(), "smurf's published rule says 50 s"
        clock.advance(60)
        first.iterate()
        assert not path.exists()
        assert get_row(manager, a_id).removed == clock()
        assert get_row(manager, b_id).removed == clock()
    finally:
        first.close()
        second.close()
    check(manager, remote_dir, tmp_path, **{OTHER: other_remote})


def test_file_of_an_archive_whose_agent_never_ran_is_kept(
        local_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        tmp_catalog: Path) -> None:
    data = os.urandom(300)
    path = write_file(tmp_path / "local" / "s.dat", data)
    register(manager, str(path), "i/s.dat", ARCHIVE)
    other = plain_insert(tmp_catalog, path, "j/s.dat", data, archive=OTHER)
    sql(tmp_catalog, "UPDATE supersync_v0 SET remote_md5sum = local_md5sum WHERE id = ?",
        (other,))
    agent = local_agent()
    agent.iterate()
    agent.iterate()
    assert path.exists(), "no rule of smurf is known"
    check(manager, remote_dir, tmp_path)


def test_two_rows_of_one_archive_for_one_file_both_verified_before_deletion(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path) -> None:
    data = os.urandom(1500)
    path = write_file(tmp_path / "local" / "twice.dat", data)
    a_id = register(manager, str(path), "i/one.dat", ARCHIVE).id
    b_id = register(manager, str(path), "i/two.dat", ARCHIVE).id
    agent = make_agent(files_per_batch=1)
    agent.iterate()
    assert is_synced(manager, a_id) and not is_synced(manager, b_id)
    assert path.exists()
    agent.iterate()
    agent.iterate()
    assert is_synced(manager, b_id) and not path.exists()
    for name in ("one.dat", "two.dat"):
        assert (remote_dir / "i" / name).read_bytes() == data
    check(manager, remote_dir, tmp_path)


def test_ignored_and_undeletable_sharers(local_agent, manager: SupRsyncFilesManager,
                                         tmp_path: Path, remote_dir: Path,
                                         tmp_catalog: Path) -> None:
    """An ignored row does not need the file; a row with deletable false keeps it."""
    path = write_file(tmp_path / "local" / "d.dat", os.urandom(100))
    register(manager, str(path), "i/d1.dat", ARCHIVE)
    ignored = register(manager, str(path), "i/d2.dat", ARCHIVE).id
    sql(tmp_catalog, "UPDATE supersync_v0 SET ignore = 1 WHERE id = ?", (ignored,))
    agent = local_agent()
    agent.iterate()
    assert not path.exists()

    kept = write_file(tmp_path / "local" / "k.dat", os.urandom(100))
    register(manager, str(kept), "i/k1.dat", ARCHIVE)
    register(manager, str(kept), "i/k2.dat", ARCHIVE, deletable=False)
    agent.iterate()
    agent.iterate()
    assert kept.exists()
    check(manager, remote_dir, tmp_path)


# ---------------------------------------------------------------------- symlinks


def test_a_local_file_replaced_by_a_symlink_sends_nothing_of_the_target(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    secret = write_file(tmp_path / "secret" / "shadow", b"root:secret-hash:19000::::::\n")
    path = write_file(tmp_path / "local" / "data.g3", os.urandom(200))
    file_id = register(manager, str(path), "i/data.g3", ARCHIVE).id
    path.unlink()
    path.symlink_to(secret)
    agent = make_agent()
    with caplog.at_level(logging.ERROR):
        agent.iterate()
    assert not (remote_dir / "i" / "data.g3").exists()
    assert get_row(manager, file_id).failed_copy_attempts == 1
    assert "symbolic link" in caplog.text
    assert path.is_symlink() and secret.exists()
    check(manager, remote_dir, tmp_path)


def test_a_directory_replaced_by_a_symlink_is_not_read_from(
        local_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    write_file(tmp_path / "secret" / "day" / "f.g3", b"secret")
    folder = tmp_path / "local" / "day"
    path = write_file(folder / "f.g3", b"data")
    write_file(folder / "g.g3", b"more")
    first = register(manager, str(folder / "g.g3"), "i/g.g3", ARCHIVE).id
    agent = local_agent(delete_local_after=None)
    agent.iterate()  # the dir is seen: it resolves to itself
    assert is_synced(manager, first)
    file_id = register(manager, str(path), "i/f.g3", ARCHIVE).id
    os.rename(folder, tmp_path / "local" / "day-moved")
    folder.symlink_to(tmp_path / "secret" / "day")
    with caplog.at_level(logging.ERROR):
        agent.iterate()
    assert not (remote_dir / "i" / "f.g3").exists()
    assert get_row(manager, file_id).failed_copy_attempts == 1
    assert "through a symbolic link" in caplog.text
    check(manager, remote_dir, tmp_path)


def test_add_refuses_a_symlink(manager: SupRsyncFilesManager, tmp_path: Path) -> None:
    target = write_file(tmp_path / "t.dat", b"x")
    link = tmp_path / "l.dat"
    link.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        manager.add_file(str(link), "i/l.dat", ARCHIVE)


# ---------------------------------------------------------------------- names


NAMES = ["-", "-x", "--", "...", ".-.", "-.-", "new\nline", "back\\slash", "\\", " lead",
         "#hash", ";semi"]


def test_every_destination_name_verifies(make_agent, manager: SupRsyncFilesManager,
                                         tmp_path: Path, remote_dir: Path) -> None:
    ids = {}
    for n, name in enumerate(NAMES):
        data = b"" if n % 3 == 0 else os.urandom(64)
        path = write_file(tmp_path / "local" / f"f{n}", data)
        ids[name] = (register(manager, str(path), f"i/{name}", ARCHIVE).id, data)
        top = write_file(tmp_path / "local" / f"t{n}", data)
        ids["top:" + name] = (register(manager, str(top), name, ARCHIVE).id, data)
    agent = make_agent()
    assert agent.iterate() is True
    for name, (file_id, data) in ids.items():
        remote = name.removeprefix("top:") if name.startswith("top:") else f"i/{name}"
        assert is_synced(manager, file_id), name
        assert (remote_dir / remote).read_bytes() == data, name
    check(manager, remote_dir, tmp_path)


def test_empty_file_missing_after_rsync_never_verifies(
        make_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path) -> None:
    """A directory in the way: rsync cannot write the file, so nothing verifies it."""
    path = write_file(tmp_path / "local" / "empty", b"")
    file_id = register(manager, str(path), "i/-", ARCHIVE).id
    (remote_dir / "i" / "-" / "sub").mkdir(parents=True)
    agent = make_agent()
    agent.iterate()
    assert not is_synced(manager, file_id)
    assert path.exists()
    check(manager, remote_dir, tmp_path)


def test_a_directory_swapped_for_a_symlink_before_the_agent_first_saw_it(
        local_agent, manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path,
        tmp_catalog: Path) -> None:
    """A row another program wrote: a symlink on its way made after its registration is
    refused (nothing sent, nothing deleted through it); one older than it is fine."""
    secret = write_file(tmp_path / "secret" / "d" / "f", b"outside bytes")
    folder = tmp_path / "local" / "d"
    data = b"registered bytes"
    write_file(folder / "f", data)
    swapped = plain_insert(tmp_catalog, folder / "f", "i/f", data)
    os.rename(folder, tmp_path / "local" / "d-moved")
    folder.symlink_to(secret.parent)

    real = write_file(tmp_path / "mnt" / "e" / "g", b"behind an old link")
    (tmp_path / "local" / "e").symlink_to(real.parent)
    linked = plain_insert(tmp_catalog, tmp_path / "local" / "e" / "g", "i/g",
                          b"behind an old link", timestamp=time.time() + 5)
    agent = local_agent()
    agent.iterate()
    agent.iterate()
    assert not (remote_dir / "i" / "f").exists()
    assert secret.read_bytes() == b"outside bytes"
    assert get_row(manager, swapped).failed_copy_attempts == 2
    assert is_synced(manager, linked)
    check(manager, remote_dir, tmp_path)
