"""Several real `suprsync run` agents sharing one PostgreSQL catalog, and `suprsync migrate`.

Every agent is its own process with its own --instance-id, all copying to the same local
remote base dir. What each agent copied is read from its log: one "copied and verified"
line per file it copied and verified.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SUPRSYNC, run_cli
from pg_server import PgServer
from sqlalchemy import select, text

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent, AgentConfig
from suprsync.catalog.schema import SupRsyncFile, TimecodeDir
from suprsync.catalog.timecode import timecode_at

ARCHIVE = "smurf"
VERIFIED = re.compile(r"copied and verified .* -> (\S+)$", re.MULTILINE)
#: Longest wait for agents to finish a job (seconds); a bound, not an expectation.
DEADLINE = 120.0


def fresh_url(pg: PgServer) -> str:
    """A new empty database, as the postgresql:// URL a user passes."""
    return "postgresql://" + pg.create_database().split("://", 1)[1]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def query(manager: SupRsyncFilesManager, sql: str, **params: object) -> list[tuple]:
    with manager.engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def unsynced(manager: SupRsyncFilesManager) -> int:
    return query(manager, "SELECT count(*) FROM supersync_v0 WHERE remote_md5sum IS NULL "
                          "OR remote_md5sum <> local_md5sum")[0][0]


def write_tree(root: Path, rels: list[str]) -> dict[str, bytes]:
    """Write one small file of unique content per remote path; return rel -> content."""
    out = {}
    for i, rel in enumerate(rels):
        data = f"{rel} {i}\n".encode() + os.urandom(200)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = data
    return out


def register(manager: SupRsyncFilesManager, root: Path, contents: dict[str, bytes]) -> None:
    """Register files with one plain INSERT, as a producer writing SQL does.

    All become copyable at the same moment, and their timecode-dir rows are left for the
    agents to detect.
    """
    now = time.time()
    with manager.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp, failed_copy_attempts, deletable, ignore) "
            "VALUES (:l, :m, :a, :r, :t, 0, true, false)"),
            [{"l": str(root / rel), "m": md5(data), "a": ARCHIVE, "r": rel, "t": now}
             for rel, data in contents.items()])


@dataclass
class AgentProc:
    """A running `suprsync run` process and its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def agent_id(self) -> str:
        """The id its claims carry (copying.default_agent_id)."""
        return f"{self.name}@{socket.gethostname()}:{self.proc.pid}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def verified(self) -> list[str]:
        """Remote paths of the files this agent copied and verified, one per log line."""
        return VERIFIED.findall(self.text())


class Agents:
    """Starts agents on one catalog and remote dir; stops whatever is left at the end."""

    def __init__(self, tmp_path: Path, url: str, remote: Path, *flags: str) -> None:
        self.tmp_path = tmp_path
        self.url = url
        self.remote = remote
        self.flags = flags
        self.started: list[AgentProc] = []

    def start(self, name: str) -> AgentProc:
        log = self.tmp_path / f"{name}.log"
        argv = [SUPRSYNC, "run", "--instance-id", name, "--archive-name", ARCHIVE,
                "--remote-basedir", str(self.remote), "--db-url", self.url,
                "--suprsync-file-root", str(self.tmp_path / "suprsync-files"),
                "--sleep-time", "0", "--claim-timeout", "5", *self.flags]
        with log.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
        agent = AgentProc(name, proc, log)
        self.started.append(agent)
        return agent

    def logs(self) -> str:
        return "\n".join(f"--- {a.name} (exit {a.proc.poll()}):\n{a.text()[-3000:]}"
                         for a in self.started)

    def wait_for(self, condition: Callable[[], bool], what: str,
                 alive: list[AgentProc] | None = None) -> None:
        """Poll until condition holds; fail at DEADLINE or when an agent exits early."""
        deadline = time.monotonic() + DEADLINE
        while not condition():
            for agent in alive if alive is not None else self.started:
                if agent.proc.poll() is not None:
                    pytest.fail(f"{agent.name} exited while waiting for {what}:\n"
                                f"{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.05)

    def wait_started(self, agents: list[AgentProc]) -> None:
        self.wait_for(lambda: all("syncing archive" in a.text() for a in agents),
                      "the agents to start", agents)

    def stop(self, agents: list[AgentProc]) -> None:
        """SIGTERM each agent; each must exit 0 after its current step."""
        for agent in agents:
            agent.proc.send_signal(signal.SIGTERM)
        for agent in agents:
            assert agent.proc.wait(timeout=60) == 0, self.logs()

    def kill_all(self) -> None:
        for agent in self.started:
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait(timeout=30)


@contextmanager
def agents_on(tmp_path: Path, url: str, remote: Path, *flags: str) -> Iterator[Agents]:
    agents = Agents(tmp_path, url, remote, *flags)
    try:
        yield agents
    finally:
        agents.kill_all()


def assert_clean(agents: list[AgentProc]) -> None:
    """No crash and no catalog error in these agents' logs."""
    for agent in agents:
        log = agent.text()
        assert "Traceback" not in log, log[-5000:]
        assert "catalog unavailable" not in log, log[-5000:]


def assert_remote_content(remote: Path, contents: dict[str, bytes]) -> None:
    for rel, data in contents.items():
        assert md5((remote / rel).read_bytes()) == md5(data), rel


@pytest.fixture
def url(pg: PgServer) -> str:
    return fresh_url(pg)


@pytest.fixture
def catalog(url: str) -> Iterator[SupRsyncFilesManager]:
    """The shared PostgreSQL catalog, created and opened by the test."""
    manager = SupRsyncFilesManager(url)
    yield manager
    manager.close()


# ---------------------------------------------------------------- three agents


def test_three_agents_copy_each_of_1000_files_exactly_once(
    tmp_path: Path, url: str, catalog: SupRsyncFilesManager
) -> None:
    """Three agents started before 1000 files appear copy each file exactly once."""
    now_tc = timecode_at(time.time())  # the open dir: nothing gets finalized
    rels = [f"{now_tc}/crate{i % 7}/f{i:04d}.dat" for i in range(1000)]
    contents = write_tree(tmp_path / "data", rels)
    remote = tmp_path / "remote"
    with agents_on(tmp_path, url, remote, "--files-per-batch", "50") as agents:
        procs = [agents.start(f"agent{i}") for i in range(3)]
        agents.wait_started(procs)
        register(catalog, tmp_path / "data", contents)
        agents.wait_for(lambda: unsynced(catalog) == 0, "every file to be synced")
        agents.stop(procs)

    assert_clean(procs)
    lines = Counter(rel for agent in procs for rel in agent.verified())
    assert set(lines) == set(rels)
    assert {rel: n for rel, n in lines.items() if n != 1} == {}
    # The work was shared: the files were not all copied by one agent.
    assert sum(1 for agent in procs if agent.verified()) >= 2, agents.logs()
    assert_remote_content(remote, contents)
    assert query(catalog, "SELECT count(*), count(*) FILTER (WHERE remote_md5sum = "
                          "local_md5sum AND copied IS NOT NULL) FROM supersync_v0") == [
        (1000, 1000)]
    assert query(catalog, "SELECT count(*) FROM suprsync_claims_v0") == [(0,)]


def test_agent_killed_mid_batch_others_finish_after_the_claim_timeout(
    tmp_path: Path, url: str, catalog: SupRsyncFilesManager
) -> None:
    """A SIGKILLed agent's batch is taken over after its leases expire; no file is lost.

    To kill agent0 at a known point, the test holds a SHARE lock on supersync_v0 (a real
    second transaction, as a slow writer would): claiming (SELECT ... FOR UPDATE) still
    works, but recording results (UPDATE) waits. So every agent claims a batch of 200,
    copies and verifies it, logs its "copied and verified" lines, and then waits to record
    them. agent0 is killed right there: mid-batch, with its 200 leases held and its
    results never recorded. The other two then record theirs, copy the remaining files
    and, once agent0's leases expired (--claim-timeout 5), its batch again.

    Files copied twice can therefore only be files of agent0's in-flight batch that it
    verified before dying (all of them, here): a survivor copies them again because
    agent0's result was lost, but only after the lease ended, never while agent0 held
    it. Any other file copied twice would mean two agents held it at once.
    """
    now_tc = timecode_at(time.time())
    rels = [f"{now_tc}/crate{i % 7}/f{i:04d}.dat" for i in range(1000)]
    contents = write_tree(tmp_path / "data", rels)
    register(catalog, tmp_path / "data", contents)
    remote = tmp_path / "remote"
    batch = 200
    lock = catalog.engine.connect()
    lock_tx = lock.begin()
    lock.execute(text("LOCK TABLE supersync_v0 IN SHARE MODE"))
    try:
        with agents_on(tmp_path, url, remote, "--files-per-batch", str(batch)) as agents:
            procs = [agents.start(f"agent{i}") for i in range(3)]
            victim, survivors = procs[0], procs[1:]

            def claimed_by(agent: AgentProc) -> set[str]:
                return {r[0] for r in query(
                    catalog, "SELECT f.remote_path FROM suprsync_claims_v0 c JOIN "
                             "supersync_v0 f ON f.id = c.file_id WHERE c.agent_id = :a",
                    a=agent.agent_id)}

            # Every agent verified its whole batch and now waits to record it.
            agents.wait_for(lambda: all(
                len(a.verified()) == batch and claimed_by(a) == set(a.verified())
                for a in procs), "each agent to verify a batch")
            victim.proc.send_signal(signal.SIGKILL)
            assert victim.proc.wait(timeout=30) == -signal.SIGKILL
            in_flight = claimed_by(victim)
            lock_tx.rollback()
            lock.close()

            agents.wait_for(lambda: unsynced(catalog) == 0, "every file to be synced",
                            alive=survivors)
            agents.stop(survivors)
    finally:
        lock.close()  # ends the SHARE lock if the test failed while holding it

    assert_clean(survivors)
    assert 0 < len(in_flight) <= batch
    victim_lines = Counter(victim.verified())
    survivor_lines = Counter(rel for agent in survivors for rel in agent.verified())
    lines = victim_lines + survivor_lines
    assert set(lines) == set(rels)
    duplicates = {rel for rel, n in lines.items() if n > 1}
    assert len(duplicates) <= batch
    assert duplicates <= in_flight
    assert {rel for rel in duplicates if rel not in in_flight} == set()
    # A duplicate is one line of agent0 (before it died) and one of a survivor (after).
    assert duplicates == set(victim_lines)
    assert all(victim_lines[rel] == 1 and survivor_lines[rel] == 1 for rel in duplicates)
    assert_remote_content(remote, contents)
    assert unsynced(catalog) == 0
    assert query(catalog, "SELECT count(*) FROM suprsync_claims_v0") == [(0,)]


def test_three_agents_finalize_each_timecode_dir_exactly_once(
    tmp_path: Path, url: str, catalog: SupRsyncFilesManager
) -> None:
    """With three agents racing, each old dir gets one finalization row and one file."""
    now_tc = timecode_at(time.time())
    old = list(range(now_tc - 5, now_tc))
    rels = [f"{tc}/crate{i % 3}/f{i:03d}.dat" for tc in [*old, now_tc] for i in range(20)]
    contents = write_tree(tmp_path / "data", rels)
    remote = tmp_path / "remote"
    with agents_on(tmp_path, url, remote, "--files-per-batch", "10") as agents:
        procs = [agents.start(f"agent{i}") for i in range(3)]
        agents.wait_started(procs)
        register(catalog, tmp_path / "data", contents)

        def done() -> bool:
            finalized = query(catalog, "SELECT count(*) FROM timecode_dirs_v0 WHERE "
                                       "finalized AND archive_name = :a", a=ARCHIVE)[0][0]
            return finalized == len(old) and unsynced(catalog) == 0

        agents.wait_for(done, "the old dirs to be finalized and every file synced")
        agents.stop(procs)

    assert_clean(procs)
    assert_remote_content(remote, contents)
    dirs = query(catalog, "SELECT d.timecode, d.completed, d.synced, d.finalized, "
                          "f.remote_path, f.local_path, f.local_md5sum FROM timecode_dirs_v0 d "
                          "LEFT JOIN supersync_v0 f ON f.id = d.finalize_file_id "
                          "ORDER BY d.timecode")
    assert [d[0] for d in dirs] == [*old, now_tc]
    assert dirs[-1][1:5] == (False, False, False, None)
    for tc, completed, synced, finalized, remote_path, local_path, local_md5 in dirs[:-1]:
        assert (completed, synced, finalized) == (True, True, True)
        rows = query(catalog, "SELECT remote_path FROM supersync_v0 WHERE remote_path "
                              "LIKE :p", p=f"%\\_{ARCHIVE}\\_{tc}\\_finalized.yaml")
        assert rows == [(remote_path,)], tc
        on_remote = list(remote.glob(f"*/suprsync/*/*_{ARCHIVE}_{tc}_finalized.yaml"))
        assert on_remote == [remote / remote_path], tc
        assert md5(on_remote[0].read_bytes()) == local_md5
        # The agents that lost the race removed their own copies of the file.
        local = list((tmp_path / "suprsync-files").glob(f"*/*/*_{ARCHIVE}_{tc}_finalized.yaml"))
        assert local == [Path(local_path)], tc


# ------------------------------------------------------------------ migration


def rows_of(manager: SupRsyncFilesManager, model: type) -> list[tuple]:
    table = model.__table__
    with manager.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]


def agent_config(tmp_path: Path, remote: Path, db: str) -> AgentConfig:
    return AgentConfig(archive_name=ARCHIVE, remote_basedir=str(remote), db_path=db,
                       suprsync_file_root=str(tmp_path / "suprsync-files"), sleep_time=0,
                       instance_id="migrated")


def test_migrate_copies_every_row_refuses_a_full_destination_and_agent_continues(
    tmp_path: Path, pg: PgServer
) -> None:
    """sqlite -> PostgreSQL: same rows and ids; a second run refuses; new rows get new ids."""
    now_tc = timecode_at(time.time())
    source = tmp_path / "catalog.db"
    remote = tmp_path / "remote"
    rels = [f"{tc}/crate{i % 2}/f{i}.dat" for tc in (now_tc - 3, now_tc - 2, now_tc)
            for i in range(6)]
    contents = write_tree(tmp_path / "data", rels)
    manager = SupRsyncFilesManager(str(source))
    for rel in rels:
        manager.add_file(str(tmp_path / "data" / rel), rel, ARCHIVE)
    # Rows in every state: ignored, removed, NULL defaults, a failed attempt, another archive.
    extra = write_tree(tmp_path / "data", ["plain/p.dat", "plain/q.dat"])
    with manager.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp) VALUES (:l, :m, 'other', :r, 1675000000.25)"),
            [{"l": str(tmp_path / "data" / rel), "m": md5(data), "r": f"{now_tc}/{rel}"}
             for rel, data in extra.items()])
        conn.execute(text("UPDATE supersync_v0 SET ignore = 1 WHERE remote_path LIKE :p"),
                     {"p": "%/f5.dat"})
    # A real history: copy and finalize the two old dirs, then copy the finalization files.
    agent = Agent(agent_config(tmp_path, remote, str(source)), manager=manager)
    assert agent.iterate() and agent.iterate()
    with manager.engine.begin() as conn:
        conn.execute(text("UPDATE supersync_v0 SET removed = 1700000000.5, "
                          "failed_copy_attempts = 2 WHERE remote_path LIKE :p"), {"p": "%/f0.dat"})
    before = {model: rows_of(manager, model) for model in (SupRsyncFile, TimecodeDir)}
    manager.close()
    assert sum(1 for r in before[TimecodeDir] if r[6] is not None) == 2  # finalized dirs
    assert sum(1 for r in before[SupRsyncFile] if r[6] == r[2]) == 17  # 15 data, 2 final
    assert any(r[11] for r in before[SupRsyncFile])  # an ignored row

    url = fresh_url(pg)
    result = run_cli("migrate", "--from", str(source), "--to", url, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"supersync_v0: {len(before[SupRsyncFile])} rows copied" in result.stdout
    assert f"timecode_dirs_v0: {len(before[TimecodeDir])} rows copied" in result.stdout
    migrated = SupRsyncFilesManager(url)
    try:
        for model, rows in before.items():
            assert rows_of(migrated, model) == rows, model.__tablename__

        refused = run_cli("migrate", "--from", str(source), "--to", url, timeout=60)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            "suprsync migrate: error: destination table supersync_v0 is not empty"]
        for model, rows in before.items():
            assert rows_of(migrated, model) == rows, model.__tablename__

        # The agent goes on against the migrated catalog: it copies only the new files, and
        # new rows (files, a new timecode dir, its finalization file) get fresh ids.
        new_rels = [f"{now_tc - 4}/late/n{i}.dat" for i in range(3)] + [f"{now_tc}/late/m.dat"]
        new_contents = write_tree(tmp_path / "new", new_rels)
        for rel in new_rels:
            migrated.add_file(str(tmp_path / "new" / rel), rel, ARCHIVE)
        run = run_cli("run", "--once", "--sleep-time", "0", "--archive-name", ARCHIVE,
                      "--instance-id", "migrated", "--remote-basedir", str(remote),
                      "--db-url", url, "--suprsync-file-root", str(tmp_path / "suprsync-files"),
                      timeout=60)
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        verified = VERIFIED.findall(run.stderr)
        # The new files, then the finalization file of the completed dir, in the same run.
        assert sorted(verified[:-1]) == sorted(new_rels)
        assert verified[-1].endswith(f"_{ARCHIVE}_{now_tc - 4}_finalized.yaml"), verified
        shipped = {rel: data for rel, data in contents.items() if not rel.endswith("/f5.dat")}
        assert_remote_content(remote, {**shipped, **new_contents})

        files_after = rows_of(migrated, SupRsyncFile)
        dirs_after = rows_of(migrated, TimecodeDir)
        # Old rows are untouched, new ones come after them.
        assert files_after[:len(before[SupRsyncFile])] == before[SupRsyncFile]
        assert dirs_after[:len(before[TimecodeDir])] == before[TimecodeDir]
        max_file_id = max(r[0] for r in before[SupRsyncFile])
        new_files = files_after[len(before[SupRsyncFile]):]
        assert [r[0] for r in new_files] == list(range(max_file_id + 1,
                                                      max_file_id + len(new_rels) + 2))
        assert [r[4] for r in new_files[:-1]] == new_rels
        assert new_files[-1][4].endswith(f"_{ARCHIVE}_{now_tc - 4}_finalized.yaml")
        new_dir = dirs_after[len(before[TimecodeDir]):]
        assert [(r[0], r[1], r[5], r[6]) for r in new_dir] == [
            (max(r[0] for r in before[TimecodeDir]) + 1, now_tc - 4, True, new_files[-1][0])]
    finally:
        migrated.close()
