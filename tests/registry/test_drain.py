"""Drain and deregistration follow the state machine; a refused change
leaves the node as it was."""

from __future__ import annotations

import grpc

from idlegrid.registry import states
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import LOOPBACK
from tests.registry.support import expect_status, free_port, registration


async def test_drain_moves_a_ready_node_to_draining_once(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    r = await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    assert (r.node.state, r.node.state_reason) == (pb.NODE_STATE_DRAINING, pb.STATE_REASON_DRAIN_REQUESTED)
    again = await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    assert again.node.revision == r.node.revision  # idempotent: no new change


async def test_deregister_takes_a_node_offline_and_is_idempotent(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    r = await fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=node.md)
    assert (r.node.state, r.node.state_reason) == (pb.NODE_STATE_OFFLINE, pb.STATE_REASON_DEREGISTERED)
    r2 = await fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=p.md)
    assert r2.node.revision == r.node.revision


async def test_only_a_ready_node_drains(make_registry):
    h = await make_registry(RegistrySettings(**LOOPBACK, heartbeat_interval_ms=10_000, verify_call_timeout_ms=100))
    p = await h.provider()
    node = await h.register(p, registration(f"127.0.0.1:{free_port()}"))  # nothing listens: fails
    n = await h.wait_state(node.node_id, pb.NODE_STATE_OFFLINE)
    e = await expect_status(h.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert "offline" in e.details()
    assert (await h.node(node.node_id)).revision == n.revision


def test_the_state_machine_refuses_what_its_table_does_not_allow():
    import pytest

    with pytest.raises(states.IllegalTransition):
        states.check(states.OFFLINE, states.READY, pb.STATE_REASON_VERIFIED)
    with pytest.raises(states.IllegalTransition):
        states.check(states.JOINING, states.DRAINING, pb.STATE_REASON_DRAIN_REQUESTED)
    with pytest.raises(states.IllegalTransition):
        states.check(states.READY, states.OFFLINE, pb.STATE_REASON_VERIFIED)  # wrong reason
    states.check(states.READY, states.DRAINING, pb.STATE_REASON_DRAIN_REQUESTED)
    for src in states.ALLOWED.keys() - {states.SUSPENDED}:
        states.check(src, states.JOINING, pb.STATE_REASON_REGISTERED)  # registering again: from anywhere
        states.check(src, states.SUSPENDED, pb.STATE_REASON_SUSPENDED)  # an operator suspends from anywhere
    # Only an operator lifts a suspension (→ VERIFYING); registering again keeps it.
    assert states.ALLOWED[states.SUSPENDED] == {states.VERIFYING, states.SUSPENDED}
