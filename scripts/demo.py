#!/usr/bin/env python3
"""suprsync demo: register a sample data tree in a catalog and sync it to a local "remote".

Everything happens under ./demo/ at the repository root (wiped at start):

    demo/data/          sample files in three 5-digit timecode dirs (the source)
    demo/suprsync.db    the catalog (sqlite)
    demo/remote/        the archive the agent copies into (--remote-basedir)
    demo/suprsync-files the agent's own finalization files (--suprsync-file-root)

Run it with ``make demo`` or ``.venv/bin/python scripts/demo.py``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
DATA = DEMO / "data"
REMOTE = DEMO / "remote"
DB = DEMO / "suprsync.db"
FILE_ROOT = DEMO / "suprsync-files"
ARCHIVE = "demo"
SUPRSYNC = Path(sys.executable).parent / "suprsync"
MAX_RUNS = 5


def rel(path: Path) -> str:
    """A path relative to the repository root, as shown to the user."""
    return str(path.relative_to(ROOT))


def suprsync(*args: str, capture: bool = False) -> str:
    """Run the suprsync console script (argument list, no shell); stop the demo if it fails."""
    print(f"\n$ {shlex.join(['suprsync', *args])}")
    result = subprocess.run([str(SUPRSYNC), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        sys.exit(f"demo: 'suprsync {args[0]}' failed with exit status {result.returncode}")
    return result.stdout if capture else ""


def make_sample_tree(rng: random.Random) -> list[Path]:
    """Write ~20 small random files into three consecutive timecode dirs ending now."""
    now_tc = int(time.time() // 1e5)
    files = []
    for tc in (now_tc - 2, now_tc - 1, now_tc):
        for subdir in ("ufm_mv5", "ufm_mv7"):
            for i in range(3):
                ctime = tc * 100_000 + rng.randrange(100_000)
                files.append(DATA / str(tc) / subdir / f"{ctime}_{i:03d}.g3")
        files.append(DATA / str(tc) / f"{tc}_summary.txt")
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1024, 8 * 1024)))
    return files


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def archive_stats() -> dict[str, Any]:
    out = suprsync("stats", ARCHIVE, "--json", "--db", rel(DB), capture=True)
    stats: dict[str, Any] = json.loads(out)[ARCHIVE]
    print(f"uncopied_files: {stats['uncopied_files']}")
    return stats


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the agent's log
    if not SUPRSYNC.exists():
        sys.exit(f"demo: {SUPRSYNC} not found; run 'make demo' to install suprsync first")
    if DEMO.exists():
        shutil.rmtree(DEMO)
    sources = make_sample_tree(random.Random())
    print(f"Wrote {len(sources)} sample files under {rel(DATA)}/")

    suprsync("add-local-files", rel(DATA), ARCHIVE, "--db", rel(DB), "--create-db",
             "--last-edit", "0")

    run_args = ["run", "--archive-name", ARCHIVE, "--remote-basedir", rel(REMOTE),
                "--db-path", rel(DB), "--suprsync-file-root", rel(FILE_ROOT),
                "--sleep-time", "0", "--once"]
    for attempt in range(1, MAX_RUNS + 1):
        print(f"\n--- agent iteration {attempt} (at most {MAX_RUNS}) ---")
        suprsync(*run_args)
        if archive_stats()["uncopied_files"] == 0:
            break
    else:
        sys.exit(f"demo: files still uncopied after {MAX_RUNS} runs of 'suprsync run'; "
                 "see the log lines above")

    suprsync("stats", ARCHIVE, "--db", rel(DB))

    identical = sum(
        (REMOTE / src.relative_to(DATA)).is_file() and md5(REMOTE / src.relative_to(DATA))
        == md5(src) for src in sources)
    finals = sorted(REMOTE.glob("*/suprsync/*/*_finalized.yaml"))
    print(f"\nSynced in {attempt} run(s) of 'suprsync run --once'.")
    print(f"{identical}/{len(sources)} files copied to {rel(REMOTE)}/ and identical to the "
          f"source (same relative paths as under {rel(DATA)}/).")
    print(f"{len(finals)} finalization file(s) written (local copies under {rel(FILE_ROOT)}/):")
    for path in finals:
        print(f"  {rel(path)}")
    if finals:
        print(f"\nContent of {finals[0].name}:")
        print("  " + finals[0].read_text().rstrip().replace("\n", "\n  "))
    if identical != len(sources):
        sys.exit("demo: some copies are missing or differ from their source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
