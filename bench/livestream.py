"""The live-stream load scenario (``load/live-stream.toml``, ``[live_stream]`` of the load config).

A host pins products and sells them out one at a time through the Catalog service (SetStock)
while members ask for RecommendProducts with ``in_stock_only``. The question the scenario answers:
was any sold-out product served after its change, and was that within the propagation bound
(docs/api.md: 1 s) or past it?

``LiveStreamHost`` is the host (the products members' lists hold most often are the ones it pins,
so the check is sensitive: a member list that still holds a sold-out product is likely); the
``SoldOutLedger`` is what each member response is checked against. A call counts only when it
was sent after the SetStock call answered: a call already under way may still carry the product.
The Locust glue is in load/locustfile.py; this module has no Locust in it, so it is unit-tested.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadconfig import LiveStream

RESULT_FILE = "live-stream.json"


@dataclass
class LiveStreamCounts:
    pinned: list[str] = field(default_factory=list)
    sold_out: dict[str, float] = field(default_factory=dict)  # item -> SetStock answered (epoch s)
    bound_s: float = 1.0
    checked_calls: int = 0  # in_stock_only responses of calls sent after the first sell-out
    pinned_served: int = 0  # pinned products served while still in stock (the check can bite)
    within_bound: int = 0  # sold-out products served after their change, sent <= bound_s later
    past_bound: int = 0  # ... sent more than bound_s after the change: misses
    worst_lag_s: float | None = None  # latest send after a change that still got the product
    past_by_item: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # host calls that failed, by code

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SoldOutLedger:
    """Which pinned products are sold out since when, and what members were served after."""

    def __init__(self, bound_s: float) -> None:
        self.counts = LiveStreamCounts(bound_s=bound_s)
        self._lock = threading.Lock()  # Locust's greenlets do not need it; threads in tests do
        self._past: Counter[str] = Counter()

    def pin(self, items: Iterable[str]) -> None:
        self.counts.pinned = list(items)

    def sold(self, item: str, answered_at: float) -> None:
        with self._lock:
            self.counts.sold_out[item] = answered_at

    def check(self, served: Iterable[str], sent_at: float) -> None:
        """One in_stock_only answer to a call sent at ``sent_at`` (epoch seconds)."""
        c = self.counts
        with self._lock:
            if not c.sold_out or sent_at < min(c.sold_out.values()):
                pinned = set(c.pinned)
                c.pinned_served += sum(1 for i in served if i in pinned)
                return
            c.checked_calls += 1
            for item in served:
                at = c.sold_out.get(item)
                if at is None:
                    if item in c.pinned:
                        c.pinned_served += 1
                    continue
                lag = sent_at - at
                if lag < 0:
                    c.pinned_served += 1  # sent before the change answered: not a miss
                    continue
                c.worst_lag_s = lag if c.worst_lag_s is None else max(c.worst_lag_s, lag)
                if lag <= c.bound_s:
                    c.within_bound += 1
                else:
                    c.past_bound += 1
                    self._past[item] += 1
            c.past_by_item = dict(self._past)

    def write(self, folder: Path) -> Path:
        path = folder / RESULT_FILE
        path.write_text(json.dumps(self.counts.as_dict(), indent=2))
        return path


def read_counts(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def most_recommended(lists: Iterable[list[str]], n: int) -> list[str]:
    """The ``n`` products found in most lists (ties: the first seen first)."""
    seen: Counter[str] = Counter()
    for items in lists:
        seen.update(dict.fromkeys(items, 1))
    return [item for item, _ in seen.most_common(n)]


class LiveStreamHost:
    """Pins products, then sells out one every ``sellout_interval_s``; restocks them at the end.

    ``recommend(member)`` answers a member's in_stock_only list (item ids); ``set_stock(item,
    in_stock)`` calls Catalog/SetStock and returns when it answered (raising on failure);
    ``members()`` draws a member like the traffic does."""

    def __init__(
        self,
        config: LiveStream,
        ledger: SoldOutLedger,
        *,
        recommend: Callable[[str], list[str]],
        set_stock: Callable[[str, bool], None],
        member: Callable[[], str],
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self._recommend = recommend
        self._set_stock = set_stock
        self._member = member
        self._sleep = sleep
        self._clock = clock
        self.stopped = False

    def _try(self, what: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, what()
        except Exception as exc:  # a host call that failed is counted, the stream goes on
            code = getattr(exc, "code", None)
            name = code().name if callable(code) and code() is not None else type(exc).__name__
            errors = self.ledger.counts.errors
            errors[name] = errors.get(name, 0) + 1
            return False, None

    def pin(self) -> list[str]:
        lists = []
        for _ in range(self.config.sample_members):
            ok, got = self._try(lambda: self._recommend(self._member()))
            if ok and got:
                lists.append(got)
        pinned = most_recommended(lists, self.config.pinned)
        self.ledger.pin(pinned)
        return pinned

    def run(self, started_at: float) -> None:
        """Pin, wait until ``start_after_s`` after ``started_at``, then sell out one at a time."""
        pinned = self.pin()
        first = started_at + self.config.start_after_s
        for i, item in enumerate(pinned):
            due = first + i * self.config.sellout_interval_s
            while not self.stopped and self._clock() < due:
                self._sleep(min(0.05, due - self._clock()))
            if self.stopped:
                return
            ok, _ = self._try(functools.partial(self._set_stock, item, False))
            if ok:  # a failed call is no sell-out: nothing to check against
                self.ledger.sold(item, self._clock())

    def restock(self) -> None:
        for item in list(self.ledger.counts.sold_out):
            self._try(functools.partial(self._set_stock, item, True))
