"""The outreach policy: a validated TOML or YAML file, re-read without a restart.

Reads the file named by ``settings.outreach.policy_file`` (or the shipped
``default_policy.toml`` beside this module). ``PolicyStore`` keeps the policy in force; when the
file changes and the new one is bad, it logs a clear error and keeps the old policy.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from recsvc.errors import ConfigError
from recsvc.settings import CHANNEL_NAME, describe_validation_error

logger = logging.getLogger(__name__)

DEFAULT_POLICY_FILE = Path(__file__).with_name("default_policy.toml")
_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)\Z")
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
DEFAULT_CHANNELS = ("app_push", "mini_program_subscribe", "wecom", "official_account", "sms")
# Event channel (where a member acts: settings data.event_channels) -> the outreach channel that
# reaches them there. Recommendations say "app" where outreach says "app_push"; offline_store and
# live have no outreach channel of their own.
DEFAULT_EVENT_CHANNEL_MAP = {
    "app": "app_push",
    "mini_program": "mini_program_subscribe",
    "wecom": "wecom",
    "official_account": "official_account",
}


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketingCaps(_Part):
    per_channel_per_day: int = Field(1, ge=1, le=100)
    per_day: int = Field(2, ge=1, le=100)
    per_week: int = Field(3, ge=1, le=500)
    min_gap_hours: float = Field(4.0, ge=0, le=24 * 30)
    campaign_memory_days: int = Field(90, ge=1, le=3650)

    @model_validator(mode="after")
    def _ordered(self) -> MarketingCaps:
        if not (self.per_channel_per_day <= self.per_day <= self.per_week):
            raise ValueError("marketing caps must satisfy per_channel_per_day <= per_day <= per_week")
        return self


class QuietHours(_Part):
    start: str = "21:00"
    end: str = "09:00"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM_RE.match(v):
            raise ValueError(f"quiet hours take HH:MM (00:00 to 23:59), got {v!r}")
        return v

    def minutes(self) -> tuple[int, int]:
        """(start, end) as minutes after local midnight."""
        sh, sm = self.start.split(":")
        eh, em = self.end.split(":")
        return int(sh) * 60 + int(sm), int(eh) * 60 + int(em)


class TransactionalRules(_Part):
    per_day: int = Field(10, ge=1, le=1000)
    exempt_from_quiet_hours: bool = True
    requires_consent: bool = False


class FatigueLevel(_Part):
    after_ignored: int = Field(ge=1, le=1000)
    per_day: int = Field(ge=1, le=100)
    per_week: int = Field(ge=1, le=500)
    min_gap_hours: float = Field(ge=0, le=24 * 60)


class Fatigue(_Part):
    levels: list[FatigueLevel] = Field(default_factory=list, max_length=8)

    @field_validator("levels")
    @classmethod
    def _ascending(cls, v: list[FatigueLevel]) -> list[FatigueLevel]:
        thresholds = [lv.after_ignored for lv in v]
        if thresholds != sorted(set(thresholds)):
            raise ValueError("fatigue levels must have strictly increasing after_ignored")
        return v


class Blocks(_Part):
    unsubscribe_days: int = Field(90, ge=1, le=3650)
    complaint_days: int = Field(180, ge=1, le=3650)


class PriorityRule(_Part):
    high_from: int = Field(7, ge=0, le=9)
    high_min_gap_hours: float = Field(2.0, ge=0, le=24 * 30)


class Retention(_Part):
    margin_hours: float = Field(24.0, ge=0, le=24 * 30)
    idempotency_hours: float = Field(24.0, gt=0, le=24 * 30)
    recently_pushed_days: int = Field(30, ge=1, le=365)
    profile_days: int = Field(400, ge=1, le=3650)


class SendTime(_Part):
    """Best send windows (docs/profiles.md): a member's own rhythm when they have enough events,
    else their lifecycle segment's, else this default window."""

    default_start: str = "12:00"  # local HH:MM (only the hour counts)
    window_hours: int = Field(2, ge=1, le=12)
    min_member_events: int = Field(10, ge=1, le=10_000)

    @field_validator("default_start")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM_RE.match(v):
            raise ValueError(f"send_time.default_start takes HH:MM (00:00 to 23:59), got {v!r}")
        return v

    @property
    def default_hour(self) -> int:
        return int(self.default_start.split(":")[0])


class Policy(_Part):
    """Everything the throttle decides by. See docs/outreach.md for each field."""

    version: int = Field(1, ge=1, le=1)
    default_timezone: str = "Asia/Shanghai"
    channels: list[str] = Field(default_factory=lambda: list(DEFAULT_CHANNELS), min_length=1, max_length=64)
    # Event channel -> outreach channel (docs/outreach.md, "Event channels and outreach channels").
    event_channel_map: dict[str, str] = Field(default_factory=dict, max_length=127)
    marketing: MarketingCaps = MarketingCaps()
    quiet_hours: QuietHours = QuietHours()
    transactional: TransactionalRules = TransactionalRules()
    fatigue: Fatigue = Fatigue()
    blocks: Blocks = Blocks()
    priority: PriorityRule = PriorityRule()
    retention: Retention = Retention()
    send_time: SendTime = SendTime()

    @model_validator(mode="before")
    @classmethod
    def _default_map(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event_channel_map" not in data:
            # The shipped map, less the outreach channels this policy does not have: a policy
            # without app_push is not refused for a map it never wrote.
            channels = data.get("channels", DEFAULT_CHANNELS)
            kept = {e: o for e, o in DEFAULT_EVENT_CHANNEL_MAP.items() if o in channels}
            data = {**data, "event_channel_map": kept}
        return data

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        check_timezone(v)
        return v

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not CHANNEL_NAME.match(c)]
        if bad:
            raise ValueError(f"channel names must be lower_snake_case (max 32 chars): {bad}")
        if len(set(v)) != len(v):
            raise ValueError("channels must be unique")
        return v

    @field_validator("event_channel_map")
    @classmethod
    def _map_names_channels(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # A field validator, not a model one, so its problems are named beside the other fields'
        # (a model validator runs only once every field is valid). ``channels`` comes first.
        problems = []
        bad = [e for e in v if not CHANNEL_NAME.match(e)]
        if bad:
            problems.append(f"its keys are event channel names (lower_snake_case): {bad}")
        channels = info.data.get("channels")
        unknown = sorted({o for o in v.values() if channels is not None and o not in channels})
        if unknown:
            problems.append(
                f"it names unknown outreach channel(s) {', '.join(unknown)}; "
                f"outreach channels: {', '.join(channels or [])}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return v

    def outreach_channel_for(self, event_channel: str) -> str | None:
        """The outreach channel that reaches a member active on ``event_channel`` (None: none)."""
        return self.event_channel_map.get(event_channel)

    # Derived values the throttle passes to its Lua scripts (milliseconds).
    def min_gap_ms(self, priority: int) -> int:
        hours = self.marketing.min_gap_hours
        if priority >= self.priority.high_from:
            hours = min(hours, self.priority.high_min_gap_hours)
        return int(hours * HOUR_MS)

    @property
    def margin_ms(self) -> int:
        return int(self.retention.margin_hours * HOUR_MS)

    @property
    def campaign_memory_ms(self) -> int:
        return self.marketing.campaign_memory_days * DAY_MS

    @property
    def block_ms_unsubscribe(self) -> int:
        return self.blocks.unsubscribe_days * DAY_MS

    @property
    def block_ms_complaint(self) -> int:
        return self.blocks.complaint_days * DAY_MS

    @property
    def sends_ttl_ms(self) -> int:
        longest_gap = max([self.marketing.min_gap_hours] + [lv.min_gap_hours for lv in self.fatigue.levels])
        return max(WEEK_MS, int(longest_gap * HOUR_MS)) + self.margin_ms

    @property
    def state_ttl_ms(self) -> int:
        return max(self.block_ms_unsubscribe, self.block_ms_complaint) + self.margin_ms

    @property
    def idempotency_ms(self) -> int:
        return int(self.retention.idempotency_hours * HOUR_MS)

    @property
    def recently_pushed_ms(self) -> int:
        return self.retention.recently_pushed_days * DAY_MS

    @property
    def profile_ttl_ms(self) -> int:
        return self.retention.profile_days * DAY_MS

    def decide_script_args(self) -> tuple[bytes, ...]:
        """The part of ``decide.lua``'s ARGV that every decision shares (ARGV[13] on; the layout is
        at the top of the script), as bytes ready for the wire. The throttle builds it once per
        policy object and appends the same tuple to every decision: building these values per
        decision was ~17 % of a pipeline's client time. Separate arguments, not one JSON string:
        Redis takes ~0.1 µs per argument but ~5 µs to ``cjson.decode`` the policy in every script
        (measured on redis 6.2). A reloaded file is a new ``Policy``, hence new arguments. Not
        cached on the model: ``model_copy(update=...)`` would carry a cached value to a changed copy."""
        values: list[str | int] = [
            self.default_timezone,
            1 if self.transactional.requires_consent else 0,
            self.marketing.per_channel_per_day,
            self.marketing.per_day,
            self.marketing.per_week,
            self.transactional.per_day,
            self.sends_ttl_ms,
            self.campaign_memory_ms,
            self.idempotency_ms,
            self.recently_pushed_ms,
            DAY_MS + self.margin_ms,  # key TTLs: window + margin
            self.campaign_memory_ms + self.margin_ms,
            self.recently_pushed_ms + self.margin_ms,
            len(self.fatigue.levels),
        ]
        for lv in self.fatigue.levels:
            values += [lv.after_ignored, lv.per_day, lv.per_week, int(lv.min_gap_hours * HOUR_MS)]
        return tuple(str(v).encode() for v in values)


# In the tz database but not a place: "localtime" is whatever zone the reading machine is in,
# "Factory" a placeholder; a member's quiet hours must not depend on where a process runs.
NOT_A_PLACE = frozenset({"localtime", "Factory"})


def check_timezone(name: str) -> ZoneInfo:
    try:
        if name in NOT_A_PLACE:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like Asia/Shanghai)") from exc


def zone_or(name: str | None, fallback: str) -> ZoneInfo:
    """A member's stored zone by :func:`check_timezone`'s rule, else ``fallback`` (an IANA name):
    none stored, or one this machine does not know (logged; the member is not refused for it)."""
    if name:
        try:
            return check_timezone(name)
        except ValueError:
            logger.warning("stored member time zone %r is unknown; using %s", name, fallback)
    return ZoneInfo(fallback)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"policy file {path} cannot be read: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text.decode("utf-8"))
        elif suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"policy file {path} must end in .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib/yaml/unicode errors all mean "not a readable policy"
        raise ConfigError(f"policy file {path} is not valid {suffix[1:].upper()}: {_one_line(exc)}") from exc
    if data is None or data == {}:
        # defaults for every part would pass as a policy: a file emptied by accident (or caught
        # half-written) must not quietly replace the one in force
        raise ConfigError(
            f"policy file {path} holds no policy (it is empty or only comments): write its "
            f"tables, e.g. a copy of {DEFAULT_POLICY_FILE.name}",
            reason="EMPTY_POLICY",
        )
    if not isinstance(data, dict):
        raise ConfigError(f"policy file {path} must hold a table/mapping at the top level")
    return data


def _one_line(exc: Exception) -> str:
    """A parser's error as one line: YAML's span several (the context, the problem, each with its
    mark and a caret under the text), which a log line or the CLI's one error line must not."""
    import yaml

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        text = f"{at(mark)}: " if mark is not None else ""
        text += exc.problem or exc.context or type(exc).__name__
        if exc.problem and exc.context:
            text += f" ({exc.context}" + (f" at {at(exc.context_mark)}" if exc.context_mark else "") + ")"
        return text
    return " ".join(str(exc).split())


def parse_policy(
    data: dict[str, Any], source: str = "<policy>", event_channels: tuple[str, ...] | None = None
) -> Policy:
    """``event_channels`` (settings data.event_channels), when given, must hold every key of the
    policy's event_channel_map; the shipped map's entries for channels it lacks are left out."""
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"policy {source} is invalid: {describe_validation_error(exc)}") from exc
    if event_channels is not None:
        unknown = [e for e in policy.event_channel_map if e not in event_channels]
        if unknown and "event_channel_map" in data:
            raise ConfigError(
                f"policy {source} is invalid: event_channel_map names unknown event channel(s) "
                f"{', '.join(unknown)}; event channels (data.event_channels): {', '.join(event_channels)}"
            )
        if unknown:
            known = {e: o for e, o in policy.event_channel_map.items() if e in event_channels}
            policy = policy.model_copy(update={"event_channel_map": known})
    return policy


def load_policy(path: Path | None = None, event_channels: tuple[str, ...] | None = None) -> Policy:
    """Read and validate one policy file; raise ConfigError naming every problem."""
    path = path or DEFAULT_POLICY_FILE
    return parse_policy(_read_mapping(path), str(path), event_channels)


class PolicyStore:
    """The policy in force. ``current()`` re-reads the file when it changed (checked at most every
    ``reload_s`` seconds); a bad new file is logged and refused, and the old policy stays."""

    def __init__(
        self,
        path: Path | None,
        reload_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        event_channels: tuple[str, ...] | None = None,
    ) -> None:
        self.path = path or DEFAULT_POLICY_FILE
        self._event_channels = event_channels
        self._reload_s = reload_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._policy = load_policy(self.path, event_channels)  # a bad file at start-up is fatal
        self._stamp = self._file_stamp()
        self._checked_at = monotonic()
        self.last_error: str | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Policy:
        if self._reload_s > 0 and self._monotonic() - self._checked_at >= self._reload_s:
            with self._lock:
                if self._monotonic() - self._checked_at >= self._reload_s:
                    self._checked_at = self._monotonic()
                    if self._file_stamp() != self._stamp:
                        # reload() logs a bad file; the old policy stays in force
                        with contextlib.suppress(ConfigError):
                            self.reload()
        return self._policy

    def reload(self) -> Policy:
        """Re-read the file now. A bad file raises ConfigError and leaves the old policy in force."""
        stamp = self._file_stamp()
        try:
            policy = load_policy(self.path, self._event_channels)
        except ConfigError as exc:
            self._stamp = stamp  # do not re-parse the same bad file on every call
            self.last_error = str(exc)
            logger.error("outreach policy refused, keeping the previous one: %s", exc)
            raise
        self._policy = policy
        self._stamp = stamp
        self.last_error = None
        logger.info("outreach policy loaded path=%s", self.path)
        return policy
