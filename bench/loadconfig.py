"""The load-test config file: one TOML file (``load/config.toml`` is the documented default) that
says where to send traffic, what the traffic looks like and which load shape to run.

Read by ``load/locustfile.py`` (inside the Locust process) and by ``recsvc load run``. Command
line options override single values; everything is validated here so a typo fails before any
process starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsvc.errors import ConfigError
from recsvc.settings import describe_validation_error, merge_tables, read_toml

RECOMMENDER_CHANNELS = ("mini_program", "app", "wecom", "official_account", "offline_store", "live")
OUTREACH_CHANNELS = ("app_push", "mini_program_subscribe", "wecom", "official_account", "sms")
RPC_NAMES = (
    "RecommendProducts",
    "SimilarItems",
    "RecommendContent",
    "RecordEvent",
    "CheckOutreach",
    "ReserveOutreach",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive_weights(v: dict[str, float], known: tuple[str, ...], what: str) -> dict[str, float]:
    unknown = sorted(set(v) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {list(known)}")
    if any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
        raise ValueError(f"{what} weights must be >= 0 with at least one > 0")
    return v


class Members(_Section):
    """Who calls: members of the served bundle by a Zipf long tail, plus never-seen members."""

    zipf_exponent: float = Field(1.1, gt=0, le=5, description="rank r is drawn with weight 1/r^s")
    unknown_share: float = Field(0.05, ge=0, le=1, description="share of calls for unknown members")
    unknown_pool: int = Field(100_000, ge=1, description="distinct unknown member ids to draw from")
    seed: int = 0


class Weights(_Section):
    """Relative task weights per RPC (Locust ``@task`` weights)."""

    recommend_products: int = Field(50, ge=0)
    similar_items: int = Field(20, ge=0)
    recommend_content: int = Field(10, ge=0)
    record_event: int = Field(15, ge=0)
    check_outreach: int = Field(3, ge=0)
    reserve_outreach: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _some_work(self) -> Weights:
        if sum(self.model_dump().values()) == 0:
            raise ValueError("at least one RPC weight must be > 0")
        return self

    def by_rpc(self) -> dict[str, int]:
        return dict(zip(RPC_NAMES, self.model_dump().values(), strict=True))


class Think(_Section):
    """Think time between two calls of one simulated caller.

    ``constant_throughput``: each user makes at most ``per_user_rate`` calls per second, so the
    offered rate is about users x per_user_rate while the server keeps up (fixed-rate load).
    ``between``: a uniform pause of ``min_s``..``max_s`` seconds (closed loop, like people).
    """

    mode: Literal["constant_throughput", "between", "none"] = "constant_throughput"
    per_user_rate: float = Field(2.0, gt=0)
    min_s: float = Field(0.5, ge=0)
    max_s: float = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Think:
        if self.max_s < self.min_s:
            raise ValueError("think.max_s must be >= think.min_s")
        return self


class Requests(_Section):
    """What each RPC asks for."""

    recommend_k: int = Field(20, ge=1, le=200)
    content_k: int = Field(10, ge=1, le=200)
    similar_k: int = Field(12, ge=1, le=200)
    product_zipf_exponent: float = Field(1.2, gt=0, le=5, description="popularity of product pages")
    # Product pages of items no longer in the catalog (delisted): SimilarItems answers NOT_FOUND,
    # which Locust counts as a failure by that code. Spread evenly: round(n * share) of n pages.
    stale_item_share: float = Field(0.0, ge=0, le=1)
    channels: dict[str, float] = Field(
        default_factory=lambda: {
            "mini_program": 50.0,
            "app": 25.0,
            "wecom": 10.0,
            "official_account": 5.0,
            "offline_store": 5.0,
            "live": 5.0,
        }
    )
    scenes: list[str] = Field(default_factory=lambda: ["home_feed", "cart", "product_detail", "search"])
    event_types: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 55.0,
            "click": 20.0,
            "favorite": 4.0,
            "add_to_cart": 8.0,
            "share": 2.0,
            "purchase": 4.0,
            "content_view": 5.0,
            "live_watch": 2.0,
        }
    )
    outreach_channels: dict[str, float] = Field(
        default_factory=lambda: {
            "app_push": 35.0,
            "mini_program_subscribe": 25.0,
            "wecom": 20.0,
            "official_account": 15.0,
            "sms": 5.0,
        }
    )
    campaigns: int = Field(50, ge=1, description="distinct campaign ids outreach calls use")
    transactional_share: float = Field(0.05, ge=0, le=1)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: dict[str, float]) -> dict[str, float]:
        return _positive_weights(v, RECOMMENDER_CHANNELS, "channels")

    @field_validator("outreach_channels")
    @classmethod
    def _outreach_channels(cls, v: dict[str, float]) -> dict[str, float]:
        return _positive_weights(v, OUTREACH_CHANNELS, "outreach channels")

    @field_validator("event_types")
    @classmethod
    def _event_types(cls, v: dict[str, float]) -> dict[str, float]:
        from recsvc.settings import EVENT_TYPES

        return _positive_weights(v, EVENT_TYPES, "event types")

    @field_validator("scenes")
    @classmethod
    def _scenes(cls, v: list[str]) -> list[str]:
        from recsvc.errors import InvalidArgument
        from recsvc.server.request_checks import check_scene

        if not v:
            raise ValueError("at least one scene")
        for scene in v:
            try:  # the server's rule: a scene it refuses would fail every call of the run
                check_scene(scene)
            except InvalidArgument as exc:
                raise ValueError(f"{scene[:40]!r}: {exc.message}") from None
        return v


class Steady(_Section):
    users: int = Field(20, ge=1)
    spawn_rate: float = Field(20.0, gt=0)
    duration_s: float = Field(60.0, gt=0)


class Ramp(_Section):
    """Step the users up until ``max_users`` to find the knee: where p99 bends upward."""

    start_users: int = Field(10, ge=1)
    step_users: int = Field(10, ge=1)
    step_s: float = Field(30.0, gt=0)
    max_users: int = Field(200, ge=1)
    spawn_rate: float = Field(50.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Ramp:
        if self.max_users < self.start_users:
            raise ValueError("ramp.max_users must be >= ramp.start_users")
        return self


class Spike(_Section):
    """A live-stream spike: ``base_users``, then ``factor`` x for ``spike_s``, then back."""

    base_users: int = Field(10, ge=1)
    factor: float = Field(10.0, ge=1)
    before_s: float = Field(60.0, gt=0)
    spike_s: float = Field(60.0, gt=0)
    after_s: float = Field(120.0, gt=0)
    # Users per second while switching; high so the step is a step, not a slope.
    spawn_rate: float = Field(500.0, gt=0)


class Shape(_Section):
    kind: Literal["steady", "ramp", "spike"] = "steady"
    steady: Steady = Steady()
    ramp: Ramp = Ramp()
    spike: Spike = Spike()


class LiveStream(_Section):
    """The live-stream scenario (``load/live-stream.toml``): one host pins ``pinned`` products (the
    ones members' lists hold most often, found by asking for ``sample_members`` members' lists
    first) and, from ``start_after_s`` on, sells them out one every ``sellout_interval_s`` through
    the Catalog service (SetStock), while the members ask for RecommendProducts with
    ``in_stock_only``. Each sold-out product a member is served after its SetStock answered is
    counted, within ``bound_s`` (the propagation bound) or past it."""

    enabled: bool = False
    pinned: int = Field(20, ge=1, le=1000)
    sample_members: int = Field(200, ge=1)
    start_after_s: float = Field(5.0, ge=0)
    sellout_interval_s: float = Field(1.0, gt=0)
    bound_s: float = Field(1.0, gt=0)


class Targets(_Section):
    """What a run must achieve, judged after the warm-up (``recsvc load run --warmup``); each
    unset target is not judged. ``recsvc load run`` writes a verdict per target into
    summary.md/json, and with ``--fail-on-miss`` exits 1 when one is missed."""

    p50_ms: float | None = Field(None, gt=0, description="all calls: 50th percentile latency")
    p99_ms: float | None = Field(None, gt=0, description="all calls: 99th percentile latency")
    max_error_pct: float | None = Field(None, ge=0, le=100, description="failed calls, % of all")
    min_rps: float | None = Field(None, gt=0, description="calls answered per second")
    # Per RPC, e.g. {RecommendProducts = 10.0}: that RPC's 99th percentile.
    rpc_p99_ms: dict[str, float] = Field(default_factory=dict)
    # Live-stream scenario: sold-out products served later than the propagation bound after their
    # SetStock answered (the target is 0).
    max_sold_out_past_bound: int | None = Field(None, ge=0)

    @field_validator("rpc_p99_ms")
    @classmethod
    def _rpcs(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(RPC_NAMES))
        if unknown:
            raise ValueError(f"unknown RPCs {unknown}; known: {list(RPC_NAMES)}")
        if any(ms <= 0 for ms in v.values()):
            raise ValueError("rpc_p99_ms values must be > 0")
        return v


class LoadConfig(_Section):
    """Everything a load test is told. See load/config.toml for a commented example."""

    host: str = "127.0.0.1:50051"
    deadline_s: float = Field(2.0, gt=0, description="per-call gRPC deadline")
    # gRPC metadata sent with every call, e.g. {"x-api-key" = "..."} when the server wants keys.
    metadata: dict[str, str] = Field(default_factory=dict)
    members: Members = Members()
    weights: Weights = Weights()
    think: Think = Think()
    requests: Requests = Requests()
    shape: Shape = Shape()
    targets: Targets = Targets()
    live_stream: LiveStream = LiveStream()

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        host = v.removeprefix("grpc://").removeprefix("http://")
        if ":" not in host:
            raise ValueError(f"host must be HOST:PORT, got {v!r}")
        return host

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if k != k.lower() or not k]
        if bad:
            raise ValueError(f"gRPC metadata keys must be lower case: {bad}")
        return v


def shape_overrides(
    base: dict[str, Any] | None = None,
    *,
    kind: str | None = None,
    users: int | None = None,
    spawn_rate: float | None = None,
    duration_s: float | None = None,
    rate_per_user: float | None = None,
) -> dict[str, Any]:
    """``base`` (config overrides, not changed) with the command-line shape options in it: the
    shape kind, the steady shape's users, spawn rate and duration, a constant per-user rate."""
    overrides: dict[str, Any] = {**(base or {})}
    shape: dict[str, Any] = {**overrides.get("shape", {})}
    if kind:
        shape["kind"] = kind
    steady = {
        k: v
        for k, v in (("users", users), ("spawn_rate", spawn_rate), ("duration_s", duration_s))
        if v is not None
    }
    if steady:
        shape["steady"] = {**shape.get("steady", {}), **steady}
    if shape:
        overrides["shape"] = shape
    if rate_per_user is not None:
        overrides["think"] = {"mode": "constant_throughput", "per_user_rate": rate_per_user}
    return overrides


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> LoadConfig:
    """Read ``path`` (TOML; None = defaults), apply nested ``overrides``, validate.

    Raises ConfigError naming the file and every invalid key.
    """
    values = read_toml(path, "load config") if path is not None else {}
    values = merge_tables(values, overrides or {})
    try:
        return LoadConfig(**values)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid load config{where}: {describe_validation_error(exc)}") from exc
