"""The served bundle's member profile material, opened once per loaded model.

Reads: a ``ServedModel``'s bundle: the ``profile_*`` arrays and ``Manifest.profiles``
(training/profiles.py), the ``segments`` table (RFM and lifecycle, training/segments.py), the
member segment array and the category and brand vocabularies.
Gives: row look-ups for one profile and whole columns for audience counting. Built on the first
call after a model load and kept while that model object serves (a reload builds a new one).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from recsvc.bundle import PROFILE_ARRAYS, ProfileSpec
from recsvc.engine.served_model import ServedModel
from recsvc.errors import ProfilesUnavailable

_RFM_COLUMNS = ("recency_days", "frequency", "monetary", "r", "f", "m", "rfm_score")


@dataclass
class ProfileView:
    # held weakly: views are cached per model in a weak-keyed map whose values must not keep
    # their key (a swapped-out bundle) alive
    _model: weakref.ref[ServedModel]
    spec: ProfileSpec
    arrays: dict[str, np.ndarray]
    rfm: dict[str, np.ndarray]
    tag_codes: dict[str, list[int]]  # "category:tea", "brand:B1" and bare "tea" -> tag codes
    data_as_of_ms: int

    @property
    def model(self) -> ServedModel:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this profile view was unloaded")
        return model

    @property
    def bundle_id(self) -> str:
        return self.model.manifest.bundle_id

    def tag(self, code: int) -> tuple[str, str]:
        return self.spec.tag_name(code, self.model.categories, self.model.brands)

    def timezone(self, row: int) -> str | None:
        code = int(self.arrays["profile_timezone"][row])
        return self.spec.timezones[code] if 0 <= code < len(self.spec.timezones) else None


_views: weakref.WeakKeyDictionary[ServedModel, ProfileView] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def profile_view(model: ServedModel) -> ProfileView:
    """The model's view, built once (``ProfilesUnavailable`` when the bundle has no profiles)."""
    view = _views.get(model)
    if view is not None:
        return view
    with _lock:
        view = _views.get(model)
        if view is None:
            view = _views[model] = _build(model)
    return view


def _build(model: ServedModel) -> ProfileView:
    spec = model.manifest.profiles
    arrays = model.bundle.arrays
    if spec is None or any(name not in arrays for name in PROFILE_ARRAYS):
        raise ProfilesUnavailable(
            f"bundle {model.manifest.bundle_id} has no member profiles; retrain with "
            "training.profiles = true (docs/profiles.md)"
        )
    table = model.bundle.segments
    n = len(model.members)
    rfm: dict[str, np.ndarray] = {}
    if len(table) == n:
        # training writes the segments table in member row order; check the ends cheaply
        ids = table["member_id"]
        if n == 0 or (
            str(ids.iloc[0]) == model.members.id(0) and str(ids.iloc[-1]) == model.members.id(n - 1)
        ):
            rfm = {c: table[c].to_numpy() for c in _RFM_COLUMNS if c in table}
    if not rfm:
        rows = model.members.rows(table["member_id"].astype(str).to_numpy())
        ok = rows >= 0
        for c in _RFM_COLUMNS:
            col = np.zeros(n, dtype=table[c].to_numpy().dtype)
            col[rows[ok]] = table[c].to_numpy()[ok]
            rfm[c] = col
    tag_codes: dict[str, list[int]] = {}
    for code, name in enumerate(model.categories):
        if name:
            tag_codes.setdefault(f"category:{name}", []).append(code)
            tag_codes.setdefault(name, []).append(code)
    for code, name in enumerate(model.brands):
        if name:
            tag_codes.setdefault(f"brand:{name}", []).append(spec.categories + code)
            tag_codes.setdefault(name, []).append(spec.categories + code)
    as_of = datetime.fromisoformat(spec.data_as_of)
    return ProfileView(
        _model=weakref.ref(model),
        spec=spec,
        arrays={name: arrays[name] for name in PROFILE_ARRAYS},
        rfm=rfm,
        tag_codes=tag_codes,
        data_as_of_ms=int(as_of.timestamp() * 1000),
    )
