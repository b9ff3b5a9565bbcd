"""`recsvc demo`."""

from __future__ import annotations

import typer

from recsvc.cli.common import friendly_errors


@friendly_errors
def demo(ctx: typer.Context) -> None:
    """Not implemented yet."""
    raise typer.Exit(code=1)
