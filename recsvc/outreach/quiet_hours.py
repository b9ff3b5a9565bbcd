"""Quiet hours in the member's own time zone, computed with zoneinfo so DST changes are right.

Pure functions of (epoch milliseconds, zone, policy window): the Lua scripts cannot do time zones,
so Python decides "quiet now, until when" and passes the verdict into the decision script.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from recsvc.outreach.policy import QuietHours

# The instants datetime can convert with room for a day and any zone offset on either side.
# The throttle clamps stored times long before they get here; this keeps the functions total.
EARLIEST_MS = int(datetime(1, 1, 3, tzinfo=UTC).timestamp() * 1000)
LATEST_MS = int(datetime(9999, 12, 29, tzinfo=UTC).timestamp() * 1000)


def _in_window(minute: int, start: int, end: int) -> bool:
    if start == end:
        return False  # an empty window: no quiet hours
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def _quiet_at(at_ms: int, zone: ZoneInfo, start: int, end: int) -> bool:
    local = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(zone)
    return _in_window(local.hour * 60 + local.minute, start, end)


def quiet_until_ms(now_ms: int, zone: ZoneInfo, quiet: QuietHours) -> int:
    """0 when ``now_ms`` is outside quiet hours, else the first instant (epoch ms) after them.

    The end is a local wall-clock time (e.g. 09:00) on the right local date, converted back to UTC
    by zoneinfo, so the UTC instant moves by an hour across a DST change as it should. Around a
    change the wall-clock end may be ambiguous (fall back: the first of its two instants still
    ahead) or skipped (spring forward: quiet hours end when the clock jumps past it).
    Never raises: an instant datetime cannot convert (outside EARLIEST_MS..LATEST_MS) is not quiet.
    """
    if not EARLIEST_MS <= now_ms <= LATEST_MS:
        return 0
    start, end = quiet.minutes()
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
    minute = local.hour * 60 + local.minute
    if not _in_window(minute, start, end):
        return 0
    end_date = local.date()
    if minute >= end:  # evening part of an overnight window: quiet ends tomorrow morning
        end_date += timedelta(days=1)
    wall = datetime(end_date.year, end_date.month, end_date.day, end // 60, end % 60, tzinfo=zone)
    # fold 0 and 1 are the two instants of a repeated wall time (the same instant otherwise); in
    # a DST gap they straddle the jump, and fold 0 is the later one.
    for fold in sorted((0, 1), key=lambda f: wall.replace(fold=f).timestamp()):
        end_ms = int(wall.replace(fold=fold).timestamp() * 1000)
        if end_ms > now_ms and not _quiet_at(end_ms, zone, start, end):
            # a clock set back inside the window may leave it for a while first (01:30-02:30
            # from 01:30 EDT: at 02:00 EDT the clock reads 01:00 EST, outside it)
            change = _offset_change(now_ms, end_ms, zone)
            if change is not None and not _quiet_at(change, zone, start, end):
                return change
            if _quiet_at(end_ms - 1, zone, start, end):
                return end_ms
            return _first_not_quiet(now_ms, end_ms, zone, start, end)
    return now_ms + 1  # not reached for a real zone; never go back in time


def _offset_change(from_ms: int, to_ms: int, zone: ZoneInfo) -> int | None:
    """The first instant in (from_ms, to_ms] whose UTC offset differs from ``from_ms``'s (one DST
    change at most: the span is under two days); None when the offset holds throughout."""

    def offset(ms: int) -> object:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone).utcoffset()

    first = offset(from_ms)
    if offset(to_ms) == first:
        return None
    return _first_not(lambda ms: offset(ms) == first, from_ms, to_ms)


def _first_not_quiet(quiet_ms: int, free_ms: int, zone: ZoneInfo, start: int, end: int) -> int:
    """The first instant in (quiet_ms, free_ms] outside quiet hours, when the clock jumped past
    the window's end (a DST gap): bisection, only ever run on such a day."""
    return _first_not(lambda ms: _quiet_at(ms, zone, start, end), quiet_ms, free_ms)


def _first_not(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """The first instant in (lo, hi] where ``holds`` is false, by bisection: it holds at ``lo``,
    not at ``hi``, and changes once between them."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return hi


def first_allowed_ms(at_ms: int, zone: ZoneInfo, quiet: QuietHours) -> int:
    """``at_ms`` moved past quiet hours if it falls inside them."""
    until = quiet_until_ms(at_ms, zone, quiet)
    return until or at_ms
