"""OCS front end: the ``run`` process and operator tasks over the same loop as ``suprsync run``.

Started by ``ocs-agent-cli`` for agent-class ``SupRsync`` (or the unambiguous
``SuprsyncAgent``). Needs the optional ``ocs`` extra; nothing else imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from typing import Any

import txaio
from ocs import ocs_agent, site_config

from .agent import Agent, AgentConfig
from .catalog import maintenance
from .catalog.store import SupRsyncFilesManager
from .catalog.watch import CatalogLost
from .options import ConfigError, add_run_arguments, check_environment, config_from_args
from .session import SessionData

log = logging.getLogger("suprsync.ocs")

#: Seconds between attempts to open an unavailable catalog.
CATALOG_RETRY = 5.0
#: Seconds a task waits for the run loop to reach a point between steps.
TASK_WAIT = 600.0


class SupRsyncAgent:
    """The OCS agent: one ``run`` process and the operator tasks."""

    def __init__(self, agent: ocs_agent.OCSAgent, config: AgentConfig,
                 metrics: Any = None) -> None:
        self.agent = agent
        self.config = config
        #: A metrics.MetricsServer when --metrics-port was given.
        self.metrics = metrics
        self.core: Agent | None = None
        self._stopping = threading.Event()
        self._task_manager: SupRsyncFilesManager | None = None
        agent.register_feed("transfer_stats", record=True,
                            agg_params={"exclude_aggregator": True})
        agent.register_feed("archive_stats", record=True)

    # ------------------------------------------------------------ process

    def run(self, session: Any, params: dict | None = None) -> tuple[bool, str]:
        """run()

        **Process** - Copy, verify, delete and finalize until stopped.

        The session data is::

            {"activity": "idle" | "copying" | "deleting",
             "timestamp": <time of the last iteration>,
             "last_copy": {"start_time", "stop_time", "files": [[path, md5_ok], ...],
                           "error": "timed out" | "nonzero exit"  (only on failure)},
             "archive_stats": {<archive>: {finalized_until, num_files, uncopied_files,
                                            last_file_added, last_file_copied}},
             "counters": {iterations, copies, errors_timeout, errors_nonzero,
                          errors_sqlite}}
        """
        self._stopping.clear()
        # Clients may read the keys before the catalog can be opened.
        session.data = SessionData(time.time()).snapshot()

        def on_change(data: dict[str, Any], degraded: bool) -> None:
            session.data = data
            session.degraded = degraded

        while not self._stopping.is_set():
            core = self._open_core(session, on_change)
            if core is None:
                break
            self.core = core
            try:
                core.run()
                break
            except CatalogLost as exc:
                # What a restart would do: open the catalog at its path again.
                session.degraded = True
                core.manager.close()
                log.error("%s; opening it again in %.0f s", exc, CATALOG_RETRY)
                self._stopping.wait(CATALOG_RETRY)
            finally:
                self.core = None
        return True, "Stopped run process"

    def _open_core(self, session: Any, on_change: Any) -> Agent | None:
        """An Agent on the catalog, retried until it opens; None when stopped first."""
        core = None
        while core is None and not self._stopping.is_set():
            try:
                core = Agent(self.config, publish=self._publish, on_session_change=on_change)
            except Exception as exc:  # the catalog may come back: keep trying
                session.degraded = True
                log.error("cannot open catalog %s: %s; retrying in %.0f s",
                          self.config.db_path, str(exc).splitlines()[0], CATALOG_RETRY)
                self._stopping.wait(CATALOG_RETRY)
        if core is None:
            return None
        session.data = core.session.snapshot()
        session.degraded = False
        if self.metrics is not None:
            self.metrics.attach(core)
        return core

    def _stop(self, session: Any, params: dict | None = None) -> tuple[bool, str]:
        session.set_status("stopping")
        self._stopping.set()
        if self.core is not None:
            self.core.stop()
        return True, "Requested the run process to stop"

    def _publish(self, feed: str, message: dict[str, Any]) -> None:
        self.agent.publish_to_feed(feed, message)

    # -------------------------------------------------------------- tasks

    def _call(self, fn):  # type: ignore[no-untyped-def]
        """Run a catalog action between two steps of the loop (directly when idle)."""
        core = self.core
        if core is not None:
            return core.call_between_steps(lambda: fn(core.manager), timeout=TASK_WAIT)
        if self._task_manager is None:
            self._task_manager = SupRsyncFilesManager(self.config.db_path)
        return fn(self._task_manager)

    @ocs_agent.param("paths", default=None, type=list)
    def retry_failed(self, session: Any, params: dict) -> tuple[bool, str]:
        """retry_failed(paths=None)

        **Task** - Reset the failed attempts of files that reached --max-copy-attempts,
        so they are copied again. ``paths``: only these local paths (default: all).
        """
        count = self._call(lambda m: maintenance.retry_failed(
            m, self.config.archive_name, self.config.max_copy_attempts, params["paths"]))
        session.data = {"reset": count, "timestamp": time.time()}
        return True, f"Reset the failed attempts of {count} file(s)"

    @ocs_agent.param("paths", type=list)
    @ocs_agent.param("ignore", default=True, type=bool)
    def set_ignore(self, session: Any, params: dict) -> tuple[bool, str]:
        """set_ignore(paths, ignore=True)

        **Task** - Mark these local paths ignored (or, with ignore=False, not ignored).
        """
        count = self._call(lambda m: maintenance.set_ignore(
            m, params["paths"], params["ignore"], self.config.archive_name))
        session.data = {"changed": count, "ignore": params["ignore"],
                        "timestamp": time.time()}
        return True, f"Set ignore={params['ignore']} on {count} file(s)"

    @ocs_agent.param("paths", type=list)
    def recheck(self, session: Any, params: dict) -> tuple[bool, str]:
        """recheck(paths)

        **Task** - Re-hash these local files and queue them to be copied and verified again.
        """
        report = self._call(lambda m: maintenance.recheck(m, params["paths"],
                                                          self.config.archive_name))
        session.data = {"queued": report.queued, "changed": report.changed,
                        "conflicts": report.conflicts,
                        "not_found": report.not_found, "gone": report.gone,
                        "timestamp": time.time()}
        return True, f"Queued {len(report.queued)} file(s) for re-verification"

    def rebuild_timecode_dirs(self, session: Any, params: dict | None = None) -> tuple[bool, str]:
        """rebuild_timecode_dirs()

        **Task** - Create the timecode-dir rows of every file of the archive.
        """
        created = self._call(lambda m: m.create_all_timecode_dirs(self.config.archive_name))
        session.data = {"created": created, "timestamp": time.time()}
        return True, f"Created {created} timecode dir(s)"


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The agent's arguments (the site config's --instance-id is added by OCS)."""
    parser = parser or argparse.ArgumentParser()
    add_run_arguments(parser, instance_id=False)
    return parser


def _main(agent_class: str, args: list[str] | None = None) -> None:
    parser = make_parser()
    ns = site_config.parse_args(agent_class, parser=parser, args=args)
    txaio.start_logging(level=os.environ.get("LOGLEVEL", "info"))
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(ns)
        check_environment(config)
    except ConfigError as exc:
        raise SystemExit(f"suprsync ({agent_class}): error: {exc}") from None
    metrics = None
    if ns.metrics_port is not None:
        from .metrics import MetricsServer

        try:
            metrics = MetricsServer(ns.metrics_port, ns.metrics_host)
        except OSError as exc:
            raise SystemExit(f"suprsync ({agent_class}): error: cannot serve metrics on "
                             f"{ns.metrics_host}:{ns.metrics_port}: {exc.strerror or exc}") \
                from None
    agent, runner = ocs_agent.init_site_agent(ns)
    suprsync = SupRsyncAgent(agent, config, metrics)
    agent.register_process("run", suprsync.run, suprsync._stop, startup=True)
    agent.register_task("retry_failed", suprsync.retry_failed)
    agent.register_task("set_ignore", suprsync.set_ignore)
    agent.register_task("recheck", suprsync.recheck)
    agent.register_task("rebuild_timecode_dirs", suprsync.rebuild_timecode_dirs)
    runner.run(agent, auto_reconnect=True)


def main(args: list[str] | None = None) -> None:
    """Entry point for agent-class ``SupRsync``."""
    _main("SupRsync", args)


def main_unambiguous(args: list[str] | None = None) -> None:
    """Entry point for agent-class ``SuprsyncAgent`` (no clash with socs)."""
    _main("SuprsyncAgent", args)
