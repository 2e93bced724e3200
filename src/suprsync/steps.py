"""The steps of a sync iteration, as plain functions of (catalog, transport, clock, settings).

Every front end runs the same steps: the agent loop (:mod:`suprsync.agent`) and the
original's API (:class:`suprsync.handler.SupRsyncFileHandler`). Each step is given
the clock it dates its work with; none reads the time from anywhere else.

- :func:`copy` sends a batch and runs the verify step on each chunk as it lands;
- :func:`verify` md5s named files on the destination and records each verdict
  (judged by :func:`suprsync.verdicts.judge_copy`);
- :func:`delete` checks verified copies again and deletes the local files due;
- :func:`finalize` advances the timecode dirs and writes their finalization files;
- :func:`stats` reads the archive's statistics.

What a step remembers between calls (which waits it logged, the timecode-dir watch)
is held by the caller in :class:`Memory`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .catalog.anomalies import DirWatch
from .catalog.conflicts import conflict_count
from .catalog.schema import SupRsyncFile, TimecodeDir
from .catalog.store import SupRsyncFilesManager
from .copying import CopyReport, Pipeline, copy_batch, default_agent_id
from .deletion import CopyRule, DeleteReport, delete_due
from .diskspace import DiskWatch
from .emptydirs import EmptyDirs
from .finalization import update_timecode_dirs
from .retention import Policy
from .transport.base import Transport
from .verification import Staged, VerifyReport, remote_rel, verify_files

Clock = Callable[[], float]


@dataclass(frozen=True)
class Settings:
    """What the steps of one archive are told (the agent's flags, or the handler's arguments)."""

    archive_name: str
    #: Who leases the files being copied (see copying.py).
    agent_id: str = ""
    pipeline: Pipeline = field(default_factory=Pipeline)
    max_copy_attempts: int | None = None
    #: Files per copy step (None: every copyable file).
    num_files: int | None = None
    #: When local files go (None with no policy: the deletion step deletes nothing).
    policy: Policy | None = None
    #: Compare the remote md5 again before deleting, not only size and mtime.
    verify_before_delete: bool = False
    #: Where finalization files are written, and the instance named in them.
    file_root: str | None = None
    instance_id: str = "suprsync"

    def __post_init__(self) -> None:
        if not self.agent_id:
            object.__setattr__(self, "agent_id", default_agent_id(self.archive_name))


@dataclass
class Memory:
    """What the steps of one front end remember from call to call."""

    #: (file id, other id) of the copy waits already logged.
    copy_notes: set[tuple[int, int | None]] = field(default_factory=set)
    #: Local paths whose reason for being kept was logged already.
    delete_notes: set[str] = field(default_factory=set)
    #: The timecode-dir anomalies of the archive (None: one kept per catalog).
    dir_watch: DirWatch | None = None


@dataclass(frozen=True)
class Stats:
    """What the stats step read."""

    time: float
    #: get_archive_stats of the archive.
    archive: dict[str, Any]
    #: Recorded conflicts of the archive.
    conflicts: int


def copy(catalog: SupRsyncFilesManager, transport: Transport, clock: Clock,
         settings: Settings, memory: Memory | None = None,
         reach_first: bool = True) -> CopyReport:
    """Copy and verify one batch of the archive's copyable files; the report of what
    happened. Raises TransportError when the destination cannot be reached (with
    ``reach_first``, also when nothing is copyable)."""
    memory = memory or Memory()
    return copy_batch(catalog, transport, settings.archive_name,
                      max_copy_attempts=settings.max_copy_attempts,
                      num_files=settings.num_files, clock=clock, pipeline=settings.pipeline,
                      agent_id=settings.agent_id, notes=memory.copy_notes,
                      reach_first=reach_first)


def verify(catalog: SupRsyncFilesManager, transport: Transport, clock: Clock,
           settings: Settings, rows: Sequence[SupRsyncFile]) -> VerifyReport:
    """md5 these rows' copies on the destination and record each verdict, dated by the
    clock; the copy step runs the same on every chunk it sends.

    A row whose copy matches is verified; one that is missing or differs gets a
    failed attempt and is copied again. A row whose remote path is not a path
    inside the base dir is left alone (the copy step refuses it). The caller
    holds the rows (``settings.agent_id``'s claims on them end here). Raises
    TransportError when the destination cannot be reached.
    """
    files: list[Staged] = []
    for row in rows:
        rel = remote_rel(row, "verifying", "verify failed")
        if rel is None:
            continue
        try:
            size = os.stat(row.local_path).st_size  # only to size the time-out
        except OSError:
            size = 0
        files.append(Staged(row, rel, size))
    if files:
        transport.ensure_ready()
    return verify_files(catalog, transport, files, clock(), settings.agent_id)


def delete(catalog: SupRsyncFilesManager, transport: Transport, clock: Clock,
           settings: Settings, memory: Memory | None = None,
           disks: DiskWatch | None = None, dirs: EmptyDirs | None = None,
           copies: CopyRule | None = None) -> DeleteReport:
    """Delete the local files the policy lets go whose remote copies still match
    (see :mod:`suprsync.deletion`); ``copies``: with several destinations, how many
    verified copies a file needs and where they are."""
    memory = memory or Memory()
    return delete_due(catalog, settings.archive_name, None, transport=transport,
                      verify_md5=settings.verify_before_delete, notes=memory.delete_notes,
                      policy=settings.policy, disks=disks, dirs=dirs, clock=clock,
                      copies=copies)


def finalize(catalog: SupRsyncFilesManager, transport: Transport, clock: Clock,
             settings: Settings, memory: Memory | None = None,
             clock_ok: bool = True) -> list[TimecodeDir]:
    """Detect new timecode dirs, complete, sync and finalize them; the dirs finalized now.

    ``clock_ok`` False (the clock is in doubt): no dir is completed by age and no
    finalization file is written. The transport is not used: finalization files
    are shipped by the next copy step.
    """
    if settings.file_root is None:
        raise ValueError("the finalization step needs a file root")
    memory = memory or Memory()
    catalog.detect_timecode_dirs(settings.archive_name)
    return update_timecode_dirs(catalog, settings.archive_name, settings.file_root,
                                settings.instance_id, clock=clock, watch=memory.dir_watch,
                                clock_ok=clock_ok)


def stats(catalog: SupRsyncFilesManager, transport: Transport, clock: Clock,
          settings: Settings) -> Stats:
    """The archive's statistics and its count of conflicts (the transport is not used)."""
    now = clock()
    archive = catalog.get_archive_stats(settings.archive_name, now=now)
    conflicts = catalog.read(lambda s: conflict_count(s, settings.archive_name),
                             what="count conflicts")
    return Stats(now, archive, conflicts)
