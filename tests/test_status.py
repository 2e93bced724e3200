"""`suprsync status`: per-archive counts, backlog and lags, as a table and as JSON."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

from suprsync import SupRsyncFilesManager

STATUS_KEYS = {"registered", "synced", "waiting", "failed_at_limit", "ignored", "bytes_waiting",
               "oldest_waiting_age", "finalized_until", "finalized_until_lag", "last_copy",
               "future_timecode_dirs", "late_files", "rows_ahead_of_clock",
               "quarantined", "quarantined_rows", "conflicts", "disk_pressure",
               "disk_pressure_time"}
HEADER = ("archive", "registered", "synced", "waiting", "failed", "ignored", "conflicts",
          "bytes waiting", "oldest waiting", "finalized until", "lag", "last copy")
HOUR = 3600.0
DAY = 86400.0
#: Attempt limit of the agents and the default of `suprsync status`.
LIMIT = 5


@dataclass
class Catalog:
    """A catalog holding files of two archives in every state, and what is known about them."""

    db: Path
    built_at: float
    #: Registration times.
    ts_waiting_old: float
    ts_failed: float
    #: Time window of each agent run (copies are stamped inside it).
    alpha_run: tuple[float, float]
    beta_run: tuple[float, float]
    removed_path: Path


def write(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i * 7 + len(name)) % 251 for i in range(size)))
    return path


def run_agent_once(tmp: Path, db: Path, archive: str, *extra: str) -> tuple[float, float]:
    start = time.time()
    result = run_cli("run", "--once", "--archive-name", archive,
                     "--remote-basedir", str(tmp / "remote" / archive), "--db-path", str(db),
                     "--suprsync-file-root", str(tmp / "srfroot"),
                     "--max-copy-attempts", str(LIMIT), *extra)
    assert result.returncode == 0, result.stderr
    return start, time.time()


def max_copied(db: Path, archive: str) -> float:
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute(
            "SELECT max(copied) FROM supersync_v0 WHERE archive_name = ? "
            "AND remote_md5sum = local_md5sum", (archive,)).fetchone()
    return float(value)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """alpha: 3 synced (one of them deleted locally), 2 waiting, 1 at the attempt limit,
    1 ignored.  beta: 2 synced.

    Remote paths carry no timecode directory, so the agents write no finalization
    files and the counts stay exactly what is registered here.
    """
    tmp = tmp_path_factory.mktemp("status")
    local = tmp / "local"
    db = tmp / "catalog" / "suprsync.db"
    now = time.time()
    # Registrations without an explicit timestamp are stamped 3 h ago.
    manager = SupRsyncFilesManager(str(db), clock=lambda: now - 3 * HOUR)

    # Files the agents will copy (default timestamp: 3 h ago), and one registered
    # 3 days ago that --delete-local-after 1 day removes once it is verified.
    manager.add_file(write(local, "a/synced1.dat", 100), "data/synced1.dat", "alpha")
    manager.add_file(write(local, "a/synced2.dat", 200), "data/synced2.dat", "alpha")
    removed = write(local, "a/synced_old.dat", 300)
    manager.add_file(removed, "data/synced_old.dat", "alpha", timestamp=now - 3 * DAY)
    manager.add_file(write(local, "b/b1.dat", 700), "data/b1.dat", "beta")
    manager.add_file(write(local, "b/b2.dat", 800), "data/b2.dat", "beta")
    alpha_run = run_agent_once(tmp, db, "alpha", "--delete-local-after", str(DAY))
    beta_run = run_agent_once(tmp, db, "beta")
    assert not removed.exists(), "the agent should have deleted the old synced file"

    # Registered after the agents ran: they stay unsynced.
    ts_waiting_old = now - (2 * DAY + 3.5 * HOUR)
    ts_failed = now - (2 * DAY + 5.5 * HOUR)
    manager.add_file(write(local, "a/wait1.dat", 1000), "data/wait1.dat", "alpha",
                     timestamp=ts_waiting_old)
    manager.add_file(write(local, "a/wait2.dat", 2500), "data/wait2.dat", "alpha",
                     timestamp=now - HOUR)
    failed = manager.add_file(write(local, "a/failed.dat", 4000), "data/failed.dat", "alpha",
                              timestamp=ts_failed)
    ignored = write(local, "a/ignored.dat", 500)
    manager.add_file(ignored, "data/ignored.dat", "alpha", timestamp=now - 4 * DAY)
    manager.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE supersync_v0 SET failed_copy_attempts = ? WHERE id = ?",
                     (LIMIT, failed.id))
    result = run_cli("set-ignore", str(ignored), "--db", str(db))
    assert result.returncode == 0, result.stderr
    return Catalog(db, now, ts_waiting_old, ts_failed, alpha_run, beta_run, removed)


def status(db: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    before = time.time()
    result = run_cli("status", *args, "--db", str(db))
    return result, before, time.time()


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """Cells of the status table by archive and column, cut at the header's column ends."""
    lines = text.rstrip("\n").split("\n")
    header = lines[0]
    assert tuple(re.split(r"\s{2,}", header.strip())) == HEADER, header
    ends = []
    pos = 0
    for name in HEADER:
        pos = header.index(name, pos) + len(name)
        ends.append(pos)
    starts = [0] + [end + 2 for end in ends[:-1]]
    table = {}
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, ends, strict=True)]
        assert line[ends[-1]:] == "", line
        assert cells[0] not in table, f"archive {cells[0]} listed twice"
        table[cells[0]] = dict(zip(HEADER, cells, strict=True))
    return table


def minute(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


@dataclass
class JsonStatus:
    out: dict
    before: float
    after: float


@pytest.fixture(scope="module")
def json_status(catalog: Catalog) -> JsonStatus:
    """`suprsync status --json` of the whole catalog, and the times around the call."""
    result, before, after = status(catalog.db, "--json")
    assert result.returncode == 0, result.stderr
    return JsonStatus(json.loads(result.stdout), before, after)


def test_json_gives_the_documented_keys_and_values_for_every_state(
        catalog: Catalog, json_status: JsonStatus) -> None:
    out, before, after = json_status.out, json_status.before, json_status.after
    assert set(out) == {"alpha", "beta"}
    assert set(out["alpha"]) == STATUS_KEYS
    assert set(out["beta"]) == STATUS_KEYS

    alpha = out["alpha"]
    assert (alpha["registered"], alpha["synced"], alpha["waiting"], alpha["failed_at_limit"],
            alpha["ignored"]) == (7, 3, 2, 1, 1)
    # Waiting: wait1 (1000 B) and wait2 (2500 B); the failed and ignored files do not count.
    assert alpha["bytes_waiting"] == 3500
    assert before - catalog.ts_waiting_old <= alpha["oldest_waiting_age"] \
        <= after - catalog.ts_waiting_old
    # The file at the attempt limit holds finalized_until back; the older ignored one does not.
    assert alpha["finalized_until"] == catalog.ts_failed - 1
    assert before - (catalog.ts_failed - 1) <= alpha["finalized_until_lag"] \
        <= after - (catalog.ts_failed - 1)
    assert alpha["last_copy"] == max_copied(catalog.db, "alpha")
    assert catalog.alpha_run[0] <= alpha["last_copy"] <= catalog.alpha_run[1]

    beta = out["beta"]
    assert (beta["registered"], beta["synced"], beta["waiting"], beta["failed_at_limit"],
            beta["ignored"]) == (2, 2, 0, 0, 0)
    assert beta["bytes_waiting"] == 0
    assert beta["oldest_waiting_age"] is None
    # Everything synced: finalized_until is "now" and there is no lag.
    assert before <= beta["finalized_until"] <= after
    assert beta["finalized_until_lag"] == 0.0
    assert beta["last_copy"] == max_copied(catalog.db, "beta")
    assert catalog.beta_run[0] <= beta["last_copy"] <= catalog.beta_run[1]


def test_a_removed_synced_file_counts_as_synced_not_waiting(
        catalog: Catalog, json_status: JsonStatus) -> None:
    with sqlite3.connect(catalog.db) as conn:
        removed, synced = conn.execute(
            "SELECT removed, remote_md5sum = local_md5sum FROM supersync_v0 "
            "WHERE local_path = ?", (str(catalog.removed_path),)).fetchone()
    assert removed is not None and synced == 1
    alpha = json_status.out["alpha"]
    assert alpha["synced"] == 3
    assert alpha["waiting"] == 2
    assert alpha["bytes_waiting"] == 3500


def test_text_table_has_one_line_per_archive_with_the_numbers(catalog: Catalog) -> None:
    result, before, after = status(catalog.db)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 3  # header + alpha + beta
    table = parse_table(result.stdout)
    assert list(table) == ["alpha", "beta"]

    alpha = table["alpha"]
    assert [alpha[c] for c in ("registered", "synced", "waiting", "failed", "ignored")] == \
        ["7", "3", "2", "1", "1"]
    assert alpha["bytes waiting"] == "3.4 KiB"
    assert alpha["oldest waiting"] == "2d 3h"
    assert alpha["finalized until"] == minute(catalog.ts_failed - 1)
    assert alpha["lag"] == "2d 5h"
    assert re.fullmatch(r"(\d+m )?\d+s ago", alpha["last copy"]), alpha["last copy"]

    beta = table["beta"]
    assert [beta[c] for c in ("registered", "synced", "waiting", "failed", "ignored")] == \
        ["2", "2", "0", "0", "0"]
    assert beta["bytes waiting"] == "0 B"
    assert beta["oldest waiting"] == "-"
    assert beta["finalized until"] in {minute(before), minute(after)}
    assert beta["lag"] == "0s"
    assert re.fullmatch(r"(\d+m )?\d+s ago", beta["last copy"]), beta["last copy"]


def test_max_copy_attempts_above_the_counts_turns_failed_files_into_waiting_ones(
        catalog: Catalog) -> None:
    result, before, after = status(catalog.db, "--json", "--max-copy-attempts", str(LIMIT + 1))
    assert result.returncode == 0, result.stderr
    alpha = json.loads(result.stdout)["alpha"]
    assert (alpha["waiting"], alpha["failed_at_limit"]) == (3, 0)
    assert alpha["bytes_waiting"] == 3500 + 4000
    assert before - catalog.ts_failed <= alpha["oldest_waiting_age"] <= after - catalog.ts_failed


def test_status_of_one_archive_shows_only_that_archive(catalog: Catalog) -> None:
    result, _, _ = status(catalog.db, "beta")
    assert result.returncode == 0, result.stderr
    table = parse_table(result.stdout)
    assert list(table) == ["beta"]
    assert table["beta"]["registered"] == "2"

    result, _, _ = status(catalog.db, "beta", "--json")
    out = json.loads(result.stdout)
    assert list(out) == ["beta"]
    assert set(out["beta"]) == STATUS_KEYS
    assert out["beta"]["synced"] == 2


def test_unknown_archive_is_a_one_line_error_with_exit_1(catalog: Catalog) -> None:
    result, _, _ = status(catalog.db, "nope", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "suprsync status: error: unknown archive 'nope' (archives in this catalog: alpha, beta)"]


def test_empty_catalog_prints_a_clear_message(tmp_catalog: Path) -> None:
    SupRsyncFilesManager(str(tmp_catalog)).close()
    result, _, _ = status(tmp_catalog)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the catalog holds no files yet\n"
    result, _, _ = status(tmp_catalog, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}
