"""The verify step: md5 files on the destination and record each one's verdict.

The copy step runs it on every chunk it sent, while the next chunk is being sent;
:func:`suprsync.steps.verify` runs it on rows a caller names. The verdict is
:func:`suprsync.verdicts.judge_copy`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .catalog.schema import SupRsyncFile
from .catalog.store import CopyResult, SupRsyncFilesManager
from .events import event
from .hashing import md5_file
from .paths import check_local_file, normalize_remote_path
from .transport import Transport, TransportError
from .verdicts import MD5_MISMATCH, judge_copy

__all__ = ["Staged", "VerifyReport", "remote_rel", "verify_files"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Staged:
    """A file of a batch with its remote path (relative to the base dir) and size."""

    row: SupRsyncFile
    rel: str
    size: int
    #: Only the registered md5 is accepted (the file was verified once, or its
    #: destination already holds another row's verified copy).
    strict: bool = False


def remote_rel(row: SupRsyncFile, doing: str, what: str) -> str | None:
    """The row's remote path inside the base dir, or None (logged) when it has none."""
    try:
        return normalize_remote_path(row.remote_path)
    except (ValueError, TypeError) as exc:
        log.error("not %s %s (file id %s): %s", doing, row.local_path, row.id, exc,
                  extra=event(what, row.local_path))
        return None


@dataclass
class VerifyReport:
    """What one verify call found; ``files`` pairs each local path with its verdict."""

    files: list[list[Any]] = field(default_factory=list)
    #: Bytes of the files verified on the destination.
    bytes_verified: int = 0
    #: Files whose copy did not verify (mismatch or missing).
    failures: int = 0
    #: "timed out" or "nonzero exit" when the destination could not be asked;
    #: then no file was judged.
    error: str | None = None
    timed_out: bool = False


def verify_files(manager: SupRsyncFilesManager, transport: Transport, files: list[Staged],
                 copied_at: float, agent_id: str | None = None) -> VerifyReport:
    """md5 ``files`` on the destination and record each verdict, dated ``copied_at``.

    A file whose md5 differs but which was modified after registration is hashed
    again locally (unless ``strict``): its new content is the one judged. When the
    destination cannot be asked nothing is recorded and the report says why.
    ``agent_id``'s claims on the files end with the verdicts.
    """
    report = VerifyReport()
    if not files:
        return report
    try:
        sums = transport.checksums([s.rel for s in files],
                                   total_bytes=sum(s.size for s in files))
    except TransportError as exc:
        report.error = "timed out" if exc.timed_out else "nonzero exit"
        report.timed_out = exc.timed_out
        if transport.aborted:
            log.info("verification of %d files stopped by request", len(files))
        else:
            log.error("verification of %d files failed: %s; retrying next iteration",
                      len(files), exc)
        return report
    results = []
    for s in files:
        remote = sums.get(s.rel)
        local_md5 = s.row.local_md5sum
        if judge_copy(local_md5, remote).kind == MD5_MISMATCH and not s.strict:
            local_md5 = _rehash_changed(s.row) or local_md5
        ok = judge_copy(local_md5, remote).ok
        if ok:
            log.info("copied and verified %s -> %s", s.row.local_path, s.rel)
            report.bytes_verified += s.size
        elif remote is None:
            log.error("%s: missing on the destination after rsync (file id %s)", s.rel, s.row.id,
                      extra=event("verify failed", s.row.local_path))
        else:
            log.error("%s: md5 mismatch, local %s remote %s (file id %s)", s.rel,
                      local_md5, remote, s.row.id, extra=event("verify failed", s.row.local_path))
        new_md5 = local_md5 if local_md5 != s.row.local_md5sum else None
        results.append(CopyResult(s.row.id, remote, copied_at, ok, new_md5))
        report.files.append([s.row.local_path, ok])
        report.failures += not ok
    manager.record_results(results, agent_id)
    return report


def _rehash_changed(row: SupRsyncFile) -> str | None:
    """The local file's md5 now, when it was modified after registration and differs.

    A file whose mtime is not later than its registration keeps its registered md5:
    its content must not have changed, so a mismatch is a real failure.
    """
    try:
        if check_local_file(row.local_path).st_mtime <= row.timestamp:
            return None
        current = md5_file(row.local_path)
    except OSError as exc:
        log.error("cannot re-hash %s: %s", row.local_path, exc.strerror)
        return None
    if current == row.local_md5sum:
        return None
    log.warning("%s changed after it was registered (md5 %s -> %s); the new content is the "
                "one copied", row.local_path, row.local_md5sum, current)
    return current
