"""What the quality experiments start from: a data folder read and split as ``recsvc train``
reads and splits it (today's settings, the time-based holdout)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from recsvc.settings import Settings, load_settings
from training import prepare, split
from training.confidence import weight_table
from training.fit import AlsParams, resolve_weighting


@dataclass
class Holdout:
    settings: Settings
    prepared: prepare.Prepared
    params: AlsParams  # the defaults, from the settings
    positive: np.ndarray  # event types that count as relevant
    shape: tuple[int, int]  # members x items
    split: split.Split


def load(data: Path) -> Holdout:
    s = load_settings()
    return split_at(prepare.prepare(prepare.load(data, s.data)), s, 0)


def split_at(prepared: prepare.Prepared, s: Settings, back_days: int) -> Holdout:
    """The data as it stood ``back_days`` before its last event, split as ``recsvc train`` splits
    it: earlier holdout windows of one data set, pooled, judge small data by more members."""
    if back_days:
        ev = prepared.events.select(prepared.events.ts <= prepared.cutoff - back_days * prepare.DAY_S)
        prepared = replace(prepared, events=ev, cutoff=int(ev.ts.max()))
    params = AlsParams.from_settings(s.training)
    positive = weight_table(params.event_weights) > 0
    hold = split.holdout(prepared, s.training.holdout_days, positive)
    params, _ = resolve_weighting(params, hold.seen, s.training.bm25_auto_items)
    return Holdout(s, prepared, params, positive, (len(prepared.members), len(prepared.items)), hold)
