"""Workload 2: many small files over ssh to the loopback sshd.

2,000 files of 16 KiB in 4 timecode dirs, registered once (untimed; the catalog
is copied for each repetition). A: one ``Agent.iterate()`` over ssh (every
option at its default, --files-per-batch unset): mkdir, rsync, md5sum on the
remote, catalog updates, stats, timecode dirs (three dirs get finalized).
B: ``rsync -a`` of the same tree over ssh with the same key, port and
known_hosts, to a fresh remote dir, then one ssh call running md5sum on every
copied file. Both destinations are emptied before each repetition.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..common import (
    ARCHIVE,
    Sample,
    agent_config,
    check_catalog_synced,
    check_md5sum_output,
    check_tree,
    clear_dir,
    copy_catalog,
    empty_catalog,
    make_tree,
    now_tc,
    register_tree,
    run_agent_iteration,
    run_checked,
    setup_agent_logging,
    ssh_fields,
    timed,
)
from ..harness import Context, Target, alternate, pair_result
from ..sshd import plain_ssh_argv, plain_ssh_shell
from .floor import floor_result
from .floor import measure as measure_floor

SIZE = 16 << 10


def layout(n_files: int, size: int, n_dirs: int = 4) -> list[tuple[str, int]]:
    """n_files spread over n_dirs timecode dirs ending with today's."""
    tc = now_tc()
    per_dir = n_files // n_dirs
    return [(f"{tc - n_dirs + 1 + d}/ufm_mv5/{(tc - n_dirs + 1 + d) * 100_000 + i}_{i:03d}.g3",
             size) for d in range(n_dirs) for i in range(per_dir)]


def agent_side(ctx: Context, base: Path, template: Path, expected: dict[str, str], tag: str,
               **config: Any):  # type: ignore[no-untyped-def]
    """A side that runs one agent iteration on a fresh copy of the catalog."""

    def one(rep: int, profile: Path | None = None) -> Sample:
        run_dir = clear_dir(base / f"run-{tag}")
        dest = run_dir / "remote"
        db = copy_catalog(template, run_dir / "catalog.db")
        setup_agent_logging(run_dir / "agent.log")
        cfg = agent_config(db, dest, run_dir / "suprsync-files", **config)
        seconds = run_agent_iteration(cfg, profile=profile)
        checked = check_tree(dest, expected, f"{tag}: agent copies")
        check_catalog_synced(db, expected, f"{tag}: catalog")
        return Sample(seconds, checked)

    return one


def process_side(ctx: Context, base: Path, template: Path, expected: dict[str, str], tag: str,
                 *flags: str):  # type: ignore[no-untyped-def]
    """A side that runs one whole ``suprsync run --once`` process on a fresh catalog copy.

    Timed from the fork to the exit: interpreter start-up, imports, engine,
    schema check, the iteration and closing the shared ssh connection.
    """
    from .pending import run_once

    def one(rep: int) -> Sample:
        run_dir = clear_dir(base / f"run-{tag}")
        dest = run_dir / "remote"
        db = copy_catalog(template, run_dir / "catalog.db")
        seconds, _ = run_once(run_dir, db, dest, *flags)
        checked = check_tree(dest, expected, f"{tag}: copies")
        check_catalog_synced(db, expected, f"{tag}: catalog")
        return Sample(seconds, checked)

    return one


def rsync_ssh_side(ctx: Context, base: Path, src: Path, expected: dict[str, str], tag: str,
                   port: int | None = None, known_hosts: Path | None = None):  # type: ignore[no-untyped-def]
    """``rsync -a`` over plain ssh, then md5sum of every copy in one ssh call."""
    server = ctx.server()

    def one(rep: int) -> Sample:
        dest = base / f"run-{tag}" / "remote"
        clear_dir(dest.parent)
        shell = plain_ssh_shell(server, port, known_hosts)
        md5_cmd = f"cd {shlex.quote(str(dest))} && find . -type f -print0 | xargs -0 md5sum"

        def work() -> bytes:
            run_checked(["rsync", "-a", "-e", shell, f"{src}/", f"{server.destination}:{dest}/"],
                        f"{tag}: rsync -a")
            return run_checked([*plain_ssh_argv(server, port, known_hosts), server.destination,
                                md5_cmd], f"{tag}: remote md5sum").stdout

        seconds, out = timed(work)
        checked = check_md5sum_output(out.decode(), expected, f"{tag}: md5sum")
        return Sample(seconds, checked)

    return one


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "small")
    n = 200 if ctx.quick else 2000
    src = base / "src"
    expected = make_tree(src, layout(n, SIZE))
    template = empty_catalog(base / "template.db")
    added = register_tree(template, src, ARCHIVE)
    ctx.log(f"  {added} files of {SIZE >> 10} KiB registered")
    server = ctx.server()
    floor, _ = measure_floor(ctx)
    agent = agent_side(ctx, base, template, expected, "agent", **ssh_fields(server))
    process = process_side(ctx, base, template, expected, "process", *server.agent_flags())
    bare = rsync_ssh_side(ctx, base, src, expected, "rsync")
    samples = alternate([("agent", agent), ("process", process), ("rsync", bare)], ctx.reps,
                        ctx.log)
    if ctx.profile_dir is not None:
        agent(0, profile=ctx.profile_dir / "small-files-ssh")
    name = f"{n} x 16 KiB, ssh"
    title = f"Many small files over ssh: {n} x 16 KiB in 4 timecode dirs"
    notes = "verification included on both sides; registration not timed"
    return [
        pair_result("small_files_ssh", "small", name, f"{title}, one iteration",
                    "agent iteration", samples["agent"], "rsync -a + md5sum", samples["rsync"],
                    Target("<=", 1.15), ctx.quick, notes=notes, floor=floor.text("small_ssh")),
        pair_result("small_files_ssh_process", "small", f"{name}, run --once",
                    f"{title}, one suprsync run --once process",
                    "suprsync run --once", samples["process"], "rsync -a + md5sum",
                    samples["rsync"], Target("<=", 1.0), ctx.quick, notes=notes,
                    floor=floor.text("small_ssh")),
        floor_result("small_files_ssh_floor", "small", f"{name}: iteration / floor",
                     f"{title}: one iteration against the floor", "agent iteration",
                     samples["agent"], floor, "small_ssh", ctx.quick),
        floor_result("small_files_ssh_process_floor", "small", f"{name}: run --once / floor",
                     f"{title}: one suprsync run --once against the floor",
                     "suprsync run --once", samples["process"], floor, "small_ssh", ctx.quick),
    ]
