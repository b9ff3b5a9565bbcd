"""The checks ``recsvc.bundle.load_bundle`` runs (which files a bundle must hold, its indexes)
and the bundle's optional parts, each all-or-nothing and recorded in the manifest: the stored
member lists, the member profiles and the item-item neighbours, with their consistency checks and
the functions that add them to a written bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle_manifest import (
    KIND_NAMES,
    MANIFEST,
    PROFILE_ARRAYS,
    Manifest,
    ProfileSpec,
    StoredListSpec,
    read_manifest,
)
from recsvc.errors import BundleError

# Files every bundle holds besides manifest.json and its required arrays (bundle._ARRAYS).
_FILES = (
    "member_ids.npy",
    "item_ids.npy",
    "item_titles.json",
    "vocab.json",
    "segments.parquet",
    "popular.parquet",
)


def required_files(manifest: Manifest, arrays: tuple[str, ...]) -> list[str]:
    """The files a bundle with this manifest must hold (before looking at its arrays): the fixed
    ones, the stored member lists when the manifest has them, and the ANN index of every kind the
    manifest's ``index`` section describes. ``load_bundle`` also requires the index of every kind
    that has items with a vector, whatever the manifest says."""
    names = [*_FILES, *(f"{name}.npy" for name in arrays)]
    if manifest.member_lists:
        names += [f"{name}.npy" for name in MEMBER_LIST_ARRAYS]
    if manifest.family.family != "als":
        names += [f"{name}.npy" for name in NEIGHBOUR_ARRAYS]
    if manifest.family.trend_weight > 0:
        names.append("item_trend.npy")
    names += [
        f"index_{kind}.faiss" for kind in KIND_NAMES.values() if isinstance(manifest.index.get(kind), dict)
    ]
    return names


def _check_files(bundle_dir: Path, names: list[str]) -> None:
    """Each of ``names`` exists in ``bundle_dir`` as a non-empty file, before anything is loaded:
    a reload must refuse a half-copied bundle, naming the file, while the old model serves."""
    for name in names:
        path = bundle_dir / name
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            size = -1
        if size < 0:
            raise BundleError(f"bundle {bundle_dir} is incomplete: {name} is missing")
        if size == 0:
            raise BundleError(f"bundle {bundle_dir} is incomplete: {name} is empty")


def _check_indexes(bundle_dir: Path, arrays: dict[str, np.ndarray], indexes: dict[str, Any]) -> None:
    """An index for every kind with items that have a vector (training builds exactly those), each
    holding between 1 and that kind's item count vectors. Without the check a bundle missing
    ``index_product.faiss`` loaded and served from exact search, unnoticed."""
    kind, factors = arrays["item_kind"], arrays["item_factors"]
    # Items only: one pass over [items, factors] is cheap and a NaN item vector would poison every
    # member's search; member rows are not scanned (hundreds of MB at a million members).
    if not np.isfinite(factors).all():
        raise BundleError(f"bundle {bundle_dir} is inconsistent: item_factors holds NaN or infinite values")
    for code, name in KIND_NAMES.items():
        rows = np.flatnonzero(kind == code)
        has_vectors = rows.size > 0 and bool(np.any(factors[rows] != 0))
        index = indexes.get(name)
        if index is None:
            if has_vectors:
                raise BundleError(f"bundle {bundle_dir} is incomplete: index_{name}.faiss is missing")
            continue
        if not 0 < int(index.ntotal) <= rows.size:
            raise BundleError(
                f"bundle {bundle_dir} is inconsistent: index_{name}.faiss holds {int(index.ntotal)} "
                f"vectors for {rows.size} {name} items"
            )


# The stored default lists (training/member_lists.py): all three or none, each [members, K].
MEMBER_LIST_ARRAYS = {
    "member_list_item": np.int32,
    "member_list_score": np.float32,
    "member_list_reason": np.int32,
}

# The item-item model's neighbours (training/itemknn.py), [items, FamilySpec.neighbours] each:
# the neighbour item rows best first (-1 = none) and their similarities. Present exactly when the
# manifest's family is not "als".
NEIGHBOUR_ARRAYS = {
    "item_neighbour_item": np.int32,
    "item_neighbour_score": np.float32,
}


def _check_neighbours(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_items: int
) -> None:
    spec = manifest.family
    trend = arrays.get("item_trend")
    if (spec.trend_weight > 0) != (trend is not None):
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: item_trend.npy goes with a family trend_weight "
            f"above 0 (the manifest's: {spec.trend_weight:g}; item_trend.npy "
            f"{'is' if trend is not None else 'is not'} there)"
        )
    if trend is not None and (trend.dtype != np.float32 or trend.shape != (n_items,)):
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: item_trend is {trend.dtype} {trend.shape}, "
            f"expected float32 ({n_items},)"
        )
    # A NaN or negative trend would not fail anywhere: it would rank every list by NaN.
    if trend is not None and not (np.isfinite(trend).all() and (trend >= 0).all()):
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: item_trend holds NaN, infinite or negative values"
        )
    present = [name for name in NEIGHBOUR_ARRAYS if name in arrays]
    if not present and spec.family == "als":
        return
    problems = []
    if spec.family == "als":
        problems.append("the manifest's family is 'als' but it holds neighbour arrays")
    elif len(present) != len(NEIGHBOUR_ARRAYS):
        problems.append(f"family {spec.family!r} needs {list(NEIGHBOUR_ARRAYS)}, has {present or 'none'}")
    else:
        want = (n_items, spec.neighbours)
        for name in present:
            arr, dtype = arrays[name], np.dtype(NEIGHBOUR_ARRAYS[name])
            if arr.dtype != dtype or arr.shape != want:
                problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {dtype} {want}")
        if not problems:
            ids = arrays["item_neighbour_item"]
            if ids.size and (int(ids.min()) < -1 or int(ids.max()) >= n_items):
                problems.append(f"item_neighbour_item holds rows outside [-1, {n_items})")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: item neighbours " + "; ".join(problems))


def _check_profiles(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int
) -> None:
    present = [name for name in PROFILE_ARRAYS if name in arrays]
    spec = manifest.profiles
    if not present and spec is None:
        return
    problems = []
    if len(present) != len(PROFILE_ARRAYS):
        problems.append(f"has {len(present)} of the {len(PROFILE_ARRAYS)} profile arrays")
    if spec is None:
        problems.append("the manifest records no profiles")
    else:
        for name in present:
            dtype, cols = PROFILE_ARRAYS[name]
            width = spec.columns(cols)
            want = (n_members,) if width is None else (n_members, width)
            arr = arrays[name]
            if arr.dtype != np.dtype(dtype) or arr.shape != want:
                problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {want}")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: member profiles " + "; ".join(problems))


def add_profiles(bundle_dir: Path, arrays: dict[str, np.ndarray], spec: ProfileSpec) -> None:
    """Add the member profile arrays (training/profiles.py) to a written bundle, replacing any,
    and check that the bundle still loads."""
    manifest = read_manifest(bundle_dir)
    missing = sorted(set(PROFILE_ARRAYS) - set(arrays))
    if missing:
        raise BundleError(f"profile arrays missing: {missing}")
    for name, (dtype, _) in PROFILE_ARRAYS.items():
        np.save(bundle_dir / f"{name}.npy", np.ascontiguousarray(arrays[name], dtype=dtype))
    manifest.profiles = spec
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    from recsvc.bundle import load_bundle  # the loader runs this module's checks

    load_bundle(bundle_dir)


def _check_member_lists(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int
) -> None:
    present = [name for name in MEMBER_LIST_ARRAYS if name in arrays]
    if not present and manifest.member_lists is None:
        return
    spec = manifest.member_lists
    width = spec.k + spec.spare if spec is not None else None  # k, then the spare picks
    problems = []
    if len(present) != len(MEMBER_LIST_ARRAYS):
        problems.append(f"has {present or 'none'} of {list(MEMBER_LIST_ARRAYS)}")
    if width is None:
        problems.append("the manifest records no member_lists")
    for name in present:
        arr, want = arrays[name], np.dtype(MEMBER_LIST_ARRAYS[name])
        if arr.dtype != want or arr.shape != (n_members, width):
            problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {want} ({n_members}, {width})")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: stored member lists " + "; ".join(problems))


def add_member_lists(
    bundle_dir: Path, items: np.ndarray, scores: np.ndarray, reasons: np.ndarray, spec: StoredListSpec
) -> None:
    """Add the stored default lists (training/member_lists.py) to a written bundle, replacing any,
    and check that the bundle still loads."""
    manifest = read_manifest(bundle_dir)
    arrays = {"member_list_item": items, "member_list_score": scores, "member_list_reason": reasons}
    for name, arr in arrays.items():
        np.save(bundle_dir / f"{name}.npy", np.ascontiguousarray(arr, dtype=MEMBER_LIST_ARRAYS[name]))
    manifest.member_lists = spec
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    from recsvc.bundle import load_bundle  # the loader runs this module's checks

    load_bundle(bundle_dir)


def drop_member_lists(bundle_dir: Path) -> None:
    """Remove the stored default lists from a bundle (they belong to the index they came from)."""
    manifest = read_manifest(bundle_dir)
    for name in MEMBER_LIST_ARRAYS:
        (bundle_dir / f"{name}.npy").unlink(missing_ok=True)
    if manifest.member_lists is not None:
        manifest.member_lists = None
        (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
