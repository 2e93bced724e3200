"""OCS integration: suprsync as agent-class ``SupRsync`` under a real crossbar router.

Nothing is mocked. A crossbar router runs on 127.0.0.1; the agents are started by
``ocs-agent-cli`` from a site config holding the two SupRsync instances of the
original agent's documentation (timestream-sync and smurf-sync, sharing one
catalog), pointed at temporary paths and at the test sshd; operators' view is
``ocs.ocs_client.OCSClient`` through the router's HTTP caller.

The tests run in file order on one module-scoped site: sync and session data
first, then each operator task while ``run`` is running, and stopping ``run`` last.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ocs
import pytest
import yaml
from conftest import SshServer
from ocs.agent_cli import build_agent_list
from ocs.ocs_client import OCSClient
from ocs.site_config import get_control_client
from ocs_fixtures import ADDRESS_ROOT, REALM, AgentProcess, Router, running_router

from suprsync import SupRsyncFilesManager

T = TypeVar("T")

SITE_HOST = "suprsync-test-host"
TS, SMURF, OFFLINE = "timestream-sync", "smurf-sync", "offline-sync"
ARCHIVE = {TS: "timestreams", SMURF: "smurf", OFFLINE: "offline"}
SUBDIR = {TS: "ts", SMURF: "smurf"}
#: Two old timecode dirs: both complete at once, so both get finalized.
OLD_TCS = (16000, 16001)
GOOD_FILES = ((16000, "a.dat"), (16000, "b.dat"), (16001, "c.dat"))
MAX_COPY_ATTEMPTS = 10
SESSION_KEYS = {"activity", "timestamp", "last_copy", "archive_stats", "counters"}
COUNTER_KEYS = {"iterations", "copies", "errors_timeout", "errors_nonzero", "errors_sqlite"}
STATS_KEYS = {"finalized_until", "num_files", "uncopied_files", "last_file_added",
              "last_file_copied"}
START_TIMEOUT = 60.0
SYNC_TIMEOUT = 60.0
TASK_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def wait_for(check: Callable[[], T], timeout: float, what: str,
             state: Callable[[], Any] | None = None, interval: float = 0.25) -> T:
    """Poll check() until it returns something true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"; last state: {state()!r}" if state is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------- agent class


def supRsync_providers() -> list[str]:
    """'<dist> <version>' of every installed ocs plugin that offers agent-class SupRsync."""
    found = []
    for ep in importlib.metadata.entry_points(group="ocs.plugins"):
        try:
            plugin = ep.load()
        except Exception:  # build_agent_list skips such plugins too
            continue
        if "SupRsync" in getattr(plugin, "agents", {}):
            dist = ep.dist
            found.append(f"{dist.name} {dist.version}" if dist else ep.value)
    return found


def resolve_supRsync() -> tuple[dict | None, str]:
    """What ocs-agent-cli starts for agent-class SupRsync, and a report of the providers."""
    providers = supRsync_providers()  # before build_agent_list, which edits plugin dicts
    try:
        socs = f"socs {importlib.metadata.version('socs')} is installed"
    except importlib.metadata.PackageNotFoundError:
        socs = "socs is not installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry = build_agent_list().get("SupRsync")
    report = (f"agent-class 'SupRsync' resolves to {entry}; plugins offering it: "
              f"{providers}; {socs} in this environment")
    return entry, report


def test_supRsync_agent_class_is_suprsync() -> None:
    """ocs-agent-cli resolves 'SupRsync' (and 'SuprsyncAgent') to suprsync's plugin."""
    entry, report = resolve_supRsync()
    assert entry == {"module": "suprsync.ocs_agent", "entry_point": "main"}, report
    if "socs is installed" in report:  # resolved right only by plugin load order
        warnings.warn(report, stacklevel=1)
    assert build_agent_list().get("SuprsyncAgent") == {
        "module": "suprsync.ocs_agent", "entry_point": "main_unambiguous"}


# ------------------------------------------------------------- the site


@dataclass
class Site:
    """The running agents, their clients and everything they were given."""

    dir: Path
    site_file: Path
    db: Path
    file_root: Path
    offline_db_dir: Path
    remote: dict[str, Path]
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    clients: dict[str, OCSClient] = field(default_factory=dict)
    good: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    bad: dict[str, Path] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    # catalog, read and written with plain sqlite3 (as another program would)

    def sql(self, query: str, *args: Any) -> list[sqlite3.Row]:
        con = sqlite3.connect(self.db, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            with con:
                return con.execute(query, args).fetchall()
        finally:
            con.close()

    def row(self, local_path: Path) -> sqlite3.Row:
        rows = self.sql("SELECT * FROM supersync_v0 WHERE local_path = ?", str(local_path))
        assert len(rows) == 1, f"{len(rows)} catalog rows for {local_path}"
        return rows[0]

    def tcdirs(self, iid: str) -> dict[int, sqlite3.Row]:
        rows = self.sql("SELECT * FROM timecode_dirs_v0 WHERE archive_name = ?", ARCHIVE[iid])
        return {r["timecode"]: r for r in rows}

    # OCS

    def status(self, iid: str) -> dict:
        reply = self.clients[iid].run.status()
        assert reply.status == ocs.OK, reply
        return reply.session

    def data(self, iid: str) -> dict:
        return self.status(iid).get("data") or {}

    def task(self, iid: str, name: str, **params: Any) -> dict:
        """Run a task to its end and return its session; it must succeed."""
        op = getattr(self.clients[iid], name)
        reply = op.start(**params)
        assert reply.status == ocs.OK, f"{iid}.{name} did not start: {reply}"
        reply = op.wait(timeout=TASK_TIMEOUT)
        assert reply.status == ocs.OK, f"{iid}.{name} still running after {TASK_TIMEOUT} s"
        session = reply.session
        assert session["status"] == "done"
        assert session["success"] is True, f"{iid}.{name} failed: {session['messages']}"
        return session

    def assert_running(self, iid: str) -> None:
        session = self.status(iid)
        assert session.get("status") == "running", f"run of {iid} is not running: {session}"

    def iterations(self, iid: str) -> int:
        return int(self.data(iid).get("counters", {}).get("iterations", 0))

    def wait_iterations(self, iid: str, n: int) -> None:
        """Wait until the run loop of iid has begun n more iterations."""
        target = self.iterations(iid) + n
        wait_for(lambda: self.iterations(iid) >= target, 30, f"{n} iterations of {iid}")


def agent_arguments(iid: str, site: Site, sshd: SshServer, copy_timeout: str) -> list:
    """The documentation's example arguments, on local paths and the test sshd."""
    return [
        ["--archive-name", ARCHIVE[iid]],
        ["--remote-basedir", str(site.remote[iid])],
        ["--db-path", str(site.db)],
        ["--ssh-host", sshd.destination],
        ["--ssh-key", str(sshd.key)],
        ["--delete-local-after", "604800"],
        ["--max-copy-attempts", str(MAX_COPY_ATTEMPTS)],
        ["--copy-timeout", copy_timeout],
        ["--cmd-timeout", "5"],
        ["--suprsync-file-root", str(site.file_root)],
        ["--ssh-port", str(sshd.port)],
        ["--ssh-known-hosts", str(sshd.known_hosts)],
        ["--sleep-time", "1"],
    ]


def write_site_config(site: Site, router: Router, sshd: SshServer) -> None:
    instances = [
        {"agent-class": "SupRsync", "instance-id": TS,
         "arguments": agent_arguments(TS, site, sshd, "60")},
        {"agent-class": "SupRsync", "instance-id": SMURF,
         "arguments": agent_arguments(SMURF, site, sshd, "20")},
        # Its catalog lives in a directory that is not there yet (a regular file
        # stands in its way): the run process must come up degraded.
        {"agent-class": "SupRsync", "instance-id": OFFLINE,
         "arguments": [
             ["--archive-name", ARCHIVE[OFFLINE]],
             ["--remote-basedir", str(site.remote[OFFLINE])],
             ["--db-path", str(site.offline_db_dir / "suprsync.db")],
             ["--suprsync-file-root", str(site.file_root)],
             # the default --sleep-time (60 s): stop must not wait it out
         ]},
    ]
    config = {
        "hub": {"wamp_server": router.ws_url, "wamp_http": router.http_url,
                "wamp_realm": REALM, "address_root": ADDRESS_ROOT},
        "hosts": {SITE_HOST: {"log-dir": str(site.dir / "ocs-logs"),
                              "agent-instances": instances}},
    }
    site.site_file.write_text(yaml.safe_dump(config, sort_keys=False))


def connect(site: Site, iid: str) -> OCSClient:
    """An OCSClient for iid, once the agent has joined the realm."""
    agent = site.agents[iid]
    args = agent.site_args

    def attempt() -> OCSClient | None:
        assert agent.running(), f"agent {iid} exited with {agent.proc.returncode}"
        try:
            return OCSClient(iid, args=args)
        except Exception:  # ControlClientError until the agent has registered
            return None

    client = wait_for(attempt, START_TIMEOUT, f"agent {iid} to join the realm")
    wait_for(lambda: (client.run.status().session or {}).get("status") == "running",
             START_TIMEOUT, f"the run process of {iid} to start",
             state=lambda: client.run.status())
    return client


def register_files(site: Site, manager: SupRsyncFilesManager) -> None:
    """Good files in two old timecode dirs, and one file that can never be sent."""
    now_tc = int(time.time() // 1e5)
    for iid in (TS, SMURF):
        site.good[iid] = []
        for tc, name in GOOD_FILES:
            path = site.dir / "data" / ARCHIVE[iid] / str(tc) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(1000) + f"{iid} {tc} {name}".encode())
            remote_path = f"{tc}/{SUBDIR[iid]}/{name}"
            manager.add_file(str(path), remote_path, ARCHIVE[iid])
            site.good[iid].append((path, remote_path))
        # Registered with its md5, then gone before it could be sent: every
        # iteration costs it one failed attempt.
        bad = site.dir / "data" / ARCHIVE[iid] / "vanished.dat"
        manager.add_file(str(bad), f"{now_tc}/{SUBDIR[iid]}/vanished.dat", ARCHIVE[iid],
                         local_md5sum=md5(b"vanished before it was sent"))
        site.bad[iid] = bad


def finalization_files(site: Site, iid: str, tc: int) -> list[Path]:
    """Finalization files of timecode dir tc on the remote, under <now tc>/suprsync/<iid>/."""
    return sorted(site.remote[iid].glob(f"*/suprsync/{iid}/*_{ARCHIVE[iid]}_{tc}_finalized.yaml"))


def synced_state(site: Site, iid: str) -> dict:
    """What is left to do before the good files and their dirs are done (for messages)."""
    rows = {r["local_path"]: r for r in site.sql(
        "SELECT * FROM supersync_v0 WHERE archive_name = ?", ARCHIVE[iid])}
    dirs = site.tcdirs(iid)
    return {
        "unsynced": [p for p, r in rows.items()
                     if r["remote_md5sum"] != r["local_md5sum"] and p != str(site.bad[iid])],
        "unfinalized": [tc for tc in OLD_TCS if tc not in dirs or not dirs[tc]["finalized"]],
        "remote_finalization_files": {tc: len(finalization_files(site, iid, tc))
                                      for tc in OLD_TCS},
    }


def is_synced(site: Site, iid: str) -> bool:
    state = synced_state(site, iid)
    return (not state["unsynced"] and not state["unfinalized"]
            and all(n == 1 for n in state["remote_finalization_files"].values()))


@pytest.fixture(scope="module")
def crossbar_router(crossbar_bin: Path, tmp_path_factory: pytest.TempPathFactory,
                    pytestconfig: pytest.Config) -> Iterator[Router]:
    """A real crossbar router for this module (logs attached to failing tests)."""
    with running_router(crossbar_bin, tmp_path_factory.mktemp("crossbar"),
                        pytestconfig) as router:
        yield router


@pytest.fixture(scope="module")
def site(crossbar_router: Router, sshd: SshServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Router, three agents started by ocs-agent-cli, their clients, files registered."""
    entry, report = resolve_supRsync()
    if entry != {"module": "suprsync.ocs_agent", "entry_point": "main"}:
        pytest.fail(f"not starting agents: {report}")
    base = tmp_path_factory.mktemp("ocs-site")
    site = Site(dir=base, site_file=base / "default.yaml", db=base / "dbs" / "suprsync.db",
                file_root=base / "suprsync", offline_db_dir=base / "offline-dbs",
                remote={iid: base / "remote" / ARCHIVE[iid] for iid in ARCHIVE})
    (base / "ocs-logs").mkdir()
    site.offline_db_dir.write_text("not a directory\n")
    write_site_config(site, crossbar_router, sshd)
    for iid in (TS, SMURF, OFFLINE):
        site.agents[iid] = AgentProcess(iid, site.site_file, SITE_HOST, base,
                                        log=base / f"{iid}.log")
    try:
        for agent in site.agents.values():
            agent.start()
        for iid in site.agents:
            site.clients[iid] = connect(site, iid)
        manager = SupRsyncFilesManager(str(site.db))
        try:
            register_files(site, manager)
        finally:
            manager.close()
        for iid in (TS, SMURF):
            wait_for(lambda iid=iid: is_synced(site, iid), SYNC_TIMEOUT,
                     f"the files of {iid} to be synced and their dirs finalized",
                     state=lambda iid=iid: synced_state(site, iid))
        yield site
    finally:
        for agent in site.agents.values():
            agent.interrupt()
        for agent in site.agents.values():
            agent.stop()


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("iid", [TS, SMURF])
def test_files_synced_and_session_data(site: Site, iid: str) -> None:
    archive = ARCHIVE[iid]
    for path, remote_path in site.good[iid]:
        assert (site.remote[iid] / remote_path).read_bytes() == path.read_bytes()
        assert site.row(path)["remote_md5sum"] == md5(path.read_bytes())

    # One finalization file per old dir, written by this instance, registered and copied.
    for tc in OLD_TCS:
        (remote,) = finalization_files(site, iid, tc)
        assert remote.parent.name == iid and remote.parent.parent.name == "suprsync"
        summary = yaml.safe_load(remote.read_text())
        assert summary["instance_id"] == iid
        assert summary["archive_name"] == archive
        assert summary["timecode"] == tc
        assert summary["num_files"] == sum(1 for t, _ in GOOD_FILES if t == tc)
        assert summary["subdirs"] == [SUBDIR[iid]]
        tcdir = site.tcdirs(iid)[tc]
        assert tcdir["completed"] and tcdir["synced"] and tcdir["finalized"]
        fin = site.sql("SELECT * FROM supersync_v0 WHERE id = ?", tcdir["finalize_file_id"])[0]
        local = Path(fin["local_path"])
        assert local.parent == site.file_root / remote.parent.parent.parent.name / iid
        assert fin["remote_path"] == remote.relative_to(site.remote[iid]).as_posix()
        assert remote.read_bytes() == local.read_bytes()

    # Session data: 3 good + 1 bad + 2 finalization files, of which only the bad is left.
    expected_files = len(GOOD_FILES) + 1 + len(OLD_TCS)

    def settled() -> dict | None:
        data = site.data(iid)
        stats = data.get("archive_stats", {}).get(archive, {})
        ok = stats.get("num_files") == expected_files and stats.get("uncopied_files") == 1
        return data if ok else None

    data = wait_for(settled, 30, f"archive_stats of {iid} to count every file",
                    state=lambda: site.data(iid))
    assert set(data) == SESSION_KEYS
    assert data["activity"] in {"idle", "copying", "deleting"}
    assert isinstance(data["timestamp"], float) and data["timestamp"] >= site.started

    assert set(data["counters"]) == COUNTER_KEYS
    counters = data["counters"]
    assert counters["iterations"] >= 1
    assert counters["copies"] >= len(GOOD_FILES) + len(OLD_TCS)
    assert counters["errors_timeout"] == counters["errors_nonzero"] == 0
    assert counters["errors_sqlite"] == 0

    assert set(data["archive_stats"]) == {archive}  # not the other archive of the catalog
    stats = data["archive_stats"][archive]
    assert set(stats) == STATS_KEYS
    bad_row = site.row(site.bad[iid])
    assert stats["finalized_until"] == pytest.approx(bad_row["timestamp"] - 1)
    known = {r["local_path"]: r for r in site.sql(
        "SELECT * FROM supersync_v0 WHERE archive_name = ?", archive)}
    assert stats["last_file_added"] in known
    copied = known[stats["last_file_copied"]]
    assert copied["remote_md5sum"] == copied["local_md5sum"]

    last_copy = data["last_copy"]
    assert set(last_copy) == {"start_time", "stop_time", "files"}  # no "error"
    assert site.started <= last_copy["start_time"] <= last_copy["stop_time"]
    for entry in last_copy["files"]:
        path, ok = entry
        assert path in known and isinstance(ok, bool)


@pytest.mark.parametrize("iid", [TS, SMURF])
def test_run_session_not_degraded(site: Site, iid: str) -> None:
    session = site.status(iid)
    assert session["status"] == "running"
    assert session["degraded"] is False
    assert session["op_name"] == "run"


@pytest.mark.parametrize("iid", [TS, SMURF])
def test_api_lists_tasks_and_feeds(site: Site, iid: str) -> None:
    api = get_control_client(iid, args=site.agents[iid].site_args).get_api()
    assert api["agent_class"] == "SupRsync"
    assert {name for name, *_ in api["processes"]} == {"run"}
    assert {name for name, *_ in api["tasks"]} == {
        "retry_failed", "set_ignore", "recheck", "rebuild_timecode_dirs"}
    feeds = {name: info for name, info in api["feeds"]}
    assert feeds["archive_stats"]["record"] is True
    assert feeds["transfer_stats"]["record"] is True
    assert feeds["transfer_stats"]["agg_params"] == {"exclude_aggregator": True}


def test_degraded_while_catalog_unavailable(site: Site) -> None:
    """The catalog's directory is missing: run is degraded, and recovers once it appears."""
    wait_for(lambda: site.status(OFFLINE).get("degraded") is True, 30,
             f"the run session of {OFFLINE} to be degraded",
             state=lambda: site.status(OFFLINE))
    site.assert_running(OFFLINE)

    site.offline_db_dir.unlink()
    site.offline_db_dir.mkdir()

    def recovered() -> dict | None:
        session = site.status(OFFLINE)
        data = session.get("data") or {}
        iterated = data.get("counters", {}).get("iterations", 0) >= 1
        return session if session.get("degraded") is False and iterated else None

    session = wait_for(recovered, 30, f"{OFFLINE} to open its catalog",
                       state=lambda: site.status(OFFLINE))
    assert session["status"] == "running"
    assert set(session["data"]) == SESSION_KEYS
    assert (site.offline_db_dir / "suprsync.db").is_file()


def test_set_ignore(site: Site) -> None:
    site.assert_running(SMURF)
    bad = site.bad[SMURF]
    assert not site.row(bad)["ignore"]

    session = site.task(SMURF, "set_ignore", paths=[str(bad)], ignore=True)
    assert session["data"]["changed"] == 1 and session["data"]["ignore"] is True
    assert site.row(bad)["ignore"]

    # The ignored file no longer counts as uncopied, and is not attempted any more.
    wait_for(lambda: site.data(SMURF)["archive_stats"]["smurf"]["uncopied_files"] == 0, 30,
             "archive_stats to leave out the ignored file", state=lambda: site.data(SMURF))
    attempts = site.row(bad)["failed_copy_attempts"]
    site.wait_iterations(SMURF, 2)
    assert site.row(bad)["failed_copy_attempts"] == attempts

    session = site.task(SMURF, "set_ignore", paths=[str(bad)], ignore=False)
    assert session["data"]["changed"] == 1 and session["data"]["ignore"] is False
    assert not site.row(bad)["ignore"]
    wait_for(lambda: site.data(SMURF)["archive_stats"]["smurf"]["uncopied_files"] == 1, 30,
             "archive_stats to count the file again", state=lambda: site.data(SMURF))


def test_recheck(site: Site) -> None:
    site.assert_running(TS)
    path, remote_path = site.good[TS][0]
    remote = site.remote[TS] / remote_path
    assert remote.read_bytes() == path.read_bytes()

    new_content = b"changed after it was synced\n" * 100  # another size than before
    path.write_bytes(new_content)
    missing = site.dir / "data" / "never-registered.dat"
    old_md5 = site.row(path)["local_md5sum"]
    old_content = remote.read_bytes()
    session = site.task(TS, "recheck", paths=[str(path), str(missing)])
    data = session["data"]
    # The file's copy was verified: its new content is a conflict, never sent over it.
    assert data["queued"] == []
    assert data["conflicts"] == [str(path)]
    assert data["not_found"] == [str(missing)]
    assert data["gone"] == []
    assert site.row(path)["local_md5sum"] == old_md5
    assert remote.read_bytes() == old_content
    kinds = site.sql("SELECT kind FROM suprsync_conflicts_v0 WHERE file_id = ?",
                     site.row(path)["id"])
    assert [k["kind"] for k in kinds] == ["changed"]


def test_rebuild_timecode_dirs(site: Site) -> None:
    for iid in (TS, SMURF):
        site.assert_running(iid)
        open_dirs = [tc for tc, r in site.tcdirs(iid).items() if not r["completed"]]
        assert open_dirs, f"{iid} has no open timecode dir"  # the one of the bad file
        site.sql("DELETE FROM timecode_dirs_v0 WHERE archive_name = ? AND completed = 0",
                 ARCHIVE[iid])
        assert not set(open_dirs) & set(site.tcdirs(iid))

        session = site.task(iid, "rebuild_timecode_dirs")
        assert session["data"]["created"] == len(open_dirs)
        dirs = site.tcdirs(iid)
        assert set(open_dirs) <= set(dirs)
        assert not any(dirs[tc]["completed"] or dirs[tc]["finalized"] for tc in open_dirs)
        assert all(dirs[tc]["finalized"] for tc in OLD_TCS)

        session = site.task(iid, "rebuild_timecode_dirs")
        assert session["data"]["created"] == 0


def test_retry_failed(site: Site) -> None:
    site.assert_running(TS)
    bad = site.bad[TS]

    # Every iteration fails to send the vanished file, up to --max-copy-attempts.
    wait_for(lambda: site.row(bad)["failed_copy_attempts"] >= MAX_COPY_ATTEMPTS, 60,
             f"{bad.name} to reach {MAX_COPY_ATTEMPTS} failed attempts",
             state=lambda: dict(site.row(bad)))
    attempts = site.row(bad)["failed_copy_attempts"]
    site.wait_iterations(TS, 2)
    assert site.row(bad)["failed_copy_attempts"] == attempts  # not attempted any more

    # Only the given paths: a verified file is not reset.
    good, _ = site.good[TS][1]
    session = site.task(TS, "retry_failed", paths=[str(good)])
    assert session["data"]["reset"] == 0
    assert site.row(bad)["failed_copy_attempts"] == attempts

    session = site.task(TS, "retry_failed", paths=[str(bad)])
    assert session["data"]["reset"] == 1
    assert site.row(bad)["failed_copy_attempts"] < MAX_COPY_ATTEMPTS

    # It is attempted again (and fails again: it is still missing).
    wait_for(lambda: [str(bad), False] in site.data(TS)["last_copy"]["files"], 30,
             f"{bad.name} to be copied again", state=lambda: site.data(TS)["last_copy"])
    assert 1 <= site.row(bad)["failed_copy_attempts"] < MAX_COPY_ATTEMPTS

    # Without paths: every file at the limit (none now).
    session = site.task(TS, "retry_failed")
    assert session["data"]["reset"] == 0


def test_run_stop(site: Site) -> None:
    """stop ends run promptly although the loop sleeps; tasks still work; SIGINT exits."""
    for iid in (TS, SMURF, OFFLINE):
        site.assert_running(iid)
        reply = site.clients[iid].run.stop()
        assert reply.status == ocs.OK, reply
    for iid in (TS, SMURF, OFFLINE):
        session = wait_for(lambda iid=iid: (s := site.status(iid))["status"] == "done" and s,
                           STOP_TIMEOUT, f"the run process of {iid} to end",
                           state=lambda iid=iid: site.status(iid))
        assert session["success"] is True, session["messages"]
        assert session["data"]["activity"] == "idle"

    # With run stopped, a task works on the catalog directly.
    bad = site.bad[SMURF]
    session = site.task(SMURF, "set_ignore", paths=[str(bad)])
    assert session["data"]["changed"] == 1
    assert site.row(bad)["ignore"]

    # run can be started again, and stopped again.
    client = site.clients[TS]
    reply = client.run.start()
    assert reply.status == ocs.OK, reply
    # (once its first copy step is over: a stop during a transfer kills the transfer)
    wait_for(lambda: site.status(TS)["status"] == "running" and site.data(TS)["last_copy"], 30,
             f"the run process of {TS} to iterate again", state=lambda: site.status(TS))
    assert site.status(TS)["degraded"] is False
    assert client.run.stop().status == ocs.OK
    wait_for(lambda: site.status(TS)["status"] == "done", STOP_TIMEOUT,
             f"the restarted run process of {TS} to end", state=lambda: site.status(TS))
    assert site.status(TS)["success"] is True

    for iid in (TS, SMURF, OFFLINE):
        assert site.agents[iid].running(), f"agent {iid} exited"
        site.agents[iid].interrupt()
    for iid in (TS, SMURF, OFFLINE):
        assert site.agents[iid].stop() == 0, f"agent {iid} did not exit cleanly on SIGINT"
