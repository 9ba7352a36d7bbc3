"""A registry on its own (the registry and node agent tests): a one-part
stack with two stubs, one with the service token (``admin``) and one
without (``anon``, as nodes and providers call), and the calls those tests
repeat."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from idlegrid.common.auth import bearer
from idlegrid.common.channel import open_channel
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from idlegrid.registry.v1 import registry_pb2_grpc
from tests.harness.polling import WAIT_S, eventually
from tests.harness.stack import Stack, start_stack

STOP_GRACE_S = 0.5
OPERATOR = "test-operator"  # the actor of the operator actions tests take  # open watch and heartbeat streams hold a stop for its whole grace


@dataclass
class Provider:
    """A provider and its token, as CreateProvider answered."""

    provider: pb.Provider
    token: str

    @property
    def md(self):
        return bearer(self.token)


@dataclass
class RegisteredNode:
    """A node's id, token and heartbeat interval, as RegisterNode answered."""

    node_id: bytes
    token: str
    interval_ms: int

    @property
    def md(self):
        return bearer(self.token)


@dataclass
class RegistryHarness:
    """A registry in-process on a free (or given) port, with stubs."""

    stack: Stack
    admin: registry_pb2_grpc.RegistryServiceStub        # service token
    anon: registry_pb2_grpc.RegistryServiceStub         # no service token (nodes, providers)

    @property
    def running(self):
        return self.stack.registry_srv

    @property
    def registry(self):
        return self.running.registry

    @property
    def db_url(self) -> str:
        return self.stack.db_url

    @property
    def addr(self) -> str:
        return self.stack.addrs["registry"]

    async def provider(self, name: str | None = None) -> Provider:
        r = await self.admin.CreateProvider(pb.CreateProviderRequest(
            name=name or f"p-{uuid.uuid4().hex[:8]}", ledger_account_id=os.urandom(16)))
        return Provider(r.provider, r.provider_token)

    async def register(self, provider: Provider, request: pb.RegisterNodeRequest) -> RegisteredNode:
        r = await self.anon.RegisterNode(request, metadata=provider.md)
        return RegisteredNode(r.node_id, r.node_token, r.heartbeat_interval_ms)

    async def node(self, node_id: bytes) -> pb.Node:
        return (await self.admin.GetNode(pb.GetNodeRequest(node_id=node_id))).node

    async def wait_state(self, node_id: bytes, *states: int, timeout_s: float = WAIT_S) -> pb.Node:
        """Polls GetNode until the node is in one of ``states``; returns it."""
        async def in_state() -> pb.Node | None:
            n = await self.node(node_id)
            return n if n.state in states else None

        return await eventually(in_state, what=f"the node in state {states}", timeout_s=timeout_s)

    async def sell(self, model: pb.CatalogModel, *, reason: str = "a test") -> pb.CatalogModel:
        """Puts ``model`` in the catalog (as an operator)."""
        return await self.admin.PutCatalogModel(pb.PutCatalogModelRequest(model=model, actor=OPERATOR,
                                                                          reason=reason))

    async def catalog_entry(self, name: str) -> pb.CatalogModel:
        """A copy of the catalog's entry for ``name`` (the harness seeds the demo models)."""
        [m] = [m for m in (await self.admin.ListCatalog(pb.ListCatalogRequest())).models if m.name == name]
        return m

    def heartbeats(self, node: RegisteredNode):
        """A Heartbeat stream call with the node's token."""
        return self.anon.Heartbeat(metadata=node.md)

    async def stop(self) -> None:
        await self.stack.stop(grace_s=STOP_GRACE_S)


async def start_registry(config, db_url: str, *, settings: RegistrySettings, port: int = 0) -> RegistryHarness:
    stack = await start_stack(config, db_url, parts=("registry",), ports={"registry": port},
                              registry_settings=settings)
    anon = open_channel(stack.addrs["registry"], token=None)
    stack.channels.append(anon)
    return RegistryHarness(stack, stack.registry, registry_pb2_grpc.RegistryServiceStub(anon))
