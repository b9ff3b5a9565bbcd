"""``PlanCampaign`` over a large audience, through gRPC: decisions per second and memory.

The audience is synthetic member ids (``BENCH-C0000000`` ...), so its size does not depend on the
bundle. Before the run every member gets consent on the campaign's channel and a time zone in
which it is daytime now (``daytime_timezone``), so each decision runs the whole policy instead of
the cheap NO_CONSENT / QUIET_HOURS refusals; both are bulk-loaded with ``Throttle.import_profiles``
(pipelined). The client sends the audience as ``PlanCampaign`` calls of at most
``outreach.max_plan_members`` explicit ids (the server's limit) and reads each decision stream to
the end (one stream message per pipelined chunk of decisions). Meanwhile a thread samples the
server's process tree (RSS, PSS) once a second; Redis's ``used_memory`` is read before and after.
Writes nothing itself; ``recsvc load bench campaign`` writes the figures.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc

from bench.memory import tree_memory
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc

# Candidates in order; the first whose local hour is inside [10, 19) now is used.
_ZONES = (
    "Asia/Shanghai",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Pacific/Auckland",
    "Asia/Kolkata",
    "America/Sao_Paulo",
)


def daytime_timezone(now: datetime | None = None) -> str:
    """A time zone where it is between 10:00 and 19:00 now (outside default quiet hours)."""
    now = now or datetime.now(UTC)
    for name in _ZONES:
        if 10 <= now.astimezone(ZoneInfo(name)).hour < 19:
            return name
    return _ZONES[0]


def audience(n: int) -> Iterator[str]:
    return (f"BENCH-C{i:07d}" for i in range(n))


@dataclass
class CampaignRun:
    members: int
    reserve: bool
    request_size: int
    seconds: float
    decisions: int
    decisions_per_s: float
    reasons: dict[str, int]
    first_decision_ms: float  # time to the first batch of decisions of the first call
    peak_server_rss_mib: float  # sum over the server's process tree
    peak_server_pss_mib: float
    redis_used_before_mib: float
    redis_used_after_mib: float
    seed_seconds: float  # bulk consent + time zone import before the run
    timezone: str
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_profiles(throttle: Any, members: int, channel: str, tz: str, chunk: int = 2000) -> float:
    """Consent on ``channel`` and time zone ``tz`` for every bench member; seconds taken."""
    t0 = time.perf_counter()
    at = int(time.time() * 1000) - 60_000
    throttle.import_profiles(
        timezones=((m, tz) for m in audience(members)),
        consents=((m, channel, True, at) for m in audience(members)),
        chunk=chunk,
    )
    return time.perf_counter() - t0


class _MemorySampler:
    def __init__(self, pid: int | None, interval_s: float = 1.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_rss = 0
        self.peak_pss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            if self.pid is not None:
                rows = tree_memory(self.pid)
                self.peak_rss = max(self.peak_rss, sum(r.rss_kib for r in rows))
                self.peak_pss = max(self.peak_pss, sum(r.pss_kib for r in rows))
            self._done.wait(self.interval_s)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _redis_used_mib(client: Any) -> float:
    return float(client.info("memory")["used_memory"]) / 2**20


def plan_campaign_over_grpc(
    target: str,
    members: int,
    channel: str,
    *,
    reserve: bool,
    request_size: int,
    redis_client: Any,
    server_pid: int | None,
    seed_seconds: float,
    timezone: str,
    campaign_id: str = "bench-campaign",
    metadata: tuple[tuple[str, str], ...] = (),
    deadline_s: float = 600.0,
) -> CampaignRun:
    """Plan (or reserve) ``campaign_id`` on ``channel`` for ``members`` bench members."""
    reasons: Counter[str] = Counter()
    codes: Counter[outreach_pb2.ReasonCode.ValueType] = Counter()  # named once at the end
    errors: Counter[str] = Counter()
    options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.max_receive_message_length", 64 * 2**20)]
    decisions = 0
    first_ms = float("nan")
    before = _redis_used_mib(redis_client)
    ids = audience(members)
    with grpc.insecure_channel(target, options=options) as ch, _MemorySampler(server_pid) as mem:
        stub = outreach_pb2_grpc.OutreachStub(ch)
        t0 = time.perf_counter()
        while True:
            chunk = [m for _, m in zip(range(request_size), ids, strict=False)]
            if not chunk:
                break
            req = outreach_pb2.PlanCampaignRequest(
                member_ids=chunk,
                channel=channel,
                campaign_id=campaign_id,
                message_class=outreach_pb2.MARKETING,
                reserve=reserve,
            )
            try:
                for batch in stub.PlanCampaign(req, timeout=deadline_s, metadata=metadata):
                    if decisions == 0:
                        first_ms = (time.perf_counter() - t0) * 1000
                    decisions += len(batch.decisions)
                    codes.update(d.decision.reason for d in batch.decisions)
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1  # type: ignore[attr-defined]
        seconds = time.perf_counter() - t0
    for code, n in codes.items():
        reasons[outreach_pb2.ReasonCode.Name(code)] += n
    after = _redis_used_mib(redis_client)
    return CampaignRun(
        members=members,
        reserve=reserve,
        request_size=request_size,
        seconds=seconds,
        decisions=decisions,
        decisions_per_s=decisions / seconds if seconds > 0 else 0.0,
        reasons=dict(reasons),
        first_decision_ms=first_ms,
        peak_server_rss_mib=mem.peak_rss / 1024,
        peak_server_pss_mib=mem.peak_pss / 1024,
        redis_used_before_mib=before,
        redis_used_after_mib=after,
        seed_seconds=seed_seconds,
        timezone=timezone,
        errors=dict(errors),
    )


def markdown(runs: list[CampaignRun]) -> str:
    lines = [
        "| mode | members | seconds | decisions/s | first decision ms | reasons | errors | "
        "server peak RSS / PSS MiB (tree) | Redis used MiB before -> after |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in runs:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items()))
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "none"
        lines.append(
            f"| {'reserve' if r.reserve else 'dry run'} | {r.members:,} | {r.seconds:.1f} | "
            f"{r.decisions_per_s:,.0f} | {r.first_decision_ms:.0f} | {reasons} | {errors} | "
            f"{r.peak_server_rss_mib:.0f} / {r.peak_server_pss_mib:.0f} | "
            f"{r.redis_used_before_mib:.0f} -> {r.redis_used_after_mib:.0f} |"
        )
    return "\n".join(lines)
