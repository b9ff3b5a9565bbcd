"""`recsvc query ...`: call any Recommender RPC from a shell; a readable table or ``--json``."""

from __future__ import annotations

import json
from typing import Any

import typer

from recsvc.cli.common import client_channel, friendly_errors, rpc_errors

app = typer.Typer(help="Call the running recommendation service (Recommender RPCs).", no_args_is_help=True)

_TARGET = typer.Option(None, "--target", "-t", help="host:port (default: serving.host:serving.port).")
_JSON = typer.Option(False, "--json", help="Print the response as JSON.")
_K = typer.Option(0, "--k", "-k", min=0, max=2**31 - 1, help="How many items (0 = server default).")
_TIMEOUT = typer.Option(5.0, "--timeout", min=0.001, max=86400.0, help="Deadline in seconds.")


def _stub(ctx: typer.Context, target: str | None) -> Any:
    from recsvc.v1 import recommender_pb2_grpc

    return recommender_pb2_grpc.RecommenderStub(client_channel(ctx, target))


def _call(fn: Any, request: Any, timeout: float) -> Any:
    with rpc_errors():
        return fn(request, timeout=timeout)


def _print(message: Any, as_json: bool) -> None:
    from google.protobuf.json_format import MessageToDict
    from rich.console import Console
    from rich.table import Table

    out = Console()
    # false, 0 and "" shown too: "stored: False" is the answer a caller needs when Redis is down
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    items = data.get("items")
    if items is None:
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        for key, value in data.items():
            if key not in tables:
                out.print(f"[bold]{key}[/]: {value}")
        for key, values in tables.items():
            # e.g. GetModelInfo's metrics (holdout NDCG, recall, ...) and variants (name -> version)
            sub = Table(key, "value", title=None, show_header=True)
            for name in sorted(values):
                v = values[name]
                sub.add_row(name, f"{v:.4f}" if isinstance(v, float) else str(v))
            out.print(sub)
        return
    header = {k: v for k, v in data.items() if k != "items"}
    out.print(" ".join(f"{k}={v}" for k, v in header.items()))
    table = Table("#", "item_id", "score", "source", "category", "brand", "title", "reason")
    for n, it in enumerate(items, 1):
        table.add_row(
            str(n),
            it.get("item_id", ""),
            f"{it.get('score', 0.0):.4f}",
            it.get("source", ""),
            it.get("category", ""),
            it.get("brand", ""),
            it.get("title", ""),
            it.get("reason", ""),
        )
    out.print(table)


def _filters(
    category: list[str] | None,
    exclude_category: list[str] | None,
    brand: list[str] | None,
    exclude_brand: list[str] | None,
    min_price: float | None,
    max_price: float | None,
    include_out_of_stock: bool,
    include_purchased: bool,
    include_seen: bool,
    exclude: list[str] | None,
    diversity: float | None,
) -> Any:
    from recsvc.v1 import common_pb2

    f = common_pb2.RecommendationFilters(
        include_categories=category or [],
        exclude_categories=exclude_category or [],
        include_brands=brand or [],
        exclude_brands=exclude_brand or [],
        exclude_item_ids=exclude or [],
    )
    if min_price is not None:
        f.min_price = min_price
    if max_price is not None:
        f.max_price = max_price
    if include_out_of_stock:
        f.in_stock_only = False
    if include_seen:
        f.exclude_seen = False
    if include_purchased:
        f.exclude_purchased = False
    if diversity is not None:
        f.diversity = diversity
    return f


_CAT = typer.Option(None, "--category", help="Only these categories (repeat).")
_XCAT = typer.Option(None, "--exclude-category", help="Leave out these categories (repeat).")
_BRAND = typer.Option(None, "--brand", help="Only these brands (repeat).")
_XBRAND = typer.Option(None, "--exclude-brand", help="Leave out these brands (repeat).")
_MINP = typer.Option(None, "--min-price")
_MAXP = typer.Option(None, "--max-price")
_OOS = typer.Option(False, "--include-out-of-stock", help="Turn in_stock_only off.")
_PURCH = typer.Option(False, "--include-purchased", help="Turn exclude_purchased off.")
_SEEN = typer.Option(
    False, "--include-seen", help="Turn exclude_seen off (items viewed, carted, not bought)."
)
_EXCL = typer.Option(None, "--exclude", help="Item ids to leave out (repeat).")
_DIV = typer.Option(None, "--diversity", help="0..1 (default: server setting).")


@app.command("products")
@friendly_errors
def products(
    ctx: typer.Context,
    member_id: str,
    k: int = _K,
    channel: str = typer.Option("", "--channel"),
    scene: str = typer.Option("", "--scene"),
    category: list[str] | None = _CAT,
    exclude_category: list[str] | None = _XCAT,
    brand: list[str] | None = _BRAND,
    exclude_brand: list[str] | None = _XBRAND,
    min_price: float | None = _MINP,
    max_price: float | None = _MAXP,
    include_out_of_stock: bool = _OOS,
    include_purchased: bool = _PURCH,
    include_seen: bool = _SEEN,
    exclude: list[str] | None = _EXCL,
    diversity: float | None = _DIV,
    target: str | None = _TARGET,
    timeout: float = _TIMEOUT,
    as_json: bool = _JSON,
) -> None:
    """RecommendProducts for MEMBER_ID."""
    from recsvc.v1 import recommender_pb2

    f = _filters(
        category, exclude_category, brand, exclude_brand, min_price, max_price,
        include_out_of_stock, include_purchased, include_seen, exclude, diversity,
    )  # fmt: skip
    req = recommender_pb2.RecommendProductsRequest(
        member_id=member_id, k=k, channel=channel, scene=scene, filters=f
    )
    _print(_call(_stub(ctx, target).RecommendProducts, req, timeout), as_json)


@app.command("content")
@friendly_errors
def content(
    ctx: typer.Context,
    member_id: str,
    k: int = _K,
    channel: str = typer.Option("", "--channel"),
    include_seen: bool = _SEEN,
    exclude: list[str] | None = _EXCL,
    diversity: float | None = _DIV,
    target: str | None = _TARGET,
    timeout: float = _TIMEOUT,
    as_json: bool = _JSON,
) -> None:
    """RecommendContent for MEMBER_ID."""
    from recsvc.v1 import recommender_pb2

    f = _filters(None, None, None, None, None, None, False, False, include_seen, exclude, diversity)
    req = recommender_pb2.RecommendContentRequest(member_id=member_id, k=k, channel=channel, filters=f)
    _print(_call(_stub(ctx, target).RecommendContent, req, timeout), as_json)


@app.command("similar")
@friendly_errors
def similar(
    ctx: typer.Context,
    item_id: str,
    k: int = _K,
    kind: str = typer.Option("", "--kind", help="product or content (default: same as the item)."),
    target: str | None = _TARGET,
    timeout: float = _TIMEOUT,
    as_json: bool = _JSON,
) -> None:
    """SimilarItems for ITEM_ID ("you may also like")."""
    from recsvc.errors import InvalidArgument
    from recsvc.v1 import common_pb2, recommender_pb2

    kinds = {
        "": common_pb2.ITEM_KIND_UNSPECIFIED,
        "product": common_pb2.PRODUCT,
        "content": common_pb2.CONTENT,
    }
    if kind not in kinds:
        raise InvalidArgument(f"--kind must be product or content, got {kind!r}", reason="INVALID_KIND")
    req = recommender_pb2.SimilarItemsRequest(item_id=item_id, k=k, kind=kinds[kind])
    _print(_call(_stub(ctx, target).SimilarItems, req, timeout), as_json)


@app.command("batch")
@friendly_errors
def batch(
    ctx: typer.Context,
    member_ids: list[str],
    k: int = _K,
    content_items: bool = typer.Option(False, "--content", help="Recommend content instead of products."),
    target: str | None = _TARGET,
    timeout: float = typer.Option(30.0, "--timeout", min=0.001, max=86400.0),
    as_json: bool = _JSON,
) -> None:
    """BatchRecommend for several MEMBER_IDS (streamed back one per member)."""

    from recsvc.cli.common import console
    from recsvc.v1 import common_pb2, recommender_pb2

    req = recommender_pb2.BatchRecommendRequest(
        member_ids=member_ids, k=k, kind=common_pb2.CONTENT if content_items else common_pb2.PRODUCT
    )
    refused = 0
    with rpc_errors():
        for result in _stub(ctx, target).BatchRecommend(req, timeout=timeout):
            refused += bool(result.error)
            if as_json or result.error:
                _print(result, as_json)  # member_id with its response or error
            else:
                console.print(f"[bold]{result.member_id}[/]")
                _print(result.response, as_json)
    if refused:  # as `catalog delist` does for the items it could not change
        raise typer.Exit(1)


@app.command("event")
@friendly_errors
def event(
    ctx: typer.Context,
    member_id: str,
    item_id: str,
    event_type: str = typer.Argument(..., help="view, click, favorite, add_to_cart, share, purchase, ..."),
    channel: str = typer.Option("", "--channel"),
    target: str | None = _TARGET,
    timeout: float = _TIMEOUT,
    as_json: bool = _JSON,
) -> None:
    """RecordEvent: MEMBER_ID did EVENT_TYPE on ITEM_ID (now)."""
    from recsvc.v1 import recommender_pb2

    req = recommender_pb2.RecordEventRequest(
        member_id=member_id, item_id=item_id, event_type=event_type, channel=channel
    )
    _print(_call(_stub(ctx, target).RecordEvent, req, timeout), as_json)


@app.command("reload")
@friendly_errors
def reload(
    ctx: typer.Context,
    model_uri: str = typer.Option("", "--model-uri", help="Empty: the configured source."),
    target: str | None = _TARGET,
    timeout: float = typer.Option(120.0, "--timeout", min=0.001, max=86400.0),
    as_json: bool = _JSON,
) -> None:
    """ReloadModel (admin): load the configured model source, or --model-uri, now."""
    from recsvc.v1 import recommender_pb2

    req = recommender_pb2.ReloadModelRequest(model_uri=model_uri)
    _print(_call(_stub(ctx, target).ReloadModel, req, timeout), as_json)


@app.command("info")
@friendly_errors
def info(
    ctx: typer.Context,
    target: str | None = _TARGET,
    timeout: float = _TIMEOUT,
    as_json: bool = _JSON,
) -> None:
    """GetModelInfo: which model serves, its data and metrics."""
    from recsvc.v1 import recommender_pb2

    _print(_call(_stub(ctx, target).GetModelInfo, recommender_pb2.GetModelInfoRequest(), timeout), as_json)
