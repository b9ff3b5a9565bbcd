"""The error interceptor on a real gRPC server: typed errors keep their code, anything unexpected
becomes INTERNAL (never UNKNOWN), for unary and server-streaming handlers alike."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from recsvc.errors import NotFound
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


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor()])
    handlers: dict[str, Any] = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream, _identity, _identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield ch
    ch.close()
    server.stop(grace=0)


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
