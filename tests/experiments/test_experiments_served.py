"""Served traffic end to end: A/B variants from a real MLflow registry, a real server with
outreach, a real Redis, the sink and the reports. Members respond with planted effects
(pipelines.generate.effects) and the reports find them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import redis
from bundle_factory import PlantedBundle
from serving_harness import running_server
from settings_factory import build_settings

from pipelines.generate.effects import PlantedEffects
from recsvc.eventlog.sink import Sink
from recsvc.experiments.report import ab_report, campaign_report, read_log
from recsvc.experiments.simulate import play
from recsvc.settings import Settings
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc

pytestmark = pytest.mark.integration
MODEL = "recsvc-effect"
# Large effects so a few hundred members show them; the demo plants realistic ones.
EFFECTS = PlantedEffects(
    purchase_rate=0.10, ab_margin=0.35, base_purchase_rate=0.10, campaign_uplift=0.5, holdout_share=0.3
)


def _settings(tmp: Path, redis_url: str) -> Settings:
    policy = tmp / "policy.toml"
    default = Path(__file__).resolve().parents[2] / "recsvc" / "outreach" / "default_policy.toml"
    # no quiet hours: the campaign runs whatever the hour of the test
    policy.write_text(
        default.read_text().replace('start = "21:00"\nend = "09:00"', 'start = "00:00"\nend = "00:00"')
    )
    variants = [
        {"name": "a", "alias": "champion", "share": 0.5},
        {"name": "b", "alias": "champion", "share": 0.5},
    ]
    return build_settings(
        tmp,
        redis_url=redis_url,
        model_uri=f"models:/{MODEL}@champion",
        mlflow_model=MODEL,
        serving={"variants": variants},
        outreach={"policy_file": str(policy)},
        events={"log_dir": str(tmp / "log"), "flush_interval_ms": 10},
    )


def _register(s: Settings, bundle: PlantedBundle) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(s.mlflow.tracking_uri)
    client = MlflowClient(tracking_uri=s.mlflow.tracking_uri, registry_uri=s.mlflow.tracking_uri)
    exp = client.create_experiment(
        "effect-test", artifact_location=Path(s.mlflow.artifact_location).resolve().as_uri()
    )
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(bundle.path), artifact_path="bundle")
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(MODEL)
    mv = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", mv.version)


def test_reports_find_the_effects_planted_in_served_traffic(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, redis_url)
    _register(settings, planted)
    shoppers = [f"SHOP-{n:04d}" for n in range(500)]
    audience = [f"CAMP-{n:04d}" for n in range(500)]
    with running_server(settings, with_outreach=True) as srv:
        outreach = outreach_pb2_grpc.OutreachStub(srv.channel)
        for m in audience:
            outreach.UpdateConsent(
                outreach_pb2.UpdateConsentRequest(member_id=m, channel="wecom", granted=True)
            )
        traffic = play(
            srv.channel, shoppers, EFFECTS, seed=5, campaign_members=audience, products=planted.products()
        )
    assert set(traffic.by_variant) == {"a", "b"}
    assert traffic.decisions["HOLDOUT"] > 100 and traffic.decisions["ALLOWED"] > 250
    client = redis.Redis.from_url(redis_url)
    Sink(client, settings).run(once=True)
    frames = read_log(settings.events.log_dir)
    ab = ab_report(frames, {"a": 0.5, "b": 0.5})
    assert [v.variant for v in ab.variants] == ["a", "b"]
    assert sum(v.members for v in ab.variants) == len(shoppers)
    diff = ab.comparisons[0].conversion_diff
    assert diff.excludes_zero and diff.low <= EFFECTS.ab_margin <= diff.high
    assert ab.srm_p > 0.001 and ab.verdict.startswith("b is ahead")
    camp = campaign_report(frames, EFFECTS.campaign, settings.events.attribution_window_s)
    assert camp.audience == len(audience) and camp.reached == traffic.decisions["ALLOWED"]
    assert camp.uplift.excludes_zero and camp.uplift.low <= EFFECTS.campaign_uplift <= camp.uplift.high
    # The A/A check on the same traffic: members of one variant split at random find nothing
    # more often than the interval's 5% allows. One split is a 1-in-20 coin; 200 seeded splits
    # measure the report's false-positive rate, which an interval too narrow would push up.
    shown_a = frames.impressions[frames.impressions["variant"] == "a"]
    members = shown_a["member"].unique()
    false_alarms = 0
    for seed in range(200):
        side = dict(zip(members, np.random.default_rng(seed).integers(0, 2, len(members)), strict=True))
        frames.impressions = shown_a.assign(variant=["x" if side[m] else "y" for m in shown_a["member"]])
        false_alarms += ab_report(frames).comparisons[0].conversion_diff.excludes_zero
    assert false_alarms / 200 <= 0.12
