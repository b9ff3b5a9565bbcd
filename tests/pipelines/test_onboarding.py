"""Bring your own data: a Chinese retailer's export (GBK, Unicode SKU and member ids, douyin/taobao/
pos channels, ￥ prices, a members table of member_id and registered_at only) trains in one pass
with a mapping file, and its Unicode ids round-trip through the bundle, the gRPC API and outreach.
The export is built here from the project's generator; no data file is committed."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from serving_harness import running_server, serving_settings
from typer.testing import CliRunner

from pipelines.mapping import load_mapping
from pipelines.validate import validate_dir
from recsvc.bundle import load_bundle
from recsvc.cli import app
from recsvc.errors import DataContractError, InvalidArgument
from recsvc.idmap import IdMap, id_problem, normalize_id
from recsvc.outreach.ask_checks import check_channel
from recsvc.outreach.ask_checks import check_id as outreach_check_id
from recsvc.outreach.policy import Policy
from recsvc.server.request_checks import check_id
from recsvc.settings import EVENT_CHANNELS, DataSettings
from recsvc.v1 import outreach_pb2, outreach_pb2_grpc, recommender_pb2
from training import gate

DATA = DataSettings()

MAPPING = """
version = 1

[events]
ignore = ["store_name"]
[events.columns]
"会员号" = "member_id"
sku = "item_id"
action = "event_type"
"下单时间" = "ts"
qty = "quantity"
pay_amount = "amount"
[events.values.event_type]
"浏览" = "view"
"购买" = "purchase"
[events.values.channel]
pos = "offline_store"

[catalog.columns]
sku = "item_id"
sku_name = "title"
unit_price = "price"
[catalog.values.kind]
"商品" = "product"
"内容" = "content"

[members.columns]
"会员号" = "member_id"
[members.defaults]
tier = "member"

[timestamps]
default_offset = "+08:00"
formats = ["%Y/%m/%d %H:%M:%S"]

[channels]
declare = ["douyin", "taobao"]
"""

_CHANNELS = {"offline_store": "pos", "app": "douyin", "mini_program": "taobao"}


def _member(mid: str) -> str:
    return f"会员:138{mid}"


def _item(iid: str) -> str:
    return f"母婴/奶粉-900g#{iid}"


def _local(ts: pd.Series) -> pd.Series:
    t = pd.to_datetime(ts, utc=True, format="ISO8601").dt.tz_convert("Asia/Shanghai")
    return t.dt.strftime("%Y/%m/%d %H:%M:%S").where(t.notna(), "")


def _retailer_export(folder: Path, generated: Path) -> Path:
    """The generator's tables as a retailer's system exports them."""
    folder.mkdir(parents=True, exist_ok=True)
    read = {
        n: pd.read_csv(generated / f"{n}.csv", dtype=str, keep_default_na=False)
        for n in ("events", "catalog", "members")
    }
    cat = read["catalog"]
    cat["item_id"] = cat["item_id"].map(_item)
    cat["featured_item_ids"] = cat["featured_item_ids"].map(
        lambda v: "|".join(_item(x) for x in v.split("|") if x)
    )
    cat["kind"] = cat["kind"].map({"product": "商品", "content": "内容"})
    cat["price"] = [f"￥{float(p):,.2f}" for p in cat["price"]]
    cat["published_at"] = _local(cat["published_at"].replace("", None))
    cat = cat.rename(columns={"item_id": "sku", "title": "sku_name", "price": "unit_price"})
    members = pd.DataFrame(
        {
            "会员号": read["members"]["member_id"].map(_member),
            "registered_at": _local(read["members"]["registered_at"]),
        }
    )
    ev = read["events"]
    ev = pd.DataFrame(
        {
            "会员号": ev["member_id"].map(_member),
            "sku": ev["item_id"].map(_item),
            "action": ev["event_type"].replace({"view": "浏览", "purchase": "购买"}),
            "下单时间": _local(ev["ts"]),
            "channel": ev["channel"].replace(_CHANNELS),
            "qty": ev["quantity"],
            "pay_amount": [f"￥{float(a):,.2f}" if a else "" for a in ev["amount"]],
            "store_name": "上海南京西路店",
        }
    )
    for name, df in (("catalog", cat), ("members", members), ("events", ev)):
        df.to_csv(folder / f"{name}.csv", index=False, encoding="gbk")
    (folder.parent / "mapping.toml").write_text(MAPPING, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "data"
    res = CliRunner().invoke(
        app, ["data", "generate", "--out", str(out), "--members", "600", "--seed", "3", "--format", "csv"]
    )
    assert res.exit_code == 0, res.output
    return out


def test_ids_are_unicode_nfc_and_limited_in_bytes_by_one_rule() -> None:
    for good in ("母婴/奶粉-900g#2", "会员:13800001111", "user@example.com", "हिन्दी-1", "P_1.2"):
        assert id_problem(good, 64) is None, good
    for bad in ("P 1", "M{1}", "a|b", "M\x00", "a\u202eb", "", "P1\n", "P1\r\n", "\nP1"):
        assert id_problem(bad, 64) is not None, repr(bad)
    assert id_problem("母" * 22, 64) == "too_long"  # 66 bytes, 22 characters
    decomposed = unicodedata.normalize("NFD", "Café-1")
    assert decomposed != "Café-1"
    # The API answers with the NFC form, the form files are normalised to: one id, not two.
    assert check_id(decomposed, "member_id", DATA) == "Café-1"
    assert outreach_check_id(decomposed, "member_id", 64) == "Café-1"
    with pytest.raises(InvalidArgument) as err:
        check_id("母" * 22, "member_id", DATA)
    assert err.value.reason == "MEMBER_ID_TOO_LONG" and "bytes" in str(err.value)
    ids = IdMap.from_values(["会员:2", "会员:10", "M1", normalize_id(decomposed)])
    assert [ids.id(ids.row(x) or 0) for x in ("会员:2", "会员:10", "M1", "Café-1")] == [
        "会员:2",
        "会员:10",
        "M1",
        "Café-1",
    ]
    assert list(ids.rows(["会员:10", "nope"]) >= 0) == [True, False]


def test_wrong_outreach_channel_has_a_reason_not_a_doubled_code() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_channel("app", Policy())
    assert err.value.reason == "UNKNOWN_CHANNEL"
    assert str(err.value).startswith("UNKNOWN_CHANNEL: unknown channel 'app'")


def test_member_table_needs_only_member_id_and_may_be_absent(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "catalog.csv").write_text(
        "item_id,kind,title,category,brand,price,in_stock,published_at\nP1,product,Tea,tea,B,10,true,\n"
    )
    (folder / "members.csv").write_text("member_id,timezone\nM1,\nM2,Asia/Tokyo\n")
    (folder / "events.csv").write_text(
        "member_id,item_id,event_type,ts,channel,quantity,amount\nM1,P1,view,2026-05-01T00:00:00Z,app,,\n"
    )
    now = pd.Timestamp("2026-06-01T00:00:00Z").to_pydatetime()
    result = validate_dir(folder, DATA, now=now)
    assert result.rows_quarantined == 0  # an empty timezone is the policy's default, not a problem
    assert list(result.members["timezone"]) == ["", "Asia/Tokyo"] and list(result.members["tier"]) == ["", ""]
    assert result.members["consent_sms"].isna().all()  # never answered: no marketing
    (folder / "members.csv").unlink()
    result = validate_dir(folder, DATA, now=now)
    assert list(result.members["member_id"]) == ["M1"] and result.tables["members"].source is None


def test_every_problem_of_a_row_is_listed_with_fixes_in_the_summary(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "catalog.csv").write_text(
        "item_id,kind,title,category,brand,price,in_stock,published_at\n"
        "P 1,product,Tea,tea,B,abc,true,\nP2,product,Tea,tea,B,10,true,\n"
    )
    (folder / "members.csv").write_text("member_id,timezone\nM1,Mars/Base\n")
    (folder / "events.csv").write_text("member_id,item_id,event_type,ts,channel,quantity,amount\n")
    result = validate_dir(folder, DATA, now=pd.Timestamp("2026-06-01T00:00:00Z").to_pydatetime())
    q = result.tables["catalog"].quarantine
    assert list(q["reason"]) == ["bad_id_chars"]  # one primary reason for counts
    assert q.loc[0, "problems"] == "bad_id_chars: item_id='P 1'; bad_price: price='abc'"
    problems = result.summary()["tables"]["catalog"]["problems"]
    assert problems["bad_price"]["rows"] == 1 and "mapping file" in problems["bad_price"]["fix"]
    assert problems["bad_id_chars"]["examples"] == ["row 0: item_id='P 1'"]


def test_gate_never_promotes_a_model_below_the_popularity_baseline() -> None:
    first = gate.decide(0.096, None, tolerance=0.02, force=False, baseline=0.118)
    assert not first.promote and "below the popularity baseline" in first.reason
    forced = gate.decide(0.096, None, tolerance=0.02, force=True, baseline=0.118)
    assert forced.promote and forced.forced and forced.reason.startswith("FORCED")
    better = gate.decide(0.2, None, tolerance=0.02, force=False, baseline=0.118)
    assert better.promote


def test_mapping_parses_money_time_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MAPPING, encoding="utf-8")
    mapping = load_mapping(path)
    assert mapping is not None
    df = pd.DataFrame(
        {
            "amount": ["￥1,234.50", "RMB 12", "12,5", ""],
            "ts": ["2026/05/01 10:00:00", "2026-05-01 10:00:00", "2026-05-01T02:00:00Z", "x"],
            "channel": ["pos", "douyin", "app", ""],
        }
    )
    out = mapping.apply("events", df)
    assert list(out["amount"]) == ["1234.50", "12", "12,5", ""]  # a decimal comma is never guessed
    assert list(out["ts"][:3]) == [
        "2026-05-01T10:00:00.000000+08:00",
        "2026-05-01 10:00:00+08:00",
        "2026-05-01T02:00:00Z",
    ]
    assert list(out["channel"]) == ["offline_store", "douyin", "app", ""]
    bad = tmp_path / "bad.toml"
    bad.write_text('[timestamps]\ndefault_offset = "CST"\n')
    with pytest.raises(DataContractError, match="default_offset"):
        load_mapping(bad)


def test_mapping_time_formats_keep_the_zone_read_epochs_and_refuse_bad_directives(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[timestamps]\ndefault_offset = "+08:00"\n'
        'formats = ["%d/%m/%Y %H:%M:%S %z", "%d/%m/%Y %H:%M", "epoch_ms"]\n'
    )
    mapping = load_mapping(path)
    assert mapping is not None
    text = [
        "01/05/2026 10:00:00 +0800",
        "01/05/2026 10:00:00 -0130",
        "01/05/2026 10:00",
        "1777629600000",
        "x",
    ]
    out = mapping.apply("events", pd.DataFrame({"ts": text}))
    # an offset in the value is honoured (mixed offsets in one file too); none: default_offset
    got = pd.to_datetime(out["ts"][:4], utc=True, format="ISO8601")
    want = ["2026-05-01T02:00Z", "2026-05-01T11:30Z", "2026-05-01T02:00Z", "2026-05-01T10:00Z"]
    assert list(got) == list(pd.to_datetime(want, utc=True))
    assert out["ts"][4] != "" and pd.isna(pd.to_datetime(out["ts"][4], errors="coerce"))  # left to quarantine
    # typed epoch numbers (a Parquet int64 column) read the same way
    typed = mapping.apply("events", pd.DataFrame({"ts": np.array([1777629600000], dtype=np.int64)}))
    assert pd.Timestamp(typed["ts"][0]) == pd.Timestamp("2026-05-01T10:00Z")
    for fmt in ("%Q", "%Y-%m-%d %"):
        path.write_text(f'[timestamps]\nformats = ["{fmt}"]\n')
        with pytest.raises(DataContractError, match=r"not a strptime format.*epoch_s"):
            load_mapping(path)


@pytest.mark.slow
@pytest.mark.integration
def test_retailer_export_trains_in_one_pass_and_ids_round_trip(
    tmp_path: Path, generated: Path, redis_url: str
) -> None:
    export = _retailer_export(tmp_path / "export", generated)
    mapping = str(tmp_path / "mapping.toml")
    assert "母婴".encode("gbk") in (export / "catalog.csv").read_bytes()
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "data",
            "validate",
            str(export),
            "--mapping",
            mapping,
            "--report",
            str(tmp_path / "r.html"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    events = summary["tables"]["events"]
    assert events["encoding"] == "gb18030"
    assert events["rows_quarantined"] <= 0.05 * events["rows_read"], events["problems"]
    assert summary["tables"]["catalog"]["rows_quarantined"] == 0, summary["tables"]["catalog"]["problems"]
    report = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Events per channel" in report and "douyin" in report and "<svg" in report

    env = {
        "RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "RECSVC_MLFLOW__ARTIFACT_LOCATION": str(tmp_path / "artifacts"),
        "RECSVC_TRAINING__FACTORS": "16",
        "RECSVC_TRAINING__ITERATIONS": "8",
        "RECSVC_TRAINING__EVAL_MEMBERS": "500",
        # The retailer's channels, for training and the API alike (the mapping declares them too).
        "RECSVC_DATA__EVENT_CHANNELS": json.dumps([*EVENT_CHANNELS, "douyin", "taobao"]),
    }
    bundle_dir = tmp_path / "bundle"
    res = runner.invoke(
        app, ["train", "--data", str(export), "--mapping", mapping, "--bundle-out", str(bundle_dir)], env=env
    )
    assert res.exit_code == 0, res.output
    assert "PROMOTED" in res.output
    bundle = load_bundle(bundle_dir)
    member = _member("M00001") if _member("M00001") in bundle.members else bundle.members.id(0)
    assert member.startswith("会员:138")
    assert all(i.startswith("母婴/奶粉-900g#") for i in bundle.items.ids(range(len(bundle.items))))
    assert {"douyin", "taobao", "offline_store"} <= set(bundle.popular["channel"])  # lists of their own

    settings = serving_settings(str(bundle_dir), redis_url, tmp_path)
    settings = settings.model_copy(
        update={"data": DataSettings(event_channels=(*EVENT_CHANNELS, "douyin", "taobao"))}
    )
    with running_server(settings, with_outreach=True) as rs:
        resp = rs.stub.RecommendProducts(recommender_pb2.RecommendProductsRequest(member_id=member, k=5))
        assert resp.items and all(it.item_id in bundle.items for it in resp.items)
        on_douyin = rs.stub.RecommendProducts(
            recommender_pb2.RecommendProductsRequest(member_id=member, k=5, channel="douyin")
        )
        assert on_douyin.items
        rs.stub.RecordEvent(
            recommender_pb2.RecordEventRequest(
                member_id=member, item_id=resp.items[0].item_id, event_type="view", channel="douyin"
            )
        )
        similar = rs.stub.SimilarItems(
            recommender_pb2.SimilarItemsRequest(item_id=resp.items[0].item_id, k=3)
        )
        assert all(it.item_id.startswith("母婴/奶粉-900g#") for it in similar.items)
        out = outreach_pb2_grpc.OutreachStub(rs.channel)
        decision = out.CheckOutreach(outreach_pb2.OutreachRequest(member_id=member, channel="app_push"))
        assert not decision.allowed  # no consent column in the export: never answered, no marketing
        out.UpdateConsent(
            outreach_pb2.UpdateConsentRequest(member_id=member, channel="app_push", granted=True)
        )
        with pytest.raises(grpc.RpcError) as err:
            out.CheckOutreach(outreach_pb2.OutreachRequest(member_id=member, channel="app"))
        assert err.value.details().startswith("UNKNOWN_CHANNEL: ")


def test_too_much_quarantine_stops_training_with_one_line(tmp_path: Path, generated: Path) -> None:
    export = _retailer_export(tmp_path / "export", generated)
    env = {"RECSVC_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    # Without the mapping nearly everything is wrong: the columns even. With the columns renamed
    # but nothing else mapped, most events are quarantined and training must not go on.
    mapping = tmp_path / "columns-only.toml"
    mapping.write_text(
        MAPPING.split("[timestamps]")[0].replace('pos = "offline_store"', ""), encoding="utf-8"
    )
    res = CliRunner().invoke(app, ["train", "--data", str(export), "--mapping", str(mapping)], env=env)
    assert res.exit_code == 2, res.output
    assert "too much quarantined" in res.output and "summary.json" in res.output
    assert "--allow-quarantine" in res.output
    assert (export / "quarantine" / "summary.json").exists()
    assert np.isfinite(json.loads((export / "quarantine" / "summary.json").read_text())["rows_quarantined"])


def test_expert_grid_reads_a_mapped_export_as_train_does(
    tmp_path: Path, generated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented comparison with bare implicit takes the export's mapping (no traceback)."""
    import argparse
    import sys

    from bench.experiments import expert_grid

    export = _retailer_export(tmp_path / "export", generated)
    # without the mapping: the one-line contract error recsvc train gives, exit code 2
    monkeypatch.setattr(sys, "argv", ["expert_grid", "--data", str(export)])
    with pytest.raises(SystemExit) as stop:
        expert_grid.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("expert_grid: ") and "wrong columns" in err and "Traceback" not in err
    args = argparse.Namespace(
        data=export, mapping=export.parent / "mapping.toml", encoding=None, allow_quarantine=False
    )
    h = expert_grid._load(args)
    assert h.shape[0] > 0 and h.shape[1] > 0
