"""Quiet hours in the member's own time zone, computed with zoneinfo so DST changes are right.

Pure functions of (epoch milliseconds, zone, policy window): the Lua scripts cannot do time zones,
so Python decides "quiet now, until when" and passes the verdict into the decision script.
"""

from __future__ import annotations

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


def quiet_until_ms(now_ms: int, zone: ZoneInfo, quiet: QuietHours) -> int:
    """0 when ``now_ms`` is outside quiet hours, else the first instant (epoch ms) after them.

    The end is a local wall-clock time (e.g. 09:00) on the right local date, converted back to UTC
    by zoneinfo, so the UTC instant moves by an hour across a DST change as it should.
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
    end_local = datetime(end_date.year, end_date.month, end_date.day, end // 60, end % 60, tzinfo=zone)
    end_ms = int(end_local.astimezone(UTC).timestamp() * 1000)
    # A wall-clock end inside a DST gap maps to an instant that may not be later; never go back.
    return max(end_ms, now_ms + 1)


def first_allowed_ms(at_ms: int, zone: ZoneInfo, quiet: QuietHours) -> int:
    """``at_ms`` moved past quiet hours if it falls inside them."""
    until = quiet_until_ms(at_ms, zone, quiet)
    return until or at_ms
