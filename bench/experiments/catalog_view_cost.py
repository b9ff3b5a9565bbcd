"""What one batch of live catalog changes costs a server process: the view moved on by the batch
(``recsvc.catalog.delta.advance``, what the follower does) against the view built whole from the
same records (``CatalogView``, what a full re-read does), in thread CPU, on a real bundle whose
catalog already carries many live records (every trained product changed once, plus new ones).
docs/benchmarks.md, "Live catalog", uses it.

    python -m bench.experiments.catalog_view_cost BUNDLE [--new 10000] [--batch 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import immutables

from recsvc.bundle import KIND_PRODUCT
from recsvc.catalog.delta import advance
from recsvc.catalog.store import ItemRecord
from recsvc.catalog.view import CatalogView, GroupMeans, catalog_as_of_ms
from recsvc.engine.served_model import ServedModel
from recsvc.gc_pause import gc_paused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--new", type=int, default=10_000, help="new products already live")
    parser.add_argument("--batch", type=int, default=1_000, help="new products in the measured batch")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    model = ServedModel.load(args.bundle, version="b", source_uri=str(args.bundle))
    n = len(model.items)
    ids = model.items.ids(list(range(n)))
    now = time.time()
    ts = max(catalog_as_of_ms(model), int(now * 1000))
    categories = list(model.categories)
    version = 0
    records: dict[str, ItemRecord] = {}

    def put(item_id: str, fields: dict[str, object]) -> None:
        nonlocal version
        version += 1
        old = records.get(item_id)
        merged = {**(old.fields if old else {}), **fields}
        times = {**(old.field_ts_ms if old else {}), **{k: ts for k in fields}}
        records[item_id] = ItemRecord(version, ts, merged, times, old.created if old else version)

    for row in range(n):
        put(ids[row], {"price": 9.9, "in_stock": True})

    def new_product(j: int) -> dict[str, object]:
        return {"kind": "product", "title": f"New {j}", "category": categories[j % len(categories)],
                "brand": "", "price": 5.0, "in_stock": True, "published_at": 0}  # fmt: skip

    for j in range(args.new):
        put(f"NEW{j:07d}", new_product(j))
    means = GroupMeans.of_model(model)
    base = CatalogView(model, immutables.Map(records), now, means, version)
    product = next(ids[r] for r in range(n) if model.item_kind[r] == KIND_PRODUCT)
    batches: dict[str, Callable[[int], list[str]]] = {
        "1 stock flip": lambda k: [_put_one(put, product, {"in_stock": k % 2 == 0})],
        f"{args.batch:,} new products": lambda k: [
            _put_one(put, f"B{k}-{j:06d}", new_product(j)) for j in range(args.batch)
        ],
        "1 title": lambda k: [_put_one(put, product, {"title": f"Renamed {k}"})],
        "1 category": lambda k: [_put_one(put, product, {"category": categories[k % len(categories)]})],
    }
    print(f"bundle {args.bundle} ({n:,} items); live records {len(records):,}; thread CPU ms, "
          f"median of {args.repeat}")  # fmt: skip
    print(f"{'batch':<24} {'moved on':>10} {'built whole':>12}")
    for label, make in batches.items():
        moved, whole = [], []
        for k in range(args.repeat):
            changed = make(k)
            snapshot = immutables.Map(records)  # as the follower holds them
            t0 = time.thread_time()
            out = advance(base, snapshot, changed, now, version, means)
            t1 = time.thread_time()
            with gc_paused():  # as LiveCatalog builds a view whole
                CatalogView(model, snapshot, now, means, version)
            t2 = time.thread_time()
            if out is None:
                raise SystemExit(f"{label}: the batch was not moved on")
            moved.append((t1 - t0) * 1000)
            whole.append((t2 - t1) * 1000)
            base = out
        print(f"{label:<24} {statistics.median(moved):>10.2f} {statistics.median(whole):>12.1f}")


def _put_one(put: Callable[[str, dict[str, object]], None], item_id: str, fields: dict[str, object]) -> str:
    put(item_id, fields)
    return item_id


if __name__ == "__main__":
    main()
