"""The generator: deterministic for a seed, contract-clean, and the structure it plants is there
(tastes, long tail, funnels, repurchases, content matching tastes, seasonality, lifecycle)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.contract import CONSENT_COLUMNS
from pipelines.generate import GeneratorParams, generate
from pipelines.validate import validate_dir
from recsvc.cli import app
from recsvc.settings import DataSettings

PARAMS = GeneratorParams(members=1500, seed=7)
END = pd.Timestamp(PARAMS.end)


@dataclass
class Generated:
    folder: Path
    events: pd.DataFrame
    catalog: pd.DataFrame
    members: pd.DataFrame
    truth_members: pd.DataFrame
    truth_items: pd.DataFrame


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    folder = tmp_path_factory.mktemp("gen")
    generate(PARAMS, folder)
    result = validate_dir(folder, DataSettings())
    assert result.rows_quarantined == 0, result.summary()
    return Generated(
        folder,
        result.events,
        result.catalog,
        result.members,
        pd.read_parquet(folder / "truth" / "members.parquet"),
        pd.read_parquet(folder / "truth" / "items.parquet"),
    )


def _with_truth(g: Generated, events: pd.DataFrame) -> pd.DataFrame:
    return events.merge(
        g.truth_members[["member_id", "primary_group", "lifecycle_plan"]], on="member_id"
    ).merge(g.truth_items[["item_id", "group", "cycle_days"]], on="item_id")


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    small = GeneratorParams(members=300, seed=11)
    generate(small, tmp_path / "a")
    generate(small, tmp_path / "b")
    generate(small.model_copy(update={"seed": 12}), tmp_path / "c")
    for name in ("events", "catalog", "members"):
        a = pd.read_parquet(tmp_path / "a" / f"{name}.parquet")
        b = pd.read_parquet(tmp_path / "b" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b)
    a = pd.read_parquet(tmp_path / "a" / "events.parquet")
    c = pd.read_parquet(tmp_path / "c" / "events.parquet")
    assert len(a) != len(c) or not a.equals(c)


def test_sizes_follow_the_parameters(gen: Generated) -> None:
    assert len(gen.members) == PARAMS.members
    kinds = gen.catalog["kind"].value_counts()
    assert kinds["product"] == PARAMS.n_products and kinds["content"] == PARAMS.n_content
    # Events per member are calibrated to the requested average (within a loose band).
    assert (
        0.75 * PARAMS.events_per_member < len(gen.events) / PARAMS.members < 1.25 * PARAMS.events_per_member
    )
    report = json.loads((gen.folder / "generation.json").read_text())
    assert report["rows"]["events"] == len(gen.events)


def test_default_sizes_scale_from_1k_to_1m_members() -> None:
    assert GeneratorParams().n_products == 5000 and GeneratorParams().n_content == 500
    assert 400 <= GeneratorParams(members=1000).n_products <= 600
    assert 90_000 <= GeneratorParams(members=1_000_000).n_products <= 110_000


def test_taste_group_members_buy_their_groups_items_far_more_than_chance(gen: Generated) -> None:
    buys = _with_truth(gen, gen.events[gen.events["event_type"] == "purchase"])
    own = (buys["primary_group"] == buys["group"]).mean()
    # Chance: the share of purchasable products in a random group is about 1 / groups.
    chance = (gen.truth_items["group"].value_counts(normalize=True) ** 2).sum()
    assert own > 5 * chance
    assert own > 0.5


def test_personalization_beats_popularity_on_held_out_purchases(gen: Generated) -> None:
    """Using only the data (no truth): rank products by popularity weighted by the member's share
    of interactions in each category, versus global popularity; hit rate@10 on each member's
    last purchase, held out."""
    products = gen.catalog[gen.catalog["kind"] == "product"].reset_index(drop=True)
    ev = gen.events.merge(products[["item_id", "category"]], on="item_id").sort_values("ts")
    last = ev[ev["event_type"] == "purchase"].groupby("member_id").tail(1)
    train = ev.drop(index=last.index)
    pop = train["item_id"].value_counts().reindex(products["item_id"], fill_value=0).to_numpy(dtype=float)
    cats, cat_of_item = np.unique(products["category"], return_inverse=True)
    share = pd.crosstab(train["member_id"], train["category"], normalize="index").reindex(
        columns=cats, fill_value=0
    )
    last = last[last["member_id"].isin(share.index)]
    scores = share.loc[last["member_id"]].to_numpy()[:, cat_of_item] * pop
    top_pers = np.argsort(-scores, axis=1)[:, :10]
    top_pop = np.argsort(-pop)[:10]
    target = pd.Index(products["item_id"]).get_indexer(last["item_id"])
    hits_pers = (top_pers == target[:, None]).any(axis=1).sum()
    hits_pop = np.isin(target, top_pop).sum()
    assert len(last) > 300
    assert hits_pers > 2 * hits_pop


def test_item_popularity_has_a_long_tail(gen: Generated) -> None:
    counts = gen.events[gen.events["item_id"].str.startswith("P")]["item_id"].value_counts()
    top_tenth = counts.iloc[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top_tenth > 0.4
    assert counts.median() < counts.mean() / 1.5


def test_every_online_purchase_follows_an_add_to_cart(gen: Generated) -> None:
    ev = gen.events
    buys = ev[(ev["event_type"] == "purchase") & (ev["channel"] != "offline_store")]
    carts = ev[ev["event_type"] == "add_to_cart"]
    first_cart = carts.groupby(["member_id", "item_id"])["ts"].min().rename("cart_ts")
    joined = buys.join(first_cart, on=["member_id", "item_id"])
    assert len(joined) > 100
    assert joined["cart_ts"].notna().all()
    assert (joined["cart_ts"] <= joined["ts"]).all()
    # And the funnel narrows: views > carts > purchases.
    n = ev["event_type"].value_counts()
    assert n["view"] > 2 * n["add_to_cart"] > 0
    assert n["add_to_cart"] > n[["purchase"]].sum() - (ev["channel"] == "offline_store").sum()


def test_consumables_are_bought_again_more_than_durables(gen: Generated) -> None:
    buys = _with_truth(gen, gen.events[gen.events["event_type"] == "purchase"])
    per_pair = buys.groupby(["member_id", "item_id", "cycle_days"]).size().reset_index(name="n")
    repeat = per_pair.assign(again=per_pair["n"] > 1).groupby(per_pair["cycle_days"] > 0)["again"].mean()
    assert repeat[True] > 3 * repeat[False]


def test_content_is_consumed_by_matching_tastes_and_features_its_groups_products(gen: Generated) -> None:
    views = _with_truth(gen, gen.events[gen.events["event_type"].isin(["content_view", "live_watch"])])
    assert len(views) > 200
    assert (views["primary_group"] == views["group"]).mean() > 0.5
    group = gen.truth_items.set_index("item_id")["group"]
    content = gen.catalog[gen.catalog["kind"] == "content"]
    same = [
        group[p] == group[c]
        for c, feats in zip(content["item_id"], content["featured_item_ids"], strict=True)
        for p in feats
    ]
    assert all(len(f) >= 1 for f in content["featured_item_ids"])
    assert np.mean(same) == 1.0
    # Some fresh content has no interactions yet (cold start for the training issue).
    assert (~content["item_id"].isin(gen.events["item_id"])).any()


def test_weekends_are_busier_than_weekdays(gen: Generated) -> None:
    local = gen.events["ts"].dt.tz_convert("Asia/Shanghai")
    per_weekday = local.dt.day_of_week.value_counts()
    assert per_weekday[5] > 1.15 * per_weekday[[0, 1, 2]].mean()


def test_lifecycle_new_dormant_and_churned_members(gen: Generated) -> None:
    last = gen.events.groupby("member_id")["ts"].max()
    plans = gen.truth_members.set_index("member_id")["lifecycle_plan"]
    no_history = ~gen.members["member_id"].isin(last.index)
    new = gen.members["registered_at"] > END - pd.Timedelta(days=30)
    assert (no_history & new).sum() > 5  # new members without any events
    dormant = last[plans.reindex(last.index) == "dormant"]
    churned = last[plans.reindex(last.index) == "churned"]
    assert len(dormant) > 20 and len(churned) > 20
    assert (dormant < END - pd.Timedelta(days=118)).all()
    assert (churned < END - pd.Timedelta(days=238)).all()
    assert (last[plans.reindex(last.index) == "active"] > END - pd.Timedelta(days=60)).mean() > 0.5


def test_no_event_before_registration_or_publication(gen: Generated) -> None:
    ev = gen.events.merge(gen.members[["member_id", "registered_at"]], on="member_id")
    ev = ev.merge(gen.catalog[["item_id", "published_at"]], on="item_id")
    assert (ev["ts"] >= ev["registered_at"]).all()
    assert (ev["ts"] >= ev["published_at"]).all()
    assert ev["ts"].max() <= END


def test_time_zones_consent_mix_and_tiers(gen: Generated) -> None:
    tz = gen.members["timezone"].value_counts(normalize=True)
    assert tz["Asia/Shanghai"] > 0.6 and len(tz) >= 5
    for col in CONSENT_COLUMNS:
        values = gen.members[col]
        assert values.isna().mean() > 0.03  # never answered
        assert 0.05 < values.dropna().astype(bool).mean() < 0.95
    assert set(gen.members["tier"]) >= {"basic", "silver", "gold"}
    spend = gen.events.groupby("member_id")["amount"].sum()
    tiers = gen.members.set_index("member_id")["tier"].reindex(spend.index)
    assert spend[tiers == "gold"].min() >= spend[tiers == "basic"].max()


def test_csv_output_is_contract_clean_and_same_rows(tmp_path: Path) -> None:
    small = GeneratorParams(members=200, seed=3)
    generate(small, tmp_path / "pq")
    generate(small, tmp_path / "csv", fmt="csv")
    a = validate_dir(tmp_path / "pq", DataSettings())
    b = validate_dir(tmp_path / "csv", DataSettings())
    assert a.rows_quarantined == 0 and b.rows_quarantined == 0
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.members, b.members)


def test_planted_bad_events_are_exactly_what_validation_quarantines(tmp_path: Path) -> None:
    report = generate(GeneratorParams(members=200, seed=5, bad_event_share=0.02), tmp_path)
    assert len(report.planted_bad_events) == 9
    result = validate_dir(tmp_path, DataSettings())
    assert result.tables["events"].reason_counts == dict(sorted(report.planted_bad_events.items()))


def test_cli_generate_then_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--members", "100", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "generated 100 members" in res.output
    assert runner.invoke(app, ["data", "validate", str(tmp_path), "--strict"]).exit_code == 0
    res = runner.invoke(
        app, ["data", "generate", "--out", str(tmp_path), "--members", "100", "--format", "xml"]
    )
    assert res.exit_code == 2 and "parquet or csv" in res.output


def test_chunked_generation_covers_every_member_and_stays_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.generate as generator

    monkeypatch.setattr(generator, "CHUNK_MEMBERS", 70)
    params = GeneratorParams(members=300, seed=4, bad_event_share=0.01)
    report = generate(params, tmp_path, fmt="csv")
    result = validate_dir(tmp_path, DataSettings())
    assert result.tables["events"].reason_counts == dict(sorted(report.planted_bad_events.items()))
    active = result.events["member_id"].unique()
    # Members of every chunk have events (ids run M000001..M000300 across 5 chunks).
    assert {int(m[1:]) // 70 for m in active} == {0, 1, 2, 3, 4}
    assert report.rows["events"] == result.tables["events"].rows_read


def test_generated_text_never_starts_with_a_formula_trigger(gen: Generated) -> None:
    # The generator writes the data contract itself, unescaped, so its CSVs round-trip exactly;
    # that is only safe to open in a spreadsheet while no text cell starts with = + - @ tab CR.
    from recsvc.csvsafe import TRIGGERS

    for frame in (gen.catalog, gen.members):
        for col in frame.columns:
            if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
                text = frame[col].dropna().astype(str)
                assert not text.str.startswith(TRIGGERS).any(), col


def test_members_have_planted_active_hours_in_their_own_time_zone(gen: Generated) -> None:
    """Most of a member's sessions start in their planted local window (send-time tests and the
    measurement in docs/profiles.md rely on it); by chance a 2-hour window holds ~1/12."""
    from pipelines.generate.members import ACTIVE_WINDOW_HOURS

    ev = gen.events.merge(gen.members[["member_id", "timezone"]], on="member_id").merge(
        gen.truth_members[["member_id", "active_start_hour"]], on="member_id"
    )
    local_hour = pd.Series(0, index=ev.index)
    for zone, part in ev.groupby("timezone"):
        local_hour[part.index] = pd.to_datetime(part["ts"], utc=True).dt.tz_convert(str(zone)).dt.hour
    inside = (local_hour - ev["active_start_hour"]) % 24 < ACTIVE_WINDOW_HOURS
    assert inside.mean() > 0.4
    per_member = inside.groupby(ev["member_id"]).mean()
    assert (per_member > 0.3).mean() > 0.8


def test_cli_expands_a_quoted_tilde_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o '~/x'` (quoted, or from a script) writes to $HOME/x: no folder named "~" in the working
    directory, no table written elsewhere; `data validate` takes "~" in its paths the same way."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "generate", "-o", "~/x", "--members", "20"])
    assert res.exit_code == 0, res.output
    assert {"catalog.parquet", "members.parquet", "events.parquet"} <= {
        p.name for p in (home / "x").iterdir()
    }
    assert not (cwd / "~").exists()
    res = runner.invoke(app, ["data", "validate", "~/x", "-q", "~/q", "--json"])
    assert res.exit_code == 0, res.output
    assert (home / "q" / "summary.json").is_file() and not (cwd / "~").exists()
