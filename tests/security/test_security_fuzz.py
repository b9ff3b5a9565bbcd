"""Property-based fuzzing of EVERY RPC of every recsvc.v1 service against a real running server
(``build_deps`` + ``build_server``, a planted bundle, a real redis-server, API keys on).

Requests are generated from the message descriptors (hostile strings, huge and negative numbers,
NaN, unknown enum values, long repeated fields), so a new RPC or field is fuzzed without editing
this file. Each call must end in OK or a named, expected status — never UNKNOWN, never INTERNAL
(an unexpected exception) — and the server must answer a health check after every example.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from bundle_factory import PlantedBundle, make_bundle
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_security_server import Secured, secured_server, secured_settings

from recsvc.v1 import admin_pb2, catalog_pb2, members_pb2, outreach_pb2, recommender_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
SERVICES = [
    svc
    for module in (recommender_pb2, outreach_pb2, admin_pb2, catalog_pb2, members_pb2)
    for svc in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [(svc, m) for svc in SERVICES for m in svc.methods]

# Strings that look like ids (so calls get past validation sometimes) and hostile ones.
ID_LIKE = st.sampled_from(["M0001", "M0002", "P0001", "C0001", "sms", "app_push", "mini_program", "view"])
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=60, max_size=300),
    st.sampled_from(
        ["", "{m:x}", "a|b", "*", "../../etc/passwd", "models:/x@y", "\x00", "ＭＥＭ", "a" * 5000]
    ),
)
STRINGS = st.one_of(ID_LIKE, HOSTILE)
INTS = st.one_of(st.integers(-3, 300), st.sampled_from([-(2**31), 2**31 - 1, 10_001]))
INT64 = st.one_of(st.integers(-3, 300), st.sampled_from([-(2**63), 2**63 - 1]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 1000))

T = d.FieldDescriptor


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == T.TYPE_STRING:
        return STRINGS
    if t == T.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == T.TYPE_BOOL:
        return st.booleans()
    if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return FLOATS.map(lambda x: max(min(x, 3e38), -3e38) if t == T.TYPE_FLOAT and x == x else x)
    if t == T.TYPE_ENUM:
        # Known values and ones the server has never heard of.
        assert field.enum_type is not None
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 99))
    if t in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return INT64
    if t in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return INTS


def message_strategy(desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = message_factory.GetMessageClass(desc)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == T.TYPE_MESSAGE:
            sub = field.message_type
            assert sub is not None
            if sub.GetOptions().map_entry or depth > 2:
                continue
            inner = message_strategy(sub, depth + 1)
            value = st.lists(inner, max_size=3) if field.is_repeated else inner
        else:
            value = st.lists(_scalar(field), max_size=40) if field.is_repeated else _scalar(field)
        parts[field.name] = st.one_of(st.none(), value)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        msg = cls()
        for name, strategy in parts.items():
            value = draw(strategy)
            if value is None:
                continue
            field = desc.fields_by_name[name]
            if field.type == T.TYPE_MESSAGE and field.is_repeated:
                getattr(msg, name).extend(value)
            elif field.type == T.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            elif field.is_repeated:
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        return msg

    return build()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> PlantedBundle:
    return make_bundle(tmp_path_factory.mktemp("fuzz-bundle") / "b1", clusters=2, products_per_cluster=12)


@pytest.fixture(scope="module")
def fuzz_server(
    planted: PlantedBundle, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Secured, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    settings, keys = secured_settings(planted.path, redis_server.url, tmp)
    from recsvc.security.auth import ROLES, caller_toml, new_key

    # One caller holding every role, so calls reach the servicers' own validation.
    all_roles = new_key()
    keys_file = settings.security.api_keys_file
    assert keys_file is not None
    keys_file.write_text(keys_file.read_text() + "\n" + caller_toml("fuzzer", list(ROLES), all_roles))
    with secured_server(settings, keys) as srv:
        yield srv, all_roles


def _call(
    srv: Secured, key: str, svc: d.ServiceDescriptor, method: d.MethodDescriptor, req: Any
) -> grpc.StatusCode:
    path = f"/{svc.full_name}/{method.name}"
    resp_cls = message_factory.GetMessageClass(method.output_type)
    kwargs = {"request_serializer": type(req).SerializeToString, "response_deserializer": resp_cls.FromString}
    md = [("authorization", f"Bearer {key}")]
    try:
        if method.client_streaming:  # the request twice on one stream (StreamStock)
            for _ in srv.channel.stream_stream(path, **kwargs)(iter([req, req]), metadata=md, timeout=10):
                pass
        elif method.server_streaming:
            for _ in srv.channel.unary_stream(path, **kwargs)(req, metadata=md, timeout=10):
                pass
        else:
            srv.channel.unary_unary(path, **kwargs)(req, metadata=md, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() not in FORBIDDEN, f"{path} answered {exc.code()}: {exc.details()} for {req}"
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _healthy(srv: Secured) -> None:
    reply = health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_every_rpc_is_fuzzed() -> None:
    from recsvc.security.auth import METHOD_ROLES

    assert {f"/{s.full_name}/{m.name}" for s, m in METHODS} == set(METHOD_ROLES)


@pytest.mark.parametrize(("svc", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_fuzz_rpc(
    fuzz_server: tuple[Secured, str], svc: d.ServiceDescriptor, method: d.MethodDescriptor
) -> None:
    srv, key = fuzz_server
    seen: set[grpc.StatusCode] = set()

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(req=message_strategy(method.input_type))
    def run(req: Any) -> None:
        seen.add(_call(srv, key, svc, method, req))
        _healthy(srv)

    run()
    assert seen, "no request was sent"
