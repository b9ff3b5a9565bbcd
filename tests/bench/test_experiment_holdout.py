"""bench/experiments/holdout.py: earlier holdout windows of one data set, as `--windows` pools them."""

from __future__ import annotations

from bench.experiments import holdout
from recsvc.settings import load_settings
from training import prepare
from training.prepare import DAY_S
from training.synthetic import make_dataset


def test_a_window_back_is_the_data_as_it_stood_then_split_as_training_splits_it() -> None:
    s = load_settings()
    prepared = prepare.prepare(make_dataset(members=300, events_per_member=30, days=120, seed=3))
    now = holdout.split_at(prepared, s, 0)
    back = holdout.split_at(prepared, s, 28)
    assert now.prepared is prepared
    # nothing after the earlier cutoff is left, in training or in the test window
    assert back.prepared.cutoff <= prepared.cutoff - 28 * DAY_S
    assert int(back.prepared.events.ts.max()) == back.prepared.cutoff
    assert back.split.end == back.prepared.cutoff
    assert back.split.start == back.prepared.cutoff - s.training.holdout_days * DAY_S
    assert back.split.test.nnz > 0 and back.split.test.shape == now.split.test.shape
    # the earlier window's test events are training events of today's split
    assert back.split.end < now.split.start
