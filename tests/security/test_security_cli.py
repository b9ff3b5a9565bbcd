"""`recsvc keys create` and `recsvc audit verify` end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsvc.cli import app
from recsvc.security.audit import AuditLog
from recsvc.security.auth import read_keys_file
from recsvc.security.privacy import Pseudonymizer

runner = CliRunner()


def test_keys_create_prints_key_once_and_a_loadable_entry(tmp_path: Path) -> None:
    out = runner.invoke(app, ["keys", "create", "--name", "mall-backend", "--roles", "recommend,events"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()  # the TOML on stdout, the key on stderr
    key = next(line for line in lines if line.startswith("rsk_"))
    entry = "\n".join(lines[lines.index("[[caller]]") :])
    assert key not in entry
    path = tmp_path / "callers.toml"
    path.write_text(entry)
    from recsvc.security.auth import KeyStore

    caller = KeyStore(read_keys_file(path)).authenticate(key)
    assert caller.name == "mall-backend" and caller.roles == {"recommend", "events"}


def test_keys_create_rejects_unknown_role() -> None:
    out = runner.invoke(app, ["keys", "create", "--name", "x", "--roles", "recommend,root"])
    assert out.exit_code == 2
    assert "roles" in out.output


def test_audit_verify_ok_then_tampered(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, Pseudonymizer("test-pseudonym-key-0123"))
    for v in ("1", "2", "3"):
        audit.append("model_promotion", version=v)
    ok = runner.invoke(app, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and "3 entries" in ok.stdout
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"version": "3"', '"version": "4"')
    path.write_text("".join(lines))
    bad = runner.invoke(app, ["audit", "verify", str(path)])
    assert bad.exit_code == 1
    assert "line 3" in bad.output and "edited" in bad.output


def test_audit_verify_default_path_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.log"
    AuditLog(path).append("model_promotion", version="1")
    monkeypatch.setenv("RECSVC_SECURITY__AUDIT_LOG", str(path))
    out = runner.invoke(app, ["audit", "verify"])
    assert out.exit_code == 0 and str(path) in out.stdout.replace("\n", "")


def test_audit_verify_fails_on_a_cut_log_without_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    for v in ("1", "2", "3"):
        audit.append("model_promotion", version=v)
    head_copy = tmp_path / "offsite.head"
    head_copy.write_text(audit.head_path.read_text())
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    audit.head_path.unlink()
    bad = runner.invoke(app, ["audit", "verify", str(path)])
    assert bad.exit_code == 1 and "is missing" in bad.output.replace("\n", "")
    path.write_text("")
    bad = runner.invoke(app, ["audit", "verify", str(path)])
    assert bad.exit_code == 1 and "ok:" not in bad.output
    anchored = runner.invoke(app, ["audit", "verify", str(path), "--head", str(head_copy)])
    assert anchored.exit_code == 1 and "entries 1..3 were removed" in anchored.output.replace("\n", "")


def test_audit_verify_names_a_missing_log_as_missing_not_tampered(tmp_path: Path) -> None:
    """Regression: a log that does not exist was reported as `tampered`, exit 1, the code of an
    edited log. It is a missing file: named, exit 2."""
    missing = tmp_path / "nope.log"
    out = runner.invoke(app, ["audit", "verify", str(missing)])
    text = " ".join(out.output.split())
    assert out.exit_code == 2, text
    assert "audit log not found" in text and str(missing) in text and "tampered" not in text
    path = tmp_path / "audit.log"
    AuditLog(path).append("model_promotion", version="1")
    out = runner.invoke(app, ["audit", "verify", str(path), "--head", str(tmp_path / "no.head")])
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "head copy not found" in text and "tampered" not in text, text
