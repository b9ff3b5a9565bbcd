"""When to send: each member's next good send time inside a window (docs/profiles.md).

Reads: the served bundle's profiles (active hours, time zone, lifecycle stage; through
:class:`recsvc.members.view.ProfileView`), the member's imported time zone (the one the throttle
judges quiet hours in; it wins over the bundle's) and the outreach policy (quiet hours, send-time
fallbacks). A member the bundle does not know, or a bundle without profiles, gets the policy's
default window in the imported zone, else the policy's default time zone. Used by Outreach:
``at_best_time`` on Check/ReserveOutreach and PlanCampaign's ``window_start``/``window_end``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from zoneinfo import ZoneInfo

import numpy as np

from recsvc.errors import ProfilesUnavailable
from recsvc.members.audience import AudienceResolver
from recsvc.members.sendtime import SendTimes, time_in_window_ms
from recsvc.members.view import ProfileView
from recsvc.outreach.policy import Policy, zone_or
from recsvc.outreach.quiet_hours import first_allowed_ms

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class SendScheduler:
    def __init__(
        self,
        audiences: AudienceResolver,
        policy: Callable[[], Policy],
        zones: Callable[[Sequence[str]], list[str | None]] | None = None,
    ) -> None:
        self._audiences = audiences
        self._policy = policy
        # Each member's imported zone, the one the throttle judges quiet hours in
        # (recsvc.outreach.member_records.read_zones): it wins over the bundle's, or a time
        # chosen in the bundle's zone is refused as quiet hours in the imported one.
        self._zones = zones
        self._cache: tuple[ProfileView | None, Policy, SendTimes | None] | None = None

    def _send_times(self) -> tuple[ProfileView | None, SendTimes | None, Policy]:
        policy = self._policy()
        try:
            view: ProfileView | None = self._audiences.view()
        except ProfilesUnavailable:
            view = None
        cached = self._cache
        if cached is not None and cached[0] is view and cached[1] is policy:
            return view, cached[2], policy
        times = SendTimes(policy, view.spec.segment_hours) if view is not None else None
        self._cache = (view, policy, times)
        return view, times, policy

    def times(self, member_ids: Sequence[str], start_ms: int, end_ms: int) -> list[int]:
        """Per member, the first instant in [start_ms, end_ms] inside their best send window;
        when the window cannot hold it, the first instant outside quiet hours (else start_ms)."""
        view, times, policy = self._send_times()
        n = len(member_ids)
        default_zone = ZoneInfo(policy.default_timezone)
        width = policy.send_time.window_hours
        if view is None or times is None:
            starts = np.full(n, SendTimes(policy, {}).default_hour)
            zones = [default_zone] * n
        else:
            rows = view.model.members.rows(list(member_ids))
            # an erased member (re-registered or not) starts cold: the bundle's hours, stage and
            # zone of theirs are what the erasure took back, until a retrain drops them
            forgotten = self._audiences.forgotten()
            known = rows >= 0
            if forgotten:
                known &= np.fromiter((m not in forgotten for m in member_ids), bool, count=n)
            safe = np.where(known, rows, 0)
            hist = np.where(known[:, None], np.asarray(view.arrays["profile_hours"])[safe], 0)
            segment = np.asarray(view.model.member_segment)[safe]
            stages = [view.model.segments[int(c)] if ok else "" for c, ok in zip(segment, known, strict=True)]
            starts, _ = times.choose_many(hist, stages)
            zones = [
                ZoneInfo(view.timezone(int(r)) or policy.default_timezone) if ok else default_zone
                for r, ok in zip(safe, known, strict=True)
            ]
        if self._zones is not None:
            stored = self._zones(member_ids)
            zones = [zone_or(name, zone.key) for name, zone in zip(stored, zones, strict=True)]
        out = []
        for start, zone in zip(starts, zones, strict=True):
            at = time_in_window_ms(start_ms, end_ms, zone, int(start), width)
            if at is None:
                at = first_allowed_ms(start_ms, zone, policy.quiet_hours)
                at = at if at <= end_ms else start_ms
            out.append(at)
        return out
