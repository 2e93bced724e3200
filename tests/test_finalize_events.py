"""--on-finalize and --on-finalize-url: notices after a finalization file is verified."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import textwrap
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from helpers import Clock, catalog_agent, make_file
from invariants import check_invariants

from suprsync.agent import Agent
from suprsync.catalog.timecode import timecode_at
from suprsync.finalize_events import (
    MAX_RETRY,
    _is_own,
    advance_marker,
    notice_env,
    notice_fields,
    retry_delay,
)

#: A fixed "now" in the middle of timecode 17000.
NOW = 17000 * 1e5 + 40_000.0

#: Writes its SUPRSYNC_* variables as one JSON line to argv[1]; exits 3 while argv[2]
#: exists; with argv[3], says it started and waits until argv[3] exists.
HOOK = textwrap.dedent("""\
    import json, os, sys, time
    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        print("receiver not ready", file=sys.stderr)
        sys.exit(3)
    if len(sys.argv) > 3:
        with open(sys.argv[3] + ".started", "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(sys.argv[3]):
            time.sleep(0.02)
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({k: v for k, v in os.environ.items()
                            if k.startswith("SUPRSYNC_")}) + "\\n")
""")


def test_retry_delay_doubles_up_to_a_cap() -> None:
    assert [retry_delay(n, 10) for n in (1, 2, 3)] == [10, 20, 40]
    assert retry_delay(50, 10) == MAX_RETRY


def test_notice_fields_and_environment() -> None:
    fields = notice_fields({"timecode": 16999, "archive_name": "smurf", "instance_id": "s1",
                            "num_files": 2, "subdirs": ["crate1", "suprsync"],
                            "finalized_until": 1.5, "unknown": "x"},
                           "16999/suprsync/s1/f.yaml", "/l/f.yaml", "/remote")
    assert "unknown" not in fields
    env = notice_env(fields)
    assert env["SUPRSYNC_TIMECODE"] == "16999"
    assert env["SUPRSYNC_ARCHIVE"] == "smurf"
    assert env["SUPRSYNC_INSTANCE_ID"] == "s1"
    assert env["SUPRSYNC_NUM_FILES"] == "2"
    assert json.loads(env["SUPRSYNC_SUBDIRS"]) == ["crate1", "suprsync"]
    assert env["SUPRSYNC_REMOTE_PATH"] == "16999/suprsync/s1/f.yaml"
    assert env["SUPRSYNC_LOCAL_PATH"] == "/l/f.yaml"
    assert env["SUPRSYNC_DESTINATION"] == "/remote"


@pytest.mark.parametrize(("remote", "own"), [
    ("16999/suprsync/s1/f.yaml", True), ("16999/suprsync/s2/f.yaml", False),
    ("16999/crate/s1/f.yaml", False), ("s1", False), (None, False)])
def test_only_the_instances_own_finalization_files(remote: str | None, own: bool) -> None:
    assert _is_own(remote, "s1") is own


def _agent(tmp_path: Path, clock: Clock, **hooks: object) -> Agent:
    agent = catalog_agent(tmp_path, tmp_path / "catalog.db", "smurf", clock, "s1")
    config = replace(agent.config, **hooks)
    agent.handler.close()
    return Agent(config, manager=agent.manager, clock=clock, monotonic=clock.monotonic)


def _day(agent: Agent, tmp_path: Path, tc: int, name: str = "a.g3") -> None:
    path = make_file(tmp_path / "data", f"{tc}/crate1/{name}", os.urandom(64))
    agent.manager.add_file(str(path), f"{tc}/crate1/{name}", "smurf", timestamp=NOW - 1000)


def _hook(tmp_path: Path, *extra: Path) -> tuple[tuple[str, ...], Path]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    out = tmp_path / "notices.jsonl"
    return (sys.executable, str(script), str(out), *map(str, extra)), out


def _lines(path: Path, n: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{n} notices expected in {path}")


def _check(tmp_path: Path) -> None:
    check_invariants(tmp_path / "catalog.db", {"smurf": tmp_path / "remote" / "smurf"},
                     file_root=tmp_path / "suprsync-files")


def _run_ended(agent: Agent) -> None:
    """End a run as `run` does (deliver what is due, record it, release)."""
    agent._finish_notices()
    agent.handler.close()


def test_hook_gets_the_fields_after_the_file_is_verified(tmp_path: Path) -> None:
    """The program runs once per finalized dir, after its file is verified remotely."""
    clock = Clock(NOW)
    tc = timecode_at(NOW)
    command, out = _hook(tmp_path)
    agent = _agent(tmp_path, clock, on_finalize=command)
    agent.iterate()  # first use: nothing finalized yet, the marker starts here
    _day(agent, tmp_path, tc - 1)
    _day(agent, tmp_path, tc)

    assert agent.iterate()
    [notice] = _lines(out, 1)
    remote = tmp_path / "remote" / "smurf" / notice["SUPRSYNC_REMOTE_PATH"]
    written = yaml.safe_load(remote.read_text())
    assert notice["SUPRSYNC_TIMECODE"] == str(tc - 1) == str(written["timecode"])
    assert notice["SUPRSYNC_ARCHIVE"] == "smurf"
    assert notice["SUPRSYNC_INSTANCE_ID"] == "s1"
    assert json.loads(notice["SUPRSYNC_SUBDIRS"]) == written["subdirs"]
    assert notice["SUPRSYNC_FINALIZED_UNTIL"] == str(written["finalized_until"])

    assert agent.iterate() and agent.iterate()
    _run_ended(agent)
    assert len(_lines(out, 1)) == 1, "one notice per dir, not one per iteration"
    assert agent.session.snapshot()["on_finalize"]["delivered"] == 1
    _check(tmp_path)


def test_failing_hook_is_retried_and_never_blocks_the_loop(tmp_path: Path) -> None:
    clock = Clock(NOW)
    tc = timecode_at(NOW)
    refuse, release = tmp_path / "refuse", tmp_path / "release"
    refuse.touch()
    command, out = _hook(tmp_path, refuse, release)
    agent = _agent(tmp_path, clock, on_finalize=command)
    agent.notices.settings = replace(agent.notices.settings, first_retry=0.05)
    agent.iterate()
    _day(agent, tmp_path, tc - 2)
    _day(agent, tmp_path, tc - 1)
    _day(agent, tmp_path, tc)

    assert agent.iterate()
    deadline = time.monotonic() + 20
    while agent.notices.as_dict()["failures"]["command"] < 2:
        assert time.monotonic() < deadline, agent.notices.as_dict()
        time.sleep(0.05)
    assert "exit 3: receiver not ready" in agent.notices.as_dict()["last_error"]
    refuse.unlink()  # the hook now hangs until `release` exists
    started = tmp_path / "release.started"
    while not started.exists():
        assert time.monotonic() < deadline, agent.notices.as_dict()
        time.sleep(0.05)
    # The copy loop goes on while the hook hangs: new files are shipped.
    _day(agent, tmp_path, tc, "b.g3")
    assert agent.iterate()
    assert (tmp_path / "remote" / "smurf" / f"{tc}/crate1/b.g3").exists()
    assert not out.exists()
    release.touch()
    notices = _lines(out, 2)
    assert sorted(n["SUPRSYNC_TIMECODE"] for n in notices) == [str(tc - 2), str(tc - 1)]
    assert agent.iterate()
    _run_ended(agent)
    counts = agent.session.snapshot()["on_finalize"]
    assert counts["delivered"] == 2 and counts["pending"] == 0
    _check(tmp_path)


def test_undelivered_notice_is_delivered_by_the_next_run_and_history_is_not_replayed(
        tmp_path: Path) -> None:
    clock = Clock(NOW)
    tc = timecode_at(NOW)
    # A dir finalized before any hook was configured: never notified.
    plain = _agent(tmp_path, clock)
    _day(plain, tmp_path, tc - 3)
    _day(plain, tmp_path, tc)
    assert plain.iterate()
    plain.handler.close()

    refuse = tmp_path / "refuse"
    refuse.touch()
    command, out = _hook(tmp_path, refuse)
    first = _agent(tmp_path, clock, on_finalize=command)
    first.iterate()
    _day(first, tmp_path, tc - 1)
    assert first.iterate()
    _run_ended(first)  # the hook refused: nothing recorded as delivered
    assert first.notices.as_dict()["pending"] == 1
    assert not out.exists()

    refuse.unlink()
    second = _agent(tmp_path, clock, on_finalize=command)
    assert second.iterate()
    _run_ended(second)
    assert [n["SUPRSYNC_TIMECODE"] for n in _lines(out, 1)] == [str(tc - 1)]
    third = _agent(tmp_path, clock, on_finalize=command)
    assert third.iterate()
    _run_ended(third)
    assert len(_lines(out, 1)) == 1, "a delivered notice is not sent again"
    _check(tmp_path)


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    status = 500

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        type(self).bodies.append({"type": self.headers["Content-Type"],
                                  "body": json.loads(self.rfile.read(length))})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_url_gets_the_fields_as_json_and_a_refusal_is_retried(tmp_path: Path) -> None:
    _Receiver.bodies, _Receiver.status = [], 503
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clock = Clock(NOW)
        tc = timecode_at(NOW)
        agent = _agent(tmp_path, clock,
                       on_finalize_url=f"http://127.0.0.1:{server.server_port}/done")
        agent.notices.settings = replace(agent.notices.settings, first_retry=0.05)
        agent.iterate()
        _day(agent, tmp_path, tc - 1)
        _day(agent, tmp_path, tc)
        assert agent.iterate()
        deadline = time.monotonic() + 20
        while agent.notices.as_dict()["failures"]["url"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "HTTP 503" in agent.notices.as_dict()["last_error"]
        _Receiver.status = 204
        while agent.notices.as_dict()["delivered"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _run_ended(agent)
    finally:
        server.shutdown()
        server.server_close()
    last = _Receiver.bodies[-1]
    assert last["type"] == "application/json"
    assert last["body"]["timecode"] == tc - 1
    assert last["body"]["archive_name"] == "smurf"
    assert last["body"]["remote_path"].startswith(f"{tc}/suprsync/s1/")
    _check(tmp_path)


@pytest.mark.parametrize(("flags", "message"), [
    (["--on-finalize-url", "ftp://host/x"], "must be an http:// or https:// URL"),
    (["--on-finalize-url", "http:///x"], "must be an http:// or https:// URL"),
    (["--on-finalize"], "expected at least one argument"),
])
def test_bad_hook_flags_are_refused(tmp_path: Path, flags: list[str], message: str) -> None:
    result = run_cli("run", "--once", "--archive-name", "a", "--remote-basedir",
                     str(tmp_path / "r"), "--db", str(tmp_path / "c.db"),
                     "--suprsync-file-root", str(tmp_path / "f"), *flags)
    assert result.returncode != 0
    assert message in result.stderr


def test_ocs_agent_arguments_take_the_hook_flags(tmp_path: Path) -> None:
    from suprsync.ocs_agent import make_parser
    from suprsync.options import config_from_args

    ns = make_parser().parse_args([
        "--archive-name", "smurf", "--remote-basedir", str(tmp_path / "remote"),
        "--db-path", str(tmp_path / "c.db"), "--suprsync-file-root", str(tmp_path / "srf"),
        "--on-finalize-url", "https://packager.example/done",
        "--on-finalize", "/usr/local/bin/notify", "day done"])
    config = config_from_args(ns)
    assert config.on_finalize == ("/usr/local/bin/notify", "day done")
    assert config.on_finalize_url == "https://packager.example/done"


@pytest.mark.parametrize(("marker", "settled", "unsettled", "moved", "rest"), [
    (5, {6, 7}, set(), 7, set()),
    (5, {6, 8}, {7}, 6, {8}),
    (5, {8}, {6}, 5, {8}),
    (5, set(), {6}, 5, set()),
    (9, {10, 11, 12}, {20}, 12, set()),
])
def test_marker_moves_over_settled_ids_below_every_unsettled_one(
        marker: int, settled: set[int], unsettled: set[int], moved: int,
        rest: set[int]) -> None:
    assert advance_marker(marker, settled, unsettled) == (moved, rest)


def test_further_finalization_file_is_announced_and_other_instances_are_not(
        tmp_path: Path) -> None:
    """A late file's further finalization file gets its own notice ("further"); a dir
    finalized by another instance of the archive gets none and holds nothing back."""
    clock = Clock(NOW)
    tc = timecode_at(NOW)
    command, out = _hook(tmp_path)
    agent = _agent(tmp_path, clock, on_finalize=command)
    agent.iterate()
    other = catalog_agent(tmp_path, tmp_path / "catalog.db", "smurf", clock, "s2")
    _day(other, tmp_path, tc - 2)
    _day(other, tmp_path, tc)
    assert other.iterate()  # s2 finalizes tc - 2
    other.handler.close()
    _day(agent, tmp_path, tc - 1)
    assert agent.iterate()  # s1 finalizes tc - 1
    [first] = _lines(out, 1)
    assert (first["SUPRSYNC_TIMECODE"], first["SUPRSYNC_FINALIZATION"]) == (
        str(tc - 1), "first")
    _day(agent, tmp_path, tc - 1, "late.g3")
    clock.advance(5)  # the further file's name holds another second
    assert agent.iterate() and agent.iterate()
    notices = _lines(out, 2)
    assert (notices[1]["SUPRSYNC_TIMECODE"], notices[1]["SUPRSYNC_FINALIZATION"]) == (
        str(tc - 1), "further")
    assert notices[1]["SUPRSYNC_REMOTE_PATH"] != first["SUPRSYNC_REMOTE_PATH"]
    _run_ended(agent)
    assert len(_lines(out, 2)) == 2
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        marker = conn.execute("SELECT value FROM suprsync_meta_v0 WHERE key = "
                              "'finalize_notified:smurf:s1'").fetchone()[0]
        newest = conn.execute("SELECT max(file_id) FROM suprsync_supplements_v0").fetchone()[0]
    assert int(marker) == newest, "the marker went past the other instance's file"
    _check(tmp_path)


def test_a_hanging_hook_is_killed_when_the_agent_stops_and_redone_next_run(
        tmp_path: Path) -> None:
    clock = Clock(NOW)
    tc = timecode_at(NOW)
    release = tmp_path / "release"
    command, out = _hook(tmp_path, tmp_path / "never", release)
    agent = _agent(tmp_path, clock, on_finalize=command)
    agent.iterate()
    _day(agent, tmp_path, tc - 1)
    _day(agent, tmp_path, tc)
    assert agent.iterate()
    started = tmp_path / "release.started"
    deadline = time.monotonic() + 20
    while not started.exists() or not started.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(started.read_text())
    agent.stop()
    begun = time.monotonic()
    _run_ended(agent)
    assert time.monotonic() - begun < 10, "stop waits for no hook"
    while True:  # killed (a zombie until its parent reaps it counts as gone)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        assert time.monotonic() < deadline + 10, "the hook still runs"
        time.sleep(0.05)
    assert agent.notices.as_dict()["pending"] == 1 and not out.exists()

    release.touch()
    again = _agent(tmp_path, clock, on_finalize=command)
    assert again.iterate()
    _run_ended(again)
    assert [n["SUPRSYNC_TIMECODE"] for n in _lines(out, 1)] == [str(tc - 1)]
    _check(tmp_path)
