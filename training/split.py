"""Step 3: the time-based holdout (and the validation split tuning carves out of training).

Reads: :class:`training.prepare.Prepared` (events and the cutoff), ``holdout_days`` and, for
tuning, ``validation_days``.
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
