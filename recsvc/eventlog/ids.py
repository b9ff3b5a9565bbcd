"""Recommendation ids: minted per response, checked when an event names one.

An id is ``r`` + 11 hex digits of the minting time (ms) + 8 random hex digits + 12 hex digits of a
keyed BLAKE2b MAC over (member, time, random), its key derived from ``security.pseudonym_key``
(BLAKE2b's own keyed mode: a MAC like HMAC, at a fifth of its cost on every served list; the
keyed state is set up once and copied per id, which halves the cost again). Ids are minted under
the current key only; a check also accepts a MAC under any of ``security.previous_pseudonym_keys``,
so ids issued before a key rotation stay valid while the old key is listed.
The server can therefore tell, without a Redis read and even before the buffered impression
reaches Redis, whether an id was issued by this service to this member: a caller's bug (an id
copied from another member's page) is refused, not silently attributed. The id holds no member
id and no personal data.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Sequence

from recsvc.errors import InvalidArgument

_PREFIX = "r"
_LENGTH = 1 + 11 + 8 + 12
_HEX = frozenset("0123456789abcdef")


def _keyed(key: str) -> hashlib.blake2b:
    # A key of its own, derived from the pseudonym key: an id's tag is no member pseudonym.
    derived = hmac.new(key.encode("utf-8"), b"recsvc-recommendation-id", hashlib.sha256).digest()
    return hashlib.blake2b(key=derived, digest_size=6)


def _tag(keyed: hashlib.blake2b, member_id: str, body: str) -> str:
    mac = keyed.copy()  # the same as blake2b(data, key=...), without the key's set-up
    mac.update(f"{member_id}|{body}".encode())
    return mac.hexdigest()


class RecommendationIds:
    """Mints ids under ``key`` only; ``check`` also accepts ids minted under one of ``previous_keys``."""

    def __init__(self, key: str, previous_keys: Sequence[str] = ()) -> None:
        self._keyed = _keyed(key)
        # Current key first: nearly every id checked was minted under it. An event may name a list
        # served before a rotation (clients keep lists for hours), so the old keys still verify.
        self._checked = (self._keyed, *(_keyed(old) for old in dict.fromkeys(previous_keys) if old != key))
        self._bits = random.Random().getrandbits

    def new(self, member_id: str, now_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        # 11 hex digits of the time, then 8 of randomness, in one formatting
        body = "%019x" % (((ms & 0xFFFFFFFFFFF) << 32) | self._bits(32))
        mac = self._keyed.copy()  # ``_tag``, inline: this runs for every served list
        mac.update(f"{member_id}|{body}".encode())
        return _PREFIX + body + mac.hexdigest()

    def check(self, rec_id: str, member_id: str) -> int:
        """The id's minting time (epoch ms) when ``rec_id`` was issued to ``member_id``; else
        ``InvalidArgument`` naming why (RECOMMENDATION_ID_MALFORMED, RECOMMENDATION_OF_ANOTHER_MEMBER)."""
        if len(rec_id) != _LENGTH or not rec_id.startswith(_PREFIX) or not set(rec_id[1:]) <= _HEX:
            raise InvalidArgument(
                "recommendation_id is not one this service issues (send the id of a RecommendResponse)",
                reason="RECOMMENDATION_ID_MALFORMED",
            )
        body, tag = rec_id[1:20], rec_id[20:]
        # "" : a list served to no member (SimilarItems), which any member may have clicked in
        if not any(
            hmac.compare_digest(tag, _tag(keyed, member_id, body))
            or hmac.compare_digest(tag, _tag(keyed, "", body))
            for keyed in self._checked
        ):
            raise InvalidArgument(
                "recommendation_id was not issued to this member_id",
                reason="RECOMMENDATION_OF_ANOTHER_MEMBER",
            )
        return int(body[:11], 16)
