"""``suprsync retention``: what the retention policy would delete now, and why.

It walks the archive's local files oldest first through the deletion step's own
decisions (:func:`suprsync.deletion.plan_batch`) and deletes nothing. With several
destinations recorded for the archive, a file is shown deleted only when the
catalog shows it verified on ``--min-copies`` of them (default: all). Only the
remote check that precedes each real deletion is left out.
"""

from __future__ import annotations

from typing import Any

from .catalog.copies import registered
from .catalog.store import SupRsyncFilesManager
from .deletion import (
    CHUNK,
    CopyRule,
    CopyTarget,
    candidate_rows,
    catalog_copies,
    kept_newest,
    plan_batch,
    split_by_copies,
)
from .diskspace import DiskWatch
from .retention import MinFree, Policy


def _walk(manager: SupRsyncFilesManager, archive_name: str):  # type: ignore[no-untyped-def]
    after: tuple[float, int] | None = None
    while True:
        rows = manager.read(lambda s, a=after: candidate_rows(s, archive_name, a, None, CHUNK,
                                                              verified_only=False),
                            what="local files of the archive")
        if not rows:
            return
        after = (float(rows[-1].timestamp), rows[-1].id)
        yield rows


def copy_rule(manager: SupRsyncFilesManager, archive_name: str,
              min_copies: int | None) -> CopyRule | None:
    """The copies a file of the archive needs, from the destinations recorded for it
    (None: one destination, and no --min-copies asked)."""
    known = manager.read(lambda s: registered(s, archive_name), what="destinations")
    if len(known) <= 1 and min_copies is None:
        return None
    targets = tuple(CopyTarget(None if r.primary else r.key, r.name) for r in known)
    return CopyRule(min_copies or len(targets), targets)


def preview(manager: SupRsyncFilesManager, archive_name: str, policy: Policy,
            min_free: MinFree | None, now: float, limit: int = 1000,
            min_copies: int | None = None) -> dict[str, Any]:
    """What a deletion step would do now: the files it deletes and keeps (at most
    ``limit`` listed each; counts are exact), and the free space per file system.
    ``min_copies``: the agent's --min-copies (default: every recorded destination)."""
    rule = copy_rule(manager, archive_name, min_copies)
    elsewhere = rule.elsewhere if rule is not None else ()
    disks = DiskWatch(min_free)
    for rows in _walk(manager, archive_name):
        for row in rows:
            disks.device(row.local_path)
    need = disks.short()
    before = {dev: s.as_dict() for dev, s in disks.measure().items()}
    newest = kept_newest(manager, archive_name, policy, elsewhere)
    out: dict[str, Any] = {"archive": archive_name, "time": now,
                           "rules": [r.as_dict() for r in policy.rules],
                           "min_free": min_free.text if min_free else None,
                           "destinations": [t.name for t in rule.targets] if rule else None,
                           "min_copies": rule.min_copies if rule else None,
                           "filesystems": list(before.values()),
                           "delete": [], "keep": [],
                           "counts": {"delete": 0, "delete_bytes": 0, "delete_for_space": 0,
                                      "keep": 0}}
    counts = out["counts"]
    for rows in _walk(manager, archive_name):
        plan = plan_batch(manager, archive_name, rows, policy, now, newest, need, record=False,
                          elsewhere=elsewhere)
        if rule is not None and plan.delete:
            groups = {path: group for path, (group, _) in plan.delete.items()}
            good = manager.read(lambda s, g=groups: catalog_copies(
                s, [r for group in g.values() for r in group], rule), what="verified copies")
            for path, why in split_by_copies(groups, rule, good)[1]:
                del plan.delete[path]
                plan.kept.append((path, why))
        by_path = {r.local_path: r for r in rows}
        for path in plan.delete:
            verdict = plan.verdicts[path]
            counts["delete"] += 1
            counts["delete_bytes"] += plan.sizes.get(path, 0)
            counts["delete_for_space"] += verdict.for_space
            if len(out["delete"]) < limit:
                row = by_path[path]
                out["delete"].append({"local_path": path, "remote_path": row.remote_path,
                                      "id": row.id, "rule": verdict.rule,
                                      "age": now - float(row.timestamp),
                                      "bytes": plan.sizes.get(path, 0),
                                      "for_space": verdict.for_space,
                                      "reason": verdict.reason})
        for path, why in plan.kept:
            counts["keep"] += 1
            if len(out["keep"]) < limit:
                verdict = plan.verdicts.get(path)
                out["keep"].append({"local_path": path,
                                    "rule": verdict.rule if verdict else None,
                                    "reason": why})
    short = {dev: n for dev, n in need.items() if n > 0}
    out["still_short"] = [before[dev]["path"] for dev in short if dev in before]
    return out


def format_preview(result: dict[str, Any]) -> str:
    """The preview as text: file systems, then one line per file deleted or kept."""
    from .status import human_bytes

    lines = [f"archive {result['archive']}: rules "
             + "; ".join(f"{r['match']!r} delete_after {r['delete_after']}"
                         + (f" keep_newest {r['keep_newest']}" if r.get("keep_newest") else "")
                         for r in result["rules"])]
    for fs in result["filesystems"]:
        wanted = f", --min-free {human_bytes(fs['min_free'])}" if result["min_free"] else ""
        below = f", {human_bytes(fs['short'])} short" if fs["short"] else ""
        lines.append(f"file system {fs['path']}: {human_bytes(fs['free'])} free of "
                     f"{human_bytes(fs['total'])}{wanted}{below}")
    if result.get("destinations"):
        lines.append(f"destinations {', '.join(result['destinations'])}: a file goes once "
                     f"verified on {result['min_copies']} of them")
    counts = result["counts"]
    lines.append(f"would delete {counts['delete']} file(s), {human_bytes(counts['delete_bytes'])}"
                 f" ({counts['delete_for_space']} early for space); would keep {counts['keep']}")
    lines += [f"delete {d['local_path']}: {d['reason']}" for d in result["delete"]]
    lines += [f"keep   {k['local_path']}: {k['reason']}" for k in result["keep"]]
    for path in result["still_short"]:
        lines.append(f"file system {path} would stay below --min-free: only unverified or "
                     "protected files are left")
    return "\n".join(lines)
