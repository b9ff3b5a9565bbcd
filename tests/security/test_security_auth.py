"""API keys and roles: unit checks of the key store, and a real gRPC server with the interceptor."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recsvc.errors import ConfigError, Unauthenticated
from recsvc.security.audit import verify
from recsvc.security.auth import (
    METHOD_ROLES,
    ROLES,
    caller_toml,
    check_transport,
    hash_key,
    load_key_store,
    new_key,
    read_keys_file,
)
from recsvc.security.wiring import add_admin_service, build_server_security, server_options
from recsvc.settings import CallerKey, Settings, load_settings
from recsvc.v1 import admin_pb2, admin_pb2_grpc, catalog_pb2, members_pb2, outreach_pb2, recommender_pb2

pytestmark = pytest.mark.integration


def test_role_table_covers_every_rpc() -> None:
    methods = {
        f"/{svc.full_name}/{m.name}"
        for module in (recommender_pb2, outreach_pb2, admin_pb2, catalog_pb2, members_pb2)
        for svc in module.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert methods == set(METHOD_ROLES)
    assert set(METHOD_ROLES.values()) == set(ROLES)


def _keys_file(tmp_path: Path, callers: dict[str, list[str]]) -> tuple[Path, dict[str, str]]:
    keys = {name: new_key() for name in callers}
    path = tmp_path / "callers.toml"
    path.write_text("\n".join(caller_toml(name, roles, keys[name]) for name, roles in callers.items()))
    return path, keys


def test_key_file_round_trip_and_constant_time_lookup(tmp_path: Path) -> None:
    path, keys = _keys_file(tmp_path, {"mall": ["recommend", "events"], "crm": ["outreach"]})
    assert keys["mall"] not in path.read_text()  # only the hash is stored
    store = load_key_store(load_settings(overrides={"security": {"api_keys_file": str(path)}}))
    caller = store.authenticate(keys["mall"])
    assert caller.name == "mall" and caller.roles == {"recommend", "events"}
    assert store.authenticate(keys["crm"]).name == "crm"
    with pytest.raises(Unauthenticated):
        store.authenticate(keys["mall"] + "x")
    with pytest.raises(Unauthenticated):
        store.authenticate(None)


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    monkeypatch.setenv(
        "RECSVC_SECURITY__API_KEYS",
        f'[{{"name": "pos", "roles": ["events"], "key_sha256": "{hash_key(key)}"}}]',
    )
    store = load_key_store(load_settings())
    assert store.authenticate(key).roles == {"events"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[caller]]\nname='a'\nroles=['root']\nkey_sha256='" + "0" * 64 + "'\n", "caller #1: roles"),
        ("[[caller]]\nname='a'\nroles=['admin']\nkey_sha256='abc'\n", "key_sha256"),
        ("[callers]\nx=1\n", "unknown top-level keys"),
        ("[[caller]\n", "not valid TOML"),
    ],
)
def test_bad_keys_file_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_keys_file(path)


def test_duplicate_key_refused() -> None:
    h = hash_key("same")
    with pytest.raises(ConfigError, match="shares its key"):
        load_key_store(
            Settings(
                security={
                    "api_keys": [
                        CallerKey(name="a", roles=["admin"], key_sha256=h),  # type: ignore[arg-type]
                        CallerKey(name="b", roles=["admin"], key_sha256=h),
                    ]
                }
            )
        )


def _settings(**security: Any) -> Settings:
    host = security.pop("host", "127.0.0.1")
    return load_settings(overrides={"serving": {"host": host}, "security": security})


def test_plaintext_non_loopback_refused() -> None:
    s = _settings(host="0.0.0.0", api_keys=[{"name": "a", "roles": ["admin"], "key_sha256": hash_key("k")}])
    with pytest.raises(ConfigError, match="plaintext on non-loopback"):
        check_transport(s, load_key_store(s))


def test_no_keys_needs_dev_flag_on_loopback() -> None:
    s = _settings(allow_insecure_dev=False)
    with pytest.raises(ConfigError, match="allow_insecure_dev is false"):
        check_transport(s, load_key_store(s))
    dev = _settings(allow_insecure_dev=True)
    check_transport(dev, load_key_store(dev))  # allowed: loopback + explicit dev mode
    kinds = [type(i).__name__ for i in build_server_security(dev).interceptors]
    assert kinds == ["AuditInterceptor"]  # no auth interceptor: every loopback caller is trusted


class _Server:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        import redis

        self.security = build_server_security(settings)
        self.redis = redis.Redis.from_url(redis_url)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=self.security.interceptors,
            options=server_options(settings),
        )
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        add_admin_service(self.server, settings, self.security, self.redis)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=0)
        self.redis.close()


@pytest.fixture
def secured(tmp_path: Path, redis_url: str) -> Iterator[tuple[_Server, dict[str, str]]]:
    path, keys = _keys_file(tmp_path, {"mall": ["recommend", "events"], "ops": ["admin"]})
    settings = load_settings(
        overrides={
            "security": {
                "api_keys_file": str(path),
                "audit_log": str(tmp_path / "audit.log"),
                "erasure_list": str(tmp_path / "erasures.txt"),
                "pseudonym_key": "test-pseudonym-key-0123",
            }
        }
    )
    srv = _Server(settings, redis_url)
    yield srv, keys
    srv.close()


def _forget(srv: _Server, metadata: list[tuple[str, str]] | None) -> Any:
    stub = admin_pb2_grpc.AdminStub(srv.channel)
    return stub.ForgetMember(admin_pb2.ForgetMemberRequest(member_id="M1"), metadata=metadata, timeout=5)


def test_no_key_is_unauthenticated(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, _ = secured
    with pytest.raises(grpc.RpcError) as err:
        _forget(srv, None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_key_is_unauthenticated(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, keys = secured
    with pytest.raises(grpc.RpcError) as err:
        _forget(srv, [("authorization", f"Bearer {keys['ops']}x")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_other_roles_key_is_denied_and_audited(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, keys = secured
    with pytest.raises(grpc.RpcError) as err:
        _forget(srv, [("authorization", f"Bearer {keys['mall']}")])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks role 'admin'" in (err.value.details() or "")
    assert srv.security.erasures.read() == frozenset()  # nothing happened
    text = srv.security.audit.path.read_text()
    assert '"access_denied"' in text and '"mall"' in text and "ForgetMember" in text
    assert verify(srv.security.audit.path).ok


def test_right_role_is_served_and_caller_recorded(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, keys = secured
    reply = _forget(srv, [("x-api-key", keys["ops"])])
    assert reply.suppressed
    assert srv.security.erasures.read() == {"M1"}
    assert '"requested_by": "ops"' in srv.security.audit.path.read_text()


def test_health_is_exempt(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, _ = secured
    reply = health_pb2_grpc.HealthStub(srv.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_method_is_denied_not_unimplemented_leak(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, keys = secured
    call = srv.channel.unary_unary("/recsvc.v1.Secret/Do")
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        call(b"", metadata=[("authorization", f"Bearer {keys['ops']}")], timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_oversized_message_refused(secured: tuple[_Server, dict[str, str]]) -> None:
    srv, keys = secured
    stub = admin_pb2_grpc.AdminStub(srv.channel)
    big = admin_pb2.ForgetMemberRequest(member_id="M1", reason="x" * (5 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as err:
        stub.ForgetMember(big, metadata=[("authorization", f"Bearer {keys['ops']}")], timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
