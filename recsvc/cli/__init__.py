"""The ``recsvc`` command. Each sub-command lives in its own module here and imports heavy
libraries (training, MLflow, FAISS) inside the command, so ``recsvc --help`` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

from recsvc.cli import audit, data, demo, events, keys, load, mlflow_ui, outreach, query, report, serve, train
from recsvc.cli.common import AppState

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
    ctx.obj = AppState(config_file=config, log_level=log_level.upper())


app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("serve")(serve.serve)
app.add_typer(query.app, name="query")
app.add_typer(outreach.app, name="outreach")
app.add_typer(load.app, name="load")
app.command("demo")(demo.demo)
app.command("mlflow-ui")(mlflow_ui.mlflow_ui)
app.add_typer(audit.app, name="audit")
app.add_typer(keys.app, name="keys")
app.add_typer(events.app, name="events")
app.add_typer(report.app, name="report")


def main() -> None:
    app()
