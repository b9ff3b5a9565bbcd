"""A/B variants: each variant's model source and share, and every member's stable bucket."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from recsvc.models.resolve import MODELS_SCHEME
from recsvc.settings import Settings

DEFAULT_VARIANT = "default"


def bucket(member_id: str) -> float:
    """A member's stable position in [0, 1): the same in every process, replica and release."""
    digest = hashlib.blake2b(member_id.encode("utf-8"), digest_size=8, person=b"recsvc-ab").digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class VariantSource:
    name: str
    uri: str
    share: float


def variant_sources(settings: Settings) -> list[VariantSource]:
    s = settings.serving
    if not s.variants:
        return [VariantSource(DEFAULT_VARIANT, s.model_uri, 1.0)]
    return [
        VariantSource(v.name, f"{MODELS_SCHEME}{settings.mlflow.model_name}@{v.alias}", v.share)
        for v in s.variants
    ]
