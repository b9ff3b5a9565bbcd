"""The event channel vocabulary is one setting (data.event_channels) that files, training and the
Recommender API share: a retailer who declares douyin trains douyin's own popular lists and may
send RecordEvent and RecommendProducts with channel douyin. Outreach channels are the policy's own
list, and its event_channel_map says which one reaches the members of an event channel."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pandas as pd
import pytest
from bundle_factory import PlantedBundle
from serving_harness import running_server, serving_settings
from typer.testing import CliRunner

from pipelines.ingest import load_dataset
from pipelines.validate import validate_dir
from recsvc.bundle import ALL
from recsvc.cli import app
from recsvc.errors import ConfigError, InvalidArgument
from recsvc.outreach.ask_checks import check_channel as check_outreach_channel
from recsvc.outreach.policy import DEFAULT_POLICY_FILE, Policy, load_policy, parse_policy
from recsvc.server.request_checks import check_channel
from recsvc.settings import EVENT_CHANNELS, DataSettings, TrainingSettings, load_settings
from recsvc.v1 import recommender_pb2
from training import prepare, segments

RETAILER = DataSettings(event_channels=(*EVENT_CHANNELS, "douyin", "taobao"))
NOW = pd.Timestamp("2026-06-01T00:00:00Z").to_pydatetime()


def test_event_channels_default_to_the_built_in_list_and_are_validated() -> None:
    assert load_settings().data.event_channels == EVENT_CHANNELS
    s = load_settings(overrides={"data": {"event_channels": ["app", "douyin"]}})
    assert s.data.event_channels == ("app", "douyin")
    for bad, words in (
        (["Douyin"], "lower_snake_case"),
        (["app", "app"], "unique"),
        (["all"], "reserved"),
        ([], "at least 1"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_settings(overrides={"data": {"event_channels": bad}})


def test_the_api_accepts_the_declared_channels_only() -> None:
    assert check_channel("douyin", RETAILER) == "douyin"
    assert check_channel("", RETAILER) == ""  # no channel: the popular lists of any channel
    with pytest.raises(InvalidArgument) as err:
        check_channel("douyin", DataSettings())
    assert err.value.reason == "UNKNOWN_CHANNEL" and "data.event_channels" in str(err.value)


def _folder(tmp: Path) -> Path:
    folder = tmp / "d"
    folder.mkdir()
    (folder / "catalog.csv").write_text(
        "item_id,kind,title,category,brand,price,in_stock,published_at\n"
        + "".join(f"P{i},product,Tea {i},tea,B,10,true,\n" for i in range(4))
    )
    rows = [f"M{m},P{m % 2},view,2026-05-{10 + m:02d}T00:00:00Z,douyin,," for m in range(6)]
    rows += [f"M{m},P{2 + m % 2},purchase,2026-05-{10 + m:02d}T01:00:00Z,app,1,10" for m in range(6)]
    (folder / "events.csv").write_text(
        "member_id,item_id,event_type,ts,channel,quantity,amount\n" + "\n".join(rows) + "\n"
    )
    return folder


def test_files_and_training_use_the_declared_channels(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    built_in = validate_dir(folder, DataSettings(), now=NOW)
    assert set(built_in.tables["events"].quarantine["reason"]) == {"unknown_channel"}

    dataset = load_dataset(folder, RETAILER, NOW, tmp_path / "q")
    assert dataset.counts["events.rows_quarantined"] == 0
    assert len(dataset.events) == 12
    p = prepare.prepare(dataset)
    assert p.channels == RETAILER.event_channels
    t = TrainingSettings(popular_per_table=10)
    _, stage = segments.member_segments(p, t)
    table = segments.popularity_tables(p, stage, t, window_days=90)
    douyin = table[(table.segment == ALL) & (table.channel == "douyin")]
    assert set(douyin["item_id"]) == {"P0", "P1"}  # douyin's own list: what was viewed there
    assert set(table[(table.segment == ALL) & (table.channel == "app")]["item_id"]) == {"P2", "P3"}


def test_a_frame_built_in_code_keeps_channels_beyond_the_built_in_ones() -> None:
    assert prepare._channel_vocabulary(pd.Series(["app", "pos", None, "douyin"])) == (
        *EVENT_CHANNELS,
        "douyin",
        "pos",
    )


def test_a_server_declaring_douyin_accepts_it(planted: PlantedBundle, redis_url: str, tmp_path: Path) -> None:
    base = serving_settings(str(planted.path), redis_url, tmp_path)
    settings = base.model_copy(update={"data": RETAILER})
    member, item = planted.warm_members(cluster=0)[0], planted.products(cluster=0)[0]
    event = recommender_pb2.RecordEventRequest(
        member_id=member, item_id=item, event_type="view", channel="douyin"
    )
    ask = recommender_pb2.RecommendProductsRequest(member_id=planted.cold_members[0], k=3, channel="douyin")
    with running_server(settings) as rs:
        assert rs.stub.RecordEvent(event, timeout=5).stored
        assert len(rs.stub.RecommendProducts(ask, timeout=5).items) == 3
        with pytest.raises(grpc.RpcError) as err:
            rs.stub.RecommendProducts(
                recommender_pb2.RecommendProductsRequest(member_id=member, k=3, channel="pos"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("UNKNOWN_CHANNEL: ")
    with running_server(base) as rs, pytest.raises(grpc.RpcError) as err:
        rs.stub.RecordEvent(event, timeout=5)
    assert err.value.details().startswith("UNKNOWN_CHANNEL: ")


def test_the_policy_maps_event_channels_to_outreach_channels(tmp_path: Path) -> None:
    shipped = load_policy(DEFAULT_POLICY_FILE, EVENT_CHANNELS)
    assert shipped.outreach_channel_for("app") == "app_push"
    assert shipped.outreach_channel_for("offline_store") is None
    # A policy without app_push is not refused for the map it never wrote.
    assert parse_policy({"channels": ["sms", "wecom"]}).event_channel_map == {"wecom": "wecom"}
    # Nor is a retailer whose event channels lack app.
    assert load_policy(DEFAULT_POLICY_FILE, ("douyin", "wecom")).event_channel_map == {"wecom": "wecom"}

    retailer = tmp_path / "p.toml"
    retailer.write_text('[event_channel_map]\ndouyin = "app_push"\napp = "app_push"\n')
    assert load_policy(retailer, RETAILER.event_channels).outreach_channel_for("douyin") == "app_push"
    with pytest.raises(ConfigError, match=r"unknown event channel.*douyin"):
        load_policy(retailer, EVENT_CHANNELS)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[event_channel_map]\napp = "push"\n')
    with pytest.raises(ConfigError, match=r"unknown outreach channel.*push"):
        load_policy(wrong)
    res = CliRunner().invoke(app, ["outreach", "validate-policy", str(retailer)])
    assert res.exit_code == 2 and "douyin" in res.output  # the default settings do not declare it
    res = CliRunner().invoke(
        app,
        ["outreach", "validate-policy", str(retailer)],
        env={"RECSVC_DATA__EVENT_CHANNELS": json.dumps(list(RETAILER.event_channels))},
    )
    assert res.exit_code == 0 and "2 event channels mapped" in " ".join(res.output.split())


def test_an_event_channel_given_to_outreach_is_refused_with_its_outreach_name() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_outreach_channel("app", Policy())
    assert err.value.reason == "UNKNOWN_CHANNEL"
    assert "outreach reaches it as 'app_push'" in str(err.value)


@pytest.mark.parametrize(
    ("declare", "named"),
    [('["all"]', "'all' is reserved"), ('["Douyin"]', "lower_snake_case"), ('["pos", "pos"]', "unique")],
)
def test_a_mapping_file_declares_channels_by_the_settings_rule(
    tmp_path: Path, declare: str, named: str
) -> None:
    """ "all" names the popular lists of every channel: an export declaring a channel of that name
    would train two lists under one key."""
    from pipelines.mapping import load_mapping
    from recsvc.errors import DataContractError

    path = tmp_path / "m.toml"
    path.write_text(f"version = 1\n[channels]\ndeclare = {declare}\n", encoding="utf-8")
    with pytest.raises(DataContractError, match=named):
        load_mapping(path)
