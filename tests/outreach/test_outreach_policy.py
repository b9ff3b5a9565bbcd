"""Policy file validation and hot reload, and quiet hours in the member's time zone across DST."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from outreach_support import policy_text, utc_ms

from recsvc.errors import ConfigError
from recsvc.outreach.policy import DEFAULT_POLICY_FILE, PolicyStore, QuietHours, load_policy
from recsvc.outreach.quiet_hours import first_allowed_ms, quiet_until_ms

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
QH = QuietHours(start="21:00", end="09:00")


def test_shipped_policy_has_the_issue_defaults() -> None:
    p = load_policy(DEFAULT_POLICY_FILE)
    assert p.channels == ["app_push", "mini_program_subscribe", "wecom", "official_account", "sms"]
    m = p.marketing
    assert (m.per_channel_per_day, m.per_day, m.per_week, m.min_gap_hours) == (1, 2, 3, 4.0)
    assert (p.quiet_hours.start, p.quiet_hours.end, p.default_timezone) == ("21:00", "09:00", "Asia/Shanghai")
    assert p.transactional.exempt_from_quiet_hours and not p.transactional.requires_consent
    # every key outlives the longest window it serves
    assert p.sends_ttl_ms > 7 * 86_400_000
    assert p.state_ttl_ms > p.block_ms_complaint


def test_priority_rule_shortens_min_gap_only_for_high_priority() -> None:
    p = load_policy()
    assert p.min_gap_ms(0) == p.min_gap_ms(6) == 4 * 3_600_000
    assert p.min_gap_ms(7) == p.min_gap_ms(9) == 2 * 3_600_000


def test_yaml_policy_is_read(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("default_timezone: Europe/Berlin\nmarketing:\n  per_day: 3\n  per_week: 5\n")
    p = load_policy(f)
    assert p.default_timezone == "Europe/Berlin" and p.marketing.per_day == 3


def test_every_problem_of_a_policy_is_named_at_once(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[event_channel_map]\napp = "wechat"\nFoo = "sms"\n[marketing]\nper_day = 0\n')
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    message = str(err.value)
    assert "unknown outreach channel(s) wechat" in message and "'Foo'" in message
    assert "marketing.per_day" in message  # field errors are not hidden behind the map's


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('default_timezone = "Mars/Olympus"', "unknown time zone"),
        ("[marketing]\nper_day = 0", "marketing.per_day"),
        ("[marketing]\nper_channel_per_day = 3\nper_day = 2", "per_channel_per_day <= per_day"),
        ('[quiet_hours]\nstart = "25:00"', "HH:MM"),
        ('channels = ["App Push"]', "lower_snake_case"),
        ('channels = ["sms", "wecom\\n"]', "lower_snake_case"),  # "$" would have let a final newline by
        ('[quiet_hours]\nstart = "21:00\\n"', "HH:MM"),
        ("surprise = 1", "surprise"),
        ("[marketing\n", "not valid TOML"),
        (
            "[[fatigue.levels]]\nafter_ignored = 5\nper_day = 1\nper_week = 1\nmin_gap_hours = 1\n"
            "[[fatigue.levels]]\nafter_ignored = 2\nper_day = 1\nper_week = 1\nmin_gap_hours = 1",
            "strictly increasing",
        ),
    ],
)
def test_bad_policy_is_refused_with_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "a: [1,\nb: 2\n",
            "line 3, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 1, column 4)",
        ),
        ("marketing: per_day: 2\n", "line 1, column 19: mapping values are not allowed here"),
    ],
)
def test_a_yaml_parse_error_is_one_line_with_its_place(tmp_path: Path, text: str, needle: str) -> None:
    """Regression: YAML's errors spanned several lines (marks, the text and a caret)."""
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    assert "\n" not in str(err.value) and needle in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("name", "text"), [("p.toml", ""), ("p.toml", "# later\n"), ("p.yaml", ""), ("p.yml", "{}")]
)
def test_a_file_with_no_policy_in_it_is_refused(tmp_path: Path, name: str, text: str) -> None:
    """Regression: an empty TOML file passed as a policy of defaults (a file emptied by mistake
    would have replaced the one in force)."""
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    assert err.value.reason == "EMPTY_POLICY" and "holds no policy" in str(err.value)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml or \.yml"):
        load_policy(tmp_path / "p.json")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_policy(tmp_path / "nope.toml")


def test_policy_reloads_without_restart_and_keeps_old_on_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(policy_text(per_day=2))
    tick = [0.0]
    store = PolicyStore(f, reload_s=5, monotonic=lambda: tick[0])
    assert store.current().marketing.per_day == 2

    f.write_text(policy_text(per_day=3))
    assert store.current().marketing.per_day == 2  # not re-checked before reload_s passed
    tick[0] += 5
    assert store.current().marketing.per_day == 3

    f.write_text(policy_text(per_day=0))  # invalid
    tick[0] += 5
    assert store.current().marketing.per_day == 3
    assert store.last_error is not None and "per_day" in store.last_error
    with pytest.raises(ConfigError):
        store.reload()
    assert store.current().marketing.per_day == 3

    f.write_text(policy_text(per_day=2))
    tick[0] += 5
    assert store.current().marketing.per_day == 2
    assert store.last_error is None


def test_bad_policy_at_start_up_is_fatal(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[marketing]\nper_week = 0\n")
    with pytest.raises(ConfigError, match="per_week"):
        PolicyStore(f)


def test_quiet_hours_in_shanghai() -> None:
    # 22:30 local (14:30 UTC) -> quiet until 09:00 local next day (01:00 UTC)
    assert quiet_until_ms(utc_ms(2026, 6, 1, 14, 30), SHANGHAI, QH) == utc_ms(2026, 6, 2, 1, 0)
    # 08:59 local -> quiet until 09:00 the same day
    assert quiet_until_ms(utc_ms(2026, 6, 2, 0, 59), SHANGHAI, QH) == utc_ms(2026, 6, 2, 1, 0)
    # 09:00 and 20:59 local are allowed; 21:00 is quiet
    assert quiet_until_ms(utc_ms(2026, 6, 2, 1, 0), SHANGHAI, QH) == 0
    assert quiet_until_ms(utc_ms(2026, 6, 2, 12, 59), SHANGHAI, QH) == 0
    assert quiet_until_ms(utc_ms(2026, 6, 2, 13, 0), SHANGHAI, QH) > 0


def test_quiet_hours_across_spring_forward_in_new_york() -> None:
    # 2026-03-08 clocks go 02:00 EST -> 03:00 EDT. The day before, 09:00 local is 14:00 UTC.
    assert quiet_until_ms(utc_ms(2026, 3, 7, 13, 30), NEW_YORK, QH) == utc_ms(2026, 3, 7, 14, 0)
    # On the transition day 09:00 local is 13:00 UTC.
    assert quiet_until_ms(utc_ms(2026, 3, 8, 12, 30), NEW_YORK, QH) == utc_ms(2026, 3, 8, 13, 0)
    assert quiet_until_ms(utc_ms(2026, 3, 8, 13, 0), NEW_YORK, QH) == 0
    # Saturday 22:00 EST (03:00 UTC Sunday) -> Sunday 09:00 EDT: only 10 real hours later.
    assert quiet_until_ms(utc_ms(2026, 3, 8, 3, 0), NEW_YORK, QH) == utc_ms(2026, 3, 8, 13, 0)


def test_quiet_hours_across_fall_back_in_new_york() -> None:
    # 2026-11-01 clocks go 02:00 EDT -> 01:00 EST. Saturday 22:00 EDT is 02:00 UTC Sunday;
    # quiet lasts until Sunday 09:00 EST = 14:00 UTC (12 real hours).
    assert quiet_until_ms(utc_ms(2026, 11, 1, 2, 0), NEW_YORK, QH) == utc_ms(2026, 11, 1, 14, 0)
    # 13:30 UTC is 08:30 EST (would be 09:30 EDT the day before, which is allowed)
    assert quiet_until_ms(utc_ms(2026, 11, 1, 13, 30), NEW_YORK, QH) == utc_ms(2026, 11, 1, 14, 0)
    assert quiet_until_ms(utc_ms(2026, 10, 31, 13, 30), NEW_YORK, QH) == 0


def test_first_allowed_moves_a_time_out_of_quiet_hours_only_when_needed() -> None:
    day = utc_ms(2026, 6, 2, 4, 0)  # 12:00 Shanghai
    assert first_allowed_ms(day, SHANGHAI, QH) == day
    night = utc_ms(2026, 6, 2, 15, 0)  # 23:00 Shanghai
    assert first_allowed_ms(night, SHANGHAI, QH) == utc_ms(2026, 6, 3, 1, 0)


def test_daytime_window_and_empty_window() -> None:
    lunch = QuietHours(start="12:00", end="13:00")
    assert quiet_until_ms(utc_ms(2026, 6, 2, 4, 30), SHANGHAI, lunch) == utc_ms(2026, 6, 2, 5, 0)
    assert quiet_until_ms(utc_ms(2026, 6, 2, 5, 0), SHANGHAI, lunch) == 0
    never = QuietHours(start="00:00", end="00:00")
    assert quiet_until_ms(utc_ms(2026, 6, 2, 16, 0), SHANGHAI, never) == 0
