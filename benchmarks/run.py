"""Run the suprsync benchmarks side by side with their baselines; print and save a table.

    .venv/bin/python -m benchmarks.run                  # full run (make bench)
    .venv/bin/python -m benchmarks.run --quick          # small variants (make bench-quick)
    .venv/bin/python -m benchmarks.run --only small,large --reps 3
    .venv/bin/python -m benchmarks.run --profile benchmarks/profiles

See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"  # noqa: A001

from benchmarks.common import REPO  # noqa: E402
from benchmarks.harness import Context, format_table, machine_info, source_state  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    floor,
    history,
    large_files,
    latency,
    pending,
    registration,
    small_files,
    socs,
)

WORKLOADS: dict[str, Callable[[Context], list[dict[str, Any]]]] = {
    "history": history.run,
    "floor": floor.run,
    "small": small_files.run,
    "large": large_files.run,
    "registration": registration.run,
    "latency": latency.run,
    "pending": pending.run,
    "socs": socs.run,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small variants: checks that everything works, timings mean nothing")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each side (default 5)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json",
                   help="JSON output (default benchmarks/results.json)")
    p.add_argument("--only", default=None,
                   help=f"comma-separated workloads to run (of {', '.join(WORKLOADS)})")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where data trees and catalogs go (default: a new dir in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="after measuring, profile the suprsync side of each workload once "
                        "more and write the profiles into DIR")
    ns = p.parse_args(argv)
    if ns.reps < 1:
        p.error("--reps must be at least 1")
    names = list(WORKLOADS) if not ns.only else [n.strip() for n in ns.only.split(",")]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    ns.names = names
    return ns


def compile_sources() -> None:
    """Write the bytecode of suprsync's sources, as an installed package has it.

    An editable install under ``PYTHONDONTWRITEBYTECODE`` would otherwise compile
    every module from source in each measured process, while the original (socs,
    installed by pip) loads its bytecode.
    """
    compileall.compile_dir(str(REPO / "src"), quiet=1)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    compile_sources()
    created = ns.workdir is None
    work = Path(tempfile.mkdtemp(prefix="suprsync-bench-")) if created else ns.workdir
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    profile_dir = ns.profile.resolve() if ns.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(work=work, reps=ns.reps, quick=ns.quick, profile_dir=profile_dir, log=log)
    started = time.time()
    meta: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.run",
                               *(sys.argv[1:] if argv is None else argv)]),
        "quick": ns.quick,
        "reps": ns.reps,
        "workloads": ns.names,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(work),
        "source": source_state(),
    }
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    durations: dict[str, float] = {}
    try:
        for name in ns.names:
            log(f"== {name}")
            start = time.perf_counter()
            try:
                results += WORKLOADS[name](ctx)
            except Exception as exc:  # report it and go on with the other workloads
                log(traceback.format_exc())
                errors.append({"workload": name, "error": f"{type(exc).__name__}: {exc}"})
            durations[name] = round(time.perf_counter() - start, 1)
            log(f"== {name} done in {durations[name]:.1f} s")
    finally:
        if ctx.sshd is not None:
            ctx.sshd.stop()
        if created and not ns.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta["duration_s"] = round(time.time() - started, 1)
    meta["workload_durations_s"] = durations
    meta["machine"]["loadavg_end"] = __import__("os").getloadavg()
    table = format_table(results)
    document = {"meta": meta, "results": results, "errors": errors, "table": table}
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(document, indent=2) + "\n")
    print(table)
    if ns.quick:
        print("\n(quick run: sizes are too small for the targets to mean anything)")
    for err in errors:
        print(f"\nERROR in {err['workload']}: {err['error']}")
    print(f"\nresults written to {ns.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
