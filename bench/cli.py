"""`python -m bench ...` (also `recsvc load ...` from a source checkout): load tests (Locust, in its
own process) and benchmarks. Each harness is a function returning its report; these commands
only parse options, call it and write the report.

Long on purpose: one typer command per harness (its options, the Redis or servers it needs, the
call, the report write); the measuring is in the harness modules.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

# Made before recsvc.cli is imported: `recsvc load` mounts this app, and `python -m bench` imports
# recsvc.cli (for its shared options) while this module is still loading.
app = typer.Typer(help="Load tests (Locust) and benchmarks; see docs/benchmarks.md.", no_args_is_help=True)

from recsvc.cli.common import console, friendly_errors, setup_logging, state  # noqa: E402

if TYPE_CHECKING:
    from bench.loadrun import LoadRunOptions


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
        help="NAME=VALUE overriding a [targets] value of the load config, e.g. p99_ms=10, "
        "max_error_pct=0.1, min_rps=900, rpc_p99_ms.RecommendProducts=5 (repeatable).",
    ),
    fail_on_miss: bool = typer.Option(
        False, "--fail-on-miss", help="Exit 1 when a target is missed (to gate a release)."
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


# `bench service --client`: who sends the calls (recorded with the results).
LOAD_CLIENTS = {
    "python": "python (grpc.aio, in the benchmark process)",
    "native": "native (load/grpcload, C++ grpc++ async)",
}


def _bench_dir(results: Path, kind: str) -> Path:
    from bench.loadrun import new_results_dir

    out = new_results_dir(results / "bench")
    console.print(f"{kind}: results in {out}", markup=False, highlight=False)
    return out


def _serve_here(
    opts: LoadRunOptions, out: Path, stack: ExitStack, say: Callable[[str], None], context: dict[str, str]
) -> tuple[str, Path, dict[str, str]]:
    """Redis, the sample model (unless ``opts.bundle``) and `recsvc serve` started for a benchmark
    and stopped by ``stack``: (target, served bundle, the environment they run with)."""
    import os

    from bench.loadrun import start_local_stack

    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    target, served = start_local_stack(opts, env, out, out / "setup.log", stack, say, context)
    return target, served, env


def _write(out: Path, name: str, payload: Any, markdown: str) -> None:
    import json

    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown + "\n")
    typer.echo(markdown)


def _machine() -> dict[str, Any]:
    import os
    import platform

    from bench.probe import probe_line, speed_probe

    load1, load5, _ = os.getloadavg()
    probe = speed_probe()
    console.print(probe_line(probe), markup=False, highlight=False)
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": load1,
        "loadavg_5m_at_start": load5,
        "speed_probe": probe,  # bench/probe.py: compare runs on a noisy machine
    }


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
    import tempfile

    from bench.inproc import servicer_costs
    from bench.timing import MARKDOWN_HEADER
    from recsvc.localstack import LocalRedis

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    out = _bench_dir(results, "in-process costs")
    machine = _machine()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsvc-bench-")))
        url = redis_url or stack.enter_context(LocalRedis(tmp / "redis")).url
        settings = app_state.settings(
            {
                "serving": {"model_uri": str(bundle.resolve()), "bundle_cache_dir": str(tmp / "bundles")},
                "redis": {"url": url},
                # in-process servicers on loopback, no callers but this one
                "security": {"audit_log": str(tmp / "audit.log"), "allow_insecure_dev": True},
            }
        )
        stats = servicer_costs(settings, calls=calls, warmup=warmup)
    md = "\n".join([MARKDOWN_HEADER, *(s.markdown_row() for s in stats)])
    _write(
        out, "inproc", {"machine": machine, "bundle": str(bundle), "stats": [s.as_dict() for s in stats]}, md
    )


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
    from bench.ann_recall import ann_costs, markdown

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    t = app_state.settings().training
    out = _bench_dir(results, "ANN index costs")
    machine = _machine()
    rows = []
    for b in bundle:
        rows += ann_costs(
            b,
            queries=queries,
            tuning_queries=t.ann_queries,
            tuning_seed=t.random_state,
            hnsw_ef_search=t.hnsw_ef_search,
        )
    payload = {
        "machine": machine,
        "bundles": [str(b) for b in bundle],
        "queries": queries,
        "rows": [r.as_dict() for r in rows],
    }
    _write(out, "ann", payload, markdown(rows))


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

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    out = _bench_dir(results, "throttle")
    machine = _machine()
    options = ThrottleBenchOptions(
        decisions=decisions, batch=batch, members=members, single_calls=single_calls, redis_url=redis_url
    )
    rates = run_throttle(options, app_state.settings)
    _write(out, "throttle", {"machine": machine, **rates.as_dict()}, rates.markdown())


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

    from bench.cpu import cpu_probe
    from bench.loadconfig import load_config as read_load_config
    from bench.loadrun import LoadRunError, LoadRunOptions, sigterm_as_interrupt
    from bench.memory import to_markdown as memory_markdown
    from bench.memory import tree_memory
    from bench.native_client import find_native_client
    from bench.ratebench import MARKDOWN_HEADER, markdown_row, run_fixed_rates
    from bench.traffic import ServedIds, Traffic

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    app_state.settings()
    offered = [float(r) for r in rates.split(",") if r.strip()]
    if host and bundle is None:
        raise LoadRunError("--bundle is required with --host: ids are drawn from the served bundle")
    if client not in LOAD_CLIENTS:
        raise typer.BadParameter("--client must be python or native")
    if client == "native":
        find_native_client()  # not built: say so before anything starts
    out = _bench_dir(results, "service throughput")
    machine = _machine()
    config = read_load_config(load_config)
    context: dict[str, str] = {"load client": LOAD_CLIENTS[client]}
    with ExitStack() as stack, sigterm_as_interrupt():
        if host:
            target, served = host, bundle
            if server_pid:
                context["server pid"] = str(server_pid)
        else:
            opts = LoadRunOptions(
                bundle=bundle, workdir=workdir, members=members, seed=seed, workers=workers,
                settings_file=app_state.config_file,
            )  # fmt: skip
            say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
            target, served, _ = _serve_here(opts, out, stack, say, context)
        assert served is not None
        traffic = Traffic(ServedIds.from_bundle(served), config)
        metadata = tuple(config.metadata.items())
        pids = {k: int(v) for k, v in context.items() if k in ("server pid", "redis pid")}
        runs = run_fixed_rates(
            target, traffic, rpc, offered, duration,
            connections=connections, deadline_s=deadline, warmup_s=warmup, metadata=metadata,
            cpu_probe=cpu_probe(pids.get("server pid"), pids.get("redis pid")), client=client,
        )  # fmt: skip
        memory = tree_memory(int(context["server pid"])) if "server pid" in context else []
    md = "\n".join([MARKDOWN_HEADER, *(markdown_row(r) for r in runs)])
    md += f"\n\nLoad client: {LOAD_CLIENTS[client]}, {connections} connections; its CPU is the client column."
    if memory:
        md += "\n\nServer memory after the runs:\n\n" + memory_markdown(memory)
    payload = {
        "machine": machine,
        "target": target,
        "bundle": str(served),
        "client": client,
        "context": context,
        "runs": [r.as_dict() for r in runs],
        "server_memory": [m.as_dict() for m in memory],
    }
    _write(out, "service", payload, md)


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

    typer.echo(to_markdown(tree_memory(pid)))


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
    import os
    import shlex

    from bench.loadrun import LoadRunError
    from bench.training_scale import markdown, run_measured
    from recsvc.localstack import recsvc_command

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    out = _bench_dir(results, "pipeline")
    machine = _machine()
    work = workdir.resolve()
    (work / "mlflow").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(
        {
            "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
            "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(work / "mlflow" / "artifacts"),
        }
    )
    if app_state.config_file is not None:
        env["RECSVC_CONFIG"] = str(app_state.config_file)
    rc = recsvc_command()
    gen = [
        *rc,
        "data",
        "generate",
        "--out",
        str(work / "data"),
        "--members",
        str(members),
        "--seed",
        str(seed),
    ]
    if products is not None:
        gen += ["--products", str(products)]
    gen += shlex.split(extra_generate)
    steps = [run_measured("data generate", gen, env, out / "generate.log")]
    if steps[0].exit_code == 0:
        train = [*rc, "train", "--data", str(work / "data")]
        steps.append(run_measured("train (ingest -> ... -> register)", train, env, out / "train.log"))
    _write(out, "pipeline", {"machine": machine, "steps": [s.as_dict() for s in steps]}, markdown(steps))
    failed = [s for s in steps if s.exit_code != 0]
    if failed:
        raise LoadRunError(
            f"{failed[0].name} failed with exit code {failed[0].exit_code}; see {failed[0].log}"
        )


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
    from bench.diversity_tradeoff import diversity_table, markdown

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    settings = app_state.settings()
    values = [float(d) for d in diversities.split(",") if d.strip()]
    if any(not 0 <= d <= 1 for d in values):
        raise typer.BadParameter("--diversities must be between 0 and 1")
    out = _bench_dir(results, "diversity trade-off")
    machine = _machine()
    rows, context = diversity_table(settings, bundle, data, values, k=k, max_members=max_members)
    payload = {"machine": machine, "context": context, "rows": [r.as_dict() for r in rows]}
    _write(out, "diversity", payload, markdown(rows))


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

    from bench.campaign import daytime_timezone, markdown, plan_campaign_over_grpc, seed_profiles
    from bench.loadrun import LoadRunOptions, sigterm_as_interrupt
    from recsvc.outreach.service import build_throttle
    from recsvc.redis_client import connect

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    settings = app_state.settings()
    modes = [m.strip() for m in mode.split(",") if m.strip()]
    if not modes or any(m not in ("dry-run", "reserve") for m in modes):
        raise typer.BadParameter("--modes takes dry-run and/or reserve")
    out = _bench_dir(results, "PlanCampaign")
    machine = _machine()
    context: dict[str, str] = {}
    runs = []
    with ExitStack() as stack, sigterm_as_interrupt():
        opts = LoadRunOptions(
            bundle=bundle, workdir=workdir, workers=workers, settings_file=app_state.config_file
        )
        say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
        target, _, env = _serve_here(opts, out, stack, say, context)
        url = env["RECSVC_REDIS__URL"]
        client = connect(url)
        stack.callback(client.close)
        throttle = build_throttle(settings.model_copy(update={}), client, timeout_s=30.0)
        tz = daytime_timezone()
        say(f"giving {members:,} members consent on {channel} and time zone {tz}")
        seeded = seed_profiles(throttle, members, channel, tz)
        say(f"seeded in {seeded:.1f}s; planning")
        for m in modes:
            run = plan_campaign_over_grpc(
                target, members, channel,
                reserve=m == "reserve",
                request_size=settings.outreach.max_plan_members,
                redis_client=client,
                server_pid=int(context["server pid"]),
                seed_seconds=seeded,
                timezone=tz,
                campaign_id=f"bench-{m}",
                metadata=tuple(),
            )  # fmt: skip
            say(f"{m}: {run.decisions:,} decisions in {run.seconds:.1f}s")
            runs.append(run)
            # after every mode, so a run stopped part-way keeps what it measured
            payload = {"machine": machine, "context": context, "runs": [r.as_dict() for r in runs]}
            _write(out, "campaign", payload, markdown(runs))


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
    duration: float = typer.Option(25.0, "--duration", min=1, help="Measured seconds per paired run."),
    warmup: float = typer.Option(3.0, "--warmup", min=0, help="Unmeasured seconds before each run."),
    connections: int = typer.Option(16, "--connections", min=1, help="gRPC connections of the load."),
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
    import os

    from bench.catalog_propagation import markdown, run_paired, run_propagation
    from bench.cpu import cpu_probe
    from bench.loadconfig import load_config as read_load_config
    from bench.loadrun import LoadRunOptions, sigterm_as_interrupt
    from bench.native_client import find_native_client
    from bench.traffic import ServedIds, Traffic

    app_state = state(ctx)
    setup_logging(app_state.log_level)
    app_state.settings()
    if client not in LOAD_CLIENTS:
        raise typer.BadParameter("--client must be python or native")
    if client == "native":
        find_native_client()  # not built: say so before anything starts
    out = _bench_dir(results, "catalog propagation")
    machine = _machine()
    config = read_load_config(load_config)
    metadata = tuple(config.metadata.items())
    context: dict[str, str] = {"load client of the paired runs": LOAD_CLIENTS[client]}
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    with ExitStack() as stack, sigterm_as_interrupt():
        opts = LoadRunOptions(
            bundle=bundle, workdir=workdir, members=members, seed=seed, workers=workers,
            settings_file=app_state.config_file,
        )  # fmt: skip
        target, served, _ = _serve_here(opts, out, stack, say, context)
        traffic = Traffic(ServedIds.from_bundle(served), config)
        say(f"propagation: {changes} sell-outs under {background_rate:.0f} RecommendProducts/s")
        prop = run_propagation(
            target, int(context["server pid"]), traffic, processes=workers, changes=changes,
            background_rps=background_rate, connections=connections, warmup_s=warmup, metadata=metadata,
            say=say,
        )  # fmt: skip
        payload: dict[str, Any] = {"machine": machine, "context": context, "propagation": prop.as_dict()}
        _write(out, "catalog-propagation", payload, markdown(prop, None))
        paired = None
        if pairs:
            items = [bytes(i).decode() for i in traffic.ids.products[:100]]
            say(
                f"paired runs: {pairs} x RecommendProducts {rate:.0f}/s "
                f"with and without {set_stock_rate:.0f} SetStock/s"
            )
            paired = run_paired(
                target, traffic, items, pairs=pairs, rate=rate, set_stock_rate=set_stock_rate,
                duration_s=duration, warmup_s=warmup, connections=connections, metadata=metadata,
                cpu_probe=cpu_probe(int(context["server pid"]), int(context["redis pid"])), client=client,
                say=say,
            )  # fmt: skip
        payload["paired"] = paired.as_dict() if paired is not None else None
        payload["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    _write(out, "catalog-propagation", payload, markdown(prop, paired))
