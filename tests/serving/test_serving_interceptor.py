"""The error interceptor on a real gRPC server: typed errors keep their code, anything unexpected
becomes INTERNAL (never UNKNOWN), for unary and server-streaming handlers alike, on a thread-pool
server and on the aio server recsvc serves with (plain handlers in its thread pool, ``async def``
handlers on its loop)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from recsvc.errors import NotFound
from recsvc.server.aio_host import AioServerHost
from recsvc.server.handlers import MethodWrapper, SyncInterceptorAdapter, WrappingRegistrar, is_async
from recsvc.server.interceptors import ErrorInterceptor

SERVICE = "test.Boom"


def _identity(b: bytes) -> bytes:
    return b


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"typed":
        raise NotFound("no such thing", reason="THING_NOT_FOUND")
    if request == b"ok":
        return b"fine"
    raise ZeroDivisionError("boom")


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    if request == b"typed":
        raise NotFound("gone midway", reason="THING_NOT_FOUND")
    raise KeyError("boom")


async def _async_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _unary(request, context)  # type: ignore[arg-type]


async def _async_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for item in _stream(request, context):  # type: ignore[arg-type]
        yield item


def _handlers(asynchronous: bool) -> Any:
    unary, stream = (_async_unary, _async_stream) if asynchronous else (_unary, _stream)
    handlers: dict[str, Any] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
    }
    return (grpc.method_handlers_generic_handler(SERVICE, handlers),)


@pytest.fixture(
    params=[
        "thread-pool",
        "aio-sync-handlers",
        "aio-async-handlers",
        "aio-uvloop",
        "aio-wrapped-sync-handlers",
        "aio-wrapped-async-handlers",
    ]
)
def channel(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    """The same error handling on every server kind: ``aio-wrapped-*`` apply the interceptor once
    per method as services are added (``WrappingRegistrar``), as ``recsvc serve`` does."""
    server: Any
    if request.param == "thread-pool":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor()])
        server.add_generic_rpc_handlers(_handlers(False))
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        ports: list[int] = []

        wrapped = request.param.startswith("aio-wrapped")
        asynchronous = request.param not in ("aio-sync-handlers", "aio-wrapped-sync-handlers")

        def build() -> grpc.aio.Server:
            aio = grpc.aio.server(
                migration_thread_pool=futures.ThreadPoolExecutor(max_workers=2),
                interceptors=None if wrapped else [SyncInterceptorAdapter(ErrorInterceptor())],
            )
            if wrapped:
                registrar = WrappingRegistrar(aio, [ErrorInterceptor()])
                registrar.add_generic_rpc_handlers(_handlers(asynchronous))
                registrar.finish()
            else:
                aio.add_generic_rpc_handlers(_handlers(asynchronous))
            ports.append(aio.add_insecure_port("127.0.0.1:0"))
            return aio

        uvloop = request.param == "aio-uvloop"  # as served (serving.event_loop), async handlers
        server = AioServerHost(build, event_loop="uvloop" if uvloop else "asyncio")
        assert type(server._loop).__module__.startswith("uvloop") == uvloop
        port = ports[0]
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield ch
    ch.close()
    assert server.stop(grace=0).wait(10)


def test_unary(channel: grpc.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
    assert call(b"ok", timeout=5) == b"fine"
    with pytest.raises(grpc.RpcError) as err:
        call(b"typed", timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "THING_NOT_FOUND: no such thing"
    with pytest.raises(grpc.RpcError) as err:
        call(b"other", timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError" in err.value.details() and "Traceback" not in err.value.details()


def test_stream(channel: grpc.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream", _identity, _identity)
    for request, code in ((b"typed", grpc.StatusCode.NOT_FOUND), (b"other", grpc.StatusCode.INTERNAL)):
        received = []
        with pytest.raises(grpc.RpcError) as err:
            for item in call(request, timeout=5):
                received.append(item)
        assert received == [b"first"]
        assert err.value.code() == code


class _Counting(MethodWrapper):
    """Counts how often it wraps each method and how often the wrapped handler runs; refuses
    (PERMISSION_DENIED) calls with ``deny`` metadata."""

    def __init__(self) -> None:
        self.wrapped: dict[str, int] = {}
        self.calls = 0

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wrapped[method] = self.wrapped.get(method, 0) + 1
        inner = handler.unary_unary
        if inner is None:
            return handler
        if not is_async(inner):  # the unknown-method handler: plain, runs in the pool

            def counted_sync(request: Any, context: grpc.ServicerContext) -> Any:
                self.calls += 1
                if ("deny", "1") in tuple(context.invocation_metadata() or ()):
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
                return inner(request, context)

            return handler._replace(unary_unary=counted_sync)  # type: ignore[attr-defined, no-any-return]

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.calls += 1
            if ("deny", "1") in tuple(context.invocation_metadata() or ()):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
            return await inner(request, context)

        return handler._replace(unary_unary=counted)  # type: ignore[attr-defined, no-any-return]


def test_registrar_wraps_each_method_once_and_unknown_methods_too() -> None:
    counting = _Counting()
    ports: list[int] = []

    def build() -> grpc.aio.Server:
        aio = grpc.aio.server()
        registrar = WrappingRegistrar(aio, [ErrorInterceptor(), counting])
        registrar.add_generic_rpc_handlers(_handlers(True))
        registrar.add_registered_method_handlers(
            "test.Registered",
            {"Unary": grpc.unary_unary_rpc_method_handler(_async_unary, _identity, _identity)},
        )
        registrar.finish()
        ports.append(aio.add_insecure_port("127.0.0.1:0"))
        return aio

    server = AioServerHost(build)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as ch:
            generic = ch.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)
            registered = ch.unary_unary("/test.Registered/Unary", _identity, _identity)
            for _ in range(5):
                assert generic(b"ok", timeout=5) == b"fine"
                assert registered(b"ok", timeout=5) == b"fine"
            with pytest.raises(grpc.RpcError) as err:
                generic(b"ok", metadata=[("deny", "1")], timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as err:  # typed errors still mapped (ErrorInterceptor)
                registered(b"typed", timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            unknown = ch.unary_unary("/test.Nothing/Here", _identity, _identity)
            with pytest.raises(grpc.RpcError) as err:
                unknown(b"ok", metadata=[("deny", "1")], timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # the wrappers ran first
            with pytest.raises(grpc.RpcError) as err:
                unknown(b"ok", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert server.stop(grace=0).wait(10)
    # Each served method was wrapped once, however many calls it had; the wrapper ran per call.
    assert counting.wrapped[f"/{SERVICE}/Unary"] == 1
    assert counting.wrapped["/test.Registered/Unary"] == 1
    assert counting.calls == 5 + 5 + 1 + 1 + 2


def _pooled_server(
    handlers: dict[str, grpc.RpcMethodHandler], thread_prefix: str
) -> tuple[AioServerHost, grpc.Channel]:
    """A started aio server with ``handlers`` under ``SERVICE``, its plain handlers in a pool of
    two threads named ``thread_prefix``, as ``recsvc serve`` hands it; and a channel to it."""
    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=thread_prefix)
    ports: list[int] = []

    def build() -> grpc.aio.Server:
        aio = grpc.aio.server(migration_thread_pool=pool)
        aio.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        ports.append(aio.add_insecure_port("127.0.0.1:0"))
        return aio

    server = AioServerHost(build, executor=pool)
    server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{ports[0]}")


def test_stopping_waits_for_sync_handlers_while_the_loop_still_runs() -> None:
    """A synchronous handler still running when the server stops may need the loop (grpc's
    context calls go through it); the host drains its thread pool before closing the loop, so
    the handler ends and no pool thread is left waiting (the interpreter waits for them at exit)."""
    import contextlib

    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        started.set()
        release.wait(10)
        # A round trip through the loop; the stop cancelled the call, so it may raise: fine, as
        # long as it returns.
        with contextlib.suppress(Exception):
            context.send_initial_metadata((("k", "v"),))
        done.set()
        return b"late"

    server, channel = _pooled_server(
        {"Slow": grpc.unary_unary_rpc_method_handler(slow)}, thread_prefix="drain-test"
    )
    call = channel.unary_unary(f"/{SERVICE}/Slow", _identity, _identity).future(b"x", timeout=10)
    assert started.wait(10)
    stopped = server.stop(grace=0)
    threading.Timer(0.3, release.set).start()
    assert stopped.wait(15)
    assert done.is_set()  # the host waited for the handler before it closed the loop
    assert not [t for t in threading.enumerate() if t.name.startswith("drain-test")]  # pool ended
    with pytest.raises(grpc.RpcError):
        call.result(timeout=10)  # cancelled by the stop
    channel.close()


def test_stopping_ends_a_sync_stream_whose_reader_stalled() -> None:
    """A plain-generator stream runs in the pool and hands each message to the loop, waiting for
    it to be queued; when the caller stops reading, that wait never ends by itself. At stop the
    host cancels what is left on the loop, so the pool thread ends: the stop returns well within
    its drain bound and no pool thread is left for the interpreter to wait for at exit."""
    import time

    produced = threading.Event()

    def firehose(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(10_000):
            produced.set()
            yield b"x" * 65_536

    server, channel = _pooled_server(
        {"Firehose": grpc.unary_stream_rpc_method_handler(firehose)}, thread_prefix="stall-test"
    )
    stream = channel.unary_stream(f"/{SERVICE}/Firehose", _identity, _identity)(b"x", timeout=30)
    assert next(stream) == b"x" * 65_536  # then stop reading: flow control stalls the writer
    assert produced.wait(10)
    time.sleep(0.5)
    t0 = time.monotonic()
    assert server.stop(grace=0).wait(25)
    assert time.monotonic() - t0 < 10  # not the 30 s drain bound
    assert not [t for t in threading.enumerate() if t.name.startswith("stall-test")]
    stream.cancel()
    channel.close()


def test_interceptors_run_per_call_count_made_up_methods_as_unknown() -> None:
    """On a thread-pool server (interceptors run per call) the key check answers for a method
    the server lacks; the counter outside it still labels such calls ``unknown``."""
    from recsvc.metrics import ServingMetrics
    from recsvc.security.auth import AuthInterceptor, KeyStore, hash_key, new_key
    from recsvc.server.rpc_metrics import RpcMetricsInterceptor
    from recsvc.settings import CallerKey

    metrics = ServingMetrics()
    keys = KeyStore([CallerKey(name="shop", roles=["recommend"], key_sha256=hash_key(new_key()))])
    interceptors = [ErrorInterceptor(), RpcMetricsInterceptor(metrics), AuthInterceptor(keys)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    server.add_generic_rpc_handlers(_handlers(False))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for name in [f"/x.Y/m{i}" for i in range(5)] + [f"/{SERVICE}/Unary"]:
                with pytest.raises(grpc.RpcError) as refused:
                    ch.unary_unary(name)(b"ok", timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)
    handled = {
        (s.labels["service"], s.labels["method"], s.labels["code"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "recsvc_grpc_server_handled_total"
    }
    assert handled == {("unknown", "unknown", "UNAUTHENTICATED"): 5, (SERVICE, "Unary", "UNAUTHENTICATED"): 1}
