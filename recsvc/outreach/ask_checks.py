"""Request checks for the outreach API. Every problem is an ``InvalidArgument`` naming the field.

Member, campaign and segment ids follow the project's one id rule (recsvc.idmap.id_problem, NFC,
a length limit in UTF-8 bytes), which also keeps braces (the ``{m:<id>}`` hash tag) and ``|``
(the send record separator) out.
"""

from __future__ import annotations

import re

from recsvc.errors import InvalidArgument
from recsvc.idmap import check_id
from recsvc.outreach.decision import MARKETING, TRANSACTIONAL, split_reservation_id
from recsvc.outreach.policy import Policy
from recsvc.v1 import common_pb2, outreach_pb2

_KEY_RE = re.compile(r"^[!-z~]+\Z")  # printable ASCII without space, '{', '|', '}'
_TOKEN_RE = re.compile(r"^[0-9a-f]{16}\Z")
MAX_KEY_LENGTH = 128

FEEDBACK_NAMES = {
    outreach_pb2.DELIVERED: "delivered",
    outreach_pb2.OPENED: "opened",
    outreach_pb2.CLICKED: "clicked",
    outreach_pb2.IGNORED: "ignored",
    outreach_pb2.UNSUBSCRIBED: "unsubscribed",
    outreach_pb2.COMPLAINED: "complained",
}


def check_idempotency_key(value: str) -> str:
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"idempotency_key is longer than {MAX_KEY_LENGTH} characters", reason="INVALID_IDEMPOTENCY_KEY"
        )
    if value and not _KEY_RE.match(value):
        raise InvalidArgument(
            "idempotency_key may hold printable ASCII only, without spaces, '{', '}' or '|'",
            reason="INVALID_IDEMPOTENCY_KEY",
        )
    return value


def check_channel(channel: str, policy: Policy) -> str:
    if not channel:
        raise InvalidArgument("channel is required", reason="MISSING_CHANNEL")
    if channel not in policy.channels:
        # The outreach channels are the policy's own list, not the event channels of
        # recommendations (policy.event_channel_map maps one to the other).
        mapped = policy.outreach_channel_for(channel)
        hint = f" ({channel!r} is an event channel; outreach reaches it as {mapped!r})" if mapped else ""
        raise InvalidArgument(
            f"unknown channel {channel[:40]!r}; outreach channels: {', '.join(policy.channels)}{hint}",
            reason="UNKNOWN_CHANNEL",
        )
    return channel


def message_class(value: int) -> str:
    if value in (outreach_pb2.MESSAGE_CLASS_UNSPECIFIED, outreach_pb2.MARKETING):
        return MARKETING
    if value == outreach_pb2.TRANSACTIONAL:
        return TRANSACTIONAL
    raise InvalidArgument(
        f"unknown message_class {value}; use MARKETING or TRANSACTIONAL", reason="INVALID_MESSAGE_CLASS"
    )


def check_priority(value: int) -> int:
    if not 0 <= value <= 9:
        raise InvalidArgument(f"priority must be 0..9, got {value}", reason="INVALID_PRIORITY")
    return value


def item_kind(value: int) -> str:
    if value in (common_pb2.ITEM_KIND_UNSPECIFIED, common_pb2.PRODUCT):
        return "product"
    if value == common_pb2.CONTENT:
        return "content"
    raise InvalidArgument(f"unknown kind {value}; use PRODUCT or CONTENT", reason="INVALID_KIND")


def feedback_kind(value: int) -> str:
    name = FEEDBACK_NAMES.get(value)  # type: ignore[call-overload]
    if name is None:
        raise InvalidArgument(
            f"feedback must be one of {sorted(FEEDBACK_NAMES.values())}, got {value}",
            reason="INVALID_FEEDBACK",
        )
    return name


def check_reservation_id(rid: str, max_id_length: int) -> tuple[str, str]:
    if not rid:
        raise InvalidArgument("reservation_id is required", reason="MISSING_RESERVATION_ID")
    token, member_id = split_reservation_id(rid)
    if not _TOKEN_RE.match(token) or not member_id:
        raise InvalidArgument(
            "reservation_id is not one this service issued", reason="INVALID_RESERVATION_ID"
        )
    # NFC, as every id: the member part names the same member however the caller's system spells it
    return token, check_id(member_id, "reservation_id member part", max_id_length)
