"""The one validated settings object.

Read only at entry points (CLI commands, server start-up) and passed down. Values come from, in
order of precedence: explicit overrides, ``RECSVC_*`` environment variables (nested with ``__``,
e.g. ``RECSVC_REDIS__URL``), an optional TOML file (``--config`` or ``RECSVC_CONFIG``), defaults.
Unknown keys are rejected everywhere, including misspelt ``RECSVC_`` environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from recsvc.errors import ConfigError

ENV_PREFIX = "RECSVC_"
CONFIG_ENV = "RECSVC_CONFIG"
HOME_ENV = "RECSVC_HOME"


def project_home() -> Path:
    """The folder the default MLflow store lives in (``<home>/var/mlflow``), whatever the current
    folder: ``$RECSVC_HOME`` when set; else the source checkout recsvc runs from (the folder with
    ``pyproject.toml`` beside the ``recsvc`` package: ``make run``, editable installs); else
    ``~/.recsvc``. So ``recsvc train`` from another folder registers in the same store that
    ``recsvc serve`` and ``recsvc mlflow-ui`` read, instead of silently starting a second one."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.home() / ".recsvc"


def _default_tracking_uri() -> str:
    return f"sqlite:///{project_home() / 'var' / 'mlflow' / 'mlflow.db'}"


def _default_artifact_location() -> str:
    return str(project_home() / "var" / "mlflow" / "artifacts")

EVENT_TYPES = ("view", "click", "favorite", "add_to_cart", "share", "purchase", "content_view", "live_watch")
EVENT_CHANNELS = ("mini_program", "app", "wecom", "official_account", "offline_store", "live")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(_Section):
    """Where data lives and how strictly it is checked (see docs/data.md)."""

    data_dir: Path = Path("var/data/sample")
    max_id_length: int = Field(64, ge=8, le=256)
    # Events later than now + this many seconds are quarantined as future timestamps.
    future_tolerance_s: int = Field(300, ge=0)
    # Events are validated this many rows at a time (memory stays flat from 1k to 50M events).
    validate_chunk_rows: int = Field(1_048_576, ge=1)  # pyarrow's default Parquet row group


class TrainingSettings(_Section):
    """ALS hyper-parameters, confidence construction, holdout and segments (docs/training.md)."""

    # Defaults chosen from --tune runs on three generated data sets of different shapes
    # (docs/training.md, "How the defaults were chosen").
    factors: int = Field(32, ge=2, le=1024)
    regularization: float = Field(0.1, gt=0)
    alpha: float = Field(2.0, gt=0, description="confidence scaling: C = 1 + alpha * weight")
    iterations: int = Field(15, ge=1, le=200)
    random_state: int = 42
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 2.0,
            "add_to_cart": 1.4,
            "favorite": 1.2,
            "share": 1.2,
            "live_watch": 1.0,
            "content_view": 1.0,
            "click": 0.85,
            "view": 0.7,
        }
    )
    half_life_days: float = Field(60.0, gt=0)
    holdout_days: int = Field(14, ge=1)
    validation_days: int = Field(14, ge=1)
    gate_tolerance: float = Field(
        0.02, ge=0, description="champion NDCG@10 may drop by at most this (absolute)"
    )
    # Lifecycle thresholds in days since last purchase / registration.
    new_member_days: int = Field(30, ge=1)
    at_risk_days: int = Field(60, ge=1)
    dormant_days: int = Field(120, ge=1)
    churned_days: int = Field(240, ge=1)
    popular_per_table: int = Field(200, ge=10)
    # "ivf_mips" (default): IVF with L2 over norm-augmented item vectors, whose L2 order is the
    # inner-product order (training/ann.py); nprobe tuned to the target recall. At 1M x 64 factors
    # it searched in less than half the time of "ivf" (IVF with inner product) at the same recall.
    # On ALS factors, whose item norms span orders of magnitude, "hnsw" with inner product stayed
    # below 0.95 recall even at efSearch 2048 (docs/benchmarks.md) and cost more than exact search.
    ann_index: Literal["ivf_mips", "ivf", "hnsw"] = "ivf_mips"
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=16)
    hnsw_ef_search: int = Field(128, ge=16)
    exact_index_below: int = Field(5000, ge=0, description="item counts below this use an exact index")
    ann_target_recall: float = Field(0.95, gt=0, le=1, description="nprobe / efSearch grow until reached")
    # Recall is measured on a sample of members (ann_queries); tuning to the target plus this margin
    # keeps another sample above the target (at 1M x 64 factors, samples differed by +-0.003).
    ann_recall_margin: float = Field(0.005, ge=0, le=0.05)
    ann_max_ef_search: int = Field(2048, ge=16)
    ann_queries: int = Field(2000, ge=10, description="member vectors used to measure ANN recall")
    member_lists: int = Field(
        20,
        ge=0,
        le=200,
        description="store every member's whole default product list of this length (the default k) "
        "in the bundle (training/member_lists.py): default-filter product calls for that k from "
        "members without recent events are read, not computed; 12 bytes per item and member, mapped "
        "in every server process; 0 = none",
    )
    eval_members: int = Field(10_000, ge=100, description="holdout members sampled for evaluation")
    popular_window_days: int = Field(90, ge=1, description="events counted in popularity tables")
    num_threads: int = Field(0, ge=0, description="implicit's threads; 0 = all cores")
    track_loss: bool = Field(True, description="record ALS loss per iteration in the evaluation fit")
    tune_trials: int = Field(20, ge=1)

    @field_validator("event_weights")
    @classmethod
    def _known_event_types(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types in event_weights: {unknown}; known: {list(EVENT_TYPES)}")
        if any(w < 0 for w in v.values()):
            raise ValueError("event weights must be >= 0")
        return v

    @model_validator(mode="after")
    def _ordered_lifecycle(self) -> TrainingSettings:
        if not (self.at_risk_days < self.dormant_days < self.churned_days):
            raise ValueError("lifecycle thresholds must satisfy at_risk_days < dormant_days < churned_days")
        return self


class MlflowSettings(_Section):
    # Defaults under project_home(), not the current folder (a second store by accident).
    tracking_uri: str = Field(default_factory=_default_tracking_uri)
    registry_uri: str | None = None
    artifact_location: str = Field(default_factory=_default_artifact_location)
    experiment: str = "recsvc"
    model_name: str = "recsvc"
    champion_alias: str = "champion"


class Variant(_Section):
    """An A/B variant: members whose stable hash falls in its share get the model under ``alias``."""

    name: str = Field(min_length=1, max_length=32)
    alias: str = Field(min_length=1, max_length=64)
    share: float = Field(gt=0, le=1)


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    workers: int = Field(2, ge=1, le=64, description="server processes sharing the port (SO_REUSEPORT)")
    threads_per_worker: int = Field(8, ge=1, le=256)
    # "models:/<name>@<alias>" (MLflow registry) or a local bundle directory.
    model_uri: str = "models:/recsvc@champion"
    poll_interval_s: float = Field(30.0, ge=0, description="0 disables polling")
    bundle_cache_dir: Path = Path("var/bundles")
    default_k: int = Field(20, ge=1, le=200)
    max_k: int = Field(200, ge=1, le=1000)
    max_batch_members: int = Field(10_000, ge=1)
    default_diversity: float = Field(0.3, ge=0, le=1)
    max_per_category: int = Field(0, ge=0, description="0 = no hard per-category cap")
    # The first ANN request is max(ann_candidates, 2 x the MMR pool) + excluded items; the engine
    # widens 4x when filters leave too few. Search cost grows with it (IVF: 0.16 ms at 20, 0.32 ms
    # at 400 on 95k products), so the default only asks for what the MMR pool needs.
    ann_candidates: int = Field(100, ge=10)
    prefault_bundle: bool = Field(
        True,
        description="touch every page of the bundle's arrays at load, so no request waits on a page "
        "fault; the pages are the page cache's, shared by every process serving the bundle",
    )
    variants: list[Variant] = Field(default_factory=list)
    metrics_port: int = Field(0, ge=0, le=65535, description="0 disables the Prometheus endpoint")
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address the Prometheus endpoint binds (its own: e.g. 0.0.0.0 for a scraper "
        "on another host while gRPC stays on loopback behind a proxy)",
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_filter_values: int = Field(100, ge=1, description="max values in one filter list")
    grace_period_s: float = Field(5.0, ge=0, description="in-flight calls get this long on SIGTERM")
    pin_workers: bool = Field(
        True, description="with several workers, keep worker i on the i-th CPU (fewer cross-CPU wake-ups)"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the gRPC server's event loop: uvloop (libuv; less CPU per call) or asyncio"
    )

    @field_validator("variants")
    @classmethod
    def _shares_sum(cls, v: list[Variant]) -> list[Variant]:
        if v and abs(sum(x.share for x in v) - 1.0) > 1e-6:
            raise ValueError(f"variant shares must sum to 1, got {sum(x.share for x in v):.4f}")
        names = [x.name for x in v]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return v


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "recsvc"
    socket_timeout_ms: int = Field(50, ge=1)
    recent_events_max: int = Field(200, ge=1)
    recent_events_ttl_s: int = Field(7 * 86400, ge=60)
    reconnect_interval_ms: int = Field(
        250,
        ge=10,
        le=60_000,
        description="after a Redis failure, the real-time store and the active-members listener try "
        "Redis again this often (a background probe; requests never wait on a dead Redis)",
    )
    active_members: bool = Field(
        True,
        description="keep, per process, the members that have recent events (pub/sub fed, see "
        "recsvc/active_members.py) and skip the Redis read for the others",
    )


class OutreachSettings(_Section):
    policy_file: Path | None = None
    policy_reload_s: float = Field(5.0, ge=0)
    transactional_when_unavailable: Literal["allow", "deny"] = "allow"
    # Also the decisions per PlanCampaignBatch message: 10,000 of at most ~270 bytes stay under
    # gRPC's default 4 MiB message limit on the caller's side.
    plan_pipeline_size: int = Field(500, ge=1, le=10_000)
    # Redis slower than this fails marketing closed (THROTTLE_UNAVAILABLE).
    redis_timeout_ms: int = Field(50, ge=1)
    # The throttle's circuit breaker (recsvc/breaker.py): while open, decisions fail closed and
    # writes answer STORE_UNAVAILABLE at once, and health reports recsvc.v1.Outreach NOT_SERVING.
    breaker_failures: int = Field(
        3, ge=1, le=1000, description="consecutive Redis failures or timeouts that open the breaker"
    )
    breaker_reset_ms: int = Field(
        500,
        ge=10,
        le=60_000,
        description="open breaker: a probe (a call or a background PING) is let through this often",
    )
    max_plan_members: int = Field(100_000, ge=1, description="explicit member ids per PlanCampaign call")
    next_best_candidates: int = Field(50, ge=1, le=1000)
    global_control_share: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="share of members (stable hash) who receive no marketing at all: the baseline "
        "every campaign is compared with (reason HOLDOUT); 0 = none (docs/outreach.md)",
    )


class EventLogSettings(_Section):
    """The durable log of events, impressions and outreach decisions, attribution and the sink
    that writes the log to Parquet (docs/experiments.md, docs/operations.md)."""

    enabled: bool = Field(True, description="record impressions, events and decisions in the log")
    shards: int = Field(
        4, ge=1, le=64, description="Redis streams the log is spread over (one hash tag each)"
    )
    log_dir: Path = Field(
        Path("var/eventlog"),
        description="where `recsvc events sink` writes Parquet and `recsvc train` reads it",
    )
    attribution_window_s: int = Field(
        7 * 86400,
        ge=60,
        le=90 * 86400,
        description="a click or purchase this long after an impression of the item is attributed to it",
    )
    recent_impressions_max: int = Field(
        50, ge=1, le=1000, description="impressions kept per member for attribution"
    )
    buffer_size: int = Field(
        20_000, ge=10, description="impressions waiting in memory per process; more are dropped (counted)"
    )
    flush_interval_ms: int = Field(100, ge=5, le=10_000, description="impressions are written this often")
    sink_batch: int = Field(5000, ge=1, le=100_000, description="entries per stream read by the sink")
    sink_block_ms: int = Field(1000, ge=0, le=60_000, description="the sink waits this long for new entries")
    sink_flush_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a stream's records wait at most this long for a full batch before they are "
        "written (fewer, larger files under low traffic)",
    )


class CallerKey(_Section):
    """One calling backend: its name, roles and the SHA-256 (hex) of its API key (never the key)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    roles: list[Literal["recommend", "events", "outreach", "admin"]] = Field(min_length=1)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SecuritySettings(_Section):
    """Caller authentication, TLS, audit trail and privacy (docs/security.md, docs/privacy.md)."""

    # TOML file of callers: [[caller]] name, roles, key_sha256. Unset = no keys configured.
    api_keys_file: Path | None = None
    # Callers given in settings/environment (RECSVC_SECURITY__API_KEYS='[{"name":..}]'), added to the file's.
    api_keys: list[CallerKey] = Field(default_factory=list)
    # Plaintext without API keys is allowed only on loopback and only when this is explicitly set
    # (RECSVC_SECURITY__ALLOW_INSECURE_DEV=true; `recsvc demo` and `recsvc load run` set it).
    allow_insecure_dev: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None  # set = mutual TLS (client certificates required)
    audit_log: Path = Path("var/audit/audit.log")
    erasure_list: Path = Path("var/privacy/erasures.txt")
    # Key for member-id pseudonyms in logs, metrics and MLflow artifacts (HMAC-SHA256).
    pseudonym_key: str = "dev-only-change-me"


class Settings(BaseSettings):
    """Everything recsvc can be told. See README 'Configuration' for the environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data: DataSettings = DataSettings()
    training: TrainingSettings = TrainingSettings()
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)  # its defaults read RECSVC_HOME
    serving: ServingSettings = ServingSettings()
    redis: RedisSettings = RedisSettings()
    outreach: OutreachSettings = OutreachSettings()
    security: SecuritySettings = SecuritySettings()
    events: EventLogSettings = EventLogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() layers file and environment itself (so it can reject unknown names);
        # the class only validates what it is given.
        return (init_settings,)


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it is missing or malformed."""
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested merge: tables merge key by key, anything else in ``over`` replaces ``base``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def describe_validation_error(exc: ValidationError) -> str:
    """Every problem pydantic found, as ``dotted.path: message`` joined by '; '."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build and validate the settings; raise ConfigError naming every problem.

    Precedence: ``overrides`` > ``RECSVC_*`` environment > TOML file > defaults.
    """
    env_values = _env_values()  # first: a misspelt RECSVC_ name is reported before file problems
    env_file = os.environ.get(CONFIG_ENV)
    path = config_file or (Path(env_file) if env_file else None)
    values = read_toml(path) if path else {}
    values = merge_tables(values, env_values)
    values = merge_tables(values, overrides or {})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_validation_error(exc)}") from exc


def _env_values() -> dict[str, Any]:
    """``RECSVC_SECTION__FIELD=value`` pairs as a nested dict; JSON for lists and tables.

    Raises ConfigError for a name that is no setting (unknown section or field)."""
    import json

    sections = Settings.model_fields
    out: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.startswith(ENV_PREFIX) or key in (CONFIG_ENV, HOME_ENV):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        section = sections.get(parts[0])
        if section is None or (len(parts) > 1 and parts[1] not in section.annotation.model_fields):  # type: ignore[union-attr]
            raise ConfigError(f"unknown setting in environment: {key}")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            value: Any = json.loads(raw) if raw[:1] in "[{" else raw
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key} is not valid JSON: {exc}") from exc
        node[parts[-1]] = value
    return out
