"""What each ``suprsync`` subcommand does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .catalog import maintenance
from .catalog.anomalies import catalog_anomalies
from .catalog.conflicts import list_conflicts
from .catalog.copies import DestinationConflict, summary_lines
from .catalog.copies import summary as destination_summary
from .catalog.engine import CatalogBusy
from .catalog.quarantine import (
    homeless_rows,
    printable,
    quarantine_summary,
    raw_rows_query,
    why_quarantined,
)
from .catalog.readonly import shadow_missing_tables
from .catalog.schema import SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .catalog.timecode import dir_states
from .catalog.watch import CatalogLost
from .options import ConfigError, check_environment, config_from_args
from .progress import Bar
from .registration import add_local_files
from .status import anomaly_lines, quarantine_lines
from .treescan import (
    SKIP_CATALOG,
    SKIP_KNOWN,
    SKIP_NOT_REGULAR,
    SKIP_NOT_UTF8,
    SKIP_RECENT,
    SKIP_UNREADABLE,
)

log = logging.getLogger("suprsync")

#: Conflicts listed per archive by ``stats``.
STATS_LIST_LIMIT = 100


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def open_catalog(db: str | None, create: bool = False,
                 write: bool = False) -> SupRsyncFilesManager:
    """Open an existing catalog (or create it when asked); CliError otherwise.

    ``write``: the command changes the catalog, so missing indexes may be added.
    """
    if not db:
        raise CliError("no catalog given: use --db PATH or set SUPRSYNC_DB")
    if "://" not in db and not create:
        if not os.path.exists(db):
            raise CliError(f"catalog {db!r} does not exist")
        if not os.access(db, os.R_OK):
            raise CliError(f"catalog {db!r} is not readable")
    # Read-only commands leave an existing catalog as it is (no new tables or indexes):
    # the extra tables it lacks are read as empty.
    manager = SupRsyncFilesManager(db, create_all=create or write)
    if not (create or write):
        shadow_missing_tables(manager.engine)
    return manager


def _require_archive(manager: SupRsyncFilesManager, archive: str) -> None:
    archives = manager.archives()
    if archive not in archives:
        known = ", ".join(archives) if archives else "none"
        raise CliError(f"unknown archive {archive!r} (archives in this catalog: {known})")


#: Why add-local-files left files out: the --json key and the text of each reason.
SKIP_REASONS = {
    SKIP_RECENT: "{n} modified within the last {last_edit} s (--last-edit)",
    SKIP_KNOWN: "{n} already registered",
    SKIP_UNREADABLE: "{n} unreadable",
    SKIP_NOT_UTF8: "{n} with a name that is not valid UTF-8",
    SKIP_NOT_REGULAR: "{n} not regular files (symlinks, FIFOs, devices, sockets)",
    SKIP_CATALOG: "{n} of the catalog's own files",
}
#: Catalog ids scanned per transaction by rebuild-timecode-dirs.
REBUILD_CHUNK = 50_000
#: Paths listed by add-local-files --json (the count stays exact).
JSON_FILES = 1000


def _row_dict(row: SupRsyncFile) -> dict[str, Any]:
    return {c.name: printable(getattr(row, c.name)) for c in SupRsyncFile.__table__.columns}


def _warn_homeless(manager: SupRsyncFilesManager, command: str) -> None:
    """One stderr line for the quarantined rows that name no archive, when there are any."""
    found = manager.read(homeless_rows, what="rows in no archive")
    if not found["quarantined"]:
        return
    shown = "; ".join(f"id {r['id']}: {r['reason']}" for r in found["quarantined_rows"][:5])
    more = found["quarantined"] - min(5, len(found["quarantined_rows"]))
    print(f"suprsync {command}: warning: {found['quarantined']} catalog rows name no archive "
          f"and are quarantined ({shown}{f'; and {more} more' if more else ''})",
          file=sys.stderr)


# ----------------------------------------------------------------- commands


def cmd_run(ns: argparse.Namespace) -> int:
    from .agent import Agent

    # The config and a transport already reaching the host, when the command line made them.
    config, transport = getattr(ns, "early", None) or (None, None)
    try:
        if config is None:
            config = config_from_args(ns)
            check_environment(config)
        metrics = _start_metrics(ns) if ns.metrics_port is not None else None
        agent = Agent(config, transport=transport)
    except (ConfigError, DestinationConflict) as exc:
        raise CliError(str(exc)) from None
    except (SQLAlchemyError, CatalogBusy) as exc:
        where = getattr(ns, "db_url", None) or ns.db_path
        raise CliError(f"cannot open catalog {where!r}: {str(exc).splitlines()[0]}") \
            from None

    if metrics is not None:
        metrics.attach(agent)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        agent.stop()

    # The agent kills its children and closes its ssh connection on the way out.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        ok = agent.run(once=ns.once)
    except CatalogLost as exc:
        raise CliError(str(exc)) from None
    finally:
        if metrics is not None:
            metrics.close()
    return 0 if ok or not ns.once else 1


def _start_metrics(ns: argparse.Namespace) -> Any:
    try:
        from .metrics import MetricsServer
    except ImportError:
        raise CliError("--metrics-port needs prometheus-client: pip install "
                       "'suprsync[metrics]'") from None
    try:
        return MetricsServer(ns.metrics_port, ns.metrics_host)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {ns.metrics_host}:{ns.metrics_port}: "
                       f"{exc.strerror or exc}") from None


def cmd_add(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db, create=ns.create_db, write=True)
    local = os.path.abspath(ns.local_path)
    try:
        row = manager.add_file(local, ns.remote_path, ns.archive,
                               deletable=not ns.keep_local)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot add {local!r}: {exc.strerror or exc}") from None
    if ns.json:
        print(json.dumps(_row_dict(row), indent=2))
    else:
        print(f"added {row.local_path} -> {row.remote_path} (archive {row.archive_name}, "
              f"id {row.id})")
    return 0


def cmd_add_local_files(ns: argparse.Namespace) -> int:
    root = os.path.abspath(ns.local_root)
    if not os.path.isdir(root):
        raise CliError(f"{root!r} is not a directory")
    manager = open_catalog(ns.db, create=ns.create_db, write=True)
    skipped: Counter[str] = Counter()
    # A scan started by main() before this module loaded (main closes it too).
    added = add_local_files(manager, root, ns.archive_name, last_edit=ns.last_edit,
                            dry=ns.dry, out=None if ns.json else sys.stdout,
                            scan=getattr(ns, "scan", None), skipped=skipped)
    counts = {reason: skipped.get(reason, 0) for reason in SKIP_REASONS}
    if ns.json:
        print(json.dumps({"archive": ns.archive_name, "root": root, "dry": ns.dry,
                          "added": len(added), "skipped": counts,
                          "files": added[:JSON_FILES]}, indent=2))
        return 0
    if ns.dry:
        print(f"dry run: would add {len(added)} files")
    else:
        print(f"added {len(added)} files to archive {ns.archive_name}")
    shown = [SKIP_REASONS[r].format(n=n, last_edit=f"{ns.last_edit:g}")
             for r, n in counts.items() if n]
    print("skipped: " + ("; ".join(shown) if shown else "none"))
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db)
    rows = manager.file_by_local_path(ns.local_path)
    if not rows:
        raise CliError(f"{os.path.abspath(ns.local_path)!r} is not in the catalog")
    raw = manager.read(lambda s: s.execute(raw_rows_query(
        SupRsyncFile.id.in_([r.id for r in rows]))).all(), what="check rows")
    reasons = {r.id: why_quarantined(r._mapping) for r in raw}
    if ns.json:
        print(json.dumps([{**_row_dict(r), "quarantined": reasons.get(r.id)} for r in rows],
                         indent=2))
        return 0
    for row in rows:
        print("-" * 72)
        for key, value in _row_dict(row).items():
            print(f"{key:>22}: {value}")
        print(f"{'synced':>22}: {row.is_synced and reasons.get(row.id) is None}")
        if reasons.get(row.id) is not None:
            print(f"{'quarantined':>22}: {reasons[row.id]}")
    print("-" * 72)
    return 0


def cmd_next(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db)
    _require_archive(manager, ns.archive_name)
    files = manager.get_copyable_files(ns.archive_name, num_files=1,
                                       max_copy_attempts=ns.max_copy_attempts)
    if ns.json:
        print(json.dumps(_row_dict(files[0]) if files else None, indent=2))
    elif not files:
        print("No more files left to be copied")
    else:
        print(files[0])
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db)
    _require_archive(manager, ns.archive_name)
    files = manager.get_copyable_files(ns.archive_name, max_copy_attempts=ns.max_copy_attempts,
                                       num_files=ns.limit)
    if ns.json:
        print(json.dumps([_row_dict(f) for f in files], indent=2))
    elif not files:
        print("No files left to be copied")
    else:
        for i, f in enumerate(files):
            print(f"{i}: {f.local_path} -> {f.remote_path} "
                  f"(attempts {f.failed_copy_attempts or 0})")
    return 0


def cmd_stats(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db)
    archives = [ns.archive_name] if ns.archive_name else manager.archives()
    if ns.archive_name:
        _require_archive(manager, ns.archive_name)
    out: dict[str, Any] = {}
    for archive in archives:
        stats = manager.get_archive_stats(archive)
        stats["timecode_dirs"] = manager.read(lambda s, a=archive: dir_states(s, a))
        stats.update(manager.read(
            lambda s, a=archive: catalog_anomalies(s, a, manager.clock())))
        stats["conflicts"] = manager.read(
            lambda s, a=archive: list_conflicts(s, a, limit=STATS_LIST_LIMIT))
        stats.update(manager.read(lambda s, a=archive: quarantine_summary(s, a),
                                  what="quarantined rows"))
        destinations = manager.read(lambda s, a=archive: destination_summary(s, a, None),
                                    what="destinations")
        if destinations:
            stats["destinations"] = destinations
        out[archive] = stats
    if not ns.archive_name:
        _warn_homeless(manager, "stats")
    if ns.json:
        print(json.dumps(out, indent=2))
        return 0
    for archive, stats in out.items():
        print(f"archive {archive}")
        for key in ("num_files", "uncopied_files", "last_file_added", "last_file_copied"):
            print(f"  {key:<18} {stats[key]}")
        fu = stats["finalized_until"]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(fu))
        print(f"  {'finalized_until':<18} {fu:.0f} ({when})")
        for c in stats["conflicts"]:
            print(f"  conflict: file id {c['id']} {c['local_path']} -> {c['remote_path']}: "
                  f"{c['detail']}")
        dirs = stats["timecode_dirs"]
        print("  timecode dirs:")
        for state in ("open", "completed_unsynced", "synced", "finalized"):
            tcs = dirs[state]
            shown = " ".join(map(str, tcs[-12:])) + (" ..." if len(tcs) > 12 else "")
            print(f"    {state:<19} {len(tcs):>5}  {shown}")
        for line in anomaly_lines(archive, stats):
            print(f"  anomaly: {line}")
        for line in quarantine_lines(archive, stats):
            print("  " + line)
        for line in summary_lines(archive, stats.get("destinations", [])):
            print("  " + line)
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    from .status import catalog_status, format_table

    manager = open_catalog(ns.db)
    if ns.archive_name:
        _require_archive(manager, ns.archive_name)
    status = catalog_status(manager, ns.max_copy_attempts,
                            [ns.archive_name] if ns.archive_name else None)
    if not ns.archive_name:
        _warn_homeless(manager, "status")
    if ns.json:
        print(json.dumps(status, indent=2))
    elif not status:
        print("the catalog holds no files yet")
    else:
        print(format_table(status, now=manager.clock()))
    return 0


def cmd_retention(ns: argparse.Namespace) -> int:
    from .catalog.meta import DELETE_RULE_PREFIX, get_meta
    from .options import retention_from_args
    from .preview import format_preview, preview
    from .retention import Policy

    try:
        policy, min_free = retention_from_args(ns)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    manager = open_catalog(ns.db)
    _require_archive(manager, ns.archive_name)
    if policy is None and ns.delete_local_after is not None:
        policy = Policy.delete_after(ns.delete_local_after)
    if policy is None:
        policy = Policy.from_published(manager.read(
            lambda s: get_meta(s, DELETE_RULE_PREFIX + ns.archive_name)))
        if policy is None:
            raise CliError(f"the agent of archive {ns.archive_name!r} published no retention "
                           "rules: give --retention FILE or --delete-local-after SEC")
    result = preview(manager, ns.archive_name, policy, min_free, manager.clock(), ns.limit,
                     ns.min_copies)
    print(json.dumps(result, indent=2) if ns.json else format_preview(result))
    return 0


def cmd_retry_failed(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db, write=True)
    _require_archive(manager, ns.archive_name)
    with Bar("resetting", total=len(ns.path or ()) or None, unit="paths",
             enabled=not ns.json) as bar:
        if not ns.path:
            bar.phase(f"resetting the failed files of {ns.archive_name}")
        count = maintenance.retry_failed(manager, ns.archive_name, ns.max_copy_attempts,
                                         ns.path or None, progress=bar.update)
    if ns.json:
        print(json.dumps({"archive": ns.archive_name, "reset": count}, indent=2))
    else:
        print(f"reset the failed attempts of {count} file(s)")
    return 0


def cmd_set_ignore(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db, write=True)
    count = maintenance.set_ignore(manager, ns.paths, not ns.unignore, ns.archive)
    if count == 0:
        raise CliError("none of these paths is in the catalog")
    if ns.json:
        print(json.dumps({"ignore": not ns.unignore, "rows": count}, indent=2))
    else:
        print(f"marked {count} file(s) {'not ignored' if ns.unignore else 'ignored'}")
    return 0


def cmd_recheck(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db, write=True)
    with Bar("rechecking", total=len(ns.paths), enabled=not ns.json) as bar:
        report = maintenance.recheck(manager, ns.paths, ns.archive, progress=bar.update)
    if ns.json:
        print(json.dumps({"queued": list(report.queued), "changed": list(report.changed),
                          "conflicts": list(report.conflicts), "gone": list(report.gone),
                          "not_found": list(report.not_found)}, indent=2))
        return 0 if not report.not_found else 1
    for path in report.changed:
        print(f"changed since registration: {path}")
    for path in report.conflicts:
        print(f"conflict: changed after its copy was verified, not re-sent: {path}")
    for path in report.gone:
        print(f"local copy gone, cannot re-send: {path}")
    for path in report.not_found:
        print(f"not in the catalog: {path}")
    print(f"queued {len(report.queued)} file(s) to be copied and verified again")
    return 0 if not report.not_found else 1


def cmd_resolve(ns: argparse.Namespace) -> int:
    from .catalog.resolve import resolve

    manager = open_catalog(ns.db, write=True)
    report = resolve(manager, ns.paths, ns.action, ns.archive)
    if ns.json:
        print(json.dumps({"resolved": [{"local_path": p, "kind": k} for p, k in report.resolved],
                          "superseded": [{"id": i, "remote_path": r}
                                         for i, r in report.superseded],
                          "failed": [{"local_path": p, "reason": r} for p, r in report.failed],
                          "not_found": report.not_found}, indent=2))
    else:
        for path, kind in report.resolved:
            print(f"resolved ({kind}, {ns.action}): {path}")
        for file_id, remote in report.superseded:
            print(f"superseded: file id {file_id} at {remote}")
        for path, reason in report.failed:
            print(f"not resolved: {path}: {reason}")
        for path in report.not_found:
            print(f"no conflict recorded for {path}")
    return 0 if not report.failed and not report.not_found else 1


def cmd_rebuild_timecode_dirs(ns: argparse.Namespace) -> int:
    manager = open_catalog(ns.db, write=True)
    _require_archive(manager, ns.archive_name)
    from .catalog.timecode import max_file_id, scan_timecodes

    # Short transactions of REBUILD_CHUNK ids each, so other writers never wait long.
    top = manager.read(max_file_id, what="highest file id")
    created = 0
    with Bar("scanning", total=top, unit="ids", enabled=not ns.json) as bar:
        for after in range(0, top, REBUILD_CHUNK):
            up_to = min(after + REBUILD_CHUNK, top)
            created += manager.write(
                lambda s, a=after, u=up_to: scan_timecodes(s, ns.archive_name, a, u,
                                                           ns.min_ctime)[0],
                what="create timecode dirs")
            bar.update(up_to)
    if ns.json:
        print(json.dumps({"archive": ns.archive_name, "created": created}, indent=2))
    else:
        print(f"created {created} timecode dir(s)")
    return 0


def cmd_migrate(ns: argparse.Namespace) -> int:
    from .catalog.dialects import database_file
    from .catalog.engine import catalog_url
    from .catalog.migrate import MigrationError, migrate

    source = ns.source
    path = database_file(catalog_url(source))
    if path is not None and not os.path.exists(path):
        raise CliError(f"source catalog {path!r} does not exist")
    bar = Bar("copying", unit="rows", enabled=not ns.json)

    def progress(table: str, done: int, total: int) -> None:
        if bar.label != table:
            bar.close()
            bar.phase(table, total)
        bar.update(done)

    try:
        with bar:
            copied = migrate(source, ns.destination, progress=progress)
    except MigrationError as exc:
        raise CliError(str(exc)) from None
    if ns.json:
        print(json.dumps({"copied": copied}, indent=2))
        return 0
    for table, count in copied.items():
        print(f"{table}: {count} rows copied")
    return 0


def cmd_audit(ns: argparse.Namespace) -> int:
    """Exit 0 when the destination matches the catalog, 1 on problems, 2 when it cannot run."""
    from .audit import AuditError, run_audit
    from .transport import TransportError

    manager = None
    try:
        manager = open_catalog(ns.db, write=ns.requeue)
        _require_archive(manager, ns.archive_name)
        return run_audit(ns, manager)
    except (CliError, AuditError, TransportError, SQLAlchemyError, CatalogBusy) as exc:
        text = str(exc).strip().splitlines()
        print(f"suprsync audit: error: {text[0] if text else type(exc).__name__}",
              file=sys.stderr)
        return 2
    finally:
        if manager is not None:
            manager.close()




def run(ns: argparse.Namespace, command: Callable[[argparse.Namespace], int]) -> int:
    """Run one command; user errors become one line on stderr and a non-zero status."""
    try:
        return command(ns)
    except CliError as exc:
        print(f"suprsync {ns.command}: error: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, CatalogBusy, sqlite3.Error) as exc:
        print(f"suprsync {ns.command}: error: catalog: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: no traceback, and no second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
