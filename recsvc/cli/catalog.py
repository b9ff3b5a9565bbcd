"""`recsvc catalog ...`: the live catalog from a shell (the Catalog service, docs/api.md).

``sync FILE`` pushes the difference between a catalog file in the data contract (docs/data.md)
and what the service has; ``export FILE`` writes what the service has in that contract, for the
next training; ``get``, ``stock``, ``delist`` are for a person at a shell, and ``stock-feed``
streams stock changes line by line from a file or a pipe.
"""

from __future__ import annotations

import csv
import errno
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.markup import escape

from recsvc.cli.common import ENCODING_OPTION, client_channel, console, friendly_errors, rpc_errors, state

app = typer.Typer(help="Change and read the live catalog (Catalog service).", no_args_is_help=True)

_TARGET = typer.Option(None, "--target", "-t", help="host:port (default: serving.host:serving.port).")
_KEY = typer.Option(None, "--api-key", envvar="RECSVC_API_KEY", help="API key with the catalog role.")
_TIMEOUT = typer.Option(30.0, "--timeout", min=0.001, max=86400.0, help="Deadline per call, seconds.")
_CHUNK = 1000


def _stub(ctx: typer.Context, target: str | None, api_key: str | None) -> Any:
    from recsvc.v1 import catalog_pb2_grpc

    return catalog_pb2_grpc.CatalogStub(client_channel(ctx, target, api_key))


def _call(fn: Any, request: Any, timeout: float) -> Any:
    with rpc_errors():
        return fn(request, timeout=timeout)


def _print_refused(resp: Any) -> None:
    """One line per change of a ChangeItemsResponse that was not applied."""
    for r in resp.results:
        if not r.applied:
            line = f"[red]{_shown(r.item_id)}[/] {r.code} {r.reason}: {escape(r.message)}"
            console.print(line, soft_wrap=True)


def _shown(item_id: str) -> str:
    """An id as printed: markup escaped, a refused monster id cut (a valid id is 64 bytes)."""
    return escape(item_id if len(item_id) <= 80 else f"{item_id[:80]}...")


def _print_results(resp: Any) -> None:
    """The answer's counts and refusals; exit 1 when a change was refused (docs/operations.md)."""
    _print_refused(resp)
    print(f"applied={resp.applied} failed={resp.failed}")
    if resp.failed:
        raise typer.Exit(code=1)


@app.command("get")
@friendly_errors
def get(ctx: typer.Context, item_id: str, target: str | None = _TARGET, api_key: str | None = _KEY) -> None:
    """The item as the service sees it now (bundle + live changes)."""
    from google.protobuf.json_format import MessageToDict

    from recsvc.v1 import catalog_pb2

    item = _call(_stub(ctx, target, api_key).GetItem, catalog_pb2.GetItemRequest(item_id=item_id), 5.0)
    data = MessageToDict(item, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    print(json.dumps(data, ensure_ascii=False, indent=2))


@app.command("stock")
@friendly_errors
def stock(
    ctx: typer.Context,
    item_id: str,
    level: str = typer.Argument(..., help="in or out"),
    target: str | None = _TARGET,
    api_key: str | None = _KEY,
) -> None:
    """Mark a product in or out of stock."""
    from recsvc.v1 import catalog_pb2

    in_stock = _LEVELS.get(level.strip().lower())  # the words stock-feed takes, in any case
    if in_stock is None:
        raise typer.BadParameter("in or out (or 1/0, true/false)", param_hint="LEVEL")
    req = catalog_pb2.SetStockRequest(item_id=item_id, in_stock=in_stock)
    _print_results(_call(_stub(ctx, target, api_key).SetStock, req, 5.0))


# Column names a stock file's first line may hold: that line is a header, not a change. Anything
# else that is not ITEM_ID,in|out is a skipped line, counted (a mistyped first change such as
# "P1,outt" must not pass silently as a header).
_ID_HEADERS = frozenset({"item_id", "id", "item", "sku", "product_id"})
_LEVEL_HEADERS = frozenset({"in_stock", "stock", "level", "status", "availability"})


def _is_header(row: list[str]) -> bool:
    return len(row) == 2 and (
        row[0].strip().lower() in _ID_HEADERS or row[1].strip().lower() in _LEVEL_HEADERS
    )


_MAX_FEED_LINE = 4096  # far above any ITEM_ID,in|out line (an id is at most 64 bytes)
_LEVELS = {"in": True, "out": False, "1": True, "0": False, "true": True, "false": False}


@app.command("stock-feed")
@friendly_errors
def stock_feed(
    ctx: typer.Context,
    source: str = typer.Argument("-", help="File of lines ITEM_ID,in|out (CSV); - = standard input."),
    target: str | None = _TARGET,
    api_key: str | None = _KEY,
) -> None:
    """Send stock changes as they come, one line each, on one StreamStock stream (for example
    `tail -f stock.csv | recsvc catalog stock-feed`). Prints each refused change and, at the end,
    the counts; a line that is not ITEM_ID,in|out is named with its number and skipped (blank
    lines, lines starting with # and a first line of two column names are not changes). Exit 1
    when a change was refused or a line skipped, 3 when the server cannot answer (try later)."""
    import sys

    from recsvc.v1 import catalog_pb2

    skipped = 0

    def skip(number: int, why: str) -> None:
        nonlocal skipped
        skipped += 1
        console.print(f"[red]line {number}[/] skipped: {why}", soft_wrap=True)

    def changes(lines: Iterator[str]) -> Iterator[Any]:
        # Line by line, not csv: an id holds no ',' or '"', and one stray quote must not join
        # the lines after it into one record (nor a long line end the feed at csv's field limit).
        first = True
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue  # blank line or comment
            if len(line) > _MAX_FEED_LINE:
                skip(number, f"longer than {_MAX_FEED_LINE} characters")
                continue
            if "\ufffd" in line:  # undecodable bytes, replaced on reading
                skip(number, "not UTF-8 text")
                continue
            row = line.split(",")
            level = row[1].strip().lower() if len(row) == 2 else None
            was_first, first = first, False
            if level not in _LEVELS:
                if was_first and _is_header(row):
                    # an exported file starts with its column names (item_id,in_stock): not a change
                    console.print(f"line {number} read as a header: {_shown(line)}", soft_wrap=True)
                else:
                    skip(number, "expected ITEM_ID,in|out")
                continue
            # an id a spreadsheet quoted ("P1",out): the quotes are not part of it (an id holds no '"')
            item_id = row[0].strip()
            if len(item_id) >= 2 and item_id[0] == item_id[-1] == '"':
                item_id = item_id[1:-1].strip()
            yield catalog_pb2.StockChange(item_id=item_id, in_stock=_LEVELS[level])

    applied = failed = unavailable = 0
    if source == "-" and sys.stdin is None:
        console.print("[bold red]error[/] standard input is closed", soft_wrap=True)
        raise typer.Exit(code=2)
    # Bytes that are not UTF-8 must not end the stream mid-feed: read them replaced, skip the line.
    # utf-8-sig: a byte-order mark some editors write is not part of the first id.
    stream = (
        io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="")
        if source == "-"
        else Path(source).open(encoding="utf-8-sig", errors="replace", newline="")  # noqa: SIM115
    )
    try:
        with rpc_errors():
            for answer in _stub(ctx, target, api_key).StreamStock(changes(iter(stream))):
                _print_refused(answer)
                applied, failed = applied + answer.applied, failed + answer.failed
                unavailable += sum(1 for r in answer.results if not r.applied and r.code == "UNAVAILABLE")
    finally:
        if source == "-":
            stream.detach()  # standard input stays open for whoever reads it next
        else:
            stream.close()
    print(f"applied={applied} failed={failed} skipped={skipped}")
    code = _feed_exit(failed, unavailable, skipped)
    if code:
        raise typer.Exit(code=code)


def _feed_exit(failed: int, unavailable: int, skipped: int) -> int:
    """stock-feed's exit code: 3 when changes were refused only because the server or Redis could
    not answer (``UNAVAILABLE``: try later), 1 when a change was refused for itself or a line
    skipped, 0 when everything was applied."""
    if failed and unavailable == failed and not skipped:
        return 3
    return 1 if failed or skipped else 0


@app.command("delist")
@friendly_errors
def delist(
    ctx: typer.Context,
    item_ids: list[str],
    relist: bool = typer.Option(False, "--relist", help="Put the items back instead."),
    target: str | None = _TARGET,
    api_key: str | None = _KEY,
) -> None:
    """Take items out of every list and SimilarItems (or put them back with --relist)."""
    from recsvc.v1 import catalog_pb2

    stub = _stub(ctx, target, api_key)
    fn = stub.RelistItems if relist else stub.DelistItems
    _print_results(_call(fn, catalog_pb2.ItemIdsRequest(item_ids=item_ids), 10.0))


def _current(ctx: typer.Context, target: str | None, timeout: float, key: str | None) -> Iterator[Any]:
    from recsvc.v1 import catalog_pb2

    with rpc_errors():
        yield from _stub(ctx, target, key).ExportCatalog(catalog_pb2.ExportCatalogRequest(), timeout=timeout)


def _row(item: Any) -> dict[str, str]:
    from datetime import UTC, datetime

    from recsvc.v1 import common_pb2

    kind = "content" if item.kind == common_pb2.CONTENT else "product"
    return {
        "item_id": item.item_id,
        "kind": kind,
        "title": item.title,
        "category": item.category,
        "brand": item.brand,
        # the shortest text that reads back as the service's float32 price (not "%g": 6 digits)
        "price": np.format_float_positional(np.float32(item.price), trim="-"),
        "in_stock": "true" if item.in_stock else "false",
        # 0 (unknown) is a blank cell for a product; content must have a time in the contract,
        # so its 0 is written as the epoch, which reads back as 0
        "published_at": datetime.fromtimestamp(item.published_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if item.published_at or kind == "content"
        else "",
        "featured_item_ids": "|".join(item.featured_item_ids),
    }


@app.command("export")
@friendly_errors
def export(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="catalog.csv to write (the data contract, docs/data.md)."),
    include_delisted: bool = typer.Option(
        True,
        "--include-delisted/--exclude-delisted",
        help="Write delisted items too (the default: the next bundle keeps them, and they stay "
        "delisted until relisted; left out, a retrain drops them for good).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace FILE if it exists (it may be someone's only copy of a catalog). Without it "
        "an existing file is refused.",
    ),
    target: str | None = _TARGET,
    api_key: str | None = _KEY,
    timeout: float = _TIMEOUT,
) -> None:
    """Write the service's current catalog (bundle + changes + new items) for the next training,
    into a new file (--overwrite to replace one)."""
    from pipelines.contract import CATALOG
    from recsvc.errors import InvalidArgument

    n = 0
    # Written beside the file and moved over it once the whole catalog is read: a failed call
    # leaves the file as it was, never a header or a part that looks whole.
    partial = out.with_name(f".{out.name}.partial")
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file to write", str(out))
    # mkdir would say "File exists" for a folder on the way that is a file: name that file
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder to write into", str(out))
    if out.exists() and not overwrite:
        raise InvalidArgument(
            f"{out} exists; refusing to write the catalog over it: give a new file, or "
            "--overwrite to replace it",
            reason="FILE_EXISTS",
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # the next training's data folder, say
        fh = partial.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        # named as the caller named it, not as the temporary file beside it
        raise type(exc)(exc.errno, exc.strerror, str(out)) from None
    try:
        with fh:
            writer = csv.DictWriter(fh, fieldnames=CATALOG.columns)
            writer.writeheader()
            items: Iterable[Any] = _current(ctx, target, timeout, api_key)
            left_out: set[str] = set()
            if not include_delisted:
                # a content row must not feature a product the file leaves out: training would
                # quarantine the row (unknown_featured_item) and every event on it
                items = list(items)
                left_out = {item.item_id for item in items if not item.listed}
            for item in items:
                if item.item_id in left_out:
                    continue
                if left_out and any(f in left_out for f in item.featured_item_ids):
                    kept = [f for f in item.featured_item_ids if f not in left_out]
                    del item.featured_item_ids[:]
                    item.featured_item_ids.extend(kept)
                # as is: the file is data for training and `sync` (a title "-50% off" must come
                # back unchanged), not a report; csv quotes what needs quoting
                writer.writerow(_row(item))
                n += 1
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {n} items to {out}")


def _items(clean: Any) -> list[Any]:
    """The validated rows of a catalog file (``pipelines.validate_reference.validate_catalog``,
    the checks training applies) as CatalogItems with every field set."""
    from recsvc.v1 import catalog_pb2, common_pb2

    out = []
    for row in clean.itertuples(index=False):
        content = row.kind == "content"
        item = catalog_pb2.CatalogItem(
            item_id=row.item_id,
            kind=common_pb2.CONTENT if content else common_pb2.PRODUCT,
            title=row.title,
            category=row.category,
            brand=row.brand or "",
            price=float(row.price),
            in_stock=bool(row.in_stock),
            published_at=_seconds(row.published_at),
        )
        if content:
            item.set_featured = True
            item.featured_item_ids.extend(row.featured_item_ids)
        out.append(item)
    return out


def _seconds(ts: Any) -> int:
    """Seconds since the epoch; 0 (unknown) for a missing time."""
    import pandas as pd

    return 0 if ts is None or pd.isna(ts) else int(ts.timestamp())


def _same(a: Any, b: Any) -> bool:
    """Whether pushing file item ``a`` would change service item ``b``. Listing is not compared
    (``sync`` never relists: see there); a cell the API cannot clear (an empty brand: an empty
    string in ``UpsertItems`` leaves the value) is no difference."""
    return (
        a.kind == b.kind
        # the file's text is read stripped (as training reads it) and the service stores it
        # stripped: a value stored with spaces before it did so differs, and is pushed again
        and a.title == b.title
        and a.category == b.category
        and (not a.brand or a.brand == b.brand)
        # compared as the service stores prices (float32): any change it would keep is pushed
        and np.float32(a.price) == np.float32(b.price)
        and a.in_stock == b.in_stock
        and a.published_at == b.published_at
        # featured products are a set (training averages them); the service lists them by id
        and (not a.set_featured or set(a.featured_item_ids) == set(b.featured_item_ids))
    )


@app.command("sync")
@friendly_errors
def sync(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="catalog.csv / .csv.gz / .parquet in the data contract."),
    delist_missing: bool = typer.Option(
        False, "--delist-missing", help="Delist items the file does not hold."
    ),
    relist_delisted: bool = typer.Option(
        False,
        "--relist",
        help="Relist the delisted items the file holds. Without it they stay delisted: "
        "`export` writes delisted items too (so they stay delisted), and a catalog file has "
        "no listing column.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would change."),
    encoding: str | None = ENCODING_OPTION,
    target: str | None = _TARGET,
    api_key: str | None = _KEY,
    timeout: float = _TIMEOUT,
) -> None:
    """Push the difference between a catalog file and the service: new and changed items (and,
    with --delist-missing, items the file no longer has). A delisted item the file holds stays
    delisted (its other fields are synced), unless --relist: syncing the service's own export
    changes nothing."""
    from pipelines.contract import CATALOG
    from pipelines.encoding import resolve_encoding
    from pipelines.read import read_table
    from pipelines.validate_reference import validate_catalog
    from recsvc.idmap import normalize_id
    from recsvc.v1 import catalog_pb2

    # a CSV's encoding as `recsvc data validate` reads it: detected (GB18030, cp1252...) or named
    # (a missing file or a folder is read_table's one-line FILE error, as before)
    csv_file = path.is_file() and not path.name.endswith(".parquet")
    codec = resolve_encoding(path, encoding) if csv_file else "utf-8"
    checked = validate_catalog(read_table(path, CATALOG, codec), path, state(ctx).settings().data)
    for row in checked.quarantine.itertuples(index=False):
        detail = f" ({row.detail})" if getattr(row, "detail", "") else ""
        line = f"[red]{_shown(str(row.item_id))}[/] skipped: {row.reason}{escape(detail)}"
        console.print(line, soft_wrap=True)
    bad = len(checked.quarantine)
    current = {item.item_id: item for item in _current(ctx, target, timeout, api_key)}
    changes = []
    in_file: set[str] = set()
    for item in _items(checked.clean):
        in_file.add(item.item_id)
        have = current.get(item.item_id)
        if have is None or not _same(item, have):
            changes.append(item)
    relist = sorted(i for i in in_file if i in current and not current[i].listed) if relist_delisted else []
    # a row the checks skipped is still in the file: a typo in its price must not delist it
    rejected = {normalize_id(str(i)) for i in checked.quarantine.get("item_id", [])}
    gone = sorted(set(current) - in_file - rejected) if delist_missing else []
    gone = [i for i in gone if current[i].listed]
    print(
        f"file={len(in_file)} service={len(current)} upsert={len(changes)} relist={len(relist)} "
        f"delist={len(gone)}"
    )
    if dry_run:
        if bad:
            raise typer.Exit(code=1)  # as the real run would
        return
    stub = _stub(ctx, target, api_key)
    applied = failed = 0
    for start in range(0, len(changes), _CHUNK):
        resp = _call(
            stub.UpsertItems,
            catalog_pb2.UpsertItemsRequest(items=changes[start : start + _CHUNK]),
            timeout,
        )
        applied, failed = applied + resp.applied, failed + resp.failed
        _print_refused(resp)
    for fn, ids in ((stub.RelistItems, relist), (stub.DelistItems, gone)):
        for start in range(0, len(ids), _CHUNK):
            resp = _call(fn, catalog_pb2.ItemIdsRequest(item_ids=ids[start : start + _CHUNK]), timeout)
            applied, failed = applied + resp.applied, failed + resp.failed
    print(f"applied={applied} failed={failed} skipped={bad}")
    if failed or bad:
        raise typer.Exit(code=1)
