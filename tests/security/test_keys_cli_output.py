"""`recsvc keys create`: stdout carries only the ``[[caller]]`` entry (so ``>> keys.toml`` works),
the key goes to stderr or to a new 0600 file with ``--key-out``, and a repeated role is listed once."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from recsvc.cli import app
from recsvc.security.auth import KEY_PREFIX, KeyStore, hash_key, read_keys_file

runner = CliRunner()  # click >= 8.2: result.stdout and result.stderr are kept apart


def _key_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(KEY_PREFIX)]


def test_stdout_is_only_the_toml_entry_and_the_key_on_stderr_authenticates(tmp_path: Path) -> None:
    out = runner.invoke(app, ["keys", "create", "--name", "mall-backend", "--roles", "recommend,events"])
    assert out.exit_code == 0, out.output
    keys = _key_lines(out.stderr)
    assert len(keys) == 1
    key = keys[0]
    assert key not in out.stdout and KEY_PREFIX not in out.stdout
    parsed = tomllib.loads(out.stdout)
    assert list(parsed) == ["caller"] and len(parsed["caller"]) == 1
    assert parsed["caller"][0] == {
        "name": "mall-backend",
        "roles": ["recommend", "events"],
        "key_sha256": hash_key(key),
    }
    assert "shown once" in out.stderr
    # what `recsvc keys create ... >> keys.toml` does, twice, onto a file without a final newline
    path = tmp_path / "keys.toml"
    path.write_text('[[caller]]\nname = "pos"\nroles = ["events"]\nkey_sha256 = "' + "0" * 64 + '"')
    second = runner.invoke(app, ["keys", "create", "--name", "crm", "--roles", "members"])
    assert second.exit_code == 0, second.output
    with path.open("a") as fh:
        fh.write(out.stdout)
        fh.write(second.stdout)
    store = KeyStore(read_keys_file(path))
    assert len(store) == 3
    caller = store.authenticate(key)
    assert caller.name == "mall-backend" and caller.roles == {"recommend", "events"}
    assert store.authenticate(_key_lines(second.stderr)[0]).name == "crm"


def test_a_repeated_role_is_listed_once(tmp_path: Path) -> None:
    out = runner.invoke(
        app, ["keys", "create", "--name", "inv", "--roles", "catalog, catalog,events,catalog"]
    )
    assert out.exit_code == 0, out.output
    assert tomllib.loads(out.stdout)["caller"][0]["roles"] == ["catalog", "events"]
    assert "catalog given more than once" in out.stderr
    path = tmp_path / "keys.toml"
    path.write_text(out.stdout)
    assert KeyStore(read_keys_file(path)).authenticate(_key_lines(out.stderr)[0]).roles == {
        "catalog",
        "events",
    }


def test_key_out_writes_the_key_to_a_new_owner_only_file(tmp_path: Path) -> None:
    key_file = tmp_path / "pos.key"
    out = runner.invoke(
        app, ["keys", "create", "--name", "pos", "--roles", "events", "--key-out", str(key_file)]
    )
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key.startswith(KEY_PREFIX)
    assert key not in out.stdout and key not in out.stderr
    path = tmp_path / "keys.toml"
    path.write_text(out.stdout)
    assert KeyStore(read_keys_file(path)).authenticate(key).name == "pos"
    # never written over an existing key
    again = runner.invoke(
        app, ["keys", "create", "--name", "pos2", "--roles", "events", "--key-out", str(key_file)]
    )
    assert again.exit_code == 2
    assert "KEY_FILE_EXISTS" in again.stderr and again.stdout == ""
    assert key_file.read_text().strip() == key


def test_a_refused_role_prints_no_entry_and_no_key() -> None:
    out = runner.invoke(app, ["keys", "create", "--name", "x", "--roles", "recommend,root"])
    assert out.exit_code == 2
    assert out.stdout == "" and not _key_lines(out.stderr)
