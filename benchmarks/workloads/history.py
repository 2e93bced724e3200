"""Workload 1: iterations with 1,000,000 old rows in the catalog vs an empty one.

For each history shape (see ``history_catalogs.SHAPES``) a catalog of 1,000,000
old rows is built once per run with plain SQL and copied for each repetition
(sqlite: the file; PostgreSQL: ``CREATE DATABASE ... TEMPLATE``). Each repetition
runs, in turn, one child process on the empty catalog and one per shape, first
through the agent and then through the original's API (see ``history_child``):

1. write 100 new 16 KiB files and register them with ``add_file``, dated two
   hours ago (so they are due for deletion once verified);
2. build the agent (or the manager and handler) and run the first iteration:
   copy + verify, archive stats, deletion pass, timecode dirs; timed together,
   as a fresh process (``suprsync run --once`` from cron) pays them;
3. register 100 more files and time a second iteration (the steady state);
4. check that all 200 files arrived with the right md5, are verified and removed
   in the catalog, and are gone locally; report the peak RSS (VmHWM).

On PostgreSQL (a cluster the workload starts and stops itself) the same runs for
the empty catalog and shapes (a) and (e).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..common import REPO, BenchmarkError, Sample, clear_dir, copy_catalog, empty_catalog, now_tc
from ..harness import Context, Target, alternate, pair_result, value_result
from .history_catalogs import SHAPES, Shape, build_postgresql, build_sqlite

#: New files per iteration, their size, and the deletion delay of the agent.
NEW_FILES = 100
NEW_SIZE = 16 << 10
DELETE_AFTER = 3600.0
#: Registration time of the new files: before now - DELETE_AFTER, so they are deleted.
NEW_AGE = 7200.0
#: Old rows of a history catalog.
HISTORY_ROWS = 1_000_000
QUICK_ROWS = 3_000
#: Shapes measured on PostgreSQL too.
PG_SHAPES = ("a", "e")
TARGET = Target("<=", 1.3)
PG_TARGET = Target("<=", 1.5)
MODES = {"agent": "agent (Agent.iterate)", "api": "original's API"}


def _run_child(db: str, mode: str, run_dir: Path, profile: Path | None,
               new_files: int, timecode: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.workloads.history_child", "--db", db,
            "--mode", mode, "--run-dir", str(run_dir), "--new-files", str(new_files),
            "--size", str(NEW_SIZE), "--delete-after", str(DELETE_AFTER), "--age",
            str(NEW_AGE), "--timecode", str(timecode)]
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
        raise BenchmarkError(f"history child ({mode}) on {db} failed ({proc.returncode}):\n"
                             f"{err_path.read_text(errors='replace')[-2000:]}")
    result = json.loads(out_path.read_text().strip().splitlines()[-1])
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    return result


class SqliteCatalogs:
    """Template catalog files, one per shape and one empty; copied per repetition."""

    backend = "sqlite"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.templates: dict[str, Path] = {}

    def build(self, key: str, shape: Shape | None, n_rows: int, end: float,
              scale: float) -> dict[str, Any]:
        path = self.base / f"template-{key}.db"
        self.templates[key] = path
        if shape is None:
            empty_catalog(path)
            return {"rows": 0}
        return build_sqlite(path, shape, n_rows, end, scale)

    def fresh(self, key: str, run_dir: Path) -> str:
        return str(copy_catalog(self.templates[key], run_dir / "catalog.db"))


class PgCatalogs:
    """Template databases of a PostgreSQL cluster; each run gets a copy."""

    backend = "postgresql"

    def __init__(self, server: Any) -> None:
        self.server = server
        self.copies: dict[str, str] = {}

    def build(self, key: str, shape: Shape | None, n_rows: int, end: float,
              scale: float) -> dict[str, Any]:
        self.server.psql(f"CREATE DATABASE tpl_{key}")
        return build_postgresql(self.server.url(f"tpl_{key}"), shape, n_rows, end, scale)

    def fresh(self, key: str, run_dir: Path) -> str:
        name = f"run_{key}"
        self.server.psql(f"DROP DATABASE IF EXISTS {name}")
        self.server.psql(f"CREATE DATABASE {name} TEMPLATE tpl_{key} STRATEGY FILE_COPY")
        return self.server.url(name)


def _measure(ctx: Context, catalogs: Any, keys: list[str], base: Path, new_files: int,
             timecode: int) -> dict[tuple[str, str], list[Sample]]:
    """Alternate empty, shape, shape, ... for each mode; samples per (mode, key).

    The new files go into ``timecode``, the dir the history ends in, so that no
    iteration finalizes a dir whatever the time of day.
    """
    samples: dict[tuple[str, str], list[Sample]] = {}
    for mode in MODES:
        def side(key: str, mode: str = mode) -> Callable[[int], Sample]:
            def one(rep: int) -> Sample:
                run_dir = clear_dir(base / f"run-{catalogs.backend}-{mode}-{key}")
                db = catalogs.fresh(key, run_dir)
                out = _run_child(db, mode, run_dir, None, new_files, timecode)
                return Sample(out["first_s"], checked=out["checked"], extra=out)
            return one

        ctx.log(f"  {catalogs.backend}, {MODES[mode]}")
        got = alternate([(key, side(key)) for key in keys], ctx.reps, ctx.log)
        for key, values in got.items():
            samples[(mode, key)] = values
    if ctx.profile_dir is not None:
        for mode in MODES:
            for key in keys:
                run_dir = clear_dir(base / f"profile-{catalogs.backend}-{mode}-{key}")
                db = catalogs.fresh(key, run_dir)
                _run_child(db, mode, run_dir,
                           ctx.profile_dir / f"history-{catalogs.backend}-{mode}-{key}",
                           new_files, timecode)
    return samples


def _steady(samples: list[Sample]) -> list[Sample]:
    return [Sample(s.extra["steady_s"], s.checked, loadavg=s.loadavg) for s in samples]


def _pair_rows(ctx: Context, samples: dict[tuple[str, str], list[Sample]], backend: str,
               shapes: list[Shape], target: Target, rows_label: str) -> list[dict[str, Any]]:
    results = []
    db = "" if backend == "sqlite" else "pg "
    what = f"{NEW_FILES} new 16 KiB files, local destination, deletion on"
    for mode, mode_text in MODES.items():
        empty = samples[(mode, "empty")]
        for shape in shapes:
            one = samples[(mode, shape.key)]
            for which, a, b, title in (
                    ("first", one, empty, "first iteration of a fresh process (build + "
                                          "iterate)"),
                    ("steady", _steady(one), _steady(empty), "second iteration")):
                rid = f"history_{'' if backend == 'sqlite' else 'pg_'}{mode}_{shape.key}_{which}"
                results.append(pair_result(
                    rid, "history",
                    f"history {db}{mode} ({shape.key}) {shape.name}: "
                    f"{'1st' if which == 'first' else '2nd'}",
                    f"{backend}, {mode_text}, {title}: {rows_label} old rows "
                    f"({shape.describe()}) vs an empty catalog ({what})",
                    f"{rows_label} rows", a, "empty catalog", b, target, ctx.quick,
                    floor="the same iteration on an empty catalog"))
    return results


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "history")
    end = time.time() - 3 * NEW_AGE
    n_rows = QUICK_ROWS if ctx.quick else HISTORY_ROWS
    scale = n_rows / HISTORY_ROWS
    new_files = 10 if ctx.quick else NEW_FILES
    rows_label = f"{n_rows // 1000}k" if n_rows < 1_000_000 else f"{n_rows // 1_000_000}M"
    keys = ["empty", *(s.key for s in SHAPES)]

    def build_all(catalogs: Any, shapes: list[Shape]) -> None:
        for shape in [None, *shapes]:
            start = time.perf_counter()
            key = "empty" if shape is None else shape.key
            info = catalogs.build(key, shape, n_rows, end, scale)
            ctx.log(f"  {catalogs.backend} catalog {key}: {info} built in "
                    f"{time.perf_counter() - start:.1f} s")

    sqlite = SqliteCatalogs(base)
    build_all(sqlite, list(SHAPES))
    samples = _measure(ctx, sqlite, keys, base, new_files, now_tc(end))
    results = _pair_rows(ctx, samples, "sqlite", list(SHAPES), TARGET, rows_label)

    from ..pg import start_pg

    pg_shapes = [s for s in SHAPES if s.key in PG_SHAPES]
    server = start_pg()
    try:
        pg = PgCatalogs(server)
        build_all(pg, pg_shapes)
        pg_samples = _measure(ctx, pg, ["empty", *PG_SHAPES], base, new_files,
                              now_tc(end))
    finally:
        server.stop()
    results += _pair_rows(ctx, pg_samples, "postgresql", pg_shapes, PG_TARGET, rows_label)

    for key, label, target in (("a", f"{rows_label} (a)", Target("<=", 100.0)),
                               ("empty", "empty", None)):
        values = samples[("agent", key)]
        results.append(value_result(
            f"history_{'1m' if key == 'a' else key}_peak_rss", "history",
            f"history {label}: peak RSS",
            f"Peak RSS of the agent process, {label} catalog (VmHWM, both iterations)", "MB",
            [s.extra["vmhwm_mb"] for s in values], target, ctx.quick,
            notes=f"RSS after imports, before the first iteration: "
                  f"{max(s.extra['rss_before_mb'] for s in values):.1f} MB; "
                  f"ru_maxrss of the child from wait4: "
                  f"{max(s.extra['ru_maxrss_mb'] for s in values):.1f} MB; "
                  f"rsync and other programs it starts are separate processes, not counted"))
    return results
