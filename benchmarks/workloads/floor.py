"""Workload 0: what this machine allows for the transfer workloads (their floor).

Measured with the bare tools on warm files, before the transfer workloads, each
the median of several runs, wall time and CPU time (this process's waited-for
children, plus what the loopback sshd's sessions used, from its cutime/cstime):

- ``ssh HOST true``: one ssh connection (handshake, login, exit);
- ``ssh HOST 'cat > /dev/null' < FILE``: the ssh stream, with ssh's default cipher
  (what the baselines use) and with the cipher suprsync offers first;
- ``md5sum FILE``: md5 on one core;
- ``sh -c 'cat FILE > COPY'``: writing a copy on this host;
- ``tar -c | ssh HOST 'tar -x && find | xargs md5sum'`` of 2,000 files of 16 KiB:
  creating and hashing many small files on the far side with bare tools;
- the cores this process may use.

For N bytes, "send them and have their md5 computed on the far side" takes at
least, over ssh:

- serial:     connect + N/stream + N/md5;
- overlapped: connect + max(N/stream, N/md5, N x (stream + write + md5 CPU per
  byte) / cores): hashing one part while the next is sent needs a free core, and
  on this loopback the stream itself keeps two processes busy (ssh encrypts, sshd
  decrypts), so with 2 cores the CPU the three need is the bound.

Locally the same with the write in place of the stream. The overlapped figure
is the floor of the large-file workloads; the tar pipeline, scaled to 2,000
files, is the floor of the small-file workload.
"""

from __future__ import annotations

import os
import resource
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import BenchmarkError, Sample, clear_dir, make_tree, run_checked, write_random_file
from ..harness import Context, Target, pair_result, value_result
from ..sshd import plain_ssh_argv

LARGE_FILES = 4
LARGE_SIZE = 256 << 20
SMALL_FILES = 2000
SMALL_SIZE = 16 << 10
MB = 1e6
#: How far above its floor a transfer may be.
FLOOR_TARGET = 1.5


@dataclass(frozen=True)
class Timing:
    """Median wall and CPU seconds of a command."""

    wall: float
    cpu: float


@dataclass(frozen=True)
class Floor:
    """This machine's rates and what they allow for each transfer workload."""

    cores: int
    size: int
    connect: Timing
    stream_default: Timing
    stream: Timing
    md5: Timing
    write: Timing
    small: Timing
    small_files: int

    def rate(self, t: Timing, connect: bool = False) -> float:
        """Bytes per second of a command over the floor's file (less the connection)."""
        return self.size / max(t.wall - (self.connect.wall if connect else 0.0), 1e-6)

    def cpu_per_byte(self, t: Timing, connect: bool = False) -> float:
        return max(t.cpu - (self.connect.cpu if connect else 0.0), 0.0) / self.size

    def models(self, workload: str) -> tuple[float, float]:
        """(serial, overlapped) seconds for the workload's bytes."""
        n = LARGE_FILES * LARGE_SIZE
        cpu_md5 = self.cpu_per_byte(self.md5)
        md5_s = n * cpu_md5  # md5sum is one thread: its CPU time is its core's time
        cpu_write = self.cpu_per_byte(self.write)
        if workload == "large_ssh":
            send_s = n / self.rate(self.stream, connect=True)
            cpu = n * (self.cpu_per_byte(self.stream, connect=True) + cpu_write + cpu_md5)
            start = self.connect.wall
        else:
            send_s = n / self.rate(self.write)
            cpu = n * (cpu_write + cpu_md5)
            start = 0.0
        return (start + send_s + md5_s, start + max(send_s, md5_s, cpu / self.cores))

    def seconds(self, workload: str) -> float:
        """The floor of a transfer workload (large_ssh, large_local, small_ssh), seconds."""
        if workload == "small_ssh":
            return self.small.wall * SMALL_FILES / self.small_files
        return self.models(workload)[1]

    def text(self, workload: str) -> str:
        """The floor column of a transfer record."""
        if workload == "small_ssh":
            return f"{self.seconds(workload):.2f} s (tar | ssh tar -x + md5sum)"
        serial, overlap = self.models(workload)
        return f"{overlap:.2f} s overlapped on {self.cores} cores (serial {serial:.2f} s)"


_measured: dict[int, tuple[Floor, list[dict[str, Any]]]] = {}


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _sshd_children_cpu(pid: int | None) -> float:
    """CPU seconds of the sshd's finished sessions (cutime + cstime of the daemon)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _wait_reaped(pid: int, limit: float = 5.0) -> None:
    """Wait until the sshd has reaped its sessions (their CPU is then in its cutime)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if not children.read_text().split():
                return
        except OSError:
            return
        time.sleep(0.01)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(argv: list[str], what: str, stdin_path: Path | None,
          sshd_pid: int | None) -> Timing:
    cpu0 = _children_cpu() + _sshd_children_cpu(sshd_pid)
    start = time.perf_counter()
    with (stdin_path.open("rb") if stdin_path else open(os.devnull, "rb")) as stdin:
        result = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=3600)
    wall = time.perf_counter() - start
    if sshd_pid is not None:
        _wait_reaped(sshd_pid)
    cpu = _children_cpu() + _sshd_children_cpu(sshd_pid) - cpu0
    if result.returncode != 0:
        raise BenchmarkError(f"{what} failed with exit {result.returncode}: "
                             f"{result.stderr.decode(errors='replace')[-800:]}")
    return Timing(wall, cpu)


def _median(ctx: Context, argv: list[str], what: str, reps: int,
            stdin_path: Path | None = None, sshd_pid: int | None = None) -> Timing:
    """Median wall and CPU time of ``reps`` runs of a command."""
    runs = [_once(argv, what, stdin_path, sshd_pid) for _ in range(reps)]
    t = Timing(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs))
    ctx.log(f"  {what}: {t.wall:.3f} s wall, {t.cpu:.3f} s CPU (median of {reps})")
    return t


def measure(ctx: Context) -> tuple[Floor, list[dict[str, Any]]]:
    """The floor, measured once per run (later calls return the same figures)."""
    if id(ctx) in _measured:
        return _measured[id(ctx)]
    from suprsync.transport.ssh import FAST_CIPHERS

    base = clear_dir(ctx.work / "floor")
    size = (8 << 20) if ctx.quick else LARGE_SIZE
    small_n = 200 if ctx.quick else SMALL_FILES
    reps = 1 if ctx.quick else max(3, ctx.reps)
    big, copy, small, small_copy = (base / "big", base / "copy", base / "small",
                                    base / "small-copy")
    write_random_file(big, size)
    make_tree(small, [(f"d{i % 4}/f{i:04d}", SMALL_SIZE) for i in range(small_n)])
    run_checked(["cat", str(big)], "warming the page cache")
    server = ctx.server()
    pid = server._proc.pid if getattr(server, "_proc", None) is not None else None
    ssh = [*plain_ssh_argv(server), server.destination]
    fast = [*plain_ssh_argv(server), "-o", f"Ciphers={FAST_CIPHERS}", server.destination]
    q = shlex.quote
    connect = _median(ctx, [*ssh, "true"], "ssh HOST true", reps, sshd_pid=pid)
    stream_default = _median(ctx, [*ssh, "cat > /dev/null"], "ssh HOST 'cat>/dev/null' < FILE",
                             reps, big, pid)
    stream = _median(ctx, [*fast, "cat > /dev/null"],
                     "ssh -o Ciphers=aes128-gcm... HOST 'cat>/dev/null' < FILE", reps, big, pid)
    md5 = _median(ctx, ["md5sum", str(big)], "md5sum FILE", reps)
    write = _median(ctx, ["sh", "-c", f"cat {q(str(big))} > {q(str(copy))}"],
                    "cat FILE > COPY", reps)
    unpack = (f"rm -rf {q(str(small_copy))} && mkdir {q(str(small_copy))} && "
              f"cd {q(str(small_copy))} && tar -xf - && "
              "find . -type f -print0 | xargs -0 md5sum > /dev/null")
    tar_argv = ["sh", "-c", f"tar -C {q(str(small))} -cf - . | "
                + " ".join(q(a) for a in [*ssh, unpack])]
    small_t = _median(ctx, tar_argv, f"tar -c {small_n} files | ssh HOST 'tar -x && md5sum'",
                      reps, sshd_pid=pid)
    copy.unlink(missing_ok=True)
    floor = Floor(cores(), size, connect, stream_default, stream, md5, write, small_t, small_n)
    _measured[id(ctx)] = (floor, _records(floor, ctx.quick))
    return _measured[id(ctx)]


def _records(f: Floor, quick: bool) -> list[dict[str, Any]]:
    def rate(rid: str, name: str, title: str, t: Timing, connect: bool = False) -> dict:
        cpu = f.cpu_per_byte(t, connect) * MB * 1000
        return value_result(rid, "floor", name, title, "MB/s", [f.rate(t, connect) / MB], None,
                            quick, floor=f"{cpu:.2f} CPU-ms per MB", use="median")

    gib = f"{LARGE_FILES} x {LARGE_SIZE >> 20} MiB"
    return [
        value_result("floor_cores", "floor", "floor: cores", "Cores this process may use",
                     "cores", [f.cores], None, quick, use="median"),
        value_result("floor_ssh_connect", "floor", "floor: ssh HOST true",
                     "One ssh connection to the loopback sshd (handshake, login, exit)", "s",
                     [f.connect.wall], None, quick, use="median",
                     floor=f"{f.connect.cpu:.2f} CPU-s"),
        rate("floor_ssh_stream_default", "floor: ssh stream, default cipher",
             "ssh HOST 'cat > /dev/null' < FILE, ssh's default cipher, connection excluded",
             f.stream_default, connect=True),
        rate("floor_ssh_stream", "floor: ssh stream, aes128-gcm",
             "ssh HOST 'cat > /dev/null' < FILE, the cipher suprsync offers first, "
             "connection excluded", f.stream, connect=True),
        value_result("floor_md5", "floor", "floor: md5sum, one core",
                     "md5sum of a file in the page cache: bytes per CPU second", "MB/s",
                     [1 / max(f.cpu_per_byte(f.md5), 1e-12) / MB], None, quick, use="median",
                     floor=f"{f.rate(f.md5) / MB:.0f} MB/s of wall time"),
        rate("floor_write", "floor: cat FILE > COPY", "Writing a copy on this host", f.write),
        value_result("floor_large_ssh", "floor", f"floor: {gib}, ssh",
                     "Send 1 GiB over ssh and md5 it on the far side, overlapped", "s",
                     [f.seconds("large_ssh")], None, quick, use="median",
                     floor=f.text("large_ssh")),
        value_result("floor_large_local", "floor", f"floor: {gib}, local",
                     "Copy 1 GiB on this host and md5 the copy, overlapped", "s",
                     [f.seconds("large_local")], None, quick, use="median",
                     floor=f.text("large_local")),
        value_result("floor_small_ssh", "floor", f"floor: {SMALL_FILES} x 16 KiB, ssh",
                     "tar -c | ssh HOST 'tar -x && find | xargs -0 md5sum'", "s",
                     [f.seconds("small_ssh")], None, quick, use="median",
                     floor=f.text("small_ssh")),
    ]


def floor_result(rid: str, workload: str, name: str, title: str, label: str,
                 samples: list[Sample], floor: Floor, key: str, quick: bool) -> dict[str, Any]:
    """A side's times against the workload's floor (its B side), target FLOOR_TARGET."""
    bound = [Sample(floor.seconds(key)) for _ in samples]
    return pair_result(rid, workload, name, title, label, samples, "floor", bound,
                       Target("<=", FLOOR_TARGET), quick, floor=floor.text(key),
                       notes="B is the floor measured by the floor workload")


def run(ctx: Context) -> list[dict[str, Any]]:
    return measure(ctx)[1]
