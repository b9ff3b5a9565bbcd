"""MLflow plumbing: experiment, registry look-ups, model versions and the champion alias.

Reads: MlflowSettings (tracking and registry URIs, experiment, artifact location, model name,
alias), a finished run's bundle artifact URI.
Writes: the experiment (created with ``artifact_location``), registered model versions whose
``source`` is the artifact URI of the run's ``bundle`` folder (so
``mlflow.artifacts.download_artifacts(artifact_uri=mv.source)`` yields a folder with
``manifest.json`` at its root), version tags (bundle_id, gate decision) and the alias.

The alias moves by compare-and-set (:func:`register`): only if it still names the version the gate
measured (``expected_champion``), re-read right before it is set, under a lock file next to a
local sqlite registry (``<db>.champion.lock``) so two trainings on one store cannot both promote.
MLflow has no transaction: on another registry (a tracking server, a database) the re-read and the
move are two calls, and a promotion landing in the milliseconds between them is not seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

from recsvc.bundle import MANIFEST, Manifest, read_manifest
from recsvc.errors import BundleError, ConfigError, RecsvcError, TrackingUnavailable
from recsvc.settings import MlflowSettings

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT_PATH = "bundle"
STALE_CHAMPION_TAG = "gate.stale_champion"


class _Unchecked:
    def __repr__(self) -> str:
        return "UNCHECKED"


UNCHECKED: Final = _Unchecked()  # no expectation: the alias moves whatever it names (legacy callers)
ExpectedChampion = str | None | _Unchecked


class ChampionMoved(RecsvcError):
    """The champion alias moved (or appeared) between the gate and the promotion: the candidate
    was never compared with the new champion, so it is registered without the alias."""

    reason = "CHAMPION_MOVED"

    def __init__(self, *, version: str, expected: str | None, current: str | None) -> None:
        self.version, self.expected, self.current = version, expected, current
        self.rerun = f"re-run to compare against v{current}" if current is not None else "re-run to promote"
        super().__init__(f"{self.what()} while this run trained: not promoted; {self.rerun}")

    def what(self) -> str:
        if self.expected is None:
            return f"a champion (v{self.current}) appeared"
        return (
            f"champion moved from v{self.expected} to {'v' + str(self.current) if self.current else 'none'}"
        )

    def decision_reason(self, gate_reason: str) -> str:
        """The gate decision's reason once the promotion was refused: what happened, then what
        the gate had said against the champion it measured."""
        was = f"v{self.expected}" if self.expected is not None else "no champion"
        return (
            f"stale champion: {self.what()} while this run trained; {self.rerun} "
            f"(gate against {was}: {gate_reason})"
        )


def client_for(m: MlflowSettings) -> Any:
    """A client of the configured tracking and registry stores; ConfigError (INVALID_CONFIG)
    naming the setting when MLflow cannot make a store of it (e.g. a bare word, which MLflow
    reads as a file store and refuses)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _ensure_sqlite_parent(m.tracking_uri)
    if m.registry_uri:
        _ensure_sqlite_parent(m.registry_uri, "mlflow.registry_uri")
    try:
        # the client first: a store MLflow refuses must not become the process-wide default
        client = MlflowClient(tracking_uri=m.tracking_uri, registry_uri=m.registry_uri or m.tracking_uri)
    except MlflowException as exc:
        named = f"mlflow.tracking_uri {m.tracking_uri!r}" + (
            f" / mlflow.registry_uri {m.registry_uri!r}" if m.registry_uri else ""
        )
        # MLflow's first sentence says what is wrong; the rest is migration advice
        said = " ".join(str(exc.message or exc).split()).split(". ")[0][:300]
        raise ConfigError(
            f"{named} cannot be used ({said}); give a store URI such as sqlite:///var/mlflow.db "
            "or http://host:5000"
        ) from None
    mlflow.set_tracking_uri(m.tracking_uri)
    if m.registry_uri:
        mlflow.set_registry_uri(m.registry_uri)
    return client


def _ensure_sqlite_parent(uri: str, setting: str = "mlflow.tracking_uri") -> None:
    """A local sqlite store's folder made and its file opened, as MLflow will open it: a path it
    cannot write otherwise keeps MLflow retrying for minutes, then ends in a traceback."""
    path = _sqlite_file(uri)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(path).close()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"{setting} {uri!r}: the sqlite file cannot be opened ({exc}); give a path this user can write"
        ) from None


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local sqlite store URI (its query string dropped); None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _local_path(location: str) -> Path | None:
    """The absolute folder a plain path (or one with a one-letter scheme: a Windows drive) names;
    None for a URI."""
    scheme = urlparse(location).scheme
    if scheme and len(scheme) > 1:
        return None
    return Path(location).expanduser().resolve()


def _location_uri(location: str) -> str:
    """``location`` as a URI: a plain path becomes an absolute file URI, so runs do not depend on
    the working directory."""
    path = _local_path(location)
    return path.as_uri() if path is not None else location


def artifact_location_uri(location: str) -> str:
    """:func:`_location_uri`, with a local folder made."""
    path = _local_path(location)
    if path is None:
        return location
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


# MLflow retries an HTTP store 7 times over about four minutes by default. The first call of a
# command only learns whether the store answers at all, so it gives up sooner; later calls keep
# MLflow's patience (a bundle's upload should ride out a blip). Variables the user set win.
_FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


@contextlib.contextmanager
def _first_contact() -> Iterator[None]:
    added = {k: v for k, v in _FIRST_CONTACT.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def ensure_experiment(client: Any, m: MlflowSettings) -> str:
    """The experiment's id, created if missing; TrackingUnavailable (one line, within ~15 s)
    when the store does not answer."""
    from mlflow.exceptions import MlflowException

    try:
        with _first_contact():
            exp = client.get_experiment_by_name(m.experiment)
    except MlflowException as exc:
        text = str(exc.message or exc)
        cause = _OS_ERROR.search(text)
        said = cause.group(1).strip() if cause else " ".join(text.split())[:200]
        raise TrackingUnavailable(
            f"the MLflow store {m.tracking_uri!r} (mlflow.tracking_uri) did not answer: {said}; "
            "check the URI and that the store runs, then try again"
        ) from None
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment {m.experiment!r} is deleted; restore it or pick another")
        wanted = _location_uri(m.artifact_location)
        if exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
            # MLflow fixes an experiment's artifact location when it creates it: say so, rather
            # than let the setting look obeyed
            log.warning(
                "event=artifact_location_ignored experiment=%s its_location=%s setting=%s "
                "(mlflow.artifact_location applies when an experiment is created: "
                "name a new one in mlflow.experiment)",
                m.experiment,
                exp.artifact_location,
                wanted,
            )
        return str(exp.experiment_id)
    return str(
        client.create_experiment(m.experiment, artifact_location=artifact_location_uri(m.artifact_location))
    )


def champion(client: Any, m: MlflowSettings) -> tuple[Any, Manifest | None] | None:
    """The model version under the champion alias and its bundle manifest, or None if there is
    no champion. The manifest is None when it cannot be read (e.g. another schema version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(m.model_name, m.champion_alias)
    except MlflowException as exc:
        log.info("no champion yet: %s", exc.message.splitlines()[0] if exc.message else exc)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{mv.source.rstrip('/')}/{MANIFEST}", dst_path=tmp
            )
            manifest = read_manifest(Path(local).parent)
        except (BundleError, MlflowException, OSError) as exc:
            log.warning("champion v%s manifest unreadable: %s", mv.version, exc)
            return mv, None
    return mv, manifest


def _lock_path(m: MlflowSettings) -> Path | None:
    """The lock file next to a local sqlite registry; None for any other registry."""
    db = _sqlite_file(m.registry_uri or m.tracking_uri)
    return db.with_name(f"{db.name}.champion.lock") if db is not None else None


@contextlib.contextmanager
def champion_lock(m: MlflowSettings) -> Iterator[None]:
    """Serialise the champion's compare-and-set between processes on one local sqlite store (an
    exclusive ``flock`` on ``<db>.champion.lock``, released when the process ends); a no-op for
    other registries."""
    path = _lock_path(m)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def champion_version(client: Any, m: MlflowSettings) -> str | None:
    """The version the champion alias names now, or None if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(m.model_name, m.champion_alias).version)
    except MlflowException:
        return None


def register(
    client: Any,
    m: MlflowSettings,
    *,
    run_id: str,
    source: str,
    bundle_id: str,
    tags: dict[str, str],
    promote: bool,
    expected_champion: ExpectedChampion = UNCHECKED,
) -> str:
    """Create a model version for the bundle; move the champion alias when ``promote``.

    ``expected_champion``: the version the gate measured, None for "no champion". The alias
    moves only if it still names it, re-read right before the move under :func:`champion_lock`;
    otherwise the version stays registered without the alias, is tagged
    ``gate.stale_champion=true`` / ``gate.promote=false`` and :class:`ChampionMoved` is
    raised (no promotion happened: nothing to audit)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            m.model_name, description="recsvc ALS + FAISS bundles (see docs/bundle.md)"
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(
        name=m.model_name,
        source=source,
        run_id=run_id,
        tags={"bundle_id": bundle_id, **tags},
        description=f"bundle {bundle_id}",
    )
    version = str(mv.version)
    if not promote:
        return version
    with champion_lock(m):
        current = champion_version(client, m)
        if isinstance(expected_champion, _Unchecked) or current == expected_champion:
            client.set_registered_model_alias(m.model_name, m.champion_alias, version)
            log.info("alias %s -> %s v%s", m.champion_alias, m.model_name, version)
            return version
    moved = ChampionMoved(version=version, expected=expected_champion, current=current)
    for key, value in {
        STALE_CHAMPION_TAG: "true",
        "gate.promote": "false",
        "gate.decision": moved.decision_reason(tags.get("gate.decision", "")),
    }.items():
        client.set_model_version_tag(m.model_name, version, key, value)
    log.warning(
        "event=champion_moved model=%s version=%s expected=%s current=%s %s",
        m.model_name,
        version,
        expected_champion,
        current,
        moved.message,
    )
    raise moved
