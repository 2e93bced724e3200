"""Crash consistency: the agent killed with SIGKILL at random moments never loses a file.

500 files in six timecode dirs are copied, verified, deleted and finalized by the
real ``suprsync run`` process, which is killed 30 times at random moments and
restarted, then run cleanly to the end. A monitor thread checks all along that
no local file is gone unless its remote copy is present with the right md5.
Set SUPRSYNC_CRASH_SEED to replay the kill times of a logged run.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from conftest import SUPRSYNC

from suprsync import SupRsyncFilesManager
from suprsync.catalog.timecode import timecode_at

ARCHIVE = "crashy"
INSTANCE = "crash-agent"
NUM_FILES = 500
NUM_DIRS = 6
KILLS = 30
KILL_DELAY = (0.05, 0.8)
BATCH = 40
START_TIMEOUT = 30.0
FINAL_TIMEOUT = 60.0
#: The agent logs this line when its loop starts; kill delays count from there.
LOOP_STARTED = "syncing archive"


@dataclass(frozen=True)
class Tracked:
    """A registered file the monitor watches: where it is, where it goes, its md5."""

    local: str
    remote: str
    md5: str


def md5_path(path: str | Path) -> str:
    """Hex md5 of a file."""
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@dataclass
class InvariantMonitor:
    """Polls every few ms: a local file that is gone has a verified remote copy.

    The data files are known from the start; finalization files are picked up
    from the catalog once registered. Files that vanished are checked when they
    vanish and then again, a sample each round.
    """

    db: Path
    remote: Path
    files: list[Tracked]
    seed: int
    violations: list[str] = field(default_factory=list)
    rounds: int = 0
    checks: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def _check(self, item: Tracked) -> None:
        self.checks += 1
        copy = self.remote / item.remote
        try:
            got = md5_path(copy)
        except FileNotFoundError:
            got = None
        if got != item.md5:
            reason = "missing" if got is None else f"md5 {got}, expected {item.md5}"
            self.violations.append(f"{time.time():.3f} {item.local} is gone locally but its "
                                   f"remote copy {item.remote} is {reason}")

    def _finalization_files(self, conn: sqlite3.Connection) -> list[Tracked]:
        rows = conn.execute("SELECT local_path, remote_path, local_md5sum FROM supersync_v0 "
                            "WHERE remote_path LIKE '%finalized.yaml'").fetchall()
        return [Tracked(*row) for row in rows]

    def run(self) -> None:
        """Watch until stopped."""
        rng = random.Random(self.seed)
        present = {t.local: t for t in self.files}
        known = set(present)
        gone: list[Tracked] = []
        conn = sqlite3.connect(self.db, timeout=30)
        next_catalog_read = 0.0
        try:
            while not self.stop.is_set():
                if time.monotonic() >= next_catalog_read:
                    for item in self._finalization_files(conn):
                        if item.local not in known:
                            known.add(item.local)
                            present[item.local] = item
                    next_catalog_read = time.monotonic() + 0.05
                vanished = [t for path, t in present.items() if not os.path.exists(path)]
                for item in vanished:
                    del present[item.local]
                    self._check(item)
                    gone.append(item)
                for item in rng.sample(gone, min(10, len(gone))):
                    self._check(item)
                self.rounds += 1
                self.stop.wait(0.003)
        finally:
            conn.close()


def make_files(data: Path, now_tc: int, rng: random.Random) -> list[Tracked]:
    """NUM_FILES files of a few KiB spread over NUM_DIRS dirs ending at now_tc."""
    files = []
    timecodes = [now_tc - NUM_DIRS + 1 + i for i in range(NUM_DIRS)]
    for i in range(NUM_FILES):
        rel = f"{timecodes[i % NUM_DIRS]}/ufm_{'abc'[i % 3]}/file_{i:04d}.dat"
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        content = rng.randbytes(rng.randint(1024, 6 * 1024))
        path.write_bytes(content)
        files.append(Tracked(str(path), rel, hashlib.md5(content).hexdigest()))
    return files


def last_step(log_text: str) -> str:
    """Which step the agent was in when it died, judged by its last log line."""
    steps = [("finalizing", ("finalized timecode dir", "removing unregistered finalization")),
             ("deleting", ("deleted local copy", "was already gone")),
             ("stats/delete check", ("files, ",)),
             ("copying/verifying", ("copied and verified",)),
             ("first copy step", (LOOP_STARTED,))]
    for line in reversed(log_text.splitlines()):
        for step, markers in steps:
            if any(m in line for m in markers):
                return step
    return "starting"


def progress(db: Path) -> dict[str, int]:
    """Catalog counts: verified rows, deleted rows, finalized dirs."""
    with sqlite3.connect(db, timeout=30) as conn:
        synced, removed, total = conn.execute(
            "SELECT coalesce(sum(remote_md5sum = local_md5sum), 0),"
            " coalesce(sum(removed IS NOT NULL), 0), count(*) FROM supersync_v0").fetchone()
        finalized = conn.execute(
            "SELECT count(*) FROM timecode_dirs_v0 WHERE finalized = 1").fetchone()[0]
    return {"rows": total, "synced": synced, "removed": removed, "finalized": finalized}


def all_done(db: Path, min_finalized: int) -> bool:
    """Nothing left to copy, delete or finalize."""
    with sqlite3.connect(db, timeout=30) as conn:
        copyable, deletable = conn.execute(
            "SELECT coalesce(sum(remote_md5sum IS NULL OR remote_md5sum != local_md5sum), 0),"
            " coalesce(sum(remote_md5sum = local_md5sum AND removed IS NULL), 0)"
            " FROM supersync_v0").fetchone()
        unfinalized, finalized = conn.execute(
            "SELECT coalesce(sum(completed = 1 AND NOT finalized), 0),"
            " coalesce(sum(finalized = 1), 0) FROM timecode_dirs_v0").fetchone()
    return copyable == 0 and deletable == 0 and unfinalized == 0 and finalized >= min_finalized


def leftover_claims(db: Path) -> list[tuple[str, int]]:
    """Leases on files still in the catalog's claims table: (agent id, files), if any."""
    with sqlite3.connect(db, timeout=30) as conn:
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "suprsync_claims_v0" not in tables:
            return []
        return conn.execute("SELECT agent_id, count(*) FROM suprsync_claims_v0 "
                            "GROUP BY agent_id ORDER BY agent_id").fetchall()


def processes_using(marker: str) -> dict[int, bytes]:
    """Live processes whose command line mentions marker: pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found[int(entry)] = cmdline
    return found


def wait_for_orphans(marker: str, timeout: float = 30.0) -> tuple[int, list[bytes]]:
    """Wait for the rsyncs orphaned by the kills to end: (how many, those still running)."""
    deadline = time.monotonic() + timeout
    seen = set(processes_using(marker))
    while (running := processes_using(marker)) and time.monotonic() < deadline:
        seen |= set(running)
        time.sleep(0.05)
    return len(seen), list(running.values())


class AgentRunner:
    """Starts ``suprsync run`` for the crash test, one stderr log per run."""

    def __init__(self, tmp_path: Path, db: Path, remote: Path, file_root: Path) -> None:
        self.tmp_path = tmp_path
        #: The agent's TMPDIR, where it makes its staging dirs.
        self.stage_dir = tmp_path / "agent-tmp"
        self.stage_dir.mkdir()
        self.argv = [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--instance-id", INSTANCE,
                     "--remote-basedir", str(remote), "--db-path", str(db),
                     "--suprsync-file-root", str(file_root), "--sleep-time", "0",
                     "--delete-local-after", "0", "--files-per-batch", str(BATCH)]
        self.runs = 0
        self.killed: list[int] = []
        self.current: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        """Start the agent and wait until its loop runs."""
        self.runs += 1
        log_path = self.tmp_path / f"agent-{self.runs:02d}.stderr"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log,
                                    env={**os.environ, "TMPDIR": str(self.stage_dir)})
        self.current = proc
        deadline = time.monotonic() + START_TIMEOUT
        while LOOP_STARTED not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(timeout=30)
                raise AssertionError(f"agent run {self.runs} did not start:\n"
                                     + log_path.read_text(errors="replace"))
            time.sleep(0.002)
        return proc, log_path

    def kill_current(self) -> None:
        """SIGKILL the last agent started if it still runs (cleanup after a failure)."""
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
            self.current.wait(timeout=30)


def test_random_sigkills_never_lose_a_file(tmp_path: Path) -> None:
    seed = int(os.environ.get("SUPRSYNC_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"SUPRSYNC_CRASH_SEED={seed}")
    rng = random.Random(seed)
    db = tmp_path / "catalog.db"
    data = tmp_path / "data"
    remote = tmp_path / "remote"
    file_root = tmp_path / "suprsync-files"
    now_tc = timecode_at(time.time())
    older = list(range(now_tc - NUM_DIRS + 1, now_tc))

    files = make_files(data, now_tc, rng)
    manager = SupRsyncFilesManager(str(db))
    manager.write(lambda s: [manager.add_file(t.local, t.remote, ARCHIVE, session=s)
                             for t in files], what="register test files")
    manager.close()

    monitor = InvariantMonitor(db, remote, files, seed)
    watcher = threading.Thread(target=monitor.run, name="invariant-monitor", daemon=True)
    watcher.start()
    runner = AgentRunner(tmp_path, db, remote, file_root)
    steps: Counter[str] = Counter()
    history = []
    try:
        for kill in range(KILLS):
            proc, log_path = runner.start()
            time.sleep(rng.uniform(*KILL_DELAY))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            runner.killed.append(proc.pid)
            assert proc.returncode == -signal.SIGKILL, (
                f"seed {seed}: run {kill + 1} ended by itself ({proc.returncode}):\n"
                + log_path.read_text(errors="replace"))
            log_text = log_path.read_text(errors="replace")
            assert "Traceback" not in log_text, f"seed {seed}:\n{log_text}"
            step = last_step(log_text)
            steps[step] += 1
            history.append((kill + 1, step, progress(db)))

        # A clean run to the end.
        proc, log_path = runner.start()
        deadline = time.monotonic() + FINAL_TIMEOUT
        while not all_done(db, len(older)) and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")
        final_log = log_path.read_text(errors="replace")
        assert "Traceback" not in final_log, final_log
        assert all_done(db, len(older)), (
            f"seed {seed}: not done {FINAL_TIMEOUT:.0f} s after the last restart: "
            f"{progress(db)}; files leased to agents: {leftover_claims(db)}; killed agent "
            f"pids: {runner.killed}")
    finally:
        runner.kill_current()
        orphans, still_running = wait_for_orphans(str(runner.stage_dir))
        monitor.stop.set()
        watcher.join(timeout=30)
    assert not still_running, f"orphaned processes still running: {still_running}"

    print(f"kills by step (last log line): {dict(steps)}")
    for number, step, counts in history:
        print(f"  kill {number:2d} in {step:20s} then {counts}")
    print(f"monitor: {monitor.rounds} rounds, {monitor.checks} remote checks")
    assert monitor.rounds > 1000, monitor.rounds
    assert not monitor.violations, f"seed {seed}: invariant broken:\n" + "\n".join(
        monitor.violations[:50])

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, local_path, local_md5sum, remote_path, remote_md5sum,"
                            " removed FROM supersync_v0 WHERE archive_name = ?",
                            (ARCHIVE,)).fetchall()
        tcdirs = conn.execute("SELECT timecode, finalized, finalize_file_id FROM "
                              "timecode_dirs_v0 WHERE archive_name = ?", (ARCHIVE,)).fetchall()

    # Every registered file is on the remote with its md5, and deleted locally.
    expected = {t.remote: t.md5 for t in files}
    by_remote = {r[3]: r for r in rows}
    assert len(by_remote) == len(rows), "two rows share a remote path"
    for _id, local, local_md5, rel, remote_md5, removed in rows:
        assert local_md5 == remote_md5 == expected.get(rel, local_md5), rel
        assert md5_path(remote / rel) == local_md5, rel
        assert removed is not None and not os.path.exists(local), local
    assert set(expected) <= set(by_remote)

    # One finalization file per finalized dir: registered once, on the remote once.
    finalized = {tc: file_id for tc, done, file_id in tcdirs if done}
    assert set(older) <= set(finalized), f"seed {seed}: finalized {sorted(finalized)}"
    for tc, file_id in finalized.items():
        suffix = f"_{ARCHIVE}_{tc}_finalized.yaml"
        registered = [r for r in rows if r[3].endswith(suffix)]
        assert len(registered) == 1, (tc, registered)
        assert registered[0][0] == file_id, (tc, registered, file_id)
        on_remote = glob.glob(str(remote / "**" / f"*{suffix}"), recursive=True)
        assert len(on_remote) == 1, (tc, on_remote)
        summary = yaml.safe_load(Path(on_remote[0]).read_text())
        assert summary["timecode"] == tc
        assert summary["num_files"] == sum(r[3].startswith(f"{tc}/") for r in rows)

    # No unregistered finalization YAML left locally.
    registered_local = {r[1] for r in rows}
    local_temps = []
    for folder, _dirs, names in os.walk(file_root):
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith("."):
                local_temps.append(path)
            else:
                assert path in registered_local, f"seed {seed}: orphan finalization file {path}"

    # Every file under a final name on the remote is a registered file with its md5;
    # only hidden rsync temporaries may be left by a kill.
    remote_temps = []
    for folder, _dirs, names in os.walk(remote):
        for name in names:
            path = Path(folder, name)
            rel = path.relative_to(remote).as_posix()
            if name.startswith("."):
                remote_temps.append(rel)
                assert re.fullmatch(r"\..+\.[A-Za-z0-9]{6}", name), rel
                continue
            assert rel in by_remote, f"seed {seed}: unregistered file on the remote: {rel}"
            assert md5_path(path) == by_remote[rel][2], rel
    stages = list(runner.stage_dir.iterdir())
    print(f"left behind: {len(remote_temps)} remote rsync temporaries, "
          f"{len(local_temps)} local temporaries, {len(stages)} staging dirs; "
          f"{orphans} rsyncs outlived their agent")
