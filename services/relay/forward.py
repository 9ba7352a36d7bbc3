"""The relay's marketplace face: the KServe v2 gRPC API
(``inference.GRPCInferenceService``), forwarded as raw bytes down the link
of the node named in ``idlegrid-node-id``. Requests and replies are never
parsed here: the generic handlers have no (de)serializers."""

from __future__ import annotations

import asyncio

import grpc

from idlegrid.common.auth import AUTH_KEY
from idlegrid.common.errors import (
    IdlegridError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from idlegrid.common.node_link import NODE_ID_HEADER, REPLIES_MAX_HEADER, REPLY_BYTES_MAX_HEADER
from idlegrid.relay.hub import End, Hub, Link, RelayCall
from idlegrid.relay.settings import FORWARDED_STREAM, FORWARDED_UNARY, KSERVE_SERVICE
from idlegrid.relay.v1 import relay_pb2 as pb

TIMEOUT_MS_MAX = 2**32 - 1


def _bound(value: str, name: str, cap: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer") from None
    if n <= 0:
        raise InvalidArgument(f"{name} must be positive")
    return min(n, cap)


async def _raise_end(end: End, context) -> None:
    await context.abort(end.code, end.message)


class Forwarder:
    """Servicer of the forwarded methods; any other method of the service is
    refused (PERMISSION_DENIED) and never reaches a node.

    The forwarded methods check the service credential themselves and map
    domain errors in place (the hot path skips the shared policy wrapper's
    per-call request id and log line; refusals go through the policy)."""

    def __init__(self, hub: Hub, guard, *, allowed: frozenset[str] = frozenset()) -> None:
        """``guard`` names the caller (a token, or under mTLS the client
        certificate); ``allowed``: the identities that may reach nodes."""
        self.hub = hub
        self._guard = guard
        self._allowed = allowed
        for name in FORWARDED_UNARY:
            setattr(self, name, self._unary_for(name))
        self.ModelStreamInfer = self._stream  # noqa: N815 - gRPC method name

    def __getattr__(self, name: str):
        async def refuse(request, context):
            raise PermissionDenied(f"{KSERVE_SERVICE}/{name} is not forwarded to nodes")

        return refuse

    def _route(self, context) -> tuple[Link, int, int]:
        """The link of the node the call is for, and the call's bounds."""
        node_hex = None
        authorization = None
        replies_max = self.hub.settings.replies_max
        reply_bytes_max = self.hub.settings.reply_bytes_max
        for key, value in context.invocation_metadata() or ():
            if key == NODE_ID_HEADER:
                node_hex = value
            elif key == AUTH_KEY:
                authorization = value
            elif key == REPLIES_MAX_HEADER:
                replies_max = _bound(value, key, replies_max)
            elif key == REPLY_BYTES_MAX_HEADER:
                reply_bytes_max = _bound(value, key, reply_bytes_max)
        who = self._guard.identify(authorization, context)
        if who is None:
            raise Unauthenticated("missing or invalid service credential")
        if who not in self._allowed:
            raise PermissionDenied("this caller may not reach nodes")
        if node_hex is None:
            raise InvalidArgument(f"missing {NODE_ID_HEADER} metadata")
        try:
            node_id = bytes.fromhex(node_hex)
        except ValueError:
            raise InvalidArgument(f"{NODE_ID_HEADER} must be hex") from None
        link = self.hub.get(node_id)
        if link is None or link.closed:
            raise NotFound(f"node {node_hex[:64]} holds no link on this relay")
        return link, replies_max, reply_bytes_max

    @staticmethod
    def _timeout_ms(context) -> int:
        remaining = context.time_remaining()
        if remaining is None:
            return 0
        return max(1, min(TIMEOUT_MS_MAX, int(remaining * 1000)))

    def _unary_for(self, method: str):
        async def unary(request: bytes, context) -> bytes:
            try:
                link, _, reply_bytes_max = self._route(context)
                call = link.open_call(method, request, timeout_ms=self._timeout_ms(context), window=1,
                                      input_done=True, replies_max=1, reply_bytes_max=reply_bytes_max)
            except IdlegridError as e:
                await context.abort(e.code, e.message)
            try:
                first = await call.next()
                if isinstance(first, End):
                    await _raise_end(first, context)
                end = await call.next()
                if isinstance(end, End) and end.code != grpc.StatusCode.OK:
                    await _raise_end(end, context)
                return first
            finally:
                link.finish(call)

        return unary

    async def _stream(self, request_iterator, context):
        window = self.hub.settings.window_replies
        try:
            link, replies_max, reply_bytes_max = self._route(context)
            first = await anext(request_iterator, None)
            if first is None:
                return
            call = link.open_call("ModelStreamInfer", first, timeout_ms=self._timeout_ms(context), window=window,
                                  input_done=False, replies_max=replies_max, reply_bytes_max=reply_bytes_max)
        except IdlegridError as e:
            await context.abort(e.code, e.message)
        pump = asyncio.create_task(self._pump(link, call, request_iterator))
        credit_batch = max(1, window // 2)
        consumed = 0
        try:
            while True:
                item = await call.next()
                if isinstance(item, End):
                    if item.code != grpc.StatusCode.OK:
                        await _raise_end(item, context)
                    return
                yield item
                consumed += 1
                if consumed >= credit_batch and not call.ended:
                    link.send_nowait(pb.LinkDown(credit=pb.Credit(call_id=call.call_id, replies=consumed)))
                    consumed = 0
        finally:
            pump.cancel()
            link.finish(call)

    async def _pump(self, link: Link, call: RelayCall, request_iterator) -> None:
        """Passes the caller's further request messages down the link."""
        inputs = 0
        async for payload in request_iterator:
            inputs += 1
            if inputs >= self.hub.settings.inputs_per_call_max:
                link.calls.pop(call.call_id, None)
                call.end(End(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"more than {self.hub.settings.inputs_per_call_max} request messages"))
                link.send_nowait(pb.LinkDown(cancel=pb.Cancel(call_id=call.call_id)))
                return
            if call.ended:
                return
            await link.send(pb.LinkDown(input=pb.Input(call_id=call.call_id, payload=payload)))
        if not call.ended:
            await link.send(pb.LinkDown(input=pb.Input(call_id=call.call_id, done=True)))


def forwarder_adder(forwarder: Forwarder):
    """The ``add`` of the KServe face's Registration: raw-bytes generic
    handlers, the forwarded methods straight from ``forwarder``, the refused
    ones through the policy-wrapped servicer the bootstrap passes."""

    def add(wrapped, server: grpc.aio.Server) -> None:
        handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(forwarder, name)) for name in FORWARDED_UNARY}
        handlers.update({name: grpc.stream_stream_rpc_method_handler(getattr(forwarder, name))
                         for name in FORWARDED_STREAM})
        refused = {m for m in _all_methods() if m not in handlers}
        handlers.update({name: grpc.unary_unary_rpc_method_handler(getattr(wrapped, name)) for name in refused})
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(KSERVE_SERVICE, handlers),))
        server.add_registered_method_handlers(KSERVE_SERVICE, handlers)  # matched in grpc core, not per call

    return add


def _all_methods() -> list[str]:
    from google.protobuf import descriptor_pool

    return [m.name for m in descriptor_pool.Default().FindServiceByName(KSERVE_SERVICE).methods]


def ensure_descriptor() -> None:
    """The KServe service descriptor (policy wrapping, reflection) comes with tritonclient."""
    import tritonclient.grpc.service_pb2  # noqa: F401
