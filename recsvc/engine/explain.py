"""Stage 5 of a member call, explain: for each pick the history item that contributed most
(the largest dot product of vectors), and the reason text shown with it.
"""

from __future__ import annotations

import numpy as np

from recsvc.catalog.view import CatalogView
from recsvc.engine.kernels import best_history_rows
from recsvc.engine.member_state import MemberState

REASON_HISTORY_MAX = 100  # history items considered for reasons (heaviest first)


def explain(view: CatalogView, picks: np.ndarray, state: MemberState) -> np.ndarray:
    """The history row each pick's reason names (-1: none)."""
    return reason_rows(view, picks, state.hist_rows, state.hist_w, state.ev_rows, state.ev_w)


def reason_rows(
    view: CatalogView,
    picks: np.ndarray,
    hist_rows: np.ndarray,
    hist_w: np.ndarray,
    ev_rows: np.ndarray,
    ev_w: np.ndarray,
) -> np.ndarray:
    """For each pick, the history item whose vector has the largest dot product with the pick's
    vector; -1 (no "because you ...") where that product is not above 0, as for a pick without a
    vector (a filler scored 0 is like nothing the member did), and for all when the member has no
    history."""
    if ev_rows.shape[0]:
        rows = np.concatenate([hist_rows.astype(np.int64), ev_rows])
        weights = np.concatenate([hist_w.astype(np.float32), ev_w])
    else:
        rows, weights = hist_rows, hist_w
    if rows.shape[0] == 0 or picks.shape[0] == 0:
        return np.full(picks.shape[0], -1, dtype=np.int64)
    if rows.shape[0] > REASON_HISTORY_MAX:
        rows = rows[np.argpartition(-weights, REASON_HISTORY_MAX - 1)[:REASON_HISTORY_MAX]]
    rows, picks = rows.astype(np.int64), picks.astype(np.int64)
    if view.new_ids and max(int(rows.max()), int(picks.max())) >= view.n:
        # New items' vectors live in the view: compare over a small gathered copy.
        both = np.concatenate([rows, picks])
        local = np.arange(both.shape[0], dtype=np.int64)
        gathered = view.factors(both)
        found = np.asarray(
            best_history_rows(gathered, local[: rows.shape[0]], local[rows.shape[0] :]), np.int64
        )
        return _related(gathered, found, local[rows.shape[0] :], rows[found])
    # An item both in the history and in recent events appears twice: harmless for argmax.
    best = np.asarray(best_history_rows(view.model.item_factors, rows, picks), dtype=np.int64)
    return _related(view.model.item_factors, best, picks, best)


def _related(factors: np.ndarray, best: np.ndarray, picks: np.ndarray, named: np.ndarray) -> np.ndarray:
    """``named`` (the reason rows of ``best``), -1 where the best match's dot product with the
    pick is not above 0."""
    ok = best >= 0
    dots = np.zeros(best.shape[0], dtype=np.float32)
    if ok.any():
        a = np.asarray(factors[best[ok]], dtype=np.float32)
        b = np.asarray(factors[picks[ok]], dtype=np.float32)
        dots[ok] = np.einsum("ij,ij->i", a, b)
    return np.where(ok & (dots > 0), named, -1).astype(np.int64)


def reason_texts(
    view: CatalogView,
    picks: np.ndarray,
    because: np.ndarray,
    state: MemberState,
    scores: np.ndarray | None = None,
) -> list[str]:
    """ "because you bought/viewed <title>" for each reason row; -1: "recommended for you"; a new
    item: "new in <category>", ", which you buy" when the member bought in it; with the bundle's
    trend prior and the picks' ``scores``, a pick that owes more to the trend than to the member:
    "trending: popular in the last <trend_days> days"."""
    bought = set(state.bought.tolist())
    titles = view.titles
    out = [
        f"because you {'bought' if b in bought else 'viewed'} {titles[b]}"
        if b >= 0
        else "recommended for you"
        for b in because.tolist()
    ]
    prior = view.model.trend
    if prior is not None and scores is not None and picks.shape[0]:
        for i in np.flatnonzero(prior.led(np.asarray(picks), scores)).tolist():
            out[i] = f"trending: popular in the last {prior.days} days"
    if view.new_ids:
        n = view.n
        for i, p in enumerate(np.asarray(picks).tolist()):
            if p >= n:
                out[i] = new_reason(view, p, state.bought)
    return out


def new_reason(view: CatalogView, row: int, bought: np.ndarray) -> str:
    """e.g. "new in Tea, which you buy" (the member bought in the item's category)."""
    category = view.category_name(row)
    cat = int(view.item_category[row])
    bought = bought[(bought >= 0) & (bought < view.item_category.shape[0])]
    if bought.shape[0] and bool((view.item_category[bought.astype(np.int64)] == cat).any()):
        return f"new in {category}, which you buy"
    return f"new in {category}"
