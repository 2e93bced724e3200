"""Child process of the socs workload: register new files, time one iteration of the loop
of the original agent through an implementation of its API, then a second one.

Run as a script by either interpreter: ``--impl socs`` imports ``socs.db.suprsync`` (the
original, socs 0.6.4, in its own environment), ``--impl suprsync`` the compatibility
layer of suprsync. It uses only the standard library besides that, so that both
environments can run it.

One iteration is what the original agent's ``run`` loop does each time round, with
its defaults (every copyable file in one batch, 5 copy attempts): ``copy_files``,
``get_archive_stats``, ``delete_files`` and ``update_all_timecode_dirs``. The same
process then registers as many files again and times a second iteration: the steady
state of a long-running agent, which is how the original always runs.

Prints one JSON line: first_s, steady_s, steps (per iteration, seconds per call),
copied ([local path, md5 ok] of both), expected ({remote path: md5}), impl_file.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ARCHIVE = "smurf"
INSTANCE_ID = "suprsync-bench"
MAX_COPY_ATTEMPTS = 5


def _api(impl: str):  # type: ignore[no-untyped-def]
    if impl == "socs":
        from socs.db import suprsync as api
    else:
        import suprsync as api
    return api


def _write_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=("socs", "suprsync"), required=True)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--new-files", type=int, default=100)
    p.add_argument("--size", type=int, default=16 << 10)
    p.add_argument("--delete-after", type=float, default=3600)
    p.add_argument("--age", type=float, default=7200)
    p.add_argument("--timecode", type=int, default=None,
                   help="the dir the new files go into (default: today's)")
    p.add_argument("--profile", type=Path, default=None,
                   help="write profiles to <PROFILE>-iteration<N>.prof (suprsync: and .txt, "
                        ".folded)")
    ns = p.parse_args(argv)

    api = _api(ns.impl)
    data, remote = ns.run_dir / "data", ns.run_dir / "remote"
    file_root = ns.run_dir / "suprsync-files"
    remote.mkdir(parents=True, exist_ok=True)
    manager = api.SupRsyncFilesManager(str(ns.db))
    handler = api.SupRsyncFileHandler(manager, ARCHIVE, str(remote), chmod="g+rwX,o+rX")
    expected: dict[str, str] = {}

    def register(batch: str) -> None:
        registered = time.time() - ns.age
        tc = int(time.time() // 1e5) if ns.timecode is None else ns.timecode
        for i in range(ns.new_files):
            rel = f"{tc}/ufm_mv1/{int(registered)}_{batch}_{i:03d}.g3"
            md5 = _write_file(data / rel, ns.size)
            manager.add_file(str(data / rel), rel, ARCHIVE, local_md5sum=md5,
                             timestamp=registered)
            expected[rel] = md5

    def iteration(steps: dict[str, float]) -> list[tuple[str, bool]]:
        def step(name: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            steps[name] = time.perf_counter() - start
            return result

        copied = step("copy_files", handler.copy_files, max_copy_attempts=MAX_COPY_ATTEMPTS,
                      num_files=None)
        step("get_archive_stats", manager.get_archive_stats, ARCHIVE)
        step("delete_files", handler.delete_files, ns.delete_after)
        step("update_all_timecode_dirs", manager.update_all_timecode_dirs, ARCHIVE,
             str(file_root), INSTANCE_ID)
        return [(str(path), bool(ok)) for path, ok in copied]

    times, all_steps, copied = [], [], []
    for n, batch in enumerate(("a", "b")):
        register(batch)
        steps: dict[str, float] = {}
        start = time.perf_counter()
        prefix = None if ns.profile is None else Path(f"{ns.profile}-iteration{n + 1}")
        if prefix is None:
            copied += iteration(steps)
        elif ns.impl == "suprsync":  # cProfile and wall-clock samples of every thread
            sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
            from benchmarks.profiling import Profiled

            with Profiled(prefix):
                copied += iteration(steps)
        else:
            profile = cProfile.Profile()
            profile.enable()
            copied += iteration(steps)
            profile.disable()
            profile.dump_stats(f"{prefix}.prof")
        times.append(time.perf_counter() - start)
        all_steps.append(steps)
    if hasattr(handler, "close"):
        handler.close()
    if hasattr(manager, "close"):
        manager.close()
    print(json.dumps({"first_s": times[0], "steady_s": times[1], "steps": all_steps,
                      "copied": copied, "expected": expected, "impl_file": api.__file__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
