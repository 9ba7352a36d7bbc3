"""The agent in linked mode against a real registry, real relays and a real
demo Triton on loopback: it registers without an endpoint, links out to a
relay, is verified THROUGH the link (the registry never dials the node), goes
OFFLINE (LINK_LOST) when its relay goes away, and comes back READY through
another replica."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from idlegrid.common.node_link import NODE_TOKEN_HEADER
from idlegrid.node.agent import AgentOptions, NodeAgent
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.relay.service import start as start_relay
from idlegrid.relay.v1 import relay_pb2 as relay_pb
from idlegrid.relay.v1 import relay_pb2_grpc
from tests.harness import WAIT_S, eventually
from tests.node.support import ScriptedProbe, options, pricing, running
from tests.registry.support import echo_offer, hardware

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

pb = rpb
READY, OFFLINE = pb.NODE_STATE_READY, pb.NODE_STATE_OFFLINE


@pytest.fixture
async def relays(config, reg):
    started = []

    async def make():
        r = await start_relay(config, port=0, registry_addr=reg.addr, host="127.0.0.1")
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop(0.2)


async def test_a_linked_agent_is_verified_through_its_relay_and_moves_to_another_when_it_dies(reg, triton, relays):
    a, b = await relays(), await relays()
    p = await reg.provider()
    agent = NodeAgent(options(reg, p, triton, relay_addrs=(a.advertise_addr, b.advertise_addr),
                              backoff_max_s=0.5))
    async with running(agent):
        await agent.wait_for(READY, timeout_s=WAIT_S)
        n = await reg.node(agent.node_id)
        assert n.endpoint == "" and n.state_reason == pb.STATE_REASON_VERIFIED
        assert all(m.verified for m in n.models)
        first = n.link.relay_addr
        assert first in (a.advertise_addr, b.advertise_addr) and n.link.relay_id in (a.relay_id, b.relay_id)
        dying, other = (a, b) if first == a.advertise_addr else (b, a)
        await dying.stop(0.2)

        async def moved():
            n = await reg.node(agent.node_id)
            return n if n.state == READY and n.link.relay_addr == other.advertise_addr else None

        n = await eventually(moved, what="the node READY through the other relay")
        assert n.link.relay_id == other.relay_id and n.endpoint == ""


class VanishingRelay(relay_pb2_grpc.RelayServiceServicer):
    """A relay that attaches one link, then dies without ever detaching it
    (what a killed relay process does), and refuses every link after."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.addr = ""
        self.dead = asyncio.Event()

    async def Link(self, request_iterator, context):  # noqa: N802 - gRPC method name
        if self.dead.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the relay is gone")
        hello = (await anext(request_iterator)).hello
        token = dict(context.invocation_metadata())["authorization"].removeprefix("Bearer ")
        await self.registry.AttachLink(rpb.AttachLinkRequest(
            node_id=hello.node_id, relay_id="vanishing", relay_addr=self.addr, link_id=os.urandom(16)),
            metadata=((NODE_TOKEN_HEADER, token),))
        yield relay_pb.LinkDown(ping=relay_pb.Ping(nonce=0))
        await self.dead.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the relay died")


async def test_the_agent_reports_a_relay_that_vanished_without_detaching(make_registry):
    reg = await make_registry(RegistrySettings(heartbeat_interval_ms=60_000, lease_intervals=5,
                                               sweep_interval_ms=50, skip_verification=True))
    fake = VanishingRelay(reg.admin)
    server = grpc.aio.server()
    relay_pb2_grpc.add_RelayServiceServicer_to_server(fake, server)
    fake.addr = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        p = await reg.provider()
        agent = NodeAgent(AgentOptions(registry_addr=reg.addr, provider_token=p.token, triton_url="127.0.0.1:9",
                                       node_config=pricing(), relay_addrs=(fake.addr,), backoff_max_s=0.5),
                          hardware_inventory=hardware(), offers=[echo_offer()], probe=ScriptedProbe())
        async with running(agent):
            n = await reg.wait_state(agent.node_id, READY)  # (the agent hears it at its next heartbeat)
            assert n.link.relay_id == "vanishing"
            fake.dead.set()
            # The heartbeat interval is a minute: only the agent's prompt report can do this.
            n = await reg.wait_state(agent.node_id, OFFLINE)
            assert n.state_reason == pb.STATE_REASON_LINK_LOST and "agent lost its link" in n.state_detail
    finally:
        await server.stop(0)
