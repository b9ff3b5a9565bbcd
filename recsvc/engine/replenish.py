"""Replenishment: a consumable a member bought comes back into their product list when it is due.

Training (training/replenish.py) learns each item's typical repeat-purchase interval (its own
where it has enough repeats, else its category's; 0 for categories that are not repurchased,
i.e. durables) and stores it in the bundle with the time of each member's last purchase of each
item. Here is the one rule both serving and training's evaluation apply: an item is due when
the days since its last purchase lie in ``[interval * (1 - early), interval * (1 + late)]``.
Not yet due, or long overdue (the member has moved on), it stays excluded like any purchase.
"""

from __future__ import annotations

import numpy as np

DAY_S = 86_400.0


def due_mask(interval_days: np.ndarray, age_days: np.ndarray, early: float, late: float) -> np.ndarray:
    """Which purchases are due again: the item is repurchased at all (interval > 0) and the age
    of the last purchase lies in the window around its interval."""
    return (
        (interval_days > 0)
        & (age_days >= interval_days * (1.0 - early))
        & (age_days <= interval_days * (1.0 + late))
    )


def due_windows(
    indptr: np.ndarray,
    indices: np.ndarray,
    last_ts: np.ndarray,
    interval_days: np.ndarray,
    early: float,
    late: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) day per member on which one of their purchases may be due (see
    ``ServedModel.due_window``), from the CSR of their purchases (``indptr``, item rows
    ``indices``, last purchase times ``last_ts``); (inf, -inf) for a member with no
    repurchasable purchase. Widened by a day each side: a quick "nothing due" is never wrong."""
    members = indptr.shape[0] - 1
    first = np.full(members, np.inf, dtype=np.float32)
    last = np.full(members, -np.inf, dtype=np.float32)
    if indices.shape[0] == 0:
        return first, last
    interval = interval_days[indices].astype(np.float64)
    bought_day = last_ts.astype(np.float64) / DAY_S
    repeat = interval > 0
    start = np.where(repeat, bought_day + interval * (1.0 - early) - 1.0, np.inf)
    end = np.where(repeat, bought_day + interval * (1.0 + late) + 1.0, -np.inf)
    starts = np.asarray(indptr[:-1], dtype=np.int64)
    some = np.asarray(indptr[1:], dtype=np.int64) > starts
    first[some] = np.minimum.reduceat(start, starts[some])
    last[some] = np.maximum.reduceat(end, starts[some])
    return first, last


def placement(n_picks: int, n_due: int, k: int, after: int) -> tuple[int, int]:
    """(position of the first due item, how many due items) in a list of ``k``: after the first
    ``after`` picks, earlier when the list would otherwise have no room for them."""
    n = min(n_due, k)
    return max(0, min(after, k - n, n_picks)), n


def splice(
    picks: np.ndarray, scores: np.ndarray, due: np.ndarray, due_scores: np.ndarray, k: int, after: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The list of ``k`` with the due items placed after the first ``after`` picks (earlier when
    the list is shorter than ``after`` + due items): (rows, scores, is_due)."""
    at, n_due = placement(picks.shape[0], due.shape[0], k, after)
    rows = np.concatenate([picks[:at], due[:n_due], picks[at:]])[:k]
    sc = np.concatenate([scores[:at], due_scores[:n_due], scores[at:]])[:k]
    flag = np.zeros(rows.shape[0], dtype=bool)
    flag[at : at + n_due] = True
    return rows.astype(np.int64), sc.astype(np.float32), flag
