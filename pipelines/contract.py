"""The data contract: the three tables recsvc reads, their columns and allowed values.

docs/data.md is the prose version of this module; the two change together. Reading lives in
``pipelines.read``, row checks in ``pipelines.validate``, and the generator
(``pipelines.generate``) writes exactly these columns.

A data folder holds one file per table, named for the table: ``events``, ``catalog``,
``members``, each as ``.parquet``, ``.csv`` or ``.csv.gz``.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsvc.bounds import MAX_AMOUNT, MAX_PRICE, MAX_QUANTITY
from recsvc.idmap import ID_CHARSET_DOC, ID_PATTERN
from recsvc.settings import EVENT_CHANNELS, EVENT_TYPES

__all__ = [
    "CATALOG",
    "CONSENT_CHANNELS",
    "CONSENT_COLUMNS",
    "EARLIEST_EVENT_TS",
    "EVENTS",
    "EVENT_CHANNELS",
    "EVENT_TYPES",
    "FEATURED_SEPARATOR",
    "FIXES",
    "ID_CHARSET_DOC",
    "ID_PATTERN",
    "ITEM_KINDS",
    "MAX_AMOUNT",
    "MAX_PRICE",
    "MAX_QUANTITY",
    "MEMBERS",
    "ORDER_ID",
    "TABLES",
    "Reason",
    "TableSpec",
]

# Outreach channels a member can consent to marketing on (the outreach policy's channels).
CONSENT_CHANNELS = ("app_push", "mini_program_subscribe", "wecom", "official_account", "sms")
CONSENT_COLUMNS = tuple(f"consent_{c}" for c in CONSENT_CHANNELS)
ITEM_KINDS = ("product", "content")
# CSV cannot hold lists: content rows list featured products as "p1|p2|p3". Parquet may also
# use a list<string> column.
FEATURED_SEPARATOR = "|"
MAX_TITLE_LENGTH = 200
MAX_LABEL_LENGTH = 64  # category, brand, tier
# The earliest event time a file may hold. History years old is fine (a brand migrating its
# records); an event before 1990 is a placeholder or a broken clock (epoch 0, year 1), and it
# would distort recency, decay weights and lifecycle stages. Amount, price and quantity bounds
# are recsvc.bounds', shared with the API.
EARLIEST_EVENT_TS = "1990-01-01T00:00:00Z"


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    # Columns a file may leave out; they are then treated as empty in every row.
    optional: tuple[str, ...] = ()
    # Columns a file may add (by name or through a mapping file) that inform a check but are no
    # part of the clean table: the events' order_id, which tells repeats from duplicates. Only
    # the pandas reader takes them; Spark's ingest refuses them as unexpected columns.
    extra: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.optional)


# An order, invoice or basket id: events of different orders are never duplicates of each other.
ORDER_ID = "order_id"
EVENTS = TableSpec(
    "events",
    ("member_id", "item_id", "event_type", "ts", "channel", "quantity", "amount"),
    extra=(ORDER_ID,),
)
CATALOG = TableSpec(
    "catalog",
    (
        "item_id",
        "kind",
        "title",
        "category",
        "brand",
        "price",
        "in_stock",
        "published_at",
        "featured_item_ids",
    ),
    # A products-only catalog needs no featured_item_ids column.
    optional=("featured_item_ids",),
)
MEMBERS = TableSpec(
    "members",
    ("member_id", "registered_at", "tier", "timezone", *CONSENT_COLUMNS),
    # Only the id is needed. Defaults (docs/data.md): registered_at unknown, no tier, the outreach
    # policy's default_timezone, consent never answered (= no marketing). The whole table may be
    # absent: the members are then the ones the events name.
    optional=("registered_at", "tier", "timezone", *CONSENT_COLUMNS),
)
TABLES = (CATALOG, MEMBERS, EVENTS)  # validation order: events are checked against the other two


class Reason:
    """Quarantine reason codes: the primary one per bad row is the first check it fails; the row's
    ``problems`` list every check it fails (docs/data.md)."""

    INVALID_UTF8 = "invalid_utf8"
    MISSING_MEMBER_ID = "missing_member_id"
    MISSING_ITEM_ID = "missing_item_id"
    ID_TOO_LONG = "id_too_long"
    BAD_ID_CHARS = "bad_id_chars"
    # a float id that is no exact whole number (12347.5, inf, 1e20): not the id the source holds
    INEXACT_ID = "inexact_id"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    BAD_QUANTITY = "bad_quantity"
    BAD_AMOUNT = "bad_amount"
    NEGATIVE_AMOUNT = "negative_amount"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    MISSING_AMOUNT = "missing_amount"
    UNKNOWN_ITEM = "unknown_item"
    UNKNOWN_MEMBER = "unknown_member"
    DUPLICATE_EVENT = "duplicate_event"
    # catalog
    DUPLICATE_ITEM = "duplicate_item"
    UNKNOWN_KIND = "unknown_kind"
    MISSING_TITLE = "missing_title"
    TITLE_TOO_LONG = "title_too_long"
    MISSING_CATEGORY = "missing_category"
    MISSING_BRAND = "missing_brand"
    LABEL_TOO_LONG = "label_too_long"
    BAD_PRICE = "bad_price"
    NEGATIVE_PRICE = "negative_price"
    PRICE_OUT_OF_RANGE = "price_out_of_range"
    BAD_IN_STOCK = "bad_in_stock"
    MISSING_PUBLISHED_AT = "missing_published_at"
    FEATURED_ON_PRODUCT = "featured_on_product"
    BAD_FEATURED_ID = "bad_featured_id"
    UNKNOWN_FEATURED_ITEM = "unknown_featured_item"
    # members
    DUPLICATE_MEMBER = "duplicate_member"
    MISSING_TIER = "missing_tier"  # no longer raised: tier is optional; kept for old summaries
    UNKNOWN_TIMEZONE = "unknown_timezone"
    BAD_CONSENT = "bad_consent"


# What to do about each reason: the summary and the validation report print it beside the count.
FIXES: dict[str, str] = {
    Reason.INVALID_UTF8: (
        "the text holds U+FFFD, the mark of an earlier lossy conversion: export again from the source system"
    ),
    Reason.MISSING_MEMBER_ID: "every row needs a member_id; drop rows of anonymous visitors",
    Reason.MISSING_ITEM_ID: "every row needs an item_id (SKU or content id)",
    Reason.ID_TOO_LONG: (
        "ids may be at most data.max_id_length UTF-8 bytes: shorten them or raise the setting"
    ),
    Reason.BAD_ID_CHARS: f"ids may hold {ID_CHARSET_DOC} only (no spaces, control characters or braces)",
    Reason.INEXACT_ID: (
        "the id column is floating point and this value is not a whole number below 2**53 "
        "(2**24 for float32): export ids as text or integers"
    ),
    Reason.UNKNOWN_EVENT_TYPE: (
        f"use one of {', '.join(EVENT_TYPES)}, or map yours in the mapping file ([events.values.event_type])"
    ),
    Reason.UNKNOWN_CHANNEL: (
        "map the value to a known channel ([events.values.channel]) or list it in data.event_channels"
    ),
    Reason.BAD_TIMESTAMP: (
        "use ISO-8601 (2026-05-01T10:00:00+08:00) or list your format in [timestamps] formats"
    ),
    Reason.FUTURE_TIMESTAMP: (
        "check the source clock or time zone: without an offset a time "
        "is taken as UTC ([timestamps] default_offset)"
    ),
    Reason.TIMESTAMP_TOO_OLD: "a time before 1990 is a placeholder (epoch 0): fix or drop these rows",
    Reason.BAD_QUANTITY: f"quantity is a whole number 1..{MAX_QUANTITY} (empty = 1)",
    Reason.BAD_AMOUNT: (
        "amount is a number with a decimal point; currency symbols and 1,234.50 parse with a mapping file"
    ),
    Reason.NEGATIVE_AMOUNT: "refunds are not purchases: leave them out",
    Reason.AMOUNT_OUT_OF_RANGE: f"amount is at most {MAX_AMOUNT:,.0f} per event: check the unit (cents?)",
    Reason.MISSING_AMOUNT: "a purchase needs its amount",
    Reason.UNKNOWN_ITEM: (
        "the item is not in the clean catalog: add it there, or fix its catalog row's own problems"
    ),
    Reason.UNKNOWN_MEMBER: (
        "the member is not in the clean members table: add them, fix their row, or leave the members file out"
    ),
    Reason.DUPLICATE_EVENT: (
        "the same event twice (all seven values, and order_id if given): the export overlaps itself "
        "(check its date ranges); if its times are coarse (minutes, or dates only) and these are real "
        'repeats, map the order or invoice number to order_id ([events.columns] Invoice = "order_id")'
    ),
    Reason.DUPLICATE_ITEM: "one row per item_id",
    Reason.UNKNOWN_KIND: "kind is product or content (map yours with [catalog.values.kind])",
    Reason.MISSING_TITLE: "every item needs a title",
    Reason.TITLE_TOO_LONG: f"titles are at most {MAX_TITLE_LENGTH} characters",
    Reason.MISSING_CATEGORY: "every item needs a category (give a default with [catalog.defaults] category)",
    Reason.MISSING_BRAND: "every product needs a brand (give a default with [catalog.defaults] brand)",
    Reason.LABEL_TOO_LONG: f"categories, brands and tiers are at most {MAX_LABEL_LENGTH} characters",
    Reason.BAD_PRICE: "price is a number; currency symbols (￥312.63) and 1,234.50 parse with a mapping file",
    Reason.NEGATIVE_PRICE: "prices are 0 or more",
    Reason.PRICE_OUT_OF_RANGE: f"price is at most {MAX_PRICE:,.0f}: check the unit",
    Reason.BAD_IN_STOCK: (
        "in_stock is true/false (required for products; map yours with [catalog.values.in_stock])"
    ),
    Reason.MISSING_PUBLISHED_AT: "content needs published_at",
    Reason.FEATURED_ON_PRODUCT: "only content rows list featured products",
    Reason.BAD_FEATURED_ID: "featured_item_ids are ids separated by |",
    Reason.UNKNOWN_FEATURED_ITEM: "featured items must be products in the clean catalog",
    Reason.DUPLICATE_MEMBER: "one row per member_id",
    Reason.MISSING_TIER: "tier is optional: leave it empty or give [members.defaults] tier",
    Reason.UNKNOWN_TIMEZONE: "an IANA name such as Asia/Shanghai, or empty for the outreach policy's default",
    Reason.BAD_CONSENT: "consent is true/false, or empty when never asked",
}
