"""The one error-mapping interceptor: ``RecsvcError`` -> ``context.abort(code, message)``;
anything unexpected -> INTERNAL with a log line (never UNKNOWN, never a traceback to callers).

Wraps plain handlers (thread pool) and ``async def`` handlers (the aio server's event loop) alike;
on the aio server it is applied once per method (``recsvc.server.handlers.MethodWrapper``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from recsvc.errors import RecsvcError, status_details
from recsvc.server.handlers import HandlerFn, KindWrappers, MethodWrapper, rewrap

log = logging.getLogger(__name__)


class DeadlineExceeded(RecsvcError):
    """The caller's deadline passed before the answer was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


def check_deadline(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> None:
    """Stop work the caller will never read."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the answer was ready")


def _abort(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    context.abort(*_status_of(method, exc))


def _status_of(method: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RecsvcError):
        if exc.code == grpc.StatusCode.INTERNAL:
            log.error("event=rpc_error method=%s reason=%s message=%s", method, exc.reason, exc.message)
        return exc.code, status_details(exc)
    log.error("event=rpc_unexpected_error method=%s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"INTERNAL: unexpected {type(exc).__name__}; see server logs"


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """context.abort() raises an exception of grpc's own; let it through untouched. (A plain
    handler on the aio server gets a context without ``code()``; its abort raises AbortError.)"""
    if isinstance(exc, grpc.aio.AbortError):
        return True
    if isinstance(exc, RecsvcError):
        return False
    code = getattr(context, "code", None)
    return code is not None and code() is not None


class ErrorInterceptor(MethodWrapper):
    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def async_unary(inner: HandlerFn) -> HandlerFn:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await context.abort(*_status_of(method, exc))

            return run

        def async_stream(inner: HandlerFn) -> HandlerFn:
            async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner(request, context):
                        yield item
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await context.abort(*_status_of(method, exc))

            return run

        def unary(inner: HandlerFn) -> HandlerFn:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner(request, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    _abort(context, method, exc)

            return run

        def stream(inner: HandlerFn) -> HandlerFn:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from inner(request, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    # End the stream with the status rather than abort() from inside the
                    # generator: on the aio server a plain generator runs step by step in the
                    # thread pool, and aborting from there could leave the call hanging.
                    code, details = _status_of(method, exc)
                    context.set_code(code)
                    context.set_details(details)

            return run

        return rewrap(
            handler,
            KindWrappers(async_unary, async_stream, unary, stream),
            ("unary_unary", "unary_stream", "stream_stream"),
        )
