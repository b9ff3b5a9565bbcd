"""Row checks of the two reference tables, catalog and members: events are checked against the
ids these tables accept (:mod:`pipelines.validate_events`). The rules, in the order a row's
primary reason is chosen, are in docs/data.md.
"""

from __future__ import annotations

import logging
import zoneinfo
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.contract import (
    CATALOG,
    CONSENT_COLUMNS,
    ITEM_KINDS,
    MAX_PRICE,
    MAX_TITLE_LENGTH,
    MEMBERS,
    Reason,
)
from pipelines.rows import (
    TableResult,
    Verdicts,
    booleans,
    check_id,
    check_label,
    check_utf8,
    clip,
    dup_of_ok,
    featured_lists,
    latest,
    numbers,
    one_line,
    text,
    timestamps,
    unparsable,
)
from recsvc.idmap import id_problem, normalize_id
from recsvc.settings import DataSettings

log = logging.getLogger(__name__)


def validate_catalog(raw: pd.DataFrame, source: Path, settings: DataSettings) -> TableResult:
    v = Verdicts(raw)
    check_utf8(v, CATALOG.columns)
    item_id = check_id(v, "item_id", Reason.MISSING_ITEM_ID, settings.max_id_length)
    kind = text(raw["kind"]).str.strip()
    v.flag(~kind.isin(ITEM_KINDS), Reason.UNKNOWN_KIND, "kind")
    is_product = (kind == "product").to_numpy(dtype=bool)
    is_content = (kind == "content").to_numpy(dtype=bool)
    title = one_line(text(raw["title"]))
    v.flag(title == "", Reason.MISSING_TITLE, "title")
    v.flag(title.str.len() > MAX_TITLE_LENGTH, Reason.TITLE_TOO_LONG, "title")
    category = check_label(v, "category", Reason.MISSING_CATEGORY, np.ones(len(raw), dtype=bool))
    # Editorial content may belong to no brand; a product always has one.
    brand = check_label(v, "brand", Reason.MISSING_BRAND, is_product)
    price = numbers(raw["price"])
    v.flag(price.isna() | ~np.isfinite(price.fillna(0)), Reason.BAD_PRICE, "price")
    v.flag(price < 0, Reason.NEGATIVE_PRICE, "price")
    v.flag(price > MAX_PRICE, Reason.PRICE_OUT_OF_RANGE, "price")
    in_stock, bad_bool = booleans(raw["in_stock"])
    # Content is never out of stock; a product must say whether it is.
    v.flag(bad_bool | (is_product & in_stock.isna().to_numpy(dtype=bool)), Reason.BAD_IN_STOCK, "in_stock")
    published_at = timestamps(raw["published_at"])
    published_bad = unparsable(raw["published_at"], published_at)
    v.flag(published_bad, Reason.BAD_TIMESTAMP, "published_at")
    # the live catalog stores it as seconds since 1970 (0 = unknown) and refuses earlier times:
    # a file the service would refuse in `catalog sync` is refused here, before a dry run says yes
    v.flag(
        (published_at < pd.Timestamp(1970, 1, 1, tz="UTC")).to_numpy(dtype=bool),
        Reason.BAD_TIMESTAMP,
        "published_at",
    )
    v.flag(
        is_content & published_at.isna().to_numpy(dtype=bool) & ~published_bad,
        Reason.MISSING_PUBLISHED_AT,
        "published_at",
    )
    featured = featured_lists(raw["featured_item_ids"])
    has_featured = featured.map(len).to_numpy() > 0
    v.flag(is_product & has_featured, Reason.FEATURED_ON_PRODUCT, "featured_item_ids")
    featured = featured.map(lambda ids: tuple(normalize_id(i) for i in ids)).astype(object)
    bad_ref = featured.map(lambda ids: any(id_problem(i, settings.max_id_length) for i in ids))
    v.flag(bad_ref.to_numpy(dtype=bool), Reason.BAD_FEATURED_ID, "featured_item_ids")
    # Duplicates are judged among rows that passed, so a bad first copy does not hide a good one.
    v.flag(dup_of_ok(item_id, v.ok), Reason.DUPLICATE_ITEM, "item_id")
    products = set(item_id[v.ok & is_product])
    missing_refs = featured.map(lambda ids: [i for i in ids if i not in products])
    has_missing = missing_refs.map(len).to_numpy() > 0
    details = np.array(
        [f"featured_item_ids not products in the catalog: {clip(', '.join(m))}" for m in missing_refs],
        dtype=object,
    )
    v.flag_detail(
        is_content & has_missing & ~bad_ref.to_numpy(dtype=bool), Reason.UNKNOWN_FEATURED_ITEM, details
    )
    clean = pd.DataFrame(
        {
            "item_id": item_id,
            "kind": pd.Categorical(kind.where(kind.isin(ITEM_KINDS), None), categories=list(ITEM_KINDS)),
            "title": title,
            "category": category,
            "brand": brand,
            "price": price,
            "in_stock": in_stock.fillna(True).astype(bool),
            "published_at": published_at,
            "featured_item_ids": featured,
        }
    )
    return v.result(CATALOG, source, clean)


def validate_members(raw: pd.DataFrame, source: Path, settings: DataSettings, now: datetime) -> TableResult:
    v = Verdicts(raw)
    check_utf8(v, MEMBERS.columns)
    member_id = check_id(v, "member_id", Reason.MISSING_MEMBER_ID, settings.max_id_length)
    # Only member_id is required (docs/data.md): an empty registered_at is unknown, an empty tier
    # is no tier, an empty timezone is the outreach policy's default_timezone, and an empty
    # consent cell is a question never answered, which outreach treats as no.
    registered_at = timestamps(raw["registered_at"])
    v.flag(unparsable(raw["registered_at"], registered_at), Reason.BAD_TIMESTAMP, "registered_at")
    v.flag(registered_at > latest(now, settings), Reason.FUTURE_TIMESTAMP, "registered_at")
    tier = check_label(v, "tier", None, np.ones(len(raw), dtype=bool))
    timezone = text(raw["timezone"]).str.strip()
    v.flag(~timezone.isin(_timezones()) & (timezone != ""), Reason.UNKNOWN_TIMEZONE, "timezone")
    consents = {}
    for col in CONSENT_COLUMNS:
        consents[col], bad = booleans(raw[col])
        v.flag(bad, Reason.BAD_CONSENT, col)
    v.flag(dup_of_ok(member_id, v.ok), Reason.DUPLICATE_MEMBER, "member_id")
    clean = pd.DataFrame(
        {
            "member_id": member_id,
            "registered_at": registered_at,
            "tier": tier,
            "timezone": timezone,
            **consents,
        }
    )
    return v.result(MEMBERS, source, clean)


def _timezones() -> list[str]:
    from recsvc.outreach.policy import NOT_A_PLACE

    return sorted(zoneinfo.available_timezones() - NOT_A_PLACE)
