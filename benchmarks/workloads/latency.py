"""Workload 5: a slow, distant link.

A delaying TCP proxy (benchmarks/delay_proxy.py, 50 ms each way, no bandwidth
limit) sits in front of the loopback sshd. 200 files of 1 MiB, registered once.
A: one ``Agent.iterate()`` with ``--parallel 4`` and a shared ssh connection (the
default). B: the same agent with ``--parallel 1 --no-ssh-reuse-connection``.
"""

from __future__ import annotations

from typing import Any

from ..common import (
    ARCHIVE,
    clear_dir,
    empty_catalog,
    make_tree,
    now_tc,
    register_tree,
    ssh_fields,
)
from ..delay_proxy import start_proxy, stop_proxy
from ..harness import Context, Target, alternate, pair_result
from .small_files import agent_side

DELAY = 0.05


def run(ctx: Context) -> list[dict[str, Any]]:
    base = clear_dir(ctx.work / "latency")
    n, size = (20, 64 << 10) if ctx.quick else (200, 1 << 20)
    src = base / "src"
    tc = now_tc()
    expected = make_tree(src, [(f"{tc}/ufm_mv5/{tc * 100_000 + i}_{i:03d}.g3", size)
                               for i in range(n)])
    template = empty_catalog(base / "template.db")
    register_tree(template, src, ARCHIVE)
    server = ctx.server()
    proxy, port = start_proxy(server.port, DELAY)
    try:
        known_hosts = base / "known_hosts"
        known_hosts.write_text(server.known_hosts_line(port))
        ssh = ssh_fields(server, port=port, known_hosts=known_hosts)
        fast = agent_side(ctx, base, template, expected, "parallel4-shared", **ssh,
                          parallel=4, ssh_reuse_connection=True)
        slow = agent_side(ctx, base, template, expected, "parallel1-separate", **ssh,
                          parallel=1, ssh_reuse_connection=False)
        samples = alternate([("parallel4", fast), ("parallel1", slow)], ctx.reps, ctx.log)
        if ctx.profile_dir is not None:
            fast(0, profile=ctx.profile_dir / "latency-parallel4")
            slow(0, profile=ctx.profile_dir / "latency-parallel1")
    finally:
        stop_proxy(proxy)
    size_text = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
    return [pair_result(
        "latency_parallel", "latency", f"{n} x {size_text}, 50 ms link",
        f"Distant link (50 ms each way): {n} x {size_text} over ssh, one iteration",
        "--parallel 4, shared ssh", samples["parallel4"],
        "--parallel 1, no reuse", samples["parallel1"], Target("<=", 0.5),
        ctx.quick, notes="TCP proxy delaying every chunk 50 ms each way, no bandwidth limit")]
