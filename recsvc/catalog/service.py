"""``recsvc.v1.Catalog``: checks each item, writes the changes to Redis (``CatalogStore``) and
answers per item. Every process follows the changes (``CatalogFollower``), this one included.

Per-item errors are results, not call errors: a bad item never blocks the good ones, and each
item is applied whole or not at all. Call errors (typed, mapped by the one interceptor):
``INVALID_ARGUMENT`` for a call that is wrong as a whole (no items, too many), ``NOT_FOUND`` for
``SetStock``/``GetItem`` of an unknown item, ``UNAVAILABLE`` / ``CATALOG_UNAVAILABLE`` while Redis
does not answer (nothing is changed then; the last known catalog stays in force).

``SetStock``, ``SetStockMany``, ``DelistItems``, ``RelistItems`` and ``GetItem`` are ``async def``
and run on the serving event loop, the change script awaited through the store's asyncio Redis
client: a live stream's stock changes arrive at hundreds a second beside the recommendations, and
a synchronous call's hand-off to the server's thread pool and back cost more CPU than the change
itself (docs/benchmarks.md, "Live catalog"). Calls of more than ``ON_LOOP_ITEMS`` items, and
``UpsertItems`` (every field of every item checked), run in a thread instead, where their
checks (microseconds per item: tens of milliseconds for thousands) do not hold up the loop.
With ``catalog.write_linger_ms`` above 0 (off by default) the calls on the loop that arrive
within that long of each other share one change script (``recsvc.catalog.group``), each still
answered on its own.

``StreamStock`` takes a feed that sends one change at a time on one stream: what arrives within
``catalog.stream_linger_ms`` is checked, written and answered as one ``SetStockMany`` would be,
so the per-call costs (a gRPC call, a Redis round trip) are paid once per batch, not per change.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import redis

from pipelines.cells import whole_number
from recsvc.bounds import CONTROL_CHARACTERS, MAX_PRICE
from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.catalog.group import GroupCommit
from recsvc.catalog.live import LiveCatalog
from recsvc.catalog.store import SCRIPT_CHUNK, CatalogStore, Change, ChangeOutcome
from recsvc.catalog.view import CatalogView
from recsvc.errors import InvalidArgument, NotFound, RecsvcError, StoreUnavailable
from recsvc.idmap import id_problem, normalize_id
from recsvc.models.served import ServedModels
from recsvc.redis_client import STORE_ERRORS, outage_in_words
from recsvc.server.request_checks import check_id
from recsvc.settings import Settings
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

MAX_TITLE = 200
MAX_LABEL = 64
MAX_FEATURED = 200  # products one content item features
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
MAX_PUBLISHED_AT = 253_402_300_799  # 9999-12-31T23:59:59Z
_KIND_NAMES = {common_pb2.PRODUCT: "product", common_pb2.CONTENT: "content"}
_PB_KIND = {KIND_PRODUCT: common_pb2.PRODUCT, KIND_CONTENT: common_pb2.CONTENT}
# Larger flag calls (SetStockMany, DelistItems, RelistItems) leave the event loop for a thread.
ON_LOOP_ITEMS = 100
# StreamStock: changes received but not yet written, per stream.
STREAM_BACKLOG = 1_000
# Group commit (catalog.write_linger_ms): at most this many changes share one write.
GROUP_ITEMS = SCRIPT_CHUNK


@dataclass
class _Plan:
    """A change call after its checks: the ids in call order, the items refused by the checks
    (by position), and the changes to send to Redis (with their positions)."""

    order: list[str]
    failed: dict[int, RecsvcError]
    changes: list[tuple[int, Change]]


class CatalogServicer(catalog_pb2_grpc.CatalogServicer):
    def __init__(
        self, settings: Settings, models: ServedModels, live: LiveCatalog, store: CatalogStore
    ) -> None:
        self._settings = settings
        self._models = models
        self._live = live
        self._store = store
        self._closer: asyncio.Task[None] | None = None
        self._outage = StoreOutage()
        linger_ms = settings.catalog.write_linger_ms
        self._group = (
            GroupCommit(self._write_async, linger_ms / 1000, max_items=GROUP_ITEMS) if linger_ms > 0 else None
        )

    # ---- helpers ---------------------------------------------------------------------------
    def _view(self) -> CatalogView:
        _, model = self._models.default()
        return self._live.view(model)

    def _count(self, n: int) -> None:
        if n == 0:
            raise InvalidArgument("no items in the request", reason="NO_ITEMS")
        if n > self._settings.catalog.max_batch:
            raise InvalidArgument(
                f"{n} items in one call; at most {self._settings.catalog.max_batch}", reason="TOO_MANY_ITEMS"
            )

    def _apply(self, changes: Sequence[Change]) -> list[ChangeOutcome]:
        if not changes:
            return []
        try:
            outcomes = self._store.apply(changes)
        except STORE_ERRORS as exc:
            self._outage.refused(len(changes), exc)
            raise _refused(exc) from exc
        self._outage.answered()
        return outcomes

    async def _apply_async(self, changes: Sequence[Change], group: bool = False) -> list[ChangeOutcome]:
        """Write ``changes`` from the event loop; ``group``: with the calls that arrive within
        ``catalog.write_linger_ms`` (one script for them all), when that is on."""
        if not changes:
            return []
        self._close_with_loop()
        try:
            if group and self._group is not None:
                # The group's write has its own bound; this one answers a call whose group
                # waits behind a stalled one (its changes may still be written later).
                catalog = self._settings.catalog
                limit = (catalog.write_linger_ms + catalog.write_timeout_ms) / 1000
                async with asyncio.timeout(limit):
                    outcomes = await self._group.apply(changes)
            else:
                outcomes = await self._write_async(changes)
        except _WRITE_FAILURES as exc:
            self._outage.refused(len(changes), exc)
            raise _refused(exc) from exc
        self._outage.answered()
        return outcomes

    async def _write_async(self, changes: Sequence[Change]) -> list[ChangeOutcome]:
        # One bound for the whole write: a cluster that stopped answering makes the client
        # re-read the slot map from every seed in turn, each a timeout (8 s for 2 s measured).
        # asyncio.timeout, not wait_for: no extra task on the stock hot path.
        async with asyncio.timeout(self._settings.catalog.write_timeout_ms / 1000):
            return await self._store.apply_async(changes)

    def _close_with_loop(self) -> None:
        """Close the asyncio client on its loop when the server ends: the server host cancels
        every task left on its loop before closing it (``recsvc.server.aio_host``), and this
        one's cancellation closes the client's connections there."""
        if self._closer is None and self._store.aclient is not None:
            self._closer = asyncio.get_running_loop().create_task(_close_when_cancelled(self._store.aclient))

    def _respond(self, plan: _Plan, outcomes: Sequence[ChangeOutcome]) -> catalog_pb2.ChangeItemsResponse:
        resp = catalog_pb2.ChangeItemsResponse()
        results: dict[int, catalog_pb2.ItemResult] = {}
        for i, err in plan.failed.items():
            results[i] = _error(plan.order[i], err)
        for (i, change), outcome in zip(plan.changes, outcomes, strict=True):
            if outcome.applied:
                results[i] = catalog_pb2.ItemResult(
                    item_id=change.item_id, applied=True, version=outcome.version
                )
            elif outcome.kind_conflict:
                results[i] = _error(
                    change.item_id,
                    InvalidArgument(f"item {change.item_id!r} cannot change its kind", reason="KIND_CHANGE"),
                )
            else:
                results[i] = _error(
                    change.item_id,
                    NotFound(f"item {change.item_id!r} is not in the catalog", reason="ITEM_NOT_FOUND"),
                )
        for i in range(len(plan.order)):
            resp.results.append(results[i])
        resp.applied = sum(1 for r in resp.results if r.applied)
        resp.failed = len(resp.results) - resp.applied
        if resp.failed and resp.ByteSize() > self._settings.serving.max_message_bytes - 65_536:
            # a batch larger than the default: the refusals keep their code and reason, so every
            # result, applied or not, still reaches the caller
            for r in resp.results:
                r.message = ""
        return resp

    def _known(self, view: CatalogView, item_id: str) -> tuple[bool, bool]:
        """(known here, in this bundle): an item only another replica knows yet is checked by Redis."""
        row = view.row(item_id)
        return row is not None, row is not None and row < view.n

    def _flag_plan(self, item_ids: Sequence[str], field: str, values: Sequence[bool]) -> _Plan:
        self._count(len(item_ids))
        view = self._view()
        plan = _Plan(list(item_ids), {}, [])
        seen: set[str] = set()
        for i, (item_id, value) in enumerate(zip(item_ids, values, strict=True)):
            try:
                # the id as stored (NFC): ``check_id`` returns it normalised
                item_id = check_id(item_id, "item_id", self._settings.data)
                if item_id in seen:
                    raise InvalidArgument(
                        f"item {item_id!r} appears twice in the call", reason="DUPLICATE_ITEM"
                    )
                seen.add(item_id)
            except RecsvcError as exc:
                plan.failed[i] = exc
                continue
            _, in_bundle = self._known(view, item_id)
            plan.changes.append((i, Change(item_id, {field: bool(value)}, must_exist=not in_bundle)))
        return plan

    def _flag_changes(
        self, item_ids: Sequence[str], field: str, values: Sequence[bool]
    ) -> catalog_pb2.ChangeItemsResponse:
        plan = self._flag_plan(item_ids, field, values)
        return self._respond(plan, self._apply([c for _, c in plan.changes]))

    async def _flag_changes_async(
        self, item_ids: Sequence[str], field: str, values: Sequence[bool]
    ) -> catalog_pb2.ChangeItemsResponse:
        self._count(len(item_ids))
        if len(item_ids) > ON_LOOP_ITEMS or self._store.aclient is None:
            return await asyncio.to_thread(self._flag_changes, item_ids, field, values)
        plan = self._flag_plan(item_ids, field, values)
        return self._respond(plan, await self._apply_async([c for _, c in plan.changes], group=True))

    # ---- RPCs ------------------------------------------------------------------------------
    def UpsertItems(
        self, request: catalog_pb2.UpsertItemsRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.ChangeItemsResponse:
        self._count(len(request.items))
        view = self._view()
        failed: dict[int, RecsvcError] = {}
        changes: list[tuple[int, Change]] = []
        seen: set[str] = set()
        patches: list[tuple[int, str, dict[str, Any], str | None]] = []
        for i, item in enumerate(request.items):
            try:
                patches.append((i, *self._patch(view, item, seen)))
            except RecsvcError as exc:
                failed[i] = exc
        # Content may feature a product created in the same call, if that product is applied.
        batch_products = {item_id for _, item_id, _, kind in patches if kind == "product"}
        for i, item_id, patch, _ in patches:
            try:
                self._check_featured(view, patch, batch_products)
            except RecsvcError as exc:
                failed[i] = exc
                continue
            # must_exist=False: a complete new item may be created; a partial one was checked
            # against this process's catalog (an item created on another replica less than the
            # propagation time ago counts as new here and needs every field).
            changes.append((i, Change(item_id, patch, must_exist=False)))
        plan = _Plan([it.item_id for it in request.items], failed, changes)
        return self._respond(plan, self._apply([c for _, c in changes]))

    @staticmethod
    def _check_featured(view: CatalogView, patch: dict[str, Any], batch_products: set[str]) -> None:
        """Each featured id is a product of this catalog or one this call applies."""
        for fid in patch.get("featured_item_ids", ()):
            frow = view.row(fid)
            if fid not in batch_products and (frow is None or int(view.item_kind[frow]) != KIND_PRODUCT):
                raise InvalidArgument(
                    f"featured item {fid[:80]!r} is not a product in the catalog",
                    reason="UNKNOWN_FEATURED_ITEM",
                )

    def _patch(
        self, view: CatalogView, item: catalog_pb2.CatalogItem, seen: set[str]
    ) -> tuple[str, dict[str, Any], str | None]:
        """(the item's id as stored, its checked fields, its kind after them: None when unknown);
        featured ids are checked by ``_check_featured`` once the call's valid products are known."""
        item_id = check_id(item.item_id, "item_id", self._settings.data)
        if item_id in seen:
            raise InvalidArgument(f"item {item_id!r} appears twice in the call", reason="DUPLICATE_ITEM")
        seen.add(item_id)
        row = view.row(item_id)
        if row is None and (whole := whole_number(item_id)) != item_id:
            # data files read "12347.0" as 12347 (docs/data.md, the same rule): created under
            # this spelling it would be another item than the export's, and the next training's
            raise InvalidArgument(
                f"item_id {item_id!r} is read as {whole} in data files (a zero fraction is dropped); "
                f"send {whole!r}",
                reason="INVALID_ITEM_ID",
            )
        patch: dict[str, Any] = {}
        if item.kind != common_pb2.ITEM_KIND_UNSPECIFIED:
            if item.kind not in _KIND_NAMES:
                raise InvalidArgument(f"unknown kind {item.kind}", reason="INVALID_KIND")
            if row is not None and int(view.item_kind[row]) != (
                KIND_PRODUCT if item.kind == common_pb2.PRODUCT else KIND_CONTENT
            ):
                raise InvalidArgument(f"item {item_id!r} cannot change its kind", reason="KIND_CHANGE")
            patch["kind"] = _KIND_NAMES[item.kind]
        kind = patch.get("kind") or (view.kind_name(row) if row is not None else None)
        for name, limit in (("title", MAX_TITLE), ("category", MAX_LABEL), ("brand", MAX_LABEL)):
            value = getattr(item, name)
            if value:
                # stored trimmed, as the data contract reads a file's text: a brand filter
                # "Lumi Field" must find " Lumi Field " (all blank stays BLANK_*)
                value = value.strip()
                _check_text(name, value, limit)
                patch[name] = value
        if item.HasField("price"):
            price = item.price
            if not math.isfinite(price):
                raise InvalidArgument("price must be a finite number", reason="BAD_PRICE")
            if price < 0:
                raise InvalidArgument("price must be >= 0", reason="NEGATIVE_PRICE")
            if price > MAX_PRICE:
                raise InvalidArgument(f"price is above {MAX_PRICE:.0f}", reason="PRICE_OUT_OF_RANGE")
            patch["price"] = float(price)
        if item.HasField("in_stock"):
            patch["in_stock"] = bool(item.in_stock)
        if item.HasField("published_at"):
            if not 0 <= item.published_at <= MAX_PUBLISHED_AT:
                raise InvalidArgument(
                    "published_at must be 0..253402300799 (seconds, UTC)", reason="BAD_PUBLISHED_AT"
                )
            patch["published_at"] = int(item.published_at)
        if item.set_featured:
            if kind != "content":
                raise InvalidArgument("only content features products", reason="FEATURED_ON_PRODUCT")
            if len(item.featured_item_ids) > MAX_FEATURED:
                raise InvalidArgument(
                    f"{len(item.featured_item_ids)} featured items; at most {MAX_FEATURED}",
                    reason="TOO_MANY_FEATURED",
                )
            featured = [normalize_id(f) for f in item.featured_item_ids]
            for fid in featured:
                if id_problem(fid, self._settings.data.max_id_length):
                    raise InvalidArgument(
                        f"featured item {fid[:80]!r} is not a valid item id", reason="BAD_FEATURED_ID"
                    )
            patch["featured_item_ids"] = featured
        if row is None:  # a new item: everything the catalog contract requires
            missing = [
                name
                for name, needed in (
                    ("kind", True),
                    ("title", True),
                    ("category", True),
                    ("brand", kind == "product"),
                    ("price", True),
                    ("in_stock", kind == "product"),
                    ("published_at", kind == "content"),
                )
                if needed and name not in patch
            ]
            if missing:
                raise InvalidArgument(
                    f"new item {item_id!r} lacks {', '.join(missing)}", reason=f"MISSING_{missing[0].upper()}"
                )
        elif not patch:
            raise InvalidArgument(f"nothing to change for item {item_id!r}", reason="EMPTY_CHANGE")
        if kind == "content" and patch.get("price", 0.0) != 0.0:  # new or known content alike
            raise InvalidArgument("content has price 0", reason="PRICE_ON_CONTENT")
        return item_id, patch, kind

    async def SetStock(
        self, request: catalog_pb2.SetStockRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ChangeItemsResponse:
        resp = await self._flag_changes_async([request.item_id], "in_stock", [request.in_stock])
        result = resp.results[0]
        if not result.applied:
            raise (NotFound if result.code == "NOT_FOUND" else InvalidArgument)(
                result.message, reason=result.reason
            )
        return resp

    async def SetStockMany(
        self, request: catalog_pb2.SetStockManyRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ChangeItemsResponse:
        return await self._flag_changes_async(
            [c.item_id for c in request.changes], "in_stock", [c.in_stock for c in request.changes]
        )

    async def StreamStock(
        self, requests: AsyncIterator[catalog_pb2.StockChange], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[catalog_pb2.ChangeItemsResponse]:
        """Stock changes one per message, answered in the order sent. The changes that arrive
        within ``stream_linger_ms`` of the first go to Redis as one write and are answered by one
        message (at most ``ON_LOOP_ITEMS``; a batch ends before a second change of the same item,
        so each item's changes apply in the order sent): a change then costs the server its share
        of one Redis round trip and one answer instead of a whole gRPC call and round trip."""
        linger = self._settings.catalog.stream_linger_ms / 1000
        inbox: asyncio.Queue[catalog_pb2.StockChange | _StreamEnd] = asyncio.Queue(maxsize=STREAM_BACKLOG)
        reader = asyncio.get_running_loop().create_task(_read_stream(requests, inbox))
        carry: catalog_pb2.StockChange | _StreamEnd | None = None
        try:
            while True:
                if carry is not None:  # it arrived during the last write: no waiting for more
                    first, carry, fresh = carry, None, False
                else:
                    fresh = inbox.empty()
                    first = await inbox.get()
                if isinstance(first, _StreamEnd):
                    if first.error is not None:
                        raise first.error
                    return
                batch, ids = [first], {normalize_id(first.item_id)}
                if fresh and linger > 0:
                    await asyncio.sleep(linger)  # the rest of the burst arrives meanwhile
                while len(batch) < ON_LOOP_ITEMS and not inbox.empty():
                    nxt = inbox.get_nowait()
                    # ids as ``check_id`` stores them (NFC): a second change of one item waits
                    if isinstance(nxt, _StreamEnd) or normalize_id(nxt.item_id) in ids:
                        carry = nxt
                        break
                    batch.append(nxt)
                    ids.add(normalize_id(nxt.item_id))
                yield await self._stream_batch(batch)
        finally:
            reader.cancel()

    async def _stream_batch(
        self, batch: Sequence[catalog_pb2.StockChange]
    ) -> catalog_pb2.ChangeItemsResponse:
        plan = self._flag_plan([c.item_id for c in batch], "in_stock", [c.in_stock for c in batch])
        try:
            outcomes = await self._apply_async([c for _, c in plan.changes])
        except StoreUnavailable as exc:  # these changes were refused; the stream goes on
            for i, _ in plan.changes:
                plan.failed[i] = exc
            plan.changes = []
            outcomes = []
        return self._respond(plan, outcomes)

    async def DelistItems(
        self, request: catalog_pb2.ItemIdsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ChangeItemsResponse:
        return await self._flag_changes_async(
            list(request.item_ids), "listed", [False] * len(request.item_ids)
        )

    async def RelistItems(
        self, request: catalog_pb2.ItemIdsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ChangeItemsResponse:
        return await self._flag_changes_async(
            list(request.item_ids), "listed", [True] * len(request.item_ids)
        )

    async def GetItem(
        self, request: catalog_pb2.GetItemRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.CatalogItem:
        item_id = check_id(request.item_id, "item_id", self._settings.data)
        view = self._view()
        row = view.row(item_id)
        if row is None:
            raise NotFound(f"item {item_id!r} is not in the catalog", reason="ITEM_NOT_FOUND")
        return item_message(view, row)

    def ExportCatalog(
        self, request: catalog_pb2.ExportCatalogRequest, context: grpc.ServicerContext
    ) -> Iterator[catalog_pb2.CatalogItem]:
        view = self._view()
        rows = sorted(range(view.n + len(view.new_ids)), key=view.item_id)
        for row in rows:
            yield item_message(view, row)


def item_message(view: CatalogView, row: int) -> catalog_pb2.CatalogItem:
    """An item as ``view`` sees it (bundle values with live changes applied)."""
    item_id = view.item_id(row)
    rec = view.records.get(item_id)
    brand = int(view.item_brand[row])
    kind = int(view.item_kind[row])
    msg = catalog_pb2.CatalogItem(
        item_id=item_id,
        kind=_PB_KIND.get(kind, common_pb2.ITEM_KIND_UNSPECIFIED),
        title=view.title(row),
        category=view.category_name(row),
        brand=view.brands[brand] if 0 <= brand < len(view.brands) else "",
        price=float(view.item_price[row]),
        in_stock=bool(view.item_in_stock[row]),
        published_at=int(view.item_published_at[row]),
        listed=bool(view.item_listed[row]),
        origin="new" if row >= view.n else ("changed" if rec is not None else "bundle"),
    )
    featured: Any = None
    if rec is not None:
        msg.version = rec.version
        msg.changed_at = rec.ts_ms / 1000.0
        featured = rec.fields.get("featured_item_ids")
    if featured is None and row < view.n:
        # as trained: the catalog file's featured products, kept in the bundle
        featured = [view.item_id(r) for r in view.model.bundle.featured(row).tolist()]
    if isinstance(featured, list) and featured:
        msg.featured_item_ids.extend(str(f) for f in featured)
        msg.set_featured = True
    return msg


def _check_text(name: str, value: str, limit: int) -> None:
    """A title, category or brand: not blank, no control characters, at most ``limit`` long."""
    if len(value) > limit:
        raise InvalidArgument(
            f"{name} is {len(value)} characters; at most {limit}", reason=f"{name.upper()}_TOO_LONG"
        )
    # blank also when all it holds is invisible: spaces and format characters (a zero-width
    # space, a byte-order mark); those inside visible text stay (emoji sequences join with them)
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in value):
        raise InvalidArgument(f"{name} is blank", reason=f"BLANK_{name.upper()}")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{name} holds a control character", reason=f"BAD_{name.upper()}")


@dataclass(frozen=True)
class _StreamEnd:
    """The end of a request stream: the caller closed it (``error`` None) or sent bytes that are
    not a request (the decoding check's error, raised after the earlier changes are answered)."""

    error: Exception | None = None


async def _read_stream(requests: AsyncIterator[Any], inbox: asyncio.Queue[Any]) -> None:
    """Move a stream's requests into ``inbox`` as they arrive (it holds at most ``STREAM_BACKLOG``:
    a caller faster than Redis is slowed by gRPC's flow control, not buffered without end)."""
    try:
        async for request in requests:
            await inbox.put(request)
        await inbox.put(_StreamEnd())
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a malformed message (MalformedRequest) or the call ending
        await inbox.put(_StreamEnd(exc))


class StoreOutage:
    """Logs a Redis outage under the change calls twice, when it starts and when it ends (with
    the changes refused meanwhile), not once per refused call: a stock feed goes on sending
    during an outage, and one line per batch would bury everything else in the log."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # large calls apply from a worker thread
        self._since: float | None = None
        self._items = 0

    def refused(self, n: int, exc: Exception) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = self._clock()
            self._items += n
        if first:
            log.warning(
                "event=catalog_change_refused items=%d error=%s (further refusals are counted until "
                "Redis answers again: event=catalog_store_back)",
                n,
                type(exc).__name__,
            )

    def answered(self) -> None:
        if self._since is None:  # the usual case: no lock on the hot path
            return
        with self._lock:
            since, items = self._since, self._items
            self._since, self._items = None, 0
        if since is not None:
            log.warning("event=catalog_store_back refused_items=%d down_s=%.1f", items, self._clock() - since)


# a store error, or the whole call's deadline (asyncio.timeout) passing
_WRITE_FAILURES: tuple[type[Exception], ...] = (*STORE_ERRORS, TimeoutError)


def _refused(exc: Exception) -> StoreUnavailable:
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        # Sent but not answered: a stalled Redis may still run the script when it resumes.
        outcome = (
            "the change may still be applied when it resumes; a change sets values, so retrying "
            "the call is safe"
        )
    else:
        outcome = "nothing was changed by the failed part; retry the call"
    return StoreUnavailable(
        f"the catalog store did not answer: {outage_in_words(exc)}; {outcome}",
        reason="CATALOG_UNAVAILABLE",
    )


async def _close_when_cancelled(client: Any) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await client.aclose()


# A refused id is echoed, and its message kept, at most this many bytes of UTF-8 (a valid id is
# at most 64 bytes): a call of refused odd ids (control characters print four times their size)
# must not make the answer to the valid changes beside them too large to send, which would hide
# that those were applied. 10,000 results of both fit the default 4 MiB answer.
MAX_ECHOED_ID = 96
MAX_MESSAGE = 200


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character boundary."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit].decode(errors="ignore")


def _error(item_id: str, err: RecsvcError) -> catalog_pb2.ItemResult:
    return catalog_pb2.ItemResult(
        item_id=_cut(item_id, MAX_ECHOED_ID),
        applied=False,
        code=err.code.name,
        reason=err.reason,
        message=_cut(err.message, MAX_MESSAGE),
    )


def add_catalog_service(
    server: Any, settings: Settings, models: ServedModels, live: LiveCatalog, store: CatalogStore
) -> str:
    """Register ``recsvc.v1.Catalog``; return its full name (for health and reflection)."""
    catalog_pb2_grpc.add_CatalogServicer_to_server(CatalogServicer(settings, models, live, store), server)
    return str(catalog_pb2.DESCRIPTOR.services_by_name["Catalog"].full_name)
