"""`recsvc report ab` and `recsvc report campaign ID`: measured effect from the event log
(recsvc.experiments; docs/experiments.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from recsvc.cli.common import friendly_errors, setup_logging, state
from recsvc.errors import InvalidArgument

app = typer.Typer(help="A/B and campaign reports from the event log.", no_args_is_help=True)
out = Console()

_LOG_DIR = typer.Option(
    None, "--log-dir", help="The sink's Parquet log (default: events.log_dir).", file_okay=False
)
_SINCE = typer.Option(None, "--since", help="First day (YYYY-MM-DD, UTC) of the period; default: the start.")
_UNTIL = typer.Option(None, "--until", help="Last day (YYYY-MM-DD, UTC) of the period; default: today.")
_JSON = typer.Option(False, "--json", help="Print JSON instead of the table.")
_HTML = typer.Option(
    None, "--html", help="Also write a self-contained HTML page (with plots) here.", dir_okay=False
)
_MLFLOW = typer.Option(True, "--mlflow/--no-mlflow", help="Log the report to MLflow (metrics + the page).")


_KINDS = ("impression", "event", "decision")  # the sink's kind=<kind>/ folders


def _frames(ctx: typer.Context, log_dir: Path | None, since: str | None, until: str | None) -> Any:
    from recsvc.experiments.report import parse_day, read_log

    settings = state(ctx).settings()
    try:
        first, last = parse_day(since), parse_day(until)
    except ValueError as exc:
        raise InvalidArgument(f"--since/--until must be YYYY-MM-DD: {exc}", reason="INVALID_DATE") from None
    if first and last and first > last:
        raise InvalidArgument(f"--since {first} is after --until {last}", reason="INVALID_DATE")
    folder = Path(log_dir or settings.events.log_dir)
    # an empty report would read as "nothing happened"; a wrong folder (missing, or holding none
    # of the sink's kind=... folders) is the likelier story
    if not folder.is_dir() or not any((folder / f"kind={k}").is_dir() for k in _KINDS):
        where = "no event log at" if not folder.is_dir() else "no event log (no kind=... folders) in"
        raise InvalidArgument(
            f"{where} {folder} (the sink writes it: recsvc events sink; or give --log-dir)",
            reason="NO_EVENT_LOG",
        )
    return settings, read_log(folder, first, last)


def _emit(ctx: typer.Context, report: Any, as_json: bool, html_out: Path | None, mlflow: bool) -> None:
    """Print the report (and write, log it as asked); exit 1 after an empty one, which says why."""
    from recsvc.experiments import render

    settings = state(ctx).settings()
    if as_json:
        print(render.to_json(report))
    else:
        out.print(render.table(report))
    if html_out is not None or mlflow:
        page = render.to_html(report)
        if html_out is not None:
            html_out.parent.mkdir(parents=True, exist_ok=True)
            html_out.write_text(page, encoding="utf-8")
            if not as_json:
                out.print(f"page: {html_out}")
        if mlflow:
            run_id = render.log_to_mlflow(report, settings.mlflow, page)
            if not as_json:
                out.print(f"logged to MLflow: experiment {settings.mlflow.experiment!r}, run {run_id}")
    if report.empty:
        raise typer.Exit(code=1)  # nothing measured: a script must not take it for a result


@app.command("ab")
@friendly_errors
def ab(
    ctx: typer.Context,
    log_dir: Path | None = _LOG_DIR,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    as_json: bool = _JSON,
    html_out: Path | None = _HTML,
    mlflow: bool = _MLFLOW,
) -> None:
    """Per A/B variant: members, lists shown, click-through, conversion and revenue per member
    with 95% intervals, a sample-ratio-mismatch check and a verdict."""
    from recsvc.experiments.report import ab_report

    setup_logging(state(ctx).log_level)
    settings, frames = _frames(ctx, log_dir, since, until)
    shares = {v.name: v.share for v in settings.serving.variants} or None
    _emit(ctx, ab_report(frames, shares), as_json, html_out, mlflow)


@app.command("campaign")
@friendly_errors
def campaign(
    ctx: typer.Context,
    campaign_id: str = typer.Argument(..., help="The campaign_id the outreach calls named."),
    log_dir: Path | None = _LOG_DIR,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    window_days: float | None = typer.Option(
        None,
        "--window-days",
        min=0.01,
        # ten years: far beyond any campaign, and well inside what a timestamp can be shifted by
        max=3650,
        help="Purchases counted this long after the decision, 0.01..3650 days "
        "(default: events.attribution_window_s).",
    ),
    as_json: bool = _JSON,
    html_out: Path | None = _HTML,
    mlflow: bool = _MLFLOW,
) -> None:
    """Treatment (members reached) against holdout (held-out members who would have been
    reached): conversion and revenue within the window, uplift with its 95% interval, members
    reached and refusals by reason."""
    from recsvc.experiments.report import campaign_report
    from recsvc.idmap import check_id

    setup_logging(state(ctx).log_level)
    # the Outreach API's rule for a campaign_id: "" is no campaign (every send that named none)
    campaign_id = check_id(campaign_id, "campaign_id", state(ctx).settings().data.max_id_length)
    settings, frames = _frames(ctx, log_dir, since, until)
    window = window_days * 86400 if window_days else settings.events.attribution_window_s
    _emit(ctx, campaign_report(frames, campaign_id, window), as_json, html_out, mlflow)
