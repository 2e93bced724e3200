"""Tell downstream when a timecode dir is complete: --on-finalize and --on-finalize-url.

A notice is due once the finalization file of a dir is verified on the
destination. The loop thread finds due notices in the catalog (:meth:`Notices.step`);
a background thread delivers them, so a slow or failing receiver never holds
the copy loop back. A failed delivery is retried with backoff. The catalog
keeps the id of the last finalization file whose notices were all delivered,
so a restarted agent delivers what it had not delivered yet (a notice can then
arrive twice; receivers should be idempotent) and never replays older history.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from . import procs
from .catalog.meta import get_meta, set_meta
from .catalog.schema import Supplement, SupRsyncFile, TimecodeDir

log = logging.getLogger(__name__)

#: Meta key prefix: id of the last finalization file whose notices were all delivered.
NOTIFIED_PREFIX = "finalize_notified:"
#: Seconds a hook may run (or a POST may take) without --cmd-timeout.
DEFAULT_TIMEOUT = 60.0
#: First and longest pause before retrying a failed delivery (seconds).
FIRST_RETRY = 10.0
MAX_RETRY = 600.0
#: Finalization files looked at per step.
BATCH = 100
#: Largest finalization file read for its fields (bytes).
MAX_YAML = 1 << 20
#: Output of a failed hook kept for the log (characters).
OUTPUT_TAIL = 300

#: The YAML keys passed on, and the environment variable of each.
YAML_FIELDS = {"timecode": "SUPRSYNC_TIMECODE", "archive_name": "SUPRSYNC_ARCHIVE",
               "instance_id": "SUPRSYNC_INSTANCE_ID", "num_files": "SUPRSYNC_NUM_FILES",
               "finalized_at": "SUPRSYNC_FINALIZED_AT",
               "finalized_until": "SUPRSYNC_FINALIZED_UNTIL", "subdirs": "SUPRSYNC_SUBDIRS"}


@dataclass(frozen=True)
class HookSettings:
    """What to do when a dir is finalized; both, one or neither."""

    command: tuple[str, ...] = ()
    url: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    #: Pause before the first retry (doubling up to MAX_RETRY).
    first_retry: float = FIRST_RETRY

    @property
    def enabled(self) -> bool:
        """True when there is anything to notify."""
        return bool(self.command) or bool(self.url)


def retry_delay(failures: int, first: float = FIRST_RETRY) -> float:
    """Seconds before the next attempt after this many failed ones (doubling, capped)."""
    return min(MAX_RETRY, first * 2.0 ** max(0, failures - 1))


def notice_fields(yaml_fields: dict[str, Any], remote_path: str, local_path: str,
                  destination: str) -> dict[str, Any]:
    """The fields of one notice: the finalization file's keys plus where it is."""
    fields = {key: yaml_fields[key] for key in YAML_FIELDS if key in yaml_fields}
    fields.update(remote_path=remote_path, local_path=local_path, destination=destination)
    return fields


def notice_env(fields: dict[str, Any]) -> dict[str, str]:
    """Environment variables of a notice: SUPRSYNC_<FIELD>; lists as JSON."""
    names = {**YAML_FIELDS, "remote_path": "SUPRSYNC_REMOTE_PATH",
             "local_path": "SUPRSYNC_LOCAL_PATH", "destination": "SUPRSYNC_DESTINATION",
             "finalization": "SUPRSYNC_FINALIZATION"}
    env = {}
    for key, value in fields.items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        env[names[key]] = text
    return env


def read_yaml_fields(path: str) -> dict[str, Any]:
    """The mapping in a finalization file; {} when it is gone, too big or not a mapping."""
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f.read(MAX_YAML + 1)[:MAX_YAML])
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Candidate:
    """A finalization file of the archive above the marker."""

    file_id: int
    timecode: int
    further: bool
    local_path: str
    remote_path: str
    #: Written by this instance (its instance id in the remote path).
    own: bool
    verified: bool


def advance_marker(marker: int, settled: set[int], unsettled: set[int]) -> tuple[int, set[int]]:
    """The marker moved over the settled ids below every unsettled one, and the rest.

    Settled: delivered, or another instance's. Unsettled: queued or not verified yet.
    """
    floor = min(unsettled, default=None)
    rest = set()
    for file_id in sorted(settled):
        if floor is not None and file_id > floor:
            rest.add(file_id)
        else:
            marker = max(marker, file_id)
    return marker, rest


@dataclass
class _Notice:
    file_id: int
    timecode: int
    fields: dict[str, Any]
    #: Targets still to deliver to: "command", "url".
    pending: set[str]
    failures: int = 0
    due: float = 0.0


@dataclass
class NoticeCounts:
    """What was delivered and what failed, for the session data and metrics."""

    delivered: int = 0
    failures: dict[str, int] = field(default_factory=lambda: {"command": 0, "url": 0})
    pending: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The session-data entry ``on_finalize``."""
        return {"delivered": self.delivered, "failures": dict(self.failures),
                "pending": self.pending, "last_error": self.last_error}


def _is_own(remote_path: str | None, instance_id: str) -> bool:
    """True for a finalization file this instance wrote (<tc>/suprsync/<instance>/...)."""
    parts = (remote_path or "").split("/")
    return len(parts) >= 4 and parts[1] == "suprsync" and parts[2] == instance_id


class Notices:
    """Finds verified finalization files and hands them to a delivery thread."""

    def __init__(self, settings: HookSettings, archive_name: str, instance_id: str,
                 destination: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.archive_name = archive_name
        self.instance_id = instance_id
        self.destination = destination
        #: Times retries (real elapsed time, whatever the agent's clock says).
        self.monotonic = monotonic
        self.counts = NoticeCounts()
        self._key = f"{NOTIFIED_PREFIX}{archive_name}:{instance_id}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: Notices queued and not fully delivered, by file id.
        self._queue: dict[int, _Notice] = {}
        #: Highest finalization-file id whose notices were all delivered (as stored).
        self._marker: int | None = None
        #: Settled ids above the marker (delivered or another instance's), waiting
        #: for an earlier unsettled one.
        self._done: set[int] = set()
        #: This instance's finalization files seen not yet verified.
        self._waiting: set[int] = set()
        #: Highest finalization-file id looked at (later steps read only above it,
        #: and the waiting ones again).
        self._seen = 0
        self._thread: threading.Thread | None = None
        #: The --on-finalize program while it runs (killed when the run ends).
        self._children = procs.ProcGroup()
        #: The marker as last written to the catalog.
        self._stored: int | None = None

    # ---------------------------------------------------------- loop thread
    def step(self, manager: Any) -> None:
        """Advance the stored marker and queue the newly verified finalization files."""
        if self._marker is None:
            self._marker = manager.write(self._start_marker, what="read the notice marker")
        with self._lock:
            marker = self._advance()
            queued = set(self._queue)
        if marker != self._stored:
            manager.write(lambda s: set_meta(s, self._key, str(marker)),
                          what="record delivered notices")
            self._stored = marker
        after = max(marker, self._seen)
        recheck = sorted(self._waiting)
        found = manager.read(lambda s: self._candidates(s, after, recheck),
                             what="finalizations")
        if found:
            self._seen = max(self._seen, max(c.file_id for c in found))
        with self._lock:
            new, waiting = self._sort_out(found, queued)
        self._waiting = waiting
        for cand in new:
            fields = notice_fields(read_yaml_fields(cand.local_path), cand.remote_path,
                                   cand.local_path, self.destination)
            fields.setdefault("timecode", cand.timecode)
            fields.setdefault("archive_name", self.archive_name)
            fields["finalization"] = "further" if cand.further else "first"
            targets = {"command"} if self.settings.command else set()
            if self.settings.url:
                targets.add("url")
            with self._lock:
                self._queue[cand.file_id] = _Notice(cand.file_id, cand.timecode, fields, targets)
            log.info("[%s] %s finalization file %s of timecode dir %d is verified; notifying",
                     self.instance_id, fields["finalization"], cand.remote_path, cand.timecode)
        self._update_pending()
        if new:
            self._wake.set()
        self._ensure_thread()

    def _sort_out(self, found: list[Candidate],
                  queued: set[int]) -> tuple[list[Candidate], set[int]]:
        """(new verified own files, own files not verified yet); others' files are settled."""
        new, waiting = [], set()
        for cand in found:
            if cand.file_id in queued or cand.file_id in self._done:
                continue
            if not cand.own:
                self._done.add(cand.file_id)  # another instance's: nothing to tell
            elif not cand.verified:
                waiting.add(cand.file_id)
            else:
                new.append(cand)
        return new, waiting

    def _start_marker(self, session: Session) -> int:
        """The stored marker; on first use, the newest finalization file (no replay)."""
        text = get_meta(session, self._key)
        if text is not None and text.isdigit():
            self._stored = int(text)
            return int(text)
        newest = max(session.scalar(select(func.max(TimecodeDir.finalize_file_id))
                                    .where(TimecodeDir.archive_name == self.archive_name)) or 0,
                     session.scalar(select(func.max(Supplement.file_id))
                                    .where(Supplement.archive_name == self.archive_name)) or 0)
        set_meta(session, self._key, str(newest))
        self._stored = newest
        return newest

    def _candidates(self, session: Session, after: int,
                    recheck: list[int]) -> list[Candidate]:
        """The archive's finalization files (first and further) after ``after``, in id
        order, and those of ``recheck`` (seen before, not verified then)."""
        first = select(TimecodeDir.finalize_file_id.label("file_id"), TimecodeDir.timecode,
                       literal(False).label("further")).where(
            TimecodeDir.archive_name == self.archive_name,
            or_(TimecodeDir.finalize_file_id > after,
                TimecodeDir.finalize_file_id.in_(recheck)))
        further = select(Supplement.file_id, Supplement.timecode,
                         literal(True).label("further")).where(
            Supplement.archive_name == self.archive_name,
            or_(Supplement.file_id > after, Supplement.file_id.in_(recheck)))
        listed = union_all(first, further).subquery()
        query = (select(listed.c.file_id, listed.c.timecode, listed.c.further,
                        SupRsyncFile.local_path, SupRsyncFile.remote_path,
                        SupRsyncFile.local_md5sum, SupRsyncFile.remote_md5sum)
                 .join(SupRsyncFile, SupRsyncFile.id == listed.c.file_id, isouter=True)
                 .order_by(listed.c.file_id).limit(BATCH))
        out = []
        for file_id, timecode, further, local, remote, local_md5, remote_md5 in \
                session.execute(query):
            verified = bool(local_md5) and local_md5 == remote_md5
            out.append(Candidate(file_id, timecode, bool(further), local or "", remote or "",
                                 _is_own(remote, self.instance_id), verified))
        return out

    def _advance(self) -> int:
        """Move the marker over the ids settled with nothing unsettled below them."""
        assert self._marker is not None
        self._marker, self._done = advance_marker(self._marker, self._done,
                                                  set(self._queue) | self._waiting)
        return self._marker

    def _update_pending(self) -> None:
        with self._lock:
            self.counts.pending = len(self._queue)

    # ------------------------------------------------------ delivery thread
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._deliver_loop, name="on-finalize",
                                            daemon=True)
            self._thread.start()

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            now = self.monotonic()
            with self._lock:
                due = [n for n in self._queue.values() if n.due <= now]
                wait = min((n.due - now for n in self._queue.values() if n.due > now),
                           default=MAX_RETRY)
            for notice in sorted(due, key=lambda n: n.file_id):
                if self._stop.is_set():
                    return
                self._deliver(notice)
            if not due:
                self._wake.wait(max(0.05, wait))
                self._wake.clear()

    def _deliver(self, notice: _Notice) -> None:
        for target in sorted(notice.pending):
            error = (self._run_command(notice) if target == "command"
                     else self._post(notice))
            if error is None:
                notice.pending.discard(target)
                continue
            with self._lock:
                self.counts.failures[target] += 1
                self.counts.last_error = f"timecode {notice.timecode}: {error}"
            notice.failures += 1
            delay = retry_delay(notice.failures, self.settings.first_retry)
            log.error("[%s] --on-finalize%s for timecode dir %d failed: %s; retrying in %.0f s",
                      self.instance_id, "" if target == "command" else "-url",
                      notice.timecode, error, delay)
        with self._lock:
            if notice.pending:
                notice.due = self.monotonic() + retry_delay(notice.failures,
                                                             self.settings.first_retry)
            else:
                del self._queue[notice.file_id]
                self._done.add(notice.file_id)
                self.counts.delivered += 1
            self.counts.pending = len(self._queue)

    def _run_command(self, notice: _Notice) -> str | None:
        """Run the --on-finalize program; None when it exited 0, else why not."""
        env = {**os.environ, **notice_env(notice.fields)}
        try:
            result = procs.run(list(self.settings.command), timeout=self.settings.timeout,
                               env=env, group=self._children)
        except OSError as exc:
            return f"cannot run {self.settings.command[0]}: {exc.strerror or exc}"
        if self._children.aborted:
            return "stopped with the agent"
        if result.timed_out:
            return f"timed out after {self.settings.timeout:.0f} s"
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
            return f"exit {result.returncode}: {tail[-OUTPUT_TAIL:]}" if tail else \
                f"exit {result.returncode}"
        return None

    def _post(self, notice: _Notice) -> str | None:
        """POST the fields as JSON to --on-finalize-url; None on a 2xx answer."""
        assert self.settings.url is not None
        body = json.dumps(notice.fields).encode()
        request = urllib.request.Request(self.settings.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as answer:
                answer.read(OUTPUT_TAIL)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"POST failed: {reason}"
        return None

    def finish(self, manager: Any, wait: float) -> None:
        """Deliver what is due (waiting up to ``wait`` s), record it, stop the thread.

        A program still running then is killed (its notice is delivered by the next run).
        """
        deadline = time.monotonic() + wait
        while self._thread is not None and time.monotonic() < deadline:
            with self._lock:
                if not any(n.due <= self.monotonic() for n in self._queue.values()):
                    break
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._children.kill_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._marker is None:
            return
        with self._lock:
            marker = self._advance()
        if marker != self._stored:
            manager.write(lambda s: set_meta(s, self._key, str(marker)),
                          what="record delivered notices")
            self._stored = marker

    def as_dict(self) -> dict[str, Any]:
        """Counts for the session data."""
        with self._lock:
            return self.counts.as_dict()
