"""The sqlite catalog file changed under a running agent.

Deleted, renamed, replaced, truncated, overwritten, its disk full, made
immutable: the agent notices it within one iteration, logs what happened,
marks the session degraded, and then reopens the catalog found at its path or
stops with one line and a non-zero status (for systemd or OCS to restart it).
Real sqlite files on real tmpfs mounts, a real ``suprsync run`` process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SUPRSYNC
from helpers import (
    ARCHIVE,
    Clock,
    clock_fixture,  # noqa: F401 - the clock fixture
    is_synced,
    mount_tmpfs,
    umount,
    wait_until,
    write_file,
)
from invariants import check_invariants

from suprsync import SupRsyncFilesManager
from suprsync.agent import Agent, AgentConfig
from suprsync.catalog.watch import (
    Action,
    CatalogLost,
    FileId,
    Verdict,
    catalog_problem,
    verdict,
)


class Recorder:
    """An agent with the degraded flags it reported, in order."""

    def __init__(self, tmp_path: Path, db: Path, clock: Clock) -> None:
        self.degraded: list[bool] = []
        config = AgentConfig(archive_name=ARCHIVE, remote_basedir=str(tmp_path / "remote"),
                             db_path=str(db), suprsync_file_root=str(tmp_path / "srfroot"),
                             sleep_time=0, cmd_timeout=30, copy_timeout=60)
        self.agent = Agent(config, clock=clock,
                           on_session_change=lambda _data, d: self.degraded.append(d))

    def close(self) -> None:
        self.agent.close()
        self.agent.manager.close()


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs for the catalog: it can be filled."""
    folder = tmp_path / "catalog"
    mount_tmpfs(folder, "8m")
    try:
        yield folder
    finally:
        umount(folder)


@pytest.fixture
def recorder(tmp_path: Path, catalog_dir: Path, clock: Clock) -> Iterator[Recorder]:
    rec = Recorder(tmp_path, catalog_dir / "suprsync.db", clock)
    yield rec
    rec.close()


def add(db: Path, folder: Path, name: str, clock: Clock) -> int:
    """Register one real file with a manager of its own."""
    path = write_file(folder / name, f"data of {name}\n".encode() * 30)
    manager = SupRsyncFilesManager(str(db), clock=clock)
    try:
        return manager.add_file(str(path), f"16750/{name}", ARCHIVE).id
    finally:
        manager.close()


def synced(db: Path, file_id: int, clock: Clock) -> bool:
    manager = SupRsyncFilesManager(str(db), clock=clock)
    try:
        return is_synced(manager, file_id)
    finally:
        manager.close()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def garbage(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(8192))


FAULTS: dict[str, Callable[[Path], None]] = {
    "deleted": lambda db: db.unlink(),
    "renamed": lambda db: db.rename(db.with_name("moved.db")),
    "replaced-by-garbage": lambda db: (db.with_name("new").write_bytes(os.urandom(9000)),
                                       os.replace(db.with_name("new"), db)),
    "truncated": lambda db: os.truncate(db, 0),
    "overwritten-with-garbage": garbage,
}
REASONS = {
    "deleted": "was deleted or renamed",
    "renamed": "was deleted or renamed",
    "replaced-by-garbage": "was replaced by a file that is not a catalog",
    "truncated": "is damaged",
    "overwritten-with-garbage": "is damaged",
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_lost_catalog_stops_the_agent_with_one_reason(
        fault: str, recorder: Recorder, catalog_dir: Path, tmp_path: Path, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    db = catalog_dir / "suprsync.db"
    first = add(db, tmp_path / "local", "a.g3", clock)
    agent = recorder.agent
    assert agent.iterate() is True
    assert synced(db, first, clock)

    FAULTS[fault](db)
    caplog.clear()
    with pytest.raises(CatalogLost, match=REASONS[fault]):
        agent.iterate()
    assert recorder.degraded[-1] is True
    logged = errors(caplog)
    assert logged and REASONS[fault] in logged[-1] and str(db) in logged[-1]


def test_catalog_replaced_by_another_is_reopened_in_the_same_iteration(
        recorder: Recorder, catalog_dir: Path, tmp_path: Path, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    db = catalog_dir / "suprsync.db"
    add(db, tmp_path / "local", "a.g3", clock)
    agent = recorder.agent
    assert agent.iterate() is True

    other = catalog_dir / "other.db"
    new = add(other, tmp_path / "local", "b.g3", clock)
    os.replace(other, db)
    caplog.clear()
    assert agent.iterate() is True
    assert synced(db, new, clock), "the file of the new catalog was not copied"
    assert agent.session.counters["errors_sqlite"] == 1
    assert True in recorder.degraded and recorder.degraded[-1] is False
    logged = errors(caplog)
    assert len(logged) == 1 and "was replaced by another catalog" in logged[0], logged
    check_invariants(db, {ARCHIVE: tmp_path / "remote"}, file_root=tmp_path / "srfroot")


def test_full_catalog_disk_fails_the_iteration_then_recovers(
        recorder: Recorder, catalog_dir: Path, tmp_path: Path, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    db = catalog_dir / "suprsync.db"
    first = add(db, tmp_path / "local", "a.g3", clock)
    agent = recorder.agent
    filler = catalog_dir / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)  # unbuffered: nothing is left to flush at close
        except OSError:
            pass
    caplog.clear()
    ok = agent.iterate()
    logged = errors(caplog)
    assert ok is False
    assert agent.session.counters["errors_sqlite"] == 1
    assert agent.session.degraded is True
    assert any("full" in line for line in logged), logged

    filler.unlink()
    assert agent.iterate() is True
    assert agent.session.degraded is False
    assert synced(db, first, clock)
    check_invariants(db, {ARCHIVE: tmp_path / "remote"}, file_root=tmp_path / "srfroot")


def test_immutable_catalog_is_reported_each_iteration_then_recovers(
        recorder: Recorder, catalog_dir: Path, tmp_path: Path, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    db = catalog_dir / "suprsync.db"
    add(db, tmp_path / "local", "a.g3", clock)
    agent = recorder.agent
    assert agent.iterate() is True
    later = add(db, tmp_path / "local", "b.g3", clock)
    subprocess.run(["chattr", "+i", str(db)], check=True, timeout=10)
    try:
        for n in (1, 2):
            caplog.clear()
            assert agent.iterate() is False
            assert agent.session.counters["errors_sqlite"] == n
            assert agent.session.degraded is True
            logged = errors(caplog)
            assert len(logged) == 1 and "cannot be written" in logged[0], logged
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True, timeout=10)
    assert agent.iterate() is True
    assert agent.session.degraded is False
    assert synced(db, later, clock)
    check_invariants(db, {ARCHIVE: tmp_path / "remote"}, file_root=tmp_path / "srfroot")


# ------------------------------------------------------------- a real run process


def run_agent(tmp_path: Path, db: Path) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "agent.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--remote-basedir",
             str(tmp_path / "remote"), "--db-path", str(db), "--suprsync-file-root",
             str(tmp_path / "srfroot"), "--sleep-time", "0.2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_file)
    return proc, err


@pytest.mark.parametrize("fault", ["deleted", "overwritten-with-garbage"])
def test_run_process_exits_non_zero_with_one_line_when_its_catalog_is_lost(
        fault: str, tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "catalog" / "suprsync.db"
    first = add(db, tmp_path / "local", "a.g3", clock)
    proc, err = run_agent(tmp_path, db)
    try:
        try:
            wait_until(lambda: proc.poll() is not None or synced(db, first, clock), 30,
                       "the first copy")
        except AssertionError:
            raise AssertionError(err.read_text()) from None
        assert proc.poll() is None, err.read_text()
        FAULTS[fault](db)
        assert proc.wait(timeout=30) == 1, err.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    text = err.read_text()
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("suprsync run: error: catalog ") and REASONS[fault] in last, text


# ------------------------------------------------------------- the policy, pure

A, B = FileId(1, 10), FileId(1, 11)


@pytest.mark.parametrize(("opened", "now", "problem", "code", "writable", "expected"), [
    (A, A, None, None, True, Verdict(Action.CONTINUE)),
    (A, None, None, None, True, Verdict(Action.EXIT, "was deleted or renamed")),
    (A, B, None, None, True, Verdict(Action.REOPEN, "was replaced by another catalog")),
    (A, B, "file is not a database", None, True,
     Verdict(Action.EXIT, "was replaced by a file that is not a catalog "
                          "(file is not a database)")),
    (A, A, "it has no table supersync_v0", "SQLITE_ERROR", True,
     Verdict(Action.EXIT, "is damaged: it has no table supersync_v0")),
    (A, A, None, "SQLITE_CORRUPT", True, Verdict(Action.EXIT, "is damaged (SQLITE_CORRUPT)")),
    (A, A, None, "SQLITE_NOTADB", True, Verdict(Action.EXIT, "is damaged (SQLITE_NOTADB)")),
    (A, A, None, None, False,
     Verdict(Action.WAIT, "cannot be written (read-only or immutable)")),
    (A, A, None, "SQLITE_READONLY", False,
     Verdict(Action.WAIT, "cannot be written (read-only or immutable)")),
    (A, A, None, "SQLITE_FULL", True, Verdict(Action.REOPEN)),
    (A, A, None, "SQLITE_IOERR_WRITE", True, Verdict(Action.REOPEN)),
])
def test_verdict_on_the_catalog_file(opened, now, problem, code, writable, expected) -> None:
    assert verdict(opened, now, problem, code, writable) == expected


def test_catalog_problem_tells_a_catalog_from_other_files(tmp_path: Path,
                                                          clock: Clock) -> None:
    db = tmp_path / "c" / "suprsync.db"
    SupRsyncFilesManager(str(db), clock=clock).close()
    assert catalog_problem(str(db)) is None
    other = tmp_path / "other.db"
    shutil.copy(db, other)
    garbage(other)
    assert catalog_problem(str(other)) == "it does not begin with an sqlite header"
    with open(other, "r+b") as f:
        f.write(db.read_bytes()[:100])
    assert catalog_problem(str(other)) in ("file is not a database",
                                           "database disk image is malformed")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert catalog_problem(str(empty)) == "it is empty"
    assert catalog_problem(str(tmp_path / "none.db")) == \
        "it cannot be read: No such file or directory"
