"""The ``recsvc`` command. Each sub-command lives in its own module here and imports heavy
libraries (training, MLflow, FAISS) inside the command, so ``recsvc --help`` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from recsvc.cli import (
    apikeys,
    audit,
    catalog,
    data,
    demo,
    events,
    members,
    mlflow_ui,
    outreach,
    query,
    report,
    serve,
    train,
)
from recsvc.cli.common import AppState
from recsvc.settings import project_home


def _load_commands() -> typer.Typer:
    """The load-test and benchmark commands live beside the product (``bench/``, not installed):
    from a source checkout ``recsvc load`` is ``python -m bench``; elsewhere it says so."""
    # the checkout recsvc runs from (RECSVC_HOME may point elsewhere: it names the MLflow store)
    checkout = Path(__file__).resolve().parents[2]
    for home in (str(checkout), str(project_home())):
        if (Path(home) / "bench" / "cli.py").is_file() and home not in sys.path:
            sys.path.append(home)
            break
    try:
        from bench.cli import app as bench_app
    except ModuleNotFoundError:
        missing = typer.Typer(help="Load tests and benchmarks (from a source checkout only).")

        @missing.callback(invoke_without_command=True)
        def _absent() -> None:
            typer.echo("load tests and benchmarks run from a recsvc source checkout (python -m bench)")
            raise typer.Exit(code=2)

        return missing
    return bench_app


app = typer.Typer(
    name="recsvc",
    help="Personalized recommendations and an outreach throttle for retail member programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="TOML settings file (else RECSVC_CONFIG; env RECSVC_* overrides it).",
        exists=False,
        dir_okay=False,
    ),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(
            f"{log_level!r} is none of DEBUG, INFO, WARNING, ERROR", param_hint="--log-level"
        )
    ctx.obj = AppState(config_file=config, log_level=log_level.upper())


app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("serve")(serve.serve)
app.add_typer(query.app, name="query")
app.add_typer(outreach.app, name="outreach")
app.add_typer(members.app, name="members")
app.add_typer(_load_commands(), name="load")
app.command("demo")(demo.demo)
app.command("mlflow-ui")(mlflow_ui.mlflow_ui)
app.add_typer(audit.app, name="audit")
app.add_typer(apikeys.app, name="keys")
app.add_typer(catalog.app, name="catalog")
app.add_typer(events.app, name="events")
app.add_typer(report.app, name="report")


def main() -> None:
    app()
