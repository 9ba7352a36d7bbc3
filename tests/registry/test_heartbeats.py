"""Heartbeats renew the lease and carry the load; a node that stops
heartbeating goes OFFLINE on its own, and the watchers hear of it."""

from __future__ import annotations

import grpc

from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness import eventually
from tests.registry.conftest import LOOPBACK
from tests.registry.support import (
    KeepAlive,
    beat,
    next_delta,
    read_snapshot,
    registration,
)

SHORT_LEASE = RegistrySettings(**LOOPBACK, heartbeat_interval_ms=100, lease_intervals=2, sweep_interval_ms=20,
                               load_report_interval_ms=20, skip_verification=True)


async def test_the_stream_answers_with_state_interval_and_lease(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    assert node.interval_ms == 10_000
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    call = fast.heartbeats(node)
    await call.write(beat(node, in_flight=3))
    first = await call.read()
    assert (first.state, first.heartbeat_interval_ms, first.lease_intervals) == (pb.NODE_STATE_READY, 10_000, 3)
    assert first.heartbeats_received == 1
    for _ in range(4):
        await call.write(beat(node, in_flight=1))
    await call.done_writing()
    last = await call.read()
    assert last.heartbeats_received == 5
    assert await call.read() is grpc.aio.EOF


async def test_the_load_of_the_last_heartbeat_is_visible(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    call = fast.heartbeats(node)
    await call.write(beat(node, in_flight=4, queue_depth=2, recent_latency_us=1500, gpu_utilization_pct=77))
    await call.read()
    await call.done_writing()
    await call.read()
    n = await fast.node(node.node_id)
    assert (n.load.in_flight, n.load.queue_depth, n.load.recent_latency_us) == (4, 2, 1500)
    assert n.load.HasField("gpu_utilization_pct") and n.load.gpu_utilization_pct == 77
    assert n.load.node_id == node.node_id and n.load.reported_at.seconds > 0


async def test_a_state_change_is_told_on_the_next_heartbeat(fast):
    p = await fast.provider()
    node = await fast.register(p, registration())
    call = fast.heartbeats(node)
    await call.write(beat(node))
    first = await call.read()
    await fast.wait_state(node.node_id, pb.NODE_STATE_READY)
    if first.state != pb.NODE_STATE_READY:
        await call.write(beat(node))
        assert (await call.read()).state == pb.NODE_STATE_READY
    await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    await call.write(beat(node))
    told = await call.read()
    assert (told.state, told.state_reason) == (pb.NODE_STATE_DRAINING, pb.STATE_REASON_DRAIN_REQUESTED)


async def test_a_node_that_stops_heartbeating_goes_offline_on_its_own(make_registry):
    h = await make_registry(SHORT_LEASE)
    p = await h.provider()
    watch = h.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    node = await h.register(p, registration())
    call = h.heartbeats(node)
    await call.write(beat(node))
    await call.read()
    states = []
    while not states or states[-1] != pb.NODE_STATE_OFFLINE:
        d = await next_delta(watch)
        states.append(d.node.state)
    assert states == [pb.NODE_STATE_JOINING, pb.NODE_STATE_VERIFYING, pb.NODE_STATE_READY, pb.NODE_STATE_OFFLINE]
    assert d.node.state_reason == pb.STATE_REASON_LEASE_EXPIRED
    assert "2 intervals of 100 ms" in d.node.state_detail
    # A late heartbeat does not bring it back: the agent must register again.
    await call.write(beat(node))
    told = await call.read()
    assert (told.state, told.state_reason) == (pb.NODE_STATE_OFFLINE, pb.STATE_REASON_LEASE_EXPIRED)
    assert (await h.node(node.node_id)).state == pb.NODE_STATE_OFFLINE
    watch.cancel()
    call.cancel()


async def test_heartbeats_keep_a_node_ready_across_many_lease_periods(make_registry):
    # A lease of 5 intervals (0.5 s), heartbeats every 20 ms, 100 sweeps (about 4 leases).
    h = await make_registry(RegistrySettings(**LOOPBACK, heartbeat_interval_ms=100, lease_intervals=5, sweep_interval_ms=20,
                                             skip_verification=True))
    p = await h.provider()
    node = await h.register(p, registration())
    call = h.heartbeats(node)
    await call.write(beat(node))
    await call.read()
    await h.wait_state(node.node_id, pb.NODE_STATE_READY)
    # Heartbeat (at a fraction of the interval) until the sweeper has had many
    # chances to expire the lease: counted in sweeps, not seconds.
    async with KeepAlive(h, node, every_s=0.02):
        sweeps = h.registry.sweeps
        await eventually(lambda: h.registry.sweeps >= sweeps + 100)
    assert (await h.node(node.node_id)).state == pb.NODE_STATE_READY
    call.cancel()


async def test_registering_again_after_the_lease_ran_out_makes_the_node_ready_again(make_registry):
    h = await make_registry(SHORT_LEASE)
    p = await h.provider()
    node = await h.register(p, registration())
    expired = await h.wait_state(node.node_id, pb.NODE_STATE_OFFLINE)
    assert expired.state_reason == pb.STATE_REASON_LEASE_EXPIRED
    again = await h.register(p, registration(node_id=node.node_id))
    async with KeepAlive(h, again, every_s=0.02):
        n = await h.wait_state(node.node_id, pb.NODE_STATE_READY)
    assert n.revision > expired.revision and n.registered_at.ToNanoseconds() > expired.registered_at.ToNanoseconds()
