"""The agent loop: copy → verify → stats → delete → finalize, then sleep.

One loop serves every front end: ``suprsync run`` and the OCS agent both build
an :class:`Agent` and call :meth:`Agent.run`. The steps themselves are the plain
functions of :mod:`suprsync.steps`, given the agent's catalog, transport, clock
and settings.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from . import steps
from .agent_config import AgentConfig
from .blame import describe
from .catalog.anomalies import DirWatch
from .catalog.copies import counts as copy_counts
from .catalog.copies import register as register_destinations
from .catalog.copies import registered
from .catalog.destqueue import DestinationCopies
from .catalog.engine import CatalogBusy
from .catalog.meta import publish_disk_pressure
from .catalog.store import SupRsyncFilesManager
from .catalog.watch import Action, CatalogLost, CatalogWatch
from .childpids import end_stale_children
from .clockcheck import ClockCheck
from .copying import (
    CopyReport,
    Pipeline,
    StagingFailed,
    dead_local_agents,
    default_agent_id,
    remove_stale_temp_dirs,
)
from .deletion import CopyRule, CopyTarget, DeleteReport
from .diskspace import DiskWatch
from .emptydirs import EmptyDirs
from .finalize_events import DEFAULT_TIMEOUT, HookSettings, Notices
from .outlets import Outlet, make_outlets
from .procs import child_ledger
from .quarantine_log import QuarantineLog
from .session import SessionData
from .transport import Transport, TransportError

log = logging.getLogger(__name__)

__all__ = ["Agent", "AgentConfig"]

#: transfer_stats are published at most this often (seconds).
TRANSFER_STATS_INTERVAL = 600.0
#: Longest pause after consecutive failed iterations (seconds).
MAX_BACKOFF = 300.0

Publisher = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")


@dataclass
class RetentionState:
    """What the deletion steps of this run freed, and the free space they left."""

    deleted_bytes: dict[str, int] = field(default_factory=dict)
    deleted_for_space: int = 0
    removed_dirs: int = 0
    filesystems: list[dict[str, Any]] = field(default_factory=list)
    short: list[dict[str, Any]] = field(default_factory=list)
    published_shorts: list[str] | None = None
    next_publish: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The session-data entry ``retention``."""
        return {"deleted_bytes_by_rule": dict(self.deleted_bytes),
                "deleted_for_space": self.deleted_for_space,
                "removed_dirs": self.removed_dirs,
                "filesystems": list(self.filesystems),
                "disk_pressure": list(self.short)}


class Agent:
    """Runs the sync loop for one archive and keeps its session data."""

    def __init__(
        self,
        config: AgentConfig,
        manager: SupRsyncFilesManager | None = None,
        clock: Callable[[], float] = time.time,
        publish: Publisher | None = None,
        on_session_change: Callable[[dict[str, Any], bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        transport: Transport | None = None,
    ) -> None:
        """``transport``: one made from ``config`` already (reaching its host, say)."""
        self.config = config
        self.clock = clock
        self.monotonic = monotonic
        #: Compares ``clock`` with ``monotonic`` at each timecode step.
        self.clock_check = ClockCheck(clock, monotonic, name=config.instance_id)
        #: Timecode-dir anomalies of the archive: future dirs, late files.
        self.dir_watch = DirWatch(config.archive_name)
        self.manager = manager or self._open_manager()
        sqlite_file = self.manager.sqlite_path()
        #: The catalog file opened, when it is sqlite (a server's database cannot vanish).
        self._watch = CatalogWatch(sqlite_file) if sqlite_file else None
        transport = transport or config.open_transport()
        self.transport = transport
        more = config.open_more_transports()
        try:
            records = self.manager.write(
                lambda s: register_destinations(s, config.archive_name,
                                                config.wanted_destinations(), clock()),
                what="record destinations")
        except BaseException:
            for t in more:
                t.close()
            raise
        #: Every destination of this agent (the first is the one of ``transport``).
        self.outlets = make_outlets(self.manager, records, [transport, *more])
        for outlet in self.outlets:
            if isinstance(outlet.catalog, DestinationCopies):
                outlet.catalog.repair()
        #: The archive's primary destination is one of this agent's: it finalizes.
        self.holds_primary = any(o.record.primary for o in self.outlets)
        for o in self.outlets[1:] if len(self.outlets) > 1 else ():
            log.info("[%s] also syncing archive %r to destination %s (%s)",
                     config.instance_id, config.archive_name, o.name, o.transport.describe())
        #: Who leases the files this agent copies, and how it pipelines transfers.
        self.agent_id = default_agent_id(config.instance_id)
        self.pipeline = Pipeline(parallel=config.parallel, lease=config.claim_timeout)
        #: What the steps remember between iterations.
        self.memory = steps.Memory(dir_watch=self.dir_watch)
        self.session = SessionData(clock(), on_change=on_session_change)
        self.quarantine = QuarantineLog(self.manager, config.archive_name,
                                        prefix=f"[{config.instance_id}] ")
        self.publish = publish or (lambda feed, message: None)
        self.stop_event = threading.Event()
        self.running = False
        self._wake = threading.Event()
        self._request_lock = threading.Lock()
        self._requests: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._next_transfer_stats = 0.0
        self._failures = 0
        #: The last iteration failed only at destinations that back off on their own.
        self._only_destinations_failed = False
        #: Unexpected errors of iterations logged with their traceback already.
        self._unexpected: set[str] = set()
        #: Called with the report of every copy step (metrics use this).
        self.observers: list[Callable[[CopyReport], None]] = []
        #: Recorded conflicts of the archive, as of the last stats step.
        self.conflicts = 0
        #: The file systems local files were seen on, and their free space.
        self.disks = DiskWatch(config.min_free)
        self.empty_dirs = (EmptyDirs(config.local_root)
                           if config.remove_empty_dirs and config.local_root else None)
        self.retention = RetentionState()
        hooks = HookSettings(config.on_finalize, config.on_finalize_url,
                             config.cmd_timeout or DEFAULT_TIMEOUT)
        #: Delivers --on-finalize and --on-finalize-url notices; None without them.
        self.notices = (Notices(hooks, config.archive_name, config.instance_id,
                                transport.describe())
                        if hooks.enabled else None)

    def settings(self) -> steps.Settings:
        """The steps' settings, from the config as it is now."""
        cfg = self.config
        return steps.Settings(
            archive_name=cfg.archive_name, agent_id=self.agent_id, pipeline=self.pipeline,
            max_copy_attempts=cfg.max_copy_attempts, num_files=cfg.files_per_batch,
            policy=cfg.policy(), verify_before_delete=cfg.verify_before_delete,
            file_root=cfg.suprsync_file_root, instance_id=cfg.instance_id)

    def close(self) -> None:
        """Release the transports' connections."""
        for outlet in self.outlets:
            outlet.transport.close()

    @property
    def several(self) -> bool:
        """True when the archive has more than one destination in this agent, or this
        agent ships to one that is not the archive's primary."""
        return len(self.outlets) > 1 or not self.holds_primary

    def _open_manager(self) -> SupRsyncFilesManager:
        cfg = self.config
        return SupRsyncFilesManager(cfg.db_path, create_all=True, echo=cfg.db_echo,
                                    pool_size=cfg.db_pool_size,
                                    max_overflow=cfg.db_pool_max_overflow, clock=self.clock)

    # ----------------------------------------------------------- the loop

    def run(self, once: bool = False) -> bool:
        """Iterate until stop() is called (or once); True when the last iteration succeeded.

        Raises CatalogLost when the catalog file is gone or damaged.
        """
        log.info("[%s] syncing archive %r to %s", self.config.instance_id,
                 self.config.archive_name, self.transport.describe())
        with self._request_lock:
            self.running = True
        ok = True
        try:
            self._release_dead_claims()
            remove_stale_temp_dirs()
            end_stale_children()
            with child_ledger():
                while not self.stop_event.is_set():
                    self._serve_requests()
                    ok = self.iterate()
                    if once:
                        break
                    self._sleep(self._pause(ok))
        finally:
            with self._request_lock:
                self.running = False
            self._serve_requests()
            self.session.set("activity", "idle")
            self._finish_notices()
            self.close()
            log.info("[%s] stopped", self.config.instance_id)
        return ok

    def _release_dead_claims(self) -> None:
        """Drop the leases of earlier runs of this agent on this host that died."""
        try:
            for outlet in self.outlets:
                holders = outlet.catalog.claim_holders()
                for agent_id in dead_local_agents(holders, self.config.instance_id):
                    log.info("[%s] releasing the files leased by %s, which is no longer "
                             "running", self.config.instance_id, agent_id)
                    outlet.catalog.release_claims(agent_id)
        except (SQLAlchemyError, CatalogBusy) as exc:
            log.error("[%s] cannot release the leases of dead runs: %s",
                      self.config.instance_id, str(exc).splitlines()[0])

    def stop(self) -> None:
        """End the loop: a sleep ends at once, a running transfer is killed.

        Killing rsync is safe: it writes to a temporary name and renames only a
        complete file, and an interrupted transfer costs no file an attempt.
        """
        self.stop_event.set()
        self._wake.set()
        for outlet in self.outlets:
            outlet.transport.abort()

    def _sleep(self, seconds: float) -> None:
        deadline = self.monotonic() + seconds
        while not self.stop_event.is_set():
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                return
            self._wake.wait(remaining)
            self._wake.clear()
            self._serve_requests()

    def call_between_steps(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run fn in the loop's thread between two steps (directly when not running).

        Operator actions go through here so they never interleave with a copy step.
        """
        future: Future = Future()
        with self._request_lock:
            queued = self.running
            if queued:
                self._requests.put((fn, future))
        if not queued:
            return fn()
        self._wake.set()
        return future.result(timeout=timeout)

    def _serve_requests(self) -> None:
        while True:
            try:
                fn, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def _pause(self, ok: bool) -> float:
        if ok or self._only_destinations_failed:
            # With several destinations each one waits out its own backoff.
            self._failures = 0
            return self.config.sleep_time
        self._failures += 1
        backoff = min(MAX_BACKOFF, 2.0 ** min(self._failures, 10))
        log.info("[%s] backing off %.0f s after %d failed iteration(s)",
                 self.config.instance_id, max(backoff, self.config.sleep_time), self._failures)
        return max(backoff, self.config.sleep_time)

    def iterate(self) -> bool:
        """One iteration; True when nothing failed."""
        self.session.count("iterations")
        try:
            if not self._check_catalog():
                return False
            # A full row count, when due, runs while files are copied.
            self.manager.prefetch_file_count(self.config.archive_name)
            ok = self._copy_step()
            if self.stop_event.is_set():
                return ok
            self._stats_step()
            self.quarantine.check()
            # After a failed copy step the destination is in doubt: delete nothing now.
            settings = self.settings()
            if settings.policy is not None and (ok or self.several):
                self.session.set("activity", "deleting")
                deleted = steps.delete(self.manager, self.transport, self.clock, settings,
                                       self.memory, disks=self.disks, dirs=self.empty_dirs,
                                       copies=self._copy_rule())
                self._retention_step(deleted)
                if deleted.error is not None and not self.stop_event.is_set():
                    self.session.count("errors_timeout" if deleted.timed_out
                                       else "errors_nonzero")
                    ok = False
            if self.holds_primary and self._timecode_step() and not self.stop_event.is_set() \
                    and (ok or self.several):
                # Ship the finalization files just written: downstream learns that a
                # day is complete in this iteration, and `run --once` leaves none behind.
                ok = self._copy_step()
            if self.holds_primary:
                self._notify_step()
            self.session.degraded = False
            self._only_destinations_failed = not ok and self.several
            return ok
        except (SQLAlchemyError, CatalogBusy) as exc:
            self._only_destinations_failed = False
            self.session.count("errors_sqlite")
            self.session.degraded = True
            log.error("[%s] catalog unavailable: %s", self.config.instance_id,
                      str(exc).splitlines()[0])
            self._check_catalog(exc)
            return False
        except (OSError, StagingFailed) as exc:
            self._only_destinations_failed = False
            # A local place (the file root, the staging dir) refused: retried next time.
            self.session.count("errors_nonzero")
            log.error("[%s] iteration failed: %s; retrying next iteration",
                      self.config.instance_id,
                      describe(exc) if isinstance(exc, OSError) else exc)
            self._release_own_claims()
            return False
        except CatalogLost:
            raise  # run() ends: see _check_catalog
        except Exception as exc:
            # Something unforeseen (a value in a row no rule expected, say): the agent
            # keeps running and retries after the backoff; the traceback is logged the
            # first time this error appears, a line each time after.
            self._only_destinations_failed = False
            self.session.count("errors_nonzero")
            self.session.degraded = True
            what = f"{type(exc).__name__}: {exc}"
            if what not in self._unexpected:
                self._unexpected.add(what)
                log.exception("[%s] iteration failed unexpectedly; retrying next iteration",
                              self.config.instance_id)
            else:
                log.error("[%s] iteration failed unexpectedly again (%s); retrying next "
                          "iteration", self.config.instance_id, what.splitlines()[0][:300])
            self._release_own_claims()
            return False
        finally:
            self.session.set("activity", "idle")

    def _retention_step(self, report: DeleteReport) -> None:
        """Account what the deletion step freed; say loudly when a disk stays short."""
        cfg = self.config
        state = self.retention
        for rule, n in report.bytes_by_rule.items():
            state.deleted_bytes[rule] = state.deleted_bytes.get(rule, 0) + n
        state.deleted_for_space += len(report.for_space)
        state.removed_dirs += len(report.removed_dirs)
        state.filesystems = [s.as_dict() for s in report.space]
        state.short = [s.as_dict() for s in report.short]
        for space in report.short:
            log.error("[%s] disk pressure: %s has %d bytes free, below --min-free %s "
                      "(%d bytes); only unverified or protected local files are left: the "
                      "disk is filling with data not shipped yet or kept by the retention "
                      "rules", cfg.instance_id, space.path, space.free,
                      cfg.min_free.text if cfg.min_free else "", space.wanted)
        if cfg.retention is not None or cfg.min_free is not None or cfg.remove_empty_dirs:
            # Only then: with the original's flags the session data keeps its keys.
            self.session.set("retention", state.as_dict())
        shorts = sorted(s.path for s in report.short)
        now = self.clock()
        if shorts != state.published_shorts or (shorts and now >= state.next_publish):
            data = {"time": now, "filesystems": state.short}
            self.manager.write(lambda s: publish_disk_pressure(s, cfg.archive_name, data),
                               what="publish disk pressure")
            state.published_shorts = shorts
            state.next_publish = now + TRANSFER_STATS_INTERVAL

    def _timecode_step(self) -> bool:
        """Advance the timecode dirs; True when finalization files were registered."""
        clock_ok = self.clock_check.check()
        # Every further destination of the archive, this agent's or not, knows of every
        # file first: a dir is synced only once each of them has it.
        for rec in self.manager.read(lambda s: registered(s, self.config.archive_name),
                                     what="destinations"):
            if not rec.primary:
                DestinationCopies(self.manager, rec).track(self.config.archive_name)
        before = self.dir_watch.supplements_written
        finalized = steps.finalize(self.manager, self.transport, self.clock, self.settings(),
                                   self.memory, clock_ok=clock_ok)
        return bool(finalized) or self.dir_watch.supplements_written > before

    def _notify_step(self) -> None:
        """Queue the notices of finalization files verified since the last step."""
        if self.notices is None:
            return
        self.notices.step(self.manager)
        self.session.set("on_finalize", self.notices.as_dict())

    def _finish_notices(self) -> None:
        """Deliver the due notices before the run ends (bounded by the hook time-out)."""
        if self.notices is None:
            return
        try:
            # After stop(), end at once: what is left is delivered by the next run.
            wait = 0.0 if self.stop_event.is_set() else self.notices.settings.timeout
            self.notices.finish(self.manager, wait=wait)
        except (SQLAlchemyError, CatalogBusy) as exc:
            log.error("[%s] cannot record the delivered notices: %s", self.config.instance_id,
                      str(exc).splitlines()[0])
        self.session.set("on_finalize", self.notices.as_dict())

    def anomalies(self) -> dict[str, Any]:
        """What the agent noticed about its timecode dirs and its clock (for /status)."""
        watch = self.dir_watch
        return {
            "future_timecode_dirs": list(watch.future),
            "late_files": [f.as_dict() for f in watch.late.values()],
            "late_files_found": watch.late_found,
            "clock_in_doubt": self.clock_check.in_doubt or watch.rows_ahead,
        }

    def _check_catalog(self, error: BaseException | None = None) -> bool:
        """Notice a catalog file deleted, replaced, damaged or unwritable; False: skip.

        After ``error`` (already counted and logged), see what became of the file.
        A catalog found again at the path is reopened; one that is gone or damaged
        raises CatalogLost.
        """
        if self._watch is None:
            return True
        cfg, path = self.config, self._watch.path
        verdict = self._watch.judge(error)
        if verdict.action is Action.CONTINUE:
            return True
        if verdict.what:
            self.session.degraded = True
            if error is None:
                self.session.count("errors_sqlite")
        if verdict.action is Action.EXIT:
            log.error("[%s] catalog %s %s; stopping", cfg.instance_id, path, verdict.what)
            raise CatalogLost(f"catalog {path!r} {verdict.what}")
        if verdict.action is Action.WAIT:
            log.error("[%s] catalog %s %s; retrying next iteration", cfg.instance_id, path,
                      verdict.what)
            return False
        if verdict.what:
            log.error("[%s] catalog %s %s; reopening it", cfg.instance_id, path, verdict.what)
        # Close first: the last connection to go writes the write-ahead log back into
        # the file it belongs to, so that log is never read as the new file's.
        self.manager.close()
        self._watch.release()
        try:
            fresh = self._open_manager()
        except (SQLAlchemyError, CatalogBusy) as exc:
            log.error("[%s] cannot reopen catalog %s: %s", cfg.instance_id, path,
                      str(exc).splitlines()[0])
            return False
        finally:
            self._watch.reopen()
        self.manager = fresh
        return True

    def _release_own_claims(self) -> None:
        try:
            for outlet in self.outlets:
                outlet.catalog.release_claims(self.agent_id)
        except (SQLAlchemyError, CatalogBusy):
            pass  # they expire, and the next claim of this agent drops them

    def _copy_rule(self) -> CopyRule | None:
        """With several destinations: how many verified copies a file needs, and where."""
        known = self.manager.read(lambda s: registered(s, self.config.archive_name),
                                  what="destinations")
        if len(known) <= 1 and not self.several:
            return None
        mine = {o.record.key: o for o in self.outlets}
        targets = []
        for rec in known:
            outlet = mine.get(rec.key)
            key = None if rec.primary else rec.key
            if outlet is None:
                targets.append(CopyTarget(key, rec.name))
            else:
                targets.append(CopyTarget(key, rec.name, outlet.catalog,
                                          None if outlet.in_doubt else outlet.transport))
        wanted = self.config.min_copies or len(targets)
        if wanted > len(targets):
            log.warning("[%s] --min-copies %d but archive %r has %d destination(s): no "
                        "local file can be deleted", self.config.instance_id, wanted,
                        self.config.archive_name, len(targets))
        return CopyRule(wanted, tuple(targets))

    def _copy_step(self) -> bool:
        """Copy to every destination that is due; True when none failed."""
        if not self.several:
            return self._copy_to(self.outlets[0])
        ok = True
        now = self.monotonic()
        for outlet in self.outlets:
            if self.stop_event.is_set():
                break
            if not outlet.due(now):
                outlet.counters["skipped_iterations"] += 1
                ok = False
                continue
            if isinstance(outlet.catalog, DestinationCopies):
                outlet.catalog.track(self.config.archive_name)
            if self._copy_to(outlet):
                outlet.succeeded()
            else:
                ok = False
                wait = outlet.failed(self.monotonic(), self.config.sleep_time)
                log.info("[%s] destination %s waits %.0f s after %d failed step(s); the "
                         "others go on", self.config.instance_id, outlet.name, wait,
                         outlet.failures)
        self.session.set("destinations", {o.name: o.as_dict(self.monotonic())
                                          for o in self.outlets})
        return ok

    def _copy_to(self, outlet: Outlet) -> bool:
        cfg = self.config
        self.session.set("activity", "copying")
        try:
            report = steps.copy(outlet.catalog, outlet.transport, self.clock,
                                self.settings(), self.memory)
        except TransportError as exc:
            if not self.stop_event.is_set():
                log.error("[%s] destination %sunavailable: %s", cfg.instance_id,
                          f"{outlet.name} " if self.several else "", exc)
            report = CopyReport(start_time=self.clock(), stop_time=self.clock(),
                                error="timed out" if exc.timed_out else "nonzero exit",
                                timed_out=exc.timed_out, failed=True)
        if report.failed and self.stop_event.is_set():
            # Killed by stop(): an interruption, not a failure of the destination.
            log.info("[%s] transfer interrupted by stop; it will be redone next run",
                     cfg.instance_id)
            report.failed, report.timed_out, report.error = False, False, None
        for observe in self.observers:
            observe(report)
        for path, _ in report.files:
            self.disks.device(path)
        self.session.count("copies", len(report.files))
        if report.failed:
            self.session.count("errors_timeout" if report.timed_out else "errors_nonzero")
        good = sum(ok for _, ok in report.files)
        if report.files:
            where = f" to {outlet.name}" if self.several else ""
            log.info("[%s] copied %d files%s, %d verified, %d failed", cfg.instance_id,
                     len(report.files), where, good, len(report.files) - good)
        outlet.counters["copies"] += len(report.files)
        outlet.counters["verified"] += good
        outlet.last_copy = {"start_time": report.start_time, "stop_time": report.stop_time,
                            "files": len(report.files), "verified": good,
                            **({"error": report.error} if report.error else {})}
        if outlet is self.outlets[0]:
            self.session.set("last_copy", report.as_session_data())
        self.session.set("timestamp", self.clock())
        return not report.failed

    def _stats_step(self) -> None:
        cfg = self.config
        read = steps.stats(self.manager, self.transport, self.clock, self.settings())
        now, stats, self.conflicts = read.time, read.archive, read.conflicts
        self.session.set_archive_stats(cfg.archive_name, stats)
        if self.several:
            for outlet in self.outlets:
                if isinstance(outlet.catalog, DestinationCopies):
                    key = outlet.record.key
                    outlet.files = self.manager.read(
                        lambda s, k=key: copy_counts(s, k, cfg.max_copy_attempts),
                        what="files per destination").as_dict()
            self.session.set("destinations", {o.name: o.as_dict(self.monotonic())
                                              for o in self.outlets})
        self.publish("archive_stats", {"block_name": cfg.archive_name, "timestamp": now,
                                       "data": stats})
        if now >= self._next_transfer_stats:
            self.publish("transfer_stats", {"block_name": "block0", "timestamp": now,
                                            "data": self.session.counters})
            self._next_transfer_stats = now + TRANSFER_STATS_INTERVAL
