"""The live view survives a registry restart through its Postgres copy."""

from __future__ import annotations

import asyncio

from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import LOOPBACK
from tests.registry.support import beat, echo_offer, free_port, registration

SETTINGS = RegistrySettings(**LOOPBACK, heartbeat_interval_ms=10_000, skip_verification=True)


async def test_providers_nodes_and_tokens_survive_a_restart(make_registry):
    first = await make_registry(SETTINGS)
    p = await first.provider()
    ready = await first.register(p, registration(models=[echo_offer(42)]))
    await first.wait_state(ready.node_id, pb.NODE_STATE_READY)
    gone = await first.register(p, registration())
    await first.wait_state(gone.node_id, pb.NODE_STATE_READY)
    await first.anon.Deregister(pb.DeregisterRequest(node_id=gone.node_id), metadata=gone.md)
    await first.running.stop(grace_s=0.5)

    second = await make_registry(SETTINGS, db_url=first.db_url)
    assert second.registry.hub.epoch != first.registry.hub.epoch
    n = await second.node(ready.node_id)
    assert n.state == pb.NODE_STATE_READY and n.models[0].offer.price.per_request == 42
    assert n.models[0].verified
    assert n.provider_account_id == p.provider.ledger_account_id
    assert (await second.node(gone.node_id)).state_reason == pb.STATE_REASON_DEREGISTERED
    # The node token and the provider token still work.
    call = second.heartbeats(ready)
    await call.write(beat(ready))
    assert (await call.read()).state == pb.NODE_STATE_READY
    call.cancel()
    again = await second.register(p, registration())
    assert again.node_id not in (ready.node_id, gone.node_id)


async def test_a_node_verifying_when_the_registry_stopped_comes_back_offline(make_registry):
    slow = RegistrySettings(**LOOPBACK, heartbeat_interval_ms=10_000, verify_call_timeout_ms=60_000, verify_timeout_ms=60_000)
    # A port that accepts connections but never speaks gRPC: verification hangs.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    try:
        first = await make_registry(slow)
        p = await first.provider()
        node = await first.register(p, registration(f"127.0.0.1:{port}"))
        await first.wait_state(node.node_id, pb.NODE_STATE_VERIFYING)
        await first.running.stop(grace_s=0.5)
        second = await make_registry(SETTINGS, db_url=first.db_url)
        n = await second.node(node.node_id)
        assert (n.state, n.state_reason) == (pb.NODE_STATE_OFFLINE, pb.STATE_REASON_REGISTRY_RESTARTED)
    finally:
        server.close()
