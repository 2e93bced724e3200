"""Finalization is never early and never stale in silence: dirs dated in the future, a
system clock that jumps, files registered after the finalization file, ignored dirs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from helpers import Clock, catalog_agent, make_file
from invariants import check_invariants
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, text

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent
from suprsync.catalog.lateness import RESCAN_IDS, load_late_scan
from suprsync.catalog.timecode import timecode_at
from suprsync.clockcheck import ClockCheck
from suprsync.metrics import MetricsServer
from suprsync.status import catalog_status

#: A fixed "now" in the middle of timecode 17000.
NOW = 17000 * 1e5 + 40_000.0
NOW_TC = timecode_at(NOW)
ARCHIVE = "smurf"
INSTANCE = "sync-test"


def agent_for(tmp_path: Path, clock: Clock) -> Agent:
    return catalog_agent(tmp_path, tmp_path / "catalog.db", ARCHIVE, clock, INSTANCE)


def add(agent: Agent, tmp_path: Path, remote: str, timestamp: float = NOW,
        data: bytes | None = None) -> int:
    local = make_file(tmp_path / "data", remote, data or remote.encode() * 10)
    return agent.manager.add_file(str(local), remote, ARCHIVE, timestamp=timestamp).id


def iterate(agent: Agent, clock: Clock | None = None, times: int = 2) -> None:
    for _ in range(times):
        assert agent.iterate(), agent.session.snapshot()["last_copy"]
        if clock is not None:
            clock.advance(10)


def tcdirs(db: Path) -> dict[int, tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT timecode, completed, synced, finalized FROM "
                            "timecode_dirs_v0 WHERE archive_name = ?", (ARCHIVE,)).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def remote_yamls(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "remote" / ARCHIVE).glob("*/suprsync/*/*_finalized.yaml"))


def downstream_records(base: Path, start: int = 0) -> set[tuple[str, str, int, str]]:
    """What the packaging code records from a remote base dir, following downstream.md:
    list the base dir, keep entries that parse as an integer timecode at or after start,
    in each read every file of every instance dir under ``suprsync`` with
    yaml.safe_load, and record (archive, subdir, timecode, instance) per subdir."""
    records = set()
    for entry in os.listdir(base):
        try:
            tc = int(entry)
        except ValueError:
            continue
        if tc < start or not (base / entry / "suprsync").is_dir():
            continue
        for instance in os.listdir(base / entry / "suprsync"):
            folder = base / entry / "suprsync" / instance
            for name in os.listdir(folder):
                with open(folder / name) as f:
                    data = yaml.safe_load(f)
                assert data["archive_name"] in ("smurf", "timestreams")
                for subdir in data["subdirs"]:
                    if subdir != "suprsync":
                        records.add((data["archive_name"], subdir, data["timecode"],
                                     data["instance_id"]))
    return records


def check(tmp_path: Path) -> None:
    """The integrity invariants of the catalog, the destination and the finalization files."""
    report = check_invariants(tmp_path / "catalog.db", {ARCHIVE: tmp_path / "remote" / ARCHIVE},
                              file_root=tmp_path / "suprsync-files")
    assert report.rows > 0


def scrape(agent: Agent) -> dict[str, float]:
    server = MetricsServer(0)
    try:
        server.attach(agent)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
    finally:
        server.close()
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples}


def warnings_with(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)]


# ------------------------------------------------------------- dirs dated in the future


def test_far_future_dir_completes_nothing_and_is_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    add(agent, tmp_path, f"{NOW_TC}/crate1/now.g3")
    add(agent, tmp_path, "99999/crate1/typo.g3")
    iterate(agent, clock, 3)

    # 99999 is newer than now's dir, but dated in the future: it completes nothing.
    states = tcdirs(tmp_path / "catalog.db")
    assert states[NOW_TC] == (0, 0, 0)
    assert states[99999] == (0, 0, 0)
    assert remote_yamls(tmp_path) == []
    assert len(warnings_with(caplog, "99999", "future")) == 1
    assert agent.anomalies()["future_timecode_dirs"] == [99999]
    assert scrape(agent)["suprsync_future_timecode_dirs"] == 1.0
    status = catalog_status(agent.manager, 5)[ARCHIVE]
    assert status["future_timecode_dirs"] == [99999]
    db = str(tmp_path / "catalog.db")
    for command in ("status", "stats"):
        out = run_cli(command, ARCHIVE, "--json", "--db", db)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[ARCHIVE]["future_timecode_dirs"] == [99999]
        text = run_cli(command, ARCHIVE, "--db", db)
        assert "timecode dir 99999 is dated in the future" in text.stdout

    # Two timecodes later now's dir completes by age; 99999 still does not.
    clock.advance(2e5)
    iterate(agent, clock, 3)
    states = tcdirs(tmp_path / "catalog.db")
    assert states[NOW_TC] == (1, 1, 1)
    assert states[99999] == (0, 0, 0)
    assert [yaml.safe_load(p.read_text())["timecode"] for p in remote_yamls(tmp_path)] \
        == [NOW_TC]
    check(tmp_path)


def test_next_timecode_still_completes_the_current_one(tmp_path: Path) -> None:
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    add(agent, tmp_path, f"{NOW_TC}/crate1/a.g3")
    add(agent, tmp_path, f"{NOW_TC + 1}/crate1/b.g3")  # a producer slightly ahead
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC] == (1, 1, 1)
    assert agent.anomalies()["future_timecode_dirs"] == []
    check(tmp_path)


def test_api_update_all_timecode_dirs_keeps_the_future_rule(tmp_path: Path) -> None:
    """Without an agent (update_all_timecode_dirs), a future dir completes nothing either."""
    manager = SupRsyncFilesManager(str(tmp_path / "catalog.db"), clock=Clock(NOW))
    try:
        for remote in (f"{NOW_TC}/crate1/a.g3", f"{NOW_TC + 2}/crate1/b.g3"):
            local = make_file(tmp_path / "data", remote, b"x")
            manager.add_file(str(local), remote, ARCHIVE, timestamp=NOW)
        root = str(tmp_path / "suprsync-files")
        assert manager.update_all_timecode_dirs(ARCHIVE, root, INSTANCE) == []
        states = tcdirs(tmp_path / "catalog.db")
        assert states[NOW_TC][0] == 0 and states[NOW_TC + 2][0] == 0
    finally:
        manager.close()


# ------------------------------------------------------------------- the system clock


def test_clock_check_sees_jumps_and_when_the_clock_is_consistent_again() -> None:
    clock = Clock(NOW)
    check = ClockCheck(clock, clock.monotonic, tolerance=60, settle=600)
    assert check.check()
    clock.advance(100)
    assert check.check()
    clock.jump(3600)  # stepped forward
    assert not check.check() and check.in_doubt
    clock.advance(100)
    assert not check.check()  # steady, but not for long enough
    clock.jump(-3600)  # stepped back to where it should be
    assert check.check() and not check.in_doubt
    clock.jump(-86400)  # stepped back a day
    assert not check.check()
    clock.advance(599)
    assert not check.check()
    clock.advance(2)  # steady for the settle time: trusted again
    assert check.check() and not check.in_doubt
    clock.jump(59)  # within the tolerance
    assert check.check()


def test_clock_jump_holds_completion_by_age_until_consistent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    add(agent, tmp_path, f"{NOW_TC}/crate1/a.g3")
    iterate(agent, clock, 2)
    clock.jump(3e5)  # three timecodes ahead: now's dir would complete by age
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC] == (0, 0, 0)
    assert remote_yamls(tmp_path) == []
    assert len(warnings_with(caplog, "clock jumped")) == 1
    assert agent.anomalies()["clock_in_doubt"]
    assert scrape(agent)["suprsync_clock_in_doubt"] == 1.0
    clock.jump(-3e5)  # set right again
    iterate(agent, clock, 2)
    assert not agent.anomalies()["clock_in_doubt"]
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC] == (0, 0, 0)
    # The dir completes when its time has really passed.
    clock.advance(2e5)
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC] == (1, 1, 1)
    assert len(remote_yamls(tmp_path)) == 1
    assert len(warnings_with(caplog, "clock jumped")) == 1
    check(tmp_path)


def test_wrong_clock_is_trusted_again_after_running_steadily(tmp_path: Path) -> None:
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    agent.clock_check.settle = 600
    add(agent, tmp_path, f"{NOW_TC}/crate1/a.g3")
    iterate(agent, clock, 2)
    clock.jump(3e5)
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC] == (0, 0, 0)
    clock.advance(600)
    iterate(agent, clock, 3)
    assert not agent.anomalies()["clock_in_doubt"]
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC] == (1, 1, 1)
    check(tmp_path)


def test_rows_registered_after_now_hold_completion_by_age(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    add(agent, tmp_path, f"{NOW_TC - 3}/crate1/old.g3", timestamp=NOW - 3e5)
    # Registered a day after now: the clock went back since (a restart does not forget it).
    add(agent, tmp_path, f"{NOW_TC - 3}/crate1/ahead.g3", timestamp=NOW + 1e5)
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC - 3] == (0, 0, 0)
    assert remote_yamls(tmp_path) == []
    assert len(warnings_with(caplog, "clock looks wrong")) == 1
    assert agent.anomalies()["clock_in_doubt"]
    assert catalog_status(agent.manager, 5)[ARCHIVE]["rows_ahead_of_clock"] is True
    clock.advance(1e5)  # the clock has caught up with the rows
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[NOW_TC - 3] == (1, 1, 1)
    assert len(remote_yamls(tmp_path)) == 1
    check(tmp_path)


# ------------------------------------------------------------------------ late files


def test_late_file_is_reported_and_described_by_a_further_finalization_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 3
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[tc] == (1, 1, 1)
    base = tmp_path / "remote" / ARCHIVE
    assert downstream_records(base) == {(ARCHIVE, "crate1", tc, INSTANCE)}

    late_id = add(agent, tmp_path, f"{tc}/crate9/late.g3")
    status = catalog_status(agent.manager, 5)[ARCHIVE]
    assert [(f["timecode"], f["file_id"], f["remote_path"]) for f in status["late_files"]] \
        == [(tc, late_id, f"{tc}/crate9/late.g3")]
    db = str(tmp_path / "catalog.db")
    stats = json.loads(run_cli("stats", ARCHIVE, "--json", "--db", db).stdout)[ARCHIVE]
    assert [f["file_id"] for f in stats["late_files"]] == [late_id]
    text = run_cli("status", ARCHIVE, "--db", db).stdout
    assert f"{tc}/crate9/late.g3" in text and f"timecode dir {tc}" in text

    iterate(agent, clock, 4)
    found = warnings_with(caplog, "late.g3", f"timecode dir {tc}", "after its finalization")
    assert len(found) == 1
    assert agent.anomalies()["late_files_found"] == 1
    assert agent.anomalies()["late_files"] == []
    assert scrape(agent)["suprsync_late_files_total"] == 1.0
    # Downstream, reading every YAML of the instance dir, now records the late subdir.
    assert downstream_records(base) == {(ARCHIVE, "crate1", tc, INSTANCE),
                                        (ARCHIVE, "crate9", tc, INSTANCE)}
    of_dir = [p for p in remote_yamls(tmp_path) if yaml.safe_load(p.read_text())["timecode"]
              == tc]
    assert len(of_dir) == 2
    first, second = sorted(of_dir, key=lambda p: yaml.safe_load(p.read_text())["finalized_at"])
    assert yaml.safe_load(first.read_text())["subdirs"] == ["crate1"]
    supplement = yaml.safe_load(second.read_text())
    assert supplement["subdirs"] == ["crate1", "crate9"] and supplement["num_files"] == 2
    assert second.name == f"{int(supplement['finalized_at'])}_{ARCHIVE}_{tc}_finalized.yaml"
    assert catalog_status(agent.manager, 5)[ARCHIVE]["late_files"] == []

    # Exactly once: more iterations write nothing more; a second batch gets its own file.
    iterate(agent, clock, 3)
    assert len(remote_yamls(tmp_path)) == 2
    add(agent, tmp_path, f"{tc}/crate7/later.g3")
    iterate(agent, clock, 4)
    assert len(remote_yamls(tmp_path)) == 3
    assert (ARCHIVE, "crate7", tc, INSTANCE) in downstream_records(base)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM suprsync_supplements_v0").fetchone()[0] == 2
        # timecode_dirs_v0 keeps its columns.
        columns = [r[1] for r in conn.execute("PRAGMA table_info(timecode_dirs_v0)")]
    assert columns == ["id", "timecode", "archive_name", "completed", "synced", "finalized",
                       "finalize_file_id"]
    check(tmp_path)


def test_late_file_waits_for_its_copy_and_a_new_agent_finds_it(tmp_path: Path) -> None:
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 3
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    iterate(agent, clock, 3)
    # A late file that cannot be copied yet (not there) is reported, never described.
    ghost = tmp_path / "data" / f"{tc}/crate5/ghost.g3"
    late_id = agent.manager.add_file(str(ghost), f"{tc}/crate5/ghost.g3", ARCHIVE,
                                     local_md5sum="0" * 32, timestamp=NOW).id
    iterate(agent, clock, 3)
    assert [f["file_id"] for f in agent.anomalies()["late_files"]] == [late_id]
    assert len(remote_yamls(tmp_path)) == 1
    # A new agent (a restart) finds it again from the catalog; once the file is
    # there and copied, the further file describes it.
    agent.close()
    make_file(tmp_path / "data", f"{tc}/crate5/ghost.g3", b"ghost")
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        conn.execute("UPDATE supersync_v0 SET local_md5sum = ?, failed_copy_attempts = 0 "
                     "WHERE id = ?", (__import__("hashlib").md5(b"ghost").hexdigest(), late_id))
    again = agent_for(tmp_path, clock)
    iterate(again, clock, 4)
    assert again.anomalies()["late_files_found"] == 1
    assert (ARCHIVE, "crate5", tc, INSTANCE) in downstream_records(tmp_path / "remote" / ARCHIVE)
    assert len(remote_yamls(tmp_path)) == 2
    again.close()
    check(tmp_path)


def test_a_new_agent_reads_the_dirs_left_with_late_files_not_the_history(
        tmp_path: Path) -> None:
    """What an agent scanned for late files is kept in the catalog: a new agent scans only
    the ids above it (on sqlite, where rows commit in id order, none below) and reads the
    dirs left with late files, and still finds a late file registered long before."""
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 3
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    iterate(agent, clock, 3)
    ghost = tmp_path / "data" / f"{tc}/crate5/ghost.g3"  # not there: never copied
    late_id = agent.manager.add_file(str(ghost), f"{tc}/crate5/ghost.g3", ARCHIVE,
                                     local_md5sum="0" * 32, timestamp=NOW).id
    db = tmp_path / "catalog.db"
    with sqlite3.connect(db) as conn:  # another archive's rows since, given up on
        conn.executemany(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, ignore) VALUES (?, ?, 'other', ?, ?, 1)",
            [(f"/gone/{i}", f"{i:032x}", f"{NOW_TC}/bulk/{i}.g3", NOW)
             for i in range(2 * RESCAN_IDS)])
    iterate(agent, clock, 2)
    assert [f["file_id"] for f in agent.anomalies()["late_files"]] == [late_id]
    top = agent.manager.max_file_id()
    agent.close()
    agent.manager.close()

    again = agent_for(tmp_path, clock)
    scans: list[tuple] = []

    def listen(_conn, _cursor, statement, params, _context, _many) -> None:  # noqa: ANN001
        # The late-file scan: ids and path heads of new ids (detection reads path heads
        # only; a dir's own rows, read by their path prefix, compare BLOB paths with
        # substr too).
        if "SELECT supersync_v0.id, substr(supersync_v0.remote_path" in statement \
                and "remote_path >= x''" not in statement:
            scans.append(tuple(params))

    event.listen(again.manager.engine, "before_cursor_execute", listen)
    iterate(again, clock, 1)
    assert [f["file_id"] for f in again.anomalies()["late_files"]] == [late_id]
    assert len(scans) == 1 and top in scans[0], scans
    assert top - RESCAN_IDS > late_id
    # Once the file is there and copied, a further finalization file describes it.
    make_file(tmp_path / "data", f"{tc}/crate5/ghost.g3", b"ghost")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE supersync_v0 SET local_md5sum = ?, failed_copy_attempts = 0 "
                     "WHERE id = ?", (hashlib.md5(b"ghost").hexdigest(), late_id))
    iterate(again, clock, 3)
    assert again.anomalies()["late_files"] == []
    assert len(remote_yamls(tmp_path)) == 2
    kept = again.manager.read(lambda s: load_late_scan(s, ARCHIVE))
    assert kept is not None and kept.dirs == frozenset()
    again.close()
    check(tmp_path)


@pytest.mark.parametrize("restart", [False, True], ids=["same-agent", "new-agent"])
def test_a_late_file_given_the_id_of_a_deleted_top_row_is_still_found(
        tmp_path: Path, restart: bool) -> None:
    """sqlite gives the id of a deleted top row to the next registration: a late file
    registered after another program deleted the newest rows gets an id the look for late
    files has read already, and is still found, by a running agent and by a new one."""
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 3
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    iterate(agent, clock, 3)
    db = tmp_path / "catalog.db"
    assert tcdirs(db)[tc] == (1, 1, 1)
    with sqlite3.connect(db) as conn:  # another program's newest rows, scanned next
        conn.executemany(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, ignore) VALUES (?, ?, 'other', ?, ?, 1)",
            [(f"/gone/{i}", f"{i:032x}", f"{NOW_TC}/bulk/{i}.g3", NOW) for i in range(3)])
    top = agent.manager.max_file_id()
    iterate(agent, clock, 1)
    with sqlite3.connect(db) as conn:  # ... and taken back
        conn.execute("DELETE FROM supersync_v0 WHERE archive_name = 'other'")
    if restart:
        agent.close()
        agent.manager.close()
        agent = agent_for(tmp_path, clock)
    late_id = add(agent, tmp_path, f"{tc}/crate9/late.g3")
    assert late_id <= top  # an id scanned before
    iterate(agent, clock, 4)
    assert agent.anomalies()["late_files_found"] == 1
    assert len(remote_yamls(tmp_path)) == 2
    assert (ARCHIVE, "crate9", tc, INSTANCE) in downstream_records(tmp_path / "remote" / ARCHIVE)
    agent.close()
    check(tmp_path)


@pytest.mark.parametrize("spelling", ["./{tc}/crate1/a.g3", "{tc}//crate1/a.g3"])
def test_a_file_spelled_otherwise_that_is_not_sent_holds_its_dir_back(
        tmp_path: Path, spelling: str) -> None:
    """Another program registers a second file at a dir's path, spelled otherwise and
    with other content: it is a collision, never sent, and the dir is not finalized
    without it (downstream would believe the dir complete)."""
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 3
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    other = make_file(tmp_path / "data", "other/a.g3", b"other content")
    db = tmp_path / "catalog.db"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, "
                     "remote_path, timestamp) VALUES (?, ?, ?, ?, ?)",
                     (str(other), hashlib.md5(b"other content").hexdigest(), ARCHIVE,
                      spelling.format(tc=tc), NOW))
    iterate(agent, clock, 4)
    assert tcdirs(db)[tc][2] == 0, "finalized without the file spelled otherwise"
    assert remote_yamls(tmp_path) == []
    assert other.exists()
    agent.close()
    check(tmp_path)


KILL_AFTER_YAML = textwrap.dedent("""
    import os, signal, sys
    import suprsync.finalization as tc
    real_md5 = tc.md5_file
    def md5_then_die(path):
        real_md5(path)
        os.kill(os.getpid(), signal.SIGKILL)
    tc.md5_file = md5_then_die
    from suprsync.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_between_further_yaml_and_commit_yields_one_file(tmp_path: Path) -> None:
    now_tc = timecode_at(time.time())
    tc = now_tc - 3
    db = tmp_path / "catalog.db"
    remote = tmp_path / "remote"
    root = tmp_path / "suprsync-files"
    manager = SupRsyncFilesManager(str(db))
    first = make_file(tmp_path / "data", f"{tc}/crate1/a.dat", b"a")
    manager.add_file(str(first), f"{tc}/crate1/a.dat", ARCHIVE)
    flags = ["run", "--archive-name", ARCHIVE, "--remote-basedir", str(remote),
             "--db-path", str(db), "--suprsync-file-root", str(root), "--sleep-time", "0",
             "--instance-id", "crashy", "--once"]
    for _ in range(2):
        result = run_cli(*flags)
        assert result.returncode == 0, result.stderr
    late = make_file(tmp_path / "data", f"{tc}/crate9/late.dat", b"late")
    manager.add_file(str(late), f"{tc}/crate9/late.dat", ARCHIVE)
    time.sleep(1.1)  # the further file gets a name of its own second
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_YAML, *flags],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert len(list(root.rglob("*_finalized.yaml"))) == 2  # one registered, one orphan
    for _ in range(3):
        result = run_cli(*flags)
        assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT local_path FROM supersync_v0 WHERE remote_path LIKE "
                            "'%finalized.yaml'").fetchall()
        supplements = conn.execute("SELECT count(*) FROM suprsync_supplements_v0").fetchone()
    assert len(rows) == 2 and supplements[0] == 1
    assert sorted(str(p) for p in root.rglob("*_finalized.yaml")) == sorted(r[0] for r in rows)
    records = downstream_records(remote)
    assert records == {(ARCHIVE, "crate1", tc, "crashy"), (ARCHIVE, "crate9", tc, "crashy")}
    manager.close()
    check_invariants(db, {ARCHIVE: remote}, file_root=root)


# ---------------------------------------------------------------------- ignored dirs


def test_dir_of_ignored_files_is_finalized_with_zero_files(tmp_path: Path) -> None:
    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 2
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    add(agent, tmp_path, f"{tc}/crate2/b.g3")
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        conn.execute("UPDATE supersync_v0 SET ignore = 1")
    iterate(agent, clock, 3)
    assert tcdirs(tmp_path / "catalog.db")[tc] == (1, 1, 1)
    [found] = remote_yamls(tmp_path)
    data = yaml.safe_load(found.read_text())
    assert data["timecode"] == tc and data["num_files"] == 0 and data["subdirs"] == []
    check(tmp_path)


def test_late_file_gets_one_further_file_on_each_backend(
        catalog_url: str, tmp_path: Path) -> None:
    """sqlite and PostgreSQL: a late file is reported from the catalog and described once."""
    clock = Clock(NOW)
    agent = catalog_agent(tmp_path, catalog_url, ARCHIVE, clock, INSTANCE)
    try:
        tc = NOW_TC - 3
        add(agent, tmp_path, f"{tc}/crate1/a.g3")
        iterate(agent, clock, 3)
        late_id = add(agent, tmp_path, f"{tc}/crate9/late.g3")
        status = catalog_status(agent.manager, 5)[ARCHIVE]
        assert [f["file_id"] for f in status["late_files"]] == [late_id]
        iterate(agent, clock, 5)
        assert catalog_status(agent.manager, 5)[ARCHIVE]["late_files"] == []
        assert downstream_records(tmp_path / "remote" / ARCHIVE) == {
            (ARCHIVE, "crate1", tc, INSTANCE), (ARCHIVE, "crate9", tc, INSTANCE)}
        assert len(remote_yamls(tmp_path)) == 2
        with agent.manager.engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM suprsync_supplements_v0")).scalar()
        assert count == 1
    finally:
        agent.close()
        agent.manager.close()
    check_invariants(catalog_url, {ARCHIVE: tmp_path / "remote" / ARCHIVE},
                     file_root=tmp_path / "suprsync-files")


def test_a_yaml_another_process_is_registering_is_not_taken_for_an_orphan(
        tmp_path: Path) -> None:
    """Processes of one instance id take turns: while one holds the instance's lock
    between writing its YAML and registering it, the other neither removes that YAML
    nor writes its own."""
    import fcntl
    import threading

    clock = Clock(NOW)
    agent = agent_for(tmp_path, clock)
    tc = NOW_TC - 3
    add(agent, tmp_path, f"{tc}/crate1/a.g3")
    iterate(agent, clock, 1)  # copied and verified; the dir is finalized below
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        conn.execute("UPDATE timecode_dirs_v0 SET finalized = 0, finalize_file_id = NULL")
        conn.execute("DELETE FROM supersync_v0 WHERE remote_path LIKE '%finalized.yaml'")
    for old in (tmp_path / "suprsync-files").rglob("*_finalized.yaml"):
        old.unlink()
    root = tmp_path / "suprsync-files"
    folder = root / str(timecode_at(clock.now)) / INSTANCE
    folder.mkdir(parents=True, exist_ok=True)
    theirs = folder / f"{int(clock.now) - 5}_{ARCHIVE}_{tc}_finalized.yaml"
    fd = os.open(root / f".{INSTANCE}.finalize.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    theirs.write_text("being registered\n")
    done = threading.Event()
    thread = threading.Thread(target=lambda: (agent.iterate(), done.set()), daemon=True)
    thread.start()
    time.sleep(1.0)
    assert not done.is_set() and theirs.exists()  # the agent waits for the lock
    agent.manager.add_file(str(theirs), f"{timecode_at(clock.now)}/suprsync/{INSTANCE}/"
                           f"{theirs.name}", ARCHIVE, timestamp=clock.now)
    with sqlite3.connect(tmp_path / "catalog.db") as conn:  # the other one's commit
        fid = conn.execute("SELECT max(id) FROM supersync_v0").fetchone()[0]
        conn.execute("UPDATE timecode_dirs_v0 SET finalized = 1, synced = 1, "
                     "finalize_file_id = ? WHERE timecode = ?", (fid, tc))
    os.close(fd)  # releases the lock
    thread.join(60)
    assert done.is_set()
    assert theirs.exists()
    assert [p.name for p in folder.glob("*_finalized.yaml")] == [theirs.name]
    agent.close()
