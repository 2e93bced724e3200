"""Several destinations per archive: a local directory and the test sshd, on SQLite and
PostgreSQL, through real agents (and the command line)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import (
    ARCHIVE,
    T0,
    Clock,
    host_down,
    make_file,
    managed,
    new_agent,
    ssh_config,
)
from invariants import check_every_destination, check_invariants
from sqlalchemy import select, text

from suprsync import SupRsyncFilesManager
from suprsync.catalog.copies import (
    DestinationConflict,
    Wanted,
    counts,
    default_destination_id,
    register,
    registered,
)
from suprsync.catalog.schema import DestinationCopy, SupRsyncFile, TimecodeDir
from suprsync.catalog.timecode import timecode_at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(catalog_url: str, clock: Clock) -> Iterator[SupRsyncFilesManager]:
    yield from managed(catalog_url, clock)


def ssh_url(sshd, path: Path) -> str:
    return f"ssh://{sshd.destination}:{sshd.port}{path}"


def ssh_access(sshd) -> dict:
    """The --ssh-* settings of the test sshd, for a further destination (no --ssh-host)."""
    cfg = ssh_config(sshd)
    return {"ssh_key": cfg["ssh_key"], "ssh_known_hosts": cfg["ssh_known_hosts"]}


def add_files(manager: SupRsyncFilesManager, folder: Path, n: int, timecode: int = 16750,
              start: int = 0, timestamp: float = T0) -> list[int]:
    ids = []
    for i in range(start, start + n):
        local = make_file(folder, f"f{i}.g3")
        ids.append(manager.add_file(str(local), f"{timecode}/sub/f{i}.g3", ARCHIVE,
                                    timestamp=timestamp).id)
    return ids


def copies_of(manager: SupRsyncFilesManager) -> dict[int, tuple[str | None, bool, bool]]:
    rows = manager.read(lambda s: s.execute(select(
        DestinationCopy.file_id, DestinationCopy.remote_md5sum, DestinationCopy.verified,
        DestinationCopy.lost)).all())
    return {r[0]: (r[1], bool(r[2]), bool(r[3])) for r in rows}


def dest_key(manager: SupRsyncFilesManager, name: str) -> int:
    return next(r.key for r in manager.read(lambda s: registered(s, ARCHIVE)) if r.name == name)


def test_a_file_goes_to_both_destinations_and_is_deleted_only_after_both(
        manager, clock, tmp_path, sshd):
    a, b = tmp_path / "a", tmp_path / "b"
    ids = add_files(manager, tmp_path / "data", 3)
    agent = new_agent(manager, clock, tmp_path, a, delete_local_after=10,
                      more_destinations=(("b", ssh_url(sshd, b)),), **ssh_access(sshd))
    try:
        assert agent.iterate()
        for i in range(3):
            sent = f"16750/sub/f{i}.g3"
            assert (a / sent).read_bytes() == (b / sent).read_bytes()
        # The three files, and the finalization file of their (completed) dir.
        assert all(v[1] for v in copies_of(manager).values()) and len(copies_of(manager)) == 4
        # Not due yet: both copies exist, nothing deleted.
        assert all(os.path.exists(tmp_path / "data" / f"f{i}.g3") for i in range(3))
        # A copy at b vanishes: its pre-delete check fails, so f0 stays and is queued there.
        (b / "16750/sub/f0.g3").unlink()
        clock.advance(60)
        assert agent.iterate()
        assert not (tmp_path / "data/f1.g3").exists() and not (tmp_path / "data/f2.g3").exists()
        assert (tmp_path / "data/f0.g3").exists()
        clock.advance(60)
        agent.iterate()
        assert (b / "16750/sub/f0.g3").exists(), "the requeued copy is sent again"
        clock.advance(60)
        agent.iterate()
        assert not (tmp_path / "data/f0.g3").exists()
        data = agent.session.snapshot()["destinations"]
        assert set(data) == {"b", default_destination_id(str(a))}
        assert data["b"]["files"] == {"verified": 4, "pending": 0, "given_up": 0, "lost": 0}
    finally:
        agent.close()
    check_invariants(manager.db_path, {ARCHIVE: a}, absent_ok=[])
    assert check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2) == 4
    assert len(ids) == 3


def test_a_destination_that_is_down_backs_off_alone_and_catches_up(manager, clock, tmp_path,
                                                                   sshd):
    a, b = tmp_path / "a", tmp_path / "b"
    agent = new_agent(manager, clock, tmp_path, a, delete_local_after=10,
                      more_destinations=(("b", ssh_url(sshd, b)),), **ssh_access(sshd),
                      cmd_timeout=5)
    try:
        with host_down(sshd):
            add_files(manager, tmp_path / "data", 2)
            assert not agent.iterate()
            assert (a / "16750/sub/f0.g3").exists(), "a is not held back"
            out = agent.outlets[1]
            assert out.failures == 1 and out.resume_at > clock.monotonic()
            add_files(manager, tmp_path / "data", 1, start=2)
            clock.advance(1)
            agent.iterate()  # b is waiting out its backoff; a goes on
            assert (a / "16750/sub/f2.g3").exists()
            assert out.counters["skipped_iterations"] >= 1
            clock.advance(60)
            # min-copies defaults to every destination: nothing goes while b has none.
            agent.iterate()
            assert all((tmp_path / "data" / f"f{i}.g3").exists() for i in range(3))
        clock.advance(600)
        assert agent.iterate()
        assert out.failures == 0
        assert all((b / f"16750/sub/f{i}.g3").exists() for i in range(3))
        clock.advance(60)
        agent.iterate()
        assert not any((tmp_path / "data" / f"f{i}.g3").exists() for i in range(3))
    finally:
        agent.close()
    check_invariants(manager.db_path, {ARCHIVE: a})
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2)


def test_min_copies_one_deletes_while_a_destination_is_down_and_it_reports_the_loss(
        manager, clock, tmp_path, sshd):
    a, b = tmp_path / "a", tmp_path / "b"
    agent = new_agent(manager, clock, tmp_path, a, delete_local_after=10, min_copies=1,
                      more_destinations=(("b", ssh_url(sshd, b)),), **ssh_access(sshd),
                      cmd_timeout=5)
    try:
        with host_down(sshd):
            add_files(manager, tmp_path / "data", 2)
            agent.iterate()
            clock.advance(60)
            agent.iterate()
            assert not any((tmp_path / "data" / f"f{i}.g3").exists() for i in range(2))
        clock.advance(600)
        assert agent.iterate(), "files deleted before b had them are no error"
        key = dest_key(manager, "b")
        found = manager.read(lambda s: counts(s, key, 5))
        # The two data files are lost there, so their dir's finalization file (the day
        # is whole at a) is kept from b: downstream there must not take the day as whole.
        assert (found.verified, found.pending, found.lost) == (0, 0, 3)
        assert agent.session.snapshot()["destinations"]["b"]["files"]["lost"] == 3
        assert len(list(a.glob("*/suprsync/*/*_16750_finalized.yaml"))) == 1
        assert not list(b.rglob("*_finalized.yaml"))
    finally:
        agent.close()
    check_invariants(manager.db_path, {ARCHIVE: a})
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 1)


def test_min_copies_two_of_three_deletes_without_the_one_that_is_down(
        manager, clock, tmp_path, sshd):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    agent = new_agent(manager, clock, tmp_path, a, delete_local_after=10, min_copies=2,
                      more_destinations=(("b", ssh_url(sshd, b)), ("c", str(c))),
                      **ssh_access(sshd), cmd_timeout=5)
    try:
        with host_down(sshd):
            add_files(manager, tmp_path / "data", 2)
            agent.iterate()
            clock.advance(60)
            agent.iterate()
            assert not any((tmp_path / "data" / f"f{i}.g3").exists() for i in range(2))
            assert (c / "16750/sub/f1.g3").exists()
    finally:
        agent.close()
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b, "c": c}, 2)


def test_min_copies_one_deletes_what_a_further_destination_holds_while_the_primary_is_down(
        manager, clock, tmp_path, sshd):
    a, b, data = tmp_path / "a", tmp_path / "b", tmp_path / "data"
    agent = new_agent(manager, clock, tmp_path, "", destination=ssh_url(sshd, a),
                      delete_local_after=10, min_copies=1, more_destinations=(("b", str(b)),),
                      **ssh_access(sshd), cmd_timeout=5)
    try:
        with host_down(sshd):
            ids = add_files(manager, data, 2)
            agent.iterate()
            assert (b / "16750/sub/f1.g3").exists()
            clock.advance(60)
            agent.iterate()
            assert not any((data / f"f{i}.g3").exists() for i in range(2)), \
                "verified at b, and one copy is enough"
        rows = manager.read(lambda s: {r.id: (r.remote_md5sum, r.removed is not None)
                                       for r in s.scalars(select(SupRsyncFile))})
        assert all(rows[i] == (None, True) for i in ids), "the primary never had them"
        clock.advance(600)
        agent.iterate()
        assert not (a / "16750/sub/f0.g3").exists()
        dirs = manager.read(lambda s: {t.timecode: (t.synced, t.finalized)
                                       for t in s.scalars(select(TimecodeDir))})
        # The primary can never have the day whole: it is not finalized anywhere.
        assert dirs[16750] == (False, False)
        assert not list(tmp_path.rglob("*_finalized.yaml"))
    finally:
        agent.close()
    gone = [data / f"f{i}.g3" for i in range(2)]
    check_invariants(manager.db_path, {ARCHIVE: a}, absent_ok=gone)
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 1)


def test_min_copies_two_of_three_deletes_without_the_primary_but_every_copy_is_asked(
        manager, clock, tmp_path, sshd):
    a, b, c, data = tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "data"
    agent = new_agent(manager, clock, tmp_path, "", destination=ssh_url(sshd, a),
                      delete_local_after=10, min_copies=2,
                      more_destinations=(("b", str(b)), ("c", str(c))),
                      **ssh_access(sshd), cmd_timeout=5)
    try:
        with host_down(sshd):
            add_files(manager, data, 2)
            agent.iterate()
            # A copy at c vanishes: only b still holds f0, so f0 stays and goes back to c.
            (c / "16750/sub/f0.g3").unlink()
            clock.advance(60)
            agent.iterate()
            assert (data / "f0.g3").exists() and not (data / "f1.g3").exists()
            clock.advance(60)
            agent.iterate()
            clock.advance(60)
            agent.iterate()
            assert not (data / "f0.g3").exists(), "sent to c again, then deleted"
    finally:
        agent.close()
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b, "c": c}, 2)


def test_a_destination_added_later_is_back_filled_from_what_is_still_local(
        manager, clock, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = new_agent(manager, clock, tmp_path, a, delete_local_after=10)
    try:
        add_files(manager, tmp_path / "data", 2, timestamp=T0 - 100)
        first.iterate()
        clock.advance(60)
        first.iterate()
        assert not (tmp_path / "data/f0.g3").exists()
    finally:
        first.close()
    add_files(manager, tmp_path / "data", 2, start=2)
    agent = new_agent(manager, clock, tmp_path, a, more_destinations=(("b", str(b)),))
    try:
        assert agent.iterate()
        assert (b / "16750/sub/f2.g3").exists() and (b / "16750/sub/f3.g3").exists()
        assert not (b / "16750/sub/f0.g3").exists()
        found = agent.session.snapshot()["destinations"]["b"]["files"]
        # Gone before b was added: the two files and their dir's finalization file.
        assert found == {"verified": 2, "pending": 0, "given_up": 0, "lost": 3}
    finally:
        agent.close()
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 1)


def test_a_file_given_the_id_of_a_deleted_newest_row_reaches_every_destination(
        manager, clock, tmp_path):
    """sqlite gives the id of a deleted newest row to the next registration: a file whose
    id the tracking of a further destination has passed already is still sent there."""
    a, b = tmp_path / "a", tmp_path / "b"
    add_files(manager, tmp_path / "data", 1)
    agent = new_agent(manager, clock, tmp_path, a, more_destinations=(("b", str(b)),))
    try:
        assert agent.iterate()
        with manager.engine.begin() as conn:  # another program's newest rows, tracked next
            conn.execute(text(
                "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                "remote_path, timestamp, ignore) VALUES (:l, :m, 'other', :r, :t, :ig)"),
                [{"l": f"/gone/{i}", "m": f"{i:032x}", "r": f"16750/x/{i}.g3", "t": T0,
                  "ig": True}
                 for i in range(3)])
        top = manager.max_file_id()
        clock.advance(60)
        assert agent.iterate()
        with manager.engine.begin() as conn:  # ... and taken back
            conn.execute(text("DELETE FROM supersync_v0 WHERE archive_name = 'other'"))
        # More new files than rows taken back: the highest id is past the bound again.
        new = add_files(manager, tmp_path / "data", 4, start=1)
        if manager.dialect.reuses_ids:
            assert new[0] <= top < new[-1]
        for _ in range(2):
            clock.advance(60)
            assert agent.iterate()
        for i in range(1, 5):
            sent = f"16750/sub/f{i}.g3"
            assert (b / sent).read_bytes() == (a / sent).read_bytes()
        assert all(copies_of(manager)[i][1] for i in new), "verified at b"
    finally:
        agent.close()
    check_invariants(manager.db_path, {ARCHIVE: a}, absent_ok=[])
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2)


def test_a_file_given_the_id_of_a_deleted_row_inherits_nothing_of_it(manager, clock, tmp_path):
    """What suprsync keeps about a file (here its copy at a further destination, marked
    lost) goes with its row: a new file that sqlite gives the same id is sent there."""
    a, b = tmp_path / "a", tmp_path / "b"
    tc = timecode_at(clock())  # today's dir: not finalized, no row of a finalization file
    agent = new_agent(manager, clock, tmp_path, a, more_destinations=(("b", str(b)),))
    try:
        add_files(manager, tmp_path / "data", 1, timecode=tc)
        (old,) = add_files(manager, tmp_path / "data", 1, timecode=tc, start=1)
        assert agent.iterate()
        assert manager.max_file_id() == old
        with manager.engine.begin() as conn:
            conn.execute(text("UPDATE suprsync_copies_v0 SET lost = :t, verified = :f "
                              "WHERE file_id = :i"), {"t": True, "f": False, "i": old})
            conn.execute(text("DELETE FROM supersync_v0 WHERE id = :i"), {"i": old})
        if manager.dialect.reuses_ids:
            assert old not in copies_of(manager)
        (new,) = add_files(manager, tmp_path / "data", 1, timecode=tc, start=2)
        if manager.dialect.reuses_ids:
            assert new == old
        for _ in range(2):
            clock.advance(60)
            assert agent.iterate()
        assert (b / f"{tc}/sub/f2.g3").read_bytes() == (a / f"{tc}/sub/f2.g3").read_bytes()
        assert copies_of(manager)[new][1:] == (True, False)
    finally:
        agent.close()
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2,
                            absent_ok=[a / f"{tc}/sub/f1.g3"])


def test_a_dir_is_synced_when_verified_everywhere_and_its_finalization_file_reaches_both(
        manager, clock, tmp_path, sshd):
    a, b = tmp_path / "a", tmp_path / "b"
    agent = new_agent(manager, clock, tmp_path, a, instance_id="sync-test",
                      more_destinations=(("b", ssh_url(sshd, b)),), **ssh_access(sshd),
                      cmd_timeout=5)
    try:
        with host_down(sshd):
            add_files(manager, tmp_path / "data", 2, timecode=16750)
            add_files(manager, tmp_path / "data", 1, timecode=16751, start=2)
            agent.iterate()
            dirs = manager.read(lambda s: {t.timecode: (t.completed, t.synced, t.finalized)
                                           for t in s.scalars(select(TimecodeDir))})
            assert dirs[16750] == (True, False, False), "b lacks its files: not synced"
        clock.advance(600)
        assert agent.iterate()
        dirs = manager.read(lambda s: {t.timecode: (t.completed, t.synced, t.finalized)
                                       for t in s.scalars(select(TimecodeDir))})
        assert dirs[16750] == (True, True, True)
        for base in (a, b):
            found = list(base.glob("*/suprsync/sync-test/*_16750_finalized.yaml"))
            assert len(found) == 1, base
    finally:
        agent.close()
    check_invariants(manager.db_path, {ARCHIVE: a}, file_root=tmp_path / "srfroot")
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2)


def test_two_agents_one_per_destination_share_the_catalog(manager, clock, tmp_path, sshd,
                                                          catalog_url):
    a, b = tmp_path / "a", tmp_path / "b"
    first = new_agent(manager, clock, tmp_path, a, delete_local_after=10, instance_id="one")
    other = SupRsyncFilesManager(catalog_url, clock=clock)
    second = new_agent(other, clock, tmp_path, "", instance_id="two", destination_id="b",
                       destination=ssh_url(sshd, b), **ssh_access(sshd))
    try:
        assert first.holds_primary and not second.holds_primary
        add_files(manager, tmp_path / "data", 2, timecode=16750)
        add_files(manager, tmp_path / "data", 1, timecode=16751, start=2)
        assert first.iterate()
        clock.advance(60)
        first.iterate()
        # b has nothing yet: min-copies (every destination of the archive) keeps them.
        assert (tmp_path / "data/f0.g3").exists()
        assert not list((tmp_path / "srfroot").rglob("*_finalized.yaml"))
        assert second.iterate()
        assert (b / "16750/sub/f0.g3").exists()
        clock.advance(60)
        first.iterate()
        second.iterate()
        assert not (tmp_path / "data/f0.g3").exists()
        assert len(list((tmp_path / "srfroot").rglob("*_16750_finalized.yaml"))) == 1
        assert not (tmp_path / "srfroot/16750/two").exists(), "only the primary's agent finalizes"
        assert len(list(b.glob("*/suprsync/one/*_16750_finalized.yaml"))) == 1
    finally:
        first.close()
        second.close()
        other.close()
    check_invariants(manager.db_path, {ARCHIVE: a}, file_root=tmp_path / "srfroot")
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2)


# ------------------------------------------------------------------ ids and the primary


def test_destination_records_keep_the_primary_and_refuse_a_guess(manager, clock, caplog):
    def reg(*wanted: Wanted):
        return manager.write(lambda s: register(s, ARCHIVE, list(wanted), clock()))

    first = reg(Wanted("a-1", "/srv/a"))
    assert first[0].primary
    # One unnamed destination at a new URL: the primary moved.
    with caplog.at_level("WARNING", logger="suprsync.catalog.copies"):
        moved = reg(Wanted("a-2", "/srv/a2"))
    assert moved[0].key == first[0].key and moved[0].url == "/srv/a2"
    assert [r.getMessage() for r in caplog.records] == [
        f"destination a-1 of archive {ARCHIVE!r} moves from /srv/a to /srv/a2; agents that "
        "ship the archive to different places must each name theirs with --destination-id"]
    # Two unnamed destinations, none the primary: which is the first would be a guess.
    with pytest.raises(DestinationConflict, match="--destination-id a-1=URL"):
        reg(Wanted("x-1", "/srv/x"), Wanted("y-1", "/srv/y"))
    both = reg(Wanted("a-1", "/srv/a"), Wanted("b", "/srv/b", True))
    assert [r.primary for r in both] == [True, False]
    # A named destination alone is that destination, not the primary.
    alone = reg(Wanted("b", "/srv/b-moved", True))
    assert alone[0].key == both[1].key and not alone[0].primary
    with pytest.raises(DestinationConflict, match="twice"):
        reg(Wanted("b", "/srv/b", True), Wanted("b", "/srv/c", True))


def test_default_ids_are_short_stable_and_differ_by_url():
    one = default_destination_id("ssh://so@host.example:2222/data")
    assert one == default_destination_id("ssh://so@host.example:2222/data")
    assert one.startswith("host.example-") and len(one) <= 47
    assert default_destination_id("/srv/a").startswith("local-")
    assert default_destination_id("/srv/a") != default_destination_id("/srv/b")


# ------------------------------------------------------------------ the command line


def test_run_once_ships_to_every_destination_given(tmp_path):
    db = tmp_path / "cat.db"
    m = SupRsyncFilesManager(str(db))
    local = make_file(tmp_path / "data", "f.g3")
    m.add_file(str(local), "16750/f.g3", ARCHIVE)
    m.close()
    result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--db", str(db),
                     "--suprsync-file-root", str(tmp_path / "root"),
                     "--destination", str(tmp_path / "a"),
                     "--destination-id", f"b={tmp_path / 'b'}", "--min-copies", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a/16750/f.g3").exists() and (tmp_path / "b/16750/f.g3").exists()
    stats = run_cli("stats", "--db", str(db), ARCHIVE, "--json")
    assert stats.returncode == 0, stats.stderr
    dests = {d["id"]: d for d in json.loads(stats.stdout)[ARCHIVE]["destinations"]}
    # The file and its (completed) dir's finalization file.
    assert dests["b"]["verified"] == 2 and dests["b"]["pending"] == 0
    assert sum(d["primary"] for d in dests.values()) == 1
    status = run_cli("status", "--db", str(db), ARCHIVE)
    assert "destination b (" in status.stdout and "2 verified" in status.stdout
    audit = run_cli("audit", "--db", str(db), ARCHIVE, "--destination-id", "b")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    (tmp_path / "b/16750/f.g3").unlink()
    audit = run_cli("audit", "--db", str(db), ARCHIVE, "--destination-id", "b", "--json")
    assert audit.returncode == 1
    assert json.loads(audit.stdout)["counts"]["missing"] == 1
    unknown = run_cli("audit", "--db", str(db), ARCHIVE, "--destination-id", "zz")
    assert unknown.returncode == 2 and "no destination 'zz'" in unknown.stderr


@pytest.mark.parametrize("args, message", [
    (["--destination-id", "b"], "NAME=URL"),
    (["--destination-id=-b=/srv/b"], "destination id"),
    (["--destination-id", "b=/srv/b", "--min-copies", "3"], "more than the 2"),
    (["--destination-id", "b=relative"], "--destination 'relative'"),
])
def test_bad_destination_flags_are_refused_with_a_reason(tmp_path, args, message):
    result = run_cli("run", "--once", "--archive-name", ARCHIVE, "--db", str(tmp_path / "c.db"),
                     "--suprsync-file-root", str(tmp_path / "root"),
                     "--destination", str(tmp_path / "a"), *args)
    assert result.returncode != 0
    assert message in result.stderr


def test_new_local_content_takes_back_the_verification_at_further_destinations(
        manager, clock, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    agent = new_agent(manager, clock, tmp_path, a, more_destinations=(("b", str(b)),))
    try:
        (file_id,) = add_files(manager, tmp_path / "data", 1)
        assert agent.iterate()
        assert copies_of(manager)[file_id][1]
        # The file's content changes, and an operator sends the new content.
        manager.requeue(file_id, local_md5="0" * 32)
        assert not copies_of(manager)[file_id][1], "b's copy holds the old content"
    finally:
        agent.close()


@pytest.mark.parametrize("down", ["b", "primary"])
def test_retention_preview_counts_the_copies_at_every_destination(manager, clock, tmp_path,
                                                                  sshd, down):
    a, b, data = tmp_path / "a", tmp_path / "b", tmp_path / "data"
    if down == "b":  # verified at the primary only
        first, further = str(a), ssh_url(sshd, b)
    else:  # verified at b only
        first, further = ssh_url(sshd, a), str(b)
    agent = new_agent(manager, clock, tmp_path, "", destination=first,
                      delete_local_after=10**9, more_destinations=(("b", further),),
                      **ssh_access(sshd), cmd_timeout=5)
    try:
        with host_down(sshd):
            add_files(manager, data, 2)
            agent.iterate()
    finally:
        agent.close()

    def shown(*extra: str) -> dict:
        done = run_cli("retention", ARCHIVE, "--db", manager.db_path, "--delete-local-after",
                       "10", "--json", *extra)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    every = shown()
    assert every["min_copies"] == 2 and len(every["destinations"]) == 2
    assert every["counts"]["delete"] == 0
    reasons = {k["local_path"]: k["reason"] for k in every["keep"]}
    # Every destination needed: the primary's copy first of all, as the agent sees it.
    why = ("verified on 1 of the 2 destinations, --min-copies is 2" if down == "b"
           else "not verified on the remote yet")
    assert reasons == {str(data / f"f{i}.g3"): why for i in range(2)}
    one = shown("--min-copies", "1")
    assert sorted(d["local_path"] for d in one["delete"]) == [str(data / f"f{i}.g3")
                                                              for i in range(2)]
    text = run_cli("retention", ARCHIVE, "--db", manager.db_path, "--delete-local-after", "10")
    assert "a file goes once verified on 2 of them" in text.stdout, text.stdout
    assert all((data / f"f{i}.g3").exists() for i in range(2)), "a preview deletes nothing"
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2)
