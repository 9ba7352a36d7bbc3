"""Who may do what: service token for admins and readers, provider tokens to
register, node tokens for a node's own calls; the wrong token is refused
with UNAUTHENTICATED, someone else's node with PERMISSION_DENIED."""

from __future__ import annotations

import grpc

from idlegrid.common.auth import bearer
from idlegrid.registry import credentials
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import beat, expect_status, registration

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def _ready_node(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    return p, node


async def _heartbeat_status(fast, metadata, node_id) -> grpc.StatusCode:
    call = fast.anon.Heartbeat(metadata=metadata)
    await call.write(pb.HeartbeatRequest(node_id=node_id))
    try:
        await call.read()
        await call.done_writing()
        await call.read()
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_a_wrong_node_token_is_unauthenticated(fast):
    _, node = await _ready_node(fast)
    forged = f"ign_{node.node_id.hex()}_{'A' * 43}"
    assert await _heartbeat_status(fast, bearer(forged), node.node_id) == UNAUTH
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=bearer(forged)), UNAUTH)
    await expect_status(fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=bearer(forged)),
                        UNAUTH)
    assert (await fast.node(node.node_id)).state == pb.NODE_STATE_READY


async def test_malformed_and_missing_tokens_are_unauthenticated(fast):
    _, node = await _ready_node(fast)
    for md in ((), bearer("nonsense"), (("authorization", "Basic abc"),), bearer(node.token + "x")):
        assert await _heartbeat_status(fast, md, node.node_id) == UNAUTH
        await expect_status(fast.anon.RegisterNode(registration(), metadata=md), UNAUTH)


async def test_a_node_token_acts_only_on_its_own_node(fast):
    p, a = await _ready_node(fast)
    b = await fast.register(p, registration())
    await fast.wait_state(b.node_id, pb.NODE_STATE_READY)
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=b.node_id), metadata=a.md), DENIED)
    await expect_status(fast.anon.Deregister(pb.DeregisterRequest(node_id=b.node_id), metadata=a.md), DENIED)
    assert await _heartbeat_status(fast, a.md, b.node_id) == DENIED
    assert (await fast.node(b.node_id)).state == pb.NODE_STATE_READY


async def test_another_providers_node_is_permission_denied(fast):
    _, node = await _ready_node(fast)
    other = await fast.provider()
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=other.md), DENIED)
    await expect_status(fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=other.md), DENIED)
    await expect_status(fast.anon.RegisterNode(registration(node_id=node.node_id), metadata=other.md), DENIED)
    n = await fast.node(node.node_id)
    assert n.state == pb.NODE_STATE_READY and n.provider_id != other.provider.provider_id


async def test_the_owning_provider_may_drain_and_deregister_its_node(fast):
    p, node = await _ready_node(fast)
    r = await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=p.md)
    assert r.node.state == pb.NODE_STATE_DRAINING and "provider" in r.node.state_detail
    r = await fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=p.md)
    assert r.node.state == pb.NODE_STATE_OFFLINE


async def test_tokens_of_the_wrong_kind_are_permission_denied(fast):
    p, node = await _ready_node(fast)
    assert await _heartbeat_status(fast, p.md, node.node_id) == DENIED
    await expect_status(fast.anon.RegisterNode(registration(), metadata=node.md), DENIED)


async def test_admin_and_read_calls_need_the_service_token(fast):
    p, node = await _ready_node(fast)
    for md in ((), p.md, node.md):
        await expect_status(fast.anon.GetNode(pb.GetNodeRequest(node_id=node.node_id), metadata=md), UNAUTH)
        await expect_status(fast.anon.ListNodes(pb.ListNodesRequest(), metadata=md), UNAUTH)
        await expect_status(fast.anon.CreateProvider(pb.CreateProviderRequest(
            name="x", ledger_account_id=b"\x01" * 16), metadata=md), UNAUTH)
        watch = fast.anon.WatchNodes(pb.WatchNodesRequest(), metadata=md)
        await expect_status(watch.read(), UNAUTH)


async def test_a_deregistered_nodes_token_is_revoked(fast):
    _, node = await _ready_node(fast)
    await fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=node.md)
    assert await _heartbeat_status(fast, node.md, node.node_id) == UNAUTH


async def test_an_open_heartbeat_stream_stops_when_its_token_is_replaced(fast):
    p, node = await _ready_node(fast)
    call = fast.heartbeats(node)
    await call.write(beat(node))
    assert (await call.read()).state == pb.NODE_STATE_READY
    await fast.register(p, registration(node_id=node.node_id))
    await call.write(beat(node))
    await expect_status(call.read(), UNAUTH)


def test_tokens_name_their_principal_and_only_digests_match():
    pid = b"\x07" * 16
    token, digest = credentials.mint(credentials.NODE, pid)
    assert credentials.parse(token) == (credentials.NODE, pid)
    assert credentials.matches(token, digest)
    assert not credentials.matches(token[:-1] + ("A" if token[-1] != "A" else "B"), digest)
    assert not credentials.matches(token, None)
    assert credentials.parse("ign_" + "0" * 32) is None
    assert credentials.parse("x" * 500) is None
