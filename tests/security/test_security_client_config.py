"""The CLI's client commands refuse a client configuration gRPC would reject deep in its C core
or silently ignore: an API key that cannot travel as metadata, half a client certificate."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from recsvc.cli import app

runner = CliRunner()
KEY = "s3cret\N{GRINNING FACE}key"  # not ASCII: grpc metadata cannot carry it
# nothing listens on port 1: a check that waited for the call would report UNAVAILABLE instead
TARGET = "127.0.0.1:1"


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECSVC_API_KEY", "RECSVC_TLS_CA", "RECSVC_TLS_CERT", "RECSVC_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("args", "env", "source"),
    [
        (["query", "info", "--target", TARGET], {"RECSVC_API_KEY": KEY}, "from RECSVC_API_KEY"),
        (["catalog", "get", "P1", "--target", TARGET, "--api-key", KEY], {}, "from --api-key"),
        (["catalog", "get", "P1", "--target", TARGET], {"RECSVC_API_KEY": KEY}, "RECSVC_API_KEY"),
        (["query", "info", "--target", TARGET], {"RECSVC_API_KEY": "s3cret\nkey"}, "from RECSVC_API_KEY"),
    ],
)
def test_a_key_that_is_not_printable_ascii_is_refused_naming_its_source(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], source: str
) -> None:
    _clean_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = runner.invoke(app, args)
    text = out.output
    assert out.exit_code == 2, text
    assert "INVALID_API_KEY" in text and source in text and "printable ASCII" in text, text
    assert "s3cret" not in text and "\N{GRINNING FACE}" not in text, text  # the key is a secret
    assert len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize(
    ("given", "missing"), [("RECSVC_TLS_KEY", "RECSVC_TLS_CERT"), ("RECSVC_TLS_CERT", "RECSVC_TLS_KEY")]
)
def test_half_a_client_certificate_is_a_configuration_error_naming_both(
    monkeypatch: pytest.MonkeyPatch, given: str, missing: str
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv(given, "/nonexistent/client.pem")
    out = runner.invoke(app, ["query", "info", "--target", TARGET, "--timeout", "1"])
    text = out.output
    assert out.exit_code == 2, text
    assert "INVALID_CONFIG" in text and f"{given} is set but {missing} is not" in text, text
    assert len(text.strip().splitlines()) == 1, text
