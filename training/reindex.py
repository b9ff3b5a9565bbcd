"""Rebuild a bundle's FAISS indexes on its own factors with the current ANN code and settings,
into a copy: ``python -m training.reindex SRC_BUNDLE DST_BUNDLE``. The stored member lists
(training/member_lists.py) are rebuilt on the new index too (dropped when ``training.member_lists``
is 0).

For measuring an index change without a new training run (docs/benchmarks.md: the 1M x 64-factor
bundle after the nprobe bisection). The copy gets the bundle id ``<id>-reindexed`` and the new
``Manifest.index``; factors, tables and everything else are the source's.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from recsvc.bundle import drop_member_lists, load_bundle
from recsvc.settings import ServingSettings, TrainingSettings, load_settings
from training import ann, member_lists


def reindex(
    src: Path, dst: Path, t: TrainingSettings, serving: ServingSettings | None = None
) -> dict[str, object]:
    import faiss

    load_bundle(src)  # refuses anything that is not a readable bundle
    shutil.copytree(src, dst)
    item_factors = np.load(dst / "item_factors.npy")
    member_factors = np.load(dst / "member_factors.npy", mmap_mode="r")
    indexes, info = ann.indexes_for(item_factors, np.load(dst / "item_kind.npy"), member_factors, t)
    for old in dst.glob("index_*.faiss"):
        old.unlink()
    for kind, index in indexes.items():
        faiss.write_index(index, str(dst / f"index_{kind}.faiss"))
    # Precomputed candidates of older bundles: serving no longer reads them.
    (dst / "member_top_product.npy").unlink(missing_ok=True)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["index"] = info
    manifest["bundle_id"] = f"{manifest['bundle_id']}-reindexed"
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    # Stored member lists came from the old index: dropped, and rebuilt when the settings ask.
    drop_member_lists(dst)
    member_lists.for_settings(dst, t, serving or ServingSettings())
    load_bundle(dst)  # the copy still loads
    return info


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m training.reindex SRC_BUNDLE DST_BUNDLE", file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    if dst.exists():
        print(f"{dst} exists; choose a new folder", file=sys.stderr)
        return 2
    settings = load_settings()
    print(json.dumps(reindex(src, dst, settings.training, settings.serving), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
