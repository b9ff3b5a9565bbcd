"""How often a send lands in the member's planted active window: best send time vs a fixed time.

Generates a data set whose members have planted local active windows (pipelines/generate:
``truth/members.parquet`` ``active_start_hour``, 2 hours long, 60 % of sessions), computes each
member's active hours from the events before the holdout, exactly as training does
(training/profiles.py), chooses their send window as serving does (recsvc.members.sendtime with
the shipped policy: own hours from 10 events, else the lifecycle segment's, else 12:00) and
counts the members whose send (at the chosen window's opening, local time) falls inside their
planted window, against one fixed send time for everyone (the policy default 12:00, and the best
single hour in hindsight). Training never reads ``truth/``; only this measurement does.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.experiments.send_time --members 5000

Records: docs/profiles.md. A one-off measurement, not part of the test suite (~20 s at 5,000).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads

import numpy as np
import pandas as pd

from pipelines.generate import generate
from pipelines.generate.members import ACTIVE_WINDOW_HOURS
from pipelines.generate.params import GeneratorParams
from pipelines.ingest import load_dataset
from recsvc.bundle import LIFECYCLE_STAGES
from recsvc.members.sendtime import SendTimes
from recsvc.outreach.policy import load_policy
from recsvc.settings import DataSettings, TrainingSettings
from training import prepare, profiles, segments
from training.prepare import DAY_S


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    policy = load_policy()
    t = TrainingSettings()
    with tempfile.TemporaryDirectory() as tmp_name:
        folder = Path(tmp_name) / "data"
        generate(GeneratorParams(members=args.members, seed=args.seed), folder)
        data = load_dataset(folder, DataSettings())
        truth = pd.read_parquet(folder / "truth" / "members.parquet")
        prepared = prepare.prepare(data)
        zones = profiles.member_timezones(data.members, prepared.members)
    as_of = prepared.cutoff - t.holdout_days * DAY_S  # choose from history before the holdout
    ev = prepared.events.select(prepared.events.ts < as_of)
    _, stage = segments.member_segments(prepared, t, events=ev, as_of=as_of)
    hours = profiles.active_hours(ev, zones, len(prepared.members), policy.default_timezone)
    segment_hours = {
        name: profiles.hour_shares(hours[stage == code].sum(axis=0, dtype=np.int64))
        for code, name in enumerate(LIFECYCLE_STAGES)
    }
    times = SendTimes(policy, segment_hours)
    stages = [LIFECYCLE_STAGES[int(c)] for c in stage]
    start, source = times.choose_many(hours, stages)
    planted = (
        truth.set_index("member_id")["active_start_hour"]
        .reindex(prepared.members.ids(range(len(prepared.members))))
        .to_numpy()
    )
    known = ~np.isnan(planted.astype(float))
    planted = planted[known].astype(int)
    start, source = start[known], source[known]

    def lands(send_hour: np.ndarray | int) -> np.ndarray:
        return np.asarray((send_hour - planted) % 24 < ACTIVE_WINDOW_HOURS)

    best_fixed = max(range(24), key=lambda h: float(lands(h).mean()))
    rows = [
        ("best send time (all members)", lands(start)),
        ("  members with >= 10 events (own hours)", lands(start)[source == 0]),
        ("  members on the segment fallback", lands(start)[source == 1]),
        ("  members on the policy fallback", lands(start)[source == 2]),
        (f"fixed {policy.send_time.default_start} (policy default)", lands(policy.send_time.default_hour)),
        (f"fixed {best_fixed:02d}:00 (best single hour in hindsight)", lands(best_fixed)),
    ]
    print(f"{args.members} members, seed {args.seed}, planted window {ACTIVE_WINDOW_HOURS} h")
    for label, hit in rows:
        share = f"{hit.mean():6.1%}" if hit.size else "     -"
        print(f"{label:<48} {share}  ({hit.size} members)")


if __name__ == "__main__":
    main()
