"""A member forgotten through ForgetMember is absent from the next trained bundle: no id-map row,
no events counted, no segment or popularity row, no byte of the id in any bundle file or MLflow
artifact. Runs the real training pipeline (real MLflow sqlite store in a tmp folder)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from settings_factory import build_settings

from recsvc.bundle import load_bundle
from recsvc.security.audit import AuditLog
from recsvc.security.erasure import forget_member
from recsvc.security.privacy import ErasureList, Pseudonymizer
from training import pipeline, prepare
from training.synthetic import make_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_retrained_bundle_holds_no_trace_of_forgotten_members(tmp_path: Path, redis_url: str) -> None:
    import mlflow
    import redis

    data = make_dataset(members=300, products=80, content=20, events_per_member=25, seed=3)
    events = data.events
    # Two members with plenty of history, including purchases (so they would be in every table).
    buyers = events[events["event_type"] == "purchase"]["member_id"].astype(str).value_counts()
    forgotten = sorted(buyers.index[:2].tolist())
    assert all(m in set(data.members["member_id"].astype(str)) for m in forgotten)

    settings = build_settings(
        tmp_path,
        mlflow=True,
        redis_url=redis_url,
        training={"factors": 8, "iterations": 4, "eval_members": 200},
        security={"erasure_list": str(tmp_path / "erasures.txt"), "audit_log": str(tmp_path / "audit.log")},
    )
    # Forget them the way the Admin service does.
    client = redis.Redis.from_url(redis_url)
    for member in forgotten:
        forget_member(
            member,
            redis=client,
            prefix=settings.redis.key_prefix,
            erasures=ErasureList(settings.security.erasure_list),
            audit=AuditLog(settings.security.audit_log, Pseudonymizer("retrain-test-pseudonym-key")),
        )
    client.close()

    report = pipeline.run(
        settings,
        pipeline.TrainOptions(data_dir=tmp_path, bundle_out=tmp_path / "bundle", register=False),
        dataset=data,
    )
    bundle = load_bundle(tmp_path / "bundle")

    # id maps
    for member in forgotten:
        assert member not in bundle.members
    # no events counted: the bundle's event count is that of the data without them (filtered here
    # independently of apply_erasures), and smaller than with them
    keep = ~events["member_id"].astype(str).isin(forgotten)
    without = type(data)(**{**data.__dict__, "events": events[keep].reset_index(drop=True)})
    members_keep = ~data.members["member_id"].astype(str).isin(forgotten)
    without.members = data.members[members_keep].reset_index(drop=True)
    expected_events = len(prepare.prepare(without).events)
    assert bundle.manifest.counts["events"] == expected_events
    assert expected_events < len(prepare.prepare(data).events)
    assert len(bundle.members) == len(prepare.prepare(without).members)
    # segment and popularity tables
    assert not set(bundle.segments["member_id"].astype(str)) & set(forgotten)
    assert isinstance(bundle.popular, pd.DataFrame)
    for column in bundle.popular.columns:
        assert not set(bundle.popular[column].astype(str)) & set(forgotten)
    # not a byte of their ids anywhere in the bundle or the run's MLflow artifacts
    artifacts = Path(
        mlflow.artifacts.download_artifacts(run_id=report.run_id, tracking_uri=settings.mlflow.tracking_uri)
    )
    for root in (tmp_path / "bundle", artifacts):
        for path in (p for p in root.rglob("*") if p.is_file()):
            blob = path.read_bytes()
            for member in forgotten:
                assert member.encode() not in blob, (member, path)
