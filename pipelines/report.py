"""The validation report: one self-contained HTML page an engineer sends to the data owner.

``recsvc data validate DIR --report out.html`` writes it: counts per table, the quarantine reasons
with examples and the fix for each, and the distributions of clean events per member, per item,
per day and per channel as inline SVG (no scripts, no external files, opens anywhere).
"""

from __future__ import annotations

import html
from itertools import pairwise
from pathlib import Path

import numpy as np

from pipelines.validate import ValidationResult

_W, _H = 640, 180


def write_report(result: ValidationResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(result), encoding="utf-8")
    return path


def render(result: ValidationResult) -> str:
    summary = result.summary()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>recsvc data report: {_e(summary['data_dir'])}</title>",
        "<style>body{font:14px sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.n{text-align:right}"
        "code{background:#f4f4f4}</style></head><body>",
        f"<h1>Data report: {_e(summary['data_dir'])}</h1>",
        f"<p>checked at {_e(summary['checked_at'])}; {summary['rows_quarantined']:,} rows quarantined.</p>",
        "<h2>Counts</h2><table><tr><th>table</th><th>file</th><th>encoding</th><th>rows read</th>"
        "<th>clean</th><th>quarantined</th><th>share</th></tr>",
    ]
    for name, t in summary["tables"].items():
        share = t["rows_quarantined"] / t["rows_read"] if t["rows_read"] else 0.0
        parts.append(
            f"<tr><td>{_e(name)}</td><td>{_e(t['file'] or '(none: members from the events)')}</td>"
            f"<td>{_e(t['encoding'] or '')}</td><td class=n>{t['rows_read']:,}</td>"
            f"<td class=n>{t['rows_clean']:,}</td><td class=n>{t['rows_quarantined']:,}</td>"
            f"<td class=n>{share:.1%}</td></tr>"
        )
    parts.append("</table><h2>Problems</h2>")
    parts.append(
        "<p>Every problem a quarantined row has (a row may have several; it is counted once per "
        "problem here, and once under its first problem in the counts above).</p>"
    )
    any_problem = False
    for name, t in summary["tables"].items():
        if not t["problems"]:
            continue
        any_problem = True
        parts.append(
            f"<h3>{_e(name)}</h3><table><tr><th>problem</th><th>rows</th><th>examples</th><th>fix</th></tr>"
        )
        for reason, entry in t["problems"].items():
            examples = "<br>".join(f"<code>{_e(x)}</code>" for x in entry["examples"])
            parts.append(
                f"<tr><td>{_e(reason)}</td><td class=n>{entry['rows']:,}</td><td>{examples}</td>"
                f"<td>{_e(entry['fix'])}</td></tr>"
            )
        parts.append("</table>")
    if not any_problem:
        parts.append("<p>No row was quarantined.</p>")
    events = result.events
    parts.append("<h2>Clean events</h2>")
    if len(events):
        per_member = events.groupby("member_id", observed=True).size().to_numpy()
        per_item = events.groupby("item_id", observed=True).size().to_numpy()
        per_day = events["ts"].dt.floor("D").value_counts().sort_index()
        per_channel = events["channel"].astype(str).value_counts()
        per_type = events["event_type"].astype(str).value_counts()
        parts += [
            _figure("Events per member", _histogram(per_member), _stats(per_member)),
            _figure("Events per item", _histogram(per_item), _stats(per_item)),
            _figure(
                "Events per day",
                _bars([f"{d:%Y-%m-%d}" for d in per_day.index], per_day.to_numpy(), labels=False),
                f"{per_day.index.min():%Y-%m-%d} to {per_day.index.max():%Y-%m-%d}, {len(per_day)} days",
            ),
            _figure("Events per channel", _bars(list(per_channel.index), per_channel.to_numpy()), ""),
            _figure("Events per type", _bars(list(per_type.index), per_type.to_numpy()), ""),
        ]
    else:
        parts.append("<p>No clean events.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value))


def _stats(values: np.ndarray) -> str:
    q = np.percentile(values, [50, 90, 99])
    return f"{len(values):,} with events; median {q[0]:g}, p90 {q[1]:g}, p99 {q[2]:g}, max {values.max():,}"


def _figure(title: str, svg: str, caption: str) -> str:
    return f"<h3>{_e(title)}</h3>{svg}<p>{_e(caption)}</p>"


def _histogram(values: np.ndarray) -> str:
    """Counts in log2 bins: 1, 2-3, 4-7, ... (activity is long-tailed)."""
    top = int(np.ceil(np.log2(max(int(values.max()), 1) + 1)))
    edges = [2**i for i in range(top + 1)]
    counts = np.histogram(values, bins=edges)[0]  # 2**top > max: the last bin holds the largest
    labels = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in pairwise(edges)]
    return _bars(labels, counts)


def _bars(names: list[str], values: np.ndarray, labels: bool = True) -> str:
    """An inline SVG bar chart; each bar's title holds its name and value (hover)."""
    n = max(len(values), 1)
    top = max(float(np.max(values)) if len(values) else 0.0, 1.0)
    width = _W / n
    bars = []
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        h = (_H - 30) * float(value) / top
        x = i * width
        bars.append(
            f"<rect x='{x + 1:.1f}' y='{_H - 20 - h:.1f}' width='{max(width - 2, 1):.1f}' height='{h:.1f}' "
            f"fill='#4a7ab5'><title>{_e(name)}: {int(value):,}</title></rect>"
        )
        if labels:
            bars.append(
                f"<text x='{x + width / 2:.1f}' y='{_H - 6}' font-size='10' "
                f"text-anchor='middle'>{_e(name)}</text>"
            )
    axis = f"<text x='2' y='10' font-size='10'>max {int(top):,}</text>"
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}'>{axis}{''.join(bars)}</svg>"
