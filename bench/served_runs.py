"""The ``bench`` commands that start Redis and `recsvc serve` (unless told a running server),
each ``run_*(options, out, say, ...) -> BenchReport``: ``service``, ``campaign`` and
``catalog-propagation``. ``out`` is the run's results folder (setup and server logs go there);
the CLI (bench/cli.py) only parses options, calls one and writes its report."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadrun import LoadRunError, LoadRunOptions, sigterm_as_interrupt, start_local_stack
from bench.ratebench import LOAD_CLIENTS, check_client
from bench.runs import BenchReport, machine
from recsvc.settings import Settings


@dataclass(frozen=True)
class LocalServer:
    """The server a benchmark starts: this bundle (None: train the sample of ``members``/``seed``
    in ``workdir``, cached there), with ``workers`` processes and ``settings_file`` (--config)."""

    bundle: Path | None = None
    workers: int = 2
    members: int = 5_000
    seed: int = 7
    workdir: Path = Path("var/load")
    settings_file: Path | None = None


def _serve_here(
    server: LocalServer,
    out: Path,
    stack: ExitStack,
    say: Callable[[str], None],
    context: dict[str, str],
    settings_env: dict[str, str] | None = None,
) -> tuple[str, Path, dict[str, str]]:
    """Redis, the sample model (unless ``server.bundle``) and `recsvc serve` started for a
    benchmark and stopped by ``stack``: (target, served bundle, the environment they run with).
    ``settings_env``: settings for the server (``RECSVC_...`` variables)."""
    opts = LoadRunOptions(
        bundle=server.bundle, workdir=server.workdir, members=server.members, seed=server.seed,
        workers=server.workers, settings_file=server.settings_file,
    )  # fmt: skip
    env = {**os.environ, **(settings_env or {})}
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    target, served = start_local_stack(opts, env, out, out / "setup.log", stack, say, context)
    return target, served, env


@dataclass(frozen=True)
class ServiceOptions:
    """``bench service``: the offered rates and how they are sent, and the server: ``host`` (a
    running one, with the ``bundle`` it serves and optionally its ``server_pid``) or ``server``."""

    rates: list[float] = field(default_factory=lambda: [250.0, 500.0, 1000.0])
    duration_s: float = 30.0
    warmup_s: float = 5.0
    rpc: str = "RecommendProducts"  # or "mixed" (the load config's weights)
    connections: int = 64
    deadline_s: float = 1.0
    client: str = "python"  # a LOAD_CLIENTS key
    load_config: Path | None = None  # traffic mix
    host: str | None = None
    server_pid: int | None = None
    bundle: Path | None = None
    server: LocalServer = field(default_factory=LocalServer)

    def __post_init__(self) -> None:
        check_client(self.client)
        if self.host and self.bundle is None:
            raise LoadRunError("--bundle is required with --host: ids are drawn from the served bundle")


def run_service(options: ServiceOptions, out: Path, say: Callable[[str], None]) -> BenchReport:
    """Throughput and latency at each offered rate, open loop (``ratebench.run_fixed_rates``),
    and the server's memory after the runs when it is known."""
    from bench.cpu import cpu_probe
    from bench.loadconfig import load_config
    from bench.memory import to_markdown as memory_markdown
    from bench.memory import tree_memory
    from bench.native_client import find_native_client
    from bench.ratebench import MARKDOWN_HEADER, markdown_row, run_fixed_rates
    from bench.traffic import ServedIds, Traffic

    if options.client == "native":
        find_native_client()  # not built: say so before anything starts
    where = machine(say)
    config = load_config(options.load_config)
    context: dict[str, str] = {"load client": LOAD_CLIENTS[options.client]}
    with ExitStack() as stack, sigterm_as_interrupt():
        if options.host:
            target, served = options.host, options.bundle
            if options.server_pid:
                context["server pid"] = str(options.server_pid)
        else:
            target, served, _ = _serve_here(options.server, out, stack, say, context)
        assert served is not None
        traffic = Traffic(ServedIds.from_bundle(served), config)
        pids = {k: int(v) for k, v in context.items() if k in ("server pid", "redis pid")}
        runs = run_fixed_rates(
            target, traffic, options.rpc, options.rates, options.duration_s,
            connections=options.connections, deadline_s=options.deadline_s, warmup_s=options.warmup_s,
            metadata=tuple(config.metadata.items()), client=options.client,
            cpu_probe=cpu_probe(pids.get("server pid"), pids.get("redis pid")),
        )  # fmt: skip
        memory = tree_memory(int(context["server pid"])) if "server pid" in context else []
    md = "\n".join([MARKDOWN_HEADER, *(markdown_row(r) for r in runs)])
    md += (
        f"\n\nLoad client: {LOAD_CLIENTS[options.client]}, {options.connections} connections; "
        "its CPU is the client column."
    )
    if memory:
        md += "\n\nServer memory after the runs:\n\n" + memory_markdown(memory)
    payload = {
        "machine": where,
        "target": target,
        "bundle": str(served),
        "client": options.client,
        "context": context,
        "runs": [r.as_dict() for r in runs],
        "server_memory": [m.as_dict() for m in memory],
    }
    return BenchReport("service", payload, md)


@dataclass(frozen=True)
class CampaignOptions:
    """``bench campaign``: the audience (synthetic ids), its channel, the modes, the server."""

    bundle: Path
    members: int = 1_000_000
    channel: str = "app_push"
    modes: list[str] = field(default_factory=lambda: ["dry-run", "reserve"])
    workers: int = 2
    workdir: Path = Path("var/load")
    settings_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.modes or any(m not in ("dry-run", "reserve") for m in self.modes):
            raise ValueError("modes are dry-run and/or reserve")


def run_campaign(
    options: CampaignOptions,
    settings: Settings,
    out: Path,
    say: Callable[[str], None],
    progress: Callable[[BenchReport], None] = lambda _: None,
) -> BenchReport:
    """PlanCampaign through gRPC over the whole audience per mode, after giving every member
    consent and a daytime time zone (``bench.campaign``). ``progress`` gets the report after
    every mode, so a run stopped part-way keeps what it measured."""
    from bench.campaign import daytime_timezone, markdown, plan_campaign_over_grpc, seed_profiles
    from recsvc.outreach.service import build_throttle
    from recsvc.redis_client import connect

    where = machine(say)
    context: dict[str, str] = {}
    runs = []
    report = BenchReport("campaign", {"machine": where, "context": context, "runs": []}, markdown([]))
    with ExitStack() as stack, sigterm_as_interrupt():
        server = LocalServer(
            bundle=options.bundle, workers=options.workers, workdir=options.workdir,
            settings_file=options.settings_file,
        )  # fmt: skip
        target, _, env = _serve_here(server, out, stack, say, context)
        client = connect(env["RECSVC_REDIS__URL"])
        stack.callback(client.close)
        throttle = build_throttle(settings.model_copy(update={}), client, timeout_s=30.0)
        tz = daytime_timezone()
        say(f"giving {options.members:,} members consent on {options.channel} and time zone {tz}")
        seeded = seed_profiles(throttle, options.members, options.channel, tz)
        say(f"seeded in {seeded:.1f}s; planning")
        for m in options.modes:
            run = plan_campaign_over_grpc(
                target, options.members, options.channel,
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
            payload = {"machine": where, "context": context, "runs": [r.as_dict() for r in runs]}
            report = BenchReport("campaign", payload, markdown(runs))
            progress(report)
    return report


@dataclass(frozen=True)
class CatalogPropagationOptions:
    """``bench catalog-propagation``: the sell-outs and their background load, then the paired
    runs with and without SetStock (``pairs`` 0: none), and the server."""

    changes: int = 40
    background_rate: float = 400.0
    pairs: int = 3
    rate: float = 400.0
    set_stock_rate: float = 200.0
    set_stock_batch: int = 1  # stock changes per call: 1 SetStock, more SetStockMany
    set_stock_stream: bool = False  # the stock changes as messages of one StreamStock stream
    duration_s: float = 25.0
    warmup_s: float = 3.0
    connections: int = 16
    client: str = "python"  # a LOAD_CLIENTS key: who sends both loads of the paired runs
    # Changes go to the catalog writer process (catalog.writer_port), not to the workers' port.
    catalog_writer: bool = False
    load_config: Path | None = None  # traffic mix
    server: LocalServer = field(default_factory=LocalServer)

    def __post_init__(self) -> None:
        check_client(self.client)
        if self.set_stock_batch > 1 and self.client != "native":
            # said before the server starts, not after the propagation runs
            raise ValueError("--set-stock-batch above 1 needs --client native")
        if self.set_stock_batch > 1 and self.set_stock_stream:
            raise ValueError("--set-stock-batch and --set-stock-stream exclude each other")


def run_catalog_propagation(
    options: CatalogPropagationOptions,
    out: Path,
    say: Callable[[str], None],
    progress: Callable[[BenchReport], None] = lambda _: None,
) -> BenchReport:
    """SetStock answered -> every server process stops recommending the item, one sell-out at a
    time under a fixed load; then RecommendProducts with and without SetStock beside it, in
    alternating pairs (``bench.catalog_propagation``). ``progress`` gets the propagation part
    before the pairs run."""
    from bench.catalog_propagation import markdown, run_paired, run_propagation
    from bench.cpu import cpu_probe
    from bench.loadconfig import load_config
    from bench.native_client import find_native_client
    from bench.traffic import ServedIds, Traffic
    from recsvc.localstack import free_port, wait_for_serving

    o = options
    if o.client == "native":
        find_native_client()  # not built: say so before anything starts
    where = machine(say)
    config = load_config(o.load_config)
    metadata = tuple(config.metadata.items())
    context: dict[str, str] = {"load client of the paired runs": LOAD_CLIENTS[o.client]}
    settings_env: dict[str, str] = {}
    if o.catalog_writer:
        writer_port = free_port()
        settings_env["RECSVC_CATALOG__WRITER_PORT"] = str(writer_port)
    with ExitStack() as stack, sigterm_as_interrupt():
        target, served, _ = _serve_here(o.server, out, stack, say, context, settings_env)
        changes_to = target
        if o.catalog_writer:
            changes_to = f"127.0.0.1:{writer_port}"
            wait_for_serving(changes_to)  # its model loaded, so its change calls answer
            context["changes sent to"] = f"the catalog writer ({changes_to}, catalog.writer_nice default)"
        traffic = Traffic(ServedIds.from_bundle(served), config)
        say(f"propagation: {o.changes} sell-outs under {o.background_rate:.0f} RecommendProducts/s")
        prop = run_propagation(
            target, int(context["server pid"]), traffic, processes=o.server.workers, changes=o.changes,
            background_rps=o.background_rate, connections=o.connections, warmup_s=o.warmup_s,
            metadata=metadata, changes_to=changes_to, say=say,
        )  # fmt: skip
        payload: dict[str, Any] = {"machine": where, "context": context, "propagation": prop.as_dict()}
        progress(BenchReport("catalog-propagation", payload, markdown(prop, None)))
        paired = None
        if o.pairs:
            items = [bytes(i).decode() for i in traffic.ids.products[:100]]
            say(
                f"paired runs: {o.pairs} x RecommendProducts {o.rate:.0f}/s "
                f"with and without {o.set_stock_rate:.0f} stock changes/s"
                + (f" (SetStockMany of {o.set_stock_batch})" if o.set_stock_batch > 1 else "")
                + (" (StreamStock messages)" if o.set_stock_stream else "")
            )
            paired = run_paired(
                target, traffic, items, pairs=o.pairs, rate=o.rate, set_stock_rate=o.set_stock_rate,
                duration_s=o.duration_s, warmup_s=o.warmup_s, connections=o.connections, metadata=metadata,
                cpu_probe=cpu_probe(int(context["server pid"]), int(context["redis pid"])),
                client=o.client, changes_to=changes_to, set_stock_batch=o.set_stock_batch,
                set_stock_stream=o.set_stock_stream, say=say,
            )  # fmt: skip
        payload = {**payload, "paired": paired.as_dict() if paired is not None else None}
        payload["machine"] = {**where, "loadavg_1m_at_end": os.getloadavg()[0]}
    return BenchReport("catalog-propagation", payload, markdown(prop, paired))
