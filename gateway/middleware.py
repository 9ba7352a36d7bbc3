"""The one middleware of every request: a request id, a bound on requests in
flight, the per-IP limit at the edge (idlegrid.gateway.edge), metrics, one
canonical log line, and a last-resort 500 that names the request id and
nothing else. Never logs headers or bodies (keys live there).

One layer, not one per concern: each ASGI layer costs a call and a closure
on every request and on every message of its response.
"""

from __future__ import annotations

import re
import time
from typing import Protocol

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idlegrid.common.logs import log_field
from idlegrid.gateway.errors import ApiError
from idlegrid.gateway.job_ids import random_uuid4
from idlegrid.gateway.metrics import Metrics

log = structlog.get_logger("gateway.http")

REQUEST_ID_HEADER = "x-request-id"
NOTES_KEY = "idlegrid.notes"
FINISH_KEY = "idlegrid.on_finish"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
_REQUEST_ID_FIELD = log_field("request_id")


class Gate(Protocol):
    def refusal(self, scope: Scope) -> ApiError | None: ...


def note(scope: Scope, **fields) -> None:
    """Adds fields (key_id, job_id, model, cost...) to the request's log line.
    Never pass a key or a body."""
    scope.setdefault(NOTES_KEY, {}).update(fields)


def on_finish(scope: Scope, callback) -> None:
    """Calls ``callback()`` when the request ends (its response sent, or it
    failed): how a per-key slot is given back after a stream's last byte."""
    scope.setdefault(FINISH_KEY, []).append(callback)


def request_id(scope: Scope) -> str:
    return scope.get(NOTES_KEY, {}).get("request_id", "")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, concurrency_max: int, gate: Gate) -> None:
        """``gate``: asked before the app, after the bound on requests in
        flight (the per-IP limit, idlegrid.gateway.edge.IpGate)."""
        self.app = app
        self.metrics = metrics
        self.concurrency_max = concurrency_max
        self.gate = gate
        self.in_flight = 0
        metrics.count_in_flight(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = None
        for k, v in scope["headers"]:
            if k == _REQUEST_ID_HEADER:
                candidate = v.decode("latin-1")
                rid = candidate if _REQUEST_ID.match(candidate) else None
        rid = rid or random_uuid4().hex()
        notes = scope.setdefault(NOTES_KEY, {})
        notes["request_id"] = rid
        # uvicorn runs each request in a task of its own, in a copy of the
        # server's context: nothing bound by another request is there to clear.
        _REQUEST_ID_FIELD.set(rid)
        status = 0
        rid_header = (_REQUEST_ID_HEADER, rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        self.in_flight += 1
        try:
            if self.in_flight > self.concurrency_max:
                refusal = ApiError(503, "the gateway is at its limit of requests in flight; try again",
                                   code="overloaded", headers={"Retry-After": "1"})
            else:
                refusal = self.gate.refusal(scope)
            if refusal is None:
                await self.app(scope, receive, send_wrapper)
            else:
                await self.error(send_wrapper, scope, refusal)
        except Exception:  # noqa: BLE001 - a bug: logged here, never shown to the client
            log.error("http.unhandled", exc_info=True, path=scope.get("path"))
            if status == 0:
                await self.error(send_wrapper, scope, ApiError(
                    500, f"internal error (request id {rid})", code="internal_error"))
        finally:
            for callback in scope.pop(FINISH_KEY, ()):
                callback()
            self.in_flight -= 1
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route_path, status or 500, elapsed)
            fields = {k: v for k, v in notes.items() if k != "request_id"}
            level = log.info if status < 500 else log.warning
            level("http", method=scope["method"], route=route_path, status=status or 500,
                  duration_ms=round(elapsed * 1000, 3), **fields)

    @staticmethod
    async def error(send: Send, scope: Scope, err: ApiError) -> None:
        kserve = scope.get("path", "").startswith("/v2")
        body = err.kserve_bytes() if kserve else err.json_bytes()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
