"""Values in the destinations' own tables that suprsync never writes (a hand-edited or
damaged catalog): the agent neither crashes nor stops shipping to a destination, and
deletes a local file only once every destination holds it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ARCHIVE, T0, Clock, make_file, managed, new_agent
from invariants import check_every_destination, check_invariants
from sqlalchemy import text

from suprsync import SupRsyncFilesManager
from suprsync.catalog.copies import registered

DESTS = "suprsync_destinations_v0"
COPIES = "suprsync_copies_v0"
#: Today's timecode dir on the test clock: nothing is finalized on the way.
TC = int(T0 // 100_000)

#: Damage any catalog can hold (the column types of PostgreSQL allow it too).
ANY_BACKEND = {
    "two primaries": f"UPDATE {DESTS} SET is_primary = TRUE",
    "no primary": f"UPDATE {DESTS} SET is_primary = FALSE",
    "tracked beyond the last id": f"UPDATE {DESTS} SET tracked_up_to = 2147483647 "
                                  "WHERE is_primary = FALSE",
    "tracked below zero": f"UPDATE {DESTS} SET tracked_up_to = -5 WHERE is_primary = FALSE",
    "copy row of no file": f"INSERT INTO {COPIES} (dest, file_id, failed_copy_attempts, "
                           f"verified, lost) VALUES (9999, 999999, 0, TRUE, FALSE)",
    "verified with another md5": f"UPDATE {COPIES} SET verified = TRUE, "
                                 "remote_md5sum = '0123456789abcdef0123456789abcdef'",
}
#: Values only sqlite stores in these columns (its types are affinities).
SQLITE_ONLY = {
    "tracked_up_to as text": f"UPDATE {DESTS} SET tracked_up_to = 'abc' "
                             "WHERE is_primary = 0",
    "tracked_up_to as a fraction": f"UPDATE {DESTS} SET tracked_up_to = 1.5 "
                                   "WHERE is_primary = 0",
    "is_primary as text": f"UPDATE {DESTS} SET is_primary = 'yes'",
    "is_primary as a fraction": f"UPDATE {DESTS} SET is_primary = 1.5 WHERE is_primary = 1",
    "verified as text": f"UPDATE {COPIES} SET verified = 'yes'",
    "md5 as bytes": f"UPDATE {COPIES} SET remote_md5sum = X'00ff'",
    "copied as text": f"UPDATE {COPIES} SET copied = 'yesterday'",
    "attempts as text": f"UPDATE {COPIES} SET failed_copy_attempts = 'many'",
    "lost as text": f"UPDATE {COPIES} SET lost = 'no'",
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def add_files(manager: SupRsyncFilesManager, folder: Path, start: int, n: int) -> None:
    for i in range(start, start + n):
        local = make_file(folder, f"f{i}.g3")
        manager.add_file(str(local), f"{TC}/sub/f{i}.g3", ARCHIVE, timestamp=T0)


def ships_through(manager: SupRsyncFilesManager, clock: Clock, tmp_path: Path,
                  damage: str) -> None:
    a, b, data = tmp_path / "a", tmp_path / "b", tmp_path / "data"

    def agent():  # type: ignore[no-untyped-def]
        return new_agent(manager, clock, tmp_path, a, delete_local_after=10,
                         more_destinations=(("b", str(b)),))

    first = agent()
    try:
        add_files(manager, data, 0, 2)
        assert first.iterate()
    finally:
        first.close()
    add_files(manager, data, 2, 2)
    manager.write(lambda s: s.execute(text(damage)))
    # A restart on the damaged catalog: it must go on shipping everywhere.
    second = agent()
    try:
        for _ in range(4):
            clock.advance(60)
            second.iterate()
        known = manager.read(lambda s: registered(s, ARCHIVE))
        assert [r.primary for r in known] == [True, False], known
        assert {r.name for r in known if r.primary} != {"b"}, "b took the primary's place"
    finally:
        second.close()
    for i in range(4):
        assert (a / f"{TC}/sub/f{i}.g3").exists(), f"f{i} never reached a"
        assert (b / f"{TC}/sub/f{i}.g3").exists(), f"f{i} never reached b"
        assert not (data / f"f{i}.g3").exists(), f"f{i} was kept although both hold it"
    check_invariants(manager.db_path, {ARCHIVE: a})
    check_every_destination(manager.db_path, ARCHIVE, a, {"b": b}, 2)


@pytest.mark.parametrize("damage", list(ANY_BACKEND.values()), ids=list(ANY_BACKEND))
def test_damaged_destination_tables_do_not_stop_the_shipping(catalog_url, clock, tmp_path,
                                                             damage):
    for manager in managed(catalog_url, clock):
        ships_through(manager, clock, tmp_path, damage)


@pytest.mark.parametrize("damage", list(SQLITE_ONLY.values()), ids=list(SQLITE_ONLY))
def test_values_of_the_wrong_type_do_not_stop_the_shipping(tmp_catalog, clock, tmp_path,
                                                           damage):
    tmp_catalog.parent.mkdir(parents=True)
    manager: Iterator[SupRsyncFilesManager] = managed(tmp_catalog, clock)
    for m in manager:
        ships_through(m, clock, tmp_path, damage)
