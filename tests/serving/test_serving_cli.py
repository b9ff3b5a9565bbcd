"""`recsvc query ...` against a real server: tables, --json, and errors as one line."""

from __future__ import annotations

import json

import pytest
from bundle_factory import PlantedBundle
from serving_harness import RunningServer
from typer.testing import CliRunner

from recsvc.cli import app

pytestmark = pytest.mark.integration


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["query", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def test_products_json_and_table(srv: RunningServer, planted: PlantedBundle) -> None:
    member = planted.warm_members(cluster=1)[0]
    code, out = run("products", member, "-k", "4", "--category", "cat1", "--target", srv.target, "--json")
    assert code == 0, out
    data = json.loads(out)
    assert len(data["items"]) == 4 and all(it["category"] == "cat1" for it in data["items"])
    assert data["variant"] == "default"
    code, out = run("products", member, "-k", "3", "--target", srv.target)
    assert code == 0 and "item_id" in out and "because you" in out


def test_every_command_reaches_its_rpc(srv: RunningServer, planted: PlantedBundle) -> None:
    member = planted.warm_members(cluster=0)[0]
    code, out = run(
        "event", member, "P0-005", "purchase", "--channel", "app", "--target", srv.target, "--json"
    )
    assert code == 0 and json.loads(out) == {"stored": True, "item_known": True, "recommendation_id": ""}
    code, out = run("products", member, "-k", "30", "--target", srv.target, "--json")
    assert "P0-005" not in {it["item_id"] for it in json.loads(out)["items"]}
    code, out = run("content", member, "-k", "2", "--target", srv.target, "--json")
    assert code == 0 and all(it["kind"] == "CONTENT" for it in json.loads(out)["items"])
    code, out = run("similar", "P0-004", "-k", "2", "--target", srv.target, "--json")
    assert code == 0 and len(json.loads(out)["items"]) == 2
    code, out = run("batch", member, planted.cold_members[0], "-k", "2", "--target", srv.target, "--json")
    assert code == 0 and out.count('"member_id"') == 2
    # one member refused: the others' lists are printed, and the exit code says not all were served
    code, out = run("batch", member, "", "-k", "2", "--target", srv.target)
    assert code == 1 and "EMPTY_MEMBER_ID" in out and member in out
    code, out = run("info", "--target", srv.target, "--json")
    assert code == 0 and json.loads(out)["model_version"] == planted.bundle_id
    metrics = json.loads(out)["metrics"]
    assert metrics  # the planted bundle carries holdout metrics
    code, out = run("info", "--target", srv.target)  # for humans: metrics as a table, one per line
    assert code == 0 and f"model_version: {planted.bundle_id}" in out and "{" not in out
    for name in metrics:
        assert any(line.split("│")[1].strip() == name for line in out.splitlines() if line.count("│") >= 3)
    code, out = run("reload", "--target", srv.target, "--json")
    assert code == 0 and json.loads(out)["model_version"] == planted.bundle_id


def test_errors_are_one_line_with_the_status(srv: RunningServer) -> None:
    code, out = run("products", "M0-000", "-k", "999", "--target", srv.target)
    assert code == 2 and "INVALID_ARGUMENT: INVALID_K" in out and "Traceback" not in out
    code, out = run("similar", "NOPE-1", "--target", srv.target)
    assert code == 2 and "NOT_FOUND" in out
    # what the caller sent is echoed as text, not read as terminal markup
    code, out = run("similar", "[bold]NOPE", "--target", srv.target)
    assert code == 2 and "[bold]NOPE" in out
    # regression: a model path that does not exist (UNAVAILABLE / MODEL_NOT_FOUND) exited 3, "try
    # again later", though no retry mends it: a bad argument, 2
    code, out = run("reload", "--model-uri", "/nonexistent", "--target", srv.target)
    assert code == 2 and "UNAVAILABLE: MODEL_NOT_FOUND" in out and "Traceback" not in out, out


def test_a_server_that_cannot_answer_is_exit_3_try_later() -> None:
    # nothing listens on port 1: UNAVAILABLE, the caller's cue to retry (exit 3, as for Redis)
    for args in (
        ("query", "products", "M0-000", "--target", "127.0.0.1:1", "--timeout", "2"),
        ("query", "batch", "M0-000", "--target", "127.0.0.1:1", "--timeout", "2"),
        ("members", "show", "M0-000", "--target", "127.0.0.1:1", "--timeout", "2"),
        ("catalog", "get", "P0-001", "--target", "127.0.0.1:1"),
    ):
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
        assert result.exit_code == 3, (args, result.output)
        assert "UNAVAILABLE" in result.output and "Traceback" not in result.output
