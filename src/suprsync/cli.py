"""The ``suprsync`` command line: its parser, and the start of each subcommand.

Only the parser is loaded up front; the commands, and with them SQLAlchemy,
are imported once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from .options import add_audit_arguments, add_run_arguments, at_least_one

if TYPE_CHECKING:
    from .agent_config import AgentConfig
    from .transport import Transport
    from .treescan import TreeScan


def _db_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=os.environ.get("SUPRSYNC_DB"),
                        help="catalog: sqlite file or SQLAlchemy URL (default: $SUPRSYNC_DB)")


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suprsync",
        description="Copy files registered in a catalog to a remote archive with rsync, "
                    "verify them by md5, and delete local copies when due.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the sync agent for one archive")
    add_run_arguments(run)
    run.add_argument("--once", action="store_true",
                     help="run one iteration, then exit (status 1 if it failed)")
    run.set_defaults(func="cmd_run")

    add = sub.add_parser("add", help="register one local file")
    add.add_argument("local_path")
    add.add_argument("remote_path", help="path relative to the remote base dir")
    add.add_argument("--archive", required=True, help="archive name")
    add.add_argument("--keep-local", action="store_true",
                     help="never delete the local copy (deletable=false)")
    add.add_argument("--create-db", action="store_true", help="create the catalog if missing")
    _db_argument(add)
    add.set_defaults(func="cmd_add")

    alf = sub.add_parser("add-local-files",
                         help="register every file under a directory not yet in the catalog")
    alf.add_argument("local_root")
    alf.add_argument("archive_name")
    alf.add_argument("--last-edit", type=float, default=60,
                     help="only files last modified more than this many seconds ago "
                          "(default: 60)")
    alf.add_argument("--dry", action="store_true", help="print what would be added")
    alf.add_argument("--create-db", action="store_true", help="create the catalog if missing")
    _db_argument(alf)
    alf.set_defaults(func="cmd_add_local_files")

    check = sub.add_parser("check", help="show the catalog rows of a local file")
    check.add_argument("local_path")
    check.add_argument("--json", action="store_true")
    _db_argument(check)
    check.set_defaults(func="cmd_check")

    for name, func, text in (("next", "cmd_next", "show the next file to be copied"),
                             ("list", "cmd_list", "list the files waiting to be copied")):
        p = sub.add_parser(name, help=text)
        p.add_argument("archive_name")
        p.add_argument("--max-copy-attempts", type=int, default=None,
                       help="leave out files at this many failed attempts")
        p.add_argument("--json", action="store_true")
        if name == "list":
            p.add_argument("--limit", type=int, default=None, help="show at most N files")
        _db_argument(p)
        p.set_defaults(func=func)

    stats = sub.add_parser("stats", help="archive statistics and timecode-dir states")
    stats.add_argument("archive_name", nargs="?", help="archive (default: all)")
    stats.add_argument("--json", action="store_true")
    _db_argument(stats)
    stats.set_defaults(func="cmd_stats")

    status = sub.add_parser("status", help="per archive: is data flowing, how far behind")
    status.add_argument("archive_name", nargs="?", help="archive (default: all)")
    status.add_argument("--max-copy-attempts", type=at_least_one, default=5,
                        help="the agents' attempt limit, to tell waiting from failed "
                             "(default: 5)")
    status.add_argument("--json", action="store_true")
    _db_argument(status)
    status.set_defaults(func="cmd_status")

    retry = sub.add_parser("retry-failed",
                           help="copy again files that reached the attempt limit")
    retry.add_argument("archive_name")
    retry.add_argument("--path", action="append", help="only this local path (repeatable)")
    retry.add_argument("--max-copy-attempts", type=at_least_one, default=5,
                       help="the agent's attempt limit (default: 5)")
    _db_argument(retry)
    retry.set_defaults(func="cmd_retry_failed")

    ignore = sub.add_parser("set-ignore", help="mark local paths ignored (or not)")
    ignore.add_argument("paths", nargs="+")
    ignore.add_argument("--unignore", action="store_true", help="mark them not ignored")
    ignore.add_argument("--archive", default=None, help="only rows of this archive")
    _db_argument(ignore)
    ignore.set_defaults(func="cmd_set_ignore")

    recheck = sub.add_parser("recheck", help="re-hash files and copy and verify them again")
    recheck.add_argument("paths", nargs="+")
    recheck.add_argument("--archive", default=None, help="only rows of this archive")
    _db_argument(recheck)
    recheck.set_defaults(func="cmd_recheck")

    resolve = sub.add_parser("resolve", help="resolve the conflicts of local paths")
    resolve.add_argument("paths", nargs="+")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep-remote", dest="action", action="store_const", const="keep-remote",
                     help="keep the verified remote copy; the local file is kept too")
    how.add_argument("--send-new", dest="action", action="store_const", const="send-new",
                     help="send the local file's current content to the row's destination, "
                          "replacing the copy there")
    resolve.add_argument("--archive", default=None, help="only rows of this archive")
    resolve.add_argument("--json", action="store_true", help="print the result as JSON")
    _db_argument(resolve)
    resolve.set_defaults(func="cmd_resolve")

    rebuild = sub.add_parser("rebuild-timecode-dirs",
                             help="create the timecode-dir rows of every file of an archive")
    rebuild.add_argument("archive_name")
    rebuild.add_argument("--min-ctime", type=float, default=None,
                         help="only files registered after this unix time")
    _db_argument(rebuild)
    rebuild.set_defaults(func="cmd_rebuild_timecode_dirs")

    mig = sub.add_parser("migrate", help="copy a whole catalog into another database")
    mig.add_argument("--from", dest="source", required=True,
                     help="source catalog: sqlite path or SQLAlchemy URL")
    mig.add_argument("--to", dest="destination", required=True,
                     help="destination: SQLAlchemy URL (e.g. postgresql://...) or sqlite path; "
                          "its tables must be empty")
    mig.set_defaults(func="cmd_migrate")

    ret = sub.add_parser("retention", help="show what the retention policy would delete now "
                                           "and why (deletes nothing)")
    ret.add_argument("archive_name")
    ret.add_argument("--retention", default=None, metavar="FILE",
                     help="YAML file of retention rules (default: the rules the archive's "
                          "agent published in the catalog)")
    ret.add_argument("--delete-local-after", type=float, default=None, metavar="SEC",
                     help="instead of a file: one rule deleting every file after SEC seconds")
    ret.add_argument("--min-free", default=None, metavar="SIZE",
                     help="free space wanted per file system (bytes with K/M/G/T, or N%%)")
    ret.add_argument("--min-copies", type=at_least_one, default=None, metavar="N",
                     help="the agent's --min-copies: verified copies a file needs before it "
                          "goes (default: every destination recorded for the archive)")
    ret.add_argument("--limit", type=at_least_one, default=1000, metavar="N",
                     help="list at most N files deleted and N kept; counts stay exact "
                          "(default: 1000)")
    ret.add_argument("--json", action="store_true", help="print the result as JSON")
    _db_argument(ret)
    ret.set_defaults(func="cmd_retention")

    for p in (add, alf, retry, ignore, recheck, rebuild, mig):
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    audit = sub.add_parser("audit", help="compare the catalog of an archive with its "
                                         "destination (exit 1 when they differ)")
    add_audit_arguments(audit)
    _db_argument(audit)
    audit.set_defaults(func="cmd_audit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    name: str | None = getattr(ns, "func", None)
    if name is None:
        parser.print_help()
        return 2
    scan = None
    if name == "cmd_run":
        # Until the agent takes them over, a stop request ends the start-up cleanly.
        for signum in STOP_SIGNALS:
            signal.signal(signum, _exit_cleanly)
        ns.early = _reach_destination(ns)
    if name == "cmd_add_local_files":
        # Unwind on SIGTERM or SIGHUP too, so that the scan's close() stops md5sum.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _exit_on_signal)
        scan = ns.scan = _start_tree_scan(ns)
    try:
        commands = _load_commands(with_agent=name == "cmd_run")
        return commands.run(ns, getattr(commands, name))
    finally:
        if scan is not None:
            scan.close()
        early = getattr(ns, "early", None)
        if early is not None:  # the agent closed it already, unless it never started
            early[1].abort()  # an attempt to connect that still runs
            early[1].close()


def _load_commands(with_agent: bool) -> ModuleType:
    """The commands module (and the agent's), imported with the cyclic GC paused.

    The imports, SQLAlchemy's most of all, make some 65,000 objects that all
    stay: collecting among them while they are made costs about 0.1 s, and so
    does the collection at exit. Frozen afterwards, no collection reads them again.
    """
    gc.disable()
    try:
        from . import commands

        if with_agent:
            from . import agent  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()
    return commands


#: Signals that ask ``suprsync run`` to stop (exit status 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_cleanly(signum: int, _frame: object) -> None:
    logging.getLogger("suprsync").info("received %s before the agent started, stopping",
                                       signal.Signals(signum).name)
    raise SystemExit(0)


def _reach_destination(ns: argparse.Namespace) -> tuple[AgentConfig, Transport] | None:
    """For run over ssh: (config, transport) whose host is reached while the catalog code loads.

    None when no remote destination is named or the settings are wrong (the command says why).
    """
    if not getattr(ns, "ssh_host", None) and "://" not in " ".join(
            getattr(ns, "destination", None) or ()):
        return None
    from .options import ConfigError, check_environment, config_from_args
    try:
        config = config_from_args(ns)
        check_environment(config)
    except ConfigError:
        return None
    transport = config.open_transport()
    transport.prepare_soon()
    return config, transport


def _start_tree_scan(ns: argparse.Namespace) -> TreeScan | None:
    """For add-local-files on a sqlite file: list and hash while the catalog code loads."""
    root = os.path.abspath(ns.local_root)
    if ns.dry or not ns.db or "://" in ns.db or not os.path.isdir(root):
        return None  # the command itself lists the tree, or says what is wrong
    from .catalog.peek import known_local_paths
    from .catalog.settings import CATALOG_FILE_SUFFIXES
    from .treescan import TreeScan

    db = os.path.abspath(os.path.expanduser(ns.db))  # as the catalog code resolves it
    if not ns.create_db and not os.path.isfile(db):
        return None  # the command refuses it
    return TreeScan(root, time.time() - ns.last_edit,
                    lambda: known_local_paths(db, ns.archive_name),
                    exclude={db + sfx for sfx in CATALOG_FILE_SUFFIXES}).start()


if __name__ == "__main__":
    sys.exit(main())
