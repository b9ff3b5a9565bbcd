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
    "ID_CHARSET_DOC",
    "ID_PATTERN",
    "ITEM_KINDS",
    "MAX_AMOUNT",
    "MAX_PRICE",
    "MAX_QUANTITY",
    "MEMBERS",
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

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.optional)


EVENTS = TableSpec(
    "events",
    ("member_id", "item_id", "event_type", "ts", "channel", "quantity", "amount"),
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
)
TABLES = (CATALOG, MEMBERS, EVENTS)  # validation order: events are checked against the other two


class Reason:
    """Quarantine reason codes: one per bad row, the first check it fails (docs/data.md)."""

    INVALID_UTF8 = "invalid_utf8"
    MISSING_MEMBER_ID = "missing_member_id"
    MISSING_ITEM_ID = "missing_item_id"
    ID_TOO_LONG = "id_too_long"
    BAD_ID_CHARS = "bad_id_chars"
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
    MISSING_TIER = "missing_tier"
    UNKNOWN_TIMEZONE = "unknown_timezone"
    BAD_CONSENT = "bad_consent"
