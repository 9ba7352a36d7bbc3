"""Errors at the REST edge: every failure becomes one HTTP status and an
OpenAI-style body ``{"error": {"message", "type", "param", "code"}}`` (the
KServe routes use KServe's ``{"error": "message"}``). Domain errors from the
backend services are mapped here, once; a raw gRPC error or a stack trace
never reaches a client.

| status | type | when |
|---|---|---|
| 400 | invalid_request_error | malformed JSON, a missing or bad field, an unsupported option |
| 401 | authentication_error | missing, malformed, unknown, revoked or expired API key |
| 402 | insufficient_funds | not enough credits for the job's maximum cost (or a payout) |
| 403 | permission_error | the key's scope does not allow the route or the account; an admin money cap |
| 404 | not_found_error | unknown model, account, key or route |
| 405 | invalid_request_error | wrong method for the route |
| 409 | conflict_error | an idempotency key used before, a name taken |
| 413 | invalid_request_error | request body (or prompt, or tensors) too large |
| 429 | rate_limit_error | the key's rate limit, the client IP's, or the key's requests in flight (Retry-After) |
| 500 | server_error | a bug in the gateway (logged with the request id) |
| 502 | server_error | a backend service failed unexpectedly |
| 503 | service_unavailable | no ready node, a backend is down, no database connection in time (Retry-After) |
| 504 | timeout_error | the job ran past its deadline |
"""

from __future__ import annotations

import json

import grpc

from idlegrid.common.errors import (
    REASON_KEY,
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    IdlegridError,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_funds",
    403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
    409: "conflict_error", 413: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 502: "server_error", 503: "service_unavailable", 504: "timeout_error",
}


class ApiError(Exception):
    """An error answered to the client as is."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()

    def kserve_bytes(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def too_large(message: str) -> ApiError:
    return ApiError(413, message, code="request_too_large")


# Reasons the backends give that deserve their own code for the client.
_CODES = {
    "model_not_found": "model_not_found",
    "context_length_exceeded": "context_length_exceeded",
    "job_exists": "idempotency_key_reused",
    "no_node": "no_node_available",
    "account_not_found": "account_not_found",
}


def from_domain(err: IdlegridError) -> ApiError:
    """The HTTP answer for a domain error raised by a backend service."""
    code = _CODES.get(err.reason, err.reason)
    msg = err.message
    if isinstance(err, InsufficientFunds):
        return ApiError(402, msg, code="insufficient_funds")
    if isinstance(err, InvalidArgument):
        return ApiError(400, msg, code=code)
    if isinstance(err, NotFound):
        return ApiError(404, msg, code=code)
    if isinstance(err, AlreadyExists | Conflict):
        if err.reason == "job_exists":
            msg = "a request with this Idempotency-Key was already run; use a new key for a new request"
        return ApiError(409, msg, code=code)
    if isinstance(err, FailedPrecondition):
        return ApiError(409, msg, code=code)
    if isinstance(err, ResourceExhausted):
        if err.reason == "too_large":
            return ApiError(413, msg, code="request_too_large")
        return ApiError(429, msg, code=code, headers={"Retry-After": "1"})
    if isinstance(err, Unavailable):
        return ApiError(503, msg, code=code, headers={"Retry-After": "1"})
    if isinstance(err, DeadlineExceeded):
        return ApiError(504, msg, code="deadline_exceeded")
    if isinstance(err, Unauthenticated | PermissionDenied):
        # The gateway's own service credentials were refused: not the client's fault.
        return ApiError(502, "the gateway could not authenticate to a backend service", code="upstream_auth")
    return ApiError(502, "a backend service failed; try again", code="upstream_error")


def _from_service(err: grpc.RpcError) -> bool:
    """Whether an idlegrid service answered (its reason in the trailers), as
    opposed to the transport failing (whose details name hosts and ports)."""
    try:
        return any(k == REASON_KEY for k, _ in err.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - some RpcErrors carry no metadata
        return False


def from_rpc(err: grpc.RpcError) -> ApiError:
    if not _from_service(err):
        code = err.code() if hasattr(err, "code") else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ApiError(504, "a backend service did not answer in time", code="deadline_exceeded")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return ApiError(503, "a backend service is unavailable; try again", code="upstream_unavailable",
                            headers={"Retry-After": "1"})
        return ApiError(502, "a backend service failed; try again", code="upstream_error")
    return from_domain(from_rpc_error(err))


async def rpc(awaitable):
    """Awaits a backend call, turning a gRPC error into an ApiError."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as e:
        raise from_rpc(e) from None
