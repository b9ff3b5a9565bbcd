"""The bundle's optional parts, each all-or-nothing and recorded in the manifest: the stored
member lists, the member profiles and the item-item neighbours. Their consistency checks (run by
``recsvc.bundle.load_bundle``) and the functions that add them to a written bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsvc.bundle_manifest import (
    MANIFEST,
    PROFILE_ARRAYS,
    Manifest,
    ProfileSpec,
    StoredListSpec,
    read_manifest,
)
from recsvc.errors import BundleError

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
    present = [name for name in NEIGHBOUR_ARRAYS if name in arrays]
    spec = manifest.family
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
    k = manifest.member_lists.k if manifest.member_lists is not None else None
    problems = []
    if len(present) != len(MEMBER_LIST_ARRAYS):
        problems.append(f"has {present or 'none'} of {list(MEMBER_LIST_ARRAYS)}")
    if k is None:
        problems.append("the manifest records no member_lists")
    for name in present:
        arr, want = arrays[name], np.dtype(MEMBER_LIST_ARRAYS[name])
        if arr.dtype != want or arr.shape != (n_members, k):
            problems.append(f"{name} is {arr.dtype} {arr.shape}, expected {want} ({n_members}, {k})")
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
