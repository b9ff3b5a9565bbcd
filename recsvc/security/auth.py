"""API keys per calling backend, roles, and the one gRPC interceptor that enforces them.

Reads: ``settings.security.api_keys_file`` (TOML, ``[[caller]]`` tables with ``name``, ``roles``,
``key_sha256``) and ``settings.security.api_keys`` (the same entries from settings/environment).
Keys are never stored: only their SHA-256. Keys are 256-bit random tokens (``recsvc keys create``),
so an unsalted hash cannot be brute-forced; each presented key is hashed once and compared with
``hmac.compare_digest`` against every caller's hash (no early exit).

Callers send ``authorization: Bearer <key>`` (or ``x-api-key: <key>``) metadata. Missing or unknown
key -> UNAUTHENTICATED; a known caller without the method's role -> PERMISSION_DENIED, written to
the audit log. Health and reflection are exempt. A method missing from ``METHOD_ROLES`` is refused
(fail closed), and a test checks the table covers every RPC of every recsvc.v1 service.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import logging
import secrets
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

import grpc
from pydantic import ValidationError

from recsvc.errors import ConfigError, PermissionDenied, RecsvcError, Unauthenticated, status_details
from recsvc.server.handlers import UNIMPLEMENTED_HANDLER, HandlerFn, KindWrappers, MethodWrapper, rewrap
from recsvc.settings import CallerKey, Role, Settings

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = get_args(Role)

# Every RPC of every recsvc.v1 service and the role it needs. Admin does not imply the others:
# a backend that both recommends and erases is given both roles explicitly (least privilege).
METHOD_ROLES: dict[str, str] = {
    "/recsvc.v1.Recommender/RecommendProducts": "recommend",
    "/recsvc.v1.Recommender/RecommendContent": "recommend",
    "/recsvc.v1.Recommender/SimilarItems": "recommend",
    "/recsvc.v1.Recommender/BatchRecommend": "recommend",
    "/recsvc.v1.Recommender/GetModelInfo": "recommend",
    "/recsvc.v1.Recommender/RecordEvent": "events",
    "/recsvc.v1.Recommender/ReloadModel": "admin",
    "/recsvc.v1.Outreach/CheckOutreach": "outreach",
    "/recsvc.v1.Outreach/ReserveOutreach": "outreach",
    "/recsvc.v1.Outreach/CancelOutreach": "outreach",
    "/recsvc.v1.Outreach/RecordOutreachFeedback": "outreach",
    "/recsvc.v1.Outreach/PlanCampaign": "outreach",
    "/recsvc.v1.Outreach/NextBestOutreach": "outreach",
    "/recsvc.v1.Outreach/UpdateConsent": "admin",
    # Profiles hold personal data (interests, habits, consent): their own role (docs/security.md).
    "/recsvc.v1.Members/GetMemberProfile": "members",
    "/recsvc.v1.Members/FindMembers": "members",
    "/recsvc.v1.Admin/ForgetMember": "admin",
    "/recsvc.v1.Admin/RestoreMember": "admin",
    "/recsvc.v1.Catalog/UpsertItems": "catalog",
    "/recsvc.v1.Catalog/SetStock": "catalog",
    "/recsvc.v1.Catalog/SetStockMany": "catalog",
    "/recsvc.v1.Catalog/StreamStock": "catalog",
    "/recsvc.v1.Catalog/DelistItems": "catalog",
    "/recsvc.v1.Catalog/RelistItems": "catalog",
    "/recsvc.v1.Catalog/GetItem": "catalog",
    "/recsvc.v1.Catalog/ExportCatalog": "catalog",
}
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
KEY_PREFIX = "rsk_"


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    # where the server audits refusals (``access_denied``), so a refusal inside a call is audited
    # like one at its door
    audit: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def denied(self, what: str, role: str | None) -> None:
        """Log and audit that this caller was refused ``what`` for want of ``role``."""
        log.warning("denied %s to caller %s (needs %s)", what, self.name, role)
        if self.audit is not None:
            try:
                self.audit("access_denied", caller=self.name, method=what, role_needed=role)
            except OSError:
                log.exception("could not write the audit entry for a denied call")


# The authenticated caller of the RPC being handled (set in the handler's thread by the interceptor).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)


def require_role(role: str, what: str) -> None:
    """Refuse (PERMISSION_DENIED) a part of a call that needs ``role`` beyond its method's: an
    authenticated caller without it. Without API keys (a loopback dev server) there is no caller
    and nothing to refuse. Call it before a streaming handler's first answer: the caller is known
    in the step that starts the stream."""
    caller = current_caller.get()
    if caller is not None and role not in caller.roles:
        caller.denied(what, role)
        raise PermissionDenied(f"caller {caller.name!r} lacks role {role!r} for {what}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def caller_toml(name: str, roles: Iterable[str], key: str) -> str:
    """The ``[[caller]]`` table to put in the secrets file for ``key`` (which it does not contain)."""
    entry = CallerKey(name=name, roles=list(roles), key_sha256=hash_key(key))  # type: ignore[arg-type]
    role_list = ", ".join(f'"{r}"' for r in entry.roles)
    return f'[[caller]]\nname = "{entry.name}"\nroles = [{role_list}]\nkey_sha256 = "{entry.key_sha256}"\n'


class KeyStore:
    """The configured callers; ``authenticate(key)`` returns the caller or raises Unauthenticated."""

    def __init__(self, entries: Iterable[CallerKey]) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        names: set[str] = set()
        hashes: set[str] = set()
        for e in entries:
            if e.name in names:
                raise ConfigError(f"caller name {e.name!r} is configured twice")
            if e.key_sha256 in hashes:
                raise ConfigError(f"caller {e.name!r} shares its key with another caller")
            names.add(e.name)
            hashes.add(e.key_sha256)
            self._entries.append((bytes.fromhex(e.key_sha256), Caller(e.name, frozenset(e.roles))))

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str | None) -> Caller:
        if not key:
            raise Unauthenticated("no API key: send 'authorization: Bearer <key>' metadata")
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        found: Caller | None = None
        for digest, caller in self._entries:
            # Compare against every entry so timing says nothing about which (if any) matched.
            if hmac.compare_digest(presented, digest):
                found = caller
        if found is None:
            raise Unauthenticated("unknown API key")
        return found


def read_keys_file(path: Path) -> list[CallerKey]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"API keys file not found: {path}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"API keys file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"caller"})
    if unknown:
        raise ConfigError(
            f"API keys file {path}: unknown top-level keys {unknown}; expected [[caller]] tables"
        )
    callers = data.get("caller", [])
    if not isinstance(callers, list):
        raise ConfigError(f"API keys file {path}: 'caller' must be an array of tables ([[caller]])")
    out = []
    for i, raw in enumerate(callers, start=1):
        try:
            out.append(CallerKey.model_validate(raw))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"API keys file {path}, caller #{i}: {problems}") from exc
    return out


def load_key_store(settings: Settings) -> KeyStore:
    sec = settings.security
    entries = list(sec.api_keys)
    if sec.api_keys_file is not None:
        entries += read_keys_file(sec.api_keys_file)
    return KeyStore(entries)


def is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_transport(settings: Settings, keys: KeyStore) -> None:
    """Refuse to start in an unsafe configuration; raise ConfigError saying what to change.

    Without TLS only a loopback bind is allowed (API keys and member ids would cross the network in
    clear); without API keys the server must also be explicitly in development mode.
    """
    sec, host = settings.security, settings.serving.host
    tls = sec.tls_cert_file is not None
    if not tls and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve plaintext on non-loopback address {host!r}: set security.tls_cert_file "
            "and security.tls_key_file, or bind serving.host to 127.0.0.1 for development"
        )
    if len(keys) == 0:
        if not is_loopback(host):
            raise ConfigError(
                f"refusing to serve on {host!r} without API keys: set security.api_keys_file "
                "(create keys with `recsvc keys create`)"
            )
        if not sec.allow_insecure_dev:
            raise ConfigError(
                "no API keys configured and security.allow_insecure_dev is false: set "
                "security.api_keys_file (create keys with `recsvc keys create`), or for local "
                "development on loopback only set RECSVC_SECURITY__ALLOW_INSECURE_DEV=true"
            )
        log.warning("no API keys configured: every caller is trusted (development only, loopback %s)", host)


def _metadata_key(metadata: Iterable[Any] | None) -> str | None:
    for item in metadata or ():
        k, v = item[0], item[1]
        if k == "authorization" and isinstance(v, str):
            scheme, _, token = v.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif k == "x-api-key" and isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _authenticating(handler: grpc.RpcMethodHandler, check: Callable[[Any], Caller]) -> grpc.RpcMethodHandler:
    """The same handler, run only once ``check(context)`` names the caller (it raises a
    ``RecsvcError`` to refuse, which becomes the call's status), with ``current_caller`` set
    to that caller while it runs."""

    async def admit(context: Any) -> None:
        """Names the caller or aborts the call. aio handlers run as their own task: setting the
        caller in it is enough."""
        try:
            caller = check(context)
        except RecsvcError as exc:
            await context.abort(exc.code, status_details(exc))
        current_caller.set(caller)

    def async_stream(fn: HandlerFn) -> HandlerFn:
        async def arun_stream(request: Any, context: Any) -> Any:
            await admit(context)
            async for item in fn(request, context):
                yield item

        return arun_stream

    def async_unary(fn: HandlerFn) -> HandlerFn:
        async def arun(request: Any, context: Any) -> Any:
            await admit(context)
            return await fn(request, context)

        return arun

    def stream(fn: HandlerFn) -> HandlerFn:
        def run_stream(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                caller = check(context)
            except RecsvcError as exc:
                # End the stream with the status: a plain generator runs step by step in
                # the aio server's pool, where abort() could leave the call hanging.
                context.set_code(exc.code)
                context.set_details(status_details(exc))
                return
            token = current_caller.set(caller)
            try:
                yield from fn(request, context)
            finally:
                current_caller.reset(token)

        return run_stream

    def unary(fn: HandlerFn) -> HandlerFn:
        def run_unary(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                caller = check(context)
            except RecsvcError as exc:
                context.abort(exc.code, status_details(exc))
            token = current_caller.set(caller)
            try:
                return fn(request, context)
            finally:
                current_caller.reset(token)

        return run_unary

    return rewrap(handler, KindWrappers(async_unary, async_stream, unary, stream))


class AuthInterceptor(MethodWrapper):
    """Authenticate the caller's API key and check the method's role; audit role refusals.
    Applied once per method; the key is checked on every call, inside the handler."""

    def __init__(self, keys: KeyStore, audit: Callable[..., Any] | None = None) -> None:
        self._keys = keys
        self._audit = audit

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        # As an interceptor: a method the server lacks is refused like any other first, so an
        # unknown caller learns nothing about which methods exist.
        return super().intercept_service(
            lambda details: continuation(details) or UNIMPLEMENTED_HANDLER, handler_call_details
        )

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method.startswith(EXEMPT_PREFIXES):
            return handler
        needed = METHOD_ROLES.get(method)

        def check(context: Any) -> Caller:
            try:
                caller = self._keys.authenticate(_metadata_key(context.invocation_metadata()))
            except Unauthenticated as exc:
                log.warning("unauthenticated call to %s: %s", method, exc.message)
                raise
            if self._audit is not None:
                caller = replace(caller, audit=self._audit)
            if needed is None or needed not in caller.roles:
                caller.denied(method, needed)
                raise PermissionDenied(
                    f"caller {caller.name!r} lacks role {needed!r} for {method}"
                    if needed
                    else f"no role grants {method}"
                )
            return caller

        return _authenticating(handler, check)
