"""Recommendation ids across a rotation of ``security.pseudonym_key`` (docs/privacy.md, "Pseudonyms"):
minted under the current key only, accepted under the current key or a listed previous one."""

from __future__ import annotations

import pytest

from recsvc.errors import InvalidArgument
from recsvc.eventlog.ids import RecommendationIds

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
MINTED_MS = 1_700_000_000_123


def _refused(ids: RecommendationIds, rec_id: str, member_id: str) -> str:
    with pytest.raises(InvalidArgument) as err:
        ids.check(rec_id, member_id)
    return err.value.reason


def test_an_id_minted_before_a_rotation_is_accepted_while_the_old_key_is_listed() -> None:
    rid = RecommendationIds(KEY_A).new("M1", now_ms=MINTED_MS)
    assert RecommendationIds(KEY_B, [KEY_A]).check(rid, "M1") == MINTED_MS
    # the old key listed behind others, as after a second rotation
    assert RecommendationIds("key-c-0123456789abcdef", [KEY_B, KEY_A]).check(rid, "M1") == MINTED_MS


def test_an_id_minted_before_a_rotation_is_refused_once_the_old_key_is_gone() -> None:
    rid = RecommendationIds(KEY_A).new("M1", now_ms=MINTED_MS)
    assert _refused(RecommendationIds(KEY_B), rid, "M1") == "RECOMMENDATION_OF_ANOTHER_MEMBER"


def test_an_old_key_does_not_make_another_members_id_acceptable() -> None:
    rid = RecommendationIds(KEY_A).new("M1", now_ms=MINTED_MS)
    rotated = RecommendationIds(KEY_B, [KEY_A])
    assert _refused(rotated, rid, "M2") == "RECOMMENDATION_OF_ANOTHER_MEMBER"
    assert _refused(rotated, rid[:-1] + ("0" if rid[-1] != "0" else "1"), "M1") == (
        "RECOMMENDATION_OF_ANOTHER_MEMBER"
    )
    assert _refused(rotated, "r-not-an-id", "M1") == "RECOMMENDATION_ID_MALFORMED"


def test_a_list_served_to_no_member_before_a_rotation_may_still_be_named_by_any_member() -> None:
    rid = RecommendationIds(KEY_A).new("", now_ms=MINTED_MS)  # a SimilarItems list
    assert RecommendationIds(KEY_B, [KEY_A]).check(rid, "anyone") == MINTED_MS
    assert _refused(RecommendationIds(KEY_B), rid, "anyone") == "RECOMMENDATION_OF_ANOTHER_MEMBER"


def test_new_ids_are_minted_under_the_current_key_only() -> None:
    rid = RecommendationIds(KEY_B, [KEY_A]).new("M1", now_ms=MINTED_MS)
    assert RecommendationIds(KEY_B).check(rid, "M1") == MINTED_MS
    assert _refused(RecommendationIds(KEY_A), rid, "M1") == "RECOMMENDATION_OF_ANOTHER_MEMBER"
    # the current key listed as a previous one too (a half-done rotation) changes nothing
    assert RecommendationIds(KEY_B, [KEY_B]).check(rid, "M1") == MINTED_MS
