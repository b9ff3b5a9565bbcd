"""`recsvc events sink`: the event log's Redis streams -> Parquet (recsvc.eventlog.sink)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from recsvc.cli.common import client_channel, console, friendly_errors, rpc_errors, setup_logging, state

app = typer.Typer(help="The durable log of impressions, events and outreach decisions.", no_args_is_help=True)


@app.command("sink")
@friendly_errors
def sink(
    ctx: typer.Context,
    log_dir: Path | None = typer.Option(
        None, "--log-dir", help="Where Parquet goes (default: events.log_dir)."
    ),
    consumer: str = typer.Option(
        "sink-0", "--consumer", help="This sink's name in the consumer group (keep it across restarts)."
    ),
    once: bool = typer.Option(False, "--once", help="Write what the streams hold now, then exit."),
    metrics_port: int = typer.Option(
        0, "--metrics-port", min=0, max=65535, help="Prometheus port for the sink's lag (0 = off)."
    ),
) -> None:
    """Write the log to <log_dir>/kind=<kind>/date=<day>/part-*.parquet until SIGTERM, acknowledging
    only what is on disk (a crash at any point loses nothing and writes nothing twice)."""
    from recsvc.eventlog.sink import Sink, install_signal_handlers
    from recsvc.metrics import serve_metrics
    from recsvc.realtime import make_redis_client

    st = state(ctx)
    setup_logging(st.log_level)
    overrides: dict[str, Any] | None = {"events": {"log_dir": str(log_dir)}} if log_dir else None
    settings = st.settings(overrides)
    # The sink is no request path: a Redis stall may take seconds, not the service's 50 ms.
    redis_settings = settings.redis.model_copy(update={"socket_timeout_ms": 5000})
    client = make_redis_client(redis_settings)
    worker = Sink(client, settings, consumer=consumer)
    if metrics_port:
        serve_metrics(metrics_port, worker.metrics.registry)
    install_signal_handlers(worker)
    console.print(f"event log sink -> {settings.events.log_dir} ({settings.events.shards} shards)")
    stats = worker.run(once=once)
    console.print(
        "written: "
        + ", ".join(f"{k} {n}" for k, n in stats.written.items())
        + f"; files {stats.files}; already on disk {stats.replayed}"
        + f"; of erased members: dropped {stats.erased}, removed from files {stats.purged}"
        + (f"; skipped {stats.bad} entries recsvc did not write (logged)" if stats.bad else "")
        + (
            f"; shards {', '.join(map(str, stats.held_elsewhere))} are written by another sink on this folder"
            if stats.held_elsewhere
            else ""
        )
    )


@app.command("simulate")
@friendly_errors
def simulate(
    ctx: typer.Context,
    data: Path = typer.Option(
        ..., "--data", "-d", help="The sample data folder (its truth/effects.json).", file_okay=False
    ),
    members: int = typer.Option(
        2000, "--members", min=10, help="Members served (from the folder's members)."
    ),
    campaign_members: int = typer.Option(
        3000, "--campaign-members", min=0, help="Audience of the planted campaign."
    ),
    target: str | None = typer.Option(
        None, "--target", help="host:port (default: serving.host:serving.port)."
    ),
    seed: int = typer.Option(1, "--seed"),
) -> None:
    """Play served traffic with the effects the generator planted (variant b converts better; the
    campaign lifts purchases of the members it reaches), through the public API."""
    from pipelines.generate.effects import PlantedEffects
    from recsvc.experiments.simulate import play

    effects = PlantedEffects.read(data)
    member_ids = _table(data, "members", ["member_id"])["member_id"]
    catalog = _table(data, "catalog", ["item_id", "kind"])
    products = catalog.loc[catalog["kind"] == "product", "item_id"].astype(str).tolist()
    ids = member_ids.astype(str).sample(frac=1.0, random_state=seed).tolist()
    with client_channel(ctx, target) as channel, rpc_errors():
        traffic = play(
            channel,
            ids[:members],
            effects,
            seed=seed,
            campaign_members=ids[members : members + campaign_members],
            products=products,
        )
    console.print(
        f"served {traffic.lists} lists ({dict(traffic.by_variant)}), {traffic.clicks} clicks, "
        f"{traffic.purchases} purchases; campaign {effects.campaign}: {dict(traffic.decisions)}, "
        f"{traffic.campaign_purchases} purchases in the window"
    )


def _table(data: Path, name: str, columns: list[str]) -> Any:
    """Columns of a generated folder's table, Parquet or CSV; a named error when it has none."""
    import pandas as pd

    from recsvc.errors import DataContractError

    files = sorted(p for p in data.glob(f"{name}.*") if p.name.endswith((".parquet", ".csv", ".csv.gz")))
    if not files:
        raise DataContractError(f"{data} holds no {name} table: give the folder recsvc data generate wrote")
    if files[0].name.endswith(".parquet"):
        return pd.read_parquet(files[0], columns=columns)
    return pd.read_csv(files[0], usecols=columns, dtype=str, keep_default_na=False)
