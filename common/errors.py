"""The error tree of idlegrid. Each domain error carries its gRPC status; the
server interceptor maps it once, and the REST gateway maps the status once more
to an OpenAI-style error body.

    IdlegridError
    ├── ConfigError              (start-up only, never crosses an RPC)
    ├── InvalidArgument          INVALID_ARGUMENT   malformed request
    ├── NotFound                 NOT_FOUND          unknown account, node, model, job
    ├── AlreadyExists            ALREADY_EXISTS     a unique thing created twice
    ├── Conflict                 ABORTED            same idempotency key, different body
    ├── FailedPrecondition       FAILED_PRECONDITION state forbids it (e.g. node not ready)
    ├── InsufficientFunds        FAILED_PRECONDITION not enough credits (reason=insufficient_funds)
    ├── Unauthenticated          UNAUTHENTICATED    missing or wrong token
    ├── PermissionDenied         PERMISSION_DENIED  authenticated, not allowed
    ├── ResourceExhausted        RESOURCE_EXHAUSTED queue full, rate limited, too large
    ├── Unavailable              UNAVAILABLE        no node, a dependency is down; retry
    └── DeadlineExceeded         DEADLINE_EXCEEDED
"""

from __future__ import annotations

import grpc


class IdlegridError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class ConfigError(IdlegridError):
    reason = "config"


class InvalidArgument(IdlegridError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class NotFound(IdlegridError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "not_found"


class AlreadyExists(IdlegridError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "already_exists"


class Conflict(IdlegridError):
    code = grpc.StatusCode.ABORTED
    reason = "conflict"


class FailedPrecondition(IdlegridError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "failed_precondition"


class InsufficientFunds(FailedPrecondition):
    reason = "insufficient_funds"


class Unauthenticated(IdlegridError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(IdlegridError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class ResourceExhausted(IdlegridError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "resource_exhausted"


class Unavailable(IdlegridError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"


class DeadlineExceeded(IdlegridError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "deadline_exceeded"


# The reason travels to clients in this trailing-metadata key, so a caller
# (the gateway) can tell "not enough credits" from other FAILED_PRECONDITIONs.
REASON_KEY = "idlegrid-reason"

_BY_CODE: dict[grpc.StatusCode, type[IdlegridError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, AlreadyExists, Conflict, FailedPrecondition,
        Unauthenticated, PermissionDenied, ResourceExhausted, Unavailable, DeadlineExceeded,
    )
}


def from_rpc_error(err: grpc.RpcError) -> IdlegridError:
    """Turns a ``grpc.RpcError`` from another idlegrid service back into a domain
    error, keeping its reason, so that no raw RpcError leaks further."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(code)
    reason = None
    try:
        for key, value in err.trailing_metadata() or ():
            if key == REASON_KEY:
                reason = value
    except Exception:  # noqa: BLE001 - some RpcErrors carry no metadata
        reason = None
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason == InsufficientFunds.reason:
        return InsufficientFunds(details)
    cls = _BY_CODE.get(code)
    if cls is None:
        if code == grpc.StatusCode.CANCELLED:
            return Unavailable(details, reason="cancelled")
        return IdlegridError(details, reason=reason or "internal")
    return cls(details, reason=reason)
