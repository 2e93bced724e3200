"""SessionData: what a snapshot copies and what it shares."""

from __future__ import annotations

from suprsync.session import SessionData


def test_snapshot_shares_the_last_copy_file_list_and_copies_the_rest() -> None:
    session = SessionData(now=100.0)
    files = [["/data/a.g3", True], ["/data/b.g3", False]]
    session.set("last_copy", {"start_time": 1.0, "stop_time": 2.0, "files": files})
    session.set_archive_stats("smurf", {"num_files": 2})

    snap = session.snapshot()
    assert snap["last_copy"]["files"] is files
    assert snap["last_copy"] == {"start_time": 1.0, "stop_time": 2.0, "files": files}
    snap["last_copy"]["stop_time"] = 9.0
    snap["archive_stats"]["smurf"]["num_files"] = 7
    snap["counters"]["copies"] = 5
    again = session.snapshot()
    assert again["last_copy"]["stop_time"] == 2.0
    assert again["archive_stats"]["smurf"] == {"num_files": 2}
    assert again["counters"]["copies"] == 0


def test_snapshot_before_any_copy_has_an_empty_last_copy() -> None:
    snap = SessionData(now=100.0).snapshot()
    assert snap["last_copy"] == {}
    assert snap["timestamp"] == 100.0
