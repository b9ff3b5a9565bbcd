"""The audit interceptor: successful calls that change personal data or the served model are
appended to the audit log, with the caller and a pseudonymised member (never the raw id).

Audited: ``Outreach/UpdateConsent`` (consent changes), ``Recommender/ReloadModel`` (a model
switched by an operator) and the catalog changes a person or a sync makes (``Catalog/UpsertItems``,
``DelistItems``, ``RelistItems``: who pulled 2,000 items, with the first ids); stock changes, an
inventory feed's thousands a minute, are not. ``Admin/ForgetMember`` and ``Admin/RestoreMember``
audit themselves (they know what they changed) and role-denied calls are audited by the auth
interceptor. Runs after the auth interceptor, so ``current_caller`` is known.
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


# Item ids listed in a catalog change's entry; the rest are counted.
AUDITED_ITEM_IDS = 20


def _catalog_change(event: str) -> Callable[[Any, Any], tuple[str, dict[str, Any]] | None]:
    def describe(request: Any, response: Any) -> tuple[str, dict[str, Any]] | None:
        applied = [r.item_id for r in response.results if r.applied]
        if not applied:
            return None  # nothing changed
        return event, {
            "applied": len(applied),
            "failed": int(response.failed),
            "item_ids": [i[:64] for i in applied[:AUDITED_ITEM_IDS]],
            "more_items": max(0, len(applied) - AUDITED_ITEM_IDS),
        }

    return describe


AUDITED: dict[str, Callable[[Any, Any], tuple[str, dict[str, Any]] | None]] = {
    "/recsvc.v1.Outreach/UpdateConsent": _consent,
    "/recsvc.v1.Recommender/ReloadModel": _reload,
    "/recsvc.v1.Catalog/UpsertItems": _catalog_change("catalog_upsert"),
    "/recsvc.v1.Catalog/DelistItems": _catalog_change("catalog_delist"),
    "/recsvc.v1.Catalog/RelistItems": _catalog_change("catalog_relist"),
}


class AuditInterceptor(MethodWrapper):
    def __init__(self, append: Callable[..., Any]) -> None:
        self._append = append

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        describe = AUDITED.get(method)
        if describe is None or handler.unary_unary is None:
            return handler

        def record(request: Any, response: Any) -> Any:
            described = describe(request, response)
            if described is None:
                return response
            event, fields = described
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
