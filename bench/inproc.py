"""In-process call costs: what one call costs without gRPC transport, and the throttle's rates.

- ``servicer_costs``: builds the real server dependencies (``recsvc.server.app.build_deps``: model
  registry, engine, real-time store on a real Redis, metrics, outreach) and calls the servicer
  methods directly, so validation, filters, diversity, reasons, Redis look-ups and metrics are all
  in the figure; only the network and gRPC framing are not. The service-vs-in-process ratio in
  docs/benchmarks.md compares this with ``ratebench`` in the same session.
- ``throttle_rates``: single-decision latency (one Redis round trip per decision) and decisions
  per second pipelined from one client (``Throttle.decide_many``), dry-run and reserving.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench.loadconfig import LoadConfig, load_config
from bench.timing import LatencyStats, measure
from bench.traffic import ServedIds, Traffic
from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.settings import Settings


class BenchContext:
    """The parts of ``grpc.ServicerContext`` a servicer touches on the happy path."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:0"

    def is_active(self) -> bool:
        return True

    def code(self) -> None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"benchmark call failed: {code.name}: {details}")


def _cycle(items: list[Any]) -> Callable[[], Any]:
    it: Iterator[Any] = iter(())

    def nxt() -> Any:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(items)
            return next(it)

    return nxt


def run_inline(result: Any) -> Any:
    """The value of a handler call. ``async def`` handlers (the serving hot path) never await: they
    are driven to completion here without an event loop, so the figure is the handler's own cost,
    as it runs on the server's loop."""
    if not inspect.iscoroutine(result):
        return result
    try:
        result.send(None)
    except StopIteration as done:
        return done.value
    result.close()
    raise RuntimeError("the handler awaited something; run it on an event loop")


def _caller(call: Callable[[Any, Any], Any], build: Callable[[], Any], n: int, ctx: Any) -> Callable[[], Any]:
    """``call`` on pre-built requests, so building requests is not in the timing."""
    nxt = _cycle([build() for _ in range(n)])
    return lambda: run_inline(call(nxt(), ctx))


def served_ids(model: Any) -> ServedIds:
    kind = np.asarray(model.item_kind)
    items = model.items.array
    return ServedIds(
        members=model.members.array, products=items[kind == KIND_PRODUCT], content=items[kind == KIND_CONTENT]
    )


def servicer_costs(
    settings: Settings, calls: int = 5000, warmup: int = 500, config: LoadConfig | None = None
) -> list[LatencyStats]:
    """Per-call cost of RecommendProducts, SimilarItems, RecommendContent and one throttle
    decision, calling the servicers in this process with the served bundle's members."""
    from recsvc.server.app import build_deps, settle_heap
    from recsvc.server.recommender_servicer import RecommenderServicer

    deps = build_deps(settings, with_outreach=True)
    try:
        deps.models.reload()
        settle_heap()  # as a worker does before serving
        servicer = RecommenderServicer(settings, deps.engine, deps.models, deps.realtime, deps.metrics)
        _, model = deps.models.default()
        cfg = config or load_config(None, {"members": {"unknown_share": 0.0}})
        traffic = Traffic(served_ids(model), cfg)
        ctx = BenchContext()
        n = calls + warmup
        out = []
        for name, build, call in (
            ("RecommendProducts", traffic.recommend_products, servicer.RecommendProducts),
            ("SimilarItems", traffic.similar_items, servicer.SimilarItems),
            ("RecommendContent", traffic.recommend_content, servicer.RecommendContent),
        ):
            caller = _caller(call, build, n, ctx)  # type: ignore[arg-type]
            out.append(measure(f"{name} (servicer, in-process)", caller, calls, warmup))
        if deps.outreach_servicer is not None:
            nxt = _cycle([traffic.check_outreach() for _ in range(n)])
            check = deps.outreach_servicer.CheckOutreach
            out.append(
                measure("CheckOutreach (servicer, in-process)", lambda: check(nxt(), ctx), calls, warmup)
            )
        return out
    finally:
        for close in deps.on_close:
            close()


@dataclass(frozen=True)
class ThrottleRates:
    single: LatencyStats  # one decision, one Redis round trip
    pipelined_check_per_s: float
    pipelined_reserve_per_s: float
    batch: int
    decisions: int
    timezone: str = ""
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # mode -> reason -> count

    def as_dict(self) -> dict[str, Any]:
        return {
            "single": self.single.as_dict(),
            "pipelined_check_per_s": self.pipelined_check_per_s,
            "pipelined_reserve_per_s": self.pipelined_reserve_per_s,
            "batch": self.batch,
            "decisions": self.decisions,
            "timezone": self.timezone,
            "reasons": self.reasons,
        }

    def markdown(self) -> str:
        from bench.timing import MARKDOWN_HEADER

        by_reason = "; ".join(
            f"{mode}: " + ", ".join(f"{r} {n}" for r, n in sorted(c.items()))
            for mode, c in self.reasons.items()
        )
        return "\n".join(
            [
                MARKDOWN_HEADER,
                self.single.markdown_row(),
                "",
                f"pipelined from one client, {self.batch} per round trip: "
                f"{self.pipelined_check_per_s:,.0f} check decisions/s, "
                f"{self.pipelined_reserve_per_s:,.0f} reserve decisions/s ({self.decisions} each)",
                "",
                f"members' time zone {self.timezone}; decisions by reason: " + by_reason,
            ]
        )


@dataclass
class ThrottleBenchOptions:
    """``bench throttle``: how many decisions, in what batches, over how many members."""

    decisions: int = 50_000
    batch: int = 500
    members: int = 2000
    single_calls: int = 5000
    redis_url: str | None = None  # None: a redis-server started for the run


def run_throttle(
    options: ThrottleBenchOptions, settings_for: Callable[[dict[str, Any]], Settings]
) -> ThrottleRates:
    """The throttle benchmark against ``options.redis_url`` or a redis-server it starts (and stops);
    ``settings_for(overrides)`` gives the settings with that Redis."""
    import tempfile
    from contextlib import ExitStack
    from pathlib import Path

    from recsvc.localstack import LocalRedis
    from recsvc.redis_client import connect

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsvc-bench-")))
        url = options.redis_url or stack.enter_context(LocalRedis(tmp / "redis")).url
        client = connect(url)
        stack.callback(client.close)
        return throttle_rates(
            settings_for({"redis": {"url": url}}),
            client,
            members=options.members,
            decisions=options.decisions,
            batch=options.batch,
            single_calls=options.single_calls,
        )


def throttle_rates(
    settings: Settings,
    redis_client: Any,
    members: int = 2000,
    decisions: int = 50_000,
    batch: int = 500,
    single_calls: int = 5000,
) -> ThrottleRates:
    """Decisions per second from one client against the Redis behind ``redis_client``. Members
    get consent on every channel and a time zone where it is daytime now first, so decisions run the
    whole policy, not the cheap NO_CONSENT or QUIET_HOURS refusal; the reasons are counted."""
    from bench.campaign import daytime_timezone
    from recsvc.outreach.service import build_throttle
    from recsvc.outreach.throttle import OutreachAsk

    throttle = build_throttle(settings, redis_client)
    channels = ("app_push", "mini_program_subscribe", "wecom", "official_account", "sms")
    ids = [f"BENCH-{i:07d}" for i in range(members)]
    tz = daytime_timezone()
    at = int(time.time() * 1000) - 60_000
    throttle.import_profiles(
        timezones=((m, tz) for m in ids),
        consents=((m, ch, True, at) for m in ids for ch in channels),
        chunk=2000,
    )
    rng = np.random.default_rng(0)

    def asks(n: int, prefix: str) -> list[OutreachAsk]:
        pick = rng.integers(members, size=n)
        chans = rng.integers(len(channels), size=n)
        return [
            OutreachAsk(
                member_id=ids[int(p)],
                channel=channels[int(c)],
                campaign_id=f"bench-{int(p) % 50}",
                idempotency_key=f"{prefix}-{i}",
            )
            for i, (p, c) in enumerate(zip(pick, chans, strict=True))
        ]

    reasons: dict[str, Counter[str]] = {"single": Counter(), "check": Counter(), "reserve": Counter()}
    nxt = _cycle(asks(single_calls + 200, "single"))

    def one() -> None:
        reasons["single"][throttle.check(nxt()).reason] += 1

    single = measure("throttle decision (one round trip)", one, single_calls, 200)

    def pipelined(reserve: bool) -> float:
        mode = "reserve" if reserve else "check"
        work = asks(decisions, mode)
        t0 = time.perf_counter()
        for i in range(0, len(work), batch):
            for d in throttle.decide_many(work[i : i + batch], reserve=reserve):
                reasons[mode][d.reason] += 1
        return len(work) / (time.perf_counter() - t0)

    return ThrottleRates(
        single=single,
        pipelined_check_per_s=pipelined(False),
        pipelined_reserve_per_s=pipelined(True),
        batch=batch,
        decisions=decisions,
        timezone=tz,
        reasons={mode: dict(c) for mode, c in reasons.items()},
    )
