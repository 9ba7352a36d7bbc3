"""One server interceptor for every service: authentication with the service
token, a canonical structured log line per RPC, and the mapping of domain
errors to gRPC status codes. Handlers are wrapped once per method and cached,
so the per-call cost is a metadata scan and one log line."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable

import grpc
import structlog

from services.common.auth import AUTH_KEY, token_matches
from services.common.errors import REASON_KEY, IdlegridError

log = structlog.get_logger("rpc")

REQUEST_ID_KEY = "x-request-id"

# Always reachable without the service token: probes and tooling.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        token: str | None,
        open_methods: Iterable[str] = (),
        quiet_methods: Iterable[str] = (),
    ) -> None:
        """``token``: the service token every call must present (None disables
        the check). ``open_methods``: full method names that authenticate on
        their own (e.g. calls from provider nodes with node tokens).
        ``quiet_methods``: logged at debug level only (hot, high-volume)."""
        self._token = token
        self._open = frozenset(open_methods)
        self._quiet = frozenset(quiet_methods)
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable,
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        try:
            return self._cache[method]
        except KeyError:
            pass
        handler = await continuation(details)
        wrapped = self._wrap(method, handler) if handler is not None else None
        self._cache[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        needs_auth = self._token is not None and not (
            method in self._open or method.startswith(OPEN_PREFIXES)
        )
        quiet = method in self._quiet or method.startswith(OPEN_PREFIXES)
        token = self._token or ""

        def begin(context: grpc.aio.ServicerContext) -> str:
            structlog.contextvars.clear_contextvars()
            request_id = None
            authorized = not needs_auth
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID_KEY:
                    request_id = value
                elif key == AUTH_KEY and needs_auth:
                    authorized = token_matches(value, token)
            request_id = request_id or uuid.uuid4().hex
            structlog.contextvars.bind_contextvars(request_id=request_id)
            if not authorized:
                raise _Denied
            return request_id

        def finish(context, start: float, exc: BaseException | None) -> None:
            code = context.code()
            if exc is not None and code is None:
                code = grpc.StatusCode.UNKNOWN
            status = (code or grpc.StatusCode.OK).name
            fields = {"method": method, "status": status,
                      "duration_ms": round((time.perf_counter() - start) * 1e3, 3)}
            if status == "OK" and quiet:
                log.debug("rpc", **fields)
            elif status in ("OK", "CANCELLED"):
                log.info("rpc", **fields)
            else:
                log.warning("rpc", **fields, details=context.details())

        async def fail(context, exc: BaseException) -> None:
            if isinstance(exc, _Denied):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid service token")
            if isinstance(exc, IdlegridError):
                context.set_trailing_metadata(((REASON_KEY, exc.reason),))
                await context.abort(exc.code, exc.message)
            log.error("rpc.unhandled", method=method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                start = time.perf_counter()
                exc = None
                try:
                    begin(context)
                    return await inner(request, context)
                except _PASS_THROUGH as e:  # context.abort() inside the servicer; cancel
                    exc = e
                    raise
                except Exception as e:  # noqa: BLE001 - mapped, never leaked
                    exc = e
                    await fail(context, e)
                finally:
                    finish(context, start, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                start = time.perf_counter()
                exc = None
                try:
                    begin(context)
                    async for item in inner_stream(request, context):
                        yield item
                except _PASS_THROUGH as e:
                    exc = e
                    raise
                except Exception as e:  # noqa: BLE001 - mapped, never leaked
                    exc = e
                    await fail(context, e)
                finally:
                    finish(context, start, exc)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client- and bidi-streaming calls pass through unwrapped (none of ours).
        return handler


class _Denied(Exception):
    pass


try:  # the exception grpc.aio raises from context.abort()
    from grpc._cython.cygrpc import AbortError as _AbortError

    _ABORT: tuple[type[BaseException], ...] = (_AbortError,)
except ImportError:  # pragma: no cover
    _ABORT = ()
_PASS_THROUGH = (*_ABORT, asyncio.CancelledError, GeneratorExit)
