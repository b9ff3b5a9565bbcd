"""Audiences over the served bundle: validate a query, count it, stream its members.

Counting is one vectorised pass over the bundle's member arrays (lifecycle, value tier, outlook,
P(alive), predicted purchases, interest tags), so 1M members count in well under a second.
Consent lives in Redis and changes at any time: a query's ``consent_channel`` is applied
exactly while streaming (one pipelined read per chunk through the throttle), and the count says
it is an upper bound. Erased members (the process's forgotten set, and the Redis suppression
mark while streaming with consent) never appear. PlanCampaign takes the same query by reference
(``AudienceResolver.members``) and decides each member through the throttle, which enforces
consent for the plan's channel itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from recsvc.bundle import LIFECYCLE_STAGES, OUTLOOKS, VALUE_TIERS
from recsvc.errors import InvalidArgument
from recsvc.members.view import ProfileView, profile_view
from recsvc.models.served import ServedModels
from recsvc.v1 import members_pb2

# values per list field of an audience query (a bundle has at most a few thousand categories
# and brands; a longer list is a caller's mistake, and each value is checked)
MAX_VALUES = 1000
CHUNK = 500  # ids per consent read: one pipelined round trip, like a PlanCampaign chunk


@dataclass(frozen=True)
class Audience:
    """A validated query: codes into the bundle's vocabularies (empty = no filter)."""

    stages: tuple[int, ...] = ()
    tiers: tuple[int, ...] = ()
    tags: tuple[int, ...] = ()
    outlooks: tuple[int, ...] = ()
    min_p_alive: float | None = None
    max_p_alive: float | None = None
    min_purchases_30d: float | None = None
    consent_channel: str = ""
    described: list[str] = field(default_factory=list, compare=False)


def _codes(
    values: Collection[str], vocabulary: tuple[str, ...] | list[str], name: str, problems: list[str]
) -> tuple[int, ...]:
    out = []
    for v in values:
        if v in vocabulary:
            out.append(list(vocabulary).index(v))
        else:
            problems.append(f"{name}: unknown value {v[:40]!r} (one of {', '.join(vocabulary)})")
    return tuple(sorted(set(out)))


def parse_query(query: members_pb2.AudienceQuery, view: ProfileView, channels: list[str]) -> Audience:
    """Validate every field; ``InvalidArgument`` (INVALID_AUDIENCE) naming every problem."""
    problems: list[str] = []
    stages = _codes(
        query.lifecycle_stages, view.model.segments or list(LIFECYCLE_STAGES), "lifecycle_stages", problems
    )
    tiers = _codes(query.value_tiers, VALUE_TIERS, "value_tiers", problems)
    outlooks = _codes(query.outlooks, OUTLOOKS, "outlooks", problems)
    tags: set[int] = set()
    for name in ("lifecycle_stages", "value_tiers", "outlooks", "interest_tags"):
        if len(getattr(query, name)) > MAX_VALUES:
            problems.append(f"{name}: {len(getattr(query, name))} values, at most {MAX_VALUES}")
    for tag in query.interest_tags[:MAX_VALUES]:
        found = view.tag_codes.get(tag)
        if found is None:
            problems.append(f"interest_tags: no category or brand {tag[:40]!r} in the served bundle")
        else:
            tags.update(found)

    def bound(
        name: Literal["min_p_alive", "max_p_alive", "min_purchases_30d"], lo: float, hi: float
    ) -> float | None:
        if not query.HasField(name):
            return None
        value = float(getattr(query, name))
        if not (math.isfinite(value) and lo <= value <= hi):
            problems.append(f"{name} must be in [{lo}, {hi}], got {value}")
        return value

    min_p = bound("min_p_alive", 0.0, 1.0)
    max_p = bound("max_p_alive", 0.0, 1.0)
    min_p30 = bound("min_purchases_30d", 0.0, 1e6)
    if min_p is not None and max_p is not None and min_p > max_p:
        problems.append("min_p_alive must not exceed max_p_alive")
    if query.consent_channel and query.consent_channel not in channels:
        problems.append(
            f"consent_channel: unknown channel {query.consent_channel[:40]!r} (one of {', '.join(channels)})"
        )
    if problems:
        raise InvalidArgument("invalid audience query: " + "; ".join(problems), reason="INVALID_AUDIENCE")
    return Audience(
        stages=stages,
        tiers=tiers,
        tags=tuple(sorted(tags)),
        outlooks=outlooks,
        min_p_alive=min_p,
        max_p_alive=max_p,
        min_purchases_30d=min_p30,
        consent_channel=query.consent_channel,
    )


def match(view: ProfileView, audience: Audience, forgotten: Container[str] = ()) -> np.ndarray:
    """bool[members]: who matches the bundle-side filters (consent is not known here)."""
    a = view.arrays
    n = len(view.model.members)
    mask = np.ones(n, dtype=bool)
    if audience.stages:
        mask &= _isin(np.asarray(view.model.member_segment), audience.stages, 256)
    if audience.tiers:
        mask &= _isin(a["profile_value_tier"], audience.tiers, 256)
    if audience.outlooks:
        mask &= _isin(a["profile_outlook"], audience.outlooks, 256)
    if audience.min_p_alive is not None or audience.max_p_alive is not None:
        p = np.asarray(a["profile_p_alive"])
        with np.errstate(invalid="ignore"):  # NaN (never bought) matches no bound
            if audience.min_p_alive is not None:
                mask &= p >= audience.min_p_alive
            if audience.max_p_alive is not None:
                mask &= p <= audience.max_p_alive
    if audience.min_purchases_30d is not None:
        mask &= np.asarray(a["profile_purchases_30d"]) >= audience.min_purchases_30d
    if audience.tags:
        n_tags = view.spec.categories + len(view.model.brands)
        mask &= _isin(a["profile_tag"], audience.tags, n_tags).any(axis=1)
    erased = list(forgotten) if isinstance(forgotten, Iterable) else []
    if erased:
        rows = view.model.members.rows(np.asarray(erased, dtype=str))
        mask[rows[rows >= 0]] = False
    return mask


def _isin(codes: np.ndarray, wanted: tuple[int, ...], size: int) -> np.ndarray:
    """``np.isin`` for codes in -1..size-1 (-1 = none) by one table look-up: ~10x faster than
    ``np.isin`` on a million rows, which sorts."""
    table = np.zeros(size + 1, dtype=bool)
    table[np.asarray(wanted, dtype=np.int64) + 1] = True
    arr = np.asarray(codes)
    if arr.dtype.kind == "u":
        arr = arr.astype(np.int16)  # uint8 codes: room for the +1 below
    return table[arr + 1]


ConsentReader = Callable[[list[str], str], list[bool]]


class AudienceResolver:
    """Queries against whatever bundle serves now (the default variant)."""

    def __init__(
        self,
        models: ServedModels,
        forgotten: Callable[[], Container[str]],
        channels: Callable[[], list[str]],
    ) -> None:
        self._models = models
        self._forgotten = forgotten
        self._channels = channels

    def view(self) -> ProfileView:
        _, model = self._models.default()
        return profile_view(model)

    def forgotten(self) -> Container[str]:
        """The members erased in this process (the bundle's rows of theirs are not to be read)."""
        return self._forgotten()

    def resolve(self, query: members_pb2.AudienceQuery) -> tuple[ProfileView, Audience, np.ndarray]:
        view = self.view()
        audience = parse_query(query, view, self._channels())
        return view, audience, match(view, audience, self._forgotten())

    def members(
        self, query: members_pb2.AudienceQuery, consents: ConsentReader | None = None
    ) -> Iterator[str]:
        """Member ids of the query, in bundle order; with ``consents``, a consent_channel filter
        is applied exactly. Validates before the first id is asked for."""
        view, audience, mask = self.resolve(query)
        return stream_ids(view, audience, mask, consents, None, forgotten=self._forgotten())


@dataclass
class StreamTally:
    streamed: int = 0
    left_out: int = 0


def stream_ids(
    view: ProfileView,
    audience: Audience,
    mask: np.ndarray,
    consents: ConsentReader | None,
    tally: StreamTally | None,
    chunk: int = CHUNK,
    forgotten: Container[str] = (),
) -> Iterator[str]:
    rows = np.flatnonzero(mask)
    for start in range(0, rows.shape[0], chunk):
        ids = view.model.members.ids(rows[start : start + chunk].tolist())
        if audience.consent_channel and consents is not None:
            ok = consents(ids, audience.consent_channel)
            kept = [m for m, yes in zip(ids, ok, strict=True) if yes]
            if tally is not None:
                tally.left_out += len(ids) - len(kept)
            ids = kept
        for member_id in ids:
            if member_id in forgotten:  # erased after the count was made
                continue
            if tally is not None:
                tally.streamed += 1
            yield member_id
