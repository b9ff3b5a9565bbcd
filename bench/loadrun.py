"""``recsvc load run``: one command from nothing to a load-test report.

Long on purpose: the one ordered start-up and tear-down of a load run (Redis, data, model, server,
Locust); split, the order would live in two places.

Unless pointed at a running server (``host``), it starts what the test needs, in this order:
sample data (``recsvc data generate``) and a trained champion (``recsvc train``) in a cached
work folder unless a bundle is given, a throw-away ``redis-server``, and ``recsvc serve`` on a
free port. Then it runs Locust headless in its own process for the shape's duration (bounded),
and writes into ``load/results/<UTC timestamp>/``:

    stats_stats.csv, stats_failures.csv, stats_exceptions.csv, stats_stats_history.csv  (Locust)
    report.html        Locust's HTML report
    timeline-<pid>.npz every call: end time, RPC, exact latency, status (one file per Locust process)
    summary.md/.json   req/s, p50/p95/p99 and failures by status code per RPC, spike phases, and a
                       verdict per target of the load config's [targets] (after the warm-up)
    plots/*.png        latency percentiles, throughput and errors by code, per second
    report-plots.html  those plots and the summary in one self-contained page
    config.json        the effective load config
    locust.log, server.log, setup.log

Everything it started is stopped on the way out, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import shapes
from bench.livestream import read_counts as read_live_stream
from bench.loadconfig import LoadConfig, load_config
from bench.report import Summary, summarize, write_summary
from bench.timeline import load_samples
from bench.traffic import ServedIds
from recsvc.errors import RecsvcError
from recsvc.settings import merge_tables

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCUSTFILE = REPO_ROOT / "load" / "locustfile.py"
DEFAULT_CONFIG = REPO_ROOT / "load" / "config.toml"
READY = "READY.json"


class LoadRunError(RecsvcError):
    reason = "LOAD_RUN_FAILED"


@dataclass
class LoadRunOptions:
    """What ``recsvc load run`` was told; defaults make a small local run."""

    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    host: str | None = None  # a running server: start nothing
    bundle: Path | None = None  # serve this bundle (and draw ids from it) instead of training
    results_root: Path = REPO_ROOT / "load" / "results"
    workdir: Path = REPO_ROOT / "var" / "load"  # cached sample data and model
    members: int = 5_000
    seed: int = 7
    workers: int = 2
    fresh: bool = False
    processes: int = 1  # Locust processes (one core each)
    locustfile: Path = DEFAULT_LOCUSTFILE
    startup_timeout_s: float = 300.0
    settings_file: Path | None = None  # recsvc --config, passed on to the children
    generate_args: list[str] = field(default_factory=list)  # extra `recsvc data generate` options
    # Seconds at the start whose calls are not measured (connections, caches, JIT warming up);
    # a steady run lasts this much longer, so its measured part is still ``duration_s``.
    warmup_s: float = 5.0


@dataclass
class LoadRunResult:
    results_dir: Path
    summary: Summary
    locust_exit_code: int


def locust_executable() -> str:
    """The ``locust`` of this interpreter's environment (the venv), else one on PATH."""
    beside = Path(sys.executable).parent / "locust"
    if beside.exists():
        return str(beside)
    found = shutil.which("locust")
    if found:
        return found
    raise LoadRunError(
        "locust not found: install the load extra (`.venv/bin/pip install -e '.[load]'`, or `make venv`)"
    )


def new_results_dir(root: Path, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    path = root / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def _recsvc() -> list[str]:
    from recsvc.localstack import recsvc_command

    return recsvc_command()


def _run_step(cmd: list[str], env: dict[str, str], logfile: Path, what: str) -> None:
    log.debug("%s: %s", what, " ".join(cmd))
    with logfile.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace")[-3000:]
        raise LoadRunError(f"{what} failed with exit code {proc.returncode} (log: {logfile}):\n{tail}")


def find_bundle(root: Path) -> Path:
    """The newest bundle folder (one holding manifest.json and member_ids.npy) under ``root``."""
    found = [p.parent for p in root.rglob("manifest.json") if (p.parent / "member_ids.npy").exists()]
    if not found:
        raise LoadRunError(f"no model bundle found under {root}")
    return max(found, key=lambda p: p.stat().st_mtime)


def _mlflow_env(cache: Path) -> dict[str, str]:
    return {
        "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{cache / 'mlflow' / 'mlflow.db'}",
        "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(cache / "mlflow" / "artifacts"),
    }


def prepare_sample_model(
    opts: LoadRunOptions, env: dict[str, str], logfile: Path, say: Callable[[str], None] = print
) -> tuple[Path, Path]:
    """Sample data and a trained champion in a cache folder keyed by size and seed, reused when
    ready. Returns (cache folder, bundle folder)."""
    cache = (opts.workdir / f"sample-m{opts.members}-s{opts.seed}").resolve()
    ready = cache / READY
    if ready.exists() and not opts.fresh:
        bundle = Path(json.loads(ready.read_text())["bundle"])
        if (bundle / "manifest.json").exists():
            say(f"reusing the sample data and model cached in {cache} (--fresh rebuilds them)")
            return cache, bundle
    if cache.exists():
        shutil.rmtree(cache)
    (cache / "mlflow").mkdir(parents=True)
    step_env = {**env, **_mlflow_env(cache), "RECSVC_SERVING__BUNDLE_CACHE_DIR": str(cache / "bundles")}
    data = cache / "data"
    rc = _recsvc()
    say(f"generating sample data into {data} (log: {logfile})")
    _run_step(
        [
            *rc,
            "data",
            "generate",
            "--out",
            str(data),
            "--members",
            str(opts.members),
            "--seed",
            str(opts.seed),
            *opts.generate_args,
        ],
        step_env,
        logfile,
        "generate sample data",
    )
    say("training and registering a champion in a local MLflow store")
    _run_step([*rc, "train", "--data", str(data)], step_env, logfile, "train and register a champion")
    bundle = find_bundle(cache / "mlflow")
    ready.write_text(json.dumps({"bundle": str(bundle), "created": datetime.now(UTC).isoformat()}))
    return cache, bundle


def _stop(proc: subprocess.Popen[bytes], group: bool, grace_s: float = 20.0) -> None:
    """Stop a child we started (its own process group when ``group``: the server forks workers)."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop in %.0fs; killing it", proc.pid, grace_s)
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    if group:
        # Workers that outlived their parent share its process group id.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def started(proc: subprocess.Popen[bytes], group: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        _stop(proc, group)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks stop the children."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def locust_command(
    opts: LoadRunOptions, config: LoadConfig, host: str, bundle: Path, results: Path
) -> list[str]:
    run_time = int(shapes.duration_s(config.shape)) + 5
    cmd = [
        locust_executable(),
        "-f",
        str(opts.locustfile),
        "--headless",
        "--host",
        host,
        # The config's load shape, asked for by name (plain `locust` without --shape uses -u/-r/-t).
        "--shape",
        config.shape.kind,
        "--bundle",
        str(bundle),
        "--csv",
        str(results / "stats"),
        "--csv-full-history",
        "--html",
        str(results / "report.html"),
        "--timeline-dir",
        str(results),
        "--run-time",
        f"{run_time}s",
        "--stop-timeout",
        "5",
        # Failures are reported by code in the summary; they do not make the run itself fail.
        "--exit-code-on-error",
        "0",
        "--logfile",
        str(results / "locust.log"),
        "--only-summary",
    ]
    if opts.config_file is not None:
        cmd += ["--load-config", str(opts.config_file)]
    if opts.processes > 1:
        cmd += ["--processes", str(opts.processes)]
    return cmd


def run_load(opts: LoadRunOptions, say: Callable[[str], None] = print) -> LoadRunResult:
    """Start what is needed, run Locust, write the report folder, stop everything. See module doc."""
    config = load_config(opts.config_file, opts.overrides)
    if opts.warmup_s > 0 and config.shape.kind == "steady":
        # Measure the asked-for duration after the warm-up; Locust gets the longer run through
        # the same overrides.
        longer = {"shape": {"steady": {"duration_s": config.shape.steady.duration_s + opts.warmup_s}}}
        opts = replace(opts, overrides=merge_tables(opts.overrides, longer))
        config = load_config(opts.config_file, opts.overrides)
    if opts.host and opts.bundle is None:
        raise LoadRunError(
            "--bundle is required with --host: the load test draws member and item ids from the "
            "bundle the server is serving"
        )
    if not opts.locustfile.exists():
        raise LoadRunError(
            f"locustfile not found at {opts.locustfile}: run from a source checkout of recsvc "
            "(load/ is not part of the installed package)"
        )
    if config.live_stream.enabled and opts.processes > 1:
        raise LoadRunError(
            "the live-stream scenario runs in one Locust process (the members check their answers "
            "against the host's sell-outs in memory): leave out --processes"
        )
    locust_executable()  # missing load extra: say so before starting anything
    if opts.bundle is not None:
        ServedIds.from_bundle(opts.bundle)  # not a bundle: say so before starting anything
    results = new_results_dir(opts.results_root)
    recorded = config.model_dump(mode="json")
    recorded["metadata"] = dict.fromkeys(recorded["metadata"], "<redacted>")
    (results / "config.json").write_text(json.dumps(recorded, indent=2))
    setup_log = results / "setup.log"
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if opts.settings_file is not None:
        env["RECSVC_CONFIG"] = str(opts.settings_file)
    context = {"shape": config.shape.kind, "peak users": str(shapes.peak_users(config.shape))}
    say(f"results folder: {results}")
    with ExitStack() as stack, sigterm_as_interrupt():
        if opts.host:
            host = config.model_copy(update={"host": opts.host}).host
            bundle = opts.bundle
            assert bundle is not None
            context["server"] = f"existing server at {host}"
        else:
            host, bundle = start_local_stack(opts, env, results, setup_log, stack, say, context)
        if config.live_stream.enabled:
            ls = config.live_stream
            context["scenario"] = (
                f"live stream: {ls.pinned} pinned products sold out one every {ls.sellout_interval_s:g} s "
                f"from {ls.start_after_s:g} s on; propagation bound {ls.bound_s:g} s"
            )
        context.update(
            {
                "host": host,
                "bundle": str(bundle),
                "think time": f"{config.think.mode} ({config.think.per_user_rate}/s per user)"
                if config.think.mode == "constant_throughput"
                else config.think.mode,
                "duration": f"{shapes.duration_s(config.shape):.0f} s",
                "warm-up": f"{opts.warmup_s:g} s (not measured)",
                "locust processes": str(opts.processes),
            }
        )
        cmd = locust_command(opts, config, host, bundle, results)
        say(f"running locust ({config.shape.kind}, {shapes.duration_s(config.shape):.0f}s) against {host}")
        # Overrides travel in the environment, not argv: they may carry an API key.
        locust_env = {**env, "LOCUST_LOAD_OVERRIDES": json.dumps(opts.overrides)}
        with (results / "locust.out").open("w") as out:
            locust = stack.enter_context(
                started(subprocess.Popen(cmd, env=locust_env, stdout=out, stderr=subprocess.STDOUT))
            )
            limit = shapes.duration_s(config.shape) + 120
            try:
                code = locust.wait(timeout=limit)
            except subprocess.TimeoutExpired as exc:
                raise LoadRunError(f"locust did not finish within {limit:.0f}s; stopped it") from exc
            except KeyboardInterrupt:
                # Locust got the same Ctrl-C and writes its reports; give it a moment.
                with suppress(subprocess.TimeoutExpired):
                    locust.wait(timeout=15)
                raise
    if not Path(f"{results / 'stats'}_stats.csv").exists():
        tail = (results / "locust.out").read_text(errors="replace")[-3000:]
        raise LoadRunError(f"locust exited with code {code} and wrote no stats ({results}):\n{tail}")
    samples = load_samples(results)
    title = f"recsvc load test {results.name}"
    summary = summarize(
        results / "stats",
        title=title,
        phases=shapes.phases(config.shape),
        samples=samples,
        warmup_s=opts.warmup_s,
        targets=config.targets,
        live_stream=read_live_stream(results) if config.live_stream.enabled else None,
    )
    md = write_summary(summary, results, context)
    if samples is not None and len(samples):
        from bench.plots import write_html, write_plots

        plots = write_plots(samples, results / "plots", opts.warmup_s)
        write_html(md.read_text(), plots, results / "report-plots.html", title)
    return LoadRunResult(results_dir=results, summary=summary, locust_exit_code=code)


def start_local_stack(
    opts: LoadRunOptions,
    env: dict[str, str],
    results: Path,
    setup_log: Path,
    stack: ExitStack,
    say: Callable[[str], None],
    context: dict[str, str],
) -> tuple[str, Path]:
    from recsvc.localstack import LocalRedis, free_port, wait_for_serving

    run_dir = (opts.workdir / "runs" / results.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir: Path | None = None
    if opts.bundle is not None:
        bundle = opts.bundle.resolve()
        model_uri = str(bundle)
        env.setdefault("RECSVC_MLFLOW__TRACKING_URI", f"sqlite:///{run_dir / 'mlflow.db'}")
    else:
        say(f"preparing sample data and a trained model ({opts.members} members, seed {opts.seed})")
        t0 = time.monotonic()
        cache, bundle = prepare_sample_model(opts, env, setup_log, say)
        say(f"model ready in {time.monotonic() - t0:.0f}s: {bundle}")
        env.update(_mlflow_env(cache))
        model_uri = "models:/recsvc@champion"
        data_dir = cache / "data"
    redis = stack.enter_context(LocalRedis(run_dir / "redis"))
    port = free_port()
    host = f"127.0.0.1:{port}"
    env.update(
        {
            "RECSVC_REDIS__URL": redis.url,
            "RECSVC_SERVING__HOST": "127.0.0.1",
            "RECSVC_SERVING__PORT": str(port),
            "RECSVC_SERVING__WORKERS": str(opts.workers),
            "RECSVC_SERVING__MODEL_URI": model_uri,
            "RECSVC_SERVING__POLL_INTERVAL_S": "0",
            "RECSVC_SERVING__BUNDLE_CACHE_DIR": str(run_dir / "bundles"),
            "RECSVC_SECURITY__AUDIT_LOG": str(run_dir / "audit.log"),
        }
    )
    # The local stack binds loopback; without configured API keys that needs the explicit dev switch.
    env.setdefault("RECSVC_SECURITY__ALLOW_INSECURE_DEV", "true")
    say(f"starting redis-server ({redis.url}) and recsvc serve --workers {opts.workers} on {host}")
    server_log = (results / "server.log").open("w")
    stack.callback(server_log.close)
    server = stack.enter_context(
        started(
            subprocess.Popen(
                [*_recsvc(), "serve", "--workers", str(opts.workers)],
                env=env,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the workers go with it
            ),
            group=True,
        )
    )
    context["server pid"] = str(server.pid)
    if redis.proc is not None:
        context["redis pid"] = str(redis.proc.pid)
    try:
        wait_for_serving(host, timeout_s=opts.startup_timeout_s, proc=server)
    except RecsvcError as exc:
        tail = (results / "server.log").read_text(errors="replace")[-3000:]
        raise LoadRunError(f"{exc}; server log tail:\n{tail}") from exc
    if data_dir is not None:
        # Time zones and consent, so outreach decisions look like production (best effort).
        try:
            _run_step([*_recsvc(), "outreach", "import", str(data_dir)], env, setup_log, "import consent")
        except LoadRunError as exc:
            say(f"warning: consent import failed, outreach calls will mostly answer NO_CONSENT ({exc})")
    context["server"] = f"recsvc serve --workers {opts.workers} (started here), redis {redis.url}"
    return host, bundle
