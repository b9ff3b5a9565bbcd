"""`recsvc load ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="load commands.", no_args_is_help=True)
