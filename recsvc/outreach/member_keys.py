"""The outreach key layout. Every key carries the member hash tag ``{m:<id>}`` (recsvc.redis_keys), so
one member's keys share a Redis Cluster slot and one Lua script may use them all.

    <prefix>:{m:<id>}:out:sends      zset  marketing sends "token|channel|campaign|item" -> ms
    <prefix>:{m:<id>}:out:tx         zset  transactional sends, same members
    <prefix>:{m:<id>}:out:camps      zset  campaign id -> ms of the send (once per member)
    <prefix>:{m:<id>}:out:state      hash  streak (ignored in a row), b:<channel> -> "U|until"/"C|until"
    <prefix>:{m:<id>}:out:profile    hash  tz, c:<channel> -> "1|ms" / "0|ms" (consent)
    <prefix>:{m:<id>}:out:pushed     zset  item id -> ms pushed by NextBestOutreach
    <prefix>:{m:<id>}:out:idem:<key> str   JSON of the first decision for an idempotency key
    <prefix>:{m:<id>}:suppressed     str   written by erasure (recsvc.security.erasure); read only
"""

from __future__ import annotations

from dataclasses import dataclass

from recsvc.redis_keys import member_key
from recsvc.security.erasure import suppression_key


@dataclass(frozen=True)
class MemberKeys:
    sends: str
    tx: str
    camps: str
    state: str
    profile: str
    pushed: str
    idem_base: str
    suppressed: str

    @classmethod
    def of(cls, prefix: str, member_id: str) -> MemberKeys:
        def k(suffix: str) -> str:
            return member_key(prefix, member_id, "out:" + suffix)

        return cls(
            sends=k("sends"),
            tx=k("tx"),
            camps=k("camps"),
            state=k("state"),
            profile=k("profile"),
            pushed=k("pushed"),
            idem_base=k("idem:"),
            suppressed=suppression_key(prefix, member_id),
        )

    def idem(self, idempotency_key: str) -> str:
        # Without a key the script never reads or writes this name; it is listed only so the
        # script's KEYS are the same shape (and slot) every time.
        return self.idem_base + idempotency_key

    def all(self) -> list[str]:
        return [self.sends, self.tx, self.camps, self.state, self.profile, self.pushed]


def decide_keys(prefix: str, member_id: str, idempotency_key: str) -> list[str]:
    """KEYS of ``decide.lua`` in its order: the same names as ``MemberKeys.of`` (a test holds them
    equal), built with one tag instead of eight calls, because this runs for every decision."""
    base = member_key(prefix, member_id, "out:")
    return [
        base + "sends",
        base + "tx",
        base + "camps",
        base + "state",
        base + "profile",
        base + "idem:" + idempotency_key,
        base + "pushed",
        suppression_key(prefix, member_id),
    ]
