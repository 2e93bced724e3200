"""One copy step: pick a batch, send it, verify it on the destination, record."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .catalog.schema import SupRsyncFile
from .catalog.store import CopyResult, SupRsyncFilesManager
from .events import event
from .heap import release_free_memory
from .leftovers import pid_alive
from .paths import check_local_file
from .screening import screen_batch
from .transport import (
    Blame,
    SendResult,
    SendStatus,
    StagingFailed,
    Transport,
    remove_leftovers,
)
from .verification import Staged, remote_rel, verify_files

__all__ = ["CopyReport", "Pipeline", "StagingFailed", "copy_batch", "default_agent_id",
           "dead_local_agents", "remove_stale_temp_dirs"]

log = logging.getLogger(__name__)


@dataclass
class CopyReport:
    """What one copy step did; ``files`` pairs each local path with its verdict."""

    start_time: float
    stop_time: float = 0.0
    files: list[list[Any]] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False
    failed: bool = False
    #: Bytes of the files verified on the destination.
    bytes_verified: int = 0
    #: Files whose copy did not verify (mismatch or missing).
    verify_failures: int = 0
    #: Seconds each send call took.
    transfer_durations: list[float] = field(default_factory=list)
    #: Conflicts recorded by this step (file ids).
    conflicts: list[int] = field(default_factory=list)

    def as_session_data(self) -> dict:
        """The ``last_copy`` entry of the session data."""
        data: dict = {
            "start_time": self.start_time,
            "stop_time": self.stop_time,
            "files": self.files,  # already [path, ok] lists: no copy of a long list
        }
        if self.error is not None:
            data["error"] = self.error
        return data


def _sendable(batch: list[SupRsyncFile], manager: SupRsyncFilesManager,
              max_copy_attempts: int | None, strict: set[int] | frozenset[int] = frozenset(),
              bad_dirs: dict[str, str] | None = None) -> list[Staged]:
    """The files of the batch that can be sent, each with its remote path and size.

    Files that cannot be sent cost themselves an attempt (or, for a remote path
    that would leave the base dir, go straight to the limit) and are left out.
    """
    staged: list[Staged] = []
    seen: set[str] = set()
    bad_path: list[int] = []
    unreadable: list[int] = []
    for row in batch:
        rel = remote_rel(row, "copying", "copy failed")
        if rel is None:
            bad_path.append(row.id)
            continue
        if rel in seen:
            log.warning("not copying %s now: another file of this batch goes to %r",
                        row.local_path, rel)
            continue
        try:
            reason = (bad_dirs or {}).get(os.path.dirname(row.local_path))
            if reason is not None:
                raise OSError(reason)
            size = check_local_file(row.local_path).st_size
            if not os.access(row.local_path, os.R_OK):
                raise PermissionError(f"{row.local_path!r} is not readable")
        except OSError as exc:
            log.error("cannot copy %s (file id %s): %s", row.local_path, row.id, exc,
                      extra=event("copy failed", row.local_path))
            unreadable.append(row.id)
            continue
        seen.add(rel)
        staged.append(Staged(row, rel, size, row.id in strict))
    manager.mark_unsendable(bad_path, max_copy_attempts if max_copy_attempts else 1 << 30)
    manager.count_failed_attempt(unreadable)
    return staged


@dataclass(frozen=True)
class Pipeline:
    """How a batch is cut into chunks and how many run at once.

    Each chunk is one send call followed by one verification call; while a
    chunk is verified the next one is already being sent. ``parallel`` send
    streams run at once.
    """

    parallel: int = 1
    chunk_bytes: int = 128 << 20
    chunk_files: int = 4000
    #: Seconds a claim on a batch lasts unless renewed (renewed while the batch runs).
    lease: float = 600.0
    #: Files claimed, screened and staged at a time (memory is bounded by this).
    slice_files: int = 10_000


def remove_stale_temp_dirs() -> int:
    """Delete what runs that were killed left behind (each kind of destination knows what)."""
    return remove_leftovers()


def default_agent_id(name: str) -> str:
    """An id unique to this process: name, host and pid."""
    return f"{name}@{socket.gethostname()}:{os.getpid()}"


def dead_local_agents(agent_ids: Iterable[str], name: str) -> list[str]:
    """Ids made by default_agent_id(name) on this host whose process no longer exists."""
    prefix = f"{name}@{socket.gethostname()}:"
    dead = []
    for agent_id in agent_ids:
        pid = agent_id.removeprefix(prefix)
        if pid == agent_id or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            dead.append(agent_id)
    return dead


class _LeaseRenewer:
    """Extends an agent's claims every quarter lease while a batch is handled."""

    def __init__(self, manager: SupRsyncFilesManager, agent_id: str, lease: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(manager, agent_id, lease),
                                        name="lease-renewer", daemon=True)
        self._thread.start()

    def _run(self, manager: SupRsyncFilesManager, agent_id: str, lease: float) -> None:
        while not self._stop.wait(lease / 4):
            try:
                manager.renew_claims(agent_id, lease)
            except Exception as exc:  # the next renewal may succeed; never kill the batch
                log.warning("could not renew the claims of %s: %s", agent_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _chunks(group: list[Staged], pipeline: Pipeline) -> list[list[Staged]]:
    chunks: list[list[Staged]] = []
    current: list[Staged] = []
    size = 0
    # Spread a small batch over the streams, but never below one file per chunk.
    per_stream = -(-len(group) // max(1, pipeline.parallel))
    limit_files = max(1, min(pipeline.chunk_files, per_stream))
    for s in group:
        if current and (size + s.size > pipeline.chunk_bytes or len(current) >= limit_files):
            chunks.append(current)
            current, size = [], 0
        current.append(s)
        size += s.size
    if current:
        chunks.append(current)
    return chunks


def copy_batch(
    manager: SupRsyncFilesManager,
    transport: Transport,
    archive_name: str,
    max_copy_attempts: int | None = None,
    num_files: int | None = None,
    clock: Callable[[], float] = time.time,
    pipeline: Pipeline | None = None,
    agent_id: str | None = None,
    notes: set[tuple[int, int | None]] | None = None,
    reach_first: bool = True,
) -> CopyReport:
    """Copy and verify one batch of copyable files; record every verdict in the catalog.

    The batch is leased to ``agent_id`` (default: one made for this call) while it
    is handled, so agents sharing the catalog never copy the same file at once.
    Before anything is sent, the batch is screened for destination collisions
    (see screening.py); ``notes`` remembers which waits were logged already.
    With ``reach_first`` the destination is reached while the first slice is
    claimed, and even when nothing is copyable (a destination that is down is
    noticed); without it, only once there is something to send.
    """
    pipeline = pipeline or Pipeline()
    agent_id = agent_id or default_agent_id("copy")
    report = CopyReport(start_time=clock())
    notes = notes if notes is not None else set()
    # Reaching the destination (an ssh handshake) overlaps claiming and staging.
    with ThreadPoolExecutor(1, thread_name_prefix="connect") as connecting:
        ready = connecting.submit(transport.ensure_ready) if reach_first else None
        # A large backlog goes in slices, so that memory stays bounded; a file that
        # failed is not claimed again in the same call (the slices follow the order).
        after: tuple[float, int] | None = None
        # Files registered while this call runs wait for the next iteration, so
        # that a steady stream of new files cannot keep one iteration going.
        up_to = manager.max_file_id()
        remaining = num_files
        claimed_any = False
        while remaining is None or remaining > 0:
            want = pipeline.slice_files if remaining is None else min(remaining,
                                                                      pipeline.slice_files)
            batch = manager.claim_copyable(archive_name, agent_id, pipeline.lease,
                                           max_copy_attempts=max_copy_attempts,
                                           num_files=want, after=after, up_to=up_to)
            if not batch:
                break
            claimed_any = True
            if ready is None:
                ready = connecting.submit(transport.ensure_ready)
            after = (float(batch[-1].timestamp), int(batch[-1].id))
            _copy_claimed(manager, transport, batch, ready, report, clock, pipeline, agent_id,
                          max_copy_attempts, notes)
            if remaining is not None:
                remaining -= len(batch)
            last = len(batch) < want  # a short slice: nothing later was copyable
            del batch
            release_free_memory()  # what the slice's threads freed, before the next one
            if report.failed or transport.aborted:
                break  # the destination is in doubt: the rest waits for the next iteration
            if last:
                break
        if not claimed_any and ready is not None:
            ready.result()
    report.stop_time = clock()
    return report


def _copy_claimed(manager: SupRsyncFilesManager, transport: Transport,
                  batch: list[SupRsyncFile], ready: Future, report: CopyReport,
                  clock: Callable[[], float], pipeline: Pipeline, agent_id: str,
                  max_copy_attempts: int | None,
                  notes: set[tuple[int, int | None]]) -> CopyReport:
    """Screen, send and verify a claimed batch once the destination is ready."""
    renewing = _LeaseRenewer(manager, agent_id, pipeline.lease)
    try:
        screened = screen_batch(manager, batch[0].archive_name, batch, max_copy_attempts,
                                clock(), notes)
        report.conflicts += screened.new_conflicts
        held = [r.id for r in batch if r.id in screened.held]
        manager.release_claims(agent_id, held)
        staged = _sendable(screened.send, manager, max_copy_attempts, screened.strict,
                           screened.bad_dirs)
        staged_ids = {s.row.id for s in staged}
        report.files += [[row.local_path, False] for row in screened.send
                         if row.id not in staged_ids]
        checks = [Staged(row, rel, 0, True) for row, rel in screened.verify_only]
        ready.result()
        # Files whose earlier copy did not verify are re-sent even if they look current.
        groups: dict[bool, list[Staged]] = {}
        for s in staged:
            groups.setdefault(s.row.remote_md5sum is not None, []).append(s)
        work = [(chunk, force) for force, group in groups.items()
                for chunk in _chunks(group, pipeline)]
        _run_pipeline(manager, transport, work, pipeline, report, clock, agent_id)
        # Rows whose bytes another row's verified copy holds: checked, never sent.
        lock = threading.Lock()
        for chunk in _chunks(checks, pipeline):
            _verify_chunk(manager, transport, chunk, clock(), report, lock, agent_id)
    finally:
        renewing.stop()
        manager.release_claims(agent_id)
    report.stop_time = clock()
    return report


def _run_pipeline(manager: SupRsyncFilesManager, transport: Transport,
                  work: list[tuple[list[Staged], bool]], pipeline: Pipeline,
                  report: CopyReport, clock: Callable[[], float], agent_id: str) -> None:
    lock = threading.Lock()
    streams = max(1, pipeline.parallel)
    # Hashing is CPU-bound where the destination is local: use every core for it.
    checkers = max(streams, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(streams, thread_name_prefix="send") as senders, \
            ThreadPoolExecutor(checkers, thread_name_prefix="verify") as verifiers:

        def send_then_queue_verify(chunk: list[Staged], force: bool) -> Future | None:
            result = transport.send([(s.row.local_path, s.rel) for s in chunk], force=force)
            copied_at = clock()
            with lock:
                report.transfer_durations.append(result.duration)
            sent = _judge_send(manager, transport, chunk, result, copied_at, report, lock,
                               agent_id)
            if not sent:
                return None
            return verifiers.submit(_verify_chunk, manager, transport, sent, copied_at,
                                    report, lock, agent_id)

        sent = [senders.submit(send_then_queue_verify, chunk, force) for chunk, force in work]
        for future in sent:
            verifying = future.result()
            if verifying is not None:
                verifying.result()


def _judge_send(manager: SupRsyncFilesManager, transport: Transport, chunk: list[Staged],
                result: SendResult, copied_at: float, report: CopyReport,
                lock: threading.Lock, agent_id: str) -> list[Staged]:
    """Act on one send call; the files to verify.

    A call that failed as a whole is recorded in the report and charges no file
    (logged once per copy step). A file that failed by its own fault is charged
    an attempt; one whose failure the destination caused is not, and is retried.
    """
    if result.status is SendStatus.TIMED_OUT:
        with lock:
            report.error, report.timed_out, report.failed = "timed out", True, True
        log.error("%s; retrying next iteration", result.reason)
        return []
    if not result.ok:
        with lock:
            first = not report.failed
            report.error, report.failed = "nonzero exit", True
        if result.status is SendStatus.ABORTED or transport.aborted:
            log.info("sending %d files to %s stopped by request", len(chunk),
                     transport.describe())
        elif first:
            log.error("%s; no file is charged, retrying next iteration", result.reason)
        return []
    if result.warning:
        log.warning("%s", result.warning)
    to_verify: list[Staged] = []
    charged: list[Staged] = []
    for s in chunk:
        failure = result.failed.get(s.rel)
        if failure is None:
            to_verify.append(s)
        elif failure.blame is Blame.FILE:
            log.error("could not send %s (file id %s): %s", s.row.local_path, s.row.id,
                      failure.reason, extra=event("copy failed", s.row.local_path))
            charged.append(s)
        else:
            log.error("could not send %s (file id %s), not its fault: %s; retrying next "
                      "iteration", s.row.local_path, s.row.id, failure.reason,
                      extra=event("copy failed", s.row.local_path))
            with lock:
                report.error, report.failed = "nonzero exit", True
    if charged:
        manager.record_results([CopyResult(s.row.id, None, copied_at, False, None)
                                for s in charged], agent_id)
        with lock:
            report.files += [[s.row.local_path, False] for s in charged]
            report.verify_failures += len(charged)
    return to_verify


def _verify_chunk(manager: SupRsyncFilesManager, transport: Transport, chunk: list[Staged],
                  copied_at: float, report: CopyReport, lock: threading.Lock,
                  agent_id: str) -> None:
    """Run the verify step on a chunk and add what it found to the copy report."""
    found = verify_files(manager, transport, chunk, copied_at, agent_id)
    with lock:
        report.files += found.files
        report.bytes_verified += found.bytes_verified
        report.verify_failures += found.failures
        if found.error is not None:
            report.error, report.timed_out, report.failed = found.error, found.timed_out, True
