"""Counts every RPC of every service by service, method and status code, with its latency
(``recsvc_grpc_server_handled_total``, ``recsvc_grpc_server_handling_seconds``).

One ``MethodWrapper`` in the chain every registered handler goes through (``build_server``), so a
service added later is counted without touching this file. It sits inside the error interceptor:
it sees a ``RecsvcError`` and takes the status code the interceptor will send from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from recsvc.errors import RecsvcError
from recsvc.metrics import ServingMetrics
from recsvc.server.handlers import UNIMPLEMENTED_HANDLER, HandlerFn, KindWrappers, MethodWrapper, rewrap

# Method names are the caller's to choose for methods no service has: one label for all of them.
UNKNOWN = "unknown"


def _code_of(exc: BaseException, context: Any) -> str:
    if isinstance(exc, RecsvcError):
        return exc.code.name
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name  # the caller went away (or the server is stopping)
    code = getattr(context, "code", None)  # an abort() with a code (not on every context type)
    found = code() if code is not None else None
    if isinstance(found, grpc.StatusCode):
        return found.name
    if isinstance(exc, grpc.aio.AbortError):
        return "ABORTED_BY_HANDLER"  # the code went to the caller; this context cannot tell it
    return grpc.StatusCode.INTERNAL.name  # what the error interceptor answers for the unexpected


class _Observer:
    """The label children of one method, looked up once (``labels()`` costs more than ``inc()``)."""

    def __init__(self, metrics: ServingMetrics, service: str, method: str) -> None:
        self._handled = metrics.rpc_handled
        self._labels = (service, method)
        self._latency = metrics.rpc_seconds.labels(service, method)
        self._by_code: dict[str, Any] = {}

    def __call__(self, code: str, t0: float) -> None:
        self._latency.observe(time.perf_counter() - t0)
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self._labels, code)
        child.inc()


class RpcMetricsInterceptor(MethodWrapper):
    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics
        self._observers: dict[str, _Observer] = {}

    def _observer(self, method: str, handler: grpc.RpcMethodHandler) -> _Observer:
        if handler is UNIMPLEMENTED_HANDLER:
            method = f"/{UNKNOWN}/{UNKNOWN}"
        observer = self._observers.get(method)
        if observer is None:
            service, _, name = method.lstrip("/").rpartition("/")
            observer = _Observer(self._metrics, service or UNKNOWN, name or UNKNOWN)
            if len(self._observers) < 1024:  # per-call wrapping (thread-pool server): bounded
                self._observers[method] = observer
        return observer

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        observe = self._observer(method, handler)
        if handler is UNIMPLEMENTED_HANDLER:
            inner_unknown = handler.unary_unary

            def unimplemented(request: Any, context: grpc.ServicerContext) -> Any:
                observe(grpc.StatusCode.UNIMPLEMENTED.name, time.perf_counter())
                return inner_unknown(request, context)

            return handler._replace(unary_unary=unimplemented)  # type: ignore[attr-defined]

        def async_unary(inner: HandlerFn) -> HandlerFn:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0 = time.perf_counter()
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    observe(_code_of(exc, context), t0)
                    raise
                observe("OK", t0)
                return response

            return run

        def async_stream(inner: HandlerFn) -> HandlerFn:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                t0 = time.perf_counter()
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    observe(_code_of(exc, context), t0)
                    raise
                observe("OK", t0)

            return run

        def unary(inner: HandlerFn) -> HandlerFn:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                t0 = time.perf_counter()
                try:
                    response = inner(request, context)
                except BaseException as exc:
                    observe(_code_of(exc, context), t0)
                    raise
                observe("OK", t0)
                return response

            return run

        def stream(inner: HandlerFn) -> HandlerFn:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                t0 = time.perf_counter()
                try:
                    yield from inner(request, context)
                except BaseException as exc:
                    observe(_code_of(exc, context), t0)
                    raise
                observe("OK", t0)

            return run

        # stream_stream: reflection; no service of recsvc has client-streaming calls
        kinds = ("unary_unary", "unary_stream", "stream_stream")
        return rewrap(handler, KindWrappers(async_unary, async_stream, unary, stream), kinds)
