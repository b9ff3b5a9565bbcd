"""`recsvc train` learns from what the service logged: the sink's kind=event partitions are read
beside the data folder, through the same data contract."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.generate import GeneratorParams, generate
from recsvc.eventlog.feed import load_with_event_log
from recsvc.eventlog.schema import SCHEMAS
from recsvc.eventlog.sink import write_atomically
from recsvc.settings import DataSettings


def test_logged_events_join_the_folder_events_validated_and_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(GeneratorParams(members=200, seed=3, events_per_member=5), data)
    events = pd.read_parquet(data / "events.parquet")
    member, item = str(events["member_id"].iloc[0]), str(events["item_id"].iloc[0])
    known = events.iloc[0].to_dict()
    now = datetime.now(tz=UTC).replace(microsecond=0)
    rows = [
        # new: a purchase the service saw
        dict(
            member_id=member,
            item_id=item,
            event_type="purchase",
            ts=now,
            channel="app",
            quantity=1,
            amount=9.5,
        ),
        # already in the brand's feed: kept once
        {
            **{
                k: known[k]
                for k in ("member_id", "item_id", "event_type", "ts", "channel", "quantity", "amount")
            }
        },
        # a member the folder does not know: quarantined, as in any data folder
        dict(
            member_id="NOBODY",
            item_id=item,
            event_type="click",
            ts=now,
            channel="app",
            quantity=1,
            amount=0.0,
        ),
    ]
    extra = {"recommendation_id": "", "variant": "a", "member": "p_x", "log_id": "1-0"}
    table = pa.Table.from_pylist([{**r, **extra} for r in rows], schema=SCHEMAS["event"])
    write_atomically(table, tmp_path / "log" / "kind=event" / "date=2026-01-01" / "part-0-1_0-3_0.parquet")
    ds = load_with_event_log(data, tmp_path / "log", DataSettings())
    assert len(ds.events) == len(events) + 1  # type: ignore[attr-defined]
    assert ds.counts["eventlog.rows_read"] == 3 and ds.counts["eventlog.rows_clean"] == 1  # type: ignore[attr-defined]
    q = ds.quarantine  # type: ignore[attr-defined]
    assert list(q[q["table"] == "eventlog"]["reason"]) == ["unknown_member"]
    # without log files, the folder alone
    plain = load_with_event_log(data, tmp_path / "nothing", DataSettings())
    assert len(plain.events) == len(events)  # type: ignore[attr-defined]


def test_a_bundle_trained_with_the_log_knows_its_catalog_as_of_the_catalog_file(tmp_path: Path) -> None:
    """The events come in memory (folder + log), the catalog from the folder's file: a live change
    made after that file was written is newer than the bundle and must stay in force."""
    import os

    from settings_factory import build_settings

    from recsvc.bundle import load_bundle
    from training import pipeline

    data = tmp_path / "data"
    generate(GeneratorParams(members=200, seed=3, events_per_member=5), data)
    exported = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    catalog = next(data.glob("catalog.*"))
    os.utime(catalog, (exported, exported))
    ds = load_with_event_log(data, tmp_path / "no-log-yet", DataSettings())
    s = build_settings(tmp_path, training={"factors": 4, "iterations": 2, "eval_members": 100})
    pipeline.run(
        s,
        pipeline.TrainOptions(data_dir=data, bundle_out=tmp_path / "b", register=False, refit=False),
        dataset=ds,  # type: ignore[arg-type]
    )
    manifest = load_bundle(tmp_path / "b").manifest.model_dump()
    assert manifest["catalog_as_of"] == "2026-01-02T03:04:05.000+00:00"
