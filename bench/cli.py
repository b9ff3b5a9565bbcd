"""`python -m bench ...` (also `recsvc load ...` from a source checkout): load tests (Locust, in its
own process) and benchmarks. Each harness is a function returning its report; these commands
only parse options, call it and write the report.

Long on purpose: one typer command per harness, most of each its flags (names, defaults and help
as docs/benchmarks.md lists them); what a run does is in ``bench.runs`` and ``bench.served_runs``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

# Made before recsvc.cli is imported: `recsvc load` mounts this app, and `python -m bench` imports
# recsvc.cli (for its shared options) while this module is still loading.
app = typer.Typer(help="Load tests (Locust) and benchmarks; see docs/benchmarks.md.", no_args_is_help=True)

from recsvc.cli.common import console, friendly_errors, setup_logging, state  # noqa: E402

if TYPE_CHECKING:
    from bench.runs import BenchReport

T = TypeVar("T")


@app.command("run")
@friendly_errors
def run(
    ctx: typer.Context,
    load_config: Path | None = typer.Option(
        None, "--load-config", help="Load config TOML (default: load/config.toml)."
    ),
    host: str | None = typer.Option(
        None, "--host", help="HOST:PORT of a running server; then nothing is started (needs --bundle)."
    ),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Bundle folder: serve it (or, with --host, the one the server serves)."
    ),
    shape: str | None = typer.Option(None, "--shape", help="steady, ramp or spike (default: config)."),
    users: int | None = typer.Option(None, "--users", "-u", min=1, help="Steady shape: simulated callers."),
    spawn_rate: float | None = typer.Option(None, "--spawn-rate", min=0.1, help="Steady: users started/s."),
    duration: float | None = typer.Option(None, "--duration", "-t", min=1, help="Steady: seconds to run."),
    rate_per_user: float | None = typer.Option(
        None, "--rate-per-user", min=0.01, help="Calls per second per user (constant throughput)."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Server processes to start."),
    members: int = typer.Option(5_000, "--members", min=100, help="Members in the generated sample."),
    seed: int = typer.Option(7, "--seed", help="Sample data seed."),
    processes: int = typer.Option(1, "--processes", min=1, help="Locust processes (one core each)."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Report folders go here."),
    workdir: Path = typer.Option(Path("var/load"), "--workdir", help="Cached sample data and model."),
    fresh: bool = typer.Option(False, "--fresh", help="Regenerate sample data and retrain."),
    startup_timeout: float = typer.Option(300.0, "--startup-timeout", help="Seconds to wait for SERVING."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="LOAD_API_KEY",
        help="API key sent as x-api-key (when the server wants keys).",
    ),
    warmup: float = typer.Option(
        5.0, "--warmup", min=0, help="Seconds at the start not measured (a steady run lasts that long more)."
    ),
    target: list[str] = typer.Option(
        [],
        "--target",
        help="NAME=VALUE overriding a \\[targets] value of the load config, e.g. p99_ms=10, "
        "max_error_pct=0.1, min_rps=900, rpc_p99_ms.RecommendProducts=5 (repeatable).",
    ),
    fail_on_miss: bool = typer.Option(
        False,
        "--fail-on-miss",
        help="Exit 1 when a target is missed (to gate a release); a run whose every call failed exits 2 "
        "anyway.",
    ),
) -> None:
    """Start Redis, a trained sample model and the server (unless --host), run Locust headless for
    a bounded time, and write CSV stats, the HTML report, plots and summary.md (with a verdict per
    target of the load config) into load/results/<timestamp>/. Stops everything it started, also
    on Ctrl-C."""
    from bench.loadconfig import shape_overrides
    from bench.loadrun import DEFAULT_CONFIG, LoadRunOptions, run_load

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    app_state.settings()  # a bad settings file fails here, before anything starts
    if shape is not None and shape not in ("steady", "ramp", "spike"):
        raise typer.BadParameter("--shape must be steady, ramp or spike")
    if host is not None:
        _check_host(host)  # before anything starts, not after a whole run of refused calls
    overrides = shape_overrides(
        kind=shape, users=users, spawn_rate=spawn_rate, duration_s=duration, rate_per_user=rate_per_user
    )
    if api_key:
        overrides["metadata"] = {"x-api-key": api_key}
    if target:
        overrides["targets"] = _target_overrides(target)
    opts = LoadRunOptions(
        config_file=load_config if load_config is not None else DEFAULT_CONFIG,
        overrides=overrides,
        host=host,
        bundle=bundle,
        results_root=results,
        workdir=workdir,
        members=members,
        seed=seed,
        workers=workers,
        fresh=fresh,
        processes=processes,
        startup_timeout_s=startup_timeout,
        settings_file=app_state.config_file,
        warmup_s=warmup,
    )
    result = run_load(opts, say=lambda msg: console.print(msg, markup=False, highlight=False))
    typer.echo((result.results_dir / "summary.md").read_text())
    console.print(f"report folder: {result.results_dir}", markup=False, highlight=False)
    missed = result.summary.missed
    for v in missed:
        console.print(f"missed target {v.describe()}", markup=False, highlight=False)
    total = result.summary.total
    if total.requests == 0 or total.failures == total.requests:
        # nothing was measured (a wrong key, target or TLS setting refuses every call): not a
        # result to read targets from, with or without --fail-on-miss
        codes = ", ".join(f"{code} {n}" for code, n in sorted(total.failures_by_code.items())) or "none"
        console.print(
            f"error NOTHING_MEASURED: {total.requests} calls, every one failed (codes: {codes})",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=2)
    if missed and fail_on_miss:
        raise typer.Exit(code=1)


def _target_overrides(values: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs as a ``[targets]`` table (``rpc_p99_ms.<RPC>=ms`` for one RPC)."""
    out: dict[str, Any] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = None
        if not sep or value is None:
            raise typer.BadParameter(f"--target takes NAME=NUMBER, got {item!r}")
        if name.startswith("rpc_p99_ms."):
            out.setdefault("rpc_p99_ms", {})[name.removeprefix("rpc_p99_ms.")] = value
        else:
            out[name.strip()] = value
    return out


bench = typer.Typer(
    help="Benchmarks behind the load-test numbers (docs/benchmarks.md). Heavy: run on a quiet machine.",
    no_args_is_help=True,
)
app.add_typer(bench, name="bench")


def _check_host(target: str) -> None:
    """Refuse a --host that names no server, as ``recsvc query --target`` does (INVALID_TARGET);
    the load config also takes a grpc:// or http:// prefix."""
    from recsvc.cli.common import check_target

    check_target(target.removeprefix("grpc://").removeprefix("http://"), "--host")


def _check_redis_url(url: str | None) -> None:
    """Refuse a --redis-url recsvc could not connect to, with the reason ``redis.url`` gets."""
    from recsvc.errors import InvalidArgument
    from recsvc.settings import check_redis_url

    if url is None:
        return
    try:
        check_redis_url(url)
    except ValueError as exc:
        raise InvalidArgument(f"--redis-url: {exc}") from None


def _numbers(flag: str, text: str) -> list[float]:
    """A comma-separated list of numbers given as ``flag``."""
    from recsvc.errors import InvalidArgument

    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise InvalidArgument(
                f"{flag} takes numbers separated by commas, got {part!r} in {text!r}"
            ) from None
    return values


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False)


def _bench_dir(results: Path, kind: str) -> Path:
    from bench.loadrun import new_results_dir

    out = new_results_dir(results / "bench")
    _say(f"{kind}: results in {out}")
    return out


def _write(out: Path, report: BenchReport) -> None:
    report.write(out)
    typer.echo(report.markdown)


def _options(make: Callable[[], T]) -> T:
    """Options built from the flags; a value they refuse is a bad flag (one line, exit 2)."""
    from recsvc.errors import InvalidArgument

    try:
        return make()
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


@bench.command("inproc")
@friendly_errors
def bench_inproc(
    ctx: typer.Context,
    bundle: Path = typer.Option(..., "--bundle", exists=True, file_okay=False, help="Bundle folder to load."),
    calls: int = typer.Option(5000, "--calls", min=10, help="Timed calls per RPC."),
    warmup: int = typer.Option(500, "--warmup", min=0, help="Untimed calls first."),
    redis_url: str | None = typer.Option(None, "--redis-url", help="Redis to use (default: start one)."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
) -> None:
    """In-process cost of RecommendProducts, SimilarItems, RecommendContent and CheckOutreach:
    the real servicers and engine on a real Redis, called directly (no gRPC transport)."""
    from bench.runs import InprocOptions, run_inproc

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    _check_redis_url(redis_url)
    out = _bench_dir(results, "in-process costs")
    options = InprocOptions(bundle=bundle, calls=calls, warmup=warmup, redis_url=redis_url)
    _write(out, run_inproc(options, app_state.settings, _say))


@bench.command("ann")
@friendly_errors
def bench_ann(
    ctx: typer.Context,
    bundle: list[Path] = typer.Option(
        ..., "--bundle", exists=True, file_okay=False, help="Bundle folder; repeat to compare bundles."
    ),
    queries: int = typer.Option(3000, "--queries", min=10, help="Trained members outside the tuning sample."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
) -> None:
    """Per bundle and item kind: the FAISS index's type and nprobe/efSearch, its recall@20 against
    exact inner-product search, and ms per single-vector search of 100 results (1 OMP thread),
    bare and through ServedModel.search (the serving call, scores included)."""
    from bench.runs import AnnOptions, run_ann

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    training = app_state.settings().training
    out = _bench_dir(results, "ANN index costs")
    _write(out, run_ann(AnnOptions(bundles=bundle, queries=queries), training, _say))


@bench.command("throttle")
@friendly_errors
def bench_throttle(
    ctx: typer.Context,
    decisions: int = typer.Option(50_000, "--decisions", min=100, help="Pipelined decisions per mode."),
    batch: int = typer.Option(500, "--batch", min=1, help="Decisions per pipeline round trip."),
    members: int = typer.Option(2000, "--members", min=1, help="Distinct members asked about."),
    single_calls: int = typer.Option(5000, "--single-calls", min=10, help="Timed single decisions."),
    redis_url: str | None = typer.Option(None, "--redis-url", help="Redis to use (default: start one)."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
) -> None:
    """Throttle decisions per second pipelined from one client, and single-decision latency."""
    from bench.inproc import ThrottleBenchOptions, run_throttle
    from bench.runs import BenchReport, machine

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    _check_redis_url(redis_url)
    out = _bench_dir(results, "throttle")
    where = machine(_say)
    options = ThrottleBenchOptions(
        decisions=decisions, batch=batch, members=members, single_calls=single_calls, redis_url=redis_url
    )
    rates = run_throttle(options, app_state.settings)
    _write(out, BenchReport("throttle", {"machine": where, **rates.as_dict()}, rates.markdown()))


@bench.command("service")
@friendly_errors
def bench_service(
    ctx: typer.Context,
    rates: str = typer.Option("250,500,1000", "--rates", help="Offered req/s, comma-separated."),
    duration: float = typer.Option(30.0, "--duration", min=1, help="Measured seconds per rate."),
    warmup: float = typer.Option(5.0, "--warmup", min=0, help="Unmeasured seconds before each rate."),
    rpc: str = typer.Option("RecommendProducts", "--rpc", help="One RPC name, or 'mixed' (config weights)."),
    connections: int = typer.Option(
        64,
        "--connections",
        min=1,
        help="gRPC connections. SO_REUSEPORT spreads connections, not calls, over the workers by a "
        "hash: with 32, one of two workers often got 55-65% of the calls (the CPU column shows the "
        "split); 64 evens it out better.",
    ),
    deadline: float = typer.Option(1.0, "--deadline", min=0.01, help="Per-call deadline, seconds."),
    client: str = typer.Option(
        "python",
        "--client",
        help="Load client: python (grpc.aio, in this process) or native (load/grpcload, C++; build "
        "it with `make -C load/grpcload`): far less client CPU on cores shared with the server.",
    ),
    host: str | None = typer.Option(None, "--host", help="A running server (needs --bundle)."),
    server_pid: int | None = typer.Option(
        None, "--server-pid", help="With --host: the server's process id, to report its CPU per call."
    ),
    bundle: Path | None = typer.Option(None, "--bundle", help="Bundle served (ids are drawn from it)."),
    load_config: Path | None = typer.Option(None, "--load-config", help="Traffic mix (load config TOML)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Server processes, when started here."),
    members: int = typer.Option(5_000, "--members", min=100, help="Sample size when training here."),
    seed: int = typer.Option(7, "--seed"),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
    workdir: Path = typer.Option(Path("var/load"), "--workdir", help="Cached sample data and model."),
) -> None:
    """Service throughput and latency at fixed offered rates (open loop; grpc.aio client, or the
    native one with --client native). Starts Redis and the server like `load run` unless --host is
    given; reports server memory too."""
    from bench.served_runs import LocalServer, ServiceOptions, run_service

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    app_state.settings()
    if host is not None:
        _check_host(host)
    server = LocalServer(
        bundle=bundle, workers=workers, members=members, seed=seed, workdir=workdir,
        settings_file=app_state.config_file,
    )  # fmt: skip
    options = _options(
        lambda: ServiceOptions(
            rates=_numbers("--rates", rates),
            duration_s=duration,
            warmup_s=warmup,
            rpc=rpc,
            connections=connections,
            deadline_s=deadline,
            client=client,
            load_config=load_config,
            host=host,
            server_pid=server_pid,
            bundle=bundle,
            server=server,
        )
    )
    out = _bench_dir(results, "service throughput")
    _write(out, run_service(options, out, _say))


@bench.command("echo")
@friendly_errors
def bench_echo(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(0, "--port", min=0, help="0 = a free port (printed)."),
    k: int = typer.Option(20, "--k", min=0, max=200, help="Items in the fixed response."),
) -> None:
    """The transport floor: a gRPC server answering RecommendProducts with a fixed response and no
    work. Load it with `bench service --host HOST:PORT --server-pid PID --bundle ...`."""
    from bench.echo import run_echo

    run_echo(host, port, k)


@bench.command("memory")
@friendly_errors
def bench_memory(
    pid: int = typer.Option(..., "--pid", help="Process id of `recsvc serve` (its workers are included)."),
) -> None:
    """RSS and PSS of a server process and its workers (PSS splits the shared bundle pages)."""
    from bench.memory import to_markdown, tree_memory
    from recsvc.errors import InvalidArgument

    # pid 0 would gather every process the kernel started (their parent is 0)
    rows = tree_memory(pid) if pid > 0 else []
    if not rows:
        raise InvalidArgument(
            f"--pid {pid}: no such process, or its memory cannot be read (another user's process needs root)",
            reason="NO_SUCH_PROCESS",
        )
    typer.echo(to_markdown(rows))


@bench.command("pipeline")
@friendly_errors
def bench_pipeline(
    ctx: typer.Context,
    members: int = typer.Option(1_000_000, "--members", min=100, help="Members to generate."),
    products: int | None = typer.Option(None, "--products", help="Products (generator default if unset)."),
    seed: int = typer.Option(7, "--seed"),
    workdir: Path = typer.Option(Path("var/bench-pipeline"), "--workdir", help="Data and MLflow store."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
    extra_generate: str = typer.Option("", "--generate-args", help="Extra `data generate` options."),
) -> None:
    """Generate data and train at scale, timing each command and sampling its peak memory."""
    import shlex

    from bench.loadrun import LoadRunError
    from bench.runs import PipelineOptions, run_pipeline

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    options = PipelineOptions(
        members=members, products=products, seed=seed, workdir=workdir,
        generate_args=shlex.split(extra_generate), settings_file=app_state.config_file,
    )  # fmt: skip
    out = _bench_dir(results, "pipeline")
    report = run_pipeline(options, out, _say)
    _write(out, report)
    if report.error is not None:
        raise LoadRunError(report.error)


@bench.command("diversity")
@friendly_errors
def bench_diversity(
    ctx: typer.Context,
    bundle: Path = typer.Option(
        ..., "--bundle", exists=True, file_okay=False, help="A bundle trained with --no-refit."
    ),
    data: Path = typer.Option(..., "--data", exists=True, file_okay=False, help="Its training data folder."),
    diversities: str = typer.Option(
        "0,0.1,0.3,0.5,0.8", "--diversities", help="MMR settings, comma-separated."
    ),
    k: int = typer.Option(10, "--k", min=1, max=200, help="List length (NDCG@k)."),
    max_members: int = typer.Option(5000, "--max-members", min=1, help="Holdout members sampled."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
) -> None:
    """NDCG@k against intra-list diversity and distinct categories per diversity setting, on the
    holdout (last training.holdout_days) of the data a --no-refit bundle was trained on."""
    from bench.runs import DiversityOptions, run_diversity

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    settings = app_state.settings()
    values = _numbers("--diversities", diversities)
    options = _options(
        lambda: DiversityOptions(bundle=bundle, data=data, diversities=values, k=k, max_members=max_members)
    )
    out = _bench_dir(results, "diversity trade-off")
    _write(out, run_diversity(options, settings, _say))


@bench.command("campaign")
@friendly_errors
def bench_campaign(
    ctx: typer.Context,
    bundle: Path = typer.Option(..., "--bundle", exists=True, file_okay=False, help="Bundle to serve."),
    members: int = typer.Option(1_000_000, "--members", min=1, help="Audience size (synthetic ids)."),
    channel: str = typer.Option("app_push", "--channel", help="Campaign channel."),
    mode: str = typer.Option("dry-run,reserve", "--modes", help="dry-run and/or reserve, comma-separated."),
    workers: int = typer.Option(2, "--workers", min=1, help="Server processes."),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
    workdir: Path = typer.Option(Path("var/load"), "--workdir", help="Run folders (Redis data, logs)."),
) -> None:
    """PlanCampaign over a large audience through gRPC: starts Redis and the server, gives every
    member consent and a daytime time zone, then plans (dry run) and/or reserves, reading every
    decision; reports decisions/s, server memory (RSS/PSS) and Redis memory."""
    from bench.served_runs import CampaignOptions, run_campaign

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    settings = app_state.settings()
    options = _options(
        lambda: CampaignOptions(
            bundle=bundle,
            members=members,
            channel=channel,
            modes=[m.strip() for m in mode.split(",") if m.strip()],
            workers=workers,
            workdir=workdir,
            settings_file=app_state.config_file,
        )
    )
    out = _bench_dir(results, "PlanCampaign")
    run_campaign(options, settings, out, _say, progress=lambda report: _write(out, report))


@bench.command("catalog-propagation")
@friendly_errors
def bench_catalog_propagation(
    ctx: typer.Context,
    changes: int = typer.Option(40, "--changes", min=1, help="Sell-outs measured one at a time."),
    background_rate: float = typer.Option(
        400.0, "--background-rate", min=1, help="RecommendProducts/s offered during the sell-outs."
    ),
    pairs: int = typer.Option(3, "--pairs", min=0, help="Paired runs with/without SetStock (0: none)."),
    rate: float = typer.Option(400.0, "--rate", min=1, help="RecommendProducts/s of the paired runs."),
    set_stock_rate: float = typer.Option(200.0, "--set-stock-rate", min=1, help="SetStock/s beside them."),
    set_stock_batch: int = typer.Option(
        1,
        "--set-stock-batch",
        min=1,
        max=10_000,
        help="Stock changes per call: 1 = SetStock; more = SetStockMany calls carrying the same changes/s "
        "(native client).",
    ),
    set_stock_stream: bool = typer.Option(
        False,
        "--set-stock-stream",
        help="Send the stock changes as messages of one StreamStock stream (a grpc sender process).",
    ),
    duration: float = typer.Option(25.0, "--duration", min=1, help="Measured seconds per paired run."),
    warmup: float = typer.Option(3.0, "--warmup", min=0, help="Unmeasured seconds before each run."),
    connections: int = typer.Option(16, "--connections", min=1, help="gRPC connections of the load."),
    catalog_writer: bool = typer.Option(
        False, "--catalog-writer", help="Send the changes to a catalog writer process (catalog.writer_port)."
    ),
    client: str = typer.Option(
        "python",
        "--client",
        help="Load client of the paired runs: python (grpc.aio, and a grpc SetStock sender process) or "
        "native (load/grpcload for both loads; build it with `make -C load/grpcload`).",
    ),
    bundle: Path | None = typer.Option(None, "--bundle", help="Bundle to serve (default: the sample)."),
    load_config: Path | None = typer.Option(None, "--load-config", help="Traffic mix (load config TOML)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Server processes."),
    members: int = typer.Option(5_000, "--members", min=100, help="Sample size when training here."),
    seed: int = typer.Option(7, "--seed"),
    results: Path = typer.Option(Path("load/results"), "--results", help="Output root."),
    workdir: Path = typer.Option(Path("var/load"), "--workdir", help="Cached sample data and model."),
) -> None:
    """Live catalog propagation: starts Redis and `recsvc serve --workers N`, sells products out
    one at a time under a fixed RecommendProducts load and times SetStock answered -> every server
    process stops recommending the item (each process polled on a connection the kernel says it
    holds); then RecommendProducts p99 with and without SetStock beside it, in alternating pairs."""
    from bench.served_runs import CatalogPropagationOptions, LocalServer, run_catalog_propagation

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    app_state.settings()
    server = LocalServer(
        bundle=bundle, workers=workers, members=members, seed=seed, workdir=workdir,
        settings_file=app_state.config_file,
    )  # fmt: skip
    options = _options(
        lambda: CatalogPropagationOptions(
            changes=changes, background_rate=background_rate, pairs=pairs, rate=rate,
            set_stock_rate=set_stock_rate, set_stock_batch=set_stock_batch,
            set_stock_stream=set_stock_stream, duration_s=duration,
            warmup_s=warmup, connections=connections,
            client=client, catalog_writer=catalog_writer, load_config=load_config, server=server,
        )
    )  # fmt: skip
    out = _bench_dir(results, "catalog propagation")
    progress = lambda report: report.write(out)  # noqa: E731
    _write(out, run_catalog_propagation(options, out, _say, progress))
