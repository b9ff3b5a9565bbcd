"""Requests that are not valid protobuf get INVALID_ARGUMENT (reason ``MALFORMED_REQUEST``) after
authentication, never grpc's own status.

grpc decodes a request before it calls the handler. When the decoder raises (invalid UTF-8 in a
string field, an overlong varint, a truncated field), the aio server answers ``UNKNOWN:
Unexpected DecodeError ...`` naming the request type, and a thread-pool server INTERNAL, before
any interceptor has seen the call: an unauthenticated caller got a status docs/api.md rules out
and learnt message names. ``RequestDecoding`` wraps each method's request deserializer so a failure
becomes a ``Malformed`` value instead, and the method's handler turns that value into a
``MalformedRequest``. It is the innermost wrapper, so the key check runs first (a caller without a
key gets UNAUTHENTICATED) and the error interceptor maps the error like any other. Requests that
arrive as a stream (server reflection) are checked one by one as the handler reads them; the error
interceptor does not wrap such handlers, so the status is set here, from the typed error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

from recsvc.errors import InvalidArgument, status_details
from recsvc.server.handlers import HandlerFn, KindWrappers, MethodWrapper, rewrap

log = logging.getLogger(__name__)


class MalformedRequest(InvalidArgument):
    """The request bytes do not decode as the method's request message."""

    reason = "MALFORMED_REQUEST"


class Malformed:
    """What the wrapped deserializer returns for bytes that do not decode."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def misplaced_field(message: Any) -> str | None:
    """The first field of ``message`` (or of a message inside it) that arrived with another wire
    type than its declared one, as ``Type.field``; None if there is none.

    protobuf keeps such a field as an unknown field and leaves the declared one at its default,
    so ``model_uri`` sent as a fixed32 would read as "no model URI" and an admin's pin would go.
    Unknown fields with numbers the message does not declare stay accepted: a newer client's.
    """
    fields = message.DESCRIPTOR.fields_by_number
    unknowns: Any = UnknownFieldSet(message)  # iterable at run time; its stub says otherwise
    for unknown in unknowns:
        if unknown.field_number in fields:
            return f"{message.DESCRIPTOR.name}.{fields[unknown.field_number].name}"
    for fd, value in message.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            is_message = fd.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
            inner = list(value.values()) if is_message else []
        elif fd.is_repeated:
            inner = list(value)
        else:
            inner = [value]
        for item in inner:
            found = misplaced_field(item)
            if found is not None:
                return found
    return None


def safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:  # the handler takes the raw bytes
        return None

    def deserialize(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except Exception as exc:  # whatever the decoder raises, the caller sent bad bytes
            return Malformed(exc)
        misplaced = misplaced_field(message) if hasattr(message, "DESCRIPTOR") else None
        if misplaced is not None:
            return Malformed(ValueError(f"field {misplaced} arrived with the wrong wire type"))
        return message

    return deserialize


def _refuse(method: str, request: Malformed) -> NoReturn:
    # The decoder's message (which names the type) goes to the log only; the caller may hold no key.
    log.info(
        "event=malformed_request method=%s error=%s", method, str(request.error)[:200].replace("\n", " ")
    )
    raise MalformedRequest("the request bytes are not a valid protobuf message of this method's request type")


class RequestDecoding(MethodWrapper):
    """Innermost wrapper of every method (see the module docstring)."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.request_deserializer is None:
            return handler
        handler = handler._replace(  # type: ignore[attr-defined]
            request_deserializer=safe_deserializer(handler.request_deserializer)
        )
        handler = rewrap(handler, _one_request(method), ("unary_unary", "unary_stream"))
        return rewrap(handler, _request_stream(method), ("stream_unary", "stream_stream"))


def _one_request(method: str) -> KindWrappers:
    """Handlers of one request: refuse it when it did not decode."""

    def async_unary(fn: HandlerFn) -> HandlerFn:
        async def arun(request: Any, context: Any) -> Any:
            if type(request) is Malformed:
                _refuse(method, request)
            return await fn(request, context)

        return arun

    def async_stream(fn: HandlerFn) -> HandlerFn:
        async def arun(request: Any, context: Any) -> AsyncIterator[Any]:
            if type(request) is Malformed:
                _refuse(method, request)
            async for item in fn(request, context):
                yield item

        return arun

    def unary(fn: HandlerFn) -> HandlerFn:
        def run(request: Any, context: Any) -> Any:
            if type(request) is Malformed:
                _refuse(method, request)
            return fn(request, context)

        return run

    def stream(fn: HandlerFn) -> HandlerFn:
        def run(request: Any, context: Any) -> Iterator[Any]:
            if type(request) is Malformed:
                _refuse(method, request)
            yield from fn(request, context)

        return run

    return KindWrappers(async_unary, async_stream, unary, stream)


def _checked(method: str, requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if type(request) is Malformed:
            _refuse(method, request)
        yield request


async def _achecked(method: str, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if type(request) is Malformed:
            _refuse(method, request)
        yield request


def _request_stream(method: str) -> KindWrappers:
    """Handlers of a stream of requests: refuse the first that did not decode."""

    def async_unary(fn: HandlerFn) -> HandlerFn:
        async def arun(requests: AsyncIterator[Any], context: Any) -> Any:
            try:
                return await fn(_achecked(method, requests), context)
            except MalformedRequest as exc:
                await context.abort(exc.code, status_details(exc))

        return arun

    def async_stream(fn: HandlerFn) -> HandlerFn:
        async def arun(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            try:
                async for item in fn(_achecked(method, requests), context):
                    yield item
            except MalformedRequest as exc:
                await context.abort(exc.code, status_details(exc))

        return arun

    def unary(fn: HandlerFn) -> HandlerFn:
        def run(requests: Iterator[Any], context: Any) -> Any:
            try:
                return fn(_checked(method, requests), context)
            except MalformedRequest as exc:
                context.abort(exc.code, status_details(exc))

        return run

    def stream(fn: HandlerFn) -> HandlerFn:
        def run(requests: Iterator[Any], context: Any) -> Iterator[Any]:
            try:
                yield from fn(_checked(method, requests), context)
            except MalformedRequest as exc:
                # End the stream with the status (as the error interceptor does for streams): a plain
                # generator runs step by step in the aio server's pool, where abort() could hang.
                context.set_code(exc.code)
                context.set_details(status_details(exc))

        return run

    return KindWrappers(async_unary, async_stream, unary, stream)
