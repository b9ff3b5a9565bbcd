"""A MovieLens-like copy of a data folder: most members active only for a short burst.

Public benchmark sets such as MovieLens hold members who rated most of what they ever rated
within days, at any point of a span of years, so the time of an event says little about the
member's taste now and a recency decay measured from the cutoff weighs most history away. This
copies a folder written by ``recsvc data generate`` (each member's events in the same order) and
moves the events of a ``--share`` of the members into a burst: it starts at a random point of
the folder's span (earlier points more likely, Beta(1, 2)) and lasts an exponential number of
days (mean 5, at most 60). The other members keep their times. docs/training.md uses it:

    recsvc data generate --out /tmp/ml/base --members 30000 --seed 21 --history-days 1095 \\
        --events-per-member 60
    python -m bench.experiments.bursty /tmp/ml/base /tmp/ml/ml --share 0.8
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

DAY_S = 86_400


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--share", type=float, default=0.8, help="share of members made bursty")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shutil.copytree(args.source, args.out, dirs_exist_ok=True)
    events = pd.read_parquet(args.source / "events.parquet")
    ts = (events["ts"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype("int64")
    member = events["member_id"]
    first, last = ts.groupby(member).transform("min"), ts.groupby(member).transform("max")
    ids = member.unique()
    bursty = pd.Series(rng.random(len(ids)) < args.share, index=ids)
    start = pd.Series(ts.min() + (ts.max() - ts.min()) * rng.beta(1.0, 2.0, len(ids)), index=ids)
    length = pd.Series(np.minimum(rng.exponential(5 * DAY_S, len(ids)), 60 * DAY_S), index=ids)
    # each member's events keep their order and relative spacing, squeezed into the burst
    along: np.ndarray = ((ts - first) / np.maximum(last - first, 1)).to_numpy()
    moved = np.minimum(member.map(start).to_numpy() + along * member.map(length).to_numpy(), ts.max())
    new_ts = np.where(member.map(bursty).to_numpy(), moved, ts.to_numpy()).astype("int64")
    events["ts"] = pd.to_datetime(new_ts, unit="s", utc=True)
    events.to_parquet(args.out / "events.parquet", index=False)
    print(f"{int(bursty.sum()):,} of {len(ids):,} members made bursty; {len(events):,} events -> {args.out}")


if __name__ == "__main__":
    main()
