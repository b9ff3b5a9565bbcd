"""The Admin gRPC servicer (``recsvc.v1.Admin``): erasure and re-registration on request of an
operator.

Errors are raised as recsvc typed errors; the server's error interceptor turns them into status
codes (the servicer also maps them itself when run without that interceptor, e.g. in tests).
"""

from __future__ import annotations

from typing import Any

import grpc

from recsvc.errors import RecsvcError, status_details
from recsvc.security.audit import AuditLog
from recsvc.security.auth import current_caller
from recsvc.security.erasure import EventLogErasure, check_member_id, forget_member, restore_member
from recsvc.security.privacy import ErasureList
from recsvc.v1 import admin_pb2, admin_pb2_grpc

MAX_REASON_LENGTH = 256


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        *,
        redis: Any,
        prefix: str,
        erasures: ErasureList,
        audit: AuditLog,
        max_id_length: int,
        event_log: EventLogErasure | None = None,
    ) -> None:
        self._redis = redis
        self._event_log = event_log
        self._prefix = prefix
        self._erasures = erasures
        self._audit = audit
        self._max_id_length = max_id_length

    def ForgetMember(
        self, request: admin_pb2.ForgetMemberRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ForgetMemberResponse:
        try:
            member_id = check_member_id(request.member_id, self._max_id_length)
            reason = request.reason[:MAX_REASON_LENGTH]
            caller = current_caller.get()
            result = forget_member(
                member_id,
                redis=self._redis,
                prefix=self._prefix,
                erasures=self._erasures,
                audit=self._audit,
                reason=reason,
                requested_by=caller.name if caller else "",
                event_log=self._event_log,
            )
        except RecsvcError as exc:
            context.abort(exc.code, status_details(exc))
        return admin_pb2.ForgetMemberResponse(
            deleted_keys=result.deleted_keys,
            deleted_total=result.deleted_total,
            suppressed=result.suppressed,
            added_to_erasure_list=result.added_to_erasure_list,
            processes_notified=result.processes_notified,
        )

    def RestoreMember(
        self, request: admin_pb2.RestoreMemberRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RestoreMemberResponse:
        try:
            member_id = check_member_id(request.member_id, self._max_id_length)
            caller = current_caller.get()
            lifted = restore_member(
                member_id,
                redis=self._redis,
                prefix=self._prefix,
                audit=self._audit,
                reason=request.reason[:MAX_REASON_LENGTH],
                requested_by=caller.name if caller else "",
                event_log=self._event_log,
            )
        except RecsvcError as exc:
            context.abort(exc.code, status_details(exc))
        return admin_pb2.RestoreMemberResponse(lifted=lifted)
