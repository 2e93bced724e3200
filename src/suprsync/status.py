"""What an operator needs at a glance: per archive, is data flowing and how far behind."""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import case, func, inspect, select
from sqlalchemy.orm import Session

from .catalog.anomalies import catalog_anomalies
from .catalog.conflicts import conflict_count
from .catalog.copies import summary as destination_summary
from .catalog.copies import summary_lines
from .catalog.meta import disk_pressure
from .catalog.quarantine import (
    COPIED_IS_TIME,
    HEALTHY,
    LIST_LIMIT,
    quarantined_rows,
)
from .catalog.schema import (
    NOT_IGNORED,
    SYNCED,
    UNSYNCED,
    CatalogMeta,
    Conflict,
    DestinationRecord,
    SupRsyncFile,
)
from .catalog.store import SupRsyncFilesManager

F = SupRsyncFile


def archive_status(manager: SupRsyncFilesManager, archive_name: str, max_copy_attempts: int,
                   now: float | None = None) -> dict[str, Any]:
    """Counts, backlog and lags of one archive (see docs/monitoring.md)."""
    now = manager.clock() if now is None else now
    attempts = func.coalesce(F.failed_copy_attempts, 0)
    waiting = UNSYNCED & NOT_IGNORED & F.removed.is_(None) & (attempts < max_copy_attempts)
    failed = UNSYNCED & NOT_IGNORED & (attempts >= max_copy_attempts)
    in_archive = F.archive_name == archive_name

    def one(cond):  # type: ignore[no-untyped-def]
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    def query(session: Session) -> dict[str, Any]:
        every, ignored = session.execute(select(func.count(), one(~NOT_IGNORED))
                                         .where(in_archive)).one()
        # The quarantine check is the costly part: it runs once per row, here.
        healthy, synced, waiting_count, failed_count, oldest = session.execute(
            select(func.count(), one(SYNCED), one(waiting), one(failed),
                   func.min(case((waiting, F.timestamp))))
            .where(in_archive, HEALTHY)).one()
        quarantined = int(every) - int(healthy)
        waiting_bytes = 0
        sound = [HEALTHY] if quarantined else []  # no need to check again when none is bad
        for path in session.scalars(select(F.local_path).where(
                in_archive, waiting, *sound).execution_options(yield_per=2000)):
            try:
                waiting_bytes += os.stat(path).st_size
            except OSError:
                continue
        last_copy = session.scalar(select(func.max(F.copied)).where(
            in_archive, SYNCED, COPIED_IS_TIME))
        finalized_until = manager.get_finalized_until(archive_name, session=session)
        # A catalog suprsync never opened for writing lacks its extra tables.
        tables = set(inspect(session.get_bind()).get_table_names())
        conflicts = (conflict_count(session, archive_name)
                     if Conflict.__tablename__ in tables else 0)
        pressure = ((disk_pressure(session, archive_name) or {})
                    if CatalogMeta.__tablename__ in tables else {})
        listed = (quarantined_rows(session, in_archive, limit=LIST_LIMIT)
                  if quarantined else [])
        destinations = (destination_summary(session, archive_name, max_copy_attempts)
                        if DestinationRecord.__tablename__ in tables else [])
        return {
            "registered": int(every),
            "synced": int(synced),
            "waiting": int(waiting_count),
            "failed_at_limit": int(failed_count),
            "ignored": int(ignored),
            "bytes_waiting": waiting_bytes,
            "oldest_waiting_age": None if oldest is None else max(0.0, now - float(oldest)),
            "finalized_until": finalized_until,
            "finalized_until_lag": max(0.0, now - finalized_until),
            "last_copy": None if last_copy is None else float(last_copy),
            **catalog_anomalies(session, archive_name, now),
            "conflicts": conflicts,
            "quarantined": quarantined,
            "quarantined_rows": listed,
            "disk_pressure": list(pressure.get("filesystems") or []),
            "disk_pressure_time": pressure.get("time"),
            **({"destinations": destinations} if destinations else {}),
        }

    return manager.read(query, what=f"status of {archive_name}")


def catalog_status(manager: SupRsyncFilesManager, max_copy_attempts: int,
                   archives: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """archive_status of every archive (or of the given ones)."""
    names = archives if archives is not None else manager.archives()
    now = manager.clock()
    return {name: archive_status(manager, name, max_copy_attempts, now) for name in names}


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_age(seconds: float | None) -> str:
    """90061 -> '1d 1h'; None -> '-'."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


COLUMNS = ("archive", "registered", "synced", "waiting", "failed", "ignored", "conflicts",
           "bytes waiting", "oldest waiting", "finalized until", "lag", "last copy")


def format_table(status: dict[str, dict[str, Any]], now: float | None = None) -> str:
    """The status as an aligned text table, one archive per line."""
    now = time.time() if now is None else now
    rows = [COLUMNS]
    for name, s in status.items():
        rows.append((
            name, str(s["registered"]), str(s["synced"]), str(s["waiting"]),
            str(s["failed_at_limit"]), str(s["ignored"]), str(s["conflicts"]),
            human_bytes(s["bytes_waiting"]),
            human_age(s["oldest_waiting_age"]),
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(s["finalized_until"])),
            human_age(s["finalized_until_lag"]),
            "-" if s["last_copy"] is None else human_age(now - s["last_copy"]) + " ago",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    for name, s in status.items():
        lines += quarantine_lines(name, s)
        lines += anomaly_lines(name, s)
        lines += summary_lines(name, s.get("destinations", []))
    return "\n".join(lines)


def anomaly_lines(archive_name: str, status: dict[str, Any]) -> list[str]:
    """One line per timecode-dir anomaly of an archive (none when all is well)."""
    lines = []
    for tc in status.get("future_timecode_dirs", []):
        lines.append(f"{archive_name}: timecode dir {tc} is dated in the future; "
                     "it completes nothing")
    for f in status.get("late_files", []):
        lines.append(f"{archive_name}: {f['local_path']} ({f['remote_path']}) was registered "
                     f"into timecode dir {f['timecode']} after its finalization file")
    for fs in status.get("disk_pressure", []):
        if isinstance(fs, dict):
            lines.append(f"{archive_name}: disk pressure: {fs.get('path')} has "
                         f"{human_bytes(fs.get('free', 0))} free, below --min-free "
                         f"{human_bytes(fs.get('min_free', 0))}; only unverified or protected "
                         "local files are left")
    if status.get("rows_ahead_of_clock"):
        lines.append(f"{archive_name}: rows were registered well after now: the clock is in "
                     "doubt, no dir is completed by age")
    return lines


def quarantine_lines(archive_name: str, summary: dict[str, Any]) -> list[str]:
    """Human lines for the quarantined rows of an archive (none when there are none)."""
    count = summary.get("quarantined", 0)
    if not count:
        return []
    lines = [f"archive {archive_name}: {count} quarantined row(s), never copied or deleted "
             f"until fixed:"]
    lines += [f"  id {r['id']}: {r['reason']}" for r in summary["quarantined_rows"]]
    if count > len(summary["quarantined_rows"]):
        lines.append(f"  ... and {count - len(summary['quarantined_rows'])} more")
    return lines
