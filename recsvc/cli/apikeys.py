"""`recsvc keys create --name BACKEND --roles recommend,events`: make an API key for a caller.

Prints the key once (it is stored nowhere) and the ``[[caller]]`` table, holding only the key's
SHA-256, to add to the file named by ``security.api_keys_file``.
"""

from __future__ import annotations

import typer

from recsvc.cli.common import console, friendly_errors
from recsvc.security.auth import ROLES

app = typer.Typer(help="API key commands.", no_args_is_help=True)


@app.command("create")
@friendly_errors
def create(
    name: str = typer.Option(..., "--name", help="The calling backend, e.g. mall-backend."),
    roles: str = typer.Option(..., "--roles", help=f"Comma-separated, of: {', '.join(ROLES)}."),
) -> None:
    """Create a new API key and print it with its secrets-file entry."""
    from pydantic import ValidationError

    from recsvc.errors import ConfigError
    from recsvc.security.auth import caller_toml, new_key

    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    key = new_key()
    try:
        entry = caller_toml(name, role_list, key)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid caller: {problems}") from exc
    console.print("API key (shown once; give it to the caller, store it in their secret manager):")
    typer.echo(key)
    console.print("Add to the API keys file (security.api_keys_file):")
    typer.echo(entry)
