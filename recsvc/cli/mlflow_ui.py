"""`recsvc mlflow-ui`: the MLflow UI on the project's own store, from any folder.

The store is the one training writes to: ``mlflow.tracking_uri`` from the settings, whose default
lives under the project home (``recsvc.settings.project_home``), or with ``--demo`` the store
``recsvc demo`` (``make run``) wrote."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer

from recsvc.cli.common import console, friendly_errors, state
from recsvc.errors import ConfigError
from recsvc.settings import project_home


def demo_workdir() -> Path:
    """Where ``recsvc demo`` keeps its data, MLflow store and bundles by default."""
    return project_home() / "var" / "demo"


def demo_store_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir.resolve() / 'mlflow' / 'mlflow.db'}"


def ui_command(store_uri: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store_uri,
        "--registry-store-uri",
        store_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]


@friendly_errors
def mlflow_ui(
    ctx: typer.Context,
    demo: bool = typer.Option(False, "--demo", help="The store `make run` (recsvc demo) wrote."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the UI binds."),
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port of the UI."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command instead of running it."),
) -> None:
    """Open the MLflow UI (runs, metrics, plots, registered versions and aliases) on the
    project's store, whatever the current folder. Ctrl-C stops it."""
    settings = state(ctx).settings()
    if demo:
        store = demo_store_uri(demo_workdir())
    else:
        store = settings.mlflow.registry_uri or settings.mlflow.tracking_uri
    if not store.startswith("sqlite:///") and "://" in store:
        # A tracking server already has a UI: nothing to start here.
        typer.echo(f"the tracking store is a server: open {store} in a browser")
        return
    if store.startswith("sqlite:///"):
        db = Path(store.removeprefix("sqlite:///"))
        if not db.exists() and not dry_run:
            hint = "run `make run` first" if demo else "train a model first (`recsvc train`, or `make run`)"
            raise ConfigError(f"no MLflow store at {db}: {hint}")
    cmd = ui_command(store, host, port)
    if dry_run:
        typer.echo(shlex.join(cmd))
        return
    console.print(f"MLflow UI on http://{host}:{port} (store: {store}); Ctrl-C stops it", highlight=False)
    # Become the UI process: Ctrl-C and SIGTERM reach it (and its web server) directly.
    os.execv(cmd[0], cmd)
