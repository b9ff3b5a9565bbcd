"""The outreach throttle: decide, record and explain, one Redis round trip per decision. What is
asked and answered is in ``recsvc.outreach.decision``; a member's record outside decisions (cancel,
feedback, consent, time zones, profile reads) in ``recsvc.outreach.member_records``.

Reads and writes the per-member keys of ``recsvc.outreach.member_keys`` through the Lua scripts in
``scripts/`` (called by EVALSHA; decisions through ``recsvc.script_runner.ScriptRunner``, which
pipelines without redis-py's ``Pipeline``). The policy's constant arguments are encoded once per
policy object (``Policy.decide_script_args``) and appended to every decision. Quiet hours are
decided here in Python (zoneinfo) and passed into the script. Redis errors and timeouts never
escape a decision: marketing fails closed with THROTTLE_UNAVAILABLE, transactional follows
``transactional_when_unavailable``.

Every Redis call goes through a circuit breaker (``recsvc.breaker``; ``outreach.breaker_failures``
consecutive refused connections or timeouts open it): while it is open, decisions answer
THROTTLE_UNAVAILABLE and writes raise ``StoreUnavailable`` at once instead of each waiting for the
socket timeout, one probe per ``outreach.breaker_reset_ms`` goes through (a call, or the
background PING of ``start_watch``), and the first success closes it. ``breaker`` is public so
readiness (``recsvc.server.readiness``) can follow it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import redis

from recsvc.bounds import MAX_FUTURE_MS
from recsvc.breaker import BreakerWatch, CircuitBreaker
from recsvc.errors import IdempotencyKeyReused
from recsvc.outreach import throttle_metrics as metrics
from recsvc.outreach.decision import (
    DAY_MS,
    MARKETING,
    TRANSACTIONAL,
    UNAVAILABLE,
    Decision,
    OutreachAsk,
    default_pseudonym,
    reservation_id,
)
from recsvc.outreach.member_keys import MemberKeys, decide_keys
from recsvc.outreach.member_records import MemberRecords, StoreCircuitOpen, ZoneCache, as_text
from recsvc.outreach.policy import Policy, PolicyStore, zone_or
from recsvc.outreach.quiet_hours import LATEST_MS, first_allowed_ms, quiet_until_ms
from recsvc.redis_client import STORE_ERRORS, RedisClient
from recsvc.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from recsvc.script_runner import ScriptRunner

logger = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).with_name("scripts")

Clock = Callable[[], float]  # epoch seconds
# What counts against the store: it did not answer (down, too slow, or a cluster slot without a
# primary during a failover). A script's error reply is an answer.
STORE_DOWN = REDIS_UNAVAILABLE


class Throttle(MemberRecords):
    def __init__(
        self,
        client: RedisClient,
        policies: PolicyStore,
        *,
        key_prefix: str = "recsvc",
        clock: Clock = time.time,
        transactional_when_unavailable: Literal["allow", "deny"] = "allow",
        pseudonymize: Callable[[str], str] = default_pseudonym,
        zone_cache_size: int = 100_000,
        breaker: CircuitBreaker | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 20,
    ) -> None:
        self._redis = client
        # WAIT after reservations (outreach.wait_replicas); None: acknowledged by the primary only
        self._wait = (wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        self.breaker = breaker or CircuitBreaker("outreach", 3, 0.5)
        self._watch = BreakerWatch(self.breaker, client.ping, STORE_DOWN, idle_check=True)
        self.policies = policies
        self._prefix = key_prefix
        self._clock = clock
        self._tx_when_unavailable = transactional_when_unavailable
        self._pseudonym = pseudonymize
        self._zones = ZoneCache(zone_cache_size)
        self._decide = ScriptRunner(client, (SCRIPTS_DIR / "decide.lua").read_text())
        self._encoded: tuple[Policy, tuple[bytes, ...]] | None = None  # (policy, decide_script_args)
        self._cancel = client.register_script((SCRIPTS_DIR / "cancel.lua").read_text())
        self._feedback = client.register_script((SCRIPTS_DIR / "feedback.lua").read_text())
        self._consent = client.register_script((SCRIPTS_DIR / "consent.lua").read_text())
        self._consent_script = ScriptRunner(client, (SCRIPTS_DIR / "consent.lua").read_text())
        self._timezone_script = ScriptRunner(client, (SCRIPTS_DIR / "timezone.lua").read_text())

    # ----------------------------------------------------------------- decisions
    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def keys(self, member_id: str) -> MemberKeys:
        return MemberKeys.of(self._prefix, member_id)

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """``call()`` (one Redis round trip or pipeline) through the breaker."""
        if not self.breaker.allow():
            raise StoreCircuitOpen("circuit open")
        try:
            result = call()
        except STORE_DOWN:
            self.breaker.failure()
            raise
        self.breaker.success()
        return result

    def start_watch(self) -> None:
        """Probe Redis in the background (``recsvc.breaker.BreakerWatch``): the breaker closes
        without traffic, and opens on an outage nobody called into. ``stop_watch`` ends it."""
        self._watch.start()

    def stop_watch(self) -> None:
        self._watch.stop()

    def check(self, ask: OutreachAsk) -> Decision:
        """Dry run: what would happen now. Records nothing."""
        return self._single(ask, "check")

    def reserve(self, ask: OutreachAsk) -> Decision:
        """Check and record atomically. The same idempotency key returns the first decision."""
        return self._single(ask, "reserve")

    def _single(self, ask: OutreachAsk, mode: str) -> Decision:
        started = time.perf_counter()
        policy = self.policies.current()
        shared = self._policy_args(policy)
        now = ask.at_ms or self.now_ms()
        token = os.urandom(8).hex()
        tz = self._zones.get(ask.member_id) or policy.default_timezone
        try:
            for _ in range(3):
                quiet = self._quiet_until(ask, policy, now, tz)
                keys, args = self._script_call(ask, mode, policy, now, tz, quiet, token)
                wait = self._wait if mode != "check" else None
                raw = self._guarded(partial(self._decide.call, keys, args, shared, wait))
                found = self._interpret(raw, ask, policy, tz)
                if isinstance(found, Decision):
                    metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
                    return self._finish(ask, found)
                tz = self._learn_zone(ask.member_id, found, policy)
            raise redis.RedisError("member time zone kept changing during the decision")
        except STORE_ERRORS as exc:
            return self._finish(ask, self._unavailable(ask, exc))
        except IdempotencyKeyReused:
            raise  # the caller's mistake, with its own status
        except Exception as exc:
            return self._finish(ask, self._undecidable(ask, exc))

    def decide_many(
        self, asks: Sequence[OutreachAsk], *, reserve: bool, replay_refusals: bool = True
    ) -> list[Decision]:
        """Many decisions in one pipelined round trip (plus one retry round for members whose time
        zone was not known here). Results are in the order of ``asks``. ``replay_refusals=False``:
        with an idempotency key, only allowed reservations are replayed later; a refusal (quiet
        hours, a cap, no consent) is decided afresh the next time."""
        mode = ("reserve" if replay_refusals else "reserve-allowed") if reserve else "check"
        policy = self.policies.current()
        shared = self._policy_args(policy)
        now = self.now_ms()
        results: list[Decision | None] = [None] * len(asks)
        zones = [self._zones.get(a.member_id) or policy.default_timezone for a in asks]
        # one urandom call for the chunk: the same 8 random bytes per token as secrets.token_hex(8)
        tokens = os.urandom(8 * len(asks)).hex()
        # one `now` for the chunk (unless an ask is scheduled): same verdict per zone and time
        quiet_by_zone: dict[tuple[str, bool, int], int] = {}

        def calls(indexes: list[int]) -> Iterator[tuple[list[str], list[Any]]]:
            for i in indexes:
                a, tz = asks[i], zones[i]
                at = a.at_ms or now
                key = (tz, a.message_class == MARKETING, at)
                quiet = quiet_by_zone.get(key)
                if quiet is None:
                    quiet = quiet_by_zone[key] = self._quiet_until(a, policy, at, tz)
                yield self._script_call(a, mode, policy, at, tz, quiet, tokens[16 * i : 16 * i + 16])

        pending = list(range(len(asks)))
        for _ in range(2):
            if not pending:
                break
            asked = pending

            def interpret(position: int, raw: Any, asked: list[int] = asked) -> Decision | str:
                i = asked[position]
                try:
                    return self._interpret(raw, asks[i], policy, zones[i])
                except Exception as exc:
                    # This runs while the chunk's replies are read: raising here would drop the
                    # connection and every other member's decision (and their reservations, made
                    # already, would reach nobody). The member gets a refusal in its place.
                    return self._undecidable(asks[i], exc)

            try:
                wait = self._wait if reserve else None
                found_all = self._guarded(
                    partial(self._decide.call_many, calls(asked), shared, interpret, wait)
                )
            except STORE_ERRORS as exc:
                for i in asked:
                    results[i] = self._unavailable(asks[i], exc)
                pending = []
                break
            retry: list[int] = []
            for i, found in zip(asked, found_all, strict=True):
                if isinstance(found, Exception):
                    results[i] = self._unavailable(asks[i], found)
                    continue
                if isinstance(found, Decision):
                    results[i] = found
                else:
                    zones[i] = self._learn_zone(asks[i].member_id, found, policy)
                    retry.append(i)
            pending = retry
        for i in pending:
            results[i] = self._unavailable(asks[i], redis.RedisError("time zone changed during planning"))
        decided = [d for d in results if d is not None]
        self._finish_many(asks, decided)
        return decided

    def _policy_args(self, policy: Policy) -> tuple[bytes, ...]:
        """``policy.decide_script_args()``, built once per policy object (a reload makes a new one)."""
        cached = self._encoded
        if cached is not None and cached[0] is policy:
            return cached[1]
        encoded = policy.decide_script_args()
        self._encoded = (policy, encoded)
        return encoded

    def _quiet_until(self, ask: OutreachAsk, policy: Policy, now: int, tz: str) -> int:
        quiet_applies = ask.message_class == MARKETING or not policy.transactional.exempt_from_quiet_hours
        return quiet_until_ms(now, self._zone(tz, policy), policy.quiet_hours) if quiet_applies else 0

    def _script_call(
        self,
        ask: OutreachAsk,
        mode: str,
        policy: Policy,
        now: int,
        tz: str,
        quiet_until: int,
        token: str,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and the decision's own ARGV of decide.lua (the policy's arguments follow them; the
        layout is documented at the top of the script)."""
        keys = decide_keys(self._prefix, ask.member_id, ask.idempotency_key)
        args: list[Any] = [
            mode,
            now,
            ask.channel,
            ask.campaign_id,
            ask.message_class,
            token,
            tz,
            quiet_until,
            policy.min_gap_ms(ask.priority),
            # the key itself is in KEYS; the script compares this with the key's first request
            ask.fingerprint() if ask.idempotency_key else "",
            ask.item_id,
            ask.extra,
        ]
        return keys, args

    def _interpret(self, raw: list[Any], ask: OutreachAsk, policy: Policy, tz: str) -> Decision | str:
        tag = as_text(raw[0])
        if tag == "TZ":
            return as_text(raw[1])
        if tag == "E":
            raise IdempotencyKeyReused(
                "idempotency_key was first used with another channel, campaign, message class or "
                "priority; use a new key for a new request"
            )
        allowed = int(raw[1]) == 1
        next_ms = int(raw[3])
        detail = as_text(raw[5])
        if not allowed and next_ms != 0:
            next_ms, detail = self._sane_next_ms(ask, policy, next_ms, detail)
        quiet_applies = ask.message_class == MARKETING or not policy.transactional.exempt_from_quiet_hours
        if not allowed and next_ms > 0 and quiet_applies:
            # A cap that frees up at 23:00 local really frees up when quiet hours end.
            next_ms = first_allowed_ms(next_ms, self._zone(tz, policy), policy.quiet_hours)
        token = as_text(raw[4])
        return Decision(
            allowed=allowed,
            reason=as_text(raw[2]),
            detail=detail,
            next_allowed_ms=next_ms,
            reservation_id=reservation_id(token, ask.member_id) if token else "",
            replayed=int(raw[6]) == 1,
            extra=as_text(raw[7]),
        )

    def _sane_next_ms(self, ask: OutreachAsk, policy: Policy, next_ms: int, detail: str) -> tuple[int, str]:
        """``next_ms`` of a refusal, clamped to the longest wait the policy can cause.

        Every wait comes from a time stored in the member's keys (a block's end, a send's time)
        plus at most a window, a gap or a block, so it is never further ahead than ``horizon``.
        A later (or negative) one comes from state written by a skewed clock or before
        time stamps were checked (a feedback ``ts`` of 9999-12-31 once stored a block ending in
        the year 10000, which no datetime or protobuf Timestamp can hold). The refusal stands;
        only the reported time is clamped, and the stored state expires with its key's TTL."""
        now = self.now_ms()
        horizon = now + max(policy.state_ttl_ms, policy.sends_ttl_ms) + DAY_MS + MAX_FUTURE_MS
        horizon = min(horizon, LATEST_MS)  # what datetime and a protobuf Timestamp can hold
        if 0 < next_ms <= horizon:
            return next_ms, detail
        logger.warning(
            "outreach state out of range member=%s channel=%s next_allowed_ms=%d; clamped",
            self._pseudonym(ask.member_id),
            ask.channel,
            next_ms,
        )
        return horizon, f"{detail} (stored time out of range; reported as the policy's longest wait)"

    def _undecidable(self, ask: OutreachAsk, exc: BaseException) -> Decision:
        """The refusal given in a member's place when its decision could not be made or read."""
        if isinstance(exc, IdempotencyKeyReused):
            # PlanCampaign's keys carry every fingerprinted parameter, so this is not expected;
            # fail closed for the member rather than fail the stream.
            return Decision(
                False, UNAVAILABLE, "idempotency key reused with other parameters; failing closed"
            )
        logger.error(
            "outreach decision could not be read member=%s channel=%s: %r",
            self._pseudonym(ask.member_id),
            ask.channel,
            exc,
        )
        return Decision(False, UNAVAILABLE, "this member's outreach state could not be read; failing closed")

    def _learn_zone(self, member_id: str, tz: str, policy: Policy) -> str:
        self._zones.put(member_id, None if tz == policy.default_timezone else tz)
        return tz

    @staticmethod
    def _zone(tz: str, policy: Policy) -> ZoneInfo:
        return zone_or(tz, policy.default_timezone)

    def _unavailable(self, ask: OutreachAsk, exc: BaseException) -> Decision:
        why = "throttle store unavailable"
        if isinstance(exc, StoreCircuitOpen):
            why += " (circuit open)"  # the breaker logged the outage once; no line per decision
        else:
            logger.warning("outreach throttle store unavailable: %s", exc.__class__.__name__)
        metrics.store_failed(exc)
        if ask.message_class == TRANSACTIONAL and self._tx_when_unavailable == "allow":
            return Decision(True, UNAVAILABLE, f"{why}; transactional allowed by settings")
        return Decision(False, UNAVAILABLE, f"{why}; failing closed")

    def _finish(self, ask: OutreachAsk, decision: Decision) -> Decision:
        metrics.DECISIONS.labels(ask.channel, ask.message_class, decision.reason).inc()
        if decision.reason != UNAVAILABLE:
            metrics.store_answered()
        self._log_transactional(ask, decision)
        return decision

    def _finish_many(self, asks: Sequence[OutreachAsk], decisions: Sequence[Decision]) -> None:
        # one counter update per (channel, class, reason) in the chunk, not one per decision
        counts = Counter((a.channel, a.message_class, d.reason) for a, d in zip(asks, decisions, strict=True))
        for labels, n in counts.items():
            metrics.DECISIONS.labels(*labels).inc(n)
        if any(d.reason != UNAVAILABLE for d in decisions):
            metrics.store_answered()
        for a, d in zip(asks, decisions, strict=True):
            self._log_transactional(a, d)

    def _log_transactional(self, ask: OutreachAsk, decision: Decision) -> None:
        if ask.message_class == TRANSACTIONAL:
            # Transactional messages skip marketing rules, so every one leaves a trace.
            logger.info(
                "transactional outreach member=%s channel=%s campaign=%s allowed=%s reason=%s reservation=%s",
                self._pseudonym(ask.member_id),
                ask.channel,
                ask.campaign_id,
                decision.allowed,
                decision.reason,
                decision.reservation_id.partition(".")[0],
            )
