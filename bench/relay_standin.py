"""A registry stand-in with only AttachLink and DetachLink, for the relay
bench's 10,000 idle links (no database rows for them) and for link mechanics
while the real registry's side is not there. It checks node tokens like the
registry: one token per node."""

from __future__ import annotations

import os
import secrets

import grpc

from idlegrid.common.auth import token_matches
from idlegrid.common.node_link import NODE_TOKEN_HEADER
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc


class StandInRegistry(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, service_token: str) -> None:
        self.service_token = service_token
        self.tokens: dict[bytes, str] = {}
        self.links: dict[bytes, bytes] = {}      # node -> current link id
        self.relays: dict[bytes, str] = {}       # node -> relay_addr of the current link
        self.detached: list[bytes] = []          # nodes whose current link was detached
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def node(self) -> tuple[bytes, str]:
        node_id, token = os.urandom(16), secrets.token_urlsafe(24)
        self.tokens[node_id] = token
        return node_id, token

    def _check_service(self, context) -> bool:
        md = dict(context.invocation_metadata() or ())
        return token_matches(md.get("authorization"), self.service_token)

    async def AttachLink(self, request, context):  # noqa: N802
        md = dict(context.invocation_metadata() or ())
        if not self._check_service(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid service token")
        if self.tokens.get(request.node_id) != md.get(NODE_TOKEN_HEADER):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid node token")
        self.links[request.node_id] = request.link_id
        self.relays[request.node_id] = request.relay_addr
        return pb.AttachLinkResponse(node=pb.Node(node_id=request.node_id))

    async def DetachLink(self, request, context):  # noqa: N802
        if not self._check_service(context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid service token")
        if self.links.get(request.node_id) != request.link_id:
            return pb.DetachLinkResponse(detached=False)
        del self.links[request.node_id]
        self.relays.pop(request.node_id, None)
        self.detached.append(request.node_id)
        return pb.DetachLinkResponse(detached=True)

    async def start(self) -> str:
        self.server = grpc.aio.server()
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
