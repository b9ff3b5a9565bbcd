"""A member's outreach record outside a decision: cancel a reservation, feedback, consent, time
zones (one by one or imported in bulk), recent pushes, and the reads a member profile and a
consent-filtered audience make. ``MemberRecords`` is mixed into ``recsvc.outreach.throttle.Throttle``,
whose store, breaker, clock and scripts it uses; the key layout stays ``recsvc.outreach.member_keys``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from recsvc.bounds import check_timestamp_ms
from recsvc.errors import MemberErased, MemberStateUnreadable, RecsvcError, StoreUnavailable
from recsvc.idmap import normalize_id
from recsvc.outreach import throttle_metrics as metrics
from recsvc.outreach.decision import FEEDBACK_KINDS, split_reservation_id
from recsvc.outreach.member_keys import MemberKeys
from recsvc.outreach.policy import Policy, PolicyStore
from recsvc.redis_client import STORE_ERRORS, RedisClient, outage_in_words
from recsvc.script_runner import Call, ScriptRunner


class ZoneCache:
    """Members whose stored time zone differs from the policy default, so the first guess is right
    and a decision stays one round trip. Bounded; a stale entry only costs one retry."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, member_id: str) -> str | None:
        with self._lock:
            tz = self._data.get(member_id)
            if tz is not None:
                self._data.move_to_end(member_id)
            return tz

    def put(self, member_id: str, tz: str | None) -> None:
        with self._lock:
            if tz is None:
                self._data.pop(member_id, None)
                return
            self._data[member_id] = tz
            self._data.move_to_end(member_id)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


class MemberRecords:
    """The throttle's writes and reads of a member's record that are not decisions."""

    if TYPE_CHECKING:  # set by Throttle.__init__
        _redis: RedisClient
        _zones: ZoneCache
        _cancel: Any
        _feedback: Any
        _consent: Any
        _consent_script: ScriptRunner
        _timezone_script: ScriptRunner
        policies: PolicyStore

        def now_ms(self) -> int: ...

        def keys(self, member_id: str) -> MemberKeys: ...

        def _guarded(self, call: Callable[[], Any]) -> Any: ...

    def cancel(self, rid: str) -> bool:
        """Give the slot back (the send failed). False when no such live reservation exists."""
        token, member_id = split_reservation_id(rid)
        k = self.keys(member_id)
        keys = [k.sends, k.tx, k.camps, k.pushed]
        try:
            return int(self._guarded(lambda: self._cancel(keys=keys, args=[token]))) == 1
        except STORE_ERRORS as exc:
            raise store_error(exc) from exc

    def feedback(self, member_id: str, channel: str, kind: str, at_ms: int | None = None) -> None:
        """``kind`` in FEEDBACK_KINDS. ignored -> streak+1; opened/clicked -> streak 0;
        unsubscribed/complained -> block marketing on the channel; delivered -> counted only."""
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {kind!r}")
        now = self.now_ms()
        # A far-future ts once blocked a member until the year 10000 (and broke every decision).
        at = check_timestamp_ms(at_ms, "ts", now) if at_ms is not None else now
        metrics.FEEDBACK.labels(channel, kind).inc()
        if kind == "delivered":
            return
        policy = self.policies.current()
        until = 0
        if kind == "unsubscribed":
            until = at + policy.block_ms_unsubscribe
        elif kind == "complained":
            until = at + policy.block_ms_complaint
        script_kind = "engaged" if kind in {"opened", "clicked"} else kind
        k = self.keys(member_id)
        try:
            done = self._guarded(
                lambda: self._feedback(
                    keys=[k.state, k.suppressed], args=[script_kind, channel, until, policy.state_ttl_ms]
                )
            )
        except STORE_ERRORS as exc:
            raise store_error(exc) from exc
        _refuse_erased(done)

    def set_consent(self, member_id: str, channel: str, granted: bool, at_ms: int | None = None) -> bool:
        """Record consent; a withdrawal counts from the next decision on. False when the store
        already holds a newer record for this channel (kept). ``MemberErased`` for an erased
        member (nothing stored)."""
        at = at_ms if at_ms is not None else self.now_ms()
        policy = self.policies.current()
        k = self.keys(member_id)
        try:
            done = self._guarded(
                lambda: self._consent(
                    keys=[k.profile, k.suppressed],
                    args=[channel, "1" if granted else "0", at, policy.profile_ttl_ms],
                )
            )
        except STORE_ERRORS as exc:
            raise store_error(exc) from exc
        _refuse_erased(done)
        return int(done) == 1

    def import_profiles(
        self,
        timezones: Iterable[tuple[str, str]] = (),
        consents: Iterable[tuple[str, str, bool, int]] = (),
        chunk: int = 500,
    ) -> tuple[int, int]:
        """Bulk-load (member, tz) and (member, channel, granted, updated_at_ms), pipelined in chunks.
        A tz of "" is the policy's default (a stored zone is removed); member ids are taken in NFC
        (recsvc.idmap), the form of every other id. Returns (time zones written, consent records
        written; older than stored ones are kept). Erased members are skipped (nothing is stored
        about them) and not counted."""
        policy = self.policies.current()
        ttl = policy.profile_ttl_ms

        def zone_calls() -> Iterator[tuple[list[str], list[Any]]]:
            for member_id, tz in timezones:
                member_id = normalize_id(member_id)
                k = self.keys(member_id)
                self._zones.put(member_id, None if tz in ("", policy.default_timezone) else tz)
                yield [k.profile, k.suppressed], [tz, ttl]

        def consent_calls() -> Iterator[tuple[list[str], list[Any]]]:
            for member_id, channel, granted, at in consents:
                k = self.keys(normalize_id(member_id))
                yield [k.profile, k.suppressed], [channel, "1" if granted else "0", at, ttl]

        # ScriptRunner, not a redis-py pipeline: it splits the batch by cluster node, which
        # redis-py's ClusterPipeline refuses to do for EVALSHA.
        return _write_all(self._timezone_script, zone_calls(), chunk), _write_all(
            self._consent_script, consent_calls(), chunk
        )

    def set_timezone(self, member_id: str, tz: str) -> None:
        self.import_profiles(timezones=[(member_id, tz)])

    def recently_pushed(self, member_id: str) -> list[str]:
        policy = self.policies.current()
        since = self.now_ms() - policy.recently_pushed_ms
        try:
            raw = self._guarded(
                lambda: self._redis.zrangebyscore(self.keys(member_id).pushed, f"({since}", "+inf")
            )
        except STORE_ERRORS as exc:
            raise store_error(exc) from exc
        return [as_text(x) for x in raw]  # type: ignore[union-attr]


@dataclass(frozen=True)
class MemberOutreachState:
    """What the outreach store holds about a member, read for their profile (Members service):
    consent per channel (True, False, None = never answered), marketing blocks per channel
    (epoch ms they end), the ignored-in-a-row streak and the fatigue level it puts them on."""

    suppressed: bool
    timezone: str | None
    consent: dict[str, bool | None]
    blocked_until_ms: dict[str, int]
    ignored_in_a_row: int
    fatigue_level: int


def _member_state(
    policy: Policy, suppressed: Any, profile: dict[Any, Any], state: dict[Any, Any], now_ms: int
) -> MemberOutreachState:
    fields = {as_text(k): as_text(v) for k, v in profile.items()}
    st = {as_text(k): as_text(v) for k, v in state.items()}
    consent: dict[str, bool | None] = {}
    blocked: dict[str, int] = {}
    for channel in policy.channels:
        raw = fields.get("c:" + channel)
        consent[channel] = None if raw is None else raw.startswith("1")
        until = _stored_int(st.get("b:" + channel, "")[2:])
        if until > now_ms:
            blocked[channel] = until
    # clamped to the int32 a profile answer holds: only a hand-edited key gets near either end
    streak = max(0, min(_stored_int(st.get("streak", "")), 2**31 - 1))
    level = sum(1 for lv in policy.fatigue.levels if streak >= lv.after_ignored)
    return MemberOutreachState(bool(int(suppressed)), fields.get("tz"), consent, blocked, streak, level)


def _stored_int(text: str) -> int:
    """A number from a member's stored state; 0 for anything unreadable (a profile read must not
    fail on state a decision would clamp or ignore)."""
    try:
        value = float(text)
    except ValueError:
        return 0
    return int(value) if math.isfinite(value) else 0


def read_member_state(throttle: MemberRecords, member_id: str) -> MemberOutreachState:
    """One pipelined read of a member's consent, blocks, streak and suppression mark (the key
    layout stays the throttle's). ``StoreUnavailable`` when Redis does not answer."""
    k = throttle.keys(member_id)
    try:
        pipe = throttle._redis.pipeline(transaction=False)
        pipe.exists(k.suppressed)
        pipe.hgetall(k.profile)
        pipe.hgetall(k.state)
        suppressed, profile, state = pipe.execute()
    except STORE_ERRORS as exc:
        raise store_error(exc) from exc
    return _member_state(throttle.policies.current(), suppressed, profile, state, throttle.now_ms())


def store_error(exc: Exception) -> RecsvcError:
    """What a failed call to the outreach store tells the caller: the member's record unreadable
    (a key of another type, a script tripping over a field it did not write: FAILED_PRECONDITION,
    retrying cannot help), else the store unavailable (UNAVAILABLE: try again)."""
    if _unreadable(exc):
        return MemberStateUnreadable(
            "this member's stored outreach record is not in the form recsvc writes "
            f"({str(exc).splitlines()[0][:160]}); an operator must repair or delete it (docs/operations.md)"
        )
    # in words: the exception's class (StoreCircuitOpen, ClusterDownError) is for the logs
    return StoreUnavailable(f"outreach store unavailable: {_outage(exc)}; try again shortly")


class StoreCircuitOpen(redis.ConnectionError):
    """Not sent: the breaker is open (a ``redis.RedisError``, so every outage path handles it)."""


def _outage(exc: Exception) -> str:
    """Why the store could not answer, for the caller."""
    if isinstance(exc, StoreCircuitOpen):
        return "Redis failed repeatedly, so calls to it are paused for a moment (circuit open)"
    return outage_in_words(exc)


def _unreadable(exc: Exception) -> bool:
    """Redis answered, about a record in another form: a key of another type, or a script that
    tripped over a field it did not write."""
    text = str(exc)
    return isinstance(exc, redis.ResponseError) and ("WRONGTYPE" in text or "user_script" in text)


def read_consents(throttle: MemberRecords, member_ids: Sequence[str], channel: str) -> list[bool]:
    """Whether each member has granted marketing consent on ``channel`` and is not erased, in one
    pipelined round trip (audiences filtered by consent). ``StoreUnavailable`` on a Redis error."""
    field = "c:" + channel
    try:
        pipe = throttle._redis.pipeline(transaction=False)
        for member_id in member_ids:
            k = throttle.keys(member_id)
            pipe.exists(k.suppressed)
            pipe.hget(k.profile, field)
        # one member's unreadable record (another key type) answers for that member alone
        replies = _per_member(pipe.execute(raise_on_error=False))
    except STORE_ERRORS as exc:
        raise store_error(exc) from exc
    return [
        replies[2 * i] is not None
        and not int(replies[2 * i])
        and replies[2 * i + 1] is not None
        and as_text(replies[2 * i + 1]).startswith("1")  # unreadable: no consent (fail closed)
        for i in range(len(member_ids))
    ]


def _per_member(replies: list[Any]) -> list[Any]:
    """A pipeline's replies with a member's unreadable record as None; an outage still raises."""
    out = []
    for reply in replies:
        if isinstance(reply, redis.RedisError):
            if not _unreadable(reply):
                raise reply
            reply = None
        out.append(reply)
    return out


def read_zones(throttle: MemberRecords, member_ids: Sequence[str]) -> list[str | None]:
    """Each member's stored time zone, the one the throttle judges quiet hours in (``recsvc
    outreach import``; None: none stored, the throttle uses the policy's default); one pipelined
    round trip for the members the throttle has not cached. ``StoreUnavailable`` on a Redis
    error."""
    zones = [throttle._zones.get(m) for m in member_ids]
    ask = [i for i, z in enumerate(zones) if z is None]
    if ask:
        try:
            pipe = throttle._redis.pipeline(transaction=False)
            for i in ask:
                pipe.hget(throttle.keys(member_ids[i]).profile, "tz")
            replies = _per_member(pipe.execute(raise_on_error=False))
        except STORE_ERRORS as exc:
            raise store_error(exc) from exc
        for i, raw in zip(ask, replies, strict=True):
            zones[i] = as_text(raw) if raw else None
    return zones


def _refuse_erased(script_reply: Any) -> None:
    # -1 from a write script: the member's suppression record exists (recsvc.security.erasure)
    if int(script_reply) == -1:
        raise MemberErased("the member was erased; nothing is stored about them until re-registration")


def _write_all(runner: ScriptRunner, calls: Iterator[Call], chunk: int) -> int:
    """Run a write script for every call, ``chunk`` calls per round trip; how many stored."""
    written = 0
    while batch := list(itertools.islice(calls, chunk)):
        replies = runner.call_many(batch)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        written += _written(replies)
    return written


def _written(script_replies: list[Any]) -> int:
    """How many of a pipeline's write scripts stored something (1; 0 = kept newer, -1 = erased)."""
    return sum(1 for x in script_replies if int(x) == 1)


def as_text(value: Any) -> str:
    """A Redis reply (bytes from a client without decode_responses) as text."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
