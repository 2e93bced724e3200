"""Profiles of the suprsync side of a workload (``--profile DIR``).

``Profiled(prefix)`` runs cProfile on the calling thread and, at the same time,
samples the stacks of every thread every few milliseconds (wall clock), since
the copy pipeline does its work in rsync/verify worker threads that cProfile does
not see. It writes:

- ``<prefix>.prof``: cProfile data of the calling thread (``python -m pstats``);
- ``<prefix>.txt``: the cProfile summary (top by cumulative and by own time),
  then, for each thread group, the functions that were on the stack in most
  samples (inclusive wall time) and where the threads were (leaf frames);
- ``<prefix>.folded``: the sampled stacks in collapsed form (flamegraph input).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType, TracebackType

INTERVAL = 0.005
#: Threads whose Python leaf frame is one of these are idle (an executor worker waiting
#: for work) and are left out of the samples.
IDLE_LEAVES = {("thread.py", "_worker")}
#: Thread groups that are idle while their leaf frame is in threading.py (waiting).
IDLE_WAITERS = {"lease-renewer"}


def _key(frame: FrameType) -> str:
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}({code.co_name})"


def _group(name: str) -> str:
    return name.rstrip("0123456789").rstrip("_-") or name


class WallSampler:
    """Samples every thread's Python stack at a fixed interval."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.inclusive: dict[str, Counter[str]] = defaultdict(Counter)
        self.leaf: dict[str, Counter[str]] = defaultdict(Counter)
        self.samples: Counter[str] = Counter()
        self.folded: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wall-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                code = frame.f_code
                leaf_file = os.path.basename(code.co_filename)
                if (leaf_file, code.co_name) in IDLE_LEAVES:
                    continue
                group = _group(names.get(ident, "?"))
                if group in IDLE_WAITERS and leaf_file == "threading.py":
                    continue
                stack = []
                f: FrameType | None = frame
                while f is not None:
                    stack.append(_key(f))
                    f = f.f_back
                self.samples[group] += 1
                self.leaf[group][stack[0]] += 1
                for key in set(stack):
                    self.inclusive[group][key] += 1
                self.folded[group + ";" + ";".join(reversed(stack))] += 1

    def report(self, top: int = 30) -> str:
        out = io.StringIO()
        out.write(f"wall-clock samples every {self.interval * 1000:.0f} ms, all threads "
                  f"(idle pool workers and idle lease renewers left out)\n")
        for group, total in self.samples.most_common():
            out.write(f"\n== thread group {group!r}: {total} samples "
                      f"(~{total * self.interval:.2f} s)\n")
            out.write("   inclusive (on the stack):\n")
            for key, n in self.inclusive[group].most_common(top):
                out.write(f"   {100 * n / total:6.1f}%  {key}\n")
            out.write("   leaf (where the thread was):\n")
            for key, n in self.leaf[group].most_common(12):
                out.write(f"   {100 * n / total:6.1f}%  {key}\n")
        return out.getvalue()


class Profiled:
    """Context manager: cProfile of this thread plus wall-clock sampling of all threads."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.profile = cProfile.Profile()
        self.sampler = WallSampler()
        self.start = 0.0

    def __enter__(self) -> Profiled:
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.sampler.start()
        self.start = time.perf_counter()
        self.profile.enable()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.profile.disable()
        elapsed = time.perf_counter() - self.start
        self.sampler.stop()
        self.profile.dump_stats(str(self.prefix) + ".prof")
        text = io.StringIO()
        text.write(f"profiled run: {elapsed:.3f} s wall (with profiler overhead)\n\n")
        stats = pstats.Stats(self.profile, stream=text)
        stats.strip_dirs().sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        text.write("\n")
        text.write(self.sampler.report())
        Path(str(self.prefix) + ".txt").write_text(text.getvalue())
        Path(str(self.prefix) + ".folded").write_text(
            "".join(f"{stack} {n}\n" for stack, n in self.sampler.folded.most_common()))


def pstats_summary(prof_file: Path, out_file: Path, top: int = 40) -> None:
    """Write the text summary of a .prof file written by ``python -m cProfile -o``."""
    text = io.StringIO()
    stats = pstats.Stats(str(prof_file), stream=text)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(25)
    out_file.write_text(text.getvalue())
