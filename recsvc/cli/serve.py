"""`recsvc serve`."""

from __future__ import annotations

import typer

from recsvc.cli.common import friendly_errors


@friendly_errors
def serve(ctx: typer.Context) -> None:
    """Not implemented yet."""
    raise typer.Exit(code=1)
