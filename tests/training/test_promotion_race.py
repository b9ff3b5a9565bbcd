"""Two trainings on one MLflow store: the champion alias moves by compare-and-set, so a candidate
gated against a champion that was replaced meanwhile is registered but not promoted (and not
audited as a promotion). Against a real sqlite tracking + registry store in a tmp folder."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from settings_factory import build_settings

from recsvc.settings import Settings, load_settings
from training import pipeline, stages, tracking
from training.synthetic import SyntheticDataset, make_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one sqlite store for the module (creating one costs seconds); one model name per test
    return tmp_path_factory.mktemp("mlflow-race")


def _settings(store: Path, model: str) -> Settings:
    return build_settings(store, mlflow_model=model)


def _register(client: Any, s: Settings, promote: bool = True, **kw: Any) -> str:
    run = client.create_run(tracking.ensure_experiment(client, s.mlflow))
    return str(
        tracking.register(
            client,
            s.mlflow,
            run_id=run.info.run_id,
            source=f"{run.info.artifact_uri}/bundle",
            bundle_id=f"b-{run.info.run_id[:6]}",
            tags={"gate.decision": "passed: test", "gate.promote": str(promote).lower()},
            promote=promote,
            **kw,
        )
    )


def _alias(client: Any, s: Settings) -> str | None:
    return tracking.champion_version(client, s.mlflow)


def test_alias_moves_when_the_champion_is_the_one_measured(store: Path) -> None:
    s = _settings(store, "race-ok")
    client = tracking.client_for(s.mlflow)
    assert _register(client, s, expected_champion=None) == "1"
    assert _alias(client, s) == "1"
    assert _register(client, s, expected_champion="1") == "2"
    assert _alias(client, s) == "2"
    # not promoting never touches the alias, whatever it names
    assert _register(client, s, promote=False, expected_champion="1") == "3"
    assert _alias(client, s) == "2"
    assert (Path(f"{store}/mlflow.db.champion.lock")).is_file()


def test_a_stale_champion_is_not_replaced(store: Path) -> None:
    s = _settings(store, "race-stale")
    client = tracking.client_for(s.mlflow)
    _register(client, s, expected_champion=None)  # v1, the champion both trainings measured
    _register(client, s, expected_champion="1")  # v2: the other training finished first
    with pytest.raises(tracking.ChampionMoved) as caught:
        _register(client, s, expected_champion="1")
    moved = caught.value
    assert (moved.version, moved.expected, moved.current) == ("3", "1", "2")
    assert moved.message == (
        "champion moved from v1 to v2 while this run trained: not promoted; re-run to compare against v2"
    )
    assert _alias(client, s) == "2"
    mv = client.get_model_version(s.mlflow.model_name, "3")  # registered, without the alias
    assert mv.aliases == []
    assert mv.tags[tracking.STALE_CHAMPION_TAG] == "true"
    assert mv.tags["gate.promote"] == "false"
    assert mv.tags["gate.decision"].startswith("stale champion: champion moved from v1 to v2")
    assert "passed: test" in mv.tags["gate.decision"]


def test_a_first_model_does_not_replace_a_champion_that_appeared(store: Path) -> None:
    s = _settings(store, "race-first")
    client = tracking.client_for(s.mlflow)
    _register(client, s, expected_champion=None)
    with pytest.raises(tracking.ChampionMoved, match=r"a champion \(v1\) appeared while this run trained"):
        _register(client, s, expected_champion=None)
    assert _alias(client, s) == "1"


def test_an_unchecked_call_moves_the_alias_and_a_measured_one_only_past_its_champion(store: Path) -> None:
    s = _settings(store, "race-context")
    client = tracking.client_for(s.mlflow)
    _register(client, s)  # v1: no expectation (a caller that measured nothing), alias moves
    _register(client, s)  # v2
    assert _alias(client, s) == "2"
    with pytest.raises(tracking.ChampionMoved):
        _register(client, s, expected_champion="1")
    assert _register(client, s, expected_champion="2") == "4"
    assert _alias(client, s) == "4"


def test_two_promotions_at_once_one_wins_under_the_lock(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both measured v1; a slow re-read widens the window between the re-read and the move: the
    lock file makes the second wait, see v2 and refuse."""
    s = _settings(store, "race-threads")
    client = tracking.client_for(s.mlflow)
    _register(client, s, expected_champion=None)
    read = tracking.champion_version

    def slow_read(c: Any, m: Any) -> str | None:
        current = read(c, m)
        time.sleep(0.5)
        return current

    monkeypatch.setattr(tracking, "champion_version", slow_read)
    outcomes: list[str] = []

    def train() -> None:
        try:
            outcomes.append(f"promoted v{_register(tracking.client_for(s.mlflow), s, expected_champion='1')}")
        except tracking.ChampionMoved as exc:
            outcomes.append(f"refused v{exc.version}: current v{exc.current}")

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == 2
    promoted = [o for o in outcomes if o.startswith("promoted")]
    refused = [o for o in outcomes if o.startswith("refused")]
    assert len(promoted) == 1 and len(refused) == 1, outcomes
    winner = promoted[0].removeprefix("promoted v")
    assert refused[0].endswith(f"current v{winner}")
    monkeypatch.setattr(tracking, "champion_version", read)
    assert _alias(client, s) == winner


@pytest.fixture(scope="module")
def data() -> SyntheticDataset:
    return make_dataset(members=300, products=80, content=20, events_per_member=25, seed=1)


def test_pipeline_does_not_promote_past_a_champion_that_moved_while_it_trained(
    tmp_path: Path, data: SyntheticDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first training makes v1 champion; a second one is gated against v1, then (between its
    gate and its registration) another training promotes v2: the second is registered as v3
    without the alias, tagged, reported as not promoted, and not audited as a promotion."""
    audit = tmp_path / "audit" / "audit.log"
    s = load_settings(
        overrides={
            "mlflow": {
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                "artifact_location": str(tmp_path / "artifacts"),
            },
            "training": {"factors": 8, "iterations": 4, "eval_members": 200, "family": "als"},
            "security": {"audit_log": str(audit)},
        }
    )
    first = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path), dataset=data)
    assert first.decision.promote and first.model_version == "1"
    client = tracking.client_for(s.mlflow)

    gate_decision = stages.gate_decision

    def gate_then_another_training_promotes(*args: Any, **kwargs: Any) -> Any:
        decision = gate_decision(*args, **kwargs)
        assert decision.promote and decision.champion_version == "1"
        v1 = client.get_model_version(s.mlflow.model_name, "1")
        other = client.create_model_version(s.mlflow.model_name, source=v1.source, run_id=v1.run_id)
        client.set_registered_model_alias(s.mlflow.model_name, s.mlflow.champion_alias, other.version)
        return decision

    monkeypatch.setattr(stages, "gate_decision", gate_then_another_training_promotes)
    second = pipeline.run(s, pipeline.TrainOptions(data_dir=tmp_path), dataset=data)

    assert not second.decision.promote and not second.decision.forced
    assert second.model_version == "3"
    assert second.decision.reason.startswith(
        "stale champion: champion moved from v1 to v2 while this run trained; re-run to compare against v2"
    )
    assert tracking.champion_version(client, s.mlflow) == "2"
    mv = client.get_model_version(s.mlflow.model_name, "3")
    assert mv.aliases == [] and mv.tags[tracking.STALE_CHAMPION_TAG] == "true"
    assert mv.tags["gate.promote"] == "false"
    run = client.get_run(second.run_id)
    assert run.data.tags[tracking.STALE_CHAMPION_TAG] == "true"
    assert run.data.tags["gate.promote"] == "false" and run.data.tags["model_version"] == "3"
    assert run.data.metrics["gate.promoted"] == 0.0
    assert json.loads(pipeline.report_json(second))["gate"]["promote"] is False
    # only the first training's promotion is in the audit trail
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["event"], e["version"]) for e in entries] == [("model_promotion", "1")]
