"""The ``bench`` commands that run in this process, each ``run_*(options, ...) -> BenchReport``:
``inproc``, ``ann``, ``diversity`` and ``pipeline`` (the ones that start a server are in
``bench.served_runs``; ``throttle`` is ``bench.inproc.run_throttle``). The CLI (bench/cli.py) only
parses options, calls one and writes its report (``BenchReport.write``)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsvc.settings import Settings, TrainingSettings

# overrides -> the settings of this run (the CLI's --config with them applied)
SettingsFor = Callable[[dict[str, Any]], Settings]


@dataclass
class BenchReport:
    """What a harness measured: ``<name>.json`` (``payload``) and ``<name>.md`` (``markdown``);
    ``error``: the run failed part-way, after measuring what the report holds."""

    name: str
    payload: dict[str, Any]
    markdown: str
    error: str | None = None

    def write(self, out: Path) -> None:
        (out / f"{self.name}.json").write_text(json.dumps(self.payload, indent=2, default=str))
        (out / f"{self.name}.md").write_text(self.markdown + "\n")


def machine(say: Callable[[str], None]) -> dict[str, Any]:
    """The machine a report was measured on, with its speed right now (bench/probe.py)."""
    from bench.probe import probe_line, speed_probe

    load1, load5, _ = os.getloadavg()
    probe = speed_probe()
    say(probe_line(probe))
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": load1,
        "loadavg_5m_at_start": load5,
        "speed_probe": probe,  # compare runs on a noisy machine
    }


@dataclass(frozen=True)
class InprocOptions:
    """``bench inproc``: the bundle, timed and untimed calls per RPC, Redis (None: start one)."""

    bundle: Path
    calls: int = 5000
    warmup: int = 500
    redis_url: str | None = None


def run_inproc(options: InprocOptions, settings_for: SettingsFor, say: Callable[[str], None]) -> BenchReport:
    """In-process cost of the servicers' per-page calls (``inproc.servicer_costs``)."""
    from bench.inproc import servicer_costs
    from bench.timing import MARKDOWN_HEADER
    from recsvc.localstack import LocalRedis

    bundle = options.bundle
    where = machine(say)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsvc-bench-")))
        url = options.redis_url or stack.enter_context(LocalRedis(tmp / "redis")).url
        settings = settings_for(
            {
                "serving": {"model_uri": str(bundle.resolve()), "bundle_cache_dir": str(tmp / "bundles")},
                "redis": {"url": url},
                # in-process servicers on loopback, no callers but this one
                "security": {"audit_log": str(tmp / "audit.log"), "allow_insecure_dev": True},
            }
        )
        stats = servicer_costs(settings, calls=options.calls, warmup=options.warmup)
    md = "\n".join([MARKDOWN_HEADER, *(s.markdown_row() for s in stats)])
    payload = {"machine": where, "bundle": str(bundle), "stats": [s.as_dict() for s in stats]}
    return BenchReport("inproc", payload, md)


@dataclass(frozen=True)
class AnnOptions:
    """``bench ann``: bundles to compare, trained members queried outside the tuning sample."""

    bundles: list[Path]
    queries: int = 3000


def run_ann(options: AnnOptions, training: TrainingSettings, say: Callable[[str], None]) -> BenchReport:
    """Per bundle and item kind: the index, its recall@20 and ms per search (``ann_recall``),
    the tuning sample as training draws it (``training``)."""
    from bench.ann_recall import ann_costs, markdown

    where = machine(say)
    rows = []
    for b in options.bundles:
        rows += ann_costs(
            b,
            queries=options.queries,
            tuning_queries=training.ann_queries,
            tuning_seed=training.random_state,
            hnsw_ef_search=training.hnsw_ef_search,
        )
    payload = {
        "machine": where,
        "bundles": [str(b) for b in options.bundles],
        "queries": options.queries,
        "rows": [r.as_dict() for r in rows],
    }
    return BenchReport("ann", payload, markdown(rows))


@dataclass(frozen=True)
class DiversityOptions:
    """``bench diversity``: a --no-refit bundle, its data, the MMR settings compared."""

    bundle: Path
    data: Path
    diversities: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.8])
    k: int = 10
    max_members: int = 5000

    def __post_init__(self) -> None:
        if any(not 0 <= d <= 1 for d in self.diversities):
            raise ValueError("diversities must be between 0 and 1")


def run_diversity(options: DiversityOptions, settings: Settings, say: Callable[[str], None]) -> BenchReport:
    """NDCG@k against intra-list diversity per setting (``diversity_tradeoff``)."""
    from bench.diversity_tradeoff import diversity_table, markdown

    where = machine(say)
    rows, context = diversity_table(
        settings,
        options.bundle,
        options.data,
        options.diversities,
        k=options.k,
        max_members=options.max_members,
    )
    payload = {"machine": where, "context": context, "rows": [r.as_dict() for r in rows]}
    return BenchReport("diversity", payload, markdown(rows))


@dataclass(frozen=True)
class PipelineOptions:
    """``bench pipeline``: the data generated (extra ``data generate`` options too) and where."""

    members: int = 1_000_000
    products: int | None = None  # None: the generator's default
    seed: int = 7
    workdir: Path = Path("var/bench-pipeline")  # data and MLflow store
    generate_args: list[str] = field(default_factory=list)
    settings_file: Path | None = None  # recsvc --config, passed on to the commands


def run_pipeline(options: PipelineOptions, out: Path, say: Callable[[str], None]) -> BenchReport:
    """``data generate`` then ``train`` as commands, each timed with its peak memory sampled
    (``training_scale``), their logs in ``out``; ``error`` names the first that failed."""
    from bench.training_scale import markdown, run_measured
    from recsvc.localstack import recsvc_command

    where = machine(say)
    work = options.workdir.resolve()
    (work / "mlflow").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(
        {
            "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{work / 'mlflow' / 'mlflow.db'}",
            "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(work / "mlflow" / "artifacts"),
        }
    )
    if options.settings_file is not None:
        env["RECSVC_CONFIG"] = str(options.settings_file)
    rc = recsvc_command()
    gen = [*rc, "data", "generate", "--out", str(work / "data"), "--members", str(options.members)]
    # --overwrite: every run regenerates the bench's own data folder, in place of the last run's
    gen += ["--seed", str(options.seed), "--overwrite"]
    if options.products is not None:
        gen += ["--products", str(options.products)]
    gen += options.generate_args
    steps = [run_measured("data generate", gen, env, out / "generate.log")]
    if steps[0].exit_code == 0:
        train = [*rc, "train", "--data", str(work / "data")]
        steps.append(run_measured("train (ingest -> ... -> register)", train, env, out / "train.log"))
    failed = [s for s in steps if s.exit_code != 0]
    error = (
        f"{failed[0].name} failed with exit code {failed[0].exit_code}; see {failed[0].log}"
        if failed
        else None
    )
    payload = {"machine": where, "steps": [s.as_dict() for s in steps]}
    return BenchReport("pipeline", payload, markdown(steps), error)
