"""What the status page shows, gathered from a running agent.

The agent's session data, the events it logged and what its copy steps moved come
from memory. The rest comes from a few small catalog queries, each with a LIMIT,
whose answer is kept for :data:`CACHE_SECONDS`: a page load never scans a large
archive, and a catalog that is locked or gone leaves the page with what the agent
knows, saying so.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, aliased

from .catalog.conflicts import list_conflicts
from .catalog.quarantine import HEALTHY
from .catalog.schema import SupRsyncFile, TimecodeDir
from .catalog.store import unsynced_rows
from .events import EventLog

if TYPE_CHECKING:
    from .agent import Agent
    from .copying import CopyReport

F = SupRsyncFile

#: Seconds a catalog answer is reused.
CACHE_SECONDS = 5.0
#: Seconds a page load waits for the catalog before it renders without it.
QUERY_WAIT = 2.0
#: Rows listed per table (failing files, conflicts, quarantined rows, timecode dirs).
ROWS = 20
#: Oldest waiting files read for the failing ones and the backlog's bytes.
SCAN_WAITING = 2000
#: Event kinds that say why a file failed (see the log calls marked with events.event).
FAILURE_KINDS = ("copy failed", "verify failed")
#: Seconds of copy steps the transfer rate is averaged over.
RATE_WINDOW = 600.0


class Throughput:
    """The bytes and files verified by the recent copy steps, for a transfer rate."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._steps: deque[tuple[float, float, int, int]] = deque(maxlen=1000)
        self._guard = threading.Lock()
        #: (stop time, files verified, bytes verified) of the last step that verified one.
        self.last: tuple[float, int, int] | None = None

    def add(self, report: CopyReport) -> None:
        """Account one copy step."""
        good = sum(bool(ok) for _, ok in report.files)
        if not report.files:
            return
        with self._guard:
            self._steps.append((report.stop_time, max(0.0, report.stop_time - report.start_time),
                                good, report.bytes_verified))
            if good:
                self.last = (report.stop_time, good, report.bytes_verified)

    def summary(self, now: float) -> dict[str, Any]:
        """Files and bytes verified in the window, and bytes per second while copying."""
        with self._guard:
            while self._steps and self._steps[0][0] < now - self.window:
                self._steps.popleft()
            steps = list(self._steps)
            last = self.last
        busy = sum(s[1] for s in steps)
        moved = sum(s[3] for s in steps)
        return {"window": self.window, "files": sum(s[2] for s in steps), "bytes": moved,
                "busy_seconds": busy, "rate": moved / busy if busy > 0 else None,
                "last_verified": None if last is None else
                {"time": last[0], "files": last[1], "bytes": last[2]}}


def _number(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def catalog_view(session: Session, archive_name: str) -> dict[str, Any]:
    """The page's catalog figures of one archive, from bounded queries."""
    waiting = session.execute(
        unsynced_rows(archive_name, F.id, F.local_path, F.remote_path,
                      F.failed_copy_attempts, F.removed, F.timestamp)
        .where(HEALTHY).limit(SCAN_WAITING)).all()
    failing = sorted(({"id": r.id, "local_path": r.local_path, "remote_path": r.remote_path,
                       "attempts": _number(r.failed_copy_attempts), "timestamp": r.timestamp}
                      for r in waiting if _number(r.failed_copy_attempts) > 0),
                     key=lambda f: (-f["attempts"], f["id"]))
    tables = set(inspect(session.get_bind()).get_table_names())
    conflicts = list_conflicts(session, archive_name, limit=ROWS)
    dirs: dict[str, int] = {"open": 0, "completed": 0, "finalized": 0}
    recent: list[dict[str, Any]] = []
    if TimecodeDir.__tablename__ in tables:
        in_archive = TimecodeDir.archive_name == archive_name
        for completed, finalized, n in session.execute(
                select(TimecodeDir.completed, TimecodeDir.finalized, func.count())
                .where(in_archive)
                .group_by(TimecodeDir.completed, TimecodeDir.finalized)):
            dirs["finalized" if finalized else "completed" if completed else "open"] += n
        final = aliased(F)
        for d, written, remote in session.execute(
                select(TimecodeDir, final.timestamp, final.remote_path)
                .join(final, final.id == TimecodeDir.finalize_file_id, isouter=True)
                .where(in_archive).order_by(TimecodeDir.timecode.desc()).limit(ROWS)):
            recent.append({"timecode": d.timecode, "completed": bool(d.completed),
                           "finalized": bool(d.finalized), "finalized_at": written,
                           "finalization_file": remote})
    return {"waiting_scanned": len(waiting), "scan_limit": SCAN_WAITING,
            "waiting_paths": [r.local_path for r in waiting if r.removed is None],
            "failing": failing[:ROWS], "failing_found": len(failing),
            "conflicts": conflicts, "timecode_dirs": dirs, "recent_dirs": recent}


def waiting_bytes(paths: list[str]) -> int:
    """Bytes of the local files at these paths (those that are there)."""
    total = 0
    for path in paths:
        try:
            total += os.lstat(path).st_size
        except (OSError, TypeError, ValueError):
            continue
    return total


class CatalogCache:
    """Runs the page's catalog query at most once per ``ttl`` seconds, in its own thread.

    A page load waits at most ``wait`` seconds for a fresh answer, then renders with
    the last one (or none) and the reason.
    """

    def __init__(self, ttl: float = CACHE_SECONDS, wait: float = QUERY_WAIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.wait, self.clock = ttl, wait, clock
        self._guard = threading.Lock()
        self._data: dict[str, Any] | None = None
        self._error: str | None = None
        self._at: float | None = None
        self._job: threading.Thread | None = None

    def get(self, fetch: Callable[[], dict[str, Any]]
            ) -> tuple[dict[str, Any] | None, str | None, float | None]:
        """(data, error, age in seconds of data) after at most ``wait`` seconds."""
        with self._guard:
            fresh = self._at is not None and self.clock() - self._at < self.ttl
            job = self._job
            if not fresh and job is None:
                job = self._job = threading.Thread(target=self._run, args=(fetch,),
                                                   name="status-page-query", daemon=True)
                job.start()
        if job is not None:
            job.join(self.wait)
        with self._guard:
            error = self._error
            if self._job is not None and self._job.is_alive():
                error = (f"the catalog did not answer within {self.wait:.0f} s "
                         "(locked by another program?)")
            age = None if self._at is None else self.clock() - self._at
            return self._data, error, age

    def _run(self, fetch: Callable[[], dict[str, Any]]) -> None:
        try:
            data, error = fetch(), None
        except Exception as exc:  # any failure of the catalog is shown, never raised
            first = (str(exc).splitlines() or [""])[0]
            data, error = None, f"{type(exc).__name__}: {first}"
        with self._guard:
            if data is not None:
                self._data = data
                self._at = self.clock()
            self._error = error
            self._job = None


class PageSource:
    """Everything the status page of one agent shows, as one plain dict."""

    def __init__(self, agent: Agent, events: EventLog, throughput: Throughput,
                 cache: CatalogCache | None = None) -> None:
        self.agent = agent
        self.events = events
        self.throughput = throughput
        self.cache = cache or CatalogCache()

    def _fetch(self) -> dict[str, Any]:
        agent = self.agent
        manager = agent.manager
        path = manager.sqlite_path()
        if path is not None and not os.path.exists(path):
            # Opening it would make a new, empty catalog at the path.
            raise FileNotFoundError(f"catalog file {path} is missing")
        with manager.Session() as session:
            data = catalog_view(session, agent.config.archive_name)
        data["waiting_bytes"] = waiting_bytes(data.pop("waiting_paths"))
        return data

    def view(self, now: float | None = None) -> dict[str, Any]:
        """The page's data now."""
        agent = self.agent
        now = agent.clock() if now is None else now
        cfg = agent.config
        snapshot = agent.session.snapshot()
        catalog, catalog_error, catalog_age = self.cache.get(self._fetch)
        last_copy = snapshot.get("last_copy") or {}
        files = last_copy.get("files") or []
        # A copy: the loop's thread adds to the dict meanwhile.
        reported = list(agent.quarantine.reported.items())
        failing = self._failing(catalog, files)
        return {
            "now": now,
            "archive": cfg.archive_name,
            "instance_id": cfg.instance_id,
            "destination": agent.handler.transport.describe(),
            "activity": snapshot.get("activity"),
            "timestamp": snapshot.get("timestamp"),
            "degraded": agent.session.degraded,
            "counters": snapshot.get("counters", {}),
            "stats": (snapshot.get("archive_stats") or {}).get(cfg.archive_name),
            "last_copy": {"start_time": last_copy.get("start_time"),
                          "stop_time": last_copy.get("stop_time"),
                          "files": len(files), "verified": sum(bool(ok) for _, ok in files),
                          "error": last_copy.get("error")},
            "throughput": self.throughput.summary(now),
            "max_copy_attempts": cfg.max_copy_attempts,
            "conflicts": agent.conflicts,
            "quarantined": [{"id": i, "reason": r} for i, r in heapq.nsmallest(ROWS, reported)],
            "quarantined_count": len(reported),
            "anomalies": agent.anomalies(),
            "disk_pressure": list(agent.retention.short),
            "notices": None if agent.notices is None else agent.notices.as_dict(),
            "failing": failing,
            "catalog": catalog,
            "catalog_error": catalog_error,
            "catalog_age": catalog_age,
            "events": [e.as_dict() for e in self.events.events()],
        }

    def _failing(self, catalog: dict[str, Any] | None,
                 last_files: list[list[Any]]) -> list[dict[str, Any]]:
        """Failing files with their attempts (from the catalog) and last logged reason."""
        if catalog is not None:
            rows = [dict(f) for f in catalog["failing"]]
        else:
            # Without the catalog: the files the last step or the kept events named.
            named = [path for path, ok in last_files if not ok]
            named += [e.file for e in self.events.events() if e.kind in FAILURE_KINDS]
            rows = [{"local_path": path, "attempts": None}
                    for path in dict.fromkeys(p for p in named if p)][:ROWS]
        for row in rows:
            seen = self.events.reason(str(row["local_path"]))
            row["reason"] = None if seen is None else seen.message
            row["reason_time"] = None if seen is None else seen.time
        return rows
