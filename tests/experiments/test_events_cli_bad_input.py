"""`recsvc events` refuses what it cannot use in one line with a non-zero exit, never a traceback:
a metrics port no socket can have, a server that does not answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsvc.cli import app


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_metrics_port_outside_0_to_65535_is_refused(tmp_path: Path, port: str) -> None:
    done = CliRunner().invoke(
        app,
        ["events", "sink", "--once", "--log-dir", str(tmp_path), "--metrics-port", port],
        env={"COLUMNS": "200"},
    )
    assert done.exit_code == 2, done.output
    assert "--metrics-port" in done.output and "Traceback" not in done.output
    assert "PORT_IN_USE" not in done.output


@pytest.mark.parametrize("port", [70000, -1])
def test_serve_metrics_names_a_port_that_cannot_be_one(port: int) -> None:
    from prometheus_client import CollectorRegistry

    from recsvc.errors import ConfigError
    from recsvc.metrics import serve_metrics

    with pytest.raises(ConfigError) as err:
        serve_metrics(port, CollectorRegistry())
    assert err.value.reason == "INVALID_PORT" and str(port) in str(err.value)


def test_simulate_against_no_server_is_one_line_and_exit_3(tmp_path: Path) -> None:
    from recsvc.localstack import free_port

    (tmp_path / "members.csv").write_text("member_id\n" + "".join(f"M{i}\n" for i in range(20)))
    (tmp_path / "catalog.csv").write_text("item_id,kind\nP1,product\nP2,product\n")
    done = CliRunner().invoke(
        app,
        [
            "events",
            "simulate",
            "--data",
            str(tmp_path),
            "--members",
            "10",
            "--target",
            f"127.0.0.1:{free_port()}",
        ],
        env={"COLUMNS": "200"},
    )
    assert done.exit_code == 3, done.output
    assert "UNAVAILABLE" in done.output and "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
