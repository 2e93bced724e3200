"""Prometheus metrics, a JSON /status and the HTML status page of a running agent.

Needs the optional ``metrics`` extra (prometheus-client).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from importlib import resources
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .events import EventLog
from .finalize_events import NoticeCounts
from .pagedata import PageSource, Throughput
from .webpage import render

if TYPE_CHECKING:
    from .agent import Agent
    from .copying import CopyReport

log = logging.getLogger(__name__)

#: Files of the package's static/ folder the server hands out, with their types.
STATIC = {"status.css": "text/css; charset=utf-8"}
#: The only methods served: nothing on the server changes state.
METHODS = ("GET", "HEAD")

#: Buckets of the transfer-duration histogram (seconds).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _SessionCollector:
    """Turns the agent's session data into metrics at each scrape."""

    def __init__(self) -> None:
        self.agent: Agent | None = None

    def collect(self) -> Iterator[Metric]:
        if self.agent is None:
            return
        data = self.agent.session.snapshot()
        for name, value in data["counters"].items():
            metric = CounterMetricFamily(f"suprsync_{name}",
                                         f"Session-data counter '{name}' of the run loop.")
            metric.add_metric([], value)
            yield metric
        now = time.time()
        backlog = GaugeMetricFamily("suprsync_backlog_files",
                                    "Files not yet verified on the remote (not ignored).",
                                    labels=["archive"])
        lag = GaugeMetricFamily("suprsync_finalized_until_lag_seconds",
                                "Seconds between now and finalized_until.", labels=["archive"])
        registered = GaugeMetricFamily("suprsync_registered_files",
                                       "Files registered in the archive.", labels=["archive"])
        for archive, stats in data["archive_stats"].items():
            backlog.add_metric([archive], stats["uncopied_files"])
            lag.add_metric([archive], max(0.0, now - stats["finalized_until"]))
            registered.add_metric([archive], stats["num_files"])
        yield backlog
        yield lag
        yield registered
        conflicts = GaugeMetricFamily(
            "suprsync_conflicts", "Files held back by a conflict until an operator resolves it "
            "(suprsync resolve).", labels=["archive"])
        conflicts.add_metric([self.agent.config.archive_name], self.agent.conflicts)
        yield conflicts
        last = GaugeMetricFamily("suprsync_last_iteration_timestamp_seconds",
                                 "Unix time of the last iteration of the run loop.")
        last.add_metric([], data["timestamp"])
        yield last
        degraded = GaugeMetricFamily("suprsync_degraded",
                                     "1 while the catalog cannot be read or written.")
        degraded.add_metric([], 1.0 if self.agent.session.degraded else 0.0)
        yield degraded
        yield from self._anomalies(self.agent)
        yield from self._retention(self.agent)
        yield from self._notices(self.agent)
        yield from self._destinations(data.get("destinations") or {})

    @staticmethod
    def _destinations(destinations: dict[str, Any]) -> Iterator[Metric]:
        """Per destination (several per archive): files by state, errors and backoff."""
        if not destinations:
            return
        files = GaugeMetricFamily(
            "suprsync_destination_files", "Files at a further destination, by state "
            "(verified, pending, given_up, lost).", labels=["destination", "state"])
        errors = CounterMetricFamily("suprsync_destination_errors",
                                     "Failed copy steps, per destination.",
                                     labels=["destination"])
        copies = CounterMetricFamily("suprsync_destination_copies",
                                     "Files copied, per destination.", labels=["destination"])
        backoff = GaugeMetricFamily("suprsync_destination_backoff_seconds",
                                    "Seconds until a destination that failed is tried again.",
                                    labels=["destination"])
        for name, d in sorted(destinations.items()):
            for state, n in sorted(d.get("files", {}).items()):
                files.add_metric([name, state], n)
            errors.add_metric([name], d["counters"]["errors"])
            copies.add_metric([name], d["counters"]["copies"])
            backoff.add_metric([name], d["backoff"])
        yield files
        yield errors
        yield copies
        yield backoff

    @staticmethod
    def _notices(agent: Agent) -> Iterator[Metric]:
        counts = (agent.notices.as_dict() if agent.notices is not None
                  else NoticeCounts().as_dict())
        delivered = CounterMetricFamily(
            "suprsync_finalize_notices", "Finalization notices delivered (--on-finalize, "
            "--on-finalize-url).")
        delivered.add_metric([], counts["delivered"])
        yield delivered
        failures = CounterMetricFamily(
            "suprsync_finalize_notice_failures", "Failed attempts to deliver a finalization "
            "notice, per target (command, url).", labels=["target"])
        for target, n in sorted(counts["failures"].items()):
            failures.add_metric([target], n)
        yield failures
        pending = GaugeMetricFamily("suprsync_finalize_notices_pending",
                                    "Finalization notices not delivered yet.")
        pending.add_metric([], counts["pending"])
        yield pending

    @staticmethod
    def _retention(agent: Agent) -> Iterator[Metric]:
        state = agent.retention
        policy = agent.config.policy()
        deleted = CounterMetricFamily(
            "suprsync_deleted_bytes", "Bytes of local files deleted, per retention rule "
            "(its match glob).", labels=["rule"])
        counts = dict.fromkeys(r.match for r in policy.rules) if policy else {}
        counts = {rule: 0 for rule in counts} | state.deleted_bytes
        for rule, n in sorted(counts.items()):
            deleted.add_metric([rule], n)
        yield deleted
        early = CounterMetricFamily(
            "suprsync_deleted_for_space_files",
            "Local files deleted before their rule's delay because of --min-free.")
        early.add_metric([], state.deleted_for_space)
        yield early
        free = GaugeMetricFamily("suprsync_free_bytes",
                                 "Free bytes of each file system holding local files.",
                                 labels=["filesystem"])
        wanted = GaugeMetricFamily("suprsync_min_free_bytes",
                                   "Free bytes wanted there (--min-free; 0 without it).",
                                   labels=["filesystem"])
        pressure = GaugeMetricFamily(
            "suprsync_disk_pressure", "1 while a file system stays below --min-free with "
            "only unverified or protected local files left.", labels=["filesystem"])
        short = {fs["path"] for fs in state.short}
        for space in agent.disks.measure().values():
            free.add_metric([space.path], space.free)
            wanted.add_metric([space.path], space.wanted)
            pressure.add_metric([space.path], 1.0 if space.path in short else 0.0)
        yield free
        yield wanted
        yield pressure

    @staticmethod
    def _anomalies(agent: Agent) -> Iterator[Metric]:
        found = agent.anomalies()
        archive = agent.config.archive_name
        future = GaugeMetricFamily(
            "suprsync_future_timecode_dirs",
            "Timecode dirs dated more than a timecode after now's (they complete nothing).",
            labels=["archive"])
        future.add_metric([archive], len(found["future_timecode_dirs"]))
        yield future
        late = CounterMetricFamily(
            "suprsync_late_files",
            "Files found registered into a timecode dir after its finalization file.",
            labels=["archive"])
        late.add_metric([archive], found["late_files_found"])
        yield late
        pending = GaugeMetricFamily(
            "suprsync_late_files_undescribed",
            "Late files that no further finalization file describes yet.", labels=["archive"])
        pending.add_metric([archive], len(found["late_files"]))
        yield pending
        doubt = GaugeMetricFamily(
            "suprsync_clock_in_doubt",
            "1 while the system clock jumped or lies behind registered rows: no dir is "
            "completed by age and no finalization file is written.")
        doubt.add_metric([], 1.0 if found["clock_in_doubt"] else 0.0)
        yield doubt


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("metrics: " + format, *args)


def _reply(start_response, status: str, body: bytes, content_type: str,  # type: ignore[no-untyped-def]
           *headers: tuple[str, str]) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            *headers])
    return [body]


class MetricsServer:
    """Serves the status page at /, /metrics (Prometheus text format) and /status (JSON).

    It listens as soon as it is made (so a busy port is found before anything
    else starts); the agent is attached afterwards with :meth:`attach`.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.agent: Agent | None = None
        self.registry = CollectorRegistry()
        self._collector = _SessionCollector()
        self.registry.register(self._collector)
        self.files_copied = Counter("suprsync_files_copied", "Files copied and verified.",
                                    registry=self.registry)
        self.bytes_copied = Counter("suprsync_bytes_copied", "Bytes copied and verified.",
                                    registry=self.registry)
        self.verify_failures = Counter("suprsync_verification_failures",
                                       "Copies that did not verify (md5 mismatch or missing).",
                                       registry=self.registry)
        self.transfer_seconds = Histogram("suprsync_transfer_duration_seconds",
                                          "Duration of each rsync call.",
                                          buckets=DURATION_BUCKETS, registry=self.registry)
        #: The notable events logged since the server started, for the page.
        self.events = EventLog()
        self.events.install()
        self.throughput = Throughput()
        self.page: PageSource | None = None
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict, start_response):  # type: ignore[no-untyped-def]
            method = environ.get("REQUEST_METHOD")
            if method not in METHODS:
                return _reply(start_response, "405 Method Not Allowed",
                              b"read-only: GET only\n", "text/plain; charset=utf-8",
                              ("Allow", ", ".join(METHODS)))
            body = serve(environ, start_response)
            return [] if method == "HEAD" else body

        def serve(environ: dict, start_response):  # type: ignore[no-untyped-def]
            agent, path = self.agent, environ.get("PATH_INFO")
            if path == "/":
                return self._page(start_response)
            if path and path.startswith("/static/") and path[len("/static/"):] in STATIC:
                name = path[len("/static/"):]
                body = resources.files(__package__).joinpath("static", name).read_bytes()
                return _reply(start_response, "200 OK", body, STATIC[name],
                              ("Cache-Control", "max-age=300"))
            if path == "/status" and agent is not None:
                body = json.dumps({**agent.session.snapshot(),
                                   "degraded": agent.session.degraded,
                                   "anomalies": agent.anomalies()}).encode()
                return _reply(start_response, "200 OK", body, "application/json")
            return metrics_app(environ, start_response)

        server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        self.httpd = make_server(host, port, app, server_class=server_class,
                                 handler_class=_QuietHandler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        log.info("serving the status page on http://%s:%d/, metrics on /metrics and /status",
                 host, self.port)

    def attach(self, agent: Agent) -> None:
        """Publish this agent's session data and count its copy steps."""
        self.agent = agent
        self._collector.agent = agent
        self.page = PageSource(agent, self.events, self.throughput)
        agent.observers.append(self.observe)

    def _page(self, start_response):  # type: ignore[no-untyped-def]
        """The HTML status page (a short note while no agent is attached)."""
        if self.page is None:
            return _reply(start_response, "503 Service Unavailable", b"the agent is starting\n",
                          "text/plain; charset=utf-8", ("Retry-After", "2"))
        body = render(self.page.view()).encode("utf-8", "backslashreplace")
        return _reply(start_response, "200 OK", body, "text/html; charset=utf-8",
                      ("Cache-Control", "no-store"))

    def observe(self, report: CopyReport) -> None:
        """Count what one copy step did."""
        self.files_copied.inc(sum(ok for _, ok in report.files))
        self.bytes_copied.inc(report.bytes_verified)
        self.verify_failures.inc(report.verify_failures)
        self.throughput.add(report)
        for seconds in report.transfer_durations:
            self.transfer_seconds.observe(seconds)

    def close(self) -> None:
        """Stop serving."""
        self.events.remove()
        self.httpd.shutdown()
        self.httpd.server_close()
