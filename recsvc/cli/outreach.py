"""`recsvc outreach ...` commands: validate a policy file, import members' time zones and consent,
and ask the throttle one question.

``import DIR`` reads ``members.{csv,parquet}`` (member_id, timezone; an empty or absent
timezone is the policy's default; optional ``consent_<channel>`` columns stamped with
registered_at) and ``consent.{csv,parquet}`` (member_id, channel, granted, updated_at) and writes
them to Redis, pipelined; rows that break the contract are left out whole with a reason
(``--quarantine FILE`` writes them as CSV) and never stop the good rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from recsvc.bounds import MAX_FUTURE_MS, now_ms
from recsvc.cli.common import friendly_errors, state
from recsvc.errors import DataContractError

app = typer.Typer(help="Outreach throttle: policy, member profiles, decisions.", no_args_is_help=True)
out = Console(soft_wrap=True)

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@app.command("validate-policy")
@friendly_errors
def validate_policy(
    ctx: typer.Context, path: Path = typer.Argument(..., help="policy file (.toml, .yaml or .yml)")
) -> None:
    """Check a policy file (its event_channel_map against the settings' data.event_channels); exit 2
    with every problem named when it is invalid."""
    from recsvc.outreach.policy import load_policy

    policy = load_policy(path, state(ctx).settings().data.event_channels)
    m = policy.marketing
    out.print(
        f"policy ok: {len(policy.channels)} channels ({len(policy.event_channel_map)} event channels "
        f"mapped to them); marketing {m.per_channel_per_day}/channel/day, "
        f"{m.per_day}/day, {m.per_week}/week, gap {m.min_gap_hours}h; quiet "
        f"{policy.quiet_hours.start}-{policy.quiet_hours.end} ({policy.default_timezone}); "
        f"{len(policy.fatigue.levels)} fatigue levels"
    )


def _read_table(folder: Path, stem: str, columns: list[str]) -> Any:
    import pandas as pd

    for suffix in (".parquet", ".csv"):
        path = folder / f"{stem}{suffix}"
        if path.exists():
            try:
                if suffix == ".csv":
                    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                else:
                    typed = pd.read_parquet(path)
                    frame = typed.astype(str).where(typed.notna(), "")  # a null is empty, not "None"
            except Exception as exc:  # any reader failure means the file breaks the contract
                raise DataContractError(f"{path} cannot be read: {exc}") from exc
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise DataContractError(f"{path} lacks columns {missing}; needs {columns}")
            return frame[columns] if columns else frame
    return None


def _member_row(
    row: dict[str, str], channels: list[str], max_id: int
) -> tuple[str, str | None, list[tuple[str, str, bool, int]]]:
    """One members-file row checked whole: (member_id, zone or None without a timezone column,
    consent records from its ``consent_<channel>`` cells). Any bad cell raises, so a refused row
    contributes neither its zone nor its consent."""
    from recsvc.outreach.ask_checks import check_id
    from recsvc.outreach.policy import check_timezone

    member_id = check_id(row["member_id"], "member_id", max_id)
    zone = None
    if "timezone" in row:
        zone = row["timezone"].strip()
        if zone:  # empty: the policy's default_timezone, whatever it is when a message goes
            check_timezone(zone)
    answers: list[tuple[str, bool]] = []
    for column, cell in row.items():
        if not column.startswith("consent_"):
            continue
        flag = cell.strip().lower()
        if not flag:
            continue  # never answered: stays "no consent", as in the data contract
        channel = column.removeprefix("consent_")
        if channel not in channels:
            raise ValueError(f"unknown channel {channel[:40]!r} (column {column[:60]!r})")
        if flag not in _TRUE | _FALSE:
            raise ValueError(f"{column[:60]} must be true/false, got {cell[:20]!r}")
        answers.append((channel, flag in _TRUE))
    records: list[tuple[str, str, bool, int]] = []
    if answers:
        # registered_at is optional, column and cell alike: without it the answer dates from 1970,
        # so any consent record stamped later (the API's, a consent file's) wins over it
        stamp = row.get("registered_at", "").strip() or "1970-01-01"
        at = _checked_stamp(stamp, "registered_at")
        records = [(member_id, channel, granted, at) for channel, granted in answers]
    return member_id, zone, records


def _checked_stamp(value: str, column: str) -> int:
    try:
        at = _timestamp_ms(value)
    except ValueError as exc:
        raise ValueError(f"{column} is not a timestamp ({exc}): {value[:40]!r}") from exc
    # A stamp ahead of the clock would outrank every later answer of the member's (the newest
    # record wins): a withdrawal after it would be ignored.
    if at > now_ms() + MAX_FUTURE_MS:
        raise ValueError(f"{column} {value[:40]!r} is more than {MAX_FUTURE_MS // 1000} s in the future")
    return at


def _why(exc: Exception) -> str:
    return str(getattr(exc, "message", exc))


def _timestamp_ms(value: str) -> int:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
        if ts is pd.NaT:
            raise ValueError("empty")
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        ms = int(ts.value // 1_000_000)
    except (OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise ValueError("out of range") from exc  # before 1677 or after 2262: not a real answer
    if ms < 0:
        raise ValueError("before 1970")
    return ms


@app.command("import")
@friendly_errors
def import_profiles(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help="folder with members.{csv,parquet} and/or consent.{csv,parquet}"),
    quarantine: Path | None = typer.Option(None, help="write refused rows with reasons here (CSV)"),
) -> None:
    """Load members' time zones and consent records into Redis. Refused rows are named (and
    written to --quarantine); exit 1 when every row was refused."""
    from recsvc.errors import InvalidArgument
    from recsvc.outreach.ask_checks import check_id
    from recsvc.outreach.service import build_throttle
    from recsvc.redis_client import STORE_ERRORS, connect

    settings = state(ctx).settings()
    if not folder.is_dir():
        raise DataContractError(f"{folder} is not a folder")
    if quarantine is not None:
        # checked before anything is written: a run that cannot keep its refused rows stops first
        if quarantine.is_dir():
            raise DataContractError(f"--quarantine {quarantine} is a folder: give a file to write")
        quarantine.parent.mkdir(parents=True, exist_ok=True)
        existed = quarantine.exists()
        with quarantine.open("a"):  # writable (PermissionError, a read-only disk: named now)
            pass
        if not existed:
            quarantine.unlink()  # written only when a row is refused
    members = _read_table(folder, "members", ["member_id"])
    if members is not None:
        # timezone and consent_<channel> are optional, as in the data contract: without the
        # column no zone (or no consent for that channel) is written.
        full = _read_table(folder, "members", [])
        wanted = [c for c in full.columns if c in ("timezone", "registered_at") or c.startswith("consent_")]
        if "timezone" in wanted or any(c.startswith("consent_") for c in wanted):
            members = full[["member_id", *wanted]]
        else:
            members = None
    consent = _read_table(folder, "consent", ["member_id", "channel", "granted", "updated_at"])
    if members is None and consent is None:
        raise DataContractError(f"{folder} holds neither members.(csv|parquet) nor consent.(csv|parquet)")
    # bulk writes: a generous timeout instead of the decision path's fail-fast one
    throttle = build_throttle(settings, connect(settings.redis.url), timeout_s=10.0)
    policy = throttle.policies.current()
    max_id = settings.data.max_id_length
    refused: list[dict[str, str]] = []

    zones: list[tuple[str, str]] = []
    records: list[tuple[str, str, bool, int]] = []
    if members is not None:
        columns = list(members.columns)
        for values in members.itertuples(index=False, name=None):
            row = dict(zip(columns, values, strict=True))
            try:
                # NFC, like the ids of the files and the API (recsvc.idmap): one member, one profile.
                member_id, zone, answers = _member_row(row, policy.channels, max_id)
            except (InvalidArgument, ValueError) as exc:
                refused.append(
                    {"file": "members", "member_id": row["member_id"][:max_id], "reason": _why(exc)}
                )
                continue
            if zone is not None:
                zones.append((member_id, zone))
            records.extend(answers)
    if consent is not None:
        for row in consent.itertuples(index=False):
            try:
                member_id = check_id(row.member_id, "member_id", max_id)
                if row.channel not in policy.channels:
                    raise ValueError(f"unknown channel {row.channel[:40]!r}")
                flag = row.granted.strip().lower()
                if flag not in _TRUE | _FALSE:
                    raise ValueError(f"granted must be true/false, got {row.granted[:20]!r}")
                at = _checked_stamp(row.updated_at, "updated_at")
                records.append((member_id, row.channel, flag in _TRUE, at))
            except (InvalidArgument, ValueError) as exc:
                refused.append({"file": "consent", "member_id": row.member_id[:max_id], "reason": _why(exc)})
    try:
        n_tz, n_consent = throttle.import_profiles(zones, records, chunk=settings.outreach.plan_pipeline_size)
    except STORE_ERRORS as exc:
        from recsvc.errors import StoreUnavailable

        raise StoreUnavailable(f"Redis at {settings.redis.url} did not answer: {exc}") from exc
    out.print(
        f"imported {n_tz} time zones and {n_consent} consent records "
        f"({len(records) - n_consent} older than stored, kept); {len(refused)} rows refused"
    )
    for r in refused[:10]:
        out.print(f"  refused {r['file']} member={r['member_id']}: {r['reason']}")
    if quarantine is not None and refused:
        from recsvc.csvsafe import SafeDictWriter

        quarantine.parent.mkdir(parents=True, exist_ok=True)
        with quarantine.open("w", newline="") as fh:
            # Refused rows carry ids as the file sent them: escaped against formula injection.
            writer = SafeDictWriter(fh, fieldnames=["file", "member_id", "reason"])
            writer.writeheader()
            writer.writerows(refused)
    if refused and not zones and not records:
        # every row was refused: nothing was imported, which a script must not read as done
        raise typer.Exit(code=1)


@app.command("check")
@friendly_errors
def check(
    ctx: typer.Context,
    member: str = typer.Option(..., "--member", help="member id"),
    channel: str = typer.Option(..., "--channel", help="e.g. app_push, wecom, sms"),
    campaign: str = typer.Option("", "--campaign", help="campaign id (once per member)"),
    message_class: str = typer.Option("marketing", "--class", help="marketing or transactional"),
    priority: int = typer.Option(0, "--priority", help="0..9"),
    reserve: bool = typer.Option(False, "--reserve", help="record the send instead of a dry run"),
) -> None:
    """Ask the throttle whether a message may go out now; prints the decision as JSON."""
    from recsvc.errors import InvalidArgument
    from recsvc.outreach import ask_checks as v
    from recsvc.outreach.decision import UNAVAILABLE
    from recsvc.outreach.service import build_outreach_servicer
    from recsvc.outreach.throttle import MARKETING, TRANSACTIONAL, OutreachAsk
    from recsvc.redis_client import connect

    settings = state(ctx).settings()
    if message_class not in (MARKETING, TRANSACTIONAL):
        raise InvalidArgument(f"--class must be marketing or transactional, got {message_class!r}")
    client = connect(settings.redis.url)
    log = None
    if reserve and settings.events.enabled:
        from prometheus_client import CollectorRegistry

        from recsvc.eventlog.log import EventLog, EventLogMetrics

        # a send reserved here counts in the campaign report like one reserved over the API
        log = EventLog(client, settings, EventLogMetrics(CollectorRegistry())).start()
    try:
        # the API's own decision path: the global control group and the log apply here too
        outreach = build_outreach_servicer(settings, client, recommendations=None, event_log=log)  # type: ignore[arg-type]
        max_id = settings.data.max_id_length
        ask = OutreachAsk(
            member_id=v.check_id(member, "member", max_id),
            channel=v.check_channel(channel, outreach.throttle.policies.current()),
            campaign_id=v.check_id(campaign, "campaign", max_id, required=False),
            message_class=message_class,
            priority=v.check_priority(priority),
        )
        d = outreach.decide(ask, reserve=reserve)
    finally:
        if log is not None:
            log.close()  # written before the command returns (also when an argument was refused)
    out.print_json(
        json.dumps(
            {
                "allowed": d.allowed,
                "reason": d.reason,
                "detail": d.detail,
                "next_allowed_ms": d.next_allowed_ms or None,
                "reservation_id": d.reservation_id or None,
            }
        )
    )
    if d.reason == UNAVAILABLE:
        raise typer.Exit(code=3)  # the decision is printed; Redis could not answer: try again later
