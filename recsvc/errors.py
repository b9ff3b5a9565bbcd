"""Typed errors. Each knows its gRPC status code; one interceptor (recsvc.server.interceptors)
turns them into ``context.abort``. Servicers never choose status codes themselves."""

from __future__ import annotations

import grpc


class RecsvcError(Exception):
    """Base for every error recsvc raises on purpose. ``reason`` is a stable, named code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


# A status message travels in the grpc-message header, percent-encoded (a Chinese character is 9
# bytes), and grpc's clients refuse headers over 16 KiB with RESOURCE_EXHAUSTED instead of the
# error: the details are cut to this many characters, saying so.
MAX_DETAILS = 1000


def status_details(exc: BaseException) -> str:
    """The status message of ``exc`` for a caller: ``str(exc)``, cut at :data:`MAX_DETAILS`."""
    text = str(exc)
    if len(text) <= MAX_DETAILS:
        return text
    return f"{text[: MAX_DETAILS - 40]} ... ({len(text) - MAX_DETAILS + 40} more characters)"


class ConfigError(RecsvcError):
    """Settings or a policy file are invalid."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "INVALID_CONFIG"


class InvalidArgument(RecsvcError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(RecsvcError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class ModelUnavailable(RecsvcError):
    """No model bundle is loaded yet (or the requested variant has none)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "MODEL_UNAVAILABLE"


class StoreUnavailable(RecsvcError):
    """Redis did not answer in time."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "STORE_UNAVAILABLE"


class TrackingUnavailable(StoreUnavailable):
    """The MLflow tracking store did not answer (a server down, a wrong host)."""

    reason = "TRACKING_UNAVAILABLE"


class MemberStateUnreadable(RecsvcError):
    """A member's stored record is not in the form recsvc writes (a key of another type, a field
    that is not a number): a retry cannot succeed until an operator repairs or deletes it."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "MEMBER_STATE_UNREADABLE"


class BundleError(RecsvcError):
    """A model bundle is missing files, corrupt, or of another schema version."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "BAD_BUNDLE"


class DataContractError(RecsvcError):
    """An input file breaks the data contract as a whole (wrong columns, unreadable)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "DATA_CONTRACT"


class Unauthenticated(RecsvcError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(RecsvcError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class IdempotencyKeyReused(RecsvcError):
    """An idempotency key came back with other parameters than the request that first used it
    (like a payment API's idempotency error): replaying the first decision would hand the caller
    a reservation for something it did not ask for."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "IDEMPOTENCY_KEY_REUSED"


class MemberErased(RecsvcError):
    """The member was erased (Admin/ForgetMember): nothing new is stored about them until an
    operator re-registers them (Admin/RestoreMember)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "MEMBER_ERASED"


class SparkUnavailable(RecsvcError):
    """Spark could not start or run a training job (no Java, unreachable master, a failed job)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SPARK_UNAVAILABLE"


class ProfilesUnavailable(RecsvcError):
    """The served bundle was trained without member profiles (training.profiles off, or older)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "NO_PROFILES"
