"""`recsvc serve`: the gRPC recommendation service (and outreach, when installed)."""

from __future__ import annotations

from typing import Any

import typer

from recsvc.cli.common import friendly_errors, setup_logging, state


@friendly_errors
def serve(
    ctx: typer.Context,
    workers: int | None = typer.Option(None, "--workers", "-w", help="Server processes on one port."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default from settings)."),
    port: int | None = typer.Option(None, "--port", "-p", help="Port (0 = any free port)."),
    model_uri: str | None = typer.Option(
        None, "--model-uri", help="models:/<name>@<alias> or a bundle directory."
    ),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Prometheus port (0 = off)."),
) -> None:
    """Serve recommendations over gRPC until SIGTERM/SIGINT (health, reflection, metrics)."""
    from recsvc.server.runner import serve_processes

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    serving: dict[str, Any] = {
        k: v
        for k, v in {
            "workers": workers,
            "host": host,
            "port": port,
            "model_uri": model_uri,
            "metrics_port": metrics_port,
        }.items()
        if v is not None
    }
    settings = app_state.settings({"serving": serving} if serving else None)
    serve_processes(settings, app_state.log_level)
