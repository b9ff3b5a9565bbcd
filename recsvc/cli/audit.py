"""`recsvc audit verify [PATH]`: check the tamper-evident audit log's hash chain."""

from __future__ import annotations

import errno
from pathlib import Path

import typer

from recsvc.cli.common import friendly_errors, state

app = typer.Typer(help="Audit log commands.", no_args_is_help=True)


@app.command("verify")
@friendly_errors
def verify(
    ctx: typer.Context,
    path: Path | None = typer.Argument(None, help="Audit log to check (default: security.audit_log)."),
    head: Path | None = typer.Option(
        None,
        "--head",
        help="Check the log's end against this copy of its head file (e.g. one kept "
        "off this host) instead of <log>.head.",
    ),
) -> None:
    """Report every edited, reordered, inserted or removed entry, and a missing head; exit 1 if any.
    A log (or a --head copy) that does not exist is not tampering: exit 2, naming the file."""
    from recsvc.security.audit import verify as verify_log

    target = path or state(ctx).settings().security.audit_log
    for given, what in ((target, "audit log"), (head, "head copy")):
        if given is not None and not given.exists():
            # never written here, deleted, or a wrong path: verify vouches for nothing, but an
            # operator must look for the file, not for an intruder
            raise FileNotFoundError(errno.ENOENT, f"{what} not found", str(given))
    result = verify_log(target, head_path=head)
    if result.ok:
        typer.echo(f"ok: {result.entries} entries, hash chain intact ({target})")
        return
    for problem in result.problems:
        typer.secho(f"tampered {target}: {problem}", fg="red", err=True)  # one line, never wrapped
    raise typer.Exit(code=1)
