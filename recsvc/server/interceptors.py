"""The one error-mapping interceptor: ``RecsvcError`` -> ``context.abort(code, message)``;
anything unexpected -> INTERNAL with a log line (never UNKNOWN, never a traceback to callers)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from recsvc.errors import RecsvcError

log = logging.getLogger(__name__)


class DeadlineExceeded(RecsvcError):
    """The caller's deadline passed before the answer was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


def check_deadline(context: grpc.ServicerContext) -> None:
    """Stop work the caller will never read."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before the answer was ready")


def _abort(context: grpc.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, RecsvcError):
        if exc.code == grpc.StatusCode.INTERNAL:
            log.error("event=rpc_error method=%s reason=%s message=%s", method, exc.reason, exc.message)
        context.abort(exc.code, str(exc))
    log.exception("event=rpc_unexpected_error method=%s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"INTERNAL: unexpected {type(exc).__name__}; see server logs")


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    # context.abort() raises an exception of grpc's own; let it through untouched.
    return not isinstance(exc, RecsvcError) and context.code() is not None


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method  # type: ignore[attr-defined]

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner_uu(request, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    _abort(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from inner_us(request, context)
                except Exception as exc:
                    if _is_abort(exc, context):
                        raise
                    _abort(context, method, exc)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
