"""What simulated callers ask for: the request messages a load test sends.

Reads the served bundle's id arrays (``member_ids.npy``, ``item_ids.npy``, ``item_kind.npy``;
memory-mapped, never copied whole) and draws:

- members by a Zipf long tail over the bundle's members (a few members call very often, most
  rarely), plus a configured share of members the model has never seen (cold start);
- product pages by their own Zipf tail, content items uniformly;
- events, outreach checks and reservations with the configured channel and type mixes.

Used by the Locust users (``load/locustfile.py``) and the fixed-rate aio client alike, so both
send the same traffic. Deterministic for a seed.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.loadconfig import LoadConfig
from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.errors import BundleError
from recsvc.v1 import common_pb2, outreach_pb2, recommender_pb2

_BLOCK = 4096  # draws are made in blocks: one numpy call per 4096 requests, not per request
PRODUCT_EVENTS = ("view", "click", "favorite", "add_to_cart", "share", "purchase")
CONTENT_EVENTS = ("content_view", "live_watch", "share")


@dataclass(frozen=True)
class ServedIds:
    """The ids a load test may use: members, products and content of one bundle."""

    members: np.ndarray  # bytes
    products: np.ndarray  # bytes
    content: np.ndarray  # bytes

    @classmethod
    def from_bundle(cls, bundle_dir: Path) -> ServedIds:
        try:
            members = np.load(bundle_dir / "member_ids.npy", mmap_mode="r")
            items = np.load(bundle_dir / "item_ids.npy", mmap_mode="r")
            kind = np.load(bundle_dir / "item_kind.npy", mmap_mode="r")
        except FileNotFoundError as exc:
            raise BundleError(f"{bundle_dir} is not a model bundle: {exc.filename} missing") from exc
        if kind.shape[0] != items.shape[0]:
            raise BundleError(f"{bundle_dir}: item_kind.npy and item_ids.npy differ in length")
        ids = cls(
            members=members,
            products=np.asarray(items[np.asarray(kind) == KIND_PRODUCT]),
            content=np.asarray(items[np.asarray(kind) == KIND_CONTENT]),
        )
        if ids.members.shape[0] == 0 or ids.products.shape[0] == 0:
            raise BundleError(f"{bundle_dir}: a load test needs members and products in the bundle")
        return ids


class ZipfSampler:
    """Indexes 0..n-1 drawn with P(rank r) ~ 1/r^s; ranks are shuffled onto indexes so the most
    popular index is not simply index 0 (ids are sorted, and sorted order means nothing)."""

    def __init__(self, n: int, exponent: float, rng: np.random.Generator) -> None:
        if n < 1:
            raise ValueError("ZipfSampler needs n >= 1")
        weights = 1.0 / np.power(np.arange(1, n + 1, dtype=np.float64), exponent)
        self._cdf = np.cumsum(weights)
        self._cdf /= self._cdf[-1]
        self._index_of_rank = rng.permutation(n)
        self._rng = rng
        self._buf = np.empty(0, dtype=np.int64)
        self._pos = 0

    def top(self, m: int) -> np.ndarray:
        """The ``m`` most likely indexes, most likely first."""
        return self._index_of_rank[:m]

    def draw(self) -> int:
        if self._pos >= self._buf.shape[0]:
            ranks = np.searchsorted(self._cdf, self._rng.random(_BLOCK), side="right")
            self._buf = self._index_of_rank[np.minimum(ranks, self._cdf.shape[0] - 1)]
            self._pos = 0
        value = int(self._buf[self._pos])
        self._pos += 1
        return value


class _Choice:
    """Weighted choice among a few labels, drawn in blocks."""

    def __init__(self, weights: dict[str, float], rng: np.random.Generator) -> None:
        self._labels = list(weights)
        p = np.asarray(list(weights.values()), dtype=np.float64)
        self._p = p / p.sum()
        self._rng = rng
        self._buf: list[str] = []

    def draw(self) -> str:
        if not self._buf:
            idx = self._rng.choice(len(self._labels), size=_BLOCK, p=self._p)
            self._buf = [self._labels[i] for i in idx]
        return self._buf.pop()


class Traffic:
    """Builds the next request of each kind. One instance per load-generating process."""

    def __init__(self, ids: ServedIds, config: LoadConfig, seed: int | None = None) -> None:
        self.ids = ids
        self.config = config
        rng = np.random.default_rng(config.members.seed if seed is None else seed)
        self._rng = rng
        self._members = ZipfSampler(ids.members.shape[0], config.members.zipf_exponent, rng)
        self._products = ZipfSampler(ids.products.shape[0], config.requests.product_zipf_exponent, rng)
        req = config.requests
        self._channel = _Choice(req.channels, rng)
        self._outreach_channel = _Choice(req.outreach_channels, rng)
        product_events = {k: v for k, v in req.event_types.items() if k in PRODUCT_EVENTS}
        content_events = {k: v for k, v in req.event_types.items() if k in CONTENT_EVENTS}
        self._product_event = _Choice(product_events or {"view": 1.0}, rng)
        self._content_event = _Choice(content_events or {"content_view": 1.0}, rng)
        content_weight = sum(v for k, v in req.event_types.items() if k in CONTENT_EVENTS and k != "share")
        total = sum(req.event_types.values())
        self._content_event_share = content_weight / total if ids.content.shape[0] else 0.0
        self._scenes = req.scenes
        # Delisted product pages are spread evenly, not drawn: after n pages, round(n * share) of
        # them were stale. A short run then sends its share for certain (a first page already is
        # one when share >= 0.5), and two runs with the same config send the same count.
        self._pages = self._stale_pages = 0

    # -- building blocks -------------------------------------------------------------------------

    def _uniform(self) -> float:
        return float(self._rng.random())

    def member(self) -> str:
        """A member id: mostly from the bundle by Zipf, sometimes one the model never saw."""
        cfg = self.config.members
        if cfg.unknown_share and self._uniform() < cfg.unknown_share:
            return f"LT-NEW-{int(self._rng.integers(cfg.unknown_pool)):07d}"
        return bytes(self.ids.members[self._members.draw()]).decode("utf-8")

    def product(self) -> str:
        return bytes(self.ids.products[self._products.draw()]).decode("utf-8")

    def content_item(self) -> str:
        n = self.ids.content.shape[0]
        if n == 0:
            return self.product()
        return bytes(self.ids.content[int(self._rng.integers(n))]).decode("utf-8")

    # -- requests --------------------------------------------------------------------------------

    def recommend_products(self) -> recommender_pb2.RecommendProductsRequest:
        return recommender_pb2.RecommendProductsRequest(
            member_id=self.member(),
            k=self.config.requests.recommend_k,
            channel=self._channel.draw(),
            scene=self._scenes[int(self._rng.integers(len(self._scenes)))],
        )

    def recommend_content(self) -> recommender_pb2.RecommendContentRequest:
        return recommender_pb2.RecommendContentRequest(
            member_id=self.member(),
            k=self.config.requests.content_k,
            channel=self._channel.draw(),
            scene="content_feed",
        )

    def similar_items(self) -> recommender_pb2.SimilarItemsRequest:
        self._pages += 1
        if math.floor(self._pages * self.config.requests.stale_item_share + 0.5) > self._stale_pages:
            self._stale_pages += 1
            item = f"LT-DELISTED-{int(self._rng.integers(1_000_000)):07d}"
        else:
            item = self.product()
        return recommender_pb2.SimilarItemsRequest(
            item_id=item, k=self.config.requests.similar_k, kind=common_pb2.PRODUCT
        )

    def record_event(self) -> recommender_pb2.RecordEventRequest:
        if self._uniform() < self._content_event_share:
            item, event_type = self.content_item(), self._content_event.draw()
        else:
            item, event_type = self.product(), self._product_event.draw()
        quantity = 1 if event_type in ("purchase", "add_to_cart") else 0
        amount = round(float(self._rng.uniform(9, 399)), 2) if event_type == "purchase" else 0.0
        return recommender_pb2.RecordEventRequest(
            member_id=self.member(),
            item_id=item,
            event_type=event_type,
            channel=self._channel.draw(),
            quantity=quantity,
            amount=amount,
        )

    def _outreach_fields(self) -> dict[str, object]:
        req = self.config.requests
        transactional = req.transactional_share and self._uniform() < req.transactional_share
        return {
            "member_id": self.member(),
            "channel": self._outreach_channel.draw(),
            "campaign_id": f"lt-camp-{int(self._rng.integers(req.campaigns)):03d}",
            "message_class": outreach_pb2.TRANSACTIONAL if transactional else outreach_pb2.MARKETING,
            "priority": int(self._rng.integers(10)),
        }

    def check_outreach(self) -> outreach_pb2.OutreachRequest:
        return outreach_pb2.OutreachRequest(**self._outreach_fields())  # type: ignore[arg-type]

    def reserve_outreach(self) -> outreach_pb2.ReserveOutreachRequest:
        return outreach_pb2.ReserveOutreachRequest(
            **self._outreach_fields(),  # type: ignore[arg-type]
            idempotency_key=uuid.uuid4().hex,
        )
