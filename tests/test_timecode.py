"""Timecode directories and finalization files, driven through the real agent loop."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from helpers import Clock, catalog_agent, make_file

from suprsync import SupRsyncFilesManager, TimecodeDir
from suprsync.agent import Agent
from suprsync.catalog.timecode import timecode_at

#: A fixed "now" in the middle of timecode 17000.
NOW = 17000 * 1e5 + 40_000.0


def make_files(root: Path, tree: dict[str, bytes]) -> dict[str, Path]:
    """Write files below root; keys are remote paths."""
    return {rel: make_file(root, rel, data) for rel, data in tree.items()}


def agent_for(tmp_path: Path, archive: str, clock: Clock, instance: str = "sync-test",
              db: Path | None = None) -> Agent:
    return catalog_agent(tmp_path, db or tmp_path / "catalog.db", archive, clock, instance)


def finalization_files(remote: Path) -> list[Path]:
    return sorted(remote.glob("*/suprsync/*/*_finalized.yaml"))


def iterate(agent: Agent, times: int = 3) -> None:
    for _ in range(times):
        assert agent.iterate(), agent.session.snapshot()["last_copy"]


def tcdirs(db: Path, archive: str) -> dict[int, tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT timecode, completed, synced, finalized, finalize_file_id "
            "FROM timecode_dirs_v0 WHERE archive_name = ?", (archive,)).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_six_dirs_give_five_finalization_files(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    agent = agent_for(tmp_path, "smurf", clock)
    tree = {}
    for i, tc in enumerate(range(now_tc - 5, now_tc + 1)):
        tree[f"{tc}/crate1/a{i}.g3"] = os.urandom(100)
        tree[f"{tc}/crate2/b{i}.g3"] = os.urandom(100)
        tree[f"{tc}/top{i}.txt"] = os.urandom(10)
    for rel, path in make_files(tmp_path / "data", tree).items():
        agent.manager.add_file(str(path), rel, "smurf", timestamp=NOW - 1000)

    iterate(agent, 3)

    remote = tmp_path / "remote" / "smurf"
    found = finalization_files(remote)
    assert len(found) == 5
    by_tc = {}
    for path in found:
        data = yaml.safe_load(path.read_text())
        assert set(data) == {"timecode", "num_files", "subdirs", "finalized_at",
                             "finalized_until", "archive_name", "instance_id"}
        assert path.name == f"{int(data['finalized_at'])}_smurf_{data['timecode']}_finalized.yaml"
        assert path.parent == remote / str(now_tc) / "suprsync" / "sync-test"
        by_tc[data["timecode"]] = data
    assert sorted(by_tc) == list(range(now_tc - 5, now_tc))
    for data in by_tc.values():
        assert data["num_files"] == 3
        assert sorted(data["subdirs"]) == ["crate1", "crate2"]
        assert data["archive_name"] == "smurf"
        assert data["instance_id"] == "sync-test"
        assert data["finalized_at"] == NOW
        assert isinstance(data["finalized_until"], float)
    states = tcdirs(tmp_path / "catalog.db", "smurf")
    assert states[now_tc][:3] == (0, 0, 0)
    for tc in range(now_tc - 5, now_tc):
        completed, synced, finalized, file_id = states[tc]
        assert (completed, synced, finalized) == (1, 1, 1)
        assert file_id is not None
    # The local copies were written under the suprsync file root and registered.
    local = sorted((tmp_path / "suprsync-files" / str(now_tc) / "sync-test").iterdir())
    assert [p.name for p in local] == [p.name for p in found]


def test_archives_sharing_timecodes_stay_independent(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    smurf = agent_for(tmp_path, "smurf", clock, instance="smurf-sync", db=db)
    streams = agent_for(tmp_path, "timestreams", clock, instance="ts-sync", db=db)
    # timestreams has only the current dir; smurf has the current and a newer-looking one.
    files = make_files(tmp_path / "data", {
        f"{now_tc}/ts/a.g3": b"a",
        f"{now_tc}/smurf/b.dat": b"b",
        f"{now_tc + 1}/smurf/c.dat": b"c",
    })
    smurf.manager.add_file(str(files[f"{now_tc}/ts/a.g3"]), f"{now_tc}/ts/a.g3", "timestreams",
                           timestamp=NOW)
    smurf.manager.add_file(str(files[f"{now_tc}/smurf/b.dat"]), f"{now_tc}/smurf/b.dat",
                           "smurf", timestamp=NOW)
    smurf.manager.add_file(str(files[f"{now_tc + 1}/smurf/c.dat"]),
                           f"{now_tc + 1}/smurf/c.dat", "smurf", timestamp=NOW)
    iterate(smurf, 2)
    iterate(streams, 2)

    # smurf's newer timecode completes smurf's dir only.
    assert tcdirs(db, "smurf")[now_tc][:3] == (1, 1, 1)
    assert tcdirs(db, "timestreams")[now_tc][:3] == (0, 0, 0)
    smurf_final = finalization_files(tmp_path / "remote" / "smurf")
    assert len(smurf_final) == 1
    data = yaml.safe_load(smurf_final[0].read_text())
    assert data["num_files"] == 1 and data["subdirs"] == ["smurf"]
    assert finalization_files(tmp_path / "remote" / "timestreams") == []


def test_other_archives_unsynced_file_does_not_hold_back(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    files = make_files(tmp_path / "data", {f"{now_tc - 3}/x/a.dat": b"a"})
    agent.manager.add_file(str(files[f"{now_tc - 3}/x/a.dat"]), f"{now_tc - 3}/x/a.dat",
                           "smurf", timestamp=NOW)
    # A file of another archive in the same timecode that is never copied.
    agent.manager.add_file(str(files[f"{now_tc - 3}/x/a.dat"]), f"{now_tc - 3}/x/other.dat",
                           "timestreams", timestamp=NOW, local_md5sum="0" * 32)
    iterate(agent, 2)
    assert tcdirs(db, "smurf")[now_tc - 3][:3] == (1, 1, 1)
    data = yaml.safe_load(finalization_files(tmp_path / "remote" / "smurf")[0].read_text())
    assert data["num_files"] == 1


def test_plain_sql_rows_get_timecode_dirs_and_finalized(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    files = make_files(tmp_path / "data", {f"{now_tc - 2}/s/f{i}.dat": bytes([i]) * 10
                                           for i in range(3)})
    import hashlib

    with sqlite3.connect(db) as conn:
        for rel, path in files.items():
            conn.execute(
                "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path,"
                " timestamp) VALUES (?, ?, ?, ?, ?)",
                (str(path), hashlib.md5(path.read_bytes()).hexdigest(), "smurf", rel, NOW - 5))
    assert tcdirs(db, "smurf") == {}
    assert agent.iterate()
    assert now_tc - 2 in tcdirs(db, "smurf")
    iterate(agent, 2)
    assert tcdirs(db, "smurf")[now_tc - 2][:3] == (1, 1, 1)
    found = finalization_files(tmp_path / "remote" / "smurf")
    assert len(found) == 1
    assert yaml.safe_load(found[0].read_text())["num_files"] == 3


def test_ignored_unsynced_file_does_not_hold_back(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    files = make_files(tmp_path / "data", {f"{now_tc - 2}/s/good.dat": b"good",
                                           f"{now_tc - 2}/s/ignored.dat": b"ignored"})
    for rel, path in files.items():
        agent.manager.add_file(str(path), rel, "smurf", timestamp=NOW)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE supersync_v0 SET ignore = 1 WHERE remote_path LIKE '%ignored.dat'")
    iterate(agent, 2)
    assert not (tmp_path / "remote" / "smurf" / f"{now_tc - 2}" / "s" / "ignored.dat").exists()
    assert tcdirs(db, "smurf")[now_tc - 2][:3] == (1, 1, 1)
    assert len(finalization_files(tmp_path / "remote" / "smurf")) == 1


def test_unsynced_file_holds_dir_back(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    files = make_files(tmp_path / "data", {f"{now_tc - 2}/s/good.dat": b"good",
                                           f"{now_tc - 2}/s/vanished.dat": b"gone"})
    for rel, path in files.items():
        agent.manager.add_file(str(path), rel, "smurf", timestamp=NOW)
    files[f"{now_tc - 2}/s/vanished.dat"].unlink()  # can never be copied
    iterate(agent, 2)
    assert tcdirs(db, "smurf")[now_tc - 2][:3] == (1, 0, 0)
    assert finalization_files(tmp_path / "remote" / "smurf") == []


def test_old_dir_completes_by_one_timecode_rule(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    files = make_files(tmp_path / "data", {f"{now_tc}/s/a.dat": b"a"})
    agent.manager.add_file(str(files[f"{now_tc}/s/a.dat"]), f"{now_tc}/s/a.dat", "smurf",
                           timestamp=NOW)
    iterate(agent, 2)
    assert tcdirs(db, "smurf")[now_tc][:3] == (0, 0, 0)
    clock.now = NOW + 1e5  # one timecode later: still within the rule
    iterate(agent, 2)
    assert tcdirs(db, "smurf")[now_tc][:3] == (0, 0, 0)
    clock.now = NOW + 2e5  # now_tc - tc == 2 > 1: complete
    iterate(agent, 2)
    assert tcdirs(db, "smurf")[now_tc][:3] == (1, 1, 1)
    found = finalization_files(tmp_path / "remote" / "smurf")
    assert len(found) == 1
    assert found[0].parent.parent.parent.name == str(now_tc + 2)


def test_create_all_timecode_dirs_rebuilds(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    manager = SupRsyncFilesManager(str(db), clock=Clock(NOW))
    files = make_files(tmp_path / "data", {"16000/a": b"a", "16001/b/c": b"c", "plain/d": b"d"})
    for rel, path in files.items():
        manager.add_file(str(path), rel, "arch", timestamp=NOW)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM timecode_dirs_v0")
    assert manager.create_all_timecode_dirs("arch") == 2
    assert sorted(tcdirs(db, "arch")) == [16000, 16001]
    assert manager.create_all_timecode_dirs("arch") == 0
    with manager.Session() as session:
        assert session.query(TimecodeDir).count() == 2


def test_detection_scans_only_new_rows(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    manager = SupRsyncFilesManager(str(db), clock=Clock(NOW))
    files = make_files(tmp_path / "data", {"16000/a": b"a"})
    manager.add_file(str(files["16000/a"]), "16000/a", "arch", timestamp=NOW)
    manager.detect_timecode_dirs("arch")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM timecode_dirs_v0")
    # Already scanned: not recreated by incremental detection...
    assert manager.detect_timecode_dirs("arch") == 0
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path,"
            " timestamp) VALUES ('/x', 'y', 'arch', '16002/z', 1)")
    # ...while a new row is picked up.
    assert manager.detect_timecode_dirs("arch") == 1
    assert sorted(tcdirs(db, "arch")) == [16002]


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


def test_kill_between_yaml_and_commit_yields_one_file(tmp_path: Path) -> None:
    now_tc = timecode_at(__import__("time").time())
    db = tmp_path / "catalog.db"
    data = make_files(tmp_path / "data", {f"{now_tc - 3}/s/a.dat": b"a",
                                          f"{now_tc - 2}/s/b.dat": b"b"})
    manager = SupRsyncFilesManager(str(db))
    for rel, path in data.items():
        manager.add_file(str(path), rel, "smurf")
    remote = tmp_path / "remote"
    root = tmp_path / "suprsync-files"
    flags = ["run", "--archive-name", "smurf", "--remote-basedir", str(remote),
             "--db-path", str(db), "--suprsync-file-root", str(root), "--sleep-time", "0",
             "--instance-id", "crashy", "--once"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_YAML, *flags],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    # The crash left a YAML on disk that is not registered.
    orphans = list(root.rglob("*_finalized.yaml"))
    assert len(orphans) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM supersync_v0 WHERE remote_path LIKE "
                            "'%finalized.yaml'").fetchone()[0] == 0
    for _ in range(3):
        result = run_cli(*flags)
        assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT remote_path FROM supersync_v0 WHERE remote_path LIKE "
                            "'%finalized.yaml'").fetchall()
        states = dict(conn.execute("SELECT timecode, finalized FROM timecode_dirs_v0"
                                   " WHERE timecode < ?", (now_tc,)).fetchall())
    assert len(rows) == 2
    assert states == {now_tc - 3: 1, now_tc - 2: 1}
    per_dir = [yaml.safe_load(p.read_text())["timecode"] for p in finalization_files(remote)]
    assert sorted(per_dir) == [now_tc - 3, now_tc - 2]
    local = sorted(p.name for p in root.rglob("*_finalized.yaml"))
    assert local == sorted(os.path.basename(r[0]) for r in rows)


@pytest.mark.parametrize("state", ["open", "finalized"])
def test_stats_cli_shows_dir_states(tmp_path: Path, state: str) -> None:
    import json

    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    tc = now_tc if state == "open" else now_tc - 3
    files = make_files(tmp_path / "data", {f"{tc}/s/a.dat": b"a"})
    agent.manager.add_file(str(files[f"{tc}/s/a.dat"]), f"{tc}/s/a.dat", "smurf", timestamp=NOW)
    iterate(agent, 2)
    result = run_cli("stats", "smurf", "--json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    dirs = json.loads(result.stdout)["smurf"]["timecode_dirs"]
    assert tc in dirs[state]
    text = run_cli("stats", "smurf", "--db", str(db))
    assert text.returncode == 0 and "finalized" in text.stdout and str(tc) in text.stdout


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    from suprsync.fsutil import write_atomic

    target = tmp_path / "d" / "f.yaml"
    with pytest.raises(TypeError):
        write_atomic(str(target), "not bytes")  # type: ignore[arg-type]
    assert list((tmp_path / "d").iterdir()) == []
    write_atomic(str(target), b"x: 1\n")
    assert target.read_bytes() == b"x: 1\n"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.yaml"]


def test_duplicate_dir_rows_are_finalized_once(tmp_path: Path) -> None:
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    db = tmp_path / "catalog.db"
    agent = agent_for(tmp_path, "smurf", clock, db=db)
    files = make_files(tmp_path / "data", {f"{now_tc - 3}/s/a.dat": b"a"})
    agent.manager.add_file(str(files[f"{now_tc - 3}/s/a.dat"]), f"{now_tc - 3}/s/a.dat",
                           "smurf", timestamp=NOW)
    with sqlite3.connect(db) as conn:  # another program wrote the dir row twice
        conn.execute("INSERT INTO timecode_dirs_v0 (timecode, archive_name) VALUES (?, ?)",
                     (now_tc - 3, "smurf"))
    iterate(agent, 3)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT finalized, finalize_file_id FROM timecode_dirs_v0 "
                            "WHERE timecode = ?", (now_tc - 3,)).fetchall()
        registered = conn.execute("SELECT count(*) FROM supersync_v0 WHERE remote_path "
                                  "LIKE '%finalized.yaml'").fetchone()[0]
    assert len(rows) == 2 and {r[0] for r in rows} == {1}
    assert len({r[1] for r in rows}) == 1 and rows[0][1] is not None
    assert registered == 1
    assert len(finalization_files(tmp_path / "remote" / "smurf")) == 1


def test_finalization_file_is_shipped_in_the_iteration_that_writes_it(tmp_path: Path) -> None:
    """One iteration copies a past dir, finalizes it and ships its finalization file:
    the file is on the destination and verified in the catalog when it returns."""
    clock = Clock(NOW)
    now_tc = timecode_at(NOW)
    agent = agent_for(tmp_path, "smurf", clock)
    tree = {f"{now_tc - 1}/crate1/a.g3": os.urandom(100), f"{now_tc}/crate1/b.g3": b"b"}
    for rel, path in make_files(tmp_path / "data", tree).items():
        agent.manager.add_file(str(path), rel, "smurf", timestamp=NOW - 1000)

    iterate(agent, 1)

    found = finalization_files(tmp_path / "remote" / "smurf")
    assert len(found) == 1
    assert yaml.safe_load(found[0].read_text())["timecode"] == now_tc - 1
    file_id = tcdirs(tmp_path / "catalog.db", "smurf")[now_tc - 1][3]
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        local_md5, remote_md5 = conn.execute(
            "SELECT local_md5sum, remote_md5sum FROM supersync_v0 WHERE id = ?",
            (file_id,)).fetchone()
    assert remote_md5 == local_md5
