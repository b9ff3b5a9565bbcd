"""What a caller asks the outreach throttle and what it answers: ``OutreachAsk``, ``Decision``,
the message classes, feedback kinds and reservation ids (which embed the member, so a cancel finds
the member's keys without a global index)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MARKETING = "marketing"
TRANSACTIONAL = "transactional"
UNAVAILABLE = "THROTTLE_UNAVAILABLE"
FEEDBACK_KINDS = ("delivered", "opened", "clicked", "ignored", "unsubscribed", "complained")
DAY_MS = 86_400_000


@dataclass(frozen=True)
class OutreachAsk:
    """One question to the throttle. Ids are validated by the caller (recsvc.outreach.ask_checks)."""

    member_id: str
    channel: str
    campaign_id: str = ""
    message_class: str = MARKETING  # MARKETING or TRANSACTIONAL
    priority: int = 0
    idempotency_key: str = ""
    item_id: str = ""  # NextBestOutreach: the item this send pushes
    extra: str = ""  # kept with the idempotency record and returned on replay
    # Decide for this time (epoch ms) instead of now: a send scheduled at the member's best time
    # (recsvc.members.sendtime). Caps count the windows around it, quiet hours are checked then,
    # and a reservation is recorded at it. 0 = now.
    at_ms: int = 0

    def fingerprint(self) -> str:
        """What an idempotency key is bound to: a retry must ask the same question. The item and
        extra are the server's choice (NextBestOutreach may pick another item on a retry), and
        the member is part of the key's own name, so neither is in it. A scheduled send (at the
        member's best time) is another question than a send now, whatever time is chosen."""
        base = f"{self.channel}|{self.campaign_id}|{self.message_class}|{self.priority}"
        return base + "|at" if self.at_ms else base


SCHEDULED_PREFIX = "at:"


def scheduled_extra(at_ms: int) -> str:
    """The ``extra`` a scheduled reservation keeps, so a replay answers the time it holds."""
    return f"{SCHEDULED_PREFIX}{at_ms}"


def scheduled_at(d: Decision, fallback_ms: int) -> int:
    """The send time of a scheduled decision: the stored one on a replay, else ``fallback_ms``."""
    if d.replayed and d.extra.startswith(SCHEDULED_PREFIX):
        stored = d.extra[len(SCHEDULED_PREFIX) :]
        if stored.isdigit():
            return int(stored)
    return fallback_ms


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    detail: str = ""
    next_allowed_ms: int = 0  # 0 = waiting would not help (or nothing to wait for)
    reservation_id: str = ""
    replayed: bool = False
    extra: str = ""


def reservation_id(token: str, member_id: str) -> str:
    """The id embeds the member so CancelOutreach finds the member's keys without a global index."""
    return f"{token}.{member_id}"


def split_reservation_id(rid: str) -> tuple[str, str]:
    token, _, member_id = rid.partition(".")
    return token, member_id


def default_pseudonym(member_id: str) -> str:
    return hashlib.sha256(member_id.encode()).hexdigest()[:16]
