"""Node links in the registry: a linked node (no endpoint) is READY only
while a relay holds its link; AttachLink/DetachLink semantics (replace,
stale detach, idempotence), the agent's own report of a lost link, and the
bad inputs of both. The relay here is the test itself calling with the
service credential (the relay's own tests cover the relay); verification is
skipped (the registry's documented test setting), so no Triton is dialled."""

from __future__ import annotations

import os

import grpc
import pytest

from idlegrid.common.node_link import NODE_TOKEN_HEADER
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness import eventually
from tests.registry.support import beat, expect_status, next_delta, read_snapshot, registration

READY, JOINING, OFFLINE = pb.NODE_STATE_READY, pb.NODE_STATE_JOINING, pb.NODE_STATE_OFFLINE


@pytest.fixture
async def linked(make_registry):
    return await make_registry(RegistrySettings(heartbeat_interval_ms=10_000, sweep_interval_ms=50,
                                                load_report_interval_ms=50, skip_verification=True))


def attach(h, node, link_id: bytes, relay_id: str = "relay-a", relay_addr: str = "127.0.0.1:50055"):
    return h.admin.AttachLink(pb.AttachLinkRequest(node_id=node.node_id, relay_id=relay_id, relay_addr=relay_addr,
                                                   link_id=link_id), metadata=((NODE_TOKEN_HEADER, node.token),))


async def detach(h, node, link_id: bytes) -> bool:
    r = await h.admin.DetachLink(pb.DetachLinkRequest(node_id=node.node_id, link_id=link_id))
    return r.detached


async def joined(h):
    p = await h.provider()
    return await h.register(p, registration(endpoint=""))


async def test_a_linked_node_waits_in_joining_until_its_link_attaches_then_is_ready(linked):
    node = await joined(linked)
    n = await linked.node(node.node_id)
    assert n.state == JOINING and n.endpoint == "" and not n.HasField("link")
    link_id = os.urandom(16)
    r = await attach(linked, node, link_id, relay_addr="10.1.2.3:50055")
    assert r.node.link.link_id == link_id and r.node.link.relay_addr == "10.1.2.3:50055"
    n = await linked.wait_state(node.node_id, READY)
    assert n.link.relay_id == "relay-a" and n.link.attached_at.seconds > 0


async def test_detach_takes_the_node_offline_link_lost_and_is_idempotent(linked):
    node = await joined(linked)
    link_id = os.urandom(16)
    await attach(linked, node, link_id)
    await linked.wait_state(node.node_id, READY)
    assert not await detach(linked, node, os.urandom(16))  # not its link: nothing changes
    assert (await linked.node(node.node_id)).state == READY
    assert await detach(linked, node, link_id)
    n = await linked.node(node.node_id)
    assert n.state == OFFLINE and n.state_reason == pb.STATE_REASON_LINK_LOST and not n.HasField("link")
    assert not await detach(linked, node, link_id)  # again: nothing to do


async def test_a_new_link_replaces_the_old_and_the_old_relays_late_detach_changes_nothing(linked):
    node = await joined(linked)
    old, new = os.urandom(16), os.urandom(16)
    await attach(linked, node, old, relay_id="relay-a")
    await linked.wait_state(node.node_id, READY)
    watch = linked.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    await attach(linked, node, new, relay_id="relay-b", relay_addr="127.0.0.1:50056")
    d = await next_delta(watch)
    assert d.node.link.relay_id == "relay-b" and d.node.state == READY  # watchers see where the link is
    assert not await detach(linked, node, old)
    n = await linked.node(node.node_id)
    assert n.state == READY and n.link.link_id == new
    watch.cancel()


async def test_a_node_whose_link_was_lost_is_verified_again_when_it_links_again(linked):
    node = await joined(linked)
    first = os.urandom(16)
    await attach(linked, node, first)
    await linked.wait_state(node.node_id, READY)
    await detach(linked, node, first)
    await attach(linked, node, os.urandom(16), relay_id="relay-b")
    n = await linked.wait_state(node.node_id, READY)
    assert n.link.relay_id == "relay-b" and n.state_reason == pb.STATE_REASON_VERIFICATION_SKIPPED


async def test_the_agents_heartbeat_reporting_no_link_takes_the_node_offline(linked):
    """A relay that died without detaching: the agent says it has held no link."""
    node = await joined(linked)
    await attach(linked, node, os.urandom(16))
    await linked.wait_state(node.node_id, READY)
    call = linked.heartbeats(node)
    # A report older than the link (the agent had not yet heard it attached) changes nothing.
    await call.write(pb.HeartbeatRequest(node_id=node.node_id, unlinked_for_ms=3_600_000))
    r = await call.read()
    assert r.state == READY
    await call.write(beat(node))
    n = await linked.node(node.node_id)
    assert n.state == READY
    # Lost after it attached: OFFLINE (LINK_LOST).
    link_id = os.urandom(16)
    await attach(linked, node, link_id)  # attached now; the agent loses it a moment later

    async def reported_lost():  # the agent reports on each beat, 1 ms after it lost the link
        await call.write(pb.HeartbeatRequest(node_id=node.node_id, unlinked_for_ms=1))
        n = await linked.node(node.node_id)
        return n if n.state == OFFLINE else None

    n = await eventually(reported_lost, what="the node OFFLINE")
    assert n.state_reason == pb.STATE_REASON_LINK_LOST and "agent lost its link" in n.state_detail
    call.cancel()


async def test_attach_link_refuses_bad_credentials_and_input_and_changes_nothing(linked):
    node = await joined(linked)
    other = await joined(linked)
    req = pb.AttachLinkRequest(node_id=node.node_id, relay_id="r", relay_addr="127.0.0.1:1", link_id=os.urandom(16))
    await expect_status(linked.anon.AttachLink(req, metadata=((NODE_TOKEN_HEADER, node.token),)),
                        grpc.StatusCode.UNAUTHENTICATED)  # no service credential: not a relay
    await expect_status(linked.admin.AttachLink(req), grpc.StatusCode.UNAUTHENTICATED)  # no node token
    await expect_status(linked.admin.AttachLink(req, metadata=((NODE_TOKEN_HEADER, other.token),)),
                        grpc.StatusCode.PERMISSION_DENIED)  # another node's token
    await expect_status(linked.admin.AttachLink(req, metadata=((NODE_TOKEN_HEADER, "ign_" + "0" * 32 + "_x"),)),
                        grpc.StatusCode.UNAUTHENTICATED)
    for bad in (dict(link_id=b"short"), dict(relay_id=""), dict(relay_id="x" * 129), dict(relay_addr="nohost")):
        r = pb.AttachLinkRequest()
        r.CopyFrom(req)
        for k, v in bad.items():
            setattr(r, k, v)
        await expect_status(linked.admin.AttachLink(r, metadata=((NODE_TOKEN_HEADER, node.token),)),
                            grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(linked.admin.DetachLink(pb.DetachLinkRequest(node_id=node.node_id, link_id=b"x")),
                        grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(linked.admin.DetachLink(pb.DetachLinkRequest(node_id=os.urandom(16), link_id=os.urandom(16))),
                        grpc.StatusCode.NOT_FOUND)
    n = await linked.node(node.node_id)
    assert n.state == JOINING and not n.HasField("link")


async def test_a_direct_node_takes_no_link(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    await expect_status(attach(fast, node, os.urandom(16)), grpc.StatusCode.FAILED_PRECONDITION)


async def test_registering_again_drops_the_link_until_the_agent_links_with_its_new_token(linked):
    p = await linked.provider()
    node = await linked.register(p, registration(endpoint=""))
    await attach(linked, node, os.urandom(16))
    await linked.wait_state(node.node_id, READY)
    again = await linked.register(p, registration(endpoint="", node_id=node.node_id))
    n = await linked.node(node.node_id)
    assert n.state == JOINING and not n.HasField("link")
    await expect_status(attach(linked, node, os.urandom(16)), grpc.StatusCode.UNAUTHENTICATED)  # the old token
    await attach(linked, again, os.urandom(16))
    await linked.wait_state(node.node_id, READY)


async def test_after_a_registry_restart_linked_nodes_register_and_link_again(make_registry, linked):
    node = await joined(linked)
    await attach(linked, node, os.urandom(16))
    await linked.wait_state(node.node_id, READY)
    await linked.registry._writer.flush()
    url = linked.db_url
    await linked.stop()
    h = await make_registry(RegistrySettings(heartbeat_interval_ms=10_000, skip_verification=True), db_url=url)
    n = await h.node(node.node_id)
    assert n.state == OFFLINE and n.state_reason == pb.STATE_REASON_REGISTRY_RESTARTED
