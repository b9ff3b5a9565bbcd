"""A report as a terminal table, JSON, a self-contained HTML page (plots as base64 PNG) and an
MLflow run (metrics, and the page as an artifact, in the project's experiment beside the model
runs)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from recsvc.experiments.report import AbReport, CampaignReport
from recsvc.experiments.stats import Estimate
from recsvc.settings import MlflowSettings

Report = AbReport | CampaignReport


def _interval(e: Estimate, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    """``value unit [low, high]``; "–" for what cannot be computed (an interval alone too)."""
    if math.isnan(e.value):
        return "–"
    value = f"{e.value * scale:{fmt}}{unit}"
    if math.isnan(e.low) or math.isnan(e.high):
        return f"{value} [–]"
    return f"{value} [{e.low * scale:{fmt}}, {e.high * scale:{fmt}}]"


def _pct(e: Estimate) -> str:
    return _interval(e, ".2f", 100, "%")


def _money(e: Estimate) -> str:
    return _interval(e, ".2f")


def _pp(e: Estimate) -> str:
    return _interval(e, "+.2f", 100, " pp")


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3g}"


def table(report: Report) -> Group:
    if report.empty:
        return Group(Text(f"empty report: {report.empty_reason}", style="yellow"))
    if isinstance(report, AbReport):
        t = Table(title=f"A/B report, {report.period} (95% intervals)")
        for col in ("variant", "members", "lists shown", "click-through", "conversion", "revenue / member"):
            t.add_column(col, justify="left" if col == "variant" else "right")
        for v in report.variants:
            t.add_row(
                v.variant,
                f"{v.members:,}",
                f"{v.impressions:,}",
                _pct(v.ctr),
                _pct(v.conversion),
                _money(v.revenue_per_member),
            )
        diffs = [
            Text(
                f"{c.variant} - {c.baseline}: conversion {_pp(c.conversion_diff)} (p {_p(c.conversion_p)}); "
                f"revenue / member {_money(c.revenue_diff)} (p {_p(c.revenue_p)})"
            )
            for c in report.comparisons
        ]
        return Group(
            t,
            *diffs,
            Text(f"sample-ratio check p = {_p(report.srm_p)}"),
            Text(f"verdict: {report.verdict}", style="bold"),
        )
    t = Table(
        title=f"campaign {report.campaign}, {report.period}: purchases within {report.window_days:g} days"
    )
    for col in ("group", "members", "buyers", "conversion", "revenue / member"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in report.groups:
        t.add_row(
            g.group, f"{g.members:,}", f"{g.buyers:,}", _pct(g.conversion), _money(g.revenue_per_member)
        )
    refusals = ", ".join(f"{k} {v:,}" for k, v in report.refusals.items()) or "none"
    return Group(
        t,
        Text(
            f"audience {report.audience:,}; reached {report.reached:,}; held out {report.held_out:,}; "
            f"refused: {refusals}"
        ),
        Text(f"uplift: conversion {_pp(report.uplift)}; revenue / member {_money(report.revenue_uplift)}"),
        Text(f"verdict: {report.verdict}", style="bold"),
    )


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _bars(ax: Any, labels: list[str], estimates: list[Estimate], title: str, scale: float = 1.0) -> None:
    values = [0.0 if math.isnan(e.value) else e.value * scale for e in estimates]
    lows = [0.0 if math.isnan(e.low) else (e.value - e.low) * scale for e in estimates]
    highs = [0.0 if math.isnan(e.high) else (e.high - e.value) * scale for e in estimates]
    ax.bar(
        labels,
        values,
        yerr=[lows, highs],
        capsize=6,
        color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(labels)],
    )
    ax.set_title(title)


def plots(report: Report) -> list[str]:
    """PNG figures (base64) of the report; none for an empty report."""
    if report.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    if isinstance(report, AbReport):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        names = [v.variant for v in report.variants]
        _bars(axes[0], names, [v.ctr for v in report.variants], "click-through (%)", 100)
        _bars(axes[1], names, [v.conversion for v in report.variants], "conversion (%)", 100)
        _bars(axes[2], names, [v.revenue_per_member for v in report.variants], "revenue per member")
    else:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        names = [g.group for g in report.groups]
        _bars(axes[0], names, [g.conversion for g in report.groups], "conversion in window (%)", 100)
        _bars(axes[1], names, [g.revenue_per_member for g in report.groups], "revenue per member")
        reasons = list(report.refusals) or ["none"]
        axes[2].barh(reasons, [report.refusals.get(r, 0) for r in reasons], color="#8172b2")
        axes[2].set_title("refusals by reason")
    fig.tight_layout()
    figs.append(_png(fig))
    plt.close(fig)
    return figs


def _head(*names: str) -> str:
    return "<tr>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"


def to_html(report: Report) -> str:
    title = "A/B report" if isinstance(report, AbReport) else f"Campaign report: {report.campaign}"
    data = report.as_dict()
    rows = ""
    if isinstance(report, AbReport):
        head = _head("variant", "members", "lists shown", "click-through", "conversion", "revenue / member")
        for v in report.variants:
            rows += (
                f"<tr><td>{html.escape(v.variant)}</td><td>{v.members:,}</td><td>{v.impressions:,}</td>"
                f"<td>{_pct(v.ctr)}</td><td>{_pct(v.conversion)}</td><td>{_money(v.revenue_per_member)}</td></tr>"
            )
    else:
        head = _head("group", "members", "buyers", "conversion", "revenue / member")
        for g in report.groups:
            rows += (
                f"<tr><td>{g.group}</td><td>{g.members:,}</td><td>{g.buyers:,}</td>"
                f"<td>{_pct(g.conversion)}</td><td>{_money(g.revenue_per_member)}</td></tr>"
            )
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots(report))
    body = (
        f"<p class=verdict>{html.escape(report.empty_reason or report.verdict)}</p>"
        f"<table>{head}{rows}</table>{images}"
        f"<details><summary>JSON</summary><pre>{html.escape(json.dumps(data, indent=2))}</pre></details>"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        ".verdict{font-weight:bold}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(report.period)} · 95% intervals "
        "(docs/experiments.md)</p>"
        f"{body}</body></html>"
    )


def metrics_of(report: Report) -> dict[str, float]:
    out: dict[str, float] = {}

    def put(name: str, value: float) -> None:
        if not math.isnan(value):
            out[name] = float(value)

    if isinstance(report, AbReport):
        for v in report.variants:
            put(f"{v.variant}.members", v.members)
            put(f"{v.variant}.ctr", v.ctr.value)
            put(f"{v.variant}.conversion", v.conversion.value)
            put(f"{v.variant}.revenue_per_member", v.revenue_per_member.value)
        for c in report.comparisons:
            put(f"{c.variant}_vs_{c.baseline}.conversion_diff", c.conversion_diff.value)
            put(f"{c.variant}_vs_{c.baseline}.conversion_p", c.conversion_p)
        put("srm_p", report.srm_p)
    else:
        for g in report.groups:
            put(f"{g.group}.members", g.members)
            put(f"{g.group}.conversion", g.conversion.value)
            put(f"{g.group}.revenue_per_member", g.revenue_per_member.value)
        put("uplift", report.uplift.value)
        put("uplift_low", report.uplift.low)
        put("uplift_high", report.uplift.high)
        put("uplift_p", report.uplift_p)
        put("members_reached", report.reached)
    return out


def log_to_mlflow(report: Report, settings: MlflowSettings, page: str) -> str:
    """One MLflow run per report (tag ``recsvc.kind`` = report); its run id."""
    from training.tracking import client_for, ensure_experiment

    client = client_for(settings)
    experiment = ensure_experiment(client, settings)
    name = "report-ab" if isinstance(report, AbReport) else f"report-campaign-{report.campaign}"
    run = client.create_run(
        experiment, run_name=name, tags={"recsvc.kind": "report", "recsvc.period": report.period}
    )
    run_id = str(run.info.run_id)
    for key, value in metrics_of(report).items():
        client.log_metric(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.html").write_text(page, encoding="utf-8")
        (Path(tmp) / "report.json").write_text(to_json(report), encoding="utf-8")
        client.log_artifacts(run_id, tmp, artifact_path="report")
    client.set_terminated(run_id)
    return run_id
