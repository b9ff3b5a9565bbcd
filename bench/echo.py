"""The transport floor: a ``grpc.aio`` Recommender that answers every RecommendProducts with the
same 20-item response, doing no work. Load it with ``recsvc load bench service --host ...
--server-pid ...`` to see what gRPC alone costs per call on this machine, on the server and on
the client, next to what the real service costs (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from recsvc.v1 import common_pb2, recommender_pb2


def fixed_response(k: int = 20) -> recommender_pb2.RecommendResponse:
    """A response shaped like a real one (ids, titles, reasons of typical length)."""
    resp = recommender_pb2.RecommendResponse(model_version="echo", variant="control", member_segment="active")
    for i in range(k):
        resp.items.add(
            item_id=f"P{i:07d}",
            score=1.0 - i / 100,
            reason="because you viewed Linen shirt, relaxed fit",
            source="personalized",
            kind=common_pb2.PRODUCT,
            category="apparel/shirts",
            brand="brand-07",
            title=f"Cotton tee, crew neck {i}",
        )
    return resp


def echo_handler(response: recommender_pb2.RecommendResponse) -> grpc.GenericRpcHandler:
    """``recsvc.v1.Recommender/RecommendProducts`` answering ``response`` (other methods: UNIMPLEMENTED)."""

    async def recommend_products(request: object, context: object) -> object:
        return response

    return products_handler(recommend_products)


def products_handler(
    recommend_products: Callable[[Any, Any], Awaitable[Any]],
) -> grpc.GenericRpcHandler:
    """A server with only ``recsvc.v1.Recommender/RecommendProducts``, answered by the coroutine
    ``recommend_products(request, context)`` (other methods: UNIMPLEMENTED)."""
    service = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
    return grpc.method_handlers_generic_handler(
        service,
        {
            "RecommendProducts": grpc.unary_unary_rpc_method_handler(
                recommend_products,
                request_deserializer=recommender_pb2.RecommendProductsRequest.FromString,
                response_serializer=recommender_pb2.RecommendResponse.SerializeToString,
            )
        },
    )


async def serve_echo(host: str, port: int, k: int = 20) -> None:
    """Serve until cancelled (Ctrl-C)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_handler(fixed_response(k)),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"echo server on {host}:{bound}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)


def run_echo(host: str, port: int, k: int = 20) -> None:
    asyncio.run(serve_echo(host, port, k))
