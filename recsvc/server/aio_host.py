"""A ``grpc.aio`` server on its own event-loop thread, driven through a blocking API.

The serving hot path (``RecommendProducts``, ``RecommendContent``, ``SimilarItems``) is made of
``async def`` handlers that run on the event loop: no thread hand-off per call, which the
thread-pool server pays (and its GIL switches show up in p99). Every other handler (``RecordEvent``,
whose Redis write should not hold up the loop, outreach, admin, health, batch streams,
``ReloadModel``) stays synchronous and runs in the server's ``migration_thread_pool``, which
``grpc.aio`` provides for exactly that.

Start-up, model polling, signal handling and shutdown are threads around the server, as before, so
``AioServerHost`` offers the parts of ``grpc.Server`` they use: ``start``, ``stop(grace)`` (an
event to ``wait()`` on) and ``wait_for_termination``. The loop thread creates the server, since
grpc.aio objects belong to the thread whose loop created them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc

T = TypeVar("T")
log = logging.getLogger(__name__)
_DRAIN_TIMEOUT_S = 30.0


def new_event_loop(kind: str = "asyncio") -> asyncio.AbstractEventLoop:
    """``"uvloop"``: libuv's loop (each wake-up of the loop costs less CPU, which a server woken
    once or more per call feels); ``"asyncio"``: the standard library's."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class AioServerHost:
    def __init__(
        self,
        build: Callable[[], grpc.aio.Server],
        name: str = "recsvc-aio",
        event_loop: str = "asyncio",
        executor: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        # The server's migration_thread_pool, if ``build`` gives it one: drained before the loop
        # closes (see ``_after_stop``).
        self._executor = executor
        self._loop = new_event_loop(event_loop)
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()
        self._stopped = threading.Event()

        async def _build() -> grpc.aio.Server:
            return build()

        try:
            self.server: grpc.aio.Server = self._call(_build())
        except BaseException:
            self._close_loop()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()

    def start(self) -> None:
        self._call(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop taking calls, give in-flight ones ``grace`` seconds, then close the loop. The
        returned event is set once all of that is done (``grpc.Server.stop`` semantics)."""
        if self._stopped.is_set() or self._loop.is_closed():
            return self._stopped

        def _finish(_: Any) -> None:
            threading.Thread(target=self._after_stop, name="recsvc-aio-close", daemon=True).start()

        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
        fut.add_done_callback(_finish)
        return self._stopped

    def _after_stop(self) -> None:
        if self._executor is not None:
            # Synchronous handlers still finishing in the pool may be waiting on coroutines of
            # this loop (grpc's context calls: abort, metadata). Let them end while the loop runs:
            # a pool thread left waiting on a closed loop never ends, and the interpreter waits
            # for pool threads at exit. Bounded, so a handler that never returns cannot hold up
            # the stop itself.
            # A pool thread may also wait on the loop for good: a plain-generator stream hands
            # each message to the loop and waits until it is queued, and once the stopped call
            # no longer reads, that never happens. So what the stop left on the loop is
            # cancelled, again each round (the generator's cleanup hands the loop one more).
            drain = threading.Thread(
                target=self._executor.shutdown,
                kwargs={"wait": True, "cancel_futures": True},
                name="recsvc-aio-drain",
                daemon=True,
            )
            drain.start()
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            drain.join(timeout=0.05)
            while drain.is_alive() and time.monotonic() < deadline:
                self._cancel_leftover_tasks()
                drain.join(timeout=0.2)
            if drain.is_alive():
                log.warning("event=handlers_still_running_at_stop waited_s=%s", _DRAIN_TIMEOUT_S)
        self._cancel_leftover_tasks(wait_s=2.0)
        self._close_loop()
        self._stopped.set()

    def _cancel_leftover_tasks(self, wait_s: float = 0.2) -> None:
        """Cancel every task still on the (stopped server's) loop and give them ``wait_s`` to
        unwind: a thread waiting on one through ``run_coroutine_threadsafe`` gets CancelledError
        and moves on, and no unfinished coroutine is left for the garbage collector to close."""

        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=wait_s)

        # The loop closing or too busy to answer: the next round tries again.
        with contextlib.suppress(RuntimeError, futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=wait_s + 5)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True when the server stopped within ``timeout``."""
        return self._stopped.wait(timeout)
