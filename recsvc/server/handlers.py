"""Helpers for interceptors that must wrap both kinds of handlers the aio server runs:
``async def`` handlers on the event loop and plain functions in its thread pool."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


def is_async(fn: Callable[..., Any] | None) -> bool:
    return fn is not None and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))


class SyncInterceptorAdapter(grpc.aio.ServerInterceptor):
    """Runs a ``grpc.ServerInterceptor`` in a ``grpc.aio`` server.

    The wrapped interceptor gets a continuation that returns the handler the rest of the chain
    already resolved, so the order of interceptors is the same as on a thread-pool server. Its
    ``intercept_service`` must not block (ours only look at metadata and wrap handlers), and the
    wrappers it builds must handle ``async def`` handlers (see ``is_async``).
    """

    def __init__(self, inner: grpc.ServerInterceptor) -> None:
        self.inner = inner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        return self.inner.intercept_service(lambda _details: handler, handler_call_details)
