"""The registry the relay tests attach links to: the real RegistryService,
in-process on a fresh database (nodes registered without an endpoint, i.e.
linked nodes, whose links the registry verifies through the relay)."""

from __future__ import annotations

from dataclasses import dataclass

from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness.registry import RegistryHarness, start_registry
from tests.registry.support import echo_offer, hardware, llm_offer

# Long leases: nothing expires while a test looks; links are what the tests move.
SETTINGS = RegistrySettings(heartbeat_interval_ms=60_000, sweep_interval_ms=50, load_report_interval_ms=50)


@dataclass
class RegistryFace:
    h: RegistryHarness

    @classmethod
    async def start(cls, config, db_url: str) -> RegistryFace:
        return cls(await start_registry(config, db_url, settings=SETTINGS))

    @property
    def addr(self) -> str:
        return self.h.addr

    async def node(self) -> tuple[bytes, str]:
        """A node registered without endpoint (reached only through its link)."""
        provider = await self.h.provider()
        r = await self.h.register(provider, pb.RegisterNodeRequest(
            hardware=hardware(), models=[llm_offer(), echo_offer()], region="test"))
        return r.node_id, r.token

    async def get(self, node_id: bytes) -> pb.Node:
        return await self.h.node(node_id)

    async def wait_ready(self, node_id: bytes) -> pb.Node:
        """Waits until the registry verified the node through its link (READY)."""
        return await self.h.wait_state(node_id, pb.NODE_STATE_READY)

    async def linked_via(self, node_id: bytes) -> str:
        """The relay address the registry records for the node's link ('' if none)."""
        n = await self.get(node_id)
        return n.link.relay_addr if n.HasField("link") else ""

    async def link_lost(self, node_id: bytes) -> bool:
        n = await self.get(node_id)
        return n.state == pb.NODE_STATE_OFFLINE and n.state_reason == pb.STATE_REASON_LINK_LOST

    async def stop(self) -> None:
        await self.h.stop()
