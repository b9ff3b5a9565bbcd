"""The live catalog propagation benchmark (``recsvc load bench catalog-propagation``), briefly,
against a real two-process server: every probe connection is held by the process it is said to
be, each sell-out is timed on both processes, and the paired runs report their p99 ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_factory import make_bundle

from bench.catalog_propagation import _set_stock_maker, established_server_sockets, socket_inodes, worker_pids
from bench.native_client import NATIVE_CLIENT

pytestmark = pytest.mark.integration


def test_process_of_a_connection_is_read_from_the_kernel(tmp_path: Path) -> None:
    """The primitives on this test process's own listening socket: no server needed."""
    import os
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        new = established_server_sockets(port)
        assert len(new) == 1 and new <= socket_inodes(os.getpid())
        assert worker_pids(os.getpid(), port) == [os.getpid()]  # no children: the process itself
    finally:
        for s in (accepted, client, server):
            s.close()


@pytest.mark.slow  # ~20 s: a two-process server, four sell-outs and two short paired runs
@pytest.mark.parametrize(
    ("client", "set_stock_calls", "writer", "stream"),
    [
        ("python", 50, False, False),  # 20/s x (2 s + 0.5 s warm-up)
        ("python", 50, False, True),  # the same changes as StreamStock messages
        pytest.param(  # and the changes through the catalog writer process
            "native",
            80,  # 20/s x (2 s + 2 s margin), warm-up left out
            True,
            False,
            marks=pytest.mark.skipif(not NATIVE_CLIENT.is_file(), reason="run `make -C load/grpcload`"),
        ),
    ],
)
def test_propagation_bench_times_each_change_on_both_processes(
    tmp_path: Path, client: str, set_stock_calls: int, writer: bool, stream: bool
) -> None:
    planted = make_bundle(tmp_path / "bundle")
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "bench", "catalog-propagation", "--bundle", str(planted.path),
            "--changes", "4", "--background-rate", "40", "--pairs", "1", "--rate", "40",
            "--set-stock-rate", "20", "--duration", "2", "--warmup", "0.5", "--connections", "4",
            "--results", str(results), "--workdir", str(tmp_path / "work"), "--client", client,
            *(["--catalog-writer"] if writer else []), *(["--set-stock-stream"] if stream else []),
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out,) = list((results / "bench").iterdir())
    report = json.loads((out / "catalog-propagation.json").read_text())
    assert report["context"]["load client of the paired runs"].startswith(client)
    assert ("changes sent to" in report["context"]) is writer
    prop = report["propagation"]
    assert len(prop["processes"]) == 2 and prop["probes_stayed"] is True
    assert len(prop["changes"]) == 4 and prop["misses"] == 0
    for change in prop["changes"]:
        per = change["per_process_ms"]
        assert len(per) == 2 and all(v is not None for v in per.values()), change
        # The 1 s target is the bench report's to judge (docs/benchmarks.md); a shared CI machine
        # can stall both processes past it. Here: each process honoured the change (misses == 0
        # above means within the probe's timeout), and the figure is the slower process's.
        assert change["propagation_ms"] == max(per.values()) > 0, change
    assert prop["p99_ms"] is not None and prop["background"]["achieved_rps"] > 0
    paired = report["paired"]
    assert [r["with_changes"] for r in paired["runs"]] == [False, True]
    stock = paired["runs"][1]["set_stock"]
    assert stock["ok"] == stock["sent"] == set_stock_calls and stock["errors"] == {}
    assert paired["ratios"][0] is not None and paired["ratios"][0] > 0
    assert paired["set_stock_stream"] is stream
    text = (out / "catalog-propagation.md").read_text()
    assert "p99 with / without SetStock" in text and ("StreamStock messages" in text) is stream


def test_batched_stock_changes_are_the_single_calls_changes_in_the_same_order() -> None:
    """``--set-stock-batch``: SetStockMany calls carry exactly the changes the SetStock calls
    would, in the same order (each item out of stock, then back in on its next turn)."""
    items = ["A", "B", "C"]
    single = _set_stock_maker(items)
    one = [single() for _ in range(12)]
    assert {rpc for rpc, _ in one} == {"SetStock"}
    batched = _set_stock_maker(items, batch=4)
    many = [batched() for _ in range(3)]
    assert {rpc for rpc, _ in many} == {"SetStockMany"}
    flat = [(c.item_id, c.in_stock) for _, req in many for c in req.changes]
    assert flat == [(req.item_id, req.in_stock) for _, req in one]
    assert flat[:6] == [("A", False), ("B", False), ("C", False), ("A", True), ("B", True), ("C", True)]


def test_batched_stock_changes_need_the_native_client_and_say_so_before_starting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    result = CliRunner().invoke(
        app,
        ["load", "bench", "catalog-propagation", "--set-stock-batch", "10", "--client", "python",
         "--results", str(tmp_path), "--workdir", str(tmp_path / "w")],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--set-stock-batch above 1 needs --client native" in result.output
    assert not (tmp_path / "w").exists()  # nothing was prepared or started
