"""The live catalog in Redis: one record per changed item and a change feed every process follows.

Keys, all under the one hash tag ``{catalog}`` (one Redis Cluster slot, so one script may touch
them all atomically):

- ``<prefix>:{catalog}:items``  hash item_id -> JSON record ``{"v": version, "ts": ms, "f":
  {field: value}, "t": {field: ms}, "c": version}``: the item's live fields (only those ever
  changed for a trained item; every field for a new one), the time each was last set, the version
  of the last change and the version that created the record.
- ``<prefix>:{catalog}:seq``    the last version handed out (versions increase across the catalog).
- ``<prefix>:{catalog}:feed``   a stream, one entry per change call: ``v0`` (the first version in
  it), ``n`` (how many items) and item_id -> record for each item, trimmed with ``MAXLEN ~``.

Every change is one Lua script (``_CHANGE_SCRIPT``) that merges the patch into each record, takes
the next versions and appends the feed entry, atomically; versions in the feed are therefore
contiguous, which is how a follower (``CatalogFollower``) knows it missed nothing. Times are the
Redis server's clock, the same for every replica.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import immutables
import orjson

from recsvc.gc_pause import gc_paused
from recsvc.redis_client import STORE_ERRORS

log = logging.getLogger(__name__)

TAG = "{catalog}"
ITEMS_SUFFIX = "items"
SEQ_SUFFIX = "seq"
FEED_SUFFIX = "feed"
# Fields a bundle swap never retires: a catalog file (the data contract) cannot say them, so a
# bundle trained on one does not hold them (an item delisted stays delisted until relisted).
NEVER_RETIRED = frozenset({"listed"})
# Largest number of items per script call: the feed entry is built with unpack(), whose Lua stack
# limit is ~8,000 values (two per item). Bigger calls are split; each item is still atomic.
SCRIPT_CHUNK = 1000
# A follower's pause between two slices of a feed batch (``CatalogFollower``): long enough for a
# thread waiting for the GIL to be woken and take it.
_YIELD_S = 0.0002
# Batches a follower applies at once before ``settle_s`` paces it (``CatalogFollower._pace``).
_BURST_BATCHES = 4

# KEYS: 1 items, 2 seq, 3 feed. ARGV: 1 feed max length, 2 item count, then per item: id, patch
# JSON, must_exist ('1': skip the item unless its record is a whole item, with a kind: the caller
# did not find it in its bundle). Returns {v0 or 0, time ms, status per item: 1 applied,
# 0 missing, 2 refused: the patch changes the kind the record has (checked here too: a process
# may not have seen the record yet)}.
_CHANGE_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[2])
local entry = {}
local status = {}
local v0 = 0
local applied = 0
for i = 0, n - 1 do
  local id = ARGV[3 + 3 * i]
  local old = redis.call('HGET', KEYS[1], id)
  local rec
  if old then rec = cjson.decode(old) else rec = {f = {}, t = {}} end
  local patch = cjson.decode(ARGV[4 + 3 * i])
  if ARGV[5 + 3 * i] == '1' and not (old and rec.f.kind) then
    -- not in the caller's bundle: only a record of a whole (new) item names one; a record of
    -- changes to an item a newer bundle dropped names nothing
    status[#status + 1] = 0
  elseif patch.kind and rec.f.kind and patch.kind ~= rec.f.kind then
    status[#status + 1] = 2
  else
    if type(rec.t) ~= 'table' then rec.t = {} end
    for k, val in pairs(patch) do
      rec.f[k] = val
      rec.t[k] = now
    end
    rec.v = redis.call('INCR', KEYS[2])
    if not old then rec.c = rec.v end
    if v0 == 0 then v0 = rec.v end
    rec.ts = now
    local enc = cjson.encode(rec)
    redis.call('HSET', KEYS[1], id, enc)
    entry[#entry + 1] = id
    entry[#entry + 1] = enc
    applied = applied + 1
    status[#status + 1] = 1
  end
end
if applied > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'v0', v0, 'n', applied, unpack(entry))
end
return {v0, now, status}
"""


def catalog_key(prefix: str, suffix: str) -> str:
    """e.g. ``recsvc:{catalog}:items``."""
    return f"{prefix}:{TAG}:{suffix}"


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """An item's live state as Redis holds it."""

    version: int
    ts_ms: int  # last change
    fields: dict[str, Any]
    field_ts_ms: dict[str, int]
    # The version that created the record (unique, in feed order; 0 for a record written before
    # it was kept): new items take their rows in this order (``CatalogView``).
    created: int = 0
    # When its oldest and newest field was set (ms): ``fresh`` answers most records without a
    # look at each field (a whole view build asks it of every record).
    oldest_ms: int = field(init=False, compare=False, repr=False, default=0)
    newest_ms: int = field(init=False, compare=False, repr=False, default=0)

    def __post_init__(self) -> None:
        times = [self.field_ts_ms.get(k, self.ts_ms) for k in self.fields]
        object.__setattr__(self, "oldest_ms", min(times, default=self.ts_ms))
        object.__setattr__(self, "newest_ms", max(times, default=self.ts_ms))

    def fresh(self, as_of_ms: int) -> dict[str, Any]:
        """The fields set at or after ``as_of_ms`` (a bundle's catalog time: older changes are
        retired), and ``listed`` whenever it was set: the catalog file a bundle is trained on has
        no column for it, so no bundle can stand for a delisting. Read-only: it may be
        ``fields`` itself."""
        if self.oldest_ms >= as_of_ms:
            return self.fields
        if self.newest_ms < as_of_ms:
            return {k: self.fields[k] for k in NEVER_RETIRED if k in self.fields}
        return {
            k: v
            for k, v in self.fields.items()
            if k in NEVER_RETIRED or self.field_ts_ms.get(k, self.ts_ms) >= as_of_ms
        }

    @classmethod
    def parse(cls, raw: bytes | str) -> ItemRecord:
        data = orjson.loads(raw)
        fields = data.get("f") or {}
        if not isinstance(fields, dict):
            fields = {}
        times = data.get("t") or {}
        if not isinstance(times, dict):  # cjson writes an empty table as {} or []
            times = {}
        if fields.get("featured_item_ids") == {}:
            fields["featured_item_ids"] = []
        return cls(
            int(data["v"]),
            int(data.get("ts", 0)),
            fields,
            {k: int(v) for k, v in times.items()},
            int(data.get("c", 0)),
        )


@dataclass(frozen=True, slots=True)
class Change:
    item_id: str
    patch: dict[str, Any]
    must_exist: bool  # refuse (NOT_FOUND) unless Redis holds a whole item record for it (with a kind)


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    item_id: str
    applied: bool
    version: int
    kind_conflict: bool = False  # refused: the record in Redis has another kind


class CatalogStore:
    """Writes changes (one script per chunk of items) and reads the whole state.

    ``aclient`` (``redis.asyncio``, the same server or cluster as ``client``), when given, serves
    ``apply_async``: the Catalog service's small calls on the serving event loop, with no thread
    hand-off per call. Its connections belong to the loop of its first call."""

    def __init__(self, client: Any, prefix: str, feed_maxlen: int, aclient: Any = None) -> None:
        self._client = client
        self.items_key = catalog_key(prefix, ITEMS_SUFFIX)
        self.seq_key = catalog_key(prefix, SEQ_SUFFIX)
        self.feed_key = catalog_key(prefix, FEED_SUFFIX)
        self._keys = [self.items_key, self.seq_key, self.feed_key]
        self._feed_maxlen = feed_maxlen
        self._script = client.register_script(_CHANGE_SCRIPT)
        self.aclient = aclient
        self._ascript = None if aclient is None else aclient.register_script(_CHANGE_SCRIPT)

    def apply(self, changes: Sequence[Change]) -> list[ChangeOutcome]:
        """Apply every change (raises ``redis.RedisError`` when Redis does not answer: then a
        chunk either was applied whole or not at all, and a retry is safe: a change sets values)."""
        out: list[ChangeOutcome] = []
        for chunk in _chunks(changes):
            v0, _now, status = self._script(keys=self._keys, args=self._args(chunk))
            out += _outcomes(chunk, v0, status)
        return out

    async def apply_async(self, changes: Sequence[Change]) -> list[ChangeOutcome]:
        """``apply`` through ``aclient``, awaiting each script on the caller's event loop."""
        if self._ascript is None:
            raise RuntimeError("CatalogStore was built without an asyncio client")
        out: list[ChangeOutcome] = []
        for chunk in _chunks(changes):
            v0, _now, status = await self._ascript(keys=self._keys, args=self._args(chunk))
            out += _outcomes(chunk, v0, status)
        return out

    def _args(self, chunk: Sequence[Change]) -> list[Any]:
        args: list[Any] = [self._feed_maxlen, len(chunk)]
        for c in chunk:
            args += [c.item_id, json.dumps(c.patch, separators=(",", ":")), "1" if c.must_exist else "0"]
        return args

    def get(self, item_id: str) -> ItemRecord | None:
        raw = self._client.hget(self.items_key, item_id)
        return None if raw is None else ItemRecord.parse(raw)

    def snapshot(self) -> tuple[int, str, dict[str, ItemRecord]]:
        """(last version, last feed id, every record), read in one transaction: consistent, so
        following the feed from that id misses and repeats nothing."""
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self.seq_key)
        pipe.xrevrange(self.feed_key, "+", "-", count=1)
        pipe.hgetall(self.items_key)
        seq, last, records = pipe.execute()
        last_id = _text(last[0][0]) if last else "0-0"
        return (
            int(seq or 0),
            last_id,
            {_text(k): ItemRecord.parse(v) for k, v in records.items()},
        )


def _chunks(changes: Sequence[Change]) -> Iterator[Sequence[Change]]:
    for start in range(0, len(changes), SCRIPT_CHUNK):
        yield changes[start : start + SCRIPT_CHUNK]


def _outcomes(chunk: Sequence[Change], v0: Any, status: Sequence[Any]) -> list[ChangeOutcome]:
    """Per change of ``chunk``: applied (with its version: the applied ones count up from
    ``v0``) or not (Redis had no record of an item that had to exist, or one of another kind)."""
    out = []
    v = int(v0)
    for c, code in zip(chunk, status, strict=True):
        if int(code) == 1:
            out.append(ChangeOutcome(c.item_id, True, v))
            v += 1
        else:
            out.append(ChangeOutcome(c.item_id, False, 0, kind_conflict=int(code) == 2))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CatalogFollower:
    """Keeps this process's copy of the catalog records current, in a background thread.

    At start, after any failure and after a gap (the feed was trimmed past what this process
    saw), it reads the whole state (``CatalogStore.snapshot``) and then follows the feed from the
    id it noted, with ``XREAD BLOCK``. A record is applied only when its version is newer than
    the one held, so nothing is applied twice, and a gap in the versions means a full re-read,
    so nothing is lost. ``on_change(records)`` gets the whole map after each batch of changes
    (and ``None`` when only the time moved on, for scheduled items, see ``wake_at``).

    While Redis is down the last known records stay in force (nothing reverts to the bundle);
    ``on_state(ok)`` reports each transition for metrics and health logs.

    ``on_batch(records, changed_ids)``, when given, gets a feed batch instead of ``on_change``,
    with the ids whose records it brought (so the owner can apply just those; none when a
    scheduled item's time came).

    ``settle_s``: while changes keep coming, the follower applies at most one batch per
    ``settle_s`` (after a first few at once, ``_pace``), so a stream of changes (a live stream's
    stock at 200/s) is applied in a few batches a second instead of waking every process once
    per change. A change after a quiet moment is applied at once; one inside a stream waits at
    most ``settle_s`` (docs/benchmarks.md "Live catalog" measured both).

    ``slice_items``: a batch reaches the owner in slices of about this many item changes, with a
    short sleep between two. The work on a batch holds the GIL, which the serving thread needs
    for every call; a whole batch of a 250 ms settle is ~3 ms, a slice ~0.3 ms, so a call that
    arrives meanwhile waits for one slice instead. Each slice is published with the records and
    version as of its last change, so readers never see half an entry.
    """

    def __init__(
        self,
        store: CatalogStore,
        client: Any,
        on_change: Callable[[Mapping[str, ItemRecord]], None],
        on_state: Callable[[bool], None] | None = None,
        retry_s: float = 0.25,
        block_ms: int = 500,
        settle_s: float = 0.0,
        on_batch: Callable[[Mapping[str, ItemRecord], set[str]], None] | None = None,
        slice_items: int = 16,
    ) -> None:
        self._store = store
        self._slice_items = slice_items
        self._on_batch = on_batch
        self._client = client  # its socket timeout exceeds block_ms
        self._on_change = on_change
        self._on_state = on_state
        self._retry_s = retry_s
        self._block_ms = block_ms
        self._settle_s = settle_s
        self._allowance = float(_BURST_BATCHES)
        self._paced_at = time.monotonic()
        self.records: immutables.Map[str, ItemRecord] = immutables.Map()
        self.seq = 0
        self._last_id = "0-0"
        self._synced = threading.Event()
        self.ok = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Monotonic-clock deadline after which on_change should run even without a change (the
        # next scheduled item's publication); set by the owner.
        self.wake_at: float | None = None

    def start(self, wait_s: float = 5.0) -> CatalogFollower:
        """Start following; wait up to ``wait_s`` for the first full read, so a process serves
        with the current catalog (when Redis is down it serves the bundle and catches up later)."""
        self._thread = threading.Thread(target=self._run, name="recsvc-catalog", daemon=True)
        self._thread.start()
        if not self._synced.wait(wait_s):
            log.warning(
                "event=catalog_not_synced wait_s=%s serving the bundle's catalog until Redis answers", wait_s
            )
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self._block_ms / 1000 + 1)
            self._thread = None

    def _set_ok(self, ok: bool) -> None:
        if ok == self.ok:
            return
        self.ok = ok
        if ok:
            log.info("event=catalog_feed_connected records=%d version=%d", len(self.records), self.seq)
        else:
            log.warning(
                "event=catalog_feed_lost records=%d version=%d the last known catalog stays in force",
                len(self.records),
                self.seq,
            )
        if self._on_state is not None:
            self._on_state(ok)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._resync()
                self._set_ok(True)
                failures = 0
                self._follow()
            except _Gap as gap:
                log.warning("event=catalog_feed_gap %s re-reading the whole catalog", gap)
            except Exception as exc:
                self._set_ok(False)
                failures += 1
                if not isinstance(exc, STORE_ERRORS):
                    log.exception("event=catalog_follower_error")
                elif failures == 1:
                    log.warning(
                        "event=catalog_follower_error error=%s retry_s=%s", type(exc).__name__, self._retry_s
                    )
                self._stop.wait(self._retry_s)

    def _resync(self) -> None:
        # Redis is the truth: its snapshot replaces what this process held (also after Redis
        # lost its data, when the catalog falls back to the bundle's).
        with gc_paused():
            self.seq, self._last_id, records = self._store.snapshot()
            self.records = immutables.Map(records)
        self._on_change(self.records)
        self._synced.set()

    def _follow(self) -> None:
        while not self._stop.is_set():
            block = self._block_ms
            if self.wake_at is not None:
                block = max(1, min(block, int((self.wake_at - time.monotonic()) * 1000)))
            found = self._client.xread({self._store.feed_key: self._last_id}, count=500, block=block)
            applied = False
            for i, part in enumerate(_slices(found, self._slice_items)):
                if i:
                    # Between two slices the serving thread may take the GIL: a call waits for
                    # one slice's work, not a whole batch's. A bare release would not hand it
                    # over (this thread would take it straight back); a short sleep does.
                    time.sleep(_YIELD_S)
                changed = self._apply(part)
                if changed:
                    self._publish(changed)
                    applied = True
            if not applied and self.wake_at is not None and time.monotonic() >= self.wake_at:
                self._publish(set())  # a scheduled item's time came
            if applied and self._settle_s > 0:
                self._pace()

    def _pace(self) -> None:
        """Spend one batch of the allowance (``settle_s``): the allowance grows by one batch per
        ``settle_s`` up to ``_BURST_BATCHES``; with none left, wait until there is one. Changes a
        few seconds apart are each applied at once; a stream of them in one batch per
        ``settle_s``."""
        now = time.monotonic()
        self._allowance = min(_BURST_BATCHES, self._allowance + (now - self._paced_at) / self._settle_s) - 1
        self._paced_at = now
        if self._allowance < 0:
            self._stop.wait(-self._allowance * self._settle_s)

    def _publish(self, changed: set[str]) -> None:
        self.wake_at = None  # the owner sets it again when another scheduled item waits
        if self._on_batch is not None:
            self._on_batch(self.records, changed)
        else:
            self._on_change(self.records)

    def _apply(self, found: Iterable[Any] | None) -> set[str]:
        """Apply the feed entries in ``found``; the ids of the items whose records changed."""
        changed: set[str] = set()
        records = None
        for _stream, entries in found or ():
            for entry_id, data in entries:
                fields = {_text(k): v for k, v in data.items()}
                v0, n = int(fields.pop("v0")), int(fields.pop("n"))
                self._last_id = _text(entry_id)
                if v0 + n - 1 <= self.seq:
                    continue  # already in the snapshot this process read
                if v0 != self.seq + 1:
                    raise _Gap(f"expected_version={self.seq + 1} got={v0}")
                if records is None:
                    # A persistent map: changing a few records of a large catalog copies no
                    # whole map, and readers keep the one they hold.
                    records = self.records.mutate()
                for item_id, raw in fields.items():
                    rec = ItemRecord.parse(raw)
                    held = records.get(item_id)
                    if held is None or rec.version > held.version:
                        records[item_id] = rec
                        changed.add(item_id)
                self.seq = v0 + n - 1
        if records is not None:
            self.records = records.finish()
        return changed


def _slices(found: Iterable[Any] | None, items: int) -> Iterator[list[Any]]:
    """An XREAD reply in pieces of the same shape, each of at most ``items`` item changes, or of
    consecutive entries that each have more (an entry is never split: its versions are applied
    together; a bulk upsert of 10,000 items, ten entries, stays one view update, not ten)."""
    part: list[tuple[Any, list[Any]]] = []
    size = 0
    bulk = False  # the part holds entries of more than ``items`` changes
    for stream, entries in found or ():
        for entry in entries:
            n = max(1, len(entry[1]) - 2)  # the fields besides v0 and n: one per item
            if size and size + n > items and not (bulk and n > items):
                yield part
                part, size = [], 0
            if not part or part[-1][0] is not stream:
                part.append((stream, []))
            part[-1][1].append(entry)
            size += n
            bulk = n > items
    if part:
        yield part


class _Gap(Exception):
    """The feed no longer holds the entries after the last one this process applied."""
