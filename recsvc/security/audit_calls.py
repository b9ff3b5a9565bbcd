"""The audit interceptor: successful calls that change personal data or the served model are
appended to the audit log, with the caller and a pseudonymised member (never the raw id).

Audited: ``Outreach/UpdateConsent`` (consent changes) and ``Recommender/ReloadModel`` (a model
switched by an operator). ``Admin/ForgetMember`` and ``Admin/RestoreMember`` audit themselves
(they know what they changed) and role-denied calls are audited by the auth interceptor. Runs
after the auth interceptor, so ``current_caller`` is known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from recsvc.security.auth import current_caller
from recsvc.server.handlers import HandlerFn, KindWrappers, MethodWrapper, rewrap

log = logging.getLogger(__name__)


def _consent(request: Any, response: Any) -> tuple[str, dict[str, Any]]:
    return "consent_change", {
        "member_id": request.member_id,
        "channel": request.channel,
        "granted": bool(request.granted),
        "source": request.source[:64],
    }


def _reload(request: Any, response: Any) -> tuple[str, dict[str, Any]]:
    return "model_reload", {
        "requested_uri": request.model_uri[:256],
        "model_version": response.model_version,
        "changed": bool(response.changed),
    }


AUDITED: dict[str, Callable[[Any, Any], tuple[str, dict[str, Any]]]] = {
    "/recsvc.v1.Outreach/UpdateConsent": _consent,
    "/recsvc.v1.Recommender/ReloadModel": _reload,
}


class AuditInterceptor(MethodWrapper):
    def __init__(self, append: Callable[..., Any]) -> None:
        self._append = append

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        describe = AUDITED.get(method)
        if describe is None or handler.unary_unary is None:
            return handler

        def record(request: Any, response: Any) -> Any:
            event, fields = describe(request, response)
            caller = current_caller.get()
            try:
                self._append(event, caller=caller.name if caller else "", method=method, **fields)
            except OSError:
                # The change happened; failing the call now would make the caller retry it.
                log.exception("event=audit_write_failed method=%s", method)
            return response

        # The handler raises on any failure: nothing to audit then.
        def unary(inner: HandlerFn) -> HandlerFn:
            def audited(request: Any, context: grpc.ServicerContext) -> Any:
                return record(request, inner(request, context))

            return audited

        def async_unary(inner: HandlerFn) -> HandlerFn:
            async def audited(request: Any, context: Any) -> Any:
                return record(request, await inner(request, context))

            return audited

        return rewrap(handler, KindWrappers(async_unary=async_unary, unary=unary), ("unary_unary",))
