"""Raw bytes against a real running server (``build_deps`` + ``build_server``, API keys on): every
method of every service it serves, health and reflection included, gets bytes that are not what a
client library would send (random bytes, and valid requests bit-flipped, truncated, with overlong
varints, invalid UTF-8 in string fields, wrong wire types, lying lengths, deep nesting), with and
without a valid API key.

Each call must end by its deadline with a status recsvc names: never UNKNOWN, never INTERNAL, never
grpc's decoder message; without a key every recsvc.v1 method answers UNAUTHENTICATED, whatever the
bytes. The server must answer a health check afterwards.

The bounded run takes ``FUZZ_SECONDS`` (default 3) seconds in the normal suite; the long
one is marked ``fuzz_long`` and deselected by default (docs/security.md "Raw-bytes fuzzing"):

    FUZZ_LONG_SECONDS=600 pytest -m fuzz_long tests/security/test_security_rawbytes.py

A failure names its seed; ``FUZZ_SEED=<seed>`` replays the same calls. (Not ``RECSVC_*``
variables: conftest clears those, so a developer's settings never reach the tests.)
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from bundle_factory import PlantedBundle
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving_harness import RunningServer
from test_security_server import Secured, secured_server, secured_settings

from recsvc.security.auth import EXEMPT_PREFIXES, ROLES, caller_toml, new_key
from recsvc.server.decoding import RequestDecoding
from recsvc.server.interceptors import ErrorInterceptor
from recsvc.v1 import admin_pb2, catalog_pb2, members_pb2, outreach_pb2, recommender_pb2, recommender_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = d.FieldDescriptor
SERVICES: list[d.ServiceDescriptor] = [
    svc
    for module in (
        recommender_pb2,
        outreach_pb2,
        admin_pb2,
        catalog_pb2,
        members_pb2,
        health_pb2,
        reflection_pb2,
    )
    for svc in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [(f"/{s.full_name}/{m.name}", m) for s in SERVICES for m in s.methods]
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
# What grpc's own decoding failure said: never seen by a caller again.
LEAKS = ("DecodeError", "Unexpected", "Exception deserializing", "Request", "recsvc.v1", "grpc.health")
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
CALL_TIMEOUT_S = 10.0
MAX_STREAM_ITEMS = 50

BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ok\xfe\xfe"]


# -- wire format ---------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


NATURAL_WIRE = {
    T.TYPE_DOUBLE: 1, T.TYPE_FIXED64: 1, T.TYPE_SFIXED64: 1,
    T.TYPE_FLOAT: 5, T.TYPE_FIXED32: 5, T.TYPE_SFIXED32: 5,
    T.TYPE_STRING: 2, T.TYPE_BYTES: 2, T.TYPE_MESSAGE: 2,
}  # fmt: skip
WIRE_PAYLOAD = {0: b"\x01", 1: b"\x00" * 8, 2: b"\x01a", 3: b"", 4: b"", 5: b"\x00" * 4, 6: b"", 7: b""}


def string_paths(desc: d.Descriptor, depth: int = 0) -> list[list[d.FieldDescriptor]]:
    """Field paths from ``desc`` to each string field (through message fields, a few levels)."""
    paths: list[list[d.FieldDescriptor]] = []
    for f in desc.fields:
        if f.type == T.TYPE_STRING:
            paths.append([f])
        elif f.type == T.TYPE_MESSAGE and f.message_type is not None and depth < 2:
            paths += [[f, *rest] for rest in string_paths(f.message_type, depth + 1)]
    return paths


def bad_utf8_at(path: list[d.FieldDescriptor], bad: bytes) -> bytes:
    data = delimited(path[-1].number, bad)
    for f in reversed(path[:-1]):
        data = delimited(f.number, data)
    return data


# -- valid requests and their mutations -----------------------------------------------------------


@dataclass
class Fuzzer:
    rng: random.Random
    strings: list[str]

    def scalar(self, f: d.FieldDescriptor) -> Any:
        r = self.rng
        if f.type == T.TYPE_STRING:
            return r.choice(self.strings)
        if f.type == T.TYPE_BYTES:
            return r.randbytes(r.randint(0, 8))
        if f.type == T.TYPE_BOOL:
            return r.random() < 0.5
        if f.type in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
            return r.choice([0.0, 0.5, 1.0, 9.99, 120.0])
        if f.type == T.TYPE_ENUM:
            assert f.enum_type is not None
            return r.choice(f.enum_type.values).number
        if f.type in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64, T.TYPE_UINT64, T.TYPE_FIXED64):
            return r.choice([0, 1, 5, int(time.time()) - 3600])
        return r.choice([0, 1, 3, 5, 10])

    def message(self, desc: d.Descriptor, depth: int = 0) -> Any:
        """A plausible request: ids the server knows, valid enums, small numbers."""
        msg = message_factory.GetMessageClass(desc)()
        for f in desc.fields:
            if self.rng.random() < 0.3:
                continue
            if f.type == T.TYPE_MESSAGE:
                sub = f.message_type
                assert sub is not None
                if sub.GetOptions().map_entry or depth >= 2:
                    continue
                if f.is_repeated:
                    getattr(msg, f.name).add().CopyFrom(self.message(sub, depth + 1))
                else:
                    getattr(msg, f.name).CopyFrom(self.message(sub, depth + 1))
            elif f.is_repeated:
                getattr(msg, f.name).extend(self.scalar(f) for _ in range(self.rng.randint(1, 3)))
            else:
                setattr(msg, f.name, self.scalar(f))
        return msg

    def payload(self, desc: d.Descriptor) -> tuple[str, bytes]:
        """(what was done, the bytes): random bytes or a mutated valid request."""
        r = self.rng
        valid = self.message(desc).SerializeToString()
        fields = list(desc.fields)
        number = r.choice(fields).number if fields else r.randint(1, 20)
        kind = r.choice(
            ["random", "flip", "truncate", "overlong", "utf8", "wire", "length", "nest", "splice"]
        )
        if kind == "random":
            data = r.randbytes(r.choice([1, 4, 16, 64, 256]))
        elif kind == "flip":
            flipped = bytearray(valid or b"\x00")
            for _ in range(r.randint(1, 3)):
                flipped[r.randrange(len(flipped))] ^= 1 << r.randrange(8)
            data = bytes(flipped)
        elif kind == "truncate":
            extra = delimited(number, b"0123456789")
            data = (valid + extra)[: r.randrange(len(valid) + len(extra))]
        elif kind == "overlong":
            data = valid + tag(number, 0) + b"\xff" * r.randint(10, 12) + b"\x01"
        elif kind == "utf8":
            paths = string_paths(desc)
            bad = r.choice(BAD_UTF8)
            data = valid + (bad_utf8_at(r.choice(paths), bad) if paths else delimited(number, bad))
        elif kind == "wire":
            wanted = NATURAL_WIRE.get(fields[0].type if fields else T.TYPE_INT32, 0)
            wire = r.choice([w for w in range(8) if w != wanted])
            data = valid + tag(number, wire) + WIRE_PAYLOAD[wire] + (tag(number, 4) if wire == 3 else b"")
        elif kind == "length":
            data = valid + tag(number, 2) + varint(r.choice([2**31, 2**32 + 5, 2**63])) + b"abc"
        elif kind == "nest":
            data = tag(number, 3) * r.randint(50, 300) + valid
        else:
            other = self.message(desc).SerializeToString()
            cut = r.randrange(len(other) + 1)
            data = valid + other[:cut]
        return kind, data


# -- calls ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str


def call(channel: grpc.Channel, path: str, method: d.MethodDescriptor, data: bytes, md: Any) -> Outcome:
    """One call with identity serializers (the bytes go out as they are), ending by its deadline."""
    try:
        if method.client_streaming:
            responses = channel.stream_stream(path)(iter([data]), metadata=md, timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            responses = channel.unary_stream(path)(data, metadata=md, timeout=CALL_TIMEOUT_S)
        else:
            channel.unary_unary(path)(data, metadata=md, timeout=CALL_TIMEOUT_S)
            return Outcome(grpc.StatusCode.OK, "")
        # A health watch stays open by design: its first answer is enough.
        limit = 1 if path == HEALTH_WATCH else MAX_STREAM_ITEMS
        for n, _ in enumerate(responses, start=1):
            if n >= limit:
                responses.cancel()
                break
        return Outcome(grpc.StatusCode.OK, "")
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")


def check(path: str, keyed: bool, out: Outcome, what: str) -> None:
    where = f"{path} ({'with' if keyed else 'without'} key, {what}) answered {out.code}: {out.details!r}"
    assert out.code not in FORBIDDEN, where
    assert not any(leak in out.details for leak in LEAKS), where
    if not keyed and not path.startswith(EXEMPT_PREFIXES):
        assert out.code == grpc.StatusCode.UNAUTHENTICATED, where


def healthy(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Target:
    srv: Secured
    md: list[tuple[str, str]]
    strings: list[str]


@pytest.fixture(scope="module")
def target(
    planted: PlantedBundle, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    import redis

    # module-scoped, so redis_url's per-test flush does not run first: an earlier module may have
    # erased one of these members (their events are then refused, by design)
    redis.Redis.from_url(redis_server.url).flushall()
    settings, keys = secured_settings(planted.path, redis_server.url, tmp_path_factory.mktemp("rawbytes"))
    # One caller holding every role, so keyed calls reach the decoding and the servicers.
    key = new_key()
    keys_file = settings.security.api_keys_file
    assert keys_file is not None
    keys_file.write_text(keys_file.read_text() + "\n" + caller_toml("fuzzer", list(ROLES), key))
    strings = [
        *planted.warm_members()[:3],
        *planted.products()[:3],
        *planted.content()[:2],
        "view", "purchase", "sms", "app", "wecom", "mini_program", "c1", "", "M9999", "x" * 300,
    ]  # fmt: skip
    with secured_server(settings, keys) as srv:
        yield Target(srv, [("authorization", f"Bearer {key}")], strings)


def test_every_served_service_is_covered(target: Target) -> None:
    """The server's own list of services (through reflection) is the one fuzzed here."""
    stub = reflection_pb2_grpc.ServerReflectionStub(target.srv.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([ask]), timeout=5))
    served = {s.name for s in reply.list_services_response.service}
    assert served == {s.full_name for s in SERVICES}


def test_health_list_answers(target: Target) -> None:
    """grpc's health proto has List; its servicer did not implement it (INTERNAL)."""
    reply = health_pb2_grpc.HealthStub(target.srv.channel).List(health_pb2.HealthListRequest(), timeout=5)
    served = {"", *(s.full_name for s in SERVICES if s.full_name.startswith("recsvc.v1."))}
    assert set(reply.statuses) == served
    assert {r.status for r in reply.statuses.values()} == {health_pb2.HealthCheckResponse.SERVING}


def test_health_watches_hold_no_threads(target: Target) -> None:
    """More open watches than the server has pool threads (health needs no key): the synchronous
    handlers (RecordEvent here) still answer, and closing the watches frees everything."""
    stub = health_pb2_grpc.HealthStub(target.srv.channel)
    watches = [
        stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)
        for _ in range(target.srv.settings.serving.threads_per_worker + 4)
    ]
    try:
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        event = recommender_pb2.RecordEventRequest(
            member_id=target.strings[0], item_id=target.strings[3], event_type="view"
        )
        rec = recommender_pb2_grpc.RecommenderStub(target.srv.channel)
        assert rec.RecordEvent(event, metadata=target.md, timeout=5).stored
    finally:
        for watch in watches:
            watch.cancel()


def test_health_watch_follows_status(srv: RunningServer) -> None:
    assert srv.deps.health is not None
    watch = health_pb2_grpc.HealthStub(srv.channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        srv.deps.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        srv.deps.health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watch.cancel()


# Bytes no protobuf decoder accepts, whatever the message type.
UNIVERSAL = {
    "truncated": delimited(1, b"0123456789")[:5],
    "overlong varint": tag(1, 0) + b"\xff" * 10 + b"\x01",
    "invalid wire type": tag(1, 7) + b"\x00",
    "lone end-group": tag(1, 4),
    "lying length": tag(1, 2) + varint(2**32) + b"abc",
}


def misplaced(f: d.FieldDescriptor) -> bytes:
    """``f`` sent with a wire type it can never have (valid bytes: protobuf keeps them as an
    unknown field and leaves ``f`` unset)."""
    wrong = 5 if NATURAL_WIRE.get(f.type, 0) != 5 else 0
    return tag(f.number, wrong) + WIRE_PAYLOAD[wrong]


def malformed_payloads(method: d.MethodDescriptor) -> dict[str, bytes]:
    out = dict(UNIVERSAL)
    desc = method.input_type
    if desc.fields:
        out[f"{desc.fields[0].name} with the wrong wire type"] = misplaced(desc.fields[0])
    inner = [
        (f, f.message_type)
        for f in desc.fields
        if f.type == T.TYPE_MESSAGE and f.message_type is not None and f.message_type.fields
    ]
    if inner and not inner[0][1].GetOptions().map_entry:
        f, sub = inner[0]
        out[f"{f.name}.{sub.fields[0].name} with the wrong wire type"] = delimited(
            f.number, misplaced(sub.fields[0])
        )
    for path in string_paths(method.input_type)[:3]:
        out[f"invalid UTF-8 in {'.'.join(f.name for f in path)}"] = bad_utf8_at(path, b"\xc3\x28")
    return out


@pytest.mark.parametrize(("path", "method"), METHODS, ids=[p for p, _ in METHODS])
def test_malformed_request_is_invalid_argument_after_authentication(
    target: Target, path: str, method: d.MethodDescriptor
) -> None:
    channel = target.srv.channel
    for what, data in malformed_payloads(method).items():
        keyed = call(channel, path, method, data, target.md)
        check(path, True, keyed, what)
        assert keyed.code == grpc.StatusCode.INVALID_ARGUMENT, (what, keyed)
        assert keyed.details.startswith("MALFORMED_REQUEST: "), (what, keyed)
        anonymous = call(channel, path, method, data, None)
        check(path, False, anonymous, what)
        if path.startswith(EXEMPT_PREFIXES):
            assert anonymous == keyed, what
    healthy(channel)


def fuzz(target: Target, seconds: float) -> int:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    fuzzer = Fuzzer(random.Random(seed), target.strings)
    channel = target.srv.channel
    calls, deadline = 0, time.monotonic() + seconds
    while True:  # whole rounds: every method, with and without a key, at least once
        for path, method in METHODS:
            for md in (target.md, None):
                what, data = fuzzer.payload(method.input_type)
                out = call(channel, path, method, data, md)
                check(path, md is not None, out, f"{what} {data[:48]!r}, FUZZ_SEED={seed}")
                calls += 1
        healthy(channel)
        if time.monotonic() >= deadline:
            return calls


def test_raw_bytes_fuzz_bounded(target: Target) -> None:
    calls = fuzz(target, float(os.environ.get("FUZZ_SECONDS", "3")))
    assert calls >= 2 * len(METHODS)


LONG_SECONDS = float(os.environ.get("FUZZ_LONG_SECONDS", "300"))


@pytest.mark.fuzz_long
@pytest.mark.timeout(LONG_SECONDS + 300)
def test_raw_bytes_fuzz_long(target: Target) -> None:
    calls = fuzz(target, LONG_SECONDS)
    assert calls >= 2 * len(METHODS)


# -- the same decoding on a thread-pool server (grpc.server, interceptors per call) ---------------


@pytest.fixture
def thread_pool_channel() -> Iterator[grpc.Channel]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor(), RequestDecoding()]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(0)


def test_thread_pool_server_maps_malformed_requests(thread_pool_channel: grpc.Channel) -> None:
    (method,) = [m for p, m in METHODS if p == "/grpc.health.v1.Health/Check"]
    for what, data in malformed_payloads(method).items():
        out = call(thread_pool_channel, "/grpc.health.v1.Health/Check", method, data, None)
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (what, out)
        assert out.details.startswith("MALFORMED_REQUEST: "), (what, out)
