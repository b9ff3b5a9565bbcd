"""The one validated settings object.

Long on purpose: every section lives in one validated object, so one place names a misspelt key,
holds each default and checks settings against each other.

Read only at entry points (CLI commands, server start-up) and passed down. Values come from, in
order of precedence: explicit overrides, ``RECSVC_*`` environment variables (nested with ``__``,
e.g. ``RECSVC_REDIS__URL``), an optional TOML file (``--config`` or ``RECSVC_CONFIG``), defaults.
Unknown keys are rejected everywhere, including misspelt ``RECSVC_`` environment variables.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from recsvc.errors import ConfigError

ENV_PREFIX = "RECSVC_"
CONFIG_ENV = "RECSVC_CONFIG"
# What the CLI's client commands send, not settings of a server (recsvc/cli/common.py).
CLIENT_ENV = ("RECSVC_API_KEY", "RECSVC_TLS_CA", "RECSVC_TLS_CERT", "RECSVC_TLS_KEY")
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


def home_path(relative: str) -> Path:
    """A default file or folder under :func:`project_home`, so every command finds what another
    wrote (the audit log, the event log, the bundle cache) whatever folder each runs from; a path
    given in settings is taken as given."""
    return project_home() / relative


def _default_tracking_uri() -> str:
    return f"sqlite:///{home_path('var/mlflow/mlflow.db')}"


def _default_artifact_location() -> str:
    return str(home_path("var/mlflow/artifacts"))


EVENT_TYPES = ("view", "click", "favorite", "add_to_cart", "share", "purchase", "content_view", "live_watch")
# Each event type's weight in r_ui (docs/training.md, "Model"): the defaults a partial
# training.event_weights table is laid over.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "purchase": 1.414,
    "add_to_cart": 1.183,
    "favorite": 1.095,
    "share": 1.095,
    "live_watch": 1.0,
    "content_view": 1.0,
    "click": 0.922,
    "view": 0.837,
}
# Master URLs Spark accepts (SparkContext.createTaskScheduler, SparkSubmit): checked when the
# settings load, so a typo is a ConfigError, not a Java stack trace minutes into training.
SPARK_MASTER = re.compile(
    r"local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?"
    r"|local-cluster\[[1-9][0-9]*,[1-9][0-9]*,[1-9][0-9]*\]"
    r"|spark://[A-Za-z0-9.\-]+:[0-9]{1,5}(,[A-Za-z0-9.\-]+:[0-9]{1,5})*"
    r"|yarn"
    r"|k8s://(https?://)?[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?"
)
# How summed event weights become ALS confidence (recsvc/confidence_scale.py has the formulas).
ConfidenceScale = Literal["linear", "log"]
CONFIDENCE_SCALES: tuple[str, ...] = get_args(ConfidenceScale)
# What a bundle records (and a fit applies); settings may also say "auto" (training/fit.py).
ConfidenceWeighting = Literal["none", "bm25"]
CONFIDENCE_WEIGHTINGS: tuple[str, ...] = get_args(ConfidenceWeighting)
# The built-in event channels: the default of ``data.event_channels``.
EVENT_CHANNELS = ("mini_program", "app", "wecom", "official_account", "offline_store", "live")
CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
# Events keep their channel as an int8 code (-1 = unknown), and "all" names the popular lists of
# any channel (recsvc.bundle.ALL).
MAX_EVENT_CHANNELS = 127
RESERVED_CHANNEL = "all"


def check_channel_names(names: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError naming what is wrong with a list of event channel names."""
    bad = [c for c in names if not CHANNEL_NAME.match(c)]
    if bad:
        raise ValueError(f"channel names must be lower_snake_case (max 32 chars): {bad}")
    if RESERVED_CHANNEL in names:
        raise ValueError(f"{RESERVED_CHANNEL!r} is reserved (the popular lists of any channel)")
    if len(set(names)) != len(names):
        raise ValueError("channel names must be unique")


REDIS_SCHEMES = ("redis", "rediss", "unix")
# recsvc.redis_client connects to these as a cluster; named here, so loading settings does not import redis
REDIS_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_DIGITS = re.compile(r"[0-9]+")
_DB_PATH = re.compile(r"/?(?P<db>[0-9]*)")


def _host_port(hostport: str, *, port_required: bool) -> None:
    """Raise ValueError unless ``hostport`` is ``host[:port]`` (``[v6]:port`` too) with a port 1-65535."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{hostport!r} is not host:port")
        port = rest[1:] if rest else None
    else:
        host, sep, port_text = hostport.partition(":")
        port = port_text if sep else None
    if not host.strip():
        raise ValueError(f"no host in {hostport!r}")
    if port is None:
        if port_required:
            raise ValueError(f"a Redis Cluster URL lists host:port seeds; {hostport!r} has no port")
        return
    if not _DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} of {host!r} is not a number from 1 to 65535")


def check_redis_url(url: str) -> None:
    """Raise ValueError saying what is wrong with a ``redis.url``, in the forms recsvc.redis_client
    connects to: ``redis://[user:password@]host[:port][/db][?option=value...]``, ``rediss://`` (TLS),
    ``unix://[user:password@]/path/to/socket[?db=N]`` and ``redis+cluster://[user:password@]host:port
    [,host:port...]`` (``rediss+cluster://``). The messages never repeat a password."""
    from urllib.parse import parse_qs, urlsplit

    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in REDIS_SCHEMES + REDIS_CLUSTER_SCHEMES:
        shown = url[:80] if "@" not in url else f"{url.partition(':')[0][:40]}:..."  # may hold a password
        raise ValueError(
            f"not a Redis URL: {shown!r}; use redis://host:port/db, rediss://, unix:///path "
            "or redis+cluster://host:port[,host:port]"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        raise ValueError(f"not a Redis URL: {exc}") from None
    hostport = parts.netloc.rpartition("@")[2]
    if scheme in REDIS_CLUSTER_SCHEMES:
        for node in hostport.split(","):
            _host_port(node.strip(), port_required=True)
        # the seeds' path is not read, and a cluster serves database 0 only
        path = _DB_PATH.fullmatch(parts.path)
        if path is None or path["db"] not in ("", "0"):
            raise ValueError(f"a Redis Cluster has database 0 only; the URL's path is {parts.path!r}")
        return
    if scheme == "unix":
        if hostport or not parts.path:
            raise ValueError(
                "a unix:// URL names the socket by its absolute path: unix:///path/to/redis.sock"
            )
    else:
        _host_port(hostport, port_required=False)
        # redis-py reads the path as the database number and falls back to 0 when it is not one
        if _DB_PATH.fullmatch(parts.path) is None:
            raise ValueError(f"the path {parts.path!r} is not a database number (redis://host:port/0)")
    if not parts.query:
        return
    for db in parse_qs(parts.query).get("db", []):
        if not _DIGITS.fullmatch(db):
            raise ValueError(f"db={db!r} is not a database number")
    # the options redis-py reads from the query string, checked by its own parser (its messages
    # name the option, not the URL); imported only for a URL that has one
    from redis.connection import parse_url

    parse_url(url)


MAX_EVENT_WEIGHT = 1000.0
MIN_HALF_LIFE_DAYS = 0.1


class _Section(BaseModel):
    # NaN and infinity parse from TOML and JSON ("nan", Infinity) and pass every ge/le check as
    # NaN compares false: refused here, by name, for every float setting
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataSettings(_Section):
    """Where data lives and how strictly it is checked (see docs/data.md)."""

    data_dir: Path = Field(default_factory=lambda: home_path("var/data/sample"))
    max_id_length: int = Field(64, ge=8, le=256)
    # Events later than now + this many seconds are quarantined as future timestamps.
    future_tolerance_s: int = Field(300, ge=0)
    # Events are validated this many rows at a time (memory stays flat from 1k to 50M events).
    validate_chunk_rows: int = Field(1_048_576, ge=1)  # pyarrow's default Parquet row group
    # `recsvc train` stops (exit 2) when more than this share of the events or of the catalog rows
    # was quarantined: a model trained on what is left of a badly mapped export is not worth
    # promoting (--allow-quarantine overrides).
    max_quarantined_share: float = Field(0.05, ge=0.0, le=1.0)
    # The event channels files, training and the Recommender API accept (docs/data.md,
    # "Channels"): a retailer selling on douyin lists it here, and its events train their own
    # popular lists and are accepted by RecordEvent and RecommendProducts.
    event_channels: tuple[str, ...] = Field(EVENT_CHANNELS, min_length=1, max_length=MAX_EVENT_CHANNELS)

    @field_validator("event_channels")
    @classmethod
    def _channel_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        check_channel_names(v)
        return v


class TrainingSettings(_Section):
    """ALS hyper-parameters, confidence construction, holdout and segments (docs/training.md)."""

    # Defaults chosen on generated data of four shapes and on MovieLens 100K, the one real
    # public data set at hand (docs/training.md, "How the defaults were chosen"): strong
    # regularization with a matching alpha gained on all of them over weak regularization.
    factors: int = Field(24, ge=2, le=1024)
    # Upper bounds far past anything that fits well (tune searches up to 1e3 / 100): beyond them
    # the confidences overflow float32 and the fit fails with NaN factors.
    regularization: float = Field(30.0, gt=0, le=1e6)
    alpha: float = Field(
        8.0,
        gt=0,
        le=1e4,
        description="confidence of an observed member-item pair: C = alpha * scale(weight) (implicit's "
        "form; an unobserved pair has 1, so a pair whose confidence is below 1 counts less than none)",
    )
    iterations: int = Field(15, ge=1, le=200)
    # The refit on all data starts from the candidate's factors (implicit only: Spark's ALS
    # cannot start from given factors) and runs this many iterations instead of ``iterations``:
    # it adds only the holdout's days to what the candidate learnt, and a few iterations reach
    # the holdout NDCG of a refit from scratch (docs/training.md, "Refit"). 0 = refit from scratch.
    refit_warm_iterations: int = Field(
        5, ge=0, le=200, description="iterations of a refit from the candidate's factors; 0 = from scratch"
    )
    random_state: int = 42
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    half_life_days: float = Field(
        60.0, ge=0, description="recency decay of event weights; 0 = no decay (every event counts fully)"
    )
    # r_ui -> confidence (recsvc/confidence_scale.py): "log" = alpha * log(1 + r), where repeats
    # of one item add less and less; "linear" = alpha * r (implicit's form). docs/training.md.
    confidence_scale: ConfidenceScale = "log"
    # scaled r_ui -> weighted (recsvc/confidence_scale.py): "bm25" weighs items by how few
    # members have them and members by how many items they have (implicit's bm25_weight);
    # "none" leaves the scaled value; "auto" = "bm25" when the training members have on average
    # fewer distinct items than bm25_auto_items (sparse data: +1 to +7 % of NDCG@10 at 4-17
    # items), else "none" (from 25 items on it tied or lost, up to 11 % on dense data and 8 % on
    # MovieLens). docs/training.md, "Confidence weighting".
    confidence_weighting: Literal["auto", "none", "bm25"] = "auto"
    bm25_auto_items: float = Field(
        20.0, gt=0, description='"auto" weighting: BM25 below this many distinct items per member'
    )
    bm25_k1: float = Field(
        100.0,
        gt=0,
        le=1e6,
        description="BM25 saturation: larger = a member's values count more nearly linearly",
    )
    bm25_b: float = Field(0.8, ge=0, le=1, description="BM25 length normalisation: 0 = none, 1 = full")
    holdout_days: int = Field(14, ge=1)
    validation_days: int = Field(14, ge=1)
    # How --tune validates (training/split.py): "time" = the last validation_days before the
    # holdout; "random" = a random share of each member's items (weak time order); "auto" =
    # "time", its window widened (2x, 4x) while it has few test members, and "random" only if
    # it still has too few to judge by (training/tune.py).
    validation_split: Literal["auto", "time", "random"] = "auto"
    validation_share: float = Field(
        0.2, gt=0, lt=1, description="random validation split: share of each member's items held out"
    )
    gate_tolerance: float = Field(
        0.02, ge=0, description="champion NDCG@10 may drop by at most this (absolute)"
    )
    # A gate decision judged on fewer test members than this says so (decision reason, a warning
    # in the log and the summary): the comparison is weak, a longer holdout_days firms it up.
    gate_min_test_members: int = Field(100, ge=1)
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
    member_list_spare: int = Field(
        5,
        ge=0,
        le=100,
        description="picks stored beyond each member list's length, in MMR's order: a list whose "
        "items sold out or were delisted is still read (its next picks stand in) until more than "
        "this many are gone, instead of being computed live",
    )
    eval_members: int = Field(10_000, ge=100, description="holdout members sampled for evaluation")
    popular_window_days: int = Field(90, ge=1, description="events counted in popularity tables")
    num_threads: int = Field(0, ge=0, description="implicit's threads; 0 = all cores")
    # Member profiles (training/profiles.py, docs/profiles.md): computed into the bundle when on.
    profiles: bool = True
    profile_fit_members: int = Field(
        200_000, ge=100, description="buyers the BG/NBD and Gamma-Gamma fits sample (predictions: all)"
    )
    profile_tags: int = Field(5, ge=1, le=20, description="interest tags kept per member")
    track_loss: bool = Field(True, description="record ALS loss per iteration in the evaluation fit")
    tune_trials: int = Field(40, ge=1)
    tune_startup_trials: int = Field(
        8, ge=1, description="--tune: random trials before TPE models the good region"
    )
    tune_eval_members: int = Field(3000, ge=100, description="--tune: validation members sampled per trial")
    tune_prune: bool = Field(
        True, description="--tune: stop trials whose NDCG part-way through the fit is below the median"
    )
    # The best trial replaces the starting configuration only when it leads it on validation by
    # this many standard errors of the members' paired NDCG@10 differences: the best of dozens
    # of noisy scores is biased upwards, and a lead within the noise does not reach the holdout.
    tune_min_gain_se: float = Field(2.0, ge=0, description="--tune: lead over the start, in standard errors")
    # That lead is measured on validation members the search never scored, when there are
    # enough of them: on the members the best trial was picked by, its lead is inflated by the
    # picking itself.
    tune_confirm_members: int = Field(
        10_000,
        ge=0,
        description="--tune: unsearched validation members the best trial's lead is judged on (0: searched)",
    )

    # Two more model families measured beside ALS on the same holdout (training/itemknn.py):
    # item-item BM25 neighbours and an ALS blend whose weight is chosen on the validation split.
    # "auto" = below itemknn_auto_members members (it costs one more ALS fit and a neighbour fit).
    itemknn: Literal["auto", "on", "off"] = "auto"
    itemknn_auto_members: int = Field(200_000, ge=0)
    itemknn_neighbours: int = Field(100, ge=1, le=2000, description="neighbours kept per item")
    itemknn_history: int = Field(
        30,
        ge=0,
        le=100_000,
        description="history items an item-item score sums over: each member's N of largest "
        "confidence (0 = all); bounds the live path's cost for long histories",
    )
    # Which family serves (training/gate.py): "auto" = the simplest of als, itemknn, blend unless
    # a more complex one beats it on the holdout by more than family_margin (relative NDCG@10);
    # a named family serves whatever the holdout says (it is measured even past itemknn_auto_members).
    family: Literal["auto", "als", "itemknn", "blend"] = "auto"
    family_margin: float = Field(
        0.02, ge=0, le=1, description="relative NDCG@10 gain a more complex family needs"
    )
    blend_als_weight: float | None = Field(
        None, ge=0, le=1, description="the blend's ALS weight; unset: chosen on the validation split"
    )
    # The trend prior (training/trend.py): each personal score becomes (1 - t) * score + t * the
    # item's weighted events in the last trend_days / the kind's largest. "auto": t chosen on the
    # validation split, served when it beats the family's holdout NDCG@10 by family_margin;
    # trend_weight set: that t serves whatever the holdout says. "off": not measured.
    trend: Literal["auto", "off"] = "auto"
    trend_days: int = Field(14, ge=1, le=365, description="days of events the trend prior counts")
    new_product_days: int = Field(
        30,
        ge=0,
        le=3650,
        description="products without interactions published this many days before the data's end "
        "(or later) start at their group's vector, as the live catalog starts a new product; 0 = off",
    )
    trend_weight: float | None = Field(
        None, ge=0, lt=1, description="the trend prior's weight; unset: chosen on the validation split"
    )
    trend_min_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="measure the trend prior only when the last trend_days' popularity reaches this "
        "share of the family's holdout NDCG@10 (0 = always); below it the prior never served",
    )

    # Replenishment (training/replenish.py): which categories are bought again, and how often.
    replenish_min_repeats: int = Field(
        20, ge=1, description="repeat purchases (on different days) a category needs to count as repurchased"
    )
    replenish_min_share: float = Field(
        0.05, ge=0, le=1, description="share of a category's (member, item) purchases bought again, at least"
    )
    replenish_min_item_repeats: int = Field(
        10,
        ge=1,
        description="repeat purchases a product needs for an interval of its own (else its category's)",
    )
    # Which library fits the ALS factors; everything around the fit (ingest, holdout, evaluation,
    # gate, segments, indexes, bundle) is the same code for both (training/spark_als.py).
    engine: Literal["implicit", "spark"] = Field(
        "implicit", description="ALS engine: implicit (one machine) or spark (Spark MLlib, recsvc[spark])"
    )
    spark_master: str = Field(
        "local[*]",
        description="Spark master URL for engine = spark: local[N], local[*], spark://host:port, yarn, "
        "k8s://https://host:port, ...",
    )
    # Only applies when the driver JVM is started by this process (local mode, client deploy mode).
    spark_driver_memory: str = Field("2g", pattern=r"^[1-9][0-9]*[kmgt]$")

    @field_validator("event_weights", mode="before")
    @classmethod
    def _over_the_defaults(cls, v: Any) -> Any:
        # A table naming some event types changes those, the others keep their defaults: a file
        # or variable setting only purchase's weight must not turn views and carts into nothing
        # (0 turns a type off, named).
        return {**DEFAULT_EVENT_WEIGHTS, **v} if isinstance(v, dict) else v

    @field_validator("event_weights")
    @classmethod
    def _known_event_types(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types in event_weights: {unknown}; known: {list(EVENT_TYPES)}")
        if any(not 0 <= w <= MAX_EVENT_WEIGHT for w in v.values()):
            raise ValueError(f"event weights must be between 0 and {MAX_EVENT_WEIGHT:g}")
        return v

    @field_validator("half_life_days")
    @classmethod
    def _decay(cls, v: float) -> float:
        # a half-life of minutes decays every event but the last instants' to 0: no model left
        if 0 < v < MIN_HALF_LIFE_DAYS:
            raise ValueError(f"half_life_days must be 0 (no decay) or at least {MIN_HALF_LIFE_DAYS:g}")
        return v

    @field_validator("spark_master")
    @classmethod
    def _spark_master_url(cls, v: str) -> str:
        # The forms Spark itself accepts; anything else would only fail later inside the JVM.
        if not SPARK_MASTER.fullmatch(v):
            raise ValueError(
                f"not a Spark master URL: {v!r}; use local, local[N], local[*], local[N,F], "
                "spark://host:port[,host:port], yarn or k8s://https://host:port"
            )
        return v

    @model_validator(mode="after")
    def _ordered_lifecycle(self) -> TrainingSettings:
        if not (self.at_risk_days < self.dormant_days < self.churned_days):
            raise ValueError("lifecycle thresholds must satisfy at_risk_days < dormant_days < churned_days")
        if self.family in ("itemknn", "blend") and self.itemknn == "off":
            raise ValueError(f"family {self.family!r} needs the item-item model: itemknn must not be 'off'")
        if self.trend == "off" and self.trend_weight is not None:
            raise ValueError("trend_weight is set but trend is 'off': unset one of them")
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

    # a name as metrics labels, key=value logs and report headings can hold unquoted
    name: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")
    alias: str = Field(min_length=1, max_length=64)
    share: float = Field(gt=0, le=1)


class ServingSettings(_Section):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(50051, ge=0, le=65535)
    workers: int = Field(2, ge=1, le=64, description="server processes sharing the port (SO_REUSEPORT)")
    threads_per_worker: int = Field(8, ge=1, le=256)
    # "models:/<name>@<alias>" (MLflow registry) or a local bundle directory.
    model_uri: str = "models:/recsvc@champion"
    poll_interval_s: float = Field(30.0, ge=0, description="0 disables polling")
    bundle_cache_dir: Path = Field(default_factory=lambda: home_path("var/bundles"))
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
    # Replenishment (recsvc/engine/replenish.py): a bought consumable comes back when it is due,
    # i.e. the days since its last purchase lie in [interval x (1 - early), interval x (1 + late)].
    replenish: bool = Field(True, description="bring due consumables back into product lists")
    replenish_early: float = Field(0.2, ge=0, lt=1, description="due from interval x (1 - this)")
    replenish_late: float = Field(0.5, ge=0, le=10, description="due until interval x (1 + this)")
    replenish_max_items: int = Field(2, ge=1, le=20, description="due items per list, at most")
    replenish_after: int = Field(
        10,
        ge=0,
        le=1000,
        description="due items follow this many personalised picks (earlier in shorter lists)",
    )
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

    @model_validator(mode="after")
    def _default_within_max(self) -> ServingSettings:
        # a request without k gets default_k items; one above max_k is refused, so the default
        # must be a k a caller may ask for
        if self.default_k > self.max_k:
            raise ValueError(f"serving.default_k {self.default_k} is larger than serving.max_k {self.max_k}")
        return self

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

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        # every part redis-py would only reject (or silently replace) when the first process
        # connects, or a server would refuse minutes into a command
        check_redis_url(url)
        return url


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

    # Redis replicates asynchronously: a reservation a primary acknowledged and then lost in a
    # failover (before its replica copied it) frees its slot again. With wait_replicas > 0 each
    # batch of reservations is followed by WAIT: a reservation not confirmed by that many replicas
    # within wait_timeout_ms is answered THROTTLE_UNAVAILABLE (not sent; its slot stays used).
    # docs/operations.md ("Redis Cluster") has the measured cost and effect.
    wait_replicas: int = Field(0, ge=0, le=5, description="replicas that confirm a reservation (0 = off)")
    wait_timeout_ms: int = Field(20, ge=1, le=10_000, description="how long a reservation waits for them")


class CatalogSettings(_Section):
    """The live catalog (recsvc/catalog, docs/operations.md "Live catalog")."""

    enabled: bool = Field(
        True,
        description="serve the Catalog service and follow live catalog changes in Redis; false = the "
        "bundle's catalog only",
    )
    max_batch: int = Field(
        10_000, ge=1_000, le=100_000, description="items per UpsertItems/SetStockMany/Delist call"
    )
    feed_maxlen: int = Field(
        100_000,
        ge=1_000,
        description="change-feed entries Redis keeps (MAXLEN ~); a process further behind re-reads "
        "the whole catalog",
    )
    write_timeout_ms: int = Field(
        2_000, ge=10, le=60_000, description="Redis time allowed for one change call's script"
    )
    sync_wait_s: float = Field(
        5.0, ge=0, le=120, description="at start, how long a process waits for the catalog before it serves"
    )
    settle_ms: int = Field(
        250,
        ge=0,
        le=900,
        description="while changes keep coming, a process applies at most one batch of them per this "
        "long (after a first 4 at once): a stream of changes (200 SetStock/s) is applied in a few batches "
        "a second, not one wake-up per change; changes a moment apart are each applied at once, one "
        "inside a stream waits at most this long (within the 1 s propagation bound)",
    )
    stream_linger_ms: int = Field(
        50,
        ge=0,
        le=200,
        description="StreamStock: after a change arrives, the server waits this long for more on the same "
        "stream and writes them to Redis together (at most 100 per write); 0 = only what has already "
        "arrived. Adds at most this much to a change's propagation time",
    )
    write_linger_ms: int = Field(
        0,
        ge=0,
        le=200,
        description="group commit: SetStock, and SetStockMany/DelistItems/RelistItems calls of at most 100 "
        "items, that arrive within this long of each other share one Redis write (each call still gets its "
        "own answer; a second change of an item goes into the next write); 0 = each call its own write. "
        "Adds up to this much to each call's latency",
    )
    writer_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="a separate server process serves the Catalog service on this port at a lower CPU "
        "priority (writer_nice), so a stream of stock changes does not take CPU from recommendations; "
        "0 = the workers serve it on serving.port",
    )
    writer_nice: int = Field(
        10, ge=0, le=19, description="how much lower the catalog writer's CPU priority is (nice increment)"
    )


# The API-key roles; recsvc.security.auth maps every method to one of them.
Role = Literal["recommend", "events", "outreach", "admin", "catalog", "members"]


class EventLogSettings(_Section):
    """The durable log of events, impressions and outreach decisions, attribution and the sink
    that writes the log to Parquet (docs/experiments.md, docs/operations.md)."""

    enabled: bool = Field(True, description="record impressions, events and decisions in the log")
    shards: int = Field(
        4, ge=1, le=64, description="Redis streams the log is spread over (one hash tag each)"
    )
    log_dir: Path = Field(
        default_factory=lambda: home_path("var/eventlog"),
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
    flush_timeout_ms: int = Field(
        1000,
        ge=10,
        le=30_000,
        description="how long the background write of buffered impressions waits for Redis before "
        "the batch is dropped (counted); no call waits on it",
    )
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
    roles: list[Role] = Field(min_length=1)
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
    audit_log: Path = Field(default_factory=lambda: home_path("var/audit/audit.log"))
    erasure_list: Path = Field(default_factory=lambda: home_path("var/privacy/erasures.txt"))
    # Key for member-id pseudonyms in logs, metrics and MLflow artifacts (HMAC-SHA256).
    pseudonym_key: str = "dev-only-change-me"
    # Keys pseudonym_key had before rotations: never written with, only matched by erasure, so a
    # forgotten member's records logged under an old key are found, and by RecordEvent, so a
    # recommendation id issued before the rotation is still accepted (docs/privacy.md, "Pseudonyms").
    # RECSVC_SECURITY__PREVIOUS_PSEUDONYM_KEYS='["old-key-..."]'.
    previous_pseudonym_keys: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    """Everything recsvc can be told. See README 'Configuration' for the environment variables.
    Sections are built per load (default factories): their default folders read RECSVC_HOME."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data: DataSettings = Field(default_factory=DataSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    outreach: OutreachSettings = Field(default_factory=OutreachSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    events: EventLogSettings = Field(default_factory=EventLogSettings)

    @model_validator(mode="after")
    def _own_writer_port(self) -> Settings:
        if self.catalog.writer_port and self.catalog.writer_port == self.serving.port:
            raise ValueError(
                f"catalog.writer_port {self.catalog.writer_port} is serving.port: "
                "the catalog writer needs a port of its own"
            )
        return self

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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{what} {path} is a folder, not a TOML file") from exc


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


# What unsets an optional setting in the environment (TOML leaves the key out instead).
_UNSET = ("", "none", "null")


def _takes_json(annotation: Any) -> bool:
    """Whether a setting of this type is a list or a table (possibly optional)."""
    kinds = [annotation, *get_args(annotation)] if get_origin(annotation) is not None else [annotation]
    return any(
        get_origin(k) in (list, tuple, dict, set, frozenset)
        or k in (list, tuple, dict)
        or (isinstance(k, type) and issubclass(k, BaseModel))
        for k in kinds
    )


def _env_values() -> dict[str, Any]:
    """``RECSVC_SECTION__FIELD=value`` pairs as a nested dict; JSON for lists and tables.

    Raises ConfigError for a name that is no setting (unknown section or field, or a name under a
    setting that has no named parts: only a table such as ``training.event_weights`` has them), and
    for two names of which one sets a part of what the other sets (``RECSVC_TRAINING`` and
    ``RECSVC_TRAINING__FACTORS``): which one should win is not for the environment's order to decide."""
    import json

    sections = Settings.model_fields
    named: dict[tuple[str, ...], tuple[str, str]] = {}  # parts -> (variable, value)
    for key, raw in sorted(os.environ.items()):
        if not key.startswith(ENV_PREFIX) or key in (CONFIG_ENV, HOME_ENV, *CLIENT_ENV):
            continue
        parts = tuple(key[len(ENV_PREFIX) :].lower().split("__"))
        section = sections.get(parts[0])
        fields = section.annotation.model_fields if section is not None else {}  # type: ignore[union-attr]
        if section is None or (len(parts) > 1 and parts[1] not in fields) or not all(parts):
            raise ConfigError(f"unknown setting in environment: {key}")
        if len(parts) > 2:
            # a table's keys are one level below its name; anything deeper is under a single value
            single = parts[:2] if get_origin(fields[parts[1]].annotation) is not dict else parts[:3]
            if len(parts) > len(single):
                raise ConfigError(
                    f"unknown setting in environment: {key} ({'.'.join(single)} is a single value)"
                )
        if parts in named:  # names differing in case only
            raise ConfigError(f"{named[parts][0]} and {key} both set {'.'.join(parts)}: set one of them")
        named[parts] = (key, raw)
    for parts, (key, _) in named.items():
        for depth in range(1, len(parts)):
            outer = named.get(parts[:depth])
            if outer is not None:
                raise ConfigError(
                    f"{outer[0]} and {key} conflict: the first sets all of {'.'.join(parts[:depth])}, "
                    "the second a part of it; set one of them"
                )
    out: dict[str, Any] = {}
    for parts, (key, raw) in named.items():
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        field = sections[parts[0]].annotation.model_fields[parts[1]] if len(parts) == 2 else None  # type: ignore[union-attr]
        if field is not None and type(None) in get_args(field.annotation) and raw.strip().lower() in _UNSET:
            # an optional setting (a fixed weight, say) set back to "not set" from the environment
            node[parts[-1]] = None
            continue
        # JSON only for a list or a table: a text setting (a key, a URL) may start with "[" or "{"
        structured = len(parts) == 1 or (field is not None and _takes_json(field.annotation))
        if not structured or not (raw[:1] and raw[:1] in "[{"):
            node[parts[-1]] = raw
            continue
        try:
            node[parts[-1]] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key} is not valid JSON: {exc}") from exc
    return out
