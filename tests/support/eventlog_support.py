"""What the event-log tests share: reading the Parquet log back, and writing records as a server
process does (used by the event log's contract suite and the erasure tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
from prometheus_client import CollectorRegistry

from recsvc.eventlog.log import KINDS, EventLog, EventLogMetrics, stream_key
from recsvc.redis_client import RedisClient
from recsvc.security.privacy import Pseudonymizer
from recsvc.settings import Settings, load_settings


def read_log(log_dir: Path, kind: str) -> Any:
    folder = log_dir / f"kind={kind}"
    if not folder.exists():
        return None
    return ds.dataset(str(folder), format="parquet", partitioning="hive").to_table().to_pandas()


SHARDS = 4
MEMBERS = [f"M{i:03d}" for i in range(40)]


def log_settings(redis_url: str, tmp_path: Path, **events: object) -> Settings:
    return load_settings(
        overrides={
            "redis": {"url": redis_url},
            "events": {"log_dir": str(tmp_path / "log"), "shards": SHARDS, **events},
        }
    )


def write_records(
    redis_client: RedisClient, settings: Settings, rounds: range | int, members: list[str] = MEMBERS
) -> EventLog:
    """An impression, an event and a decision per member and round, as a server process writes
    them (round ``r`` names them ``r-<member>-<r>``, ``P<r>``, ``res-<member>-<r>``)."""
    elog = EventLog(redis_client, settings, EventLogMetrics(CollectorRegistry()))
    for r in range(rounds) if isinstance(rounds, int) else rounds:
        for m in members:
            elog.impression(
                f"r-{m}-{r}",
                m,
                variant="a",
                model_version="1",
                scene="home",
                channel="app",
                items=["P1", "P2"],
                source="s",
            )
            elog.decision(
                m,
                {
                    "campaign": "c1",
                    "channel": "sms",
                    "allowed": True,
                    "reason": "ALLOWED",
                    "reservation_id": f"res-{m}-{r}",
                },
            )
            assert elog.event(m, {"member_id": m, "item_id": f"P{r}", "event_type": "view", "ts": 1.7e9 + r})
    while elog.flush():
        pass
    return elog


def stream_lengths(redis_client: RedisClient) -> int:
    return sum(int(redis_client.xlen(stream_key("recsvc", s, k))) for s in range(SHARDS) for k in KINDS)


def assert_exactly_once(log_dir: Path, rounds: int, members: list[str] = MEMBERS) -> None:
    """Every record of ``members`` in ``rounds`` is on disk once, and no one else's."""
    pseudo = Pseudonymizer(load_settings().security.pseudonym_key)
    expected_members = {pseudo(m) for m in members}
    for kind in KINDS:
        rows = read_log(log_dir, kind)
        assert rows is not None and len(rows) == len(members) * rounds, kind
        assert set(rows["member"]) == expected_members, kind  # pseudonyms, every member
    # Each record's own identity, every one of them once (stream ids repeat across shards).
    every = {(m, r) for m in members for r in range(rounds)}
    imps = read_log(log_dir, "impression")
    assert imps["recommendation_id"].is_unique
    assert set(imps["recommendation_id"]) == {f"r-{m}-{r}" for m, r in every}
    decisions = read_log(log_dir, "decision")
    assert decisions["reservation_id"].is_unique
    assert set(decisions["reservation_id"]) == {f"res-{m}-{r}" for m, r in every}
    events = read_log(log_dir, "event")
    assert set(zip(events["member_id"], events["item_id"], strict=True)) == {(m, f"P{r}") for m, r in every}
