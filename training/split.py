"""Step 3: the time-based holdout (and the validation split tuning carves out of training).

Reads: :class:`training.prepare.Prepared` (events and the cutoff), ``holdout_days`` and, for
tuning, ``validation_days`` (time-based validation) or ``validation_share`` (per-member random
validation, for data whose time order carries little signal; ``training.tune`` chooses).
Writes: a :class:`Split`: the events before the holdout start (training), and the test matrix of
members' interactions during the holdout window [start, end] with items they had already
interacted with in training removed (those are filtered from recommendations, so keeping them
would only measure the filter). Only members with training history are tested: members
without it get popularity in serving and have no personalised ranking to measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import scipy.sparse as sp

from training.prepare import DAY_S, EventArrays, Prepared


@dataclass
class Split:
    train: EventArrays
    test: sp.csr_matrix  # binary [members x items], future interactions not seen in training
    seen: sp.csr_matrix  # binary [members x items], any training interaction (filtered when ranking)
    start: int  # epoch seconds: training uses events strictly before this
    end: int  # epoch seconds: last event of the test window

    @property
    def window(self) -> dict[str, str]:
        return {
            "start": datetime.fromtimestamp(self.start, UTC).isoformat(timespec="seconds"),
            "end": datetime.fromtimestamp(self.end, UTC).isoformat(timespec="seconds"),
        }


def time_split(
    events: EventArrays,
    shape: tuple[int, int],
    end: int,
    days: int,
    positive_types: np.ndarray,
) -> Split:
    """Events before ``end - days`` train; positive events in [end - days, end] test.

    ``positive_types`` is a boolean table by event-type code: which events count as relevant.
    """
    start = end - days * DAY_S
    before = events.ts < start
    train = events.select(before)
    future = (~before) & (events.ts <= end) & positive_types[events.etype]
    test = sp.csr_matrix(
        (np.ones(int(future.sum()), dtype=np.float32), (events.member[future], events.item[future])),
        shape=shape,
    )
    test.sum_duplicates()
    test.data[:] = 1.0
    seen = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (train.member, train.item)), shape=shape)
    seen.sum_duplicates()
    seen.data[:] = 1.0
    seen.sort_indices()
    test = test - test.multiply(seen)
    test.eliminate_zeros()
    # members without any training history are not part of the personalised test
    has_history = np.zeros(shape[0], dtype=bool)
    has_history[train.member] = True
    test = sp.diags(has_history.astype(np.float32)) @ test
    test = sp.csr_matrix(test)
    test.eliminate_zeros()
    test.sort_indices()
    return Split(train=train, test=test, seen=seen, start=start, end=end)


def holdout(prepared: Prepared, holdout_days: int, positive_types: np.ndarray) -> Split:
    shape = (len(prepared.members), len(prepared.items))
    return time_split(prepared.events, shape, prepared.cutoff, holdout_days, positive_types)


def validation(
    split: Split, shape: tuple[int, int], validation_days: int, positive_types: np.ndarray
) -> Split:
    """Carve the last ``validation_days`` of the training period: the holdout is never used."""
    return time_split(split.train, shape, split.start - 1, validation_days, positive_types)


# A time validation window with fewer test members than this judges by a few dozen members.
MIN_VALIDATION_MEMBERS = 200
WIDEN = (1, 2, 4)  # multiples of validation_days tried, in order, while the window is thin


def tested_members(s: Split) -> int:
    return int((np.diff(s.test.indptr) > 0).sum())


def widened_validation(
    split: Split, shape: tuple[int, int], validation_days: int, positive_types: np.ndarray
) -> tuple[Split, int]:
    """(the time validation split, its days): ``validation_days``, widened to 2x then 4x while
    it holds fewer than :data:`MIN_VALIDATION_MEMBERS` test members and the window stays within
    half the training span. A wider window of the holdout's own kind resembles the holdout
    better than a random split does on data whose recent weeks carry signal (on MovieLens 100K,
    whose 14-day windows hold 50-70 members, tuning on a random split chose settings that lost
    on the holdout; docs/training.md, "Tuning")."""
    span_days = (split.start - int(split.train.ts.min())) / DAY_S if len(split.train) else 0.0
    chosen = validation(split, shape, validation_days, positive_types), validation_days
    for factor in WIDEN[1:]:
        if tested_members(chosen[0]) >= MIN_VALIDATION_MEMBERS or validation_days * factor > span_days / 2:
            break
        chosen = validation(split, shape, validation_days * factor, positive_types), validation_days * factor
    return chosen


def random_split(
    events: EventArrays,
    shape: tuple[int, int],
    as_of: int,
    share: float,
    positive_types: np.ndarray,
    seed: int,
) -> Split:
    """Per member, a random ``share`` of the distinct items they had a positive event with is
    held out: every event of those (member, item) pairs leaves training and the pairs are the
    test. Members with a single item keep it (nothing would be left to learn them from).
    ``start`` and ``end`` are both ``as_of`` (recency decay is measured from there)."""
    n_items = np.int64(shape[1])
    key = events.member.astype(np.int64) * n_items + events.item.astype(np.int64)
    pairs = np.unique(key[positive_types[events.etype]])
    members = pairs // n_items
    per_member = np.bincount(members, minlength=shape[0])
    rng = np.random.default_rng(seed)
    held = pairs[(rng.random(pairs.shape[0]) < share) & (per_member[members] > 1)]
    out = np.isin(key, held, assume_unique=False)
    train = events.select(~out)
    test = sp.csr_matrix(
        (np.ones(held.shape[0], dtype=np.float32), (held // n_items, held % n_items)), shape=shape
    )
    seen = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (train.member, train.item)), shape=shape)
    seen.sum_duplicates()
    seen.data[:] = 1.0
    seen.sort_indices()
    has_history = np.zeros(shape[0], dtype=bool)
    has_history[train.member] = True
    test = sp.csr_matrix(sp.diags(has_history.astype(np.float32)) @ test)
    test.eliminate_zeros()
    test.sort_indices()
    return Split(train=train, test=test, seen=seen, start=as_of, end=as_of)


def random_validation(
    split: Split, shape: tuple[int, int], share: float, positive_types: np.ndarray, seed: int
) -> Split:
    """A per-member random validation split of the training period (the holdout is never used)."""
    return random_split(split.train, shape, split.start, share, positive_types, seed)
