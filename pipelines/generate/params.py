"""What the data generator can be told, with defaults that reproduce the documented sample.

Sizes not given scale with the member count: products ≈ 5,000 × (members / 20,000)^0.77 (500 at
1k members, 5k at 20k, ~100k at 1M) and content = products / 10.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class GeneratorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    members: int = Field(20_000, ge=20, le=5_000_000)
    seed: int = Field(0, ge=0)
    products: int | None = Field(None, ge=20, le=2_000_000)
    content: int | None = Field(None, ge=0, le=500_000)
    events_per_member: float = Field(50.0, gt=0, le=1000, description="average over all members")
    taste_groups: int = Field(24, ge=2, le=256)
    history_days: int = Field(365, ge=30, le=3 * 365)
    # The last instant of generated history. Fixed (not "now") so a seed always gives the same data.
    end: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    # Share of a member's picks from their primary taste group, secondary group; the rest
    # follows global popularity. Lower focus = weaker personalization signal.
    primary_focus: float = Field(0.75, ge=0, le=1)
    secondary_focus: float = Field(0.15, ge=0, le=1)
    new_share: float = Field(0.06, ge=0, le=0.5, description="registered in the last 30 days")
    new_without_history: float = Field(0.4, ge=0, le=1, description="of new members: no events at all")
    dormant_share: float = Field(0.12, ge=0, le=0.5, description="last active 120-240 days before end")
    churned_share: float = Field(0.10, ge=0, le=0.5, description="last active more than 240 days before end")
    bad_event_share: float = Field(0.0, ge=0, le=0.2, description="events corrupted on purpose (demo)")

    @field_validator("end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _shares(self) -> GeneratorParams:
        if self.primary_focus + self.secondary_focus > 1:
            raise ValueError("primary_focus + secondary_focus must be at most 1")
        if self.new_share + self.dormant_share + self.churned_share >= 1:
            raise ValueError("new_share + dormant_share + churned_share must be below 1")
        return self

    @property
    def n_products(self) -> int:
        if self.products is not None:
            return self.products
        return max(50, round(5000 * (self.members / 20_000) ** 0.77))

    @property
    def n_content(self) -> int:
        if self.content is not None:
            return self.content
        return max(5, self.n_products // 10)
