"""What the server's composition root (``recsvc.server.app``) calls: one line in ``build_deps``,

    secure_deps(settings, deps)   # refuses unsafe configurations with a ConfigError

which fills the ``ServerDeps`` hooks: the auth interceptor (``extra_interceptors``), TLS
credentials (``server_credentials``) and the Admin service (``extra_services``), and starts the
erasure listener that keeps ``deps.forgotten``-style state (``ServerSecurity.forgotten``) current.
Lower-level pieces (``build_server_security``, ``add_admin_service``, ``server_options``) are for
servers assembled by hand, e.g. in tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import grpc

from recsvc.errors import ConfigError
from recsvc.security.admin import AdminServicer
from recsvc.security.audit import AuditLog
from recsvc.security.audit_calls import AuditInterceptor
from recsvc.security.auth import AuthInterceptor, KeyStore, check_transport, is_loopback, load_key_store
from recsvc.security.erasure import ErasureListener, ForgottenMembers
from recsvc.security.privacy import ErasureList, Pseudonymizer
from recsvc.security.tls import add_port, server_credentials
from recsvc.settings import Settings
from recsvc.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

__all__ = [
    "ServerSecurity",
    "add_admin_service",
    "add_port",
    "build_server_security",
    "secure_deps",
    "server_options",
]


@dataclass
class ServerSecurity:
    keys: KeyStore
    audit: AuditLog
    pseudonymizer: Pseudonymizer
    erasures: ErasureList
    credentials: grpc.ServerCredentials | None
    interceptors: list[grpc.ServerInterceptor] = field(default_factory=list)
    forgotten: ForgottenMembers = field(default_factory=ForgottenMembers)
    listener: ErasureListener | None = None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None


def build_server_security(settings: Settings) -> ServerSecurity:
    sec = settings.security
    keys = load_key_store(settings)
    check_transport(settings, keys)
    pseudonymizer = Pseudonymizer(sec.pseudonym_key, sec.previous_pseudonym_keys)
    if pseudonymizer.is_dev_key and not is_loopback(settings.serving.host):
        raise ConfigError("security.pseudonym_key is the development default; set a secret key")
    audit = AuditLog(sec.audit_log, pseudonymizer)
    interceptors: list[grpc.ServerInterceptor] = [AuthInterceptor(keys, audit.append)] if len(keys) else []
    interceptors.append(AuditInterceptor(audit.append))
    erasures = ErasureList(sec.erasure_list)
    return ServerSecurity(
        keys=keys,
        audit=audit,
        pseudonymizer=pseudonymizer,
        erasures=erasures,
        credentials=server_credentials(settings),
        interceptors=interceptors,
        forgotten=ForgottenMembers(erasures.read()),
    )


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC limits against oversized messages from hostile or broken callers."""
    limit = settings.serving.max_message_bytes
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(limit, 16 * 1024 * 1024)),
        ("grpc.max_metadata_size", 16 * 1024),
    ]


def add_admin_service(server: grpc.Server, settings: Settings, security: ServerSecurity, redis: Any) -> str:
    """Register ``recsvc.v1.Admin``; return its full service name (for health and reflection)."""
    from recsvc.eventlog.erasure import LogEraser

    # Always, also with events.enabled off: records logged before it was turned off are erased too.
    eraser = LogEraser(redis, settings.redis.key_prefix, settings.events.shards, security.pseudonymizer)
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(
            redis=redis,
            prefix=settings.redis.key_prefix,
            erasures=security.erasures,
            audit=security.audit,
            max_id_length=settings.data.max_id_length,
            event_log=eraser,
        ),
        server,
    )
    return str(admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)


def start_erasure_listener(settings: Settings, security: ServerSecurity, redis: Any) -> None:
    """Listen for erasures made through any server process; never blocks start-up on Redis."""
    import redis as redis_lib

    try:
        security.listener = ErasureListener(redis, settings.redis.key_prefix, security.forgotten.add).start()
    except redis_lib.RedisError as exc:
        log.warning(
            "event=erasure_listener_unavailable error=%s erasures by other processes reach this one "
            "only after restart",
            type(exc).__name__,
        )


def secure_deps(settings: Settings, deps: Any) -> ServerSecurity:
    """Fill a ``recsvc.server.app.ServerDeps``'s security hooks (see the module docstring)."""
    security = build_server_security(settings)
    deps.extra_interceptors = [*security.interceptors, *deps.extra_interceptors]
    deps.server_credentials = security.credentials
    redis = deps.redis_client
    if redis is not None:
        deps.extra_services = [
            *deps.extra_services,
            lambda server: add_admin_service(server, settings, security, redis),
        ]
        start_erasure_listener(settings, security, redis)
        # shutdown() runs these before it closes the Redis client the listener reads from.
        deps.on_close.append(security.close)
    else:
        log.warning("event=admin_service_disabled reason=no_redis_client")
    return security
