"""Smoke test of the benchmark runner: the quick variant of every workload runs, copies
every file with the right content, and writes results with the expected structure.

Timings are not checked (``--quick`` sizes are far too small for the targets).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

HISTORY_IDS = {f"history_{db}{mode}_{shape}_{which}"
               for db, shapes in (("", "abcde"), ("pg_", "ae")) for mode in ("agent", "api")
               for shape in shapes for which in ("first", "steady")}
RATIO_IDS = HISTORY_IDS | {
    "small_files_ssh", "large_files_ssh", "large_files_local", "register_add_file",
    "register_add_local_files", "latency_parallel", "socs_api_first", "socs_api_steady",
    *(f"{base}{suffix}" for base in ("small_files_ssh", "large_files_ssh", "large_files_local")
      for suffix in ("_process", "_floor", "_process_floor")),
}
VALUE_IDS = {"history_1m_peak_rss", "history_empty_peak_rss",
             "pending_local_peak_rss", "pending_ssh_peak_rss"}
SECONDS_IDS = {"pending_local_seconds", "pending_ssh_seconds"}
FLOOR_IDS = {"floor_cores", "floor_ssh_connect", "floor_ssh_stream_default", "floor_ssh_stream",
             "floor_md5", "floor_write", "floor_large_ssh", "floor_large_local",
             "floor_small_ssh"}


def _md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    base = tmp_path_factory.mktemp("bench")
    out, work = base / "results.json", base / "work"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--reps", "1", "--out", str(out),
         "--workdir", str(work)],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), work, result.stdout


def test_results_structure(quick_run: tuple[dict, Path, str]) -> None:
    doc, _, stdout = quick_run
    assert doc["errors"] == []
    meta = doc["meta"]
    assert meta["quick"] is True and meta["reps"] == 1
    for key in ("nproc", "cpu_model", "mem_total_gib", "rsync", "ssh", "disk"):
        assert key in meta["machine"]
    results = {r["id"]: r for r in doc["results"]}
    assert set(results) == RATIO_IDS | VALUE_IDS | SECONDS_IDS | FLOOR_IDS
    for rid in RATIO_IDS:
        r = results[rid]
        assert r["kind"] == "ratio" and r["verified"] is True and r["reps"] == 1
        for side in ("a", "b"):
            stats = r[side]
            assert stats["label"] and len(stats["samples"]) == 1
            assert 0 < stats["min"] <= stats["median"] <= stats["max"]
        assert r["ratio"]["median"] == pytest.approx(r["a"]["median"] / r["b"]["median"])
        assert set(r["ratio"]) == {"median", "min", "max"}
        assert r["target"]["op"] in ("<=", "<", ">=") and r["target"]["value"] > 0
        assert r["pass"] is None and r["status"] == "n/a (quick)"
        assert r["a"]["checked_files"] > 0, rid  # the suprsync side was verified file by file
    for rid in VALUE_IDS:
        assert results[rid]["kind"] == "value" and 10 < results[rid]["max"] < 10_000
    for rid in SECONDS_IDS:
        assert results[rid]["kind"] == "value" and results[rid]["unit"] == "s"
        assert 0 < results[rid]["max"] < 300
    for rid in FLOOR_IDS:
        assert results[rid]["kind"] == "value" and results[rid]["median"] > 0, rid
    for rid in RATIO_IDS:
        if rid.endswith("_floor"):  # a side against the floor measured before it
            assert results[rid]["b"]["label"] == "floor" and results[rid]["floor"], rid
            assert results[rid]["target"] == {"op": "<=", "value": 1.5}
    assert results["pending_local_peak_rss"]["target"] == {"op": "<=", "value": 150.0}
    assert results["history_1m_peak_rss"]["target"] == {"op": "<=", "value": 100.0}
    # The printed table has one row per result.
    assert doc["table"] in stdout
    assert len(doc["table"].splitlines()) == 2 + len(results)


@pytest.mark.parametrize("workload,source,copies", [
    ("small", "src", ["run-agent/remote", "run-process/remote", "run-rsync/remote"]),
    ("large", "src", ["run-ssh-agent/remote", "run-ssh-process/remote", "run-ssh-rsync/remote",
                      "run-local-agent/remote", "run-local-process/remote",
                      "run-local-rsync/remote"]),
    ("latency", "src", ["run-parallel4-shared/remote", "run-parallel1-separate/remote"]),
])
def test_copies_arrived_intact(quick_run: tuple[dict, Path, str], workload: str, source: str,
                               copies: list[str]) -> None:
    _, work, _ = quick_run
    expected = _md5s(work / workload / source)
    assert len(expected) >= 4
    for copy in copies:
        got = {rel: md5 for rel, md5 in _md5s(work / workload / copy).items()
               if "/suprsync/" not in f"/{rel}"}  # finalization files the agent sent
        assert got == expected, f"{workload}/{copy}"


def _verified_and_removed(run: Path) -> int:
    """Rows of files under <run>/data that are verified and deleted locally."""
    conn = sqlite3.connect(run / "catalog.db")
    try:
        return conn.execute(
            "SELECT count(*) FROM supersync_v0 WHERE local_path LIKE ? AND "
            "remote_md5sum = local_md5sum AND removed IS NOT NULL",
            (f"{run / 'data'}%",)).fetchone()[0]
    finally:
        conn.close()


def test_history_iterations_copied_and_deleted(quick_run: tuple[dict, Path, str]) -> None:
    _, work, _ = quick_run
    runs = sorted((work / "history").glob("run-*-*-*"))
    assert {r.name for r in runs} == {
        f"run-{db}-{mode}-{key}" for db, keys in (("sqlite", "abcde"), ("postgresql", "ae"))
        for mode in ("agent", "api") for key in ("empty", *keys)}
    for run in runs:
        copies = list((run / "remote").rglob("*.g3"))
        assert len(copies) == 20, run.name  # 10 new files per iteration, two iterations
        assert not list((run / "data").rglob("*.g3")), f"{run.name}: local copies not deleted"
        if not run.name.startswith("run-sqlite"):
            continue  # the PostgreSQL cluster is gone; the child checked its rows
        assert _verified_and_removed(run) == 20, run.name


def test_socs_sides_copied_and_deleted(quick_run: tuple[dict, Path, str]) -> None:
    _, work, _ = quick_run
    for impl in ("socs", "suprsync"):
        run = work / "socs" / f"run-{impl}"
        assert len(list((run / "remote").rglob("*.g3"))) == 40, impl  # 2 x 20 quick files
        assert not list((run / "data").rglob("*.g3")), f"{impl}: local copies not deleted"
        assert _verified_and_removed(run) == 40, impl


def test_bulk_registration_catalog(quick_run: tuple[dict, Path, str]) -> None:
    _, work, _ = quick_run
    tree = work / "registration" / "tree"
    expected = _md5s(tree)
    conn = sqlite3.connect(work / "registration" / "run-cli" / "catalog.db")
    try:
        rows = dict(conn.execute("SELECT remote_path, local_md5sum FROM supersync_v0"))
    finally:
        conn.close()
    assert rows == expected


def test_delay_proxy_delays_and_keeps_order() -> None:
    from benchmarks.delay_proxy import start_proxy, stop_proxy

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proc, proxy_port = start_proxy(port, 0.05)
    try:
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
            assert time.monotonic() - start >= 0.1  # 50 ms each way
            payload = bytes(range(256)) * 8192  # 2 MiB, order-sensitive
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                got += sock.recv(1 << 20)
            sender.join()
            assert bytes(got) == payload
    finally:
        stop_proxy(proc)
        listener.close()
