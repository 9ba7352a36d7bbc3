"""The server-side policy every RPC of every service goes through:
who calls (a guard of idlegrid.common.auth: per-identity tokens, or the
client certificate under mTLS) and whether that identity may call this
method (the table in idlegrid.common.identities: an unknown or empty
credential is UNAUTHENTICATED, a known caller on a method not meant for it
PERMISSION_DENIED), a canonical structured log line per
RPC (request id, method, status, duration), and the mapping of domain errors
to gRPC status codes (raw exceptions become INTERNAL, never a stack trace).

It is applied once per method when the servicer is registered (wrapping the
servicer's methods), not through grpc.aio's interceptor chain: the chain costs
an extra await per call on the hot path (measured: about a quarter of the
single-RPC throughput of a trivial service on this machine).

Per call it sets two context variables and nothing more: grpc.aio runs each
RPC in a task of its own, in a copy of the server's context (where nothing
is bound), so what one RPC binds never reaches another and there is nothing
to clear. A caller that sends no request id gets one made from a random
per-process prefix and a counter (a uuid4 costs a system call and an object
per call)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import types
from collections.abc import Iterable

import grpc
import structlog
from google.protobuf import descriptor_pool

from idlegrid.common import identities
from idlegrid.common.auth import AUTH_KEY
from idlegrid.common.errors import REASON_KEY, IdlegridError
from idlegrid.common.logs import log_field

log = structlog.get_logger("rpc")

REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_CHARS_MAX = 128


_REQUEST_ID, _CALLER = log_field("request_id"), log_field("caller")
_ids = itertools.count()
_id_prefix = os.urandom(8).hex()


def _new_prefix() -> None:
    global _id_prefix, _ids
    _id_prefix, _ids = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_new_prefix)  # a forked child never repeats its parent's ids


def new_request_id() -> str:
    """32 hex characters (as a uuid4's): this process's random prefix, then a counter."""
    return f"{_id_prefix}{next(_ids):016x}"

try:  # the exception grpc.aio raises from context.abort()
    from grpc._cython.cygrpc import AbortError as _AbortError

    ABORT: tuple[type[BaseException], ...] = (_AbortError,)
except ImportError:  # pragma: no cover
    ABORT = ()
_PASS_THROUGH = (*ABORT, asyncio.CancelledError, GeneratorExit)


async def abort_with(method: str, context, exc: BaseException) -> None:
    """Ends the call with ``exc``'s status: a domain error's code, message and
    reason; anything else INTERNAL, logged here, never shown to the caller.
    (What the policy does for every method; for a handler registered without
    it, such as the relay's Link.)"""
    if isinstance(exc, IdlegridError):
        context.set_trailing_metadata(((REASON_KEY, exc.reason),))
        await context.abort(exc.code, exc.message)
    log.error("rpc.unhandled", method=method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class _Unknown(Exception):
    """No credential, or one of no identity this server accepts."""


class _Denied(Exception):
    """A known caller on a method not meant for it."""


def _stray_cancel(e: BaseException) -> bool:
    """A CancelledError that does not cancel this handler (an inner call was
    cancelled): left alone it would end the RPC with no answer at all."""
    return isinstance(e, asyncio.CancelledError) and not asyncio.current_task().cancelling()


class RpcPolicy:
    def __init__(self, *, guard, open_methods: Iterable[str] = (),
                 quiet_methods: Iterable[str] = ()) -> None:
        """``guard``: tells the caller's identity (idlegrid.common.auth), which
        must be one the identities table allows for the method; None: no
        check (tests of the bootstrap only). ``open_methods``: full method
        names that authenticate on their own (the node methods, with node
        tokens; each must be a node method in the table). ``quiet_methods``:
        hot, high-volume methods logged at debug level when they succeed."""
        self._guard = guard
        self._open = frozenset(open_methods)
        stray = [m for m in self._open if not identities.is_node_method(m)]
        if stray:
            raise ValueError(f"open methods must be node methods in idlegrid.common.identities: {stray}")
        self._quiet = frozenset(quiet_methods)

    def wrap_servicer(self, servicer: object, full_name: str) -> object:
        """A stand-in for ``servicer`` whose RPC methods apply the policy."""
        service = descriptor_pool.Default().FindServiceByName(full_name)
        wrapped = types.SimpleNamespace()
        for m in service.methods:
            fn = getattr(servicer, m.name)
            method = f"/{full_name}/{m.name}"
            if m.client_streaming and m.server_streaming:
                setattr(wrapped, m.name, self._wrap_stream(method, fn))  # bidi: same shape
            elif m.client_streaming:
                setattr(wrapped, m.name, self._wrap_unary(method, fn))  # request iterator in, one reply
            elif m.server_streaming:
                setattr(wrapped, m.name, self._wrap_stream(method, fn))
            else:
                setattr(wrapped, m.name, self._wrap_unary(method, fn))
        return wrapped

    def _begin(self, context, allowed: frozenset[str] | None) -> None:
        """``allowed``: the identities the method accepts (None: no check)."""
        request_id = authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                request_id = value[:REQUEST_ID_CHARS_MAX]
            elif key == AUTH_KEY:
                authorization = value
        _REQUEST_ID.set(request_id or new_request_id())
        caller = None if allowed is None else self._guard.identify(authorization, context)
        _CALLER.set(... if caller is None else caller)
        if allowed is None:
            return
        if caller is None:
            raise _Unknown
        if caller not in allowed:
            raise _Denied

    @staticmethod
    def _finish(method: str, quiet: bool, context, start: float, exc: BaseException | None) -> None:
        code = context.code()
        duration_ms = round((time.perf_counter() - start) * 1e3, 3)
        if code is None and exc is None:  # the common case, without an enum's name lookup
            (log.debug if quiet else log.info)("rpc", method=method, status="OK", duration_ms=duration_ms)
            return
        if code is None:
            # GeneratorExit: grpc closed a stream handler whose caller left
            left = isinstance(exc, (asyncio.CancelledError, GeneratorExit))
            code = grpc.StatusCode.CANCELLED if left else grpc.StatusCode.UNKNOWN
        status = code.name
        if status == "OK":
            (log.debug if quiet else log.info)("rpc", method=method, status=status, duration_ms=duration_ms)
        elif status == "CANCELLED":
            log.info("rpc", method=method, status=status, duration_ms=duration_ms)
        else:
            log.warning("rpc", method=method, status=status, duration_ms=duration_ms,
                        details=context.details())

    @staticmethod
    async def _fail(method: str, context, exc: BaseException) -> None:
        if isinstance(exc, _Unknown):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid service credential")
        if isinstance(exc, _Denied):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this caller may not call this method")
        await abort_with(method, context, exc)

    def _allowed(self, method: str) -> frozenset[str] | None:
        if self._guard is None or method in self._open:
            return None
        return identities.allowed(method)

    def _wrap_unary(self, method: str, fn):
        allowed, quiet = self._allowed(method), method in self._quiet
        begin, finish, fail = self._begin, self._finish, self._fail

        async def unary(request, context):
            start = time.perf_counter()
            exc = None
            try:
                begin(context, allowed)
                return await fn(request, context)
            except _PASS_THROUGH as e:
                exc = e
                if not _stray_cancel(e):
                    raise
                await fail(method, context, RuntimeError("a call inside the handler was cancelled"))
            except Exception as e:  # noqa: BLE001 - mapped, never leaked
                exc = e
                await fail(method, context, e)
            finally:
                finish(method, quiet, context, start, exc)

        return unary

    def _wrap_stream(self, method: str, fn):
        allowed, quiet = self._allowed(method), method in self._quiet
        begin, finish, fail = self._begin, self._finish, self._fail

        async def stream(request, context):  # request: a message, or an iterator (bidi)
            start = time.perf_counter()
            exc = None
            try:
                begin(context, allowed)
                async for item in fn(request, context):
                    yield item
            except _PASS_THROUGH as e:
                exc = e
                if not _stray_cancel(e):
                    raise
                await fail(method, context, RuntimeError("a call inside the handler was cancelled"))
            except Exception as e:  # noqa: BLE001 - mapped, never leaked
                exc = e
                await fail(method, context, e)
            finally:
                finish(method, quiet, context, start, exc)

        return stream
