"""Locust scenarios for recsvc: realistic gRPC traffic against the Recommender and Outreach services.

Long on purpose: Locust loads one file; its hooks, options and users must be in it (the traffic
itself is in bench/traffic.py).

Run it through ``recsvc load run`` (starts Redis, data, model and server for you), or by hand
against a running server, as any Locust test::

    .venv/bin/locust -f load/locustfile.py --headless -u 20 -r 20 -t 60s --host 127.0.0.1:50051

Options of this file (Locust answers ``--help`` before it imports a locustfile, so they are
listed here, in ``recsvc load run --help`` and in docs/benchmarks.md, not in ``locust --help``):

    --bundle PATH        the served bundle; member and item ids are drawn from it. Default: the
                         newest bundle ``recsvc load run`` cached under var/load/
    --load-config FILE   traffic mix, think time, deadlines, shape (TOML; default: built-in defaults)
    --shape KIND         steady, ramp or spike from the load config; without it -u/-r/-t rule
    --timeline-dir DIR   write every call's end time, RPC, latency and status there

What one simulated caller (``RecsvcUser``) does, with weights and think times from the config:
RecommendProducts for members drawn from the served bundle by a Zipf long tail plus a share of
unknown members, SimilarItems on product pages, RecommendContent feeds, RecordEvent, CheckOutreach
and ReserveOutreach. Every call fires a Locust request event named after the RPC; a failed call
carries its real gRPC status code name (UNAVAILABLE, DEADLINE_EXCEEDED, ...) as the error, so
Locust's failure table counts failures by code. Business refusals (an outreach decision of
"not allowed") are answers, not failures.

The live-stream scenario (``load/live-stream.toml``, ``[live_stream] enabled``): a host greenlet
pins the products members' lists hold most often and sells them out one at a time through the
Catalog service (SetStock); members ask for RecommendProducts with ``in_stock_only`` and every
answer is checked against the sell-outs (``bench/livestream.py``); the counts go to
``live-stream.json`` in the timeline folder and from there into summary.md/json.

The load shape (steady, ramp to the knee, live-stream spike) comes from the config's ``[shape]``
or ``--shape``; see ``bench/shapes.py``. Everything that is not Locust glue lives in
``bench`` so it is unit-tested without Locust.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Locust has already monkey-patched the standard library through gevent when it imports this
# file; gRPC's C core must be told to cooperate with gevent before any channel exists.
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import LoadTestShape, User, between, constant, constant_throughput, events
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

# The harness code sits beside the product in the checkout's bench/ (not an installed package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import shapes
from bench.livestream import LiveStreamHost, SoldOutLedger
from bench.loadconfig import LoadConfig, load_config, shape_overrides
from bench.timeline import SHAPE_START_FILE, Timeline
from bench.traffic import ServedIds, Traffic
from recsvc.csvsafe import SafeWriter
from recsvc.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    outreach_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)

grpc_gevent.init_gevent()

log = logging.getLogger("recsvc.load")

# Where `recsvc load run` caches its sample data and model (the default --bundle comes from here).
DEFAULT_BUNDLES = Path(__file__).resolve().parents[1] / "var" / "load"


# Independent connections: a server with several processes on one port (SO_REUSEPORT) balances
# by connection, so one shared connection would load a single process.
CHANNELS_PER_PROCESS = 8


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--load-config", default="", help="recsvc load config (TOML); defaults apply when empty"
    )
    parser.add_argument(
        "--load-overrides",
        default="",
        env_var="LOCUST_LOAD_OVERRIDES",  # recsvc load run passes it here: it may hold an API key
        help="JSON object of config values overriding the file",
    )
    parser.add_argument(
        "--bundle", default="", help="served model bundle folder: member and item ids are drawn from it"
    )
    parser.add_argument(
        "--shape",
        default="",
        choices=["", "steady", "ramp", "spike"],
        env_var=shapes.SHAPE_ENV,
        help="run the load config's shape of this kind; without it, -u/-r/-t apply as usual",
    )
    parser.add_argument(
        "--timeline-dir",
        default="",
        help="write every call's end time, RPC, latency and status here (exact percentiles per second)",
    )


@dataclass
class _Context:
    config: LoadConfig
    traffic: Traffic | None = None
    channels: list[grpc.Channel] | None = None
    next_channel: int = 0
    timeline: Timeline | None = None
    # The live-stream scenario ([live_stream] enabled): what members' answers are checked against.
    ledger: SoldOutLedger | None = None
    host: LiveStreamHost | None = None


_contexts: dict[int, _Context] = {}


def _context(environment: Any) -> _Context:
    """Config (and lazily the traffic model) of this Locust process, built once."""
    ctx = _contexts.get(id(environment))
    if ctx is None:
        opts = environment.parsed_options
        base: dict[str, Any] = json.loads(opts.load_overrides) if opts.load_overrides else {}
        overrides = shape_overrides(base, kind=opts.shape)
        config = load_config(Path(opts.load_config) if opts.load_config else None, overrides)
        ctx = _Context(config=config)
        _contexts[id(environment)] = ctx
    return ctx


def _bundle(environment: Any) -> str:
    """``--bundle``, else the newest bundle ``recsvc load run`` cached; exits with what to do."""
    opts = environment.parsed_options
    if opts.bundle:
        return str(opts.bundle)
    from bench.loadrun import LoadRunError, find_bundle

    try:
        found = find_bundle(DEFAULT_BUNDLES)
    except (LoadRunError, OSError):
        sys.stderr.write(
            "recsvc locustfile: no --bundle given and no bundle cached under "
            f"{DEFAULT_BUNDLES}. Pass --bundle PATH (the bundle folder the server serves: member "
            "and item ids are drawn from it), or run `recsvc load run` once to make a sample model.\n"
        )
        sys.exit(2)
    log.info("no --bundle given: drawing ids from %s (the newest cached by recsvc load run)", found)
    opts.bundle = str(found)
    return str(found)


def _traffic(environment: Any) -> Traffic:
    ctx = _context(environment)
    if ctx.traffic is None:
        bundle = _bundle(environment)
        worker = getattr(environment.runner, "worker_index", 0) or 0
        ctx.traffic = Traffic(
            ServedIds.from_bundle(Path(bundle)), ctx.config, seed=ctx.config.members.seed + 1000 * worker
        )
    return ctx.traffic


def _channel(environment: Any, host: str) -> grpc.Channel:
    ctx = _context(environment)
    if ctx.channels is None:
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ]
        ctx.channels = [grpc.insecure_channel(host, options=options) for _ in range(CHANNELS_PER_PROCESS)]
    channel = ctx.channels[ctx.next_channel % len(ctx.channels)]
    ctx.next_channel += 1
    return channel


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    if environment.parsed_options is None:
        return
    if not isinstance(environment.runner, WorkerRunner):
        _bundle(environment)  # a missing bundle is reported before any user starts
    ctx = _context(environment)
    weights = ctx.config.weights
    if ctx.config.live_stream.enabled:
        ctx.ledger = SoldOutLedger(ctx.config.live_stream.bound_s)
    tasks: list[Any] = []
    for fn, w in (
        (RecsvcUser.recommend_products, weights.recommend_products),
        (RecsvcUser.similar_items, weights.similar_items),
        (RecsvcUser.recommend_content, weights.recommend_content),
        (RecsvcUser.record_event, weights.record_event),
        (RecsvcUser.check_outreach, weights.check_outreach),
        (RecsvcUser.reserve_outreach, weights.reserve_outreach),
    ):
        tasks.extend([fn] * w)
    RecsvcUser.tasks = tasks
    if environment.parsed_options.timeline_dir:
        timeline = Timeline()
        _context(environment).timeline = timeline

        def _record(name: str, response_time: float, exception: Exception | None, **_: Any) -> None:
            timeline.add(name, response_time, exception)

        environment.events.request.add_listener(_record)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    ctx = _contexts.get(id(environment))
    if ctx is not None and ctx.timeline is not None:
        ctx.timeline.started_at = time.time()
    if (
        ctx is not None
        and ctx.config.live_stream.enabled
        and not isinstance(environment.runner, WorkerRunner)
    ):
        _start_live_stream_host(environment, ctx)


def _start_live_stream_host(environment: Any, ctx: _Context) -> None:
    """The live stream's host: a greenlet beside the member users, in the same process (they
    check their answers against its ledger; ``recsvc load run`` refuses --processes > 1 here)."""
    import gevent

    config = ctx.config
    host = (environment.host or config.host).removeprefix("grpc://").removeprefix("http://")
    channel = _channel(environment, host)
    recommender = recommender_pb2_grpc.RecommenderStub(channel)
    catalog = catalog_pb2_grpc.CatalogStub(channel)
    metadata = tuple(config.metadata.items())
    traffic = _traffic(environment)

    def recommend(member: str) -> list[str]:
        request = recommender_pb2.RecommendProductsRequest(
            member_id=member,
            k=config.requests.recommend_k,
            filters=common_pb2.RecommendationFilters(in_stock_only=True),
        )
        answer = recommender.RecommendProducts(request, timeout=config.deadline_s, metadata=metadata)
        return [it.item_id for it in answer.items]

    def set_stock(item: str, in_stock: bool) -> None:
        request = catalog_pb2.SetStockRequest(item_id=item, in_stock=in_stock)
        catalog.SetStock(request, timeout=config.deadline_s, metadata=metadata)

    assert ctx.ledger is not None
    ctx.host = LiveStreamHost(
        config.live_stream, ctx.ledger, recommend=recommend, set_stock=set_stock, member=traffic.member,
        sleep=gevent.sleep,
    )  # fmt: skip
    gevent.spawn(ctx.host.run, time.time())


@events.test_stop.add_listener
def _on_live_stream_stop(environment: Any, **_: Any) -> None:
    ctx = _contexts.get(id(environment))
    if ctx is None or ctx.ledger is None or isinstance(environment.runner, WorkerRunner):
        return
    if ctx.host is not None:
        ctx.host.stopped = True
        ctx.host.restock()  # a running server (--host) is left as it was found
    out = environment.parsed_options.timeline_dir
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        ctx.ledger.write(Path(out))
    c = ctx.ledger.counts
    log.info(
        "live stream: %d pinned, %d sold out, %d sold-out products served within %.1f s of their "
        "change, %d past it",
        len(c.pinned), len(c.sold_out), c.within_bound, c.bound_s, c.past_bound,
    )  # fmt: skip


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    ctx = _contexts.get(id(environment))
    if ctx is not None and ctx.timeline is not None and len(ctx.timeline):
        ctx.timeline.save(Path(environment.parsed_options.timeline_dir), f"{os.getpid()}")


@events.test_stop.add_listener
@events.quitting.add_listener
def _write_final_stats(environment: Any, **_: Any) -> None:
    """Rewrite Locust's ``--csv`` stats, failures and exceptions files from its final statistics.

    Locust writes those files only from a greenlet that wakes every second and never again at
    shutdown, so calls that end after its last wake-up (an in-flight call finishing during the
    ``--stop-timeout`` grace period) are in the printed summary, the HTML report and the timeline
    but not in the CSVs. test_stop comes after every user has stopped (the moment the timeline is
    saved); quitting comes after a master has received its workers' final reports. Locust's
    writer may still wake up afterwards: it then writes the same final figures into the same files.
    """
    opts = environment.parsed_options
    prefix = getattr(opts, "csv_prefix", None) if opts is not None else None
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return  # workers send their figures to the master, which writes the files
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", writer.requests_csv),
        ("_failures.csv", writer.failures_csv),
        ("_exceptions.csv", writer.exceptions_csv),
    ):
        with open(f"{prefix}{suffix}", "w") as fh:  # opened as Locust opens them
            # Failure and exception rows carry server messages: escaped against formula injection.
            write(SafeWriter(fh))


@events.quitting.add_listener
def _on_quit(environment: Any, **_: Any) -> None:
    ctx = _contexts.pop(id(environment), None)
    for channel in (ctx.channels or []) if ctx else []:
        channel.close()


class GrpcStatusError(Exception):
    """A failed call, shown in Locust's failure table by its status code name only, so failures
    group by code; the details go to the log once per RPC and code."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(code)
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        return self.code

    __str__ = __repr__


class RecsvcUser(User):
    """One calling backend session: mini-program and app pages, event tracking, outreach checks."""

    abstract = False
    tasks: list[Any] = []

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        ctx = _context(environment)
        self.config = ctx.config
        self.traffic = _traffic(environment)
        host = self.host or ctx.config.host
        channel = _channel(environment, host.removeprefix("grpc://").removeprefix("http://"))
        self.recommender = recommender_pb2_grpc.RecommenderStub(channel)
        self.outreach = outreach_pb2_grpc.OutreachStub(channel)
        self.metadata = tuple(ctx.config.metadata.items())
        think = ctx.config.think
        if think.mode == "constant_throughput":
            self._wait = constant_throughput(think.per_user_rate)
        elif think.mode == "between":
            self._wait = between(think.min_s, think.max_s)
        else:
            self._wait = constant(0)
        self._seen_errors: set[tuple[str, str]] = set()
        self.ledger = ctx.ledger

    def wait_time(self) -> float:  # type: ignore[override]
        return float(self._wait(self))

    def _call(self, name: str, method: Any, request: Any) -> Any:
        start = time.perf_counter()
        response = None
        exception: Exception | None = None
        length = 0
        try:
            response = method(request, timeout=self.config.deadline_s, metadata=self.metadata)
            length = response.ByteSize()
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            exception = GrpcStatusError(code, exc.details() or "")
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        if exception is not None and (name, code) not in self._seen_errors:
            self._seen_errors.add((name, code))
            log.warning("first %s failure of %s in pid %d: %s", code, name, os.getpid(), exception.details)
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=length,
            response=response,
            exception=exception,
            context={"code": code},
        )
        return response

    def recommend_products(self) -> None:
        request = self.traffic.recommend_products()
        if self.ledger is None:
            self._call("RecommendProducts", self.recommender.RecommendProducts, request)
            return
        # Live stream: members want what is in stock; every answer is checked against the host's
        # sell-outs (sent after a SetStock answered and still holding its product = served after).
        request.filters.in_stock_only = True
        sent_at = time.time()
        answer = self._call("RecommendProducts", self.recommender.RecommendProducts, request)
        if answer is not None:
            self.ledger.check([it.item_id for it in answer.items], sent_at)

    def similar_items(self) -> None:
        self._call("SimilarItems", self.recommender.SimilarItems, self.traffic.similar_items())

    def recommend_content(self) -> None:
        self._call("RecommendContent", self.recommender.RecommendContent, self.traffic.recommend_content())

    def record_event(self) -> None:
        self._call("RecordEvent", self.recommender.RecordEvent, self.traffic.record_event())

    def check_outreach(self) -> None:
        self._call("CheckOutreach", self.outreach.CheckOutreach, self.traffic.check_outreach())

    def reserve_outreach(self) -> None:
        self._call("ReserveOutreach", self.outreach.ReserveOutreach, self.traffic.reserve_outreach())


class ConfiguredShape(LoadTestShape):
    """The config's shape (steady / ramp / spike) as Locust ticks; ends the run when it is over.

    Records the wall-clock time the shape started (``shape-start.txt`` in the timeline folder) so
    the report cuts the per-call timeline into the same phases the shape ran."""

    abstract = not shapes.shape_asked(sys.argv, dict(os.environ))  # Locust skips abstract shapes
    _started_at: float | None = None

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        environment = self.runner.environment
        elapsed = self.get_run_time()
        if self._started_at is None:
            self._started_at = time.time() - elapsed
            out = environment.parsed_options.timeline_dir
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                (Path(out) / SHAPE_START_FILE).write_text(f"{self._started_at:.6f}\n")
        return shapes.target(_context(environment).config.shape, elapsed)
