"""`recsvc outreach ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="outreach commands.", no_args_is_help=True)
