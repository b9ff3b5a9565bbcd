"""`recsvc train`: history -> evaluated ALS + FAISS bundle, registered in MLflow (docs/training.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from recsvc.cli.common import ENCODING_OPTION, MAPPING_OPTION, console, friendly_errors, setup_logging, state
from recsvc.errors import InvalidArgument

DEFAULT_PARAMS_OUT = Path("var/tune/params.toml")


@friendly_errors
def train(
    ctx: typer.Context,
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Data folder with events, catalog and members files (default: settings data.data_dir).",
        file_okay=False,
    ),
    tune: bool = typer.Option(
        False,
        "--tune",
        help="Search factors, regularization, alpha, event-weight contrast and iterations on a "
        "validation split carved from the training period (never the holdout) before training; "
        "each trial is a nested MLflow run.",
    ),
    trials: int | None = typer.Option(
        None, "--trials", min=1, help="Tuning trials (default: training.tune_trials). Only with --tune."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Move the champion alias to this model even if it fails the NDCG@10 gate (below the "
        "champion, or below the popularity baseline; logged as forced).",
    ),
    mapping: Path | None = MAPPING_OPTION,
    encoding: str | None = ENCODING_OPTION,
    allow_quarantine: bool = typer.Option(
        False,
        "--allow-quarantine",
        help="Train even when more than data.max_quarantined_share of events or catalog rows "
        "was quarantined.",
    ),
    no_refit: bool = typer.Option(
        False,
        "--no-refit",
        help="Ship the model fitted on the training split instead of refitting on all data up to the "
        "cutoff (faster; the bundle then lacks the holdout period).",
    ),
    no_register: bool = typer.Option(
        False,
        "--no-register",
        help="Log the run and bundle to MLflow but create no model version and move no alias.",
    ),
    bundle_out: Path | None = typer.Option(
        None,
        "--bundle-out",
        "-o",
        help="Also keep the bundle in this folder (must be empty or absent).",
        file_okay=False,
    ),
    factors: int | None = typer.Option(None, "--factors", help="Override training.factors for this run."),
    iterations: int | None = typer.Option(
        None, "--iterations", help="Override training.iterations for this run."
    ),
    regularization: float | None = typer.Option(
        None, "--regularization", help="Override training.regularization for this run."
    ),
    alpha: float | None = typer.Option(None, "--alpha", help="Override training.alpha for this run."),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="Override training.engine for this run: implicit (one machine) or spark (Spark MLlib's "
        "ALS on training.spark_master; needs recsvc\\[spark] and Java).",
    ),
    params_file: Path | None = typer.Option(
        None,
        "--params",
        help="Use the hyper-parameters of this file (the \\[training] table --tune saves) instead of the "
        "settings'; --factors/--iterations/--regularization/--alpha still override it.",
        dir_okay=False,
    ),
    save_params: Path | None = typer.Option(
        None,
        "--save-params",
        help="With --tune: save the chosen hyper-parameters here, for --params (or --config) next time "
        f"(default: {DEFAULT_PARAMS_OUT}).",
        dir_okay=False,
    ),
    event_log: Path | None = typer.Option(
        None,
        "--event-log",
        help="Also learn from the events the service logged: the kind=event partitions `recsvc "
        "events sink` wrote here (default: events.log_dir; skipped when it holds none). A folder "
        "named here must exist.",
        file_okay=False,
    ),
    no_event_log: bool = typer.Option(False, "--no-event-log", help="Train on the data folder only."),
) -> None:
    """Train the recommender from purchase and browse history.

    Steps: ingest and validate -> confidence matrix (event weights, recency decay) -> time-based
    holdout -> (tuning, with --tune) -> ALS -> evaluate against popularity (products and content, k=10/20) ->
    gate against the champion on the same holdout -> refit on all data -> segments, popularity
    tables, FAISS indexes -> bundle -> MLflow run, model version, champion alias.
    Exit code 2 with one line on bad input or settings, or when more than
    data.max_quarantined_share of the events or catalog was quarantined (--allow-quarantine).
    """
    import os

    st = state(ctx)
    setup_logging(st.log_level)
    # our rich progress bars already show each step; MLflow's own tqdm bars would interleave
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    overrides = {
        k: v
        for k, v in {
            "factors": factors,
            "iterations": iterations,
            "regularization": regularization,
            "alpha": alpha,
            "engine": engine,
        }.items()
        if v is not None
    }
    if params_file is not None:
        from training.tune import read_params

        overrides = read_params(params_file) | overrides
    settings = st.settings({"training": overrides} if overrides else None)
    if trials is not None and not tune:
        raise typer.BadParameter("--trials needs --tune", param_hint="--trials")
    if save_params is not None and not tune:
        # without tuning there is nothing to save: the file would silently never be written
        raise typer.BadParameter("--save-params needs --tune", param_hint="--save-params")
    if event_log is not None and no_event_log:
        raise typer.BadParameter(
            "--event-log and --no-event-log contradict each other", param_hint="--event-log"
        )
    if event_log is not None and not event_log.is_dir():
        # a folder named on purpose that is not there is a typo, not "no events yet"
        raise InvalidArgument(f"--event-log folder not found: {event_log}", reason="NO_EVENT_LOG")
    params_out = (save_params or DEFAULT_PARAMS_OUT) if tune else None
    # outputs are written after tuning and training: a folder that cannot take them would lose that work
    if params_out is not None:
        _check_writable(params_out.parent, "--save-params", params_out)
    if bundle_out is not None:
        _check_writable(bundle_out, "--bundle-out", bundle_out)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from training.pipeline import TrainOptions, run
    from training.summary import summary_tables

    dataset = None
    if not no_event_log:
        from recsvc.eventlog.feed import load_with_event_log, log_event_files

        log_dir = event_log or settings.events.log_dir
        if log_event_files(log_dir):
            console.print(f"reading the service's events from {log_dir} (kind=event) beside the data folder")
            dataset = load_with_event_log(data or settings.data.data_dir, log_dir, settings.data)
    options = TrainOptions(
        data_dir=data or settings.data.data_dir,
        tune=tune,
        trials=trials,
        force=force,
        refit=not no_refit,
        register=not no_register,
        bundle_out=bundle_out,
        mapping=mapping,
        encoding=encoding,
        allow_quarantine=allow_quarantine,
        params_out=params_out,
    )
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        report = run(settings, options, dataset=dataset, progress=progress)  # type: ignore[arg-type]
    for table in summary_tables(report):
        console.print(table)
    if options.params_out is not None:
        console.print(
            f"tuned parameters saved to {options.params_out}; reuse them without tuning: "
            f"recsvc train --data {options.data_dir} --params {options.params_out}"
        )
    if not report.decision.promote and options.register:
        console.print(f"[yellow]not promoted[/]: {report.decision.reason}")


def _check_writable(folder: Path, option: str, path: Path) -> None:
    """``folder`` exists or can be created, and takes a file; or an InvalidArgument naming ``path``.
    Folders made for the test are removed again: the run creates them when it writes."""
    import contextlib
    import tempfile

    created: list[Path] = []
    probe = folder.absolute()
    try:
        missing = []
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        for part in reversed(missing):
            part.mkdir()
            created.append(part)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InvalidArgument(
            f"{option} {path} cannot be written: {exc.strerror or type(exc).__name__}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""),
            reason="OUTPUT_NOT_WRITABLE",
        ) from None
    finally:
        for part in reversed(created):
            # something else wrote there meanwhile: it is no longer only ours to remove
            with contextlib.suppress(OSError):
                part.rmdir()
