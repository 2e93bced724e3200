"""Workload 1: one agent iteration with a long history in the catalog vs an empty one.

Catalogs of 1,000,000 and 100,000 old rows are built once with plain sqlite3
(one transaction, executemany) and copied for each repetition. Each repetition
runs one child process per catalog (empty, 100k, 1M, in turn), which

1. writes 100 new 16 KiB files and registers them with ``add_file``
   (registered two hours ago, so they are due for deletion after the copy);
2. builds an Agent (local destination, --delete-local-after 3600) and times its
   first ``iterate()``: copy + verify, archive stats, deletion pass, timecode
   dirs. A fresh agent also scans the whole archive once for timecode dirs, as
   ``suprsync run --once`` from cron does every time;
3. registers 100 more new files and times a second ``iterate()`` of the same
   agent (the steady state of a long-running agent);
4. checks that all 200 files arrived with the right md5, are verified in the
   catalog and were deleted locally, and reports its peak RSS (VmHWM).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    INSTANCE_ID,
    REPO,
    BenchmarkError,
    Sample,
    checkpoint,
    clear_dir,
    copy_catalog,
    empty_catalog,
    now_tc,
)
from ..harness import Context, Target, alternate, pair_result, value_result

#: New files per iteration, their size, and the deletion delay of the agent.
NEW_FILES = 100
NEW_SIZE = 16 << 10
DELETE_AFTER = 3600.0
#: Registration time of the new files: before now - DELETE_AFTER, so they are deleted.
NEW_AGE = 7200.0
#: Timecode dirs covered by the history (about a year).
HISTORY_TCS = 365
#: One old row in KEEP_EVERY is a keep-local file (synced, deletable=0, never removed);
#: one in IGNORE_EVERY was given up on (ignored, never synced, not removed).
KEEP_EVERY = 1000
IGNORE_EVERY = 10_000

COLUMNS = ("id", "local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "copied", "removed", "failed_copy_attempts", "deletable", "ignore")


def _history_rows(n_rows: int, now: float, tcs: list[int]) -> Iterator[tuple]:
    """Old rows in registration order: data files and one finalization file per dir."""
    start = tcs[0] * 100_000
    end = (tcs[-1] + 1) * 100_000
    step = (end - start) / n_rows
    # Dir tc was finalized 10 min into tc + 1 (its file lives in dir tc + 1).
    fin_times = {tc: min((tc + 1) * 100_000 + 600, now - 3 * NEW_AGE) for tc in tcs}
    pending = sorted((t, tc) for tc, t in fin_times.items())
    row_id = 0
    p = 0
    for i in range(n_rows):
        ts = start + i * step
        while p < len(pending) and pending[p][0] <= ts:
            t_fin, tc_fin = pending[p]
            p += 1
            row_id += 1
            yield _fin_row(row_id, t_fin, tc_fin)
        tc = int(ts // 100_000)
        rel = f"{tc}/ufm_mv{i % 7}/{int(ts)}_{i % 1000:03d}.g3"
        md5 = f"{i:032x}"
        row_id += 1
        if i % IGNORE_EVERY == IGNORE_EVERY - 1:
            yield (row_id, "/data/smurf/" + rel, md5, ARCHIVE, rel, ts, None, None, None, 0, 1, 1)
        elif i % KEEP_EVERY == KEEP_EVERY - 1:
            yield (row_id, "/data/smurf/" + rel, md5, ARCHIVE, rel, ts, md5, ts + 30, None, 0, 0,
                   0)
        else:
            yield (row_id, "/data/smurf/" + rel, md5, ARCHIVE, rel, ts, md5, ts + 30,
                   ts + 86400, 0, 1, 0)
    for t_fin, tc_fin in pending[p:]:
        row_id += 1
        yield _fin_row(row_id, t_fin, tc_fin)


def _fin_row(row_id: int, t: float, tc: int) -> tuple:
    name = f"{int(t)}_{ARCHIVE}_{tc}_finalized.yaml"
    rel = f"{int(t // 100_000)}/suprsync/{INSTANCE_ID}/{name}"
    md5 = f"f{row_id:031x}"
    return (row_id, f"/data/suprsync/{rel}", md5, ARCHIVE, rel, t, md5, t + 30, t + 86400, 0, 1,
            0)


def build_history_catalog(path: Path, n_rows: int, now: float) -> dict[str, Any]:
    """A catalog with n_rows old rows (plus finalization files), every dir finalized."""
    from suprsync.catalog.schema import INDEXES

    empty_catalog(path)
    conn = sqlite3.connect(path)
    current = now_tc(now)
    tcs = list(range(current - HISTORY_TCS, current))
    try:
        for index in INDEXES:  # faster to index once at the end; the manager re-creates them
            conn.execute(f"DROP INDEX IF EXISTS {index.name}")
        fin_ids: dict[int, int] = {}
        with conn:
            marks = ", ".join("?" * len(COLUMNS))
            conn.executemany(
                f"INSERT INTO supersync_v0 ({', '.join(COLUMNS)}) VALUES ({marks})",
                _history_rows(n_rows, now, tcs))
            for row_id, remote in conn.execute(
                    "SELECT id, remote_path FROM supersync_v0 WHERE remote_path LIKE "
                    "'%/suprsync/%'"):
                tc = int(remote.rsplit("_", 2)[-2])
                fin_ids[tc] = row_id
            conn.executemany(
                "INSERT INTO timecode_dirs_v0 (timecode, archive_name, completed, synced, "
                "finalized, finalize_file_id) VALUES (?, ?, 1, 1, 1, ?)",
                [(tc, ARCHIVE, fin_ids[tc]) for tc in tcs])
        total = conn.execute("SELECT count(*) FROM supersync_v0").fetchone()[0]
    finally:
        conn.close()
    # Opening it as the agent would re-creates suprsync's indexes.
    from suprsync.catalog.store import SupRsyncFilesManager

    manager = SupRsyncFilesManager(str(path))
    manager.close()
    checkpoint(path)
    return {"rows": total, "timecode_dirs": len(tcs), "bytes": path.stat().st_size}


def _run_child(db: Path, run_dir: Path, profile: Path | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.workloads.history_child", "--db", str(db),
            "--run-dir", str(run_dir), "--new-files", str(NEW_FILES), "--size", str(NEW_SIZE),
            "--delete-after", str(DELETE_AFTER), "--age", str(NEW_AGE)]
    if profile is not None:
        argv += ["--profile", str(profile)]
    out_path, err_path = run_dir / "child.out", run_dir / "child.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        # wait4 gives this child's own rusage (ru_maxrss in KiB).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchmarkError(f"history child on {db} failed ({proc.returncode}):\n"
                             f"{err_path.read_text(errors='replace')[-2000:]}")
    result = json.loads(out_path.read_text().strip().splitlines()[-1])
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    return result


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "history")
    now = time.time()
    sizes = {"empty": 0, "100k": 2_000, "1M": 5_000} if ctx.quick else \
        {"empty": 0, "100k": 100_000, "1M": 1_000_000}
    templates: dict[str, Path] = {}
    for label, n in sizes.items():
        path = base / f"template-{label}.db"
        start = time.perf_counter()
        if n == 0:
            empty_catalog(path)
            info = {"rows": 0}
        else:
            info = build_history_catalog(path, n, now)
        ctx.log(f"  catalog {label}: {info} built in {time.perf_counter() - start:.1f} s")
        templates[label] = path

    def side(label: str):  # type: ignore[no-untyped-def]
        def one(rep: int) -> Sample:
            run_dir = clear_dir(base / f"run-{label}")
            db = copy_catalog(templates[label], run_dir / "catalog.db")
            out = _run_child(db, run_dir, None)
            return Sample(out["first_s"], checked=out["checked"], extra=out)
        return one

    order = ["1M", "empty", "100k"]
    samples = alternate([(label, side(label)) for label in order], ctx.reps, ctx.log)

    if ctx.profile_dir is not None:
        for label in ("1M", "empty"):
            run_dir = clear_dir(base / f"profile-{label}")
            db = copy_catalog(templates[label], run_dir / "catalog.db")
            _run_child(db, run_dir, ctx.profile_dir / f"history-{label}")

    def steady(label: str) -> list[Sample]:
        return [Sample(s.extra["steady_s"], s.checked, loadavg=s.loadavg)
                for s in samples[label]]

    n1, n2 = ("5k", "2k") if ctx.quick else ("1M", "100k")
    what = f"{NEW_FILES} new 16 KiB files, local destination, deletion on"
    results = []
    for label, name in (("1M", n1), ("100k", n2)):
        results.append(pair_result(
            f"history_{label.lower()}_first", "history", f"history {name}: 1st iteration",
            f"History {name} rows vs empty: first iteration of a new agent ({what})",
            f"{name} rows", samples[label], "empty catalog", samples["empty"],
            Target("<=", 2.0), ctx.quick,
            notes="first iterate() of a fresh Agent: includes the one-time scan of the "
                  "archive for timecode dirs (what `suprsync run --once` pays every run)"))
        results.append(pair_result(
            f"history_{label.lower()}_steady", "history", f"history {name}: 2nd iteration",
            f"History {name} rows vs empty: second iteration of the same agent ({what})",
            f"{name} rows", steady(label), "empty catalog", steady("empty"),
            Target("<=", 2.0), ctx.quick, notes="steady state of a long-running agent"))
    for label, name, target in (("1M", n1, Target("<", 200.0)), ("100k", n2, None),
                                ("empty", "empty", None)):
        results.append(value_result(
            f"history_{label.lower()}_peak_rss", "history", f"history {name}: peak RSS",
            f"Peak RSS of the agent process, {name} {'catalog' if label == 'empty' else 'rows'}"
            " (VmHWM, both iterations)", "MB",
            [s.extra["vmhwm_mb"] for s in samples[label]], target, ctx.quick,
            notes=f"RSS after imports, before the first iteration: "
                  f"{max(s.extra['rss_before_mb'] for s in samples[label]):.1f} MB; "
                  f"ru_maxrss of the child from wait4: "
                  f"{max(s.extra['ru_maxrss_mb'] for s in samples[label]):.1f} MB; "
                  f"rsync and other programs it starts are separate processes, not counted"))
    return results
