"""Links are authenticated by the node token and tracked by the registry: a
bad token attaches nothing; a dropped link is reported (DetachLink, the node
OFFLINE with LINK_LOST); a node whose relay stops comes back through another
replica; a second link from the same node replaces the first."""

from __future__ import annotations

import numpy as np
import pytest

from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness.polling import eventually
from tests.relay import support
from tests.relay.support import ECHO_MODEL_NAME, echo_inputs, headers

pytestmark = pytest.mark.slow


async def _echo(relay, node_id: bytes) -> np.ndarray:
    async with support.client(relay) as c:
        r = await c.infer(ECHO_MODEL_NAME, echo_inputs([4.0, 2.0]), headers=headers(node_id))
    return r.as_numpy("OUTPUT0")


async def test_the_registry_verifies_a_linked_node_through_the_relay(relay, registry, node):
    n = await registry.get(node.node_id)
    assert n.state == pb.NODE_STATE_READY and not n.endpoint
    assert n.link.relay_addr == support.relay_addr(relay) and n.link.relay_id == relay.relay_id


async def test_a_bad_node_token_is_refused_and_nothing_attached(relay, registry, triton):
    node_id, _token = await registry.node()
    link = await support.link_node([relay], node_id, "not-the-token", triton.grpc_url)
    try:
        await eventually(lambda: link.failures >= 2, what="two refused link attempts")
        assert link.last_error == "UNAUTHENTICATED" and link.links_made == 0
        assert relay.hub.get(node_id) is None
        assert await registry.linked_via(node_id) == ""
    finally:
        await link.stop()


async def test_no_token_at_all_is_refused(relay, registry, triton):
    node_id, _token = await registry.node()
    link = await support.link_node([relay], node_id, "", triton.grpc_url)
    try:
        await eventually(lambda: link.failures >= 1, what="a refused link attempt")
        assert link.last_error == "UNAUTHENTICATED" and relay.hub.get(node_id) is None
    finally:
        await link.stop()


async def test_a_dropped_link_is_detached_at_the_registry(relay, registry, triton):
    node_id, token = await registry.node()
    link = await support.link_node([relay], node_id, token, triton.grpc_url)
    await link.wait_linked()
    await registry.wait_ready(node_id)
    await link.stop()  # the agent goes away
    await eventually(lambda: registry.link_lost(node_id), what="the node OFFLINE with LINK_LOST")
    assert relay.hub.get(node_id) is None


async def test_a_node_moves_to_another_replica_when_its_relay_stops(config, registry, triton):
    first = await support.start_relay(config, registry.addr)
    second = await support.start_relay(config, registry.addr)
    node_id, token = await registry.node()
    link = await support.link_node([first, second], node_id, token, triton.grpc_url)
    try:
        await link.wait_linked()
        assert link.relay_addr == support.relay_addr(first)
        await registry.wait_ready(node_id)
        await first.stop(0)
        await eventually(lambda: link.relay_addr == support.relay_addr(second), what="the link on the second replica")
        assert second.hub.get(node_id) is not None
        assert link.links_made == 2

        async def recorded() -> bool:
            n = await registry.get(node_id)
            return n.state == pb.NODE_STATE_READY and n.link.relay_addr == support.relay_addr(second)

        await eventually(recorded, what="the registry to record the second replica, verified")
        assert np.array_equal(await _echo(second, node_id), np.asarray([[4.0, 2.0]], dtype=np.float32))
    finally:
        await link.stop()
        await second.stop(0)


async def test_a_new_link_from_the_same_node_replaces_the_old(relay, registry, triton):
    node_id, token = await registry.node()
    old = await support.link_node([relay], node_id, token, triton.grpc_url)
    await old.wait_linked()
    held = relay.hub.get(node_id)
    new = await support.link_node([relay], node_id, token, triton.grpc_url)
    try:
        await new.wait_linked()
        await eventually(lambda: relay.hub.get(node_id) is not held and held.closed, what="the old link replaced")
        assert held.close_reason.startswith("replaced")
    finally:
        await old.stop()
        await new.stop()
