"""How long 10,000 new products take from ``UpsertItems`` sent to recommendable: one in-process
server (the real composition root, a real Redis) over BUNDLE, which may already carry many live
records (``--records``: every trained product changed once beforehand, as a busy catalog is).
The new products take the bundle's own categories and brands (so each gets a starting vector);
the run times the call until answered, until ``SimilarItems`` of the last new product answers on
the same process, and until a ``RecommendProducts`` of a member brings a new product back.
docs/benchmarks.md, "Live catalog", uses it.

    python -m bench.experiments.upsert_new_products BUNDLE [--new 10000] [--records] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import grpc

from bench.experiments.inprocess import in_process_server
from recsvc.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommender_pb2, recommender_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--records", action="store_true", help="change every trained product first")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--members", type=int, default=200, help="members asked for a new product")
    parser.add_argument(
        "--per-call", type=int, default=10_000, help="items per UpsertItems call (catalog.max_batch)"
    )
    args = parser.parse_args()
    from recsvc.bundle import KIND_PRODUCT

    with in_process_server(args.bundle) as (_server, deps, _redis):
        _, model = deps.models.default()
        channel = grpc.insecure_channel(f"127.0.0.1:{deps.bound_port}")
        catalog = catalog_pb2_grpc.CatalogStub(channel)
        recommender = recommender_pb2_grpc.RecommenderStub(channel)
        batch = args.per_call
        products = [r for r in range(len(model.items)) if model.item_kind[r] == KIND_PRODUCT]
        if args.records:
            changes = [catalog_pb2.StockChange(item_id=model.items.id(r), in_stock=True) for r in products]
            for i in range(0, len(changes), batch):
                catalog.SetStockMany(
                    catalog_pb2.SetStockManyRequest(changes=changes[i : i + batch]), timeout=60
                )
            time.sleep(2.0)  # the follower's whole build of the first changes, before the clock starts
        groups = sorted({(int(model.item_category[r]), int(model.item_brand[r])) for r in products})
        members = [model.members.id(i) for i in range(min(args.members, len(model.members)))]
        print(f"bundle {args.bundle}: {len(model.items):,} items, {len(groups)} (category, brand) "
              f"groups; live records before: {len(deps.engine.catalog.records):,}")  # fmt: skip
        for rep in range(args.repeat):
            items = []
            for j in range(args.new):
                cat, brand = groups[j % len(groups)]
                items.append(catalog_pb2.CatalogItem(
                    item_id=f"NEW-{rep}-{j:06d}", kind=common_pb2.PRODUCT, title=f"New product {rep}-{j}",
                    category=model.categories[cat], brand=model.brands[brand] if brand >= 0 else "",
                    price=9.9, in_stock=True,
                ))  # fmt: skip
            t0 = time.perf_counter()
            for i in range(0, len(items), batch):
                reply = catalog.UpsertItems(
                    catalog_pb2.UpsertItemsRequest(items=items[i : i + batch]), timeout=60
                )
                failed = [r for r in reply.results if not r.applied]
                if failed:
                    raise SystemExit(f"UpsertItems refused {len(failed)} items, e.g. {failed[0]}")
            answered = time.perf_counter() - t0
            last = items[-1].item_id
            while True:
                try:
                    recommender.SimilarItems(
                        recommender_pb2.SimilarItemsRequest(item_id=last, k=10), timeout=5
                    )
                    break
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND or time.perf_counter() - t0 > 60:
                        raise
                    time.sleep(0.005)
            similar = time.perf_counter() - t0
            prefix = f"NEW-{rep}-"
            recommended = None
            for member in members:
                got = recommender.RecommendProducts(
                    recommender_pb2.RecommendProductsRequest(member_id=member, k=20), timeout=5
                )
                if any(it.item_id.startswith(prefix) for it in got.items):
                    recommended = time.perf_counter() - t0
                    break
            found = f"{recommended:.2f} s" if recommended is not None else f"none of {len(members)} members"
            print(f"run {rep + 1}: {args.new:,} new products answered {answered:.2f} s, SimilarItems of the "
                  f"last {similar:.2f} s, first member list with one {found}")  # fmt: skip
        channel.close()


if __name__ == "__main__":
    main()
