"""Workload 3: large files, over loopback ssh and to a local destination.

4 files of 256 MiB, registered once. Over ssh: one ``Agent.iterate()`` vs
``rsync -a`` over plain ssh + one ssh md5sum call (as in the small-files
workload). Locally: one ``Agent.iterate()`` with a local destination vs
``rsync -a SRC/ DEST/`` + ``md5sum`` of the copies. Destinations are emptied
before each repetition. Page cache: the source files are read once before the
first repetition, so both sides always read the same warm source files; the
copies are written into the page cache too (24 GiB of RAM), so the md5 of a copy
reads from memory on both sides.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    Sample,
    check_md5sum_output,
    clear_dir,
    empty_catalog,
    make_tree,
    now_tc,
    register_tree,
    run_checked,
    ssh_fields,
    timed,
)
from ..harness import Context, Target, alternate, pair_result
from .floor import floor_result
from .floor import measure as measure_floor
from .small_files import agent_side, process_side, rsync_ssh_side


def local_rsync_side(base: Path, src: Path, expected: dict[str, str], tag: str):  # type: ignore[no-untyped-def]
    """``rsync -a`` to a local dir, then md5sum of every copy."""

    def one(rep: int) -> Sample:
        dest = base / f"run-{tag}" / "remote"
        clear_dir(dest.parent)
        md5_cmd = f"cd {shlex.quote(str(dest))} && find . -type f -print0 | xargs -0 md5sum"

        def work() -> bytes:
            run_checked(["rsync", "-a", f"{src}/", f"{dest}/"], f"{tag}: rsync -a")
            return run_checked(["sh", "-c", md5_cmd], f"{tag}: md5sum").stdout

        seconds, out = timed(work)
        return Sample(seconds, check_md5sum_output(out.decode(), expected, f"{tag}: md5sum"))

    return one


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "large")
    size = (4 << 20) if ctx.quick else (256 << 20)
    src = base / "src"
    tc = now_tc()
    expected = make_tree(src, [(f"{tc}/ufm_mv5/{tc * 100_000 + i}_big.g3", size)
                               for i in range(4)])
    template = empty_catalog(base / "template.db")
    register_tree(template, src, ARCHIVE)
    # Warm the page cache with the source, for both sides alike.
    subprocess.run(["cat", *[str(src / rel) for rel in expected]], stdout=subprocess.DEVNULL,
                   check=True)
    server = ctx.server()
    floor, _ = measure_floor(ctx)
    flags = server.agent_flags()
    sides = {
        "ssh-agent": agent_side(ctx, base, template, expected, "ssh-agent", **ssh_fields(server)),
        "ssh-process": process_side(ctx, base, template, expected, "ssh-process", *flags),
        "ssh-rsync": rsync_ssh_side(ctx, base, src, expected, "ssh-rsync"),
        "local-agent": agent_side(ctx, base, template, expected, "local-agent"),
        "local-process": process_side(ctx, base, template, expected, "local-process"),
        "local-rsync": local_rsync_side(base, src, expected, "local-rsync"),
    }
    samples = alternate(list(sides.items()), ctx.reps, ctx.log)
    if ctx.profile_dir is not None:
        sides["ssh-agent"](0, profile=ctx.profile_dir / "large-files-ssh")
        sides["local-agent"](0, profile=ctx.profile_dir / "large-files-local")
    mib = size >> 20
    cache = "source warm in the page cache for both sides; copies land in the page cache"
    results = []
    for where, target in (("ssh", 0.75), ("local", 0.55)):
        name = f"4 x {mib} MiB, {where}"
        title = ("Large files over ssh" if where == "ssh" else "Large files to a local dir") \
            + f": 4 x {mib} MiB"
        key = f"large_{where}"
        results += [
            pair_result(f"large_files_{where}", "large", name, f"{title}, one iteration",
                        "agent iteration", samples[f"{where}-agent"], "rsync -a + md5sum",
                        samples[f"{where}-rsync"], Target("<=", target), ctx.quick,
                        notes=cache, floor=floor.text(key)),
            pair_result(f"large_files_{where}_process", "large", f"{name}, run --once",
                        f"{title}, one suprsync run --once process", "suprsync run --once",
                        samples[f"{where}-process"], "rsync -a + md5sum",
                        samples[f"{where}-rsync"], Target("<=", target), ctx.quick,
                        notes=cache, floor=floor.text(key)),
            floor_result(f"large_files_{where}_floor", "large", f"{name}: iteration / floor",
                         f"{title}: one iteration against the floor", "agent iteration",
                         samples[f"{where}-agent"], floor, key, ctx.quick),
            floor_result(f"large_files_{where}_process_floor", "large",
                         f"{name}: run --once / floor",
                         f"{title}: one suprsync run --once against the floor",
                         "suprsync run --once", samples[f"{where}-process"], floor, key,
                         ctx.quick),
        ]
    return results
