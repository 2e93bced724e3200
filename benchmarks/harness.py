"""Side-by-side measurement, result records, the table and machine information."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Sample

#: A side of a comparison: called with the repetition number, returns its sample.
RunFn = Callable[[int], Sample]


@dataclass(frozen=True)
class Target:
    """A pass condition on a ratio or a value: ``op`` is '<=', '<' or '>='."""

    op: str
    value: float

    def holds(self, x: float) -> bool:
        return {"<=": x <= self.value, "<": x < self.value, ">=": x >= self.value}[self.op]

    def text(self) -> str:
        return f"{self.op} {self.value:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "value": self.value}


@dataclass
class Context:
    """What every workload gets from the runner."""

    work: Path
    reps: int
    quick: bool
    profile_dir: Path | None
    log: Callable[[str], None]
    sshd: Any = None  # SshServer, started on first use

    def server(self):  # type: ignore[no-untyped-def]
        """The loopback sshd, started on first use (stopped by the runner)."""
        if self.sshd is None:
            from .sshd import start_sshd

            self.sshd = start_sshd(self.work / "sshd", log_level="INFO")
        return self.sshd


def alternate(sides: Sequence[tuple[str, RunFn]], reps: int,
              log: Callable[[str], None]) -> dict[str, list[Sample]]:
    """Run the sides in turn, A B (C ...) A B ..., ``reps`` times; their samples."""
    samples: dict[str, list[Sample]] = {name: [] for name, _ in sides}
    for rep in range(reps):
        for name, fn in sides:
            load = os.getloadavg()[0]
            sample = fn(rep)
            sample.loadavg = load
            samples[name].append(sample)
            log(f"  rep {rep + 1}/{reps} {name}: {sample.seconds:.3f} s (load {load:.1f})")
    return samples


def summary(values: Sequence[float]) -> dict[str, Any]:
    """median, min, max and the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "samples": list(values)}


def pair_result(rid: str, workload: str, name: str, title: str, a_label: str,
                a: Sequence[Sample], b_label: str, b: Sequence[Sample], target: Target | None,
                quick: bool, notes: str = "", floor: str = "") -> dict[str, Any]:
    """The record of one A/B comparison; the ratio is A/B.

    ``name`` is the short name shown in the table, ``title`` the full description,
    ``floor`` what this machine allows for the work (shown beside the result).
    """
    sa = summary([s.seconds for s in a])
    sb = summary([s.seconds for s in b])
    ratio = {"median": sa["median"] / sb["median"], "min": sa["min"] / sb["min"],
             "max": sa["max"] / sb["max"]}
    passed = None if quick or target is None else target.holds(ratio["median"])
    return {
        "id": rid, "workload": workload, "kind": "ratio", "name": name, "title": title,
        "a": {"label": a_label, "unit": "s", **sa, "checked_files": sum(s.checked for s in a),
              "loadavg_1m": [s.loadavg for s in a]},
        "b": {"label": b_label, "unit": "s", **sb, "checked_files": sum(s.checked for s in b),
              "loadavg_1m": [s.loadavg for s in b]},
        "ratio": ratio,
        "target": target.as_dict() if target else None,
        "pass": passed,
        "status": _status(passed, quick, target),
        "reps": len(a),
        "verified": True,
        "notes": notes,
        "floor": floor,
    }


def value_result(rid: str, workload: str, name: str, title: str, unit: str,
                 values: Sequence[float], target: Target | None, quick: bool, notes: str = "",
                 use: str = "max", floor: str = "") -> dict[str, Any]:
    """The record of a measured value (judged on its max, or median, against the target)."""
    s = summary(values)
    passed = None if quick or target is None else target.holds(s[use])
    return {"id": rid, "workload": workload, "kind": "value", "name": name, "title": title,
            "unit": unit,
            **s, "judged_on": use, "target": target.as_dict() if target else None,
            "pass": passed, "status": _status(passed, quick, target), "reps": len(values),
            "notes": notes, "floor": floor}


def _status(passed: bool | None, quick: bool, target: Target | None) -> str:
    if target is None:
        return "info"
    if quick:
        return "n/a (quick)"
    return "PASS" if passed else "FAIL"


def _fmt_s(d: dict[str, Any]) -> str:
    return f"{d['median']:.3f} ({d['min']:.3f}-{d['max']:.3f})"


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (readable as plain text too)."""
    head = ["benchmark", "A", "B", "A s: median (min-max)", "B s: median (min-max)",
            "A/B: median (min, max)", "target", "result", "floor"]
    rows = [head]
    for r in results:
        target = f"{r['target']['op']} {r['target']['value']:g}" if r["target"] else "-"
        if r["kind"] == "ratio":
            q = r["ratio"]
            rows.append([r["name"], r["a"]["label"], r["b"]["label"], _fmt_s(r["a"]),
                         _fmt_s(r["b"]), f"{q['median']:.2f} ({q['min']:.2f}, {q['max']:.2f})",
                         target, r["status"], r.get("floor", "")])
        else:
            value = (f"{r[r['judged_on']]:.1f} {r['unit']} ({r['judged_on']}; "
                     f"median {r['median']:.1f})")
            rows.append([r["name"], "agent process", "-", value, "-", "-",
                         target + (f" {r['unit']}" if r["target"] else ""), r["status"],
                         r.get("floor", "")])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def _disk(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        usage = shutil.disk_usage(path)
        info["free_gib"] = round(usage.free / (1 << 30), 1)
        info["size_gib"] = round(usage.total / (1 << 30), 1)
    except OSError:
        pass
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)],
                             capture_output=True, text=True, timeout=10).stdout.split()
        if len(out) >= 2:
            info["device"], info["fstype"] = out[0], out[1]
            dev = Path(out[0]).name
            rot = Path(f"/sys/block/{dev}/queue/rotational")
            if rot.exists():
                info["rotational"] = rot.read_text().strip() == "1"
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def source_state() -> dict[str, Any]:
    """The commit of the checkout and the files of src/ that differ from it."""
    from .common import REPO

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "src_changes": [line.strip() for line in changed.splitlines()]}


def machine_info(work: Path) -> dict[str, Any]:
    """The machine and tool versions, recorded with the results."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": round(_mem_total_gib() or 0, 1),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "rsync": _first_line(["rsync", "--version"]),
        "ssh": _first_line(["ssh", "-V"]),
        "sqlite": __import__("sqlite3").sqlite_version,
        "workdir": str(work),
        "disk": _disk(work),
        "loadavg_start": os.getloadavg(),
    }
