"""`recsvc data validate` and `recsvc data generate` (docs/data.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from recsvc.cli.common import ENCODING_OPTION, MAPPING_OPTION, friendly_errors, setup_logging, state

app = typer.Typer(
    help="Check a data folder against the data contract, or generate realistic sample data.",
    no_args_is_help=True,
)
out = Console()


@app.command("validate")
@friendly_errors
def validate(
    ctx: typer.Context,
    data_dir: Path | None = typer.Argument(
        None,
        help="Folder with catalog, members and events (.parquet, .csv or .csv.gz). Default: data.data_dir.",
    ),
    quarantine_dir: Path | None = typer.Option(
        None,
        "--quarantine-dir",
        "-q",
        help="Where quarantined rows (one CSV per table, one reason per row) and summary.json go. "
        "Default: DATA_DIR/quarantine.",
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any row was quarantined."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
    mapping: Path | None = MAPPING_OPTION,
    encoding: str | None = ENCODING_OPTION,
    report: Path | None = typer.Option(
        None,
        "--report",
        help="Also write a self-contained HTML report (counts, reasons with examples and fixes, "
        "distributions) to send to the data owner.",
        dir_okay=False,
    ),
) -> None:
    """Check every row of a data folder against the data contract.

    Bad rows go to quarantine files with their primary reason and every problem they have, and
    are counted in a summary. A file with wrong columns, no header or bytes that are not valid in
    its encoding stops with a message naming the problem (exit 2).
    """
    from pipelines.mapping import load_mapping
    from pipelines.validate import QUARANTINE_DIRNAME, validate_dir

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    settings = app_state.settings()
    # "~/data" quoted (or from a script) reaches here unexpanded: expand it once, for every path
    data_dir, quarantine_dir, report, mapping = (
        _expand(p) for p in (data_dir, quarantine_dir, report, mapping)
    )
    folder = data_dir or settings.data.data_dir
    result = validate_dir(folder, settings.data, encoding=encoding, mapping=load_mapping(mapping))
    target = quarantine_dir or folder / QUARANTINE_DIRNAME
    result.write(target)
    if report is not None:
        from pipelines.report import write_report

        write_report(result, report)
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_validation(summary, target)
    if strict and result.rows_quarantined:
        raise typer.Exit(code=1)


def _expand(path: Path | None) -> Path | None:
    """``path`` with a leading ``~`` expanded (a quoted "~/x" reaches the command as typed)."""
    return path.expanduser() if path is not None else None


def _print_validation(summary: dict[str, Any], target: Path) -> None:
    table = Table(title=f"Data contract check of {summary['data_dir']}")
    for col in ("table", "encoding", "rows read", "clean", "quarantined", "reasons"):
        left = col in ("table", "encoding", "reasons")
        # an encoding wrapped over two lines ("utf-8-" / "sig") reads as another one
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "encoding")
    for name, t in summary["tables"].items():
        reasons = ", ".join(f"{k}={v}" for k, v in t["reasons"].items()) or "-"
        table.add_row(
            name,
            _encoding(t),
            f"{t['rows_read']:,}",
            f"{t['rows_clean']:,}",
            f"{t['rows_quarantined']:,}",
            reasons,
        )
    out.print(table)
    for name, t in summary["tables"].items():
        # What changes what training sees without quarantining a row (identical dates-only rows
        # kept as repeat events): shown where the counts are read, not only in the log.
        for note in t.get("notes", []):
            out.print(f"{name}: note: {note}", soft_wrap=True, markup=False)
        for reason, entry in list(t.get("problems", {}).items())[:10]:
            example = entry["examples"][0] if entry["examples"] else ""
            line = f"{name}: {reason} x{entry['rows']:,} (e.g. {example}) -> {entry['fix']}"
            out.print(line, soft_wrap=True, markup=False)
    out.print(f"quarantine files and summary.json written to {target}")


def _encoding(t: dict[str, Any]) -> str:
    """A CSV file's encoding as read (detected, or named with --encoding), "parquet" for a
    Parquet file, "-" for a table with no file (members implied by the events)."""
    if t.get("encoding"):
        return str(t["encoding"])
    return "parquet" if t.get("file") is not None else "-"


@app.command("generate")
@friendly_errors
def generate(
    ctx: typer.Context,
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Folder to write. Default: data.data_dir."),
    members: int = typer.Option(20_000, "--members", "-n", min=20, help="Number of members."),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Same seed and options, same data."),
    products: int | None = typer.Option(
        None, "--products", help="Products (default scales with members: 5,000 at 20k members)."
    ),
    content: int | None = typer.Option(None, "--content", help="Content items (default products / 10)."),
    events_per_member: float = typer.Option(50.0, "--events-per-member", help="Average events per member."),
    taste_groups: int = typer.Option(
        24, "--taste-groups", help="Latent taste groups members and items share."
    ),
    history_days: int = typer.Option(365, "--history-days", help="Days of history up to --end."),
    end: str = typer.Option(
        "2026-11-01T00:00:00Z",
        "--end",
        help="Last instant of history (ISO-8601, UTC). Fixed for reproducibility.",
    ),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    bad_event_share: float = typer.Option(
        0.0, "--bad-event-share", help="Share of events corrupted on purpose to demo quarantine (0 to 0.2)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a folder that is not empty: replaces its catalog, members and events "
        "(a table in the other format is removed). Without it such a folder is refused.",
    ),
) -> None:
    """Write a realistic retail data folder (deterministic for a seed).

    Writes catalog, members and events, plus truth/ with the planted structure and
    generation.json, into a new or empty folder (--overwrite to write over one that is not).
    docs/data.md explains what is planted and every parameter.
    """
    from pydantic import ValidationError

    from pipelines.generate import GeneratorParams
    from pipelines.generate import generate as run_generator
    from recsvc.errors import InvalidArgument

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    if fmt not in ("parquet", "csv"):
        raise InvalidArgument(f"--format must be parquet or csv, got {fmt!r}")
    try:
        params = GeneratorParams(
            members=members,
            seed=seed,
            products=products,
            content=content,
            events_per_member=events_per_member,
            taste_groups=taste_groups,
            history_days=history_days,
            end=end,  # type: ignore[arg-type]  # pydantic parses the ISO string
            bad_event_share=bad_event_share,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidArgument(f"invalid generator options: {problems}") from exc
    folder = _expand(out_dir) or app_state.settings().data.data_dir
    report = run_generator(params, folder, "csv" if fmt == "csv" else "parquet", overwrite=overwrite)
    rows = report.rows
    out.print(
        f"generated {rows['members']:,} members, {params.n_products:,} products, "
        f"{params.n_content:,} content items and {rows['events']:,} events (seed {params.seed}) "
        f"in {report.seconds:.1f}s -> {folder}"
    )
    if report.planted_bad_events:
        planted = ", ".join(f"{k}={v}" for k, v in sorted(report.planted_bad_events.items()))
        out.print(f"planted bad events on purpose: {planted}")
