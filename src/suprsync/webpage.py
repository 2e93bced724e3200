"""The status page of a running agent as HTML: the data of pagedata.PageSource in, text out.

Every figure is in the HTML itself (readable with curl), every value taken from the
catalog or the log is escaped (file names are untrusted), and the page refreshes
itself. Its one style sheet is served from the package (static/status.css).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any

from .status import human_age, human_bytes

#: Seconds between the page's own reloads.
REFRESH_SECONDS = 10
#: Seconds of one timecode (a timecode dir holds the files of this many seconds).
TIMECODE_SECONDS = 100_000
STYLESHEET = "/static/status.css"


def esc(value: Any) -> str:
    """Text for HTML, with every markup character escaped."""
    return html.escape(str(value), quote=True)


def utc(t: float | None) -> str:
    """A Unix time as 'YYYY-MM-DD HH:MM:SS UTC' ('-' for none)."""
    if t is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))
    except (OverflowError, ValueError, OSError, TypeError):
        return esc(t)


def when(t: float | None, now: float) -> str:
    """A time and how long ago it was, as HTML."""
    if t is None:
        return "-"
    try:
        ago = human_age(max(0.0, now - float(t)))
    except (TypeError, ValueError):
        return esc(t)
    return f'<time datetime="{esc(utc(t))}">{esc(utc(t))}</time> ({esc(ago)} ago)'


def _table(cls: str, head: Iterable[str], rows: Iterable[Iterable[str]], empty: str) -> str:
    """A table of already-escaped cells; ``empty`` (text) when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        return f'<p class="none">{esc(empty)}</p>'
    heads = "".join(f"<th>{esc(h)}</th>" for h in head)
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{heads}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _figures(pairs: Iterable[tuple[str, str, str]]) -> str:
    """A list of (id, label, HTML value) figures."""
    items = "".join(f'<div class="figure"><dt>{esc(label)}</dt>'
                    f'<dd id="{esc(key)}">{value}</dd></div>' for key, label, value in pairs)
    return f'<dl class="figures">{items}</dl>'


def state_of(view: dict[str, Any]) -> tuple[str, str]:
    """(css class, words) of the archive's overall state."""
    stats = view.get("stats") or {}
    if view.get("degraded") or (view.get("catalog") is None and view.get("catalog_error")):
        return "bad", "catalog unavailable"
    if view.get("failing") or view.get("conflicts") or view.get("quarantined_count"):
        return "bad", "out of sync"
    if stats.get("uncopied_files"):
        return "busy", "syncing"
    if not stats:
        return "busy", "starting"
    return "good", "up to date"


def _summary(view: dict[str, Any]) -> str:
    now = view["now"]
    stats = view.get("stats") or {}
    catalog = view.get("catalog")
    rate = view["throughput"]
    last = view["last_copy"]
    backlog_bytes = "-"
    if catalog is not None:
        backlog_bytes = human_bytes(catalog["waiting_bytes"])
        if catalog["waiting_scanned"] >= catalog["scan_limit"]:
            backlog_bytes = (f"at least {backlog_bytes} (the oldest "
                             f"{catalog['scan_limit']} files)")
    speed = "-" if rate["rate"] is None else human_bytes(rate["rate"]) + "/s"
    verified = rate["last_verified"]
    finalized_until = stats.get("finalized_until")
    lag = "-" if finalized_until is None else human_age(max(0.0, now - finalized_until))
    last_step = "-"
    if last.get("stop_time") is not None:
        done = (f"{last['verified']} of {last['files']} files verified" if last["files"]
                else "nothing to copy")
        last_step = f"{when(last['stop_time'], now)}: {done}"
        if last.get("error"):
            last_step += f" ({esc(last['error'])})"
    counters = view.get("counters") or {}
    errors = sum(v for k, v in counters.items() if k.startswith("errors_"))
    return _figures([
        ("backlog-files", "backlog (files)", esc(stats.get("uncopied_files", "-"))),
        ("backlog-bytes", "backlog (bytes)", esc(backlog_bytes)),
        ("registered", "registered files", esc(stats.get("num_files", "-"))),
        ("rate", f"transfer rate (last {rate['window'] / 60:.0f} min)",
         esc(speed) + f" &middot; {rate['files']} files, {esc(human_bytes(rate['bytes']))}"),
        ("last-copy", "last file verified",
         "-" if verified is None else
         f'{when(verified["time"], now)}<br><span class="path">'
         f"{esc(stats.get('last_file_copied') or '')}</span>"),
        ("last-step", "last copy step", last_step),
        ("finalized-until", "finalized until", when(finalized_until, now)),
        ("lag", "finalized_until lag", esc(lag)),
        ("failing-count", "failing files", esc(len(view["failing"]))),
        ("conflicts", "conflicts", esc(view.get("conflicts", 0))),
        ("quarantined-count", "quarantined rows", esc(view.get("quarantined_count", 0))),
        ("errors", "errors this run", esc(errors)),
        ("iterations", "iterations", esc(counters.get("iterations", 0))),
        ("activity", "activity", esc(view.get("activity") or "-")),
    ])


def _failing(view: dict[str, Any]) -> str:
    now = view["now"]
    catalog = view.get("catalog")
    limit = view.get("max_copy_attempts")
    rows = []
    for f in view["failing"]:
        attempts = "?" if f.get("attempts") is None else str(f["attempts"])
        if limit and f.get("attempts") is not None and f["attempts"] >= limit:
            attempts += " (limit reached: retry with suprsync retry-failed)"
        reason = ("not seen by this run (see the log)" if f.get("reason") is None
                  else f["reason"])
        rows.append([esc(f["local_path"]), esc(attempts), f'<span class="reason">{esc(reason)}'
                     f"</span><br><small>{when(f.get('reason_time'), now)}</small>"
                     if f.get("reason_time") else esc(reason)])
    note = ""
    if catalog is not None and catalog["waiting_scanned"] >= catalog["scan_limit"]:
        note = (f'<p class="note">Among the oldest {catalog["scan_limit"]} waiting files; '
                f"<code>suprsync list</code> shows them all.</p>")
    return _table("failing", ["file", "failed attempts", "reason"], rows,
                  "No file is failing.") + note


def _conflicts(view: dict[str, Any]) -> str:
    catalog = view.get("catalog")
    listed = [] if catalog is None else catalog["conflicts"]
    rows = [[esc(c["local_path"]), esc(c["remote_path"]), esc(c["kind"]), esc(c["detail"]),
             esc(utc(c["since"]))] for c in listed]
    more = view.get("conflicts", 0) - len(listed)
    note = (f'<p class="note">{more} more; <code>suprsync resolve</code> lists and resolves '
            "them.</p>" if more > 0 and catalog is not None else "")
    return _table("conflicts", ["file", "remote path", "kind", "detail", "since"], rows,
                  "No conflict." if not view.get("conflicts") else
                  "Conflicts cannot be listed without the catalog.") + note


def _quarantined(view: dict[str, Any]) -> str:
    rows = [[esc(q["id"]), esc(q["reason"])] for q in view.get("quarantined", [])]
    more = view.get("quarantined_count", 0) - len(rows)
    note = (f'<p class="note">{more} more; <code>suprsync status</code> lists them.</p>'
            if more > 0 else "")
    return _table("quarantined", ["file id", "reason"], rows,
                  "No quarantined row found by this run.") + note


def _dirs(view: dict[str, Any]) -> str:
    catalog = view.get("catalog")
    if catalog is None:
        return (_notices(view) +
                '<p class="none">Timecode dirs cannot be listed without the catalog.</p>')
    counts = catalog["timecode_dirs"]
    now = view["now"]
    head = _figures([(f"dirs-{k}", f"{k}", esc(counts[k]))
                     for k in ("open", "completed", "finalized")])
    rows = []
    for d in catalog["recent_dirs"]:
        state = "finalized" if d["finalized"] else "completed" if d["completed"] else "open"
        start = d["timecode"] * TIMECODE_SECONDS
        rows.append([esc(d["timecode"]), esc(utc(start)) + " &ndash; " +
                     esc(utc(start + TIMECODE_SECONDS)),
                     f'<span class="state {state}">{state}</span>',
                     when(d["finalized_at"], now) if d["finalized"] else "-",
                     esc(d["finalization_file"] or "-")])
    return head + _notices(view) + _table("dirs", ["timecode", "covers", "state", "finalized",
                                                   "finalization file"], rows,
                                           "No timecode dir yet.")


def _notices(view: dict[str, Any]) -> str:
    """The --on-finalize / --on-finalize-url notices, when the agent sends them."""
    notices = view.get("notices")
    if not notices:
        return ""
    failures = notices.get("failures") or {}
    return _figures([
        ("notices-delivered", "finalization notices delivered", esc(notices.get("delivered"))),
        ("notices-pending", "notices pending", esc(notices.get("pending"))),
        ("notices-failed", "failed notice attempts",
         esc(", ".join(f"{k} {v}" for k, v in sorted(failures.items())) or "0")),
        ("notices-error", "last notice error", esc(notices.get("last_error") or "-")),
    ])


def _anomalies(view: dict[str, Any]) -> str:
    found = view.get("anomalies") or {}
    lines = [f"Timecode dir {esc(tc)} is dated in the future; it completes nothing."
             for tc in found.get("future_timecode_dirs", [])]
    lines += [f"{esc(f.get('local_path'))} was registered into timecode dir "
              f"{esc(f.get('timecode'))} after its finalization file."
              for f in found.get("late_files", [])]
    if found.get("clock_in_doubt"):
        lines.append("The clock is in doubt: no dir is completed by age and no "
                     "finalization file is written.")
    for fs in view.get("disk_pressure", []):
        lines.append(f"Disk pressure: {esc(fs.get('path'))} has "
                     f"{esc(human_bytes(fs.get('free', 0)))} free, below --min-free.")
    if not lines:
        return ""
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f'<section id="anomalies"><h2>Anomalies</h2><ul class="warn">{items}</ul></section>'


def _events(view: dict[str, Any]) -> str:
    now = view["now"]
    rows = [[when(e["time"], now), f'<span class="kind {esc(e["level"])}">{esc(e["kind"])}'
             "</span>" + (f' <span class="count">&times;{e["count"]}</span>'
                          if e.get("count", 1) > 1 else ""),
             esc(e["file"] or ""), esc(e["message"])] for e in view["events"]]
    return _table("events", ["time", "kind", "file", "message"], rows,
                  "No notable event since the agent started.")


def render(view: dict[str, Any]) -> str:
    """The whole page."""
    cls, words = state_of(view)
    now = view["now"]
    banner = ""
    if view.get("catalog") is None or view.get("catalog_error"):
        why = view.get("catalog_error") or "no answer yet"
        banner = (f'<p class="banner" id="catalog-error">The catalog could not be read '
                  f"({esc(why)}): this page shows what the agent knows from this run"
                  + ("; the catalog figures below were read "
                     f"{esc(human_age(view.get('catalog_age') or 0))} ago"
                     if view.get("catalog") is not None else "")
                  + ".</p>")
    elif view.get("degraded"):
        banner = ('<p class="banner" id="catalog-error">The agent cannot read or write the '
                  "catalog: it is retrying.</p>")
    title = f"suprsync: {view['archive']} ({words})"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>{esc(title)}</title>
<link rel="stylesheet" href="{STYLESHEET}">
</head>
<body>
<header>
<h1>suprsync <span class="state {cls}" id="state">{esc(words)}</span></h1>
<p>Archive <strong id="archive">{esc(view['archive'])}</strong> &rarr;
<span id="destination">{esc(view['destination'])}</span>
&middot; agent {esc(view['instance_id'])}</p>
</header>
{banner}
<main>
<section id="summary"><h2>Overview</h2>{_summary(view)}</section>
<section id="failing"><h2>Failing files</h2>{_failing(view)}</section>
{_anomalies(view)}
<section id="conflicts-list"><h2>Conflicts</h2>{_conflicts(view)}</section>
<section id="quarantine"><h2>Quarantined rows</h2>{_quarantined(view)}</section>
<section id="timecode-dirs"><h2>Timecode dirs</h2>{_dirs(view)}</section>
<section id="events"><h2>Last {len(view['events'])} notable events</h2>{_events(view)}</section>
</main>
<footer><p>Read-only. Made {esc(utc(now))}; reloads every {REFRESH_SECONDS} s.
Also: <a href="/status">/status</a> (JSON), <a href="/metrics">/metrics</a>
(Prometheus).</p></footer>
</body>
</html>
"""
