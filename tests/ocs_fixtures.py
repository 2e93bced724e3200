"""A real crossbar router and real OCS agent processes, for the OCS integration test.

The router gets a config in the form ``ocs/support/crossbar_config.json`` has (a
realm, an ``observatory.`` URI prefix, a web transport with a ``ws`` websocket path
and a ``call`` HTTP caller path) and listens on 127.0.0.1 at a free port. Agents
are started exactly as at the observatory: ``ocs-agent-cli --site-file ...
--site-host ... --instance-id ...``.

While the router or an agent is alive its log file is listed in LOGS;
running_router() registers a small pytest plugin that attaches the tail of
every listed log to the report of any test that fails meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import free_port, port_accepts

REALM = "test_realm"
ADDRESS_ROOT = "observatory"
ROUTER_START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
#: ocs-agent-cli of the interpreter running the tests (the project's .venv).
OCS_AGENT_CLI = str(Path(sys.executable).parent / "ocs-agent-cli")


#: Log files of the live router and agents, by name; attached to failing tests' reports.
LOGS: dict[str, Path] = {}


class AttachLogs:
    """pytest plugin: attach the live router and agent logs to failing test reports."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo) -> Iterator[None]:
        outcome = yield
        report = outcome.get_result()
        if report.failed:
            for name, path in list(LOGS.items()):
                report.sections.append((f"log of {name} ({path})", tail(path)))


def tail(path: Path, lines: int = 80) -> str:
    """The last lines of a log file (or a note that it does not exist)."""
    if not path.exists():
        return f"<{path} does not exist>"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _wait_or_kill(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int | None:
    """Wait for a process started in its own session; SIGKILL its group after timeout.

    Returns its exit code, or None when it had to be killed.
    """
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:  # the group of the process this module started, and nothing else
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=STOP_TIMEOUT)
    return None


def _stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT) -> int | None:
    """Send sig, wait, SIGKILL if needed; the exit code or None when killed."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return _wait_or_kill(proc)


def crossbar_config(port: int) -> dict:
    """Router config: one realm, anonymous access to ``observatory.*``, /ws and /call."""
    permission = {
        "uri": f"{ADDRESS_ROOT}.",
        "match": "prefix",
        "allow": {"call": True, "register": True, "publish": True, "subscribe": True},
        "disclose": {"caller": False, "publisher": False},
        "cache": True,
    }
    return {
        "version": 2,
        "controller": {},
        "workers": [{
            "type": "router",
            "realms": [{
                "name": REALM,
                "roles": [{"name": "anonymous", "permissions": [permission]}],
            }],
            "transports": [{
                "type": "web",
                "endpoint": {"type": "tcp", "interface": "127.0.0.1", "port": port},
                "paths": {
                    "ws": {
                        "type": "websocket",
                        "auth": {"anonymous": {"type": "static", "role": "anonymous"}},
                    },
                    "call": {"type": "caller", "realm": REALM, "role": "anonymous"},
                },
            }],
        }],
    }


@dataclass
class Router:
    """A crossbar router running as a subprocess."""

    binary: Path
    cbdir: Path
    port: int
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def ws_url(self) -> str:
        """The websocket address agents connect to (site config ``wamp_server``)."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The HTTP caller address clients use (site config ``wamp_http``)."""
        return f"http://127.0.0.1:{self.port}/call"

    def start(self) -> None:
        """Write config.json, start ``crossbar start``, wait until the port accepts."""
        self.cbdir.mkdir(parents=True, exist_ok=True)
        (self.cbdir / "config.json").write_text(json.dumps(crossbar_config(self.port), indent=2))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [os.path.abspath(self.binary), "start", "--cbdir", str(self.cbdir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.cbdir, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + ROUTER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if port_accepts("127.0.0.1", self.port) and self.answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"crossbar did not accept connections on 127.0.0.1:{self.port} "
                           f"within {ROUTER_START_TIMEOUT:.0f} s; log {self.log}:\n"
                           f"{tail(self.log)}")

    def answers(self) -> bool:
        """True once the HTTP caller path answers a WAMP call (with any WAMP error)."""
        body = json.dumps({"procedure": f"{ADDRESS_ROOT}.nobody", "args": []}).encode()
        request = urllib.request.Request(self.http_url, data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return "error" in json.loads(reply.read())
        except (OSError, ValueError):
            return False

    def stop(self) -> int | None:
        """Stop the router (SIGINT, then SIGKILL of its process group)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        return _stop_process(proc, signal.SIGINT)


@contextlib.contextmanager
def running_router(crossbar_bin: Path, base: Path, config: pytest.Config) -> Iterator[Router]:
    """A real crossbar router on 127.0.0.1 at a free port, its files under base.

    Meant for a fixture: while it runs, failing tests get the logs in LOGS attached.
    """
    router = Router(binary=crossbar_bin, cbdir=base / "cbdir", port=0,
                    log=base / "crossbar.log")
    plugin = AttachLogs()
    config.pluginmanager.register(plugin)
    LOGS["crossbar"] = router.log
    try:
        for attempt in range(3):
            router.port = free_port()
            try:
                router.start()
                break
            except RuntimeError:  # once more if another program took the port meanwhile
                if attempt == 2 or "Address already in use" not in tail(router.log):
                    raise
        yield router
    finally:
        router.stop()
        LOGS.pop("crossbar", None)
        config.pluginmanager.unregister(plugin)


@dataclass
class AgentProcess:
    """One OCS agent started by ``ocs-agent-cli`` from a site config."""

    instance_id: str
    site_file: Path
    site_host: str
    config_dir: Path
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    interrupted: bool = False

    @property
    def site_args(self) -> list[str]:
        """The ``--site-*`` arguments a client of this site needs."""
        return ["--site-file", str(self.site_file), "--site-host", self.site_host]

    def start(self) -> None:
        """Start the agent; its stdout and stderr go to self.log."""
        env = {**os.environ, "OCS_CONFIG_DIR": str(self.config_dir), "PYTHONUNBUFFERED": "1"}
        for var in ("INSTANCE_ID", "SITE_HOST", "SITE_HUB", "SITE_HTTP", "CROSSBAR_TIMEOUT"):
            env.pop(var, None)  # ocs-agent-cli would take these over the site config
        LOGS[self.instance_id] = self.log
        self.interrupted = False
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [OCS_AGENT_CLI, *self.site_args, "--instance-id", self.instance_id],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.config_dir, env=env, start_new_session=True)

    def running(self) -> bool:
        """True while the subprocess has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        """Send SIGINT, which is how OCS agents are stopped (see stop())."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.interrupted = True

    def stop(self) -> int | None:
        """SIGINT unless interrupt() was called, wait; SIGKILL if it does not exit.

        Returns the exit code, or None when it had to be killed. OCS agents take
        about 3 s to exit: interrupt() several before stopping them.
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if not self.interrupted and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = _wait_or_kill(proc)
        LOGS.pop(self.instance_id, None)
        return code
