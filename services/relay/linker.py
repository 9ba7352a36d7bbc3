"""RelayService.Link: an agent's one stream to this relay.

The agent presents its node token (``authorization: Bearer <node token>``)
and says Hello with its node id; the relay proves both with the registry
(AttachLink, the relay's service credential plus the node token) before the
link takes calls, and tells the registry when the link drops (DetachLink).
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial

import grpc
import structlog

from idlegrid.common.auth import AUTH_KEY
from idlegrid.common.errors import InvalidArgument, Unauthenticated, Unavailable, from_rpc_error
from idlegrid.common.interceptors import ABORT, abort_with
from idlegrid.common.node_link import NODE_TOKEN_HEADER
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.relay.hub import Hub, Link
from idlegrid.relay.v1 import relay_pb2 as pb
from idlegrid.relay.wire import WELCOME

log = structlog.get_logger("relay.link")

NODE_ID_BYTES = 16
AGENT_VERSION_CHARS_MAX = 64
SERVICE_NAME = "idlegrid.relay.v1.RelayService"
LINK_METHOD = f"/{SERVICE_NAME}/Link"
DETACHES_MAX = 10_000  # DetachLink calls in flight (the registry is down: they pile up, bounded)


def _wake(handler: asyncio.Task) -> None:
    """The link closed (replaced, silent, the relay stopping): ends the Link
    handler's wait for the agent's next message, unless it closed itself."""
    if asyncio.current_task() is not handler:
        handler.cancel()


def link_adder(linker: LinkServicer):
    """The ``add`` of the Link service's Registration: the handler straight
    from ``linker`` (the bootstrap's policy-wrapped servicer is not used)."""

    def add(_wrapped, server: grpc.aio.Server) -> None:
        handlers = {"Link": grpc.stream_stream_rpc_method_handler(
            linker.Link, request_deserializer=pb.LinkUp.FromString, response_serializer=pb.LinkDown.SerializeToString)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    return add


async def _hello(request_iterator, timeout_s: float) -> tuple[bytes, str, bool]:
    """The agent's Hello: its node id, its version, and whether it takes
    DownBatch (the message itself is not kept: an idle link holds no more
    than it must)."""
    try:
        first = await asyncio.wait_for(anext(request_iterator), timeout_s)
    except (StopAsyncIteration, TimeoutError):
        raise InvalidArgument("a link starts with Hello") from None
    if first.WhichOneof("event") != "hello":
        raise InvalidArgument("a link starts with Hello")
    hello = first.hello
    if len(hello.node_id) != NODE_ID_BYTES:
        raise InvalidArgument(f"hello.node_id must be {NODE_ID_BYTES} bytes")
    if len(hello.agent_version) > AGENT_VERSION_CHARS_MAX:
        raise InvalidArgument(f"hello.agent_version is longer than {AGENT_VERSION_CHARS_MAX} chars")
    return hello.node_id, hello.agent_version, pb.FEATURE_BATCH in hello.features


def node_token(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == AUTH_KEY and value.startswith("Bearer ") and len(value) <= 1024:
            return value[7:]
    raise Unauthenticated("missing node token")


class LinkServicer:
    """The RelayService servicer (the Link method)."""

    def __init__(self, hub: Hub, registry, *, relay_id: str, relay_addr: str) -> None:
        """``registry``: a RegistryService stub carrying the service credential."""
        self.hub = hub
        self.registry = registry
        self.relay_id = relay_id
        self.relay_addr = relay_addr
        self._detaches: set[asyncio.Task] = set()

    async def Link(self, request_iterator, context):  # noqa: N802 - gRPC method name
        """Registered without the shared policy wrapper (see link_adder), so
        that an idle link costs one task, this one; its errors end the call
        as the policy ends any other (interceptors.abort_with)."""
        try:
            await self._serve(request_iterator, context)
        except (asyncio.CancelledError, *ABORT):
            raise
        except Exception as e:  # noqa: BLE001 - mapped, never leaked
            await abort_with(LINK_METHOD, context, e)

    async def _serve(self, request_iterator, context) -> None:
        token = node_token(context)
        settings = self.hub.settings
        node_id, agent_version, batch = await _hello(request_iterator, settings.hello_timeout_ms / 1000)
        self.hub.reserve()
        handler = asyncio.current_task()
        link = Link(node_id, uuid.uuid4().bytes, settings, write=context.write, on_close=partial(_wake, handler),
                    batch=batch)
        await self._attach(link, token)
        self.hub.attach(link)
        link.send_nowait(WELCOME)  # the first message: the agent knows it is linked, and what we understand
        log.info("relay.link_attached", node_id=node_id.hex(), agent_version=agent_version)
        try:
            async for msg in request_iterator:
                link.on_up(msg)
                if link.closed:
                    break
            else:
                link.close("the agent closed its link")
        except asyncio.CancelledError:
            if not link.closed:  # grpc cancelled the call: the agent went away
                link.close("the agent left")
                raise
            handler.uncancel()  # our own wake-up (link.close): end the stream below
        except Exception as e:  # noqa: BLE001 - the stream broke: the link is gone
            link.close(f"the link broke: {type(e).__name__}")
        finally:
            link.close(link.close_reason or "the agent left")
            self.hub.detach(link)
            self._detach_later(link)  # the registry ignores a link that is no longer the node's
            log.info("relay.link_detached", node_id=node_id.hex(), reason=link.close_reason)
        if link.close_reason.startswith("replaced"):
            raise Unavailable("replaced by a newer link from the same node")

    async def _attach(self, link: Link, token: str) -> None:
        request = rpb.AttachLinkRequest(node_id=link.node_id, relay_id=self.relay_id, relay_addr=self.relay_addr,
                                        link_id=link.link_id)
        try:
            await self.registry.AttachLink(request, metadata=((NODE_TOKEN_HEADER, token),),
                                           timeout=self.hub.settings.registry_timeout_ms / 1000)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.NOT_FOUND):
                raise Unauthenticated(f"the registry refused the node: {err.message}") from None
            raise Unavailable(f"the registry could not attach the link: {err.message}") from None

    def _detach_later(self, link: Link) -> None:
        if len(self._detaches) >= DETACHES_MAX:
            log.error("relay.detach_dropped", node_id=link.node_id.hex())
            return
        task = asyncio.create_task(self._detach(link))
        self._detaches.add(task)
        task.add_done_callback(self._detaches.discard)

    async def _detach(self, link: Link) -> None:
        request = rpb.DetachLinkRequest(node_id=link.node_id, link_id=link.link_id)
        try:
            await self.registry.DetachLink(request, timeout=self.hub.settings.registry_timeout_ms / 1000)
        except grpc.RpcError as e:
            log.warning("relay.detach_failed", node_id=link.node_id.hex(), code=e.code().name)
        except Exception as e:  # noqa: BLE001 - the relay is stopping (channel closed): the lease covers it
            log.warning("relay.detach_failed", node_id=link.node_id.hex(), error=repr(e))

    async def drain(self) -> None:
        """Waits for the DetachLink calls in flight (on stop)."""
        if self._detaches:
            await asyncio.gather(*self._detaches, return_exceptions=True)
