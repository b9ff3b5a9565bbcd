"""The documented ranges of numbers and time stamps that recsvc accepts, in files and in the API.

One module owns them so a data file and an RPC reject the same value for the same reason
(docs/api.md "Accepted ranges", docs/data.md). Every check raises ``InvalidArgument`` with a named
reason; callers in pipelines use the constants directly on whole columns.

Why these bounds:
- Time stamps: an event or feedback older than ``MAX_PAST_DAYS`` carries no real-time signal and
  cannot be a late delivery; one more than ``MAX_FUTURE_S`` ahead of the server clock is a wrong
  clock or a hostile caller (a far-future unsubscribe once blocked a member until the year 10000).
- Money and quantities: finite, non-negative and far above any real basket, so sums of them stay
  finite in training's monetary values and segments.
"""

from __future__ import annotations

import math
import time
from typing import Any

from recsvc.errors import InvalidArgument

MAX_PAST_DAYS = 400
MAX_PAST_MS = MAX_PAST_DAYS * 86_400_000
MAX_FUTURE_S = 300
MAX_FUTURE_MS = MAX_FUTURE_S * 1000

# Characters no title or label holds (a regex character class): C0 and C1 controls, DEL and the
# Unicode line and paragraph separators. They break exports, logs and the one-line texts apps show;
# the API refuses them, file ingest turns them into a space (a row of an export stays good).
CONTROL_CHARACTERS = "\x00-\x1f\x7f-\x9f\u2028\u2029"

MAX_AMOUNT = 1e8  # per event, in the shop's currency
MAX_PRICE = 1e8
MAX_QUANTITY = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


def check_timestamp_ms(at_ms: int, field: str, now: int | None = None) -> int:
    """``at_ms`` within [now - MAX_PAST_DAYS, now + MAX_FUTURE_S]; reason TIMESTAMP_OUT_OF_RANGE."""
    current = now_ms() if now is None else now
    if not current - MAX_PAST_MS <= at_ms <= current + MAX_FUTURE_MS:
        raise InvalidArgument(
            f"{field} must lie between {MAX_PAST_DAYS} days before and {MAX_FUTURE_S} s after the "
            f"server's clock",
            reason="TIMESTAMP_OUT_OF_RANGE",
        )
    return at_ms


def timestamp_field_ms(ts: Any, field: str) -> int:
    """Epoch ms of a protobuf ``Timestamp`` field, without protobuf's own conversion, which raises
    a bare ValueError (INTERNAL) for a value it considers invalid. Callers check the range
    (``check_timestamp_ms``)."""
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(f"{field}.nanos must be within 0..999999999", reason="TIMESTAMP_OUT_OF_RANGE")
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def check_amount(value: float, field: str = "amount", limit: float = MAX_AMOUNT) -> float:
    """Finite and within 0..limit; reasons NON_FINITE_NUMBER, INVALID_AMOUNT."""
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number", reason="NON_FINITE_NUMBER")
    if not 0 <= value <= limit:
        raise InvalidArgument(
            f"{field} must be within 0..{limit:,.0f}, got {value:,.12g}", reason="INVALID_AMOUNT"
        )
    return value


def check_quantity(value: int, field: str = "quantity") -> int:
    if not 0 <= value <= MAX_QUANTITY:
        raise InvalidArgument(
            f"{field} must be within 0..{MAX_QUANTITY} (0 = 1), got {value}", reason="INVALID_QUANTITY"
        )
    return value
