"""`suprsync run --metrics-port`: Prometheus metrics and /status of a real running agent.

Every test starts the real `suprsync` command and reads its HTTP endpoints with urllib.
rsync is the real one; a small wrapper in front of it on PATH counts the calls the agent
makes, so the transfer-duration histogram can be checked against them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SUPRSYNC, SshServer, free_port, run_cli
from prometheus_client.parser import text_string_to_metric_families

from suprsync import SupRsyncFilesManager

ARCHIVE = "timestreams"
SESSION_KEYS = {"activity", "timestamp", "last_copy", "archive_stats", "counters"}
COUNTER_KEYS = {"iterations", "copies", "errors_timeout", "errors_nonzero", "errors_sqlite"}
STATS_KEYS = {"finalized_until", "num_files", "uncopied_files", "last_file_added",
              "last_file_copied"}
#: Every metric family the agent exports and its type, as the parser names them (counters
#: without _total). prometheus-client adds a `<family>_created` gauge to its own counters and
#: histogram; those are left out here.
FAMILIES = {
    "suprsync_iterations": "counter",
    "suprsync_copies": "counter",
    "suprsync_errors_timeout": "counter",
    "suprsync_errors_nonzero": "counter",
    "suprsync_errors_sqlite": "counter",
    "suprsync_files_copied": "counter",
    "suprsync_bytes_copied": "counter",
    "suprsync_verification_failures": "counter",
    "suprsync_backlog_files": "gauge",
    "suprsync_finalized_until_lag_seconds": "gauge",
    "suprsync_registered_files": "gauge",
    "suprsync_conflicts": "gauge",
    "suprsync_last_iteration_timestamp_seconds": "gauge",
    "suprsync_degraded": "gauge",
    "suprsync_future_timecode_dirs": "gauge",
    "suprsync_late_files": "counter",
    "suprsync_late_files_undescribed": "gauge",
    "suprsync_clock_in_doubt": "gauge",
    "suprsync_deleted_bytes": "counter",
    "suprsync_deleted_for_space_files": "counter",
    "suprsync_free_bytes": "gauge",
    "suprsync_min_free_bytes": "gauge",
    "suprsync_disk_pressure": "gauge",
    "suprsync_finalize_notices": "counter",
    "suprsync_finalize_notice_failures": "counter",
    "suprsync_finalize_notices_pending": "gauge",
    "suprsync_transfer_duration_seconds": "histogram",
}
#: Exported only by an agent with further destinations.
DESTINATION_FAMILIES = {
    "suprsync_destination_files": "gauge",
    "suprsync_destination_errors": "counter",
    "suprsync_destination_copies": "counter",
    "suprsync_destination_backoff_seconds": "gauge",
}
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
ALERTS = REPO / "docs" / "alerts.yml"
MONITORING = REPO / "docs" / "monitoring.md"
WAIT = 60.0
METRIC_NAME = re.compile(r"\bsuprsync_[a-z0-9_]*[a-z0-9]")

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Scrape:
    """One /metrics answer: sample values by (name, labels), and the family types."""

    values: dict[Key, float]
    types: dict[str, str]

    def get(self, name: str, **labels: str) -> float:
        return self.values[(name, tuple(sorted(labels.items())))]

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def monotonic_keys(self) -> set[Key]:
        """Samples that may only grow: counters and the histogram's buckets, count and sum."""
        keys = set()
        for key in self.values:
            name = key[0]
            for family, kind in self.types.items():
                if kind == "counter" and name == family + "_total":
                    keys.add(key)
                if kind == "histogram" and name in (family + "_bucket", family + "_count",
                                                     family + "_sum"):
                    keys.add(key)
        return keys


def http_get(port: int, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.status, reply.headers.get_content_type(), reply.read().decode()


def scrape(port: int) -> Scrape:
    status, _, text = http_get(port, "/metrics")
    assert status == 200
    values: dict[Key, float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(values, types)


@dataclass
class RunningAgent:
    """A `suprsync run` process with its metrics port, log and rsync-call log."""

    proc: subprocess.Popen[bytes]
    port: int
    err: Path
    rsync_log: Path
    scrapes: list[Scrape] = field(default_factory=list)

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def rsync_calls(self) -> int:
        return len(self.rsync_log.read_text().splitlines()) if self.rsync_log.exists() else 0

    def scrape(self) -> Scrape:
        assert self.proc.poll() is None, "agent exited:\n" + self.log()
        result = scrape(self.port)
        self.scrapes.append(result)
        return result

    def scrape_until(self, what: str, done: Callable[[Scrape], bool],
                     timeout: float = WAIT) -> Scrape:
        """Scrape every 0.1 s until done(scrape); fail after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.scrape()
            if done(result):
                return result
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + self.log()
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def rsync_wrapper(folder: Path, log: Path) -> Path:
    """A directory holding `rsync`: logs each transfer call, then runs the real rsync.

    The agent's start-up check (`rsync --chmod=... --version`) is not a transfer.
    """
    real = shutil.which("rsync")
    assert real is not None, "rsync is not installed"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "rsync"
    script.write_text(f'#!/bin/sh\ncase " $* " in *" --version "*) ;; '
                      f'*) echo call >> "{log}" ;; esac\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    return folder


def launch(folder: Path, db: Path, remote: str, *extra: str) -> RunningAgent:
    """Start `suprsync run --metrics-port` (files in folder) and wait until /metrics answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    err = folder / "agent.err"
    rsync_log = folder / "rsync-calls"
    bindir = rsync_wrapper(folder / "bin", rsync_log)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [SUPRSYNC, "run", "--archive-name", ARCHIVE, "--remote-basedir", remote,
            "--db-path", str(db), "--suprsync-file-root", str(folder / "srfroot"),
            "--sleep-time", "0.5", "--metrics-port", str(port), *extra]
    with err.open("wb") as err_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err_file, env=env)
    agent = RunningAgent(proc, port, err, rsync_log)
    deadline = time.monotonic() + WAIT
    while True:
        if proc.poll() is not None:
            raise AssertionError("agent exited:\n" + agent.log())
        try:
            http_get(port, "/metrics")
            return agent
        except OSError:
            if time.monotonic() > deadline:
                agent.proc.kill()
                agent.proc.wait()
                raise AssertionError("/metrics never answered\n" + agent.log()) from None
            time.sleep(0.05)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """launch() for one test; agents still running at the end are killed."""
    started: list[RunningAgent] = []

    def start(db: Path, remote: str, *extra: str) -> RunningAgent:
        agent = launch(tmp_path / f"agent{len(started)}", db, remote, *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def register_round(manager: SupRsyncFilesManager, folder: Path, timecode: int, round_no: int,
                   count: int) -> int:
    """Register count new files; return their total size."""
    total = 0
    for i in range(count):
        size = 1000 + 4099 * i + 517 * round_no
        path = folder / f"r{round_no}" / f"f{i:03d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        manager.add_file(path, f"{timecode}/r{round_no}/{path.name}", ARCHIVE)
        total += size
    return total


def assert_monotonic(scrapes: list[Scrape]) -> None:
    for earlier, later in zip(scrapes, scrapes[1:], strict=False):
        for key in earlier.monotonic_keys():
            assert key in later.values, f"{key} disappeared"
            assert later.values[key] >= earlier.values[key], \
                f"{key} went down: {earlier.values[key]} -> {later.values[key]}"


# ------------------------------------------------------------------- files flowing


@pytest.mark.parametrize("destination", ["local", "ssh"])
def test_metrics_follow_files_registered_while_the_agent_runs(
        destination: str, request: pytest.FixtureRequest, start_agent, tmp_path: Path,
        tmp_catalog: Path) -> None:
    manager = SupRsyncFilesManager(str(tmp_catalog))
    remote = tmp_path / "remote"
    extra: list[str] = []
    if destination == "ssh":
        server: SshServer = request.getfixturevalue("sshd")
        extra = server.agent_flags()
    started = time.time()
    agent = start_agent(tmp_catalog, str(remote), *extra)
    # A fixed timecode: its directory stays open, so no finalization file joins the flow.
    timecode = int(started // 100_000)

    files = size = 0
    for round_no, count in enumerate((4, 7, 3)):
        size += register_round(manager, tmp_path / "local", timecode, round_no, count)
        files += count
        reached = agent.scrape_until(
            f"round {round_no} to be copied",
            lambda s, n=files: s.get("suprsync_files_copied_total") >= n)
        # Exactly what was registered so far: nothing is counted twice.
        assert reached.get("suprsync_files_copied_total") == files
        assert reached.get("suprsync_bytes_copied_total") == size

    # Once a later iteration has started, the copy step of the last one is fully counted.
    iterations = reached.get("suprsync_iterations_total")
    final = agent.scrape_until("one more iteration",
                               lambda s: s.get("suprsync_iterations_total") > iterations)
    assert final.get("suprsync_files_copied_total") == files
    assert final.get("suprsync_bytes_copied_total") == size
    assert final.get("suprsync_copies_total") == files
    assert final.get("suprsync_verification_failures_total") == 0
    for error in ("timeout", "nonzero", "sqlite"):
        assert final.get(f"suprsync_errors_{error}_total") == 0
    assert final.get("suprsync_backlog_files", archive=ARCHIVE) == 0
    assert final.get("suprsync_registered_files", archive=ARCHIVE) == files
    assert final.get("suprsync_finalized_until_lag_seconds", archive=ARCHIVE) >= 0
    assert final.get("suprsync_last_iteration_timestamp_seconds") >= started
    rsync_calls = agent.rsync_calls()
    assert rsync_calls > 0
    assert final.get("suprsync_transfer_duration_seconds_count") == rsync_calls
    assert final.get("suprsync_transfer_duration_seconds_bucket", le="+Inf") == rsync_calls
    assert final.get("suprsync_transfer_duration_seconds_sum") > 0

    assert len(agent.scrapes) >= 4
    assert_monotonic(agent.scrapes)
    # Scrapes from before the agent was attached to the server have no session metrics.
    assert final.get("suprsync_degraded") == 0
    assert all(s.values.get(("suprsync_degraded", ()), 0.0) == 0 for s in agent.scrapes)
    assert {n: k for n, k in final.types.items() if not n.endswith("_created")} == FAMILIES
    copies = sorted((remote / str(timecode)).rglob("*.dat"))
    assert len(copies) == files
    for path in copies:
        assert path.read_bytes() == (tmp_path / "local" / path.relative_to(
            remote / str(timecode))).read_bytes()

    assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()


# ------------------------------------------------------------ one agent, several checks


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """A running agent that has copied two files, so every metric has samples."""
    tmp = tmp_path_factory.mktemp("served")
    db = tmp / "catalog" / "suprsync.db"
    manager = SupRsyncFilesManager(str(db))
    register_round(manager, tmp / "local", int(time.time() // 100_000), 0, 2)
    # A deletion rule that deletes nothing yet, so the retention metrics have samples.
    agent = launch(tmp / "agent", db, str(tmp / "remote"), "--delete-local-after", "1e9")
    try:
        copied = agent.scrape_until("two files copied",
                                    lambda s: s.get("suprsync_files_copied_total") == 2)
        iterations = copied.get("suprsync_iterations_total")
        agent.scrape_until("one more iteration",
                           lambda s: s.get("suprsync_iterations_total") > iterations)
        yield agent
        assert agent.stop() == 0, agent.log()
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def test_status_page_has_the_session_data_keys_and_degraded(served: RunningAgent) -> None:
    status, content_type, body = http_get(served.port, "/status")
    assert status == 200
    assert content_type == "application/json"
    data = json.loads(body)
    assert set(data) == SESSION_KEYS | {"degraded", "anomalies"}
    assert data["degraded"] is False
    assert data["anomalies"] == {"future_timecode_dirs": [], "late_files": [],
                                 "late_files_found": 0, "clock_in_doubt": False}
    assert set(data["counters"]) == COUNTER_KEYS
    assert data["counters"]["copies"] == 2
    assert data["counters"]["iterations"] >= 2
    assert data["activity"] in {"idle", "copying", "deleting"}
    assert set(data["archive_stats"]) == {ARCHIVE}
    stats = data["archive_stats"][ARCHIVE]
    assert set(stats) == STATS_KEYS
    assert (stats["num_files"], stats["uncopied_files"]) == (2, 0)
    # The same numbers as /metrics.
    metrics = served.scrape()
    assert metrics.get("suprsync_copies_total") == data["counters"]["copies"]
    assert metrics.get("suprsync_registered_files", archive=ARCHIVE) == stats["num_files"]


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on TCP port (IPv4 and IPv6), from /proc."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host byte order.
                words = [raw[i:i + 4][::-1] if sys.byteorder == "little" else raw[i:i + 4]
                         for i in range(0, len(raw), 4)]
                family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                found.append(socket.inet_ntop(family, b"".join(words)))
    return found


def test_metrics_listen_on_loopback_only_by_default(served: RunningAgent) -> None:
    assert listening_addresses(served.port) == ["127.0.0.1"]


def test_metrics_port_in_use_is_a_one_line_error(tmp_path: Path, tmp_catalog: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--archive-name", ARCHIVE, "--remote-basedir",
                         str(tmp_path / "remote"), "--db-path", str(tmp_catalog),
                         "--suprsync-file-root", str(tmp_path / "root"),
                         "--metrics-port", str(port), timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"suprsync run: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "remote").exists(), "nothing should have been copied"


# ------------------------------------------------------------------------ the docs


def exprs_of_dashboard(node: object) -> list[str]:
    """Every PromQL string of the dashboard: target expressions and variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict) and "query" in value:
                found.append(value["query"])
            elif key == "definition" and isinstance(value, str):
                found.append(value)
            else:
                found += exprs_of_dashboard(value)
    elif isinstance(node, list):
        for item in node:
            found += exprs_of_dashboard(item)
    return found


def test_dashboard_alerts_and_docs_name_only_metrics_a_real_agent_exports(
        served: RunningAgent) -> None:
    exported = served.scrape()
    names = exported.names()

    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["archive"]["type"] == "query"
    dashboard_exprs = exprs_of_dashboard(dashboard)
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]

    rules = yaml.safe_load(ALERTS.read_text())
    rule_list = [rule for group in rules["groups"] for rule in group["rules"]]
    assert rule_list
    for rule in rule_list:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
    alert_exprs = [rule["expr"] for rule in rule_list]

    for where, exprs in (("dashboard", dashboard_exprs), ("alerts", alert_exprs)):
        referenced = {m for e in exprs for m in METRIC_NAME.findall(e)}
        assert referenced, where
        assert referenced <= names, f"{where} names unknown metrics: {referenced - names}"
    # Each panel-worthy family is on the dashboard.
    used = {m for e in dashboard_exprs for m in METRIC_NAME.findall(e)}
    for family in set(FAMILIES) - {"suprsync_iterations", "suprsync_copies",
                                   "suprsync_registered_files"}:
        assert any(m.startswith(family) for m in used), f"no panel shows {family}"

    # The monitoring page documents exactly the exported families (the further
    # destinations' below, in test_metrics_report_each_further_destination).
    documented = set(METRIC_NAME.findall(MONITORING.read_text()))
    known = names | set(FAMILIES) | set(DESTINATION_FAMILIES) | {
        f"{f}_total" for f, kind in DESTINATION_FAMILIES.items() if kind == "counter"}
    assert documented <= known, documented - known
    for family, kind in FAMILIES.items():
        shown = family + "_total" if kind == "counter" else family
        assert shown in documented, f"docs/monitoring.md does not describe {shown}"


def test_metrics_report_each_further_destination(start_agent, tmp_path: Path,
                                                 tmp_catalog: Path) -> None:
    manager = SupRsyncFilesManager(str(tmp_catalog))
    timecode = int(time.time() // 100_000)
    register_round(manager, tmp_path / "local", timecode, 0, 3)
    agent = start_agent(tmp_catalog, str(tmp_path / "a"),
                        "--destination-id", f"b={tmp_path / 'b'}")
    verified = ("suprsync_destination_files", (("destination", "b"), ("state", "verified")))
    deadline = time.monotonic() + WAIT
    while True:
        found = scrape(agent.port)
        if found.values.get(verified) == 3:
            break
        assert time.monotonic() < deadline, f"b never reached 3 verified files: {found.values}"
        time.sleep(0.2)
    assert found.values[("suprsync_destination_errors_total", (("destination", "b"),))] == 0
    assert found.values[("suprsync_destination_copies_total", (("destination", "b"),))] == 3
    assert found.values[("suprsync_destination_backoff_seconds",
                         (("destination", "b"),))] == 0
    assert (tmp_path / "b" / str(timecode) / "r0" / "f000.dat").exists()
    # The destination families are exactly these, each one described in the docs.
    assert {family for family, _ in found.types.items()
            if family.startswith("suprsync_destination_")} == set(DESTINATION_FAMILIES)
    for family, kind in DESTINATION_FAMILIES.items():
        assert found.types[family] == kind, family
    documented = set(METRIC_NAME.findall(MONITORING.read_text()))
    for family, kind in DESTINATION_FAMILIES.items():
        shown = family + "_total" if kind == "counter" else family
        assert shown in documented, f"docs/monitoring.md does not describe {shown}"
    manager.close()
