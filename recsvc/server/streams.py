"""Server-streaming methods written as plain generators, run so that a caller who stops reading
costs nothing.

grpc.aio runs a plain generator handler in its thread pool and sends each message from there by
waiting on the event loop. A caller that cancels, or simply stops reading, mid-stream leaves that
pool thread waiting for good; a handful of such callers (a fuzzer, a client that reads the first
page of an export, a flaky network) take every pool thread, and every synchronous method then
times out. ``StreamsOnTheLoop`` turns such a handler into an ``async`` generator: each ``next()``
of the plain generator runs in the pool and returns at once, the messages are sent from the
loop, and a cancelled call closes the generator. Handlers keep being written as plain
generators."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from typing import Any

import grpc

from recsvc.server.handlers import MethodWrapper, is_async

_DONE = object()


class StreamsOnTheLoop(MethodWrapper):
    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_stream
        if inner is None or is_async(inner):
            return handler
        executor = self._executor

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            loop = asyncio.get_running_loop()
            # Every step in one copy of the call's context, as if the generator ran in the call's
            # task: what the call set before (the authenticated caller) is seen in the pool, and
            # what a step sets stays with the call instead of with a pool thread. Steps never
            # overlap, so the one context is never entered twice at once.
            ctx = contextvars.copy_context()
            messages: Iterator[Any] = await loop.run_in_executor(
                executor, ctx.run, _start, inner, request, context
            )
            try:
                while True:
                    message = await loop.run_in_executor(executor, ctx.run, _step, messages)
                    if message is _DONE:
                        return
                    yield message
            finally:
                # The generator's own cleanup (finally blocks); it is not running unless the call
                # was cancelled while a next() was in the pool, and then it ends with that next().
                try:
                    close = getattr(messages, "close", None)
                    if close is not None:
                        close()
                except ValueError:
                    pass  # "generator already executing": the pool thread finishes it

        return handler._replace(unary_stream=stream)  # type: ignore[attr-defined]


def _step(messages: Iterator[Any]) -> Any:
    return next(messages, _DONE)


def _start(handler: Any, request: Any, context: Any) -> Iterator[Any]:
    """The handler's iterator (a generator function returns it without running any of its body;
    a function that validates first and returns an iterator runs that part here, in the pool)."""
    return iter(handler(request, context))
