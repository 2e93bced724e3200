"""The status page at / of `suprsync run --metrics-port`, down to a real browser.

The end-to-end test starts the real `suprsync run` with files flowing to a local
destination and one failing file (a symbolic link put where a registered file was,
named with markup), loads the page in headless chromium (Debian's package, which
`make test` installs), checks the DOM and saves a screenshot. The smaller tests cover
the pieces: the HTML escaping, the event log, the catalog cache, a missing catalog.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO
from invariants import check_invariants
from test_metrics import ARCHIVE, http_get, launch, listening_addresses

from suprsync import SupRsyncFilesManager, pagedata
from suprsync.agent import Agent
from suprsync.agent_config import AgentConfig
from suprsync.events import MAX_EVENTS, EventLog, event
from suprsync.metrics import MetricsServer
from suprsync.pagedata import CatalogCache, catalog_view
from suprsync.webpage import render

#: A file name with markup in it (a name cannot hold "/").
EVIL = "bad<script>alert(1).dat"
#: Where the screenshot goes (a CI job can keep this folder).
ARTIFACTS = Path(os.environ.get("SUPRSYNC_TEST_ARTIFACTS", REPO / "test-artifacts"))
WAIT = 30.0


class Dom(HTMLParser):
    """The tags of a page, and the text under each element that has an id."""

    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.by_id: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in self.VOID:
            return
        ident = dict(attrs).get("id")
        self._open.append(ident)
        if ident:
            self.by_id[ident] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.by_id[ident] += data

    def text(self, ident: str) -> str:
        return " ".join(self.by_id[ident].split())


def chromium_binary() -> str:
    """Debian's chromium; a missing one fails the test (make test installs it)."""
    found = os.environ.get("SUPRSYNC_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package "
                    "(apt-get install chromium); or set SUPRSYNC_CHROMIUM")
    return found


def chromium(binary: str, profile: Path, url: str, *args: str) -> str:
    """Run headless chromium on url; its stdout."""
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
            *args, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


def register(manager: SupRsyncFilesManager, folder: Path, remote: str, size: int) -> Path:
    path = folder / Path(remote).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    manager.add_file(str(path), remote, ARCHIVE)
    return path


# ------------------------------------------------------------------ the real thing


def test_page_of_a_running_agent_in_headless_chromium(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    browser = chromium_binary()
    db = tmp_path / "catalog" / "suprsync.db"
    local, remote = tmp_path / "local", tmp_path / "remote"
    manager = SupRsyncFilesManager(str(db))
    tc = int(time.time() // 100_000)
    # Yesterday's dir (a newer one exists: it completes and is finalized) and today's.
    for i in range(3):
        register(manager, local / "old", f"{tc - 1}/f{i}.dat", 20_000 + 1000 * i)
    register(manager, local / "new", f"{tc}/g0.dat", 30_000)
    evil = register(manager, local / "new", f"{tc}/{EVIL}", 100)
    evil.unlink()
    evil.symlink_to(local / "new" / "g0.dat")  # a link is never sent: the file fails
    manager.close()

    agent = launch(tmp_path / "agent", db, str(remote))
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                status, content_type, body = http_get(agent.port, "/")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503, exc  # the agent is starting
                body = ""
            page = Dom(body)
            if (page.by_id.get("dirs-finalized") == "1" and page.text("backlog-files") == "1"
                    and "symbolic link" in page.text("failing")):
                break
            assert time.monotonic() < deadline, "the page never showed the state\n" + body
            time.sleep(0.2)
        assert (status, content_type) == (200, "text/html")
        assert listening_addresses(agent.port) == ["127.0.0.1"]
        # Nothing there changes state: every other method is refused.
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/", "/status", "/metrics", "/static/status.css"):
                request = urllib.request.Request(f"http://127.0.0.1:{agent.port}{path}",
                                                 data=b"x", method=method)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=10)
                assert refused.value.code == 405, (method, path)
                assert refused.value.headers["Allow"] == "GET, HEAD"

        head = urllib.request.Request(f"http://127.0.0.1:{agent.port}/", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as reply:
            assert reply.status == 200 and reply.read() == b""
        url = f"http://127.0.0.1:{agent.port}/"
        dom = Dom(chromium(browser, tmp_path / "profile", url, "--dump-dom"))
        assert dom.text("archive") == ARCHIVE
        assert dom.text("destination") == str(remote)
        assert dom.text("backlog-files") == "1"
        assert dom.text("failing-count") == "1"
        assert dom.text("dirs-finalized") == "1" and dom.text("dirs-open") == "1"
        failing = dom.text("failing")
        assert str(evil) in failing
        assert f"{str(evil)!r} is a symbolic link, not a regular file" in failing
        assert "finalized" in dom.text("events") and "copy failed" in dom.text("events")
        # The file name is text in the browser's DOM, never an element.
        assert not [t for t, _ in dom.tags if t == "script"]
        # Every asset comes from the agent itself.
        sheets = [a.get("href") for t, a in dom.tags if t == "link"]
        assert sheets == ["/static/status.css"]
        assert http_get(agent.port, "/static/status.css")[:2] == (200, "text/css")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        chromium(browser, tmp_path / "profile", url, f"--screenshot={shot}",
                 "--window-size=1100,1500")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with capsys.disabled():
            print(f"\nscreenshot of the status page: {shot}")
        assert agent.stop() == 0, agent.log()
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
    check_invariants(db, {ARCHIVE: remote}, file_root=tmp_path / "agent" / "srfroot",
                     absent_ok=[evil])


# ------------------------------------------------------------------------- pieces


def minimal_view(**changes: object) -> dict:
    view: dict = {
        "now": 1_800_000_000.0, "archive": "smurf", "instance_id": "agent-1",
        "destination": "host:/archive", "activity": "idle", "timestamp": 1_800_000_000.0,
        "degraded": False, "counters": {"iterations": 3, "errors_nonzero": 0},
        "stats": {"finalized_until": 1_799_999_000.0, "num_files": 2, "uncopied_files": 1,
                  "last_file_copied": "/data/a.dat"},
        "last_copy": {"start_time": 1.0, "stop_time": 2.0, "files": 1, "verified": 1,
                      "error": None},
        "throughput": {"window": 600.0, "files": 1, "bytes": 10, "busy_seconds": 1.0,
                       "rate": 10.0, "last_verified": {"time": 2.0, "files": 1, "bytes": 10}},
        "max_copy_attempts": 5, "conflicts": 0, "quarantined": [], "quarantined_count": 0,
        "anomalies": {}, "disk_pressure": [], "notices": None, "failing": [], "catalog": None,
        "catalog_error": None, "catalog_age": None, "events": [],
    }
    view.update(changes)
    return view


def test_everything_from_the_catalog_or_the_log_is_text_not_markup() -> None:
    bad = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'
    catalog = {"waiting_bytes": 5, "waiting_scanned": 1, "scan_limit": 2000,
               "failing": [], "failing_found": 0, "timecode_dirs":
               {"open": 1, "completed": 0, "finalized": 0},
               "recent_dirs": [{"timecode": 17000, "completed": False, "finalized": False,
                                "finalized_at": None, "finalization_file": None}],
               "conflicts": [{"local_path": bad, "remote_path": bad, "kind": "collision",
                              "detail": bad, "since": 1.0}]}
    html = render(minimal_view(
        archive=bad, destination=bad, instance_id=bad, catalog=catalog, conflicts=1,
        failing=[{"local_path": bad, "attempts": 2, "reason": bad, "reason_time": 1.0}],
        quarantined=[{"id": 7, "reason": bad}], quarantined_count=1,
        anomalies={"late_files": [{"local_path": bad, "timecode": 1}]},
        events=[{"time": 1.0, "kind": bad, "level": bad, "file": bad, "message": bad,
                 "count": 2}]))
    dom = Dom(html)
    assert [t for t, _ in dom.tags if t in {"script", "img"}] == []
    assert all(not any(k.startswith("on") for k in a) for _, a in dom.tags)
    assert dom.text("archive") == bad
    for section in ("failing", "conflicts-list", "quarantine", "events", "anomalies"):
        assert bad in dom.by_id[section], section
    assert html.count("<script") == 0


def test_the_page_refreshes_itself_and_fits_a_phone() -> None:
    dom = Dom(render(minimal_view()))
    metas = [a for t, a in dom.tags if t == "meta"]
    assert {"http-equiv": "refresh", "content": "10"} in metas
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in metas
    assert "@media (max-width" in (REPO / "src/suprsync/static/status.css").read_text()
    # No figure depends on a script, and no asset comes from elsewhere.
    assert [t for t, _ in dom.tags if t == "script"] == []
    urls = [a.get("href") or a.get("src") for _, a in dom.tags if a.get("href") or a.get("src")]
    assert all(u.startswith("/") for u in urls), urls
    assert dom.text("backlog-files") == "1" and dom.text("registered") == "2"
    assert "could not be read" in dom.text("catalog-error")  # no catalog answer here
    assert "notices-delivered" not in dom.by_id  # no --on-finalize: nothing about notices


def test_finalization_notice_failures_are_shown() -> None:
    dom = Dom(render(minimal_view(notices={"delivered": 3, "pending": 1,
                                           "failures": {"command": 2, "url": 0},
                                           "last_error": "exit status 1 <of hook>"})))
    assert dom.text("notices-delivered") == "3" and dom.text("notices-pending") == "1"
    assert dom.text("notices-failed") == "command 2, url 0"
    assert dom.text("notices-error") == "exit status 1 <of hook>"


def test_event_log_keeps_warnings_marked_events_and_each_files_last_reason() -> None:
    events = EventLog()
    logger = logging.getLogger("suprsync.test_events")
    logger.setLevel(logging.INFO)
    events.install()
    try:
        logger.info("an ordinary line")
        logger.info("finalized dir %s", 1, extra=event("finalized"))
        logger.error("cannot copy %s: %s", "/a", "gone", extra=event("copy failed", "/a"))
        logger.error("cannot copy %s: %s", "/a", "gone", extra=event("copy failed", "/a"))
        logger.warning("something odd")
        found = events.events()
        assert [(e.kind, e.file, e.count) for e in found] == [
            ("warning", None, 1), ("copy failed", "/a", 2), ("finalized", None, 1)]
        reason = events.reason("/a")
        assert reason is not None and reason.message == "cannot copy /a: gone"
        assert events.reason("/b") is None
        for i in range(MAX_EVENTS + 10):
            logger.warning("warning %d", i)
        assert len(events.events()) == MAX_EVENTS
        assert events.events()[0].message == f"warning {MAX_EVENTS + 9}"
    finally:
        events.remove()
    logger.warning("after removal")
    assert events.events()[0].message != "after removal"


def test_a_slow_catalog_does_not_hold_the_page() -> None:
    release = threading.Event()
    calls = []

    def slow() -> dict:
        calls.append(1)
        release.wait(10)
        return {"n": len(calls)}

    cache = CatalogCache(ttl=100.0, wait=0.05)
    data, error, _ = cache.get(slow)
    assert data is None and error is not None and "did not answer" in error
    # A second load while the query runs starts no second query.
    cache.get(slow)
    assert len(calls) == 1
    release.set()
    deadline = time.monotonic() + 10
    while cache.get(slow)[0] is None:
        assert time.monotonic() < deadline
    data, error, age = cache.get(slow)
    assert data == {"n": 1} and error is None and age is not None
    assert len(calls) == 1  # cached


def test_catalog_figures_come_from_bounded_queries(catalog_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manager = SupRsyncFilesManager(catalog_url)
    try:
        ids = [manager.add_file(str(register_plain(tmp_path / f"f{i}.dat")), f"{17000 + i}/f{i}",
                                ARCHIVE, timestamp=1000.0 + i).id for i in range(5)]
        manager.count_failed_attempt([ids[0], ids[1], ids[4]])
        manager.count_failed_attempt([ids[1]])
        manager.detect_timecode_dirs(ARCHIVE)
        monkeypatch.setattr(pagedata, "SCAN_WAITING", 3)
        monkeypatch.setattr(pagedata, "ROWS", 2)
        with manager.Session() as session:
            view = catalog_view(session, ARCHIVE)
    finally:
        manager.close()
    # Only the 3 oldest waiting files are read: the failing one among the newest is not.
    assert view["waiting_scanned"] == 3 and view["scan_limit"] == 3
    assert [(f["id"], f["attempts"]) for f in view["failing"]] == [(ids[1], 2), (ids[0], 1)]
    assert view["timecode_dirs"] == {"open": 5, "completed": 0, "finalized": 0}
    assert [d["timecode"] for d in view["recent_dirs"]] == [17004, 17003]
    assert pagedata.waiting_bytes(view["waiting_paths"]) == 3 * 10


def register_plain(path: Path) -> Path:
    path.write_bytes(b"0123456789")
    return path


def test_page_renders_what_the_agent_knows_when_the_catalog_is_gone(tmp_path: Path) -> None:
    db, remote = tmp_path / "suprsync.db", tmp_path / "remote"
    manager = SupRsyncFilesManager(str(db))
    kept = register(manager, tmp_path / "local", "17000/a.dat", 1000)
    config = AgentConfig(archive_name=ARCHIVE, remote_basedir=str(remote), db_path=str(db),
                         suprsync_file_root=str(tmp_path / "srf"), sleep_time=0.1)
    agent = Agent(config, manager=manager)
    server = MetricsServer(0)
    try:
        server.attach(agent)
        assert agent.iterate()
        page = Dom(http_get(server.port, "/")[2])
        assert page.text("backlog-files") == "0" and page.text("dirs-open") == "1"
        db.unlink()
        server.page.cache.ttl = 0.0  # type: ignore[union-attr]
        page = Dom(http_get(server.port, "/")[2])
        # The last catalog answer is shown, said to be old; the session's figures stay.
        assert "is missing" in page.text("catalog-error")
        assert "figures below were read" in page.text("catalog-error")
        assert page.text("registered") == "1" and page.text("dirs-open") == "1"
        server.page.cache = CatalogCache()  # type: ignore[union-attr]
        page = Dom(http_get(server.port, "/")[2])
        assert "is missing" in page.text("catalog-error")
        assert page.text("registered") == "1"  # from the session data
        assert "cannot be listed without the catalog" in page.text("timecode-dirs")
        assert not db.exists(), "the page must not create a new catalog"
    finally:
        server.close()
        agent.handler.close()
        manager.close()
    assert (remote / "17000" / "a.dat").read_bytes() == kept.read_bytes()


def test_page_before_an_agent_is_attached_and_on_another_address() -> None:
    server = MetricsServer(0, "0.0.0.0")
    try:
        assert listening_addresses(server.port) == ["0.0.0.0"]
        with pytest.raises(urllib.error.HTTPError) as starting:
            http_get(server.port, "/")
        assert starting.value.code == 503
    finally:
        server.close()
