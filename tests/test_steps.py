"""The steps are plain functions run by every front end with the clock it passes in."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import yaml
from helpers import ARCHIVE, Clock, get_row, is_synced, new_agent, write_file
from invariants import check_invariants
from test_layers import ROOT, imports_of

from suprsync import SupRsyncFileHandler, SupRsyncFilesManager, steps
from suprsync.catalog.anomalies import timecode_at

DAY = 86400.0


def test_every_step_dates_its_work_with_the_clock_it_is_given(tmp_path: Path) -> None:
    """The catalog's own clock stands still far in the past: any step reading it would
    find nothing due, complete no dir and stamp the wrong times."""
    agent_clock = Clock(1_700_000_000.0)
    now_tc = timecode_at(agent_clock())
    manager = SupRsyncFilesManager(str(tmp_path / "catalog.db"), clock=Clock(1000.0))
    local = write_file(tmp_path / "data" / "a.dat", b"a" * 100)
    row = manager.add_file(str(local), f"{now_tc - 3}/s/a.dat", ARCHIVE,
                           timestamp=agent_clock() - 2 * DAY)
    remote = tmp_path / "remote"
    agent = new_agent(manager, agent_clock, tmp_path, remote, delete_local_after=DAY)
    try:
        assert agent.iterate() is True
    finally:
        agent.close()
    copied = get_row(manager, row.id)
    assert copied.copied == agent_clock()
    assert copied.removed == agent_clock()  # due by the agent's clock, not the catalog's
    assert not local.exists()
    yamls = list((tmp_path / "srfroot").rglob("*_finalized.yaml"))
    assert [p.name for p in yamls] == [
        f"{int(agent_clock())}_{ARCHIVE}_{now_tc - 3}_finalized.yaml"]
    summary = yaml.safe_load(yamls[0].read_text())
    assert summary["finalized_at"] == agent_clock()
    stats = agent.session.snapshot()["archive_stats"][ARCHIVE]
    assert stats["finalized_until"] == agent_clock()
    check_invariants(manager.db_path, {ARCHIVE: remote}, file_root=tmp_path / "srfroot")
    manager.close()


def test_handler_and_agent_run_the_same_steps(tmp_path: Path) -> None:
    """The original's API copies and deletes through steps.copy/steps.delete, with the
    catalog's clock."""
    clock = Clock(1_700_000_000.0)
    manager = SupRsyncFilesManager(str(tmp_path / "catalog.db"), clock=clock)
    local = write_file(tmp_path / "data" / "a.dat", b"abc")
    row = manager.add_file(str(local), "12345/a.dat", ARCHIVE, timestamp=clock() - 100)
    handler = SupRsyncFileHandler(manager, ARCHIVE, str(tmp_path / "remote"))
    try:
        assert handler.copy_files() == [(str(local), True)]
        clock.advance(10)
        report = handler.delete_files(50)
    finally:
        handler.close()
    assert report.deleted == [str(local)]
    assert get_row(manager, row.id).removed == clock()
    check_invariants(manager.db_path, {ARCHIVE: tmp_path / "remote"})
    manager.close()


def test_agent_does_not_import_the_compatibility_handler() -> None:
    for name in ("agent.py", "steps.py", "deletion.py", "finalization.py"):
        assert "suprsync.handler" not in imports_of(ROOT / name), name
    assert "suprsync.steps" in imports_of(ROOT / "agent.py")
    assert "suprsync.steps" in imports_of(ROOT / "handler.py")


def test_steps_read_no_clock_of_their_own() -> None:
    """No step module calls time.time() or reads a catalog's clock attribute."""
    for name in ("steps.py", "deletion.py", "finalization.py"):
        tree = ast.parse((ROOT / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr != "clock", f"{name}:{node.lineno} reads .clock"
                if isinstance(node.value, ast.Name) and node.value.id == "time":
                    assert node.attr != "time", f"{name}:{node.lineno} calls time.time"


def test_settings_name_an_agent_id_by_default() -> None:
    assert steps.Settings(archive_name=ARCHIVE).agent_id
    assert steps.Settings(archive_name=ARCHIVE, agent_id="me").agent_id == "me"


def test_verify_step_judges_copies_the_caller_sent(tmp_path: Path) -> None:
    """steps.verify md5s named rows on the destination: a true copy is verified, a
    changed or missing one is not and costs a failed attempt, and a row whose remote
    path leaves the base dir is not touched."""
    from suprsync.transport import open_destination

    clock = Clock(1_700_000_000.0)
    manager = SupRsyncFilesManager(str(tmp_path / "catalog.db"), clock=clock)
    remote = tmp_path / "remote"
    rows = {}
    for name in ("good", "changed", "missing"):
        local = write_file(tmp_path / "data" / f"{name}.dat", name.encode() * 50)
        rows[name] = manager.add_file(str(local), f"12345/{name}.dat", ARCHIVE,
                                      timestamp=clock() - 100)
    outside = manager.add_file(str(tmp_path / "data" / "good.dat"), "12345/other.dat", ARCHIVE,
                               timestamp=clock() - 100)
    with sqlite3.connect(manager.db_path) as db:  # as another program could write it
        db.execute("UPDATE supersync_v0 SET remote_path='../escape.dat' WHERE id=?",
                   (outside.id,))
    outside = get_row(manager, outside.id)
    transport = open_destination(str(remote))
    try:
        sent = transport.send([(r.local_path, r.remote_path)
                               for name, r in rows.items() if name != "missing"])
        assert sent.ok
        (remote / "12345" / "changed.dat").write_bytes(b"tampered")
        clock.advance(5)
        settings = steps.Settings(ARCHIVE)
        report = steps.verify(manager, transport, clock, settings,
                              [*rows.values(), outside])
    finally:
        transport.close()
    assert sorted(report.files) == sorted([[rows["good"].local_path, True],
                                           [rows["changed"].local_path, False],
                                           [rows["missing"].local_path, False]])
    assert report.failures == 2 and report.error is None
    good = get_row(manager, rows["good"].id)
    assert good.remote_md5sum == good.local_md5sum and good.copied == clock()
    for name in ("changed", "missing"):
        row = get_row(manager, rows[name].id)
        assert row.remote_md5sum != row.local_md5sum, name
        assert not is_synced(manager, row.id) and row.failed_copy_attempts == 1, name
    untouched = get_row(manager, outside.id)
    assert untouched.remote_md5sum is None and not untouched.failed_copy_attempts
    check_invariants(manager.db_path, {ARCHIVE: remote})
    manager.close()


def test_the_copy_step_verifies_through_the_verify_step() -> None:
    """copying.py judges no copy itself: it hands each sent chunk to verification.py."""
    source = (ROOT / "copying.py").read_text()
    assert "verify_files(" in source and "judge_copy" not in source
    assert "suprsync.verification" in imports_of(ROOT / "steps.py")
