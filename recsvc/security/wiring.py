"""What the server's composition root (``recsvc.server.app``) calls: one line in ``build_deps``,

    secure_deps(settings, deps)   # refuses unsafe configurations with a ConfigError

which fills the ``ServerDeps`` hooks: the auth interceptor (``extra_interceptors``), TLS
credentials (``server_credentials``) and the Admin service (``extra_services``), starts the
erasure listener that keeps ``deps.forgotten``-style state (``ServerSecurity.forgotten``) current,
and marks the members erased before a pseudonym key rotation under the current key
(``mark_erased_under_current_key``).
Lower-level pieces (``build_server_security``, ``add_admin_service``, ``server_options``) are for
servers assembled by hand, e.g. in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from recsvc.errors import ConfigError
from recsvc.redis_client import STORE_ERRORS
from recsvc.security.admin import AdminServicer
from recsvc.security.audit import AuditLog
from recsvc.security.audit_calls import AuditInterceptor
from recsvc.security.auth import AuthInterceptor, KeyStore, check_transport, is_loopback, load_key_store
from recsvc.security.erasure import ErasureListener, ForgottenMembers
from recsvc.security.privacy import ErasureList, Pseudonymizer
from recsvc.security.tls import add_port, server_credentials
from recsvc.settings import Settings
from recsvc.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from recsvc.eventlog.erasure import LogEraser

log = logging.getLogger(__name__)

__all__ = [
    "ServerSecurity",
    "add_admin_service",
    "add_port",
    "build_server_security",
    "check_server_security",
    "mark_erased_under_current_key",
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
    marks_retry: threading.Thread | None = None  # mark_erased_under_current_key, Redis was down
    closing: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.closing.set()
        if self.marks_retry is not None:
            self.marks_retry.join(timeout=2)
            self.marks_retry = None
        if self.listener is not None:
            self.listener.stop()
            self.listener = None


def check_server_security(settings: Settings) -> None:
    """The configuration checks of ``build_server_security`` alone (keys, transport, pseudonym
    keys, TLS files), raising the same ``ConfigError``: the serving parent runs them before any
    worker starts, so a broken or unsafe configuration is one named error, not workers dying."""
    _checked_keys(settings)
    server_credentials(settings)
    sec = settings.security
    audit, erasures = AuditLog(sec.audit_log), ErasureList(sec.erasure_list)
    _check_appendable("security.audit_log", audit.path, audit.check_appendable)
    _check_appendable("security.erasure_list", erasures.path, erasures.check_appendable)


def _check_appendable(name: str, path: Path, try_writing: Callable[[], None]) -> None:
    """``path`` is a file this process can append to, or can create: else the first audited call
    or erasure would fail, long after start-up. ``try_writing`` tries it (creating the folders,
    not the file) rather than asking ``os.access``, which says yes to root for a folder under
    ``/proc`` or on a read-only mount."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"{name} {str(path)!r} is not a file this process can read and append to")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders missing below it are created now
    if not folder.is_dir():
        raise ConfigError(f"{name} {str(path)!r} cannot be created: {str(folder)!r} is not a folder")
    existed = path.exists()
    try:
        try_writing()
    except OSError as exc:
        # a folder on the way is worth naming; the probe file tried beside the path is not
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) in path.parents else ""
        raise ConfigError(
            f"{name} {str(path)!r} cannot be {'opened for appending' if existed else 'created'}: "
            f"{exc.strerror or type(exc).__name__}{where}"
        ) from None


def _checked_keys(settings: Settings) -> tuple[Any, Pseudonymizer]:
    sec = settings.security
    keys = load_key_store(settings)
    check_transport(settings, keys)
    pseudonymizer = Pseudonymizer(sec.pseudonym_key, sec.previous_pseudonym_keys)
    if pseudonymizer.is_dev_key and not is_loopback(settings.serving.host):
        raise ConfigError("security.pseudonym_key is the development default; set a secret key")
    return keys, pseudonymizer


def build_server_security(
    settings: Settings, on_audit_failure: Callable[[str], None] | None = None
) -> ServerSecurity:
    """``on_audit_failure`` is called with the event of each audit entry that cannot be written
    (the server counts them: ``recsvc_audit_write_failures_total``)."""
    sec = settings.security
    keys, pseudonymizer = _checked_keys(settings)
    audit = AuditLog(sec.audit_log, pseudonymizer, on_write_failure=on_audit_failure)
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
    try:
        security.listener = ErasureListener(redis, settings.redis.key_prefix, security.forgotten.add).start()
    except STORE_ERRORS as exc:
        log.warning(
            "event=erasure_listener_unavailable error=%s erasures by other processes reach this one "
            "only after restart",
            type(exc).__name__,
        )


def mark_erased_under_current_key(settings: Settings, security: ServerSecurity, redis: Any) -> None:
    """Mark every member on the erasure list who is marked for the sink under a previous
    pseudonym key only (erased before a rotation) under the current key as well, so what this
    process logs about them never reaches disk. Runs before the server serves; with Redis
    unavailable start-up goes on and a thread retries (1 s doubling to 30 s)."""
    from recsvc.eventlog.erasure import LogEraser

    if not security.pseudonymizer.has_previous_keys:
        return  # no rotation: every erased member is marked under the current key already
    eraser = LogEraser(redis, settings.redis.key_prefix, settings.events.shards, security.pseudonymizer)
    erased = list(security.forgotten)  # the erasure list as read at start-up

    # While the rotation rolls out, a process still on the old key may forget a member: marked
    # under the old key only. Its erasure notice reaches this process, which marks them too.
    def on_notice(member_id: str) -> None:
        _mark_erased(eraser, [member_id], purge=True)

    security.forgotten.on_forget(on_notice)
    if _mark_erased(eraser, erased, purge=False):
        return

    def retry() -> None:
        wait_s = 1.0
        # Records about them may have been logged before the marks: queue those for the purge.
        while not security.closing.wait(wait_s) and not _mark_erased(eraser, erased, purge=True):
            wait_s = min(wait_s * 2, 30.0)

    security.marks_retry = threading.Thread(target=retry, name="recsvc-erased-marks", daemon=True)
    security.marks_retry.start()


def _mark_erased(eraser: LogEraser, erased: Sequence[str], *, purge: bool) -> bool:
    started = time.monotonic()
    try:
        added = eraser.mark_under_current_key(erased, purge=purge)
    except STORE_ERRORS as exc:
        log.warning("event=erased_marks_unavailable error=%s", type(exc).__name__)
        return False
    log.info(
        "event=erased_marked_under_current_key listed=%d added=%d seconds=%.2f",
        len(erased),
        added,
        time.monotonic() - started,
    )
    return True


def secure_deps(settings: Settings, deps: Any) -> ServerSecurity:
    """Fill a ``recsvc.server.app.ServerDeps``'s security hooks (see the module docstring)."""
    security = build_server_security(settings, deps.metrics.audit_write_failed)
    deps.extra_interceptors = [*security.interceptors, *deps.extra_interceptors]
    deps.server_credentials = security.credentials
    redis = deps.redis_client
    if redis is not None:
        deps.extra_services = [
            *deps.extra_services,
            lambda server: add_admin_service(server, settings, security, redis),
        ]
        start_erasure_listener(settings, security, redis)
        mark_erased_under_current_key(settings, security, redis)
        # shutdown() runs these before it closes the Redis client the listener reads from.
        deps.on_close.append(security.close)
    else:
        log.warning("event=admin_service_disabled reason=no_redis_client")
    return security
