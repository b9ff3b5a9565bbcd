"""The checks ``recsvc.bundle.load_bundle`` runs (which files a bundle must hold, its indexes)
and the bundle's optional parts, each all-or-nothing and recorded in the manifest: the stored
member lists, the member profiles and the item-item neighbours, with their consistency checks and
the functions that add them to a written bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsvc.bundle_manifest import (
    INDEX_L2_AUGMENTED,
    KIND_NAMES,
    MANIFEST,
    OUTLOOKS,
    PROFILE_ARRAYS,
    VALUE_TIERS,
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
    if manifest.params.get("confidence_weighting") == "bm25":
        names.append("item_idf.npy")
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
    kind, factors = arrays["item_kind"], arrays["item_factors"]  # finite (``_check_values``)
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


def _check_weighting(bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray]) -> None:
    """``item_idf.npy`` exactly with BM25 weighting (its dtype and shape are ``_check_arrays``'),
    every weight finite and at least 0: a negative one would fold a member's item in as a dislike."""
    bm25 = manifest.params.get("confidence_weighting") == "bm25"
    idf = arrays.get("item_idf")
    if bm25 != (idf is not None):
        weighting = manifest.params.get("confidence_weighting", "none")
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: item_idf.npy goes with BM25 weighting (the "
            f"manifest's params.confidence_weighting: {weighting}; item_idf.npy "
            f"{'is' if idf is not None else 'is not'} there)"
        )
    if idf is not None and not (np.isfinite(idf).all() and (idf >= 0).all()):
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: item_idf holds NaN, infinite or negative values"
        )


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
    _check_finite(bundle_dir, "item_neighbour_score", arrays["item_neighbour_score"])


def _check_profiles(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int, n_brands: int
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
    assert spec is not None
    # the codes a profile answer looks names up by (one pass over a column per member each)
    n_tags = spec.categories + n_brands
    for name, low, high, has in (
        ("profile_value_tier", 0, len(VALUE_TIERS), f"there are {len(VALUE_TIERS)} value tiers"),
        ("profile_outlook", 0, len(OUTLOOKS), f"there are {len(OUTLOOKS)} outlooks"),
        ("profile_timezone", -1, len(spec.timezones), f"profiles.timezones has {len(spec.timezones)}"),
        (
            "profile_tag",
            -1,
            n_tags,
            f"there are {n_tags} tags ({spec.categories} categories + {n_brands} brands)",
        ),
    ):
        _check_codes(bundle_dir, arrays[name], f"{name}.npy", "code", low, high, has)


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
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int, n_items: int
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
    # item rows (-1 = none), which serving indexes the catalog with
    for name in ("member_list_item", "member_list_reason"):
        has = f"the bundle has {n_items} items"
        _check_codes(bundle_dir, arrays[name], f"{name}.npy", "item", -1, n_items, has)
    _check_finite(bundle_dir, "member_list_score", arrays["member_list_score"])


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


# What ``load_bundle`` checks every core array against before a swap (``_check_arrays``): the
# dtypes it may have and its shape, in terms of the bundle's members and items, the manifest's
# factors and the entries of the CSR it belongs to. A damaged array would otherwise load and
# then fail every call (an IndexError, a ValueError) or, read by a compiled kernel, crash the
# worker.
_FLOAT, _INT, _BOOL = "float32 or float64", "an integer dtype", "bool"
_KINDS = {_FLOAT: ("f",), _INT: ("i", "u"), _BOOL: ("b",)}
# name -> (dtype, shape); shape entries: "members", "members+1", "items", "factors", or
# "<csr>" for the entries of that CSR (its ``<csr>_indices`` length)
ARRAY_SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "member_factors": (_FLOAT, ("members", "factors")),
    "member_segment": (_INT, ("members",)),
    "item_factors": (_FLOAT, ("items", "factors")),
    "item_kind": (_INT, ("items",)),
    "item_category": (_INT, ("items",)),
    "item_brand": (_INT, ("items",)),
    "item_price": (_FLOAT, ("items",)),
    "item_in_stock": (_BOOL, ("items",)),
    "item_published_at": (_INT, ("items",)),
    "history_indptr": (_INT, ("members+1",)),
    "history_indices": (_INT, ("history",)),
    "history_data": (_FLOAT, ("history",)),
    "purchased_indptr": (_INT, ("members+1",)),
    "purchased_indices": (_INT, ("purchased",)),
    # optional (checked when present; bundle.py checks they come together)
    "item_repurchase_days": (_FLOAT, ("items",)),
    "item_idf": (_FLOAT, ("items",)),
    "purchased_last_ts": (_INT, ("purchased",)),
}
# The CSR matrices [members x items] whose indices serving reads item rows through.
CSR_ARRAYS = ("history", "purchased")
# The columns serving reads from the tables (recsvc/engine/served_model.py, recsvc/members/view.py).
POPULAR_COLUMNS = ("segment", "channel", "kind", "rank", "item_id", "score")
SEGMENT_COLUMNS = ("member_id",)
# Manifest params serving computes with (recsvc/engine/served_model.py): numbers when present.
_NUMBER_PARAMS = ("regularization", "alpha", "half_life_days", "iterations", "factors")


def _dtype_ok(arr: np.ndarray, want: str) -> bool:
    if arr.dtype.kind not in _KINDS[want]:
        return False
    # numba's kernels and the FAISS copies take float32 and float64, not float16
    return want != _FLOAT or arr.dtype.itemsize >= 4


def _check_arrays(
    bundle_dir: Path, manifest: Manifest, arrays: dict[str, np.ndarray], n_members: int, n_items: int
) -> None:
    """Every array of ``ARRAY_SHAPES`` present: its dtype kind and its shape against the id maps,
    the manifest's factor count and its CSR (all problems at once, each naming its file)."""
    dims = {"members": n_members, "members+1": n_members + 1, "items": n_items, "factors": manifest.factors}
    problems = []
    for name, (dtype, shape) in ARRAY_SHAPES.items():
        arr = arrays.get(name)
        if arr is None:
            continue
        if any(d in CSR_ARRAYS for d in shape):
            # an entry per CSR entry: as many as the CSR's indices (checked before, as 1-D)
            indices = arrays.get(f"{shape[0]}_indices")
            if name == f"{shape[0]}_indices" or indices is None or indices.ndim != 1:
                want: tuple[int, ...] | None = None  # the indices themselves: any length
            else:
                want = (int(indices.shape[0]),)
        else:
            want = tuple(dims[d] for d in shape)
        wrong_shape = arr.ndim != len(shape) if want is None else arr.shape != want
        if not _dtype_ok(arr, dtype) or wrong_shape:
            expected = f"{len(shape)}-D" if want is None else str(want)
            problems.append(f"{name}.npy is {arr.dtype} {arr.shape}, expected {dtype} {expected}")
    if problems:
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: " + "; ".join(problems) + f" ({n_members} members, "
            f"{n_items} items, {manifest.factors} factors)"
        )


# The float arrays serving multiplies or ranks by (besides item_trend, checked with its own
# bound in ``_check_neighbours``): a NaN or an infinity in one makes every score it touches NaN,
# so a member's list comes back in garbage order with no error. Profile arrays are not among
# them: their NaN means "never bought" (PROFILE_ARRAYS).
FINITE_ARRAYS = (
    "member_factors",
    "item_factors",
    "history_data",
    "member_list_score",
    "item_neighbour_score",
)
# Bytes of an array ``_check_finite`` reads per step (65,536 rows of 64 float32 factors): a
# memory-mapped array is never copied whole, the temporary is a bool per value of one step.
_FINITE_STEP_BYTES = 1 << 24


def _check_finite(bundle_dir: Path, name: str, arr: np.ndarray) -> None:
    """Every value of float array ``name`` (dtype and shape checked before) is finite; else
    BAD_BUNDLE naming the file and the first bad row. One pass in steps of about 16 MB, a clean
    step costing one ``all()`` (rows are told apart only in the step that fails): 25-40 ms for a
    1M x 64 float32 ``member_factors`` memmap (256 MB) in the page cache on a busy 2-core
    machine, 10-20 ms per 100 MB. A cold file is read from disk once, as serving would read it."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    row_values = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1
    step = max(1, _FINITE_STEP_BYTES // (row_values * arr.itemsize))
    for start in range(0, arr.shape[0], step):
        finite = np.isfinite(arr[start : start + step])
        if finite.all():
            continue
        row = start + int(np.argmin(finite.reshape(finite.shape[0], -1).all(axis=1)))
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: {name} holds NaN or infinite values, the first "
            f"in row {row} of {name}.npy"
        )


def _value_range(arr: np.ndarray) -> tuple[int, int] | None:
    """(min, max) of an integer array, None when empty: two vectorised passes over it, no copy
    (a memory-mapped array is read once from disk; about 25 ms per 50M int32 entries)."""
    if arr.size == 0:
        return None
    return int(arr.min()), int(arr.max())


def _check_codes(
    bundle_dir: Path, arr: np.ndarray, file: str, what: str, low: int, high: int, has: str
) -> None:
    """``arr``'s values lie in [low, high); else BAD_BUNDLE naming the file and the bad value."""
    found = _value_range(arr)
    if found is None:
        return
    for value in found:
        if not low <= value < high:
            raise BundleError(f"bundle {bundle_dir} is inconsistent: {file} holds {what} {value}, {has}")


def _check_csr(
    bundle_dir: Path, prefix: str, arrays: dict[str, np.ndarray], n_items: int, rows: str = "member"
) -> None:
    """A [``rows`` x items] CSR (shapes checked before): the row pointer starts at 0, never falls
    and ends at the number of entries; every column is an item row. The compiled kernels read
    these rows without bounds checks: an item past the end crashed the worker (SIGSEGV)."""
    indptr, indices = arrays[f"{prefix}_indptr"], arrays[f"{prefix}_indices"]
    where = f"bundle {bundle_dir} is inconsistent: {prefix}_indptr.npy"
    if int(indptr[0]) != 0:
        raise BundleError(f"{where} starts at {int(indptr[0])}, not 0")
    falls = indptr[1:] < indptr[:-1]  # a bool per member, no copy of the pointers
    if falls.any():
        row = int(np.argmax(falls))
        raise BundleError(
            f"{where} is not monotone: {rows} row {row + 1} starts at {int(indptr[row + 1])}, "
            f"before row {row}'s {int(indptr[row])}"
        )
    if int(indptr[-1]) != indices.shape[0]:
        raise BundleError(
            f"{where} ends at {int(indptr[-1])}, {prefix}_indices.npy holds {indices.shape[0]} entries"
        )
    _check_codes(
        bundle_dir, indices, f"{prefix}_indices.npy", "item", 0, n_items, f"the bundle has {n_items} items"
    )


def _check_ids(bundle_dir: Path, name: str, ids: np.ndarray) -> None:
    """An id map's array: 1-D UTF-8 bytes, strictly ascending (row look-ups are binary searches;
    about 10 ms per million ids)."""
    if ids.dtype.kind != "S" or ids.ndim != 1:
        raise BundleError(
            f"bundle {bundle_dir} is inconsistent: {name} is {ids.dtype} {ids.shape}, expected 1-D bytes ids"
        )
    if ids.shape[0] > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise BundleError(f"bundle {bundle_dir} is inconsistent: {name} is not sorted and unique")


def _check_manifest_values(bundle_dir: Path, manifest: Manifest) -> None:
    """The manifest numbers serving computes with are finite numbers: the params of the member
    solve, every number in ``params.event_weights``, ``fold_in``, and the norm of each
    norm-augmented index. A string there used to fail the load with INTERNAL instead of
    BAD_BUNDLE, a NaN every fold-in."""
    problems = []

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))

    params = manifest.params
    for key in _NUMBER_PARAMS:
        if key in params and not number(params[key]):
            problems.append(f"params.{key} is {params[key]!r}, expected a finite number")
    weights = params.get("event_weights", {})
    if not isinstance(weights, dict):
        problems.append(f"params.event_weights is {weights!r}, expected event type -> weight")
    else:
        problems += [
            f"params.event_weights.{k} is {v!r}, expected a finite number"
            for k, v in weights.items()
            if not number(v)
        ]
    for key, value in manifest.fold_in.model_dump().items():
        if not number(value):
            problems.append(f"fold_in.{key} is {value!r}, expected a finite number")
    if manifest.factors < 1:
        problems.append(f"factors is {manifest.factors}, expected at least 1")
    if not manifest.segments:
        problems.append("segments is empty, expected the lifecycle stage names")
    for kind in KIND_NAMES.values():
        info = manifest.index.get(kind)
        if (
            isinstance(info, dict)
            and info.get("type") == INDEX_L2_AUGMENTED
            and not number(info.get("max_norm"))
        ):
            problems.append(f"index.{kind}.max_norm is {info.get('max_norm')!r}, expected a finite number")
    if problems:
        raise BundleError(f"bundle {bundle_dir} is inconsistent: {MANIFEST} " + "; ".join(problems))


def _check_side_files(
    bundle_dir: Path, titles: Any, vocab: Any, segments: Any, popular: Any, n_items: int
) -> tuple[list[str], list[str]]:
    """``item_titles.json`` a list of one string per item, ``vocab.json`` an object with the lists
    of strings ``categories`` and ``brands`` (returned), the tables with the columns serving
    reads."""
    where = f"bundle {bundle_dir} is inconsistent:"
    if not isinstance(titles, list) or len(titles) != n_items:
        got = f"a list of {len(titles)}" if isinstance(titles, list) else f"a JSON {type(titles).__name__}"
        raise BundleError(
            f"{where} item_titles.json holds {got}, expected a list of {n_items} titles (one per item)"
        )
    if not all(isinstance(t, str) for t in titles):
        raise BundleError(f"{where} item_titles.json holds a title that is not a string")
    names: dict[str, list[str]] = {}
    for key in ("categories", "brands"):
        value = vocab.get(key) if isinstance(vocab, dict) else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BundleError(f"{where} vocab.json has no list of strings {key!r}")
        names[key] = value
    for file, table, columns in (
        ("segments.parquet", segments, SEGMENT_COLUMNS),
        ("popular.parquet", popular, POPULAR_COLUMNS if len(popular) else ()),
    ):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise BundleError(f"{where} {file} lacks the columns {missing}")
    if len(popular):
        # the scores a popular list is served with: a NaN would reach the reply
        score = pd.to_numeric(popular["score"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(score)
        if bad.any():
            row = int(np.argmax(bad))
            raise BundleError(
                f"{where} popular.parquet holds a score that is not a finite number, the first in "
                f"row {row}: {popular['score'].iloc[row]!r}"
            )
    return names["categories"], names["brands"]


def _check_values(
    bundle_dir: Path,
    manifest: Manifest,
    arrays: dict[str, np.ndarray],
    n_items: int,
    categories: list[str],
    brands: list[str],
) -> None:
    """What the shapes cannot say (after ``_check_arrays``): the CSR pointers and item rows,
    every code in range of the list it indexes (the MMR kernel sizes its counts by category), and
    the factors and confidence weights finite (``FINITE_ARRAYS``)."""
    for prefix in CSR_ARRAYS:
        _check_csr(bundle_dir, prefix, arrays, n_items)
    for name in FINITE_ARRAYS:
        if name in ARRAY_SHAPES:  # the optional parts' are checked with their parts
            _check_finite(bundle_dir, name, arrays[name])
    n_seg = len(manifest.segments)
    _check_codes(
        bundle_dir,
        arrays["member_segment"],
        "member_segment.npy",
        "segment",
        0,
        n_seg,
        f"{MANIFEST} names {n_seg} segments",
    )
    for name, what, key, vocab in (
        ("item_category", "category", "categories", categories),
        ("item_brand", "brand", "brands", brands),
    ):
        has = f"vocab.json has {len(vocab)} {key}"
        _check_codes(bundle_dir, arrays[name], f"{name}.npy", what, 0, len(vocab), has)
