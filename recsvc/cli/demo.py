"""`recsvc demo`: the README's run command. Generates sample data, validates it, trains and
registers a model in MLflow, starts Redis and a multi-process server, and makes real gRPC calls,
saying what it did at each step; then plays served traffic with the effects the sample data
planted, writes the event log to Parquet and ends with an A/B report and a campaign report.
Every step is the same CLI a user would type."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.rule import Rule

from recsvc.cli.common import friendly_errors, state
from recsvc.errors import RecsvcError

if TYPE_CHECKING:
    import pandas as pd

out = Console()


class DemoStepFailed(RecsvcError):
    reason = "DEMO_STEP_FAILED"


def _run(cmd: list[str], env: dict[str, str], what: str, capture: bool = False, quiet: bool = False) -> str:
    """Run one CLI step with its output shown live; ``capture`` also returns its stdout;
    ``quiet`` shows nothing (a look-up between steps)."""
    if not quiet:
        out.print(Rule(f"[bold]{what}"))
        out.print(f"[dim]$ {shlex.join(['recsvc', *cmd[3:]] if cmd[:3] == _recsvc()[:3] else cmd)}[/]")
    proc = subprocess.run(
        cmd, env=env, text=True, stdout=subprocess.PIPE if capture or quiet else None, check=False
    )
    if capture and proc.stdout and not quiet:
        out.print(proc.stdout.rstrip(), markup=False, highlight=False)
    if proc.returncode != 0:
        raise DemoStepFailed(f"step '{what}' failed with exit code {proc.returncode}")
    return proc.stdout or ""


def _recsvc() -> list[str]:
    from recsvc.localstack import recsvc_command

    return recsvc_command()


def _table(data_dir: Path, name: str) -> pd.DataFrame:
    """The sample's ``name`` table (events, catalog) as a pandas frame."""
    import pandas as pd

    path = next(iter(sorted(data_dir.glob(f"{name}.*"))))
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _pick_members(buys: pd.DataFrame) -> tuple[str, str]:
    """A member with purchases in the data and a product they did not buy but might."""
    member = str(buys["member_id"].value_counts().index[len(buys["member_id"].unique()) // 3])
    product = str(buys["item_id"].value_counts().index[0])
    return member, product


@friendly_errors
def demo(
    ctx: typer.Context,
    workdir: Path | None = typer.Option(
        None, help="Where data, MLflow store and bundles go (default: <project home>/var/demo)."
    ),
    members: int = typer.Option(20_000, min=100, help="Members in the generated sample."),
    seed: int = typer.Option(7, help="Generator seed (same seed, same data)."),
    workers: int = typer.Option(2, min=1, help="Server processes sharing the port."),
    keep_serving: bool = typer.Option(False, help="Leave the server running at the end (Ctrl-C stops it)."),
) -> None:
    """Generate -> validate -> train -> register -> serve -> call, end to end on sample data."""
    from recsvc.cli.mlflow_ui import demo_store_uri, demo_workdir
    from recsvc.localstack import LocalRedis, free_port, wait_for_serving

    state(ctx).settings()  # fail early on a bad config
    workdir = (workdir or demo_workdir()).resolve()
    data_dir = workdir / "data"
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "OPENBLAS_NUM_THREADS": "1",
            "COLUMNS": env.get("COLUMNS", "150"),  # sub-commands print tables; not a TTY here
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # The demo server has no API keys: allowed on loopback only, and only when said so.
            "RECSVC_SECURITY__ALLOW_INSECURE_DEV": env.get("RECSVC_SECURITY__ALLOW_INSECURE_DEV", "true"),
            "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}",
            "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(workdir / "mlflow" / "artifacts"),
            "RECSVC_SERVING__BUNDLE_CACHE_DIR": str(workdir / "bundles"),
            "RECSVC_SERVING__PORT": str(port),
            "RECSVC_SERVING__WORKERS": str(workers),
            "RECSVC_SERVING__POLL_INTERVAL_S": "5",
            # Two A/B variants on the same model: the sample data plants how their members respond
            # differently (pipelines/generate/effects.py), and the A/B report should find it.
            "RECSVC_SERVING__VARIANTS": json.dumps(
                [{"name": v, "alias": "champion", "share": 0.5} for v in ("a", "b")]
            ),
            "RECSVC_EVENTS__LOG_DIR": str(workdir / "eventlog"),
            "RECSVC_OUTREACH__POLICY_FILE": str(_demo_policy(workdir)),
        }
    )
    (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    rc = _recsvc()
    started = time.monotonic()
    if not (data_dir / "generation.json").exists():
        # --overwrite: the folder is the demo's own, and one without generation.json (written
        # last) is what an interrupted run left; `data generate` refuses a folder that is not empty.
        generate = [*rc, "data", "generate", "--out", str(data_dir), "--overwrite"]
        _run(
            [*generate, "--members", str(members), "--seed", str(seed)],
            env,
            "1. generate realistic sample data",
        )
    else:
        out.print(Rule("[bold]1. sample data already generated"))
        out.print(f"using {data_dir} (delete it to regenerate)")
    _run([*rc, "data", "validate", str(data_dir)], env, "2. validate against the data contract")
    _run([*rc, "train", "--data", str(data_dir)], env, "3. train ALS + FAISS, evaluate, register in MLflow")
    events = _table(data_dir, "events")
    buys = events[events["event_type"] == "purchase"]
    member, product = _pick_members(buys)
    with LocalRedis(workdir / "redis") as redis_proc:
        env["RECSVC_REDIS__URL"] = redis_proc.url
        out.print(Rule("[bold]4. start redis-server and the gRPC server"))
        out.print(
            f"redis-server on {redis_proc.url}; recsvc serve on 127.0.0.1:{port} with {workers} workers"
        )
        server = subprocess.Popen([*rc, "serve"], env=env)
        try:
            wait_for_serving(f"127.0.0.1:{port}", timeout_s=180, proc=server)
            _run([*rc, "outreach", "import", str(data_dir)], env, "5. load member time zones and consent")
            _run([*rc, "query", "info"], env, "6. which model is serving")
            _run([*rc, "query", "products", member, "-k", "5"], env, f"7. products for member {member}")
            _run(
                [*rc, "query", "products", "NEW-MEMBER-0001", "-k", "5", "--channel", "mini_program"],
                env,
                "8. cold start: a member the model has never seen",
            )
            _run([*rc, "query", "content", member, "-k", "3"], env, "9. content feed")
            _run(
                [*rc, "query", "similar", product, "-k", "5"], env, f"10. you may also like (item {product})"
            )
            first = _first_item(
                _run(
                    [*rc, "query", "products", member, "-k", "1", "--json"],
                    env,
                    "11. top product before a purchase",
                    capture=True,
                )
            )
            _run([*rc, "query", "event", member, first, "purchase"], env, f"12. member buys {first}")
            after = _run(
                [*rc, "query", "products", member, "-k", "5"],
                env,
                "13. recommendations a moment later: the purchased item is gone",
                capture=True,
            )
            if first in after:
                raise DemoStepFailed(f"{first} still recommended after purchase")
            _run(
                [
                    *rc,
                    "outreach",
                    "check",
                    "--member",
                    member,
                    "--channel",
                    "wecom",
                    "--campaign",
                    "demo-winback",
                ],
                env,
                "14. may we send this member a WeCom marketing message?",
            )
            _run([*rc, "members", "show", member], env, f"15. who is member {member}? (profile)")
            audience = ["--stage", "at_risk", "--min-p-alive", "0.5", "--consent", "wecom", "--limit", "5"]
            _run(
                [*rc, "members", "find", *audience],
                env,
                "16. an audience: at-risk members still likely to buy, with WeCom consent",
            )
            _live_catalog_steps(rc, env, member, workdir, _best_selling_group(buys, data_dir))
            _effects(rc, env, workdir, data_dir)
            if keep_serving:
                out.print(f"server left running on 127.0.0.1:{port}; Ctrl-C to stop")
                server.wait()
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    out.print(Rule("[bold green]done"))
    elapsed = time.monotonic() - started
    browse = (
        "make mlflow, or .venv/bin/recsvc mlflow-ui --demo"
        if workdir == demo_workdir().resolve()
        else f".venv/bin/mlflow ui --backend-store-uri {demo_store_uri(workdir)}"
    )
    out.print(
        f"generate -> validate -> train -> register -> serve -> call finished in {elapsed:.0f}s. "
        f"MLflow store: {workdir / 'mlflow'} (browse it with: {browse})"
    )


def _best_selling_group(buys: pd.DataFrame, data_dir: Path) -> tuple[str, str]:
    """The (category, brand) with the most purchases: a new product starts where its category's
    sellers are, leaning to its brand's, and a group many members buy from gives the demo the most
    lists it can reach."""
    catalog = _table(data_dir, "catalog")[["item_id", "category", "brand"]]
    groups = buys[["item_id"]].merge(catalog, on="item_id").groupby(["category", "brand"]).size()
    best: tuple[str, str] = groups.idxmax()  # type: ignore[assignment]  # (category, brand)
    return str(best[0]), str(best[1])


def _live_catalog_steps(
    rc: list[str], env: dict[str, str], member: str, workdir: Path, group: tuple[str, str]
) -> None:
    """A product sells out and leaves the member's list, comes back when an inventory feed
    restocks it; a new product arrives in it."""
    import json

    top = json.loads(
        _run(
            [*rc, "query", "products", member, "-k", "5", "--json"],
            env,
            "17. the member's list before the live catalog changes",
            capture=True,
        )
    )["items"][0]
    sold = str(top["item_id"])
    _run([*rc, "catalog", "stock", sold, "out"], env, f"18. {sold} sells out (Catalog/SetStock)")
    time.sleep(1.0)  # the change reaches every server process within a second
    after = _run(
        [*rc, "query", "products", member, "-k", "5"],
        env,
        "19. a second later: it left the list",
        capture=True,
    )
    if sold in after:
        raise DemoStepFailed(f"{sold} still recommended after it sold out")
    feed = workdir / "stock-feed.csv"
    feed.parent.mkdir(parents=True, exist_ok=True)
    feed.write_text(f"{sold},in\n", encoding="utf-8")
    _run(
        [*rc, "catalog", "stock-feed", str(feed)],
        env,
        f"20. an inventory feed restocks {sold} (Catalog/StreamStock via catalog stock-feed)",
    )
    time.sleep(1.0)
    back = _run(
        [*rc, "query", "products", member, "-k", "5"], env, "21. it is back in the list", capture=True
    )
    if sold not in back:
        raise DemoStepFailed(f"{sold} not recommended again after it was restocked")
    new_file = workdir / "new-product.csv"
    import csv

    with new_file.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["item_id", "kind", "title", "category", "brand", "price", "in_stock", "published_at"]
        )
        writer.writerow(["NEW-DEMO-1", "product", "New arrival", *group, "99", "true", ""])
    category = group[0]
    _run(
        [*rc, "catalog", "sync", str(new_file)],
        env,
        f"22. a new product arrives in {category}, brand {group[1]}, the best-selling pair "
        "(Catalog/UpsertItems via catalog sync)",
    )
    time.sleep(1.0)
    # Members whose interests hold the category; the new product starts where its category's
    # sellers are (recsvc.catalog.view.GroupMeans), so it reaches those members' lists.
    audience = json.loads(
        _run(
            [*rc, "members", "find", "--tag", f"category:{category}", "--limit", "30", "--json"],
            env,
            f"23. members who buy {category}",
            capture=True,
        )
    )["member_ids"]
    for candidate in [member, *[m for m in audience if m != member]]:
        listed = json.loads(
            _run(
                [*rc, "query", "products", candidate, "-k", "20", "--json"], env, "", capture=True, quiet=True
            )
        )["items"]
        found = [i for i in listed if i["item_id"] == "NEW-DEMO-1"]
        if found:
            _run(
                [*rc, "query", "products", candidate, "-k", "20"],
                env,
                f"24. member {candidate}'s list now holds the new product (source new, rank "
                f"{listed.index(found[0]) + 1})",
            )
            return
    raise DemoStepFailed(f"the new product is in no list of {len(audience) + 1} members who buy its category")


def _demo_policy(workdir: Path) -> Path:
    """The shipped outreach policy without quiet hours, so the demo's campaign reaches members at
    whatever hour the demo runs (with them, a run in the member's evening reaches nobody)."""
    from recsvc.outreach.policy import DEFAULT_POLICY_FILE

    text = Path(DEFAULT_POLICY_FILE).read_text(encoding="utf-8")
    path = workdir / "demo-policy.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        text.replace('start = "21:00"\nend = "09:00"', 'start = "00:00"\nend = "00:00"'), encoding="utf-8"
    )
    return path


def _effects(rc: list[str], env: dict[str, str], workdir: Path, data_dir: Path) -> None:
    """Served traffic with the planted effects -> the event log -> Parquet -> both reports."""
    from pipelines.generate.effects import PlantedEffects

    effects = PlantedEffects.read(data_dir)
    out.print(Rule("[bold]25. start the event-log sink (Redis streams -> Parquet)"))
    out.print(f"[dim]$ recsvc events sink[/]  (writes {workdir / 'eventlog'})")
    sink = subprocess.Popen([*rc, "events", "sink"], env=env)
    try:
        _run(
            [
                *rc,
                "events",
                "simulate",
                "--data",
                str(data_dir),
                "--members",
                "2000",
                "--campaign-members",
                "3000",
            ],
            env,
            f"26. served traffic: members respond (variant b planted +{effects.ab_margin:.0%} conversion), "
            f"campaign {effects.campaign} with a {effects.holdout_share:.0%} holdout",
        )
        time.sleep(1.0)  # the servers write their buffered impressions every 100 ms
    finally:
        sink.terminate()
        sink.wait(timeout=30)
    _run([*rc, "events", "sink", "--once"], env, "27. the sink writes what is left and stops")
    reports = workdir / "reports"
    _run(
        [*rc, "report", "ab", "--html", str(reports / "ab.html")],
        env,
        "28. A/B report: which variant converts better, and is it significant?",
    )
    _run(
        [*rc, "report", "campaign", effects.campaign, "--html", str(reports / "campaign.html")],
        env,
        f"29. campaign report: did {effects.campaign} raise purchases against its holdout?",
    )


def _first_item(json_text: str) -> str:
    import json

    data = json.loads(json_text)
    items = data.get("items", [])
    if not items:
        raise DemoStepFailed("the server returned no recommendation for the demo member")
    return str(items[0]["item_id"] if "item_id" in items[0] else items[0]["itemId"])
