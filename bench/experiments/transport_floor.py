"""The transport floor in several server set-ups: what a gRPC server that does no work costs per
call on this machine, to set the service's figures against.

Every variant answers RecommendProducts with the same 20-item response
(``bench.echo.echo_handler``). Modes:

- ``aio``: ``grpc.aio`` with default options (as ``recsvc serve`` runs);
- ``nobdp``: ``grpc.aio`` with HTTP/2 BDP probing off;
- ``uvloop``: ``grpc.aio`` on uvloop's event loop instead of asyncio's;
- ``lean``: ``uvloop`` answering 20 items of id and score only (the bare prototype's response
  size, ~0.3 KB instead of ~2.5 KB), to see what the response's size costs;
- ``syncN``: the thread-pool server with N threads (``sync1``, ``sync4``);
- ``bare``: issue 4's reference prototype, on uvloop: the member's vector, an ANN search of the
  bundle's product index and the purchased-item filter, answering item ids and scores (no other
  filters, diversity, reasons, Redis, metrics or interceptors). Needs ``--bundle``.

``--processes 2`` starts two servers on the same port (SO_REUSEPORT, as ``recsvc serve --workers
2``) under this process, so ``--server-pid`` below sees them as workers. Usage:

    .venv/bin/python bench/experiments/transport_floor.py aio --port 50091 --processes 2 &
    .venv/bin/recsvc load bench service --host 127.0.0.1:50091 --server-pid $! \\
        --bundle var/bench/bundle1m64-l2 --rates 750,1000,1250 --duration 20 --client native
    kill %1

A one-off experiment, not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from bench.echo import echo_handler, fixed_response, products_handler

AIO_OPTIONS: dict[str, list[tuple[str, int]]] = {
    "aio": [],
    "uvloop": [],
    "nobdp": [("grpc.http2.bdp_probe", 0)],
}


def bare_handler(bundle: Path) -> grpc.GenericRpcHandler:
    """The bare prototype's RecommendProducts over the served bundle (see the module doc)."""
    import numpy as np

    from recsvc.bundle import KIND_PRODUCT
    from recsvc.engine.served_model import ServedModel
    from recsvc.v1 import recommender_pb2

    model = ServedModel.load(bundle, version="bare", source_uri=str(bundle), prefault=True)
    item_ids = model.items

    async def recommend_products(request: Any, context: Any) -> Any:
        k = request.k or 20
        resp = recommender_pb2.RecommendResponse(model_version="bare")
        row = model.member_row(request.member_id)
        if row is None:
            return resp
        bought = model.purchased_rows(row)
        rows, scores = model.search(model.member_vector(row), KIND_PRODUCT, k + len(bought))
        keep = ~np.isin(rows, bought)
        for r, s in zip(rows[keep][:k].tolist(), scores[keep][:k].tolist(), strict=True):
            resp.items.add(item_id=item_ids.id(r), score=s)
        return resp

    return products_handler(recommend_products)


def serve_one(mode: str, port: int, bundle: Path | None = None) -> None:
    if mode == "bare":
        if bundle is None:
            raise SystemExit("bare needs --bundle")
        handler = bare_handler(bundle)
        mode = "uvloop"
    elif mode == "lean":
        from recsvc.v1 import recommender_pb2

        lean = recommender_pb2.RecommendResponse(model_version="echo")
        for i in range(20):
            lean.items.add(item_id=f"P{i:07d}", score=1.0 - i / 100)
        handler = echo_handler(lean)
        mode = "uvloop"
    else:
        handler = echo_handler(fixed_response(20))
    if mode.startswith("sync"):
        threads = int(mode[4:] or 1)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return
    if mode not in AIO_OPTIONS:
        raise SystemExit(f"unknown mode {mode!r}: aio, nobdp or syncN")

    async def main() -> None:
        aio_server = grpc.aio.server(options=AIO_OPTIONS[mode])
        aio_server.add_generic_rpc_handlers((handler,))
        aio_server.add_insecure_port(f"127.0.0.1:{port}")
        await aio_server.start()
        await aio_server.wait_for_termination()

    if mode == "uvloop":
        import uvloop

        uvloop.run(main())
        return
    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", help="aio, nobdp, uvloop, sync1, sync4, bare, ...")
    parser.add_argument("--bundle", type=Path, help="the serving bundle (bare only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--pin", action="store_true", help="pin process i to CPU i (mod the count)")
    parser.add_argument("--child", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child >= 0 or args.processes == 1:
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[max(args.child, 0) % len(cpus)]})
        serve_one(args.mode, args.port, args.bundle)
        return
    cmd = [sys.executable, __file__, args.mode, "--port", str(args.port), *(["--pin"] if args.pin else [])]
    if args.bundle is not None:
        cmd += ["--bundle", str(args.bundle)]
    children = [subprocess.Popen([*cmd, "--child", str(i)]) for i in range(args.processes)]

    def stop(*_: object) -> None:
        for child in children:
            child.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{args.processes} x {args.mode} on 127.0.0.1:{args.port}", flush=True)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
