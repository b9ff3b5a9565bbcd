"""`recsvc outreach validate-policy | import | check` against a real redis-server."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from recsvc.cli import app
from recsvc.redis_keys import member_key

pytestmark = pytest.mark.integration
runner = CliRunner()


def flat(text: str) -> str:
    """Output without the line breaks rich adds to fit the terminal."""
    return " ".join(text.split())


@pytest.fixture
def data(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder to import from, the CLI pointed at the test's Redis."""
    monkeypatch.setenv("RECSVC_REDIS__URL", redis_url)
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def test_validate_policy_ok_and_bad(tmp_path: Path) -> None:
    from recsvc.outreach.policy import DEFAULT_POLICY_FILE

    ok = runner.invoke(app, ["outreach", "validate-policy", str(DEFAULT_POLICY_FILE)])
    assert ok.exit_code == 0 and "policy ok" in ok.output
    bad = tmp_path / "p.toml"
    bad.write_text('[quiet_hours]\nstart = "9pm"\n')
    res = runner.invoke(app, ["outreach", "validate-policy", str(bad)])
    assert res.exit_code == 2
    assert "INVALID_CONFIG" in res.output and "quiet_hours.start" in flat(res.output)
    # regression: an empty file printed "policy ok" (every default) and exited 0
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    res = runner.invoke(app, ["outreach", "validate-policy", str(empty)])
    assert res.exit_code == 2 and "EMPTY_POLICY" in res.output and "holds no policy" in flat(res.output)
    assert "policy ok" not in res.output


def test_import_profiles_and_check(data: Path, tmp_path: Path, redis_url: str) -> None:
    pd.DataFrame(
        {"member_id": ["M1", "M2", "bad id"], "timezone": ["Europe/Berlin", "Nowhere/Land", "Asia/Shanghai"]}
    ).to_csv(data / "members.csv", index=False)
    pd.DataFrame(
        {
            "member_id": ["M1", "M1", "M2", "M3", "M1"],
            "channel": ["wecom", "fax", "sms", "sms", "sms"],
            "granted": ["true", "true", "maybe", "0", "true"],
            # a stamp in 2100 would outrank every later withdrawal: refused
            "updated_at": ["2026-05-01T10:00:00Z", "2026-05-01", "2026-05-01", "2026-05-01", "2100-01-01"],
        }
    ).to_parquet(data / "consent.parquet")
    quarantine = tmp_path / "q.csv"
    res = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", str(quarantine)])
    assert res.exit_code == 0, res.output
    assert "imported 1 time zones and 2 consent records" in flat(res.output)
    assert "5 rows refused" in flat(res.output)
    refused = pd.read_csv(quarantine)
    assert sorted(refused["reason"].str.slice(0, 12)) == sorted(
        ["member_id ma", "unknown time", "unknown chan", "granted must", "updated_at '"]
    )
    r = redis.Redis.from_url(redis_url)
    profile = member_key("recsvc", "M1", "out:profile")
    wecom = r.hget(profile, "c:wecom")
    assert r.hget(profile, "tz") == b"Europe/Berlin" and isinstance(wecom, bytes) and wecom.startswith(b"1|")
    assert r.pttl(profile) > 0

    res = runner.invoke(
        app, ["outreach", "check", "--member", "M1", "--channel", "wecom", "--campaign", "c1"]
    )
    assert res.exit_code == 0, res.output
    decision = json.loads(res.stdout)
    assert decision["reason"] in {"ALLOWED", "QUIET_HOURS"}  # depends on the wall clock in Berlin
    res = runner.invoke(app, ["outreach", "check", "--member", "M3", "--channel", "sms"])
    assert json.loads(res.stdout)["reason"] == "NO_CONSENT"
    res = runner.invoke(app, ["outreach", "check", "--member", "M3", "--channel", "fax"])
    assert res.exit_code == 2 and "unknown channel" in flat(res.output)


def test_import_refuses_a_folder_without_the_files(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSVC_REDIS__URL", redis_url)
    res = runner.invoke(app, ["outreach", "import", str(tmp_path)])
    assert res.exit_code == 2 and "DATA_CONTRACT" in res.output
    (tmp_path / "members.csv").write_text("member,zone\nM1,UTC\n")
    res = runner.invoke(app, ["outreach", "import", str(tmp_path)])
    assert res.exit_code == 2 and "lacks columns" in flat(res.output)


def test_import_takes_an_empty_timezone_as_the_default_and_ids_in_nfc(
    data: Path, tmp_path: Path, redis_url: str
) -> None:
    typed = unicodedata.normalize("NFD", "Café-1")  # the same id, as another system writes it
    assert typed != "Café-1"
    r = redis.Redis.from_url(redis_url)
    profile = member_key("recsvc", "Café-1", "out:profile")
    r.hset(profile, "tz", "Europe/Berlin")  # an earlier import
    (data / "members.csv").write_text(f"member_id,timezone\n{typed},\nM2,Asia/Tokyo\n", encoding="utf-8")
    (data / "consent.csv").write_text(
        f"member_id,channel,granted,updated_at\n{typed},wecom,true,2026-05-01\n", encoding="utf-8"
    )
    res = runner.invoke(app, ["outreach", "import", str(data)])
    assert res.exit_code == 0, res.output
    assert "imported 2 time zones and 1 consent records" in flat(res.output)
    assert "0 rows refused" in res.output
    assert r.hget(profile, "tz") is None  # empty: the policy's default_timezone from now on
    wecom = r.hget(profile, "c:wecom")
    assert isinstance(wecom, bytes) and wecom.startswith(b"1|")
    assert not r.exists(member_key("recsvc", typed, "out:profile"))  # one member, one profile
    res = runner.invoke(app, ["outreach", "check", "--member", typed, "--channel", "wecom"])
    assert json.loads(res.stdout)["reason"] in {"ALLOWED", "QUIET_HOURS"}  # consented, not NO_CONSENT

    # A Parquet null is empty too, and a members file may have no timezone column at all.
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pd.DataFrame({"member_id": ["M5"], "timezone": [None]}).to_parquet(parquet / "members.parquet")
    res = runner.invoke(app, ["outreach", "import", str(parquet)])
    assert "imported 1 time zones" in flat(res.output) and "0 rows refused" in res.output
    no_zone = tmp_path / "no-zone"
    no_zone.mkdir()
    (no_zone / "members.csv").write_text("member_id,consent_sms\nM6,true\n")
    res = runner.invoke(app, ["outreach", "import", str(no_zone)])
    assert res.exit_code == 0 and "imported 0 time zones and 1 consent records" in flat(res.output)
    # registered_at is optional cell by cell too: an empty one refuses no answer
    (no_zone / "members.csv").write_text(
        "member_id,registered_at,consent_sms\nM7,,true\nM8,2026-01-02,false\n"
    )
    res = runner.invoke(app, ["outreach", "import", str(no_zone)])
    assert res.exit_code == 0 and "2 consent records" in flat(res.output) and "0 rows refused" in res.output


def test_a_decision_redis_could_not_make_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsvc.localstack import free_port

    monkeypatch.setenv("RECSVC_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    res = runner.invoke(app, ["outreach", "check", "--member", "M1", "--channel", "wecom"])
    assert res.exit_code == 3, res.output  # try again later, as everywhere in the CLI
    assert json.loads(res.stdout[res.stdout.index("{") :])["reason"] == "THROTTLE_UNAVAILABLE"


def test_import_refuses_dates_no_clock_can_hold_and_checks_the_quarantine_first(
    data: Path, tmp_path: Path, redis_url: str
) -> None:
    (data / "consent.csv").write_text(
        "member_id,channel,granted,updated_at\n"
        "Y1,sms,true,0001-01-01\nY2,sms,true,2500-01-01\nY3,sms,true,1960-05-01\nY4,sms,true,2026-05-01\n"
    )
    (data / "members.csv").write_text("member_id,registered_at,consent_wecom\nY5,1500-01-01,true\n")
    into_folder = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", str(tmp_path)])
    assert into_folder.exit_code == 2 and "is a folder" in flat(into_folder.output)
    unwritable = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", "/proc/recsvc-q.csv"])
    assert unwritable.exit_code == 2 and "FILE" in flat(unwritable.output), unwritable.output
    r = redis.Redis.from_url(redis_url)
    assert not r.exists(member_key("recsvc", "Y4", "out:profile"))  # refused before anything was written
    quarantine = tmp_path / "new" / "q.csv"
    res = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", str(quarantine)])
    assert res.exit_code == 0, res.output
    assert "1 consent records" in flat(res.output) and "4 rows refused" in flat(res.output)
    refused = pd.read_csv(quarantine)
    assert sorted(refused["member_id"]) == ["Y1", "Y2", "Y3", "Y5"]
    assert refused["reason"].str.contains("not a timestamp").all()


def test_a_members_row_refused_for_its_zone_writes_none_of_its_consent(
    data: Path, tmp_path: Path, redis_url: str
) -> None:
    (data / "members.csv").write_text(
        "member_id,timezone,consent_wecom,consent_sms\n"
        "G1,Europe/Berlin,true,false\n"
        "B1,Mars/Olympus,true,true\n"
        "B2,../../etc/passwd,true,true\n"
    )
    quarantine = tmp_path / "q.csv"
    res = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", str(quarantine)])
    assert res.exit_code == 0, res.output
    # only G1's zone and two answers were written; the refused rows count nowhere else
    assert "imported 1 time zones and 2 consent records" in flat(res.output)
    assert "2 rows refused" in flat(res.output)
    refused = pd.read_csv(quarantine)
    assert sorted(refused["member_id"]) == ["B1", "B2"]
    assert (refused["file"] == "members").all()
    assert refused["reason"].str.startswith("unknown time zone").all()
    r = redis.Redis.from_url(redis_url)
    assert not r.exists(member_key("recsvc", "B1", "out:profile"))
    assert not r.exists(member_key("recsvc", "B2", "out:profile"))
    assert r.hget(member_key("recsvc", "G1", "out:profile"), "tz") == b"Europe/Berlin"
    res = runner.invoke(app, ["outreach", "check", "--member", "B1", "--channel", "wecom"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["reason"] == "NO_CONSENT"  # never answered, as the row had no effect


def test_an_import_whose_every_row_is_refused_exits_1(data: Path, tmp_path: Path) -> None:
    """Regression: an import that refused every row (nothing written) exited 0."""
    (data / "members.csv").write_text("member_id,timezone\nR1,Mars/Olympus\nR2,Nowhere/City\n")
    (data / "consent.csv").write_text("member_id,channel,granted,updated_at\nR3,pigeon,true,2026-05-01\n")
    quarantine = tmp_path / "q.csv"
    res = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", str(quarantine)])
    assert res.exit_code == 1, res.output
    assert "imported 0 time zones and 0 consent records" in flat(res.output)
    assert "3 rows refused" in flat(res.output)
    assert sorted(pd.read_csv(quarantine)["member_id"]) == ["R1", "R2", "R3"]  # kept, with reasons
    # one good row beside them is an import: exit 0 (refused rows are named and quarantined)
    (data / "members.csv").write_text("member_id,timezone\nR1,Mars/Olympus\nR4,UTC\n")
    res = runner.invoke(app, ["outreach", "import", str(data)])
    assert res.exit_code == 0 and "2 rows refused" in flat(res.output), res.output


def test_a_consent_cell_that_is_not_a_boolean_refuses_its_row(
    data: Path, tmp_path: Path, redis_url: str
) -> None:
    (data / "members.csv").write_text(
        "member_id,timezone,consent_wecom,consent_sms\n"
        "Z1,Asia/Tokyo,true,maybe\n"
        "Z2,UTC,,true\n"  # an empty cell is "never answered", not a refusal
    )
    quarantine = tmp_path / "q.csv"
    res = runner.invoke(app, ["outreach", "import", str(data), "--quarantine", str(quarantine)])
    assert res.exit_code == 0, res.output
    assert "imported 1 time zones and 1 consent records" in flat(res.output)
    assert "1 rows refused" in flat(res.output)
    refused = pd.read_csv(quarantine)
    assert refused.to_dict("records") == [
        {"file": "members", "member_id": "Z1", "reason": "consent_sms must be true/false, got 'maybe'"}
    ]
    r = redis.Redis.from_url(redis_url)
    assert not r.exists(member_key("recsvc", "Z1", "out:profile"))  # neither its zone nor its wecom answer
    z2 = member_key("recsvc", "Z2", "out:profile")
    sms = r.hget(z2, "c:sms")
    assert r.hget(z2, "tz") == b"UTC" and isinstance(sms, bytes) and sms.startswith(b"1|")
    assert r.hget(z2, "c:wecom") is None


def test_check_reserve_decides_as_the_api_does_holdouts_and_the_log_included(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsvc.outreach.holdout import position

    monkeypatch.setenv("RECSVC_REDIS__URL", redis_url)
    monkeypatch.setenv("RECSVC_OUTREACH__GLOBAL_CONTROL_SHARE", "0.5")
    held = next(m for m in (f"GC{i}" for i in range(100)) if position("global", m) < 0.5)
    r = redis.Redis.from_url(redis_url)
    streams = lambda: {k for k in r.scan_iter(type="stream")}  # noqa: E731
    entries = lambda: sum(r.xlen(k) for k in streams())  # noqa: E731
    before = entries()
    res = runner.invoke(
        app, ["outreach", "check", "--member", held, "--channel", "sms", "--campaign", "gc", "--reserve"]
    )
    assert res.exit_code == 0, res.output
    decision = json.loads(res.stdout)
    assert decision["reason"] == "HOLDOUT" and decision["reservation_id"] is None
    assert entries() == before + 1  # the held-out decision is in the log, the campaign's baseline
    dry = runner.invoke(app, ["outreach", "check", "--member", held, "--channel", "sms", "--campaign", "gc"])
    assert json.loads(dry.stdout)["reason"] == "HOLDOUT" and entries() == before + 1  # a dry run logs nothing
