"""Plots of a load test from its per-call timeline, for people who would rather look than read:
latency percentiles over time, throughput (answered and failed calls per second) and errors by
status code per second. Written as PNG files into ``<results>/plots/`` and embedded, with the
summary, in one self-contained page, ``<results>/report-plots.html`` (no external files)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from bench.timeline import OK, Samples

PLOTS = (
    ("latency", "Latency percentiles per second"),
    ("throughput", "Throughput: calls per second"),
    ("errors", "Failed calls per second, by status code"),
)


def per_second(samples: Samples) -> tuple[np.ndarray, np.ndarray]:
    """(second index since the start for each call, the seconds 0..last)."""
    sec = np.floor(samples.t - samples.started_at).astype(np.int64)
    sec = np.maximum(sec, 0)
    return sec, np.arange(int(sec.max()) + 1 if sec.shape[0] else 0)


def write_plots(samples: Samples, out_dir: Path, warmup_s: float = 0.0) -> list[Path]:
    """The three PNGs (see module doc) in ``out_dir``; the warm-up is shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    sec, seconds = per_second(samples)
    paths = []

    def finish(fig: Figure, ax: Axes, name: str, title: str, ylabel: str) -> None:
        if warmup_s > 0:
            ax.axvspan(0, warmup_s, color="grey", alpha=0.15, label="warm-up (not measured)")
        ax.set_title(title)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
        path = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for q in (50, 95, 99):
        values = [
            float(np.percentile(samples.ms[sec == s], q, method="inverted_cdf"))
            if (sec == s).any()
            else np.nan
            for s in seconds
        ]
        ax.plot(seconds, values, label=f"p{q}", marker=".", linewidth=1)
    finish(fig, ax, "latency", PLOTS[0][1], "ms")

    fig, ax = plt.subplots(figsize=(9, 3.6))
    ok = samples.code == OK
    ax.plot(seconds, np.bincount(sec[ok], minlength=seconds.shape[0]), label="answered", linewidth=1.5)
    ax.plot(seconds, np.bincount(sec[~ok], minlength=seconds.shape[0]), label="failed", linewidth=1.5)
    finish(fig, ax, "throughput", PLOTS[1][1], "calls / s")

    fig, ax = plt.subplots(figsize=(9, 3.6))
    codes = sorted(set(samples.code[~ok].tolist()))
    for code in codes:
        ax.plot(seconds, np.bincount(sec[samples.code == code], minlength=seconds.shape[0]), label=code)
    if not codes:
        ax.plot(seconds, np.zeros(seconds.shape[0]), label="no failures")
    finish(fig, ax, "errors", PLOTS[2][1], "calls / s")
    return paths


def write_html(summary_md: str, plots: list[Path], path: Path, title: str) -> Path:
    """One page: the plots (embedded as data URIs) above the summary (as preformatted text)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for png in plots:
        data = base64.b64encode(png.read_bytes()).decode()
        name = html.escape(png.stem)
        parts.append(f"<h2>{name}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append(f"<h2>summary</h2><pre>{html.escape(summary_md)}</pre></body></html>")
    path.write_text("\n".join(parts))
    return path
