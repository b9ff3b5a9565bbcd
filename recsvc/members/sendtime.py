"""Best send windows from active hours, in the member's own time zone (docs/profiles.md).

A window is ``policy.send_time.window_hours`` long and starts on a local hour. The best one is
the start whose window holds most of the member's events, among starts whose whole window is
outside quiet hours. Fallbacks, in order: the member's own hours when they have at least
``min_member_events`` events, their lifecycle segment's rhythm, the policy's ``default_start``.
Pure functions of arrays, a zone and the policy; vectorised for audiences.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from recsvc.outreach.policy import Policy, QuietHours

HOURS = 24
SOURCES = ("member", "segment", "policy")


def quiet_hour_mask(quiet: QuietHours) -> np.ndarray:
    """bool[24]: local hours any minute of which falls in quiet hours."""
    start, end = quiet.minutes()
    mask = np.zeros(HOURS, dtype=bool)
    if start == end:
        return mask
    minutes = np.arange(HOURS * 60)
    quiet_minute = (
        (minutes >= start) & (minutes < end) if start < end else (minutes >= start) | (minutes < end)
    )
    return np.asarray(quiet_minute.reshape(HOURS, 60).any(axis=1), dtype=bool)


def allowed_starts(policy: Policy) -> np.ndarray:
    """bool[24]: window starts whose whole window is outside quiet hours (all, if none is)."""
    quiet = quiet_hour_mask(policy.quiet_hours)
    width = policy.send_time.window_hours
    ok = np.array([not quiet[(s + np.arange(width)) % HOURS].any() for s in range(HOURS)])
    return ok if ok.any() else np.ones(HOURS, dtype=bool)


def window_sums(hist: np.ndarray, width: int) -> np.ndarray:
    """[n, 24] -> [n, 24]: events in the window starting at each hour (circular)."""
    h = np.asarray(hist, dtype=np.float64)
    out = np.zeros_like(h)
    for k in range(width):
        out += np.roll(h, -k, axis=-1)
    return out


def best_starts(hist: np.ndarray, allowed: np.ndarray, width: int) -> np.ndarray:
    """Best allowed start hour per row of ``hist`` ([n, 24]); -1 where the row is empty."""
    sums = np.where(allowed, window_sums(hist, width), -1.0)
    best = sums.argmax(axis=-1)
    return np.where(sums.max(axis=-1) > 0, best, -1)


@dataclass(frozen=True)
class SendWindowChoice:
    start_hour: int
    hours: int
    source: str  # one of SOURCES


class SendTimes:
    """Send windows under one policy and one bundle's fallback rhythms."""

    def __init__(self, policy: Policy, segment_hours: dict[str, list[float]]) -> None:
        self.policy = policy
        self.width = policy.send_time.window_hours
        self.min_events = policy.send_time.min_member_events
        self.allowed = allowed_starts(policy)
        default = policy.send_time.default_hour
        if not self.allowed[default]:  # a default inside quiet hours moves to the next allowed start
            default = next(
                int((default + k) % HOURS) for k in range(HOURS) if self.allowed[(default + k) % HOURS]
            )
        self.default_hour = default
        self.segment_start = {
            stage: int(s)
            for stage, shares in segment_hours.items()
            if (s := best_starts(np.array([shares]), self.allowed, self.width)[0]) >= 0
        }

    def choose(self, hours: np.ndarray, stage: str) -> SendWindowChoice:
        hist = np.asarray(hours, dtype=np.int64)
        if int(hist.sum()) >= self.min_events:
            start = int(best_starts(hist[None, :], self.allowed, self.width)[0])
            if start >= 0:
                return SendWindowChoice(start, self.width, "member")
        if stage in self.segment_start:
            return SendWindowChoice(self.segment_start[stage], self.width, "segment")
        return SendWindowChoice(self.default_hour, self.width, "policy")

    def choose_many(self, hours: np.ndarray, stages: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(start hour, source index into SOURCES) per row; vectorised over the member's own part."""
        hist = np.asarray(hours, dtype=np.int64)
        own = best_starts(hist, self.allowed, self.width)
        enough = (hist.sum(axis=1) >= self.min_events) & (own >= 0)
        fallback = np.array([self.segment_start.get(s, -1) for s in stages], dtype=np.int64)
        start = np.where(enough, own, np.where(fallback >= 0, fallback, self.default_hour))
        source = np.where(enough, 0, np.where(fallback >= 0, 1, 2))
        return start, source


def _local_start_ms(day: datetime, hour: int, zone: ZoneInfo) -> int:
    wall = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
    # in a DST gap zoneinfo shifts the wall time forward, which is the right instant to send
    return int(wall.timestamp() * 1000)


def next_window_start_ms(now_ms: int, zone: ZoneInfo, start_hour: int, hours: int) -> int:
    """``now_ms`` when the member's local time is inside the window, else when it next opens."""
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
    if (local.hour - start_hour) % HOURS < hours:
        return now_ms
    for offset in range(0, 3):
        start = _local_start_ms(local + timedelta(days=offset), start_hour, zone)
        if start > now_ms:
            return start
    return now_ms  # not reached for a real zone


def time_in_window_ms(
    window_start_ms: int, window_end_ms: int, zone: ZoneInfo, start_hour: int, hours: int
) -> int | None:
    """The first instant in [window_start_ms, window_end_ms] inside the member's send window."""
    at = next_window_start_ms(window_start_ms, zone, start_hour, hours)
    return at if at <= window_end_ms else None


def in_window(at_ms: int, zone: ZoneInfo, start_hour: int, hours: int) -> bool:
    local = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(zone)
    return (local.hour - start_hour) % HOURS < hours
