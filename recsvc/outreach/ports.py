"""What the outreach throttle needs from the recommendation engine (a pure boundary).

The serving engineer's engine implements it; tests use a tiny fake.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Protocol

from recsvc.v1.common_pb2 import RecommendedItem


class RecommendationPort(Protocol):
    def top_items(
        self, member_id: str, kind: str, k: int, exclude_item_ids: Collection[str]
    ) -> list[RecommendedItem]:  # kind "product"|"content"; bought items already left out
        ...

    def segment_members(self, segment: str) -> Iterator[str]:
        """Members of a lifecycle segment of the served bundle; raises recsvc.errors.NotFound
        for an unknown segment."""
        ...
