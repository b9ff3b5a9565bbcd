"""``StreamStock`` on a real server and a real Redis (a single server and a real cluster): one
result per change in the order sent, per-change errors as results, changes that arrive together
written and answered together (each item's changes still in order), bytes that are no
``StockChange`` ending the stream with INVALID_ARGUMENT after the earlier answers, Redis down
answered change by change while the stream stays open, and ``recsvc catalog stock-feed``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_factory import PlantedBundle
from serving_harness import RunningServer, running_server
from settings_factory import build_settings
from waiting import within

from recsvc.catalog.store import CatalogStore
from recsvc.localstack import LocalRedis
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of changes in each Redis write the event loop made."""
    sizes: list[int] = []
    async_apply = CatalogStore.apply_async

    async def apply_async(self: CatalogStore, changes: Any) -> Any:
        sizes.append(len(changes))
        return await async_apply(self, changes)

    monkeypatch.setattr(CatalogStore, "apply_async", apply_async)
    return sizes


def _server(planted: PlantedBundle, redis_url: str, tmp_path: Path, linger_ms: int) -> Any:
    return running_server(
        build_settings(
            tmp_path,
            redis_url=redis_url,
            model_uri=str(planted.path),
            catalog={"stream_linger_ms": linger_ms},
        )
    )


def _change(item: str, in_stock: bool) -> catalog_pb2.StockChange:
    return catalog_pb2.StockChange(item_id=item, in_stock=in_stock)


def _get(s: RunningServer, item: str) -> catalog_pb2.CatalogItem:
    return catalog_pb2_grpc.CatalogStub(s.channel).GetItem(
        catalog_pb2.GetItemRequest(item_id=item), timeout=5
    )


def test_each_change_is_answered_in_order_and_a_burst_is_written_together(
    planted: PlantedBundle, redis_backend: str, tmp_path: Path, writes: list[int]
) -> None:
    a, b, c = planted.products(cluster=0)[:3]
    sent = [
        _change(a, False),
        _change("NOPE", False),
        _change("", False),
        _change("bad id!", True),
        _change(b, False),
        _change(a, True),  # a second change of ``a``: written after the first
        _change(c, False),
        _change(a, False),
    ]
    with _server(planted, redis_backend, tmp_path, linger_ms=200) as s:
        stub = catalog_pb2_grpc.CatalogStub(s.channel)
        answers = list(stub.StreamStock(iter(sent), timeout=10))
        results = [r for answer in answers for r in answer.results]
        assert [(r.item_id, r.applied, r.code, r.reason) for r in results] == [
            (a, True, "", ""),
            ("NOPE", False, "NOT_FOUND", "ITEM_NOT_FOUND"),
            ("", False, "INVALID_ARGUMENT", "EMPTY_ITEM_ID"),
            ("bad id!", False, "INVALID_ARGUMENT", "INVALID_ITEM_ID"),
            (b, True, "", ""),
            (a, True, "", ""),
            (c, True, "", ""),
            (a, True, "", ""),
        ]
        versions = [r.version for r in results if r.applied]
        assert versions == sorted(versions) and len(set(versions)) == 5
        # All eight arrived within the linger: one write up to each repeat of ``a`` (the two
        # refused by the checks never reach Redis).
        assert writes == [3, 2, 1]
        assert [(len(x.results), x.applied, x.failed) for x in answers] == [(5, 2, 3), (2, 2, 0), (1, 1, 0)]
        within(1.0, lambda: _get(s, a).version == versions[-1], "the last change of a not followed")
        assert not _get(s, a).in_stock and not _get(s, b).in_stock and not _get(s, c).in_stock


def test_changes_sent_one_at_a_time_are_answered_one_at_a_time(
    planted: PlantedBundle, redis_backend: str, tmp_path: Path
) -> None:
    """A caller that waits for each answer before sending the next is not held by the linger
    beyond it, and the stream ends cleanly when the caller closes it."""
    items = planted.products(cluster=1)[:4]
    with _server(planted, redis_backend, tmp_path, linger_ms=5) as s:
        stub = catalog_pb2_grpc.CatalogStub(s.channel)
        answered = threading.Event()
        got: list[catalog_pb2.ItemResult] = []

        def requests() -> Iterator[catalog_pb2.StockChange]:
            for item in items:
                answered.clear()
                yield _change(item, False)
                assert answered.wait(5), "no answer before the next change"

        call = stub.StreamStock(requests(), timeout=20)
        for answer in call:
            got.extend(answer.results)
            answered.set()
        assert [r.item_id for r in got] == items and all(r.applied for r in got)
        assert call.code() == grpc.StatusCode.OK


def test_bytes_that_are_no_stock_change_end_the_stream_after_the_earlier_answers(
    planted: PlantedBundle, redis_backend: str, tmp_path: Path
) -> None:
    first, last = planted.products(cluster=2)[:2]
    with _server(planted, redis_backend, tmp_path, linger_ms=0) as s:
        raw = s.channel.stream_stream("/recsvc.v1.Catalog/StreamStock")
        gate = threading.Event()

        def requests() -> Iterator[bytes]:
            yield _change(first, False).SerializeToString()
            assert gate.wait(5)
            yield b"\x0a\xff\xff\xff\xff\x0f"  # an overlong length: not a StockChange
            yield _change(last, False).SerializeToString()

        call = raw(requests(), timeout=10)
        answers: list[catalog_pb2.ItemResult] = []
        with pytest.raises(grpc.RpcError) as err:
            for answer in call:
                answers.extend(catalog_pb2.ChangeItemsResponse.FromString(answer).results)
                gate.set()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("MALFORMED_REQUEST")
        assert [(r.item_id, r.applied) for r in answers] == [(first, True)]
        time.sleep(0.3)
        assert _get(s, last).in_stock  # nothing after the bad bytes was applied


def test_redis_down_answers_each_change_unavailable_and_the_stream_stays_open(
    planted: PlantedBundle, tmp_path: Path
) -> None:
    own = LocalRedis(tmp_path / "redis")
    own.start()
    try:
        with _server(planted, own.url, tmp_path, linger_ms=0) as s:
            stub = catalog_pb2_grpc.CatalogStub(s.channel)
            item = planted.products(cluster=3)[0]
            stopped = threading.Event()
            got: list[catalog_pb2.ItemResult] = []

            def requests() -> Iterator[catalog_pb2.StockChange]:
                yield _change(item, False)
                assert stopped.wait(10)
                yield _change(item, True)
                yield _change("NOPE", True)

            call = stub.StreamStock(requests(), timeout=30)
            for answer in call:
                got.extend(answer.results)
                if len(got) == 1:
                    within(1.0, lambda: not _get(s, item).in_stock, "change not followed")
                    own.stop()
                    stopped.set()
            assert [(r.applied, r.code, r.reason) for r in got] == [
                (True, "", ""),
                (False, "UNAVAILABLE", "CATALOG_UNAVAILABLE"),
                (False, "UNAVAILABLE", "CATALOG_UNAVAILABLE"),
            ]
            assert call.code() == grpc.StatusCode.OK
            assert not _get(s, item).in_stock  # the last known catalog stays in force
            # stock-feed in the same state: try later (3), as `catalog stock`/`delist`/`sync`
            from typer.testing import CliRunner

            from recsvc.cli import app

            feed = CliRunner().invoke(
                app, ["catalog", "stock-feed", "-", "--target", s.target], input=f"{item},in\n"
            )
            assert feed.exit_code == 3, feed.output
            assert "CATALOG_UNAVAILABLE" in feed.output and "applied=0 failed=1" in feed.output
    finally:
        own.stop()


def test_stock_feed_exit_code() -> None:
    """3 only when every refusal was the server or Redis not answering (and no line skipped)."""
    from recsvc.cli.catalog import _feed_exit

    assert _feed_exit(failed=0, unavailable=0, skipped=0) == 0
    assert _feed_exit(failed=4, unavailable=4, skipped=0) == 3
    assert _feed_exit(failed=4, unavailable=3, skipped=0) == 1  # one refused for itself
    assert _feed_exit(failed=4, unavailable=4, skipped=1) == 1  # a bad line
    assert _feed_exit(failed=0, unavailable=0, skipped=2) == 1


def test_cli_stock_feed_streams_lines_and_names_what_it_refused(
    planted: PlantedBundle, redis_backend: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    a, b = planted.products(cluster=1)[4:6]
    feed = tmp_path / "stock.csv"
    feed.write_bytes(
        f'{a},out\n\n"{b}",OUT\nNOPE,in\n{a},maybe\njust-an-id\n{a},in\n'.encode() + b"\xff\xfe,out\n"
    )  # a spreadsheet's quotes around b are not part of its id
    with _server(planted, redis_backend, tmp_path, linger_ms=0) as s:
        result = CliRunner().invoke(
            app, ["catalog", "stock-feed", str(feed), "--target", s.target], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 1, result.output
        assert "applied=3 failed=1 skipped=3" in result.output
        assert "NOPE NOT_FOUND ITEM_NOT_FOUND" in result.output
        assert "line 5 skipped" in result.output and "line 6 skipped" in result.output
        assert "line 8 skipped: not UTF-8 text" in result.output
        # b's change and a's last one may reach this process in different feed batches (the
        # follower settles between them): wait for both, not for b's alone. a out, then back in:
        # in the order of the lines (in the other order a would stay out and this times out).
        within(
            1.0,
            lambda: not _get(s, b).in_stock and _get(s, a).in_stock,
            "b not sold out, or a not back in stock",
        )

        def piped(lines: str) -> Any:
            command = ["catalog", "stock-feed", "-", "--target", s.target]
            return CliRunner().invoke(app, command, input=lines, env={"COLUMNS": "200"})

        # an exported file's column names and a comment are not changes, nor skipped lines
        header = piped(f"item_id,in_stock\n# restocked at 09:00\n{b},in\n")
        assert header.exit_code == 0 and "applied=1 failed=0 skipped=0" in header.output, header.output
        assert "line 1 read as a header: item_id,in_stock" in header.output
        # a mistyped first change is not taken for a header: it is a skipped line, counted
        typo = piped(f"{b},outt\n{b},in\n")
        assert typo.exit_code == 1 and "applied=1 failed=0 skipped=1" in typo.output, typo.output
        assert "line 1 skipped: expected ITEM_ID,in|out" in typo.output


def test_a_feed_of_awkward_lines_applies_every_good_line_and_names_each_bad_one(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """A byte-order mark, a stray quote, a line of megabytes and ids that look like terminal
    markup: each bad line is skipped or refused by name, every good line is applied."""
    from typer.testing import CliRunner

    from recsvc.cli import app

    a, b, c = planted.products(cluster=2)[:3]
    lines = [f'"{a},out', f"{b},out", "x" * 200_000 + ",out", "[/],in", "[red]Z,in", f"{c},out"]
    feed = tmp_path / "stock.csv"
    feed.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    with _server(planted, redis_url, tmp_path, linger_ms=0) as s:
        result = CliRunner().invoke(
            app, ["catalog", "stock-feed", str(feed), "--target", s.target], env={"COLUMNS": "300"}
        )
        assert result.exit_code == 1, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert "applied=2 failed=3 skipped=1" in result.output, result.output
        assert "line 3 skipped: longer than 4096 characters" in result.output
        assert "[/] INVALID_ARGUMENT" in result.output and "[red]Z INVALID_ARGUMENT" in result.output
        assert '"' + a in result.output  # the stray quote is part of that line's id, refused alone
        within(1.0, lambda: not _get(s, b).in_stock and not _get(s, c).in_stock, "good lines not applied")
        assert _get(s, a).in_stock


def test_refused_megabyte_ids_do_not_cost_the_answers_to_the_valid_changes(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    """Eight 1 MB ids between two valid changes: the valid ones are applied and answered, the
    others refused with their id cut short, in one stream the size of a few ids."""
    a, b = planted.products(cluster=3)[:2]
    sent = [_change(a, False), *[_change("Q" * 1_000_000, False)] * 8, _change(b, False)]
    with _server(planted, redis_url, tmp_path, linger_ms=50) as s:
        stub = catalog_pb2_grpc.CatalogStub(s.channel)
        answers = list(stub.StreamStock(iter(sent), timeout=10))
        results = [r for answer in answers for r in answer.results]
        assert [r.applied for r in results] == [True, *[False] * 8, True]
        assert {r.reason for r in results[1:-1]} == {"ITEM_ID_TOO_LONG"}
        assert max(len(r.item_id) for r in results) <= 256
        # a request under the 4 MB limit whose refused ids, echoed whole, made the answer larger
        batch = [_change(a, True), *[_change("Q" * 330, True)] * 9_998, _change(b, True)]
        many = stub.SetStockMany(catalog_pb2.SetStockManyRequest(changes=batch), timeout=30)
        assert many.applied == 2 and many.failed == 9_998


def test_export_that_fails_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    out = tmp_path / "catalog.csv"
    out.write_text("precious,data\n")
    result = CliRunner().invoke(
        app,
        ["catalog", "export", str(out), "--overwrite", "--target", "127.0.0.1:1", "--timeout", "2"],
    )
    assert result.exit_code == 3, result.output  # UNAVAILABLE: try again later
    assert out.read_text() == "precious,data\n"
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.csv"]


def test_export_refuses_an_existing_file_without_overwrite(tmp_path: Path) -> None:
    """Regression: export replaced an existing file unasked (it may be the only copy of a
    catalog). It is refused before any call, naming the file and --overwrite."""
    from typer.testing import CliRunner

    from recsvc.cli import app

    out = tmp_path / "catalog.csv"
    out.write_text("precious,data\n")
    result = CliRunner().invoke(app, ["catalog", "export", str(out), "--target", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # rich may wrap a long line
    assert str(out) in output and "exists" in output and "--overwrite" in output
    assert out.read_text() == "precious,data\n"
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.csv"]


def test_export_to_a_path_it_cannot_write_names_that_path(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsvc.cli import app

    (tmp_path / "a-file").write_text("")
    for out in (tmp_path / "a-file" / "catalog.csv", tmp_path):
        result = CliRunner().invoke(app, ["catalog", "export", str(out), "--target", "127.0.0.1:1"])
        assert result.exit_code == 2, result.output
        assert "FILE: " in result.output and str(out) in result.output.replace("\n", "")
        assert ".partial" not in result.output
        assert "File exists" not in result.output  # what mkdir says of a file on the way
    # the part of the path that is a file is named as the problem
    blocked = CliRunner().invoke(
        app, ["catalog", "export", str(tmp_path / "a-file" / "catalog.csv"), "--target", "127.0.0.1:1"]
    )
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in blocked.output.replace("\n", "")
