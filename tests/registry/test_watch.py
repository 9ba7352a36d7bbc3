"""WatchNodes: a snapshot, then every change in order (revisions grow by
one), load reports, and resumption after a disconnect: the missed changes
when they are still buffered, otherwise a fresh snapshot."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.conftest import LOOPBACK
from tests.registry.support import beat, expect_status, next_delta, read_snapshot, registration


async def _ready(h, p):
    node = await h.register(p, registration())
    await h.wait_state(node.node_id, pb.NODE_STATE_READY)
    return node


async def test_a_watcher_gets_a_snapshot_then_ordered_deltas(fast):
    p = await fast.provider()
    a = await _ready(fast, p)
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    epoch, revision, nodes = await read_snapshot(watch)
    assert len(epoch) == 16
    assert [n.node_id for n in nodes] == [a.node_id] and nodes[0].state == pb.NODE_STATE_READY
    assert nodes[0].revision <= revision
    b = await fast.register(p, registration())
    await fast.anon.Drain(pb.DrainRequest(node_id=a.node_id), metadata=a.md)
    await fast.anon.Deregister(pb.DeregisterRequest(node_id=a.node_id), metadata=a.md)
    deltas = [await next_delta(watch) for _ in range(5)]
    assert [d.revision for d in deltas] == list(range(revision + 1, revision + 6))
    assert all(d.kind == pb.DELTA_KIND_UPSERTED for d in deltas)
    by_node: dict[bytes, list[int]] = {}
    for d in deltas:
        by_node.setdefault(d.node.node_id, []).append(d.node.state)
        assert d.node.revision == d.revision
    assert by_node[b.node_id] == [pb.NODE_STATE_JOINING, pb.NODE_STATE_VERIFYING, pb.NODE_STATE_READY]
    assert by_node[a.node_id] == [pb.NODE_STATE_DRAINING, pb.NODE_STATE_OFFLINE]
    watch.cancel()


async def test_a_snapshot_of_many_nodes_comes_in_chunks(fast):
    p = await fast.provider()
    ids: set[bytes] = set()
    for _ in range(0, 1_005, 67):  # 15 concurrent batches of 67
        nodes = await asyncio.gather(*(fast.register(p, registration()) for _ in range(67)))
        ids.update(n.node_id for n in nodes)
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    chunks = []
    while not chunks or not chunks[-1].last:
        chunks.append((await watch.read()).snapshot)
    assert [len(c.nodes) for c in chunks] == [1_000, 5]
    assert len({c.revision for c in chunks}) == 1
    assert {n.node_id for c in chunks for n in c.nodes} == ids
    watch.cancel()


async def test_a_watcher_that_resumes_gets_the_changes_it_missed_and_no_snapshot(fast):
    p = await fast.provider()
    a = await _ready(fast, p)
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    epoch, revision, _ = await read_snapshot(watch)
    watch.cancel()
    await fast.anon.Drain(pb.DrainRequest(node_id=a.node_id), metadata=a.md)
    await fast.anon.Deregister(pb.DeregisterRequest(node_id=a.node_id), metadata=a.md)
    resumed = fast.admin.WatchNodes(pb.WatchNodesRequest(resume_epoch=epoch, resume_revision=revision,
                                                         omit_load=True))
    first = await resumed.read()
    assert first.WhichOneof("event") == "delta" and first.delta.revision == revision + 1
    assert first.delta.node.state == pb.NODE_STATE_DRAINING
    second = await next_delta(resumed)
    assert second.revision == revision + 2 and second.node.state == pb.NODE_STATE_OFFLINE
    # Then it carries on live.
    b = await fast.register(p, registration())
    third = await next_delta(resumed)
    assert third.revision == revision + 3 and third.node.node_id == b.node_id
    resumed.cancel()


async def test_an_up_to_date_watcher_resumes_with_nothing_to_replay(fast):
    p = await fast.provider()
    await _ready(fast, p)
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    epoch, revision, _ = await read_snapshot(watch)
    watch.cancel()
    resumed = fast.admin.WatchNodes(pb.WatchNodesRequest(resume_epoch=epoch, resume_revision=revision,
                                                         omit_load=True))
    b = await fast.register(p, registration())
    d = await next_delta(resumed)
    assert (d.revision, d.node.node_id) == (revision + 1, b.node_id)
    resumed.cancel()


async def test_a_watcher_too_far_behind_gets_a_fresh_snapshot(make_registry):
    h = await make_registry(RegistrySettings(**LOOPBACK, heartbeat_interval_ms=10_000, skip_verification=True,
                                             watch_buffer_max=4))
    p = await h.provider()
    watch = h.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    epoch, revision, _ = await read_snapshot(watch)
    watch.cancel()
    nodes = [await _ready(h, p) for _ in range(3)]  # 9 changes; 4 are kept
    resumed = h.admin.WatchNodes(pb.WatchNodesRequest(resume_epoch=epoch, resume_revision=revision,
                                                      omit_load=True))
    _, now, snap = await read_snapshot(resumed)
    assert now == revision + 9
    assert {n.node_id for n in snap} == {n.node_id for n in nodes}
    resumed.cancel()


async def test_a_watcher_from_another_registry_epoch_gets_a_snapshot(fast):
    p = await fast.provider()
    await _ready(fast, p)
    resumed = fast.admin.WatchNodes(pb.WatchNodesRequest(resume_epoch=b"\x09" * 16, resume_revision=1,
                                                         omit_load=True))
    _, _, snap = await read_snapshot(resumed)
    assert len(snap) == 1
    resumed.cancel()
    future = fast.admin.WatchNodes(pb.WatchNodesRequest(resume_epoch=fast.registry.hub.epoch,
                                                        resume_revision=10**9, omit_load=True))
    await read_snapshot(future)  # a revision from the future: a snapshot, too
    future.cancel()


async def test_watchers_get_coalesced_load_reports_unless_they_omit_them(fast):
    p = await fast.provider()
    node = await _ready(fast, p)
    loads = fast.admin.WatchNodes(pb.WatchNodesRequest())
    quiet = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(loads)
    await read_snapshot(quiet)
    call = fast.heartbeats(node)
    for n in (1, 2, 3):
        await call.write(beat(node, in_flight=n))
    await call.done_writing()
    while (await call.read()) is not grpc.aio.EOF:
        pass
    seen = None
    while seen is None or seen.in_flight != 3:
        m = await loads.read()
        assert m.WhichOneof("event") == "load"
        seen = next(x for x in m.load.loads if x.node_id == node.node_id)
    # The quiet watcher gets the next change, and no load report before it.
    await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    m = await quiet.read()
    assert m.WhichOneof("event") == "delta"
    loads.cancel()
    quiet.cancel()


async def test_a_watcher_that_falls_behind_is_dropped_not_waited_for():
    """The hub never blocks on a watcher: past its queue bound the watcher is
    closed with RESOURCE_EXHAUSTED (it resumes with its last revision)."""
    from idlegrid.common.errors import ResourceExhausted
    from idlegrid.registry.hub import WatchHub

    hub = WatchHub(buffer_max=100, watcher_queue_max=3, watchers_max=10)
    slow, first = hub.subscribe(resume_epoch=b"", resume_revision=0, wants_load=False, snapshot=list)
    fast, _ = hub.subscribe(resume_epoch=b"", resume_revision=0, wants_load=False, snapshot=list)
    assert first[0].snapshot.last and first[0].snapshot.revision == 0
    got = []
    for i in range(1, 5):
        hub.publish(hub.next_revision(), pb.DELTA_KIND_UPSERTED, pb.Node(revision=i))
        got.append((await fast.next()).delta.revision)  # this one keeps up
    assert got == [1, 2, 3, 4]
    with pytest.raises(ResourceExhausted):
        await slow.next()
    # What it missed is still buffered: resuming from revision 0 replays 1..4.
    _, replay = hub.subscribe(resume_epoch=hub.epoch, resume_revision=0, wants_load=False, snapshot=list)
    assert [m.delta.revision for m in replay] == [1, 2, 3, 4]


async def test_watchers_are_limited(make_registry):
    h = await make_registry(RegistrySettings(**LOOPBACK, heartbeat_interval_ms=10_000, watchers_max=1))
    first = h.admin.WatchNodes(pb.WatchNodesRequest())
    await read_snapshot(first)
    second = h.admin.WatchNodes(pb.WatchNodesRequest())
    await expect_status(second.read(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    first.cancel()


def test_watchers_subscribing_together_share_one_snapshot_until_something_changes():
    from idlegrid.registry.hub import WatchHub

    builds = []

    def snapshot():
        builds.append(1)
        return [pb.Node(node_id=b"\x01" * 16)]

    hub = WatchHub(buffer_max=10, watcher_queue_max=10, watchers_max=10, snapshot_reuse_s=3600)
    _, a = hub.subscribe(resume_epoch=b"", resume_revision=0, wants_load=False, snapshot=snapshot)
    _, b = hub.subscribe(resume_epoch=b"", resume_revision=0, wants_load=False, snapshot=snapshot)
    assert a is b and len(builds) == 1
    hub.publish(hub.next_revision(), pb.DELTA_KIND_UPSERTED, pb.Node(node_id=b"\x01" * 16))
    _, c = hub.subscribe(resume_epoch=b"", resume_revision=0, wants_load=False, snapshot=snapshot)
    assert len(builds) == 2 and c[0].snapshot.revision == 1
