"""`recsvc keys create --name BACKEND --roles recommend,events`: make an API key for a caller.

stdout carries only the ``[[caller]]`` table, holding the key's SHA-256 and no key, to append to
the file named by ``security.api_keys_file`` (``recsvc keys create ... >> keys.toml``). The key is
shown once (it is stored nowhere): on stderr, or with ``--key-out FILE`` written to a new file
of mode 0600 and not shown at all. A role given twice is listed once.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from recsvc.cli.common import console, friendly_errors
from recsvc.security.auth import ROLES

app = typer.Typer(help="API key commands.", no_args_is_help=True)


def _roles(roles: str) -> list[str]:
    """The comma-separated roles in the order given, each once (a repeat is said on stderr)."""
    given = [r.strip() for r in roles.split(",") if r.strip()]
    unique = list(dict.fromkeys(given))
    repeated = sorted({r for r in given if given.count(r) > 1})
    if repeated:
        console.print(
            f"note: role(s) {', '.join(repeated)} given more than once; listed once", soft_wrap=True
        )
    return unique


def _write_key(path: Path, key: str) -> None:
    """``key`` into a new file ``path`` readable by its owner only; an existing file is refused
    (a key is never overwritten or appended to another)."""
    from recsvc.errors import ConfigError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            f"--key-out {path} exists; name a new file (a key is never written over another)",
            reason="KEY_FILE_EXISTS",
        ) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")


@app.command("create")
@friendly_errors
def create(
    name: str = typer.Option(..., "--name", help="The calling backend, e.g. mall-backend."),
    roles: str = typer.Option(
        ..., "--roles", help=f"Comma-separated, of: {', '.join(ROLES)}. A repeated role is listed once."
    ),
    key_out: Path | None = typer.Option(
        None,
        "--key-out",
        help="Write the key to this new file (mode 0600) instead of showing it on stderr.",
        dir_okay=False,
    ),
) -> None:
    """Create a new API key. stdout: only its \\[\\[caller]] entry, for `>> keys.toml`; the key: stderr
    (shown once) or --key-out FILE."""
    from pydantic import ValidationError

    from recsvc.errors import ConfigError
    from recsvc.security.auth import caller_toml, new_key

    role_list = _roles(roles)
    key = new_key()
    try:
        entry = caller_toml(name, role_list, key)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid caller: {problems}") from exc
    if key_out is not None:
        _write_key(key_out, key)
        console.print(
            f"API key for {name} written to {escape(str(key_out))} (mode 0600; recsvc keeps no copy)",
            soft_wrap=True,
        )
    else:
        console.print(
            f"API key for {name} (shown once, on stderr; give it to the caller's secret store, "
            "recsvc keeps no copy):",
            soft_wrap=True,
        )
        typer.echo(key, err=True)
    console.print("stdout: the entry to append to the API keys file (security.api_keys_file)", soft_wrap=True)
    # a leading blank line: appending to a file whose last line lacks its newline stays valid TOML
    typer.echo("\n" + entry, nl=False)
