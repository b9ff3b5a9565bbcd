"""Helpers for interceptors that must wrap both kinds of handlers the aio server runs:
``async def`` handlers on the event loop and plain functions in its thread pool.

recsvc's interceptors are ``MethodWrapper``s: what they do to a call depends on the method and
the call itself (its metadata, its outcome), never on the choice of handler. So the aio server
(``recsvc.server.app.build_server``) applies them once per method, when the services are
registered (``WrappingRegistrar``), instead of running grpc's per-call interceptor pipeline:
that pipeline cost ~0.05 ms of server CPU per call here, a tenth of the transport itself.
On a thread-pool server they still work as interceptors."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc


def is_async(fn: Callable[..., Any] | None) -> bool:
    return fn is not None and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))


HandlerFn = Callable[..., Any]
# The four functions a grpc.RpcMethodHandler may carry (one of them is set).
ALL_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


@dataclass(frozen=True)
class KindWrappers:
    """How one interceptor wraps each kind of handler function: ``async def`` or plain, one answer
    or a stream of answers. A kind left None passes through unwrapped."""

    async_unary: Callable[[HandlerFn], HandlerFn] | None = None
    async_stream: Callable[[HandlerFn], HandlerFn] | None = None
    unary: Callable[[HandlerFn], HandlerFn] | None = None
    stream: Callable[[HandlerFn], HandlerFn] | None = None


def rewrap(
    handler: grpc.RpcMethodHandler, wrappers: KindWrappers, kinds: Sequence[str] = ALL_KINDS
) -> grpc.RpcMethodHandler:
    """``handler`` with its functions among ``kinds`` wrapped by the wrapper for their kind.

    An ``async def`` function streams its answers when it is an async generator (a coroutine that
    writes its answers with ``context.write`` is wrapped like a unary one); a plain function
    streams when its field is ``*_stream`` (a generator)."""
    changes: dict[str, HandlerFn] = {}
    for field in kinds:
        fn = getattr(handler, field)
        if fn is None:
            continue
        if is_async(fn):
            wrap = wrappers.async_stream if inspect.isasyncgenfunction(fn) else wrappers.async_unary
        else:
            wrap = wrappers.stream if field.endswith("_stream") else wrappers.unary
        if wrap is not None:
            changes[field] = wrap(fn)
    return handler._replace(**changes) if changes else handler  # type: ignore[attr-defined]


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


class MethodWrapper(grpc.ServerInterceptor):
    """An interceptor that wraps a method's handler, the same way for every call of that method:
    per-call work (checking metadata, mapping errors) happens inside the handler it returns.

    ``wrap`` gets the methods a service registered; ``wrap_unknown`` the names no service has
    (the caller's to choose, so without bound). Each wrapper is told which one directly: a
    handler it gets may already be wrapped by others, so it cannot tell by the handler."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    def wrap_unknown(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of ``method``, a name no service registered (``handler`` answers
        UNIMPLEMENTED once the wrappers further in let the call through)."""
        return self.wrap(method, handler)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if isinstance(handler, _Unregistered):
            # An interceptor further in answers for a method the server lacks (AuthInterceptor
            # refuses it like any other); it stays marked for the interceptors further out.
            return _unregistered(self.wrap_unknown(method, handler))
        return self.wrap(method, handler)


def wrap_handler(
    wrappers: Sequence[MethodWrapper],
    method: str,
    handler: grpc.RpcMethodHandler,
    *,
    registered: bool = True,
) -> grpc.RpcMethodHandler:
    """``handler`` inside ``wrappers``, the first outermost (the order of a server's interceptors).
    ``registered``: whether a service has ``method`` (else each wrapper's ``wrap_unknown``)."""
    for wrapper in reversed(wrappers):
        handler = wrapper.wrap(method, handler) if registered else wrapper.wrap_unknown(method, handler)
    return handler


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose answers are wrapped, once per method name."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrappers: Sequence[MethodWrapper]) -> None:
        self._inner = inner
        self._wrappers = wrappers
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # type: ignore[attr-defined]
        try:
            return self._cache[method]
        except KeyError:
            pass
        handler = self._inner.service(handler_call_details)
        wrapped = None if handler is None else wrap_handler(self._wrappers, method, handler)
        if handler is not None or len(self._cache) < 1024:  # unknown names: bounded
            self._cache[method] = wrapped
        return wrapped


def _unimplemented(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


# grpc's handler type (a named tuple: ``_replace`` keeps the subclass below).
_HandlerType: Any = type(grpc.unary_unary_rpc_method_handler(_unimplemented))


class _Unregistered(_HandlerType):  # type: ignore[misc]
    """A handler for a method no service has. Only interceptors run per call need the mark (see
    ``MethodWrapper.intercept_service``): the registrar tells each wrapper by name."""


def _unregistered(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return handler if isinstance(handler, _Unregistered) else _Unregistered(*handler)  # type: ignore[misc]


# What a server answers for a method it does not have, as a handler wrappers can wrap.
UNIMPLEMENTED_HANDLER = _unregistered(grpc.unary_unary_rpc_method_handler(_unimplemented))


class _UnknownMethods(grpc.GenericRpcHandler):
    """Last in line: a method no service has still goes through the wrappers (so an unknown
    caller gets UNAUTHENTICATED, not a list of what exists), then UNIMPLEMENTED."""

    def __init__(self, wrappers: Sequence[MethodWrapper]) -> None:
        self._wrappers = wrappers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        # Not cached: the names are the caller's to choose.
        method = handler_call_details.method  # type: ignore[attr-defined]
        return wrap_handler(self._wrappers, method, UNIMPLEMENTED_HANDLER, registered=False)


class WrappingRegistrar:
    """Stands in for a ``grpc.aio.Server`` while services are added: every handler they register
    is wrapped by ``wrappers`` (once per method) before it reaches the server. Generic handlers
    must answer by method name alone (generated services and grpc's health do)."""

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[MethodWrapper]) -> None:
        self.server = server
        self._wrappers = tuple(wrappers)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._wrappers) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.server.add_registered_method_handlers(
            service,
            {name: wrap_handler(self._wrappers, f"/{service}/{name}", h) for name, h in handlers.items()},
        )

    def finish(self) -> None:
        """After every service: route unknown methods through the wrappers too."""
        if self._wrappers:
            self.server.add_generic_rpc_handlers((_UnknownMethods(self._wrappers),))
