"""One contract suite per interface, run against every implementation of it (as gorse runs one
storage suite against every backend): what a caller of the interface may rely on, whichever
implementation it is handed.

- ``ModelProvider`` (recsvc.engine.recommender): ``SingleModel`` and the served-model registry
  (recsvc.models.served.ServedModels, resolving a bundle folder).
- ``RecommendationPort`` (recsvc.outreach.ports, what outreach needs from recommendations): the
  engine's ``EnginePort`` and the test double outreach's own tests use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import PlantedBundle
from outreach_support import FakeRecommendations

from recsvc.bundle import KIND_CONTENT, KIND_PRODUCT
from recsvc.engine.recommender import EnginePort, ModelProvider, RecommendationEngine, SingleModel
from recsvc.engine.served_model import ServedModel
from recsvc.errors import NotFound
from recsvc.models.resolve import ModelResolver
from recsvc.models.served import ServedModels
from recsvc.outreach.ports import RecommendationPort
from recsvc.settings import load_settings
from recsvc.v1 import common_pb2


def _single(planted: PlantedBundle, tmp_path: Path) -> ModelProvider:
    return SingleModel(ServedModel.load(planted.path, version="1", source_uri=str(planted.path)))


def _registry(planted: PlantedBundle, tmp_path: Path) -> ModelProvider:
    settings = load_settings(
        overrides={"serving": {"model_uri": str(planted.path), "bundle_cache_dir": str(tmp_path / "c")}}
    )
    registry = ServedModels(settings, ModelResolver(settings))
    registry.reload()
    return registry


PROVIDERS: dict[str, Callable[[PlantedBundle, Path], ModelProvider]] = {
    "single": _single,
    "registry": _registry,
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest, planted: PlantedBundle, tmp_path: Path) -> ModelProvider:
    return PROVIDERS[request.param](planted, tmp_path)


def test_a_provider_serves_every_member_a_loaded_model_with_a_variant_name(
    provider: ModelProvider, planted: PlantedBundle
) -> None:
    for member in [*planted.warm_members()[:5], *planted.cold_members[:2], "never-seen"]:
        variant, model = provider.for_member(member)
        assert isinstance(variant, str) and variant
        assert isinstance(model, ServedModel)
        assert provider.for_member(member) == (variant, model)  # stable per member
    variant, model = provider.default()
    assert isinstance(variant, str) and variant and isinstance(model, ServedModel)


def test_a_provider_s_model_is_the_bundle_it_was_given(
    provider: ModelProvider, planted: PlantedBundle
) -> None:
    _, model = provider.default()
    assert model.manifest.bundle_id == planted.bundle_id
    member = planted.warm_members()[0]
    assert provider.for_member(member)[1].member_row(member) is not None


def _engine_port(planted: PlantedBundle, tmp_path: Path) -> RecommendationPort:
    models = _single(planted, tmp_path)
    engine = RecommendationEngine(models, None, load_settings().serving)
    return EnginePort(engine, models, 0.3)


def _fake_port(planted: PlantedBundle, tmp_path: Path) -> RecommendationPort:
    segments: dict[str, int] = {}
    for seg in planted.member_segment.values():
        segments[seg] = segments.get(seg, 0) + 1
    return FakeRecommendations(
        planted.products(),
        planted.content(),
        bought={m: set(items) for m, items in planted.purchased.items()},
        segments=segments,
    )


PORTS: dict[str, Callable[[PlantedBundle, Path], RecommendationPort]] = {
    "engine": _engine_port,
    "fake": _fake_port,
}


@pytest.fixture(params=sorted(PORTS))
def port(request: pytest.FixtureRequest, planted: PlantedBundle, tmp_path: Path) -> RecommendationPort:
    return PORTS[request.param](planted, tmp_path)


@pytest.mark.parametrize(("kind", "code"), [("product", KIND_PRODUCT), ("content", KIND_CONTENT)])
def test_top_items_are_at_most_k_of_the_kind_without_excluded_or_bought_items(
    port: RecommendationPort, planted: PlantedBundle, kind: str, code: int
) -> None:
    pb_kind = common_pb2.PRODUCT if code == KIND_PRODUCT else common_pb2.CONTENT
    for member in planted.warm_members()[:6]:
        first = port.top_items(member, kind, 5, ())
        assert 0 < len(first) <= 5
        assert all(isinstance(i, common_pb2.RecommendedItem) and i.kind == pb_kind for i in first)
        assert len({i.item_id for i in first}) == len(first)
        assert not {i.item_id for i in first} & set(planted.purchased.get(member, []))
        excluded = {first[0].item_id}
        again = port.top_items(member, kind, 5, excluded)
        assert excluded.isdisjoint(i.item_id for i in again)


def test_segment_members_streams_ids_and_an_unknown_segment_is_not_found(
    port: RecommendationPort, planted: PlantedBundle
) -> None:
    segment = next(iter(planted.member_segment.values()))
    members: Any = port.segment_members(segment)
    first = next(iter(members))
    assert isinstance(first, str) and first
    with pytest.raises(NotFound):
        list(port.segment_members("no-such-segment"))
