"""Shared pieces for the outreach tests: a walkable clock, a fake recommender port, policy files.
(No tests here; the other test_outreach_* modules import it.)"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from recsvc.errors import NotFound
from recsvc.outreach.policy import DEFAULT_POLICY_FILE, PolicyStore
from recsvc.outreach.throttle import OutreachAsk, Throttle
from recsvc.redis_client import connect
from recsvc.v1 import common_pb2

SHANGHAI = ZoneInfo("Asia/Shanghai")
CONSENTED = ("app_push", "wecom", "sms", "official_account", "mini_program_subscribe")


class WalkClock:
    """Epoch seconds that tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta).total_seconds()

    def set(self, when: datetime) -> None:
        self.t = when.timestamp()

    def ms(self) -> int:
        return int(self.t * 1000)


def local(y: int, mo: int, d: int, h: int, mi: int = 0, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone)


def utc_ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp() * 1000)


def decoded(reply: object) -> str:
    """A reply from a client without decode_responses (bytes), as text; redis-py types many replies
    as bytes | str (| ...), so this also narrows them."""
    assert isinstance(reply, bytes), reply
    return reply.decode()


def ask(member: str, channel: str, campaign: str = "", **kw: object) -> OutreachAsk:
    """An ask with keyword defaults for the fields a test does not care about."""
    return OutreachAsk(member_id=member, channel=channel, campaign_id=campaign, **kw)  # type: ignore[arg-type]


def make_throttle(url: str, clock: WalkClock, policy_file: Path | None = None, **kw: Any) -> Throttle:
    return Throttle(
        connect(url),
        PolicyStore(policy_file or DEFAULT_POLICY_FILE, reload_s=0),
        clock=clock,
        **kw,
    )


def policy_text(**marketing: Any) -> str:
    """The shipped policy with some [marketing] values replaced."""
    text = DEFAULT_POLICY_FILE.read_text()
    for key, value in marketing.items():
        lines = text.splitlines()
        lines = [f"{key} = {value}" if ln.startswith(f"{key} = ") else ln for ln in lines]
        text = "\n".join(lines) + "\n"
    return text


class FakeRecommendations:
    """The RecommendationPort boundary: a ranked catalog, what each member bought, segments.
    Counts how many segment members were pulled so tests can see streaming."""

    def __init__(
        self,
        products: list[str],
        content: list[str] | None = None,
        bought: dict[str, set[str]] | None = None,
        segments: dict[str, int] | None = None,
    ) -> None:
        self.catalog = {"product": products, "content": content or []}
        self.bought = bought or {}
        self.segments = segments or {}
        self.pulled = 0
        self.calls: list[tuple[str, str, int, set[str]]] = []

    def top_items(
        self, member_id: str, kind: str, k: int, exclude_item_ids: Collection[str]
    ) -> list[common_pb2.RecommendedItem]:
        self.calls.append((member_id, kind, k, set(exclude_item_ids)))
        skip = set(exclude_item_ids) | self.bought.get(member_id, set())
        ranked = [i for i in self.catalog[kind] if i not in skip][:k]
        pb_kind = common_pb2.PRODUCT if kind == "product" else common_pb2.CONTENT
        return [
            common_pb2.RecommendedItem(
                item_id=i, score=1.0 - n / 100, kind=pb_kind, title=f"title {i}", source="personalized"
            )
            for n, i in enumerate(ranked)
        ]

    def segment_members(self, segment: str) -> Iterator[str]:
        if segment not in self.segments:
            raise NotFound(f"unknown segment {segment!r}")
        return self._members(segment)

    def _members(self, segment: str) -> Iterator[str]:
        for n in range(self.segments[segment]):
            self.pulled += 1
            yield f"{segment}-{n:07d}"
