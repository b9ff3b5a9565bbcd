"""Counts every RPC of every service by service, method and status code, with its latency
(``recsvc_grpc_server_handled_total``, ``recsvc_grpc_server_handling_seconds``).

One ``MethodWrapper`` in the chain every registered handler goes through (``build_server``), so a
service added later is counted without touching this file. It sits inside the error interceptor:
it sees a ``RecsvcError`` and takes the status code the interceptor will send from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from recsvc.errors import RecsvcError
from recsvc.metrics import ServingMetrics
from recsvc.server.handlers import HandlerFn, KindWrappers, MethodWrapper, rewrap

# Method names are the caller's to choose for methods no service has: one label for all of them.
UNKNOWN = "unknown"
_UNKNOWN_METHOD = f"/{UNKNOWN}/{UNKNOWN}"


class _CodeKeeping:
    """A plain handler's context on the aio server (run in its thread pool) cannot say which code
    ``abort()`` or ``set_code()`` gave the call; this one, passed in its place, remembers it. An
    abort is counted (``on_abort``) before it is passed on: the status may reach the caller
    before the handler's thread returns, and a caller reading the metrics then must find it."""

    __slots__ = ("_code", "_context", "_on_abort", "counted")

    def __init__(self, context: Any, on_abort: Callable[[str], None]) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None
        self._on_abort = on_abort
        self.counted = False

    def abort(self, code: grpc.StatusCode, *args: Any, **kwargs: Any) -> Any:
        self._code = code
        if not self.counted:
            self.counted = True
            self._on_abort(code.name)
        return self._context.abort(code, *args, **kwargs)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _code_set(context: Any) -> grpc.StatusCode | None:
    code = getattr(context, "code", None)
    found = code() if code is not None else None
    return found if isinstance(found, grpc.StatusCode) else None


def _code_of(exc: BaseException, context: Any) -> str:
    if isinstance(exc, RecsvcError):
        return exc.code.name
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name  # the caller went away (or the server is stopping)
    found = _code_set(context)  # an abort() with a code
    if found is not None:
        return found.name
    if isinstance(exc, grpc.aio.AbortError):
        return "ABORTED_BY_HANDLER"  # aborted through a context other than the one passed in
    return grpc.StatusCode.INTERNAL.name  # what the error interceptor answers for the unexpected


def _code_on_return(context: Any) -> str:
    """A handler may end its call without raising, with ``set_code`` (streams do, see
    ``ErrorInterceptor``)."""
    found = _code_set(context)
    return found.name if found is not None else grpc.StatusCode.OK.name


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
    """Labels a call by its service and method when a service registered the method, else
    ``unknown``/``unknown`` (``wrap_unknown``): the series are bounded by what the server has,
    whatever names callers send and whichever wrappers run further in."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics
        # Keyed by registered method names (and the one unknown key) only: a fixed set.
        self._observers: dict[str, _Observer] = {}

    def _observer(self, method: str) -> _Observer:
        observer = self._observers.get(method)
        if observer is None:
            service, _, name = method.lstrip("/").rpartition("/")
            observer = self._observers[method] = _Observer(self._metrics, service or UNKNOWN, name or UNKNOWN)
        return observer

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return self._counted(self._observer(method), handler)

    def wrap_unknown(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return self._counted(self._observer(_UNKNOWN_METHOD), handler)

    @staticmethod
    def _counted(observe: _Observer, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def async_unary(inner: HandlerFn) -> HandlerFn:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0 = time.perf_counter()
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    observe(_code_of(exc, context), t0)
                    raise
                observe(_code_on_return(context), t0)
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
                observe(_code_on_return(context), t0)

            return run

        def unary(inner: HandlerFn) -> HandlerFn:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                t0 = time.perf_counter()
                context = _CodeKeeping(context, lambda code: observe(code, t0))
                try:
                    response = inner(request, context)
                except BaseException as exc:
                    if not context.counted:
                        observe(_code_of(exc, context), t0)
                    raise
                observe(_code_on_return(context), t0)
                return response

            return run

        def stream(inner: HandlerFn) -> HandlerFn:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                t0 = time.perf_counter()
                context = _CodeKeeping(context, lambda code: observe(code, t0))
                try:
                    yield from inner(request, context)
                except BaseException as exc:
                    if not context.counted:
                        observe(_code_of(exc, context), t0)
                    raise
                observe(_code_on_return(context), t0)

            return run

        # stream_stream: reflection; no service of recsvc has client-streaming calls
        kinds = ("unary_unary", "unary_stream", "stream_stream")
        return rewrap(handler, KindWrappers(async_unary, async_stream, unary, stream), kinds)
