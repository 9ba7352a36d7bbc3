"""PAUSED: a READY node whose owner needs the GPU takes no new jobs (the
scheduler's view counts only READY nodes as available), shows why, drains
like a ready node, and resumes to READY."""

from __future__ import annotations

import time

import grpc

from idlegrid.common.node_view import NodeInfo
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import expect_status, next_delta, read_snapshot, registration

PAUSED, READY = pb.NODE_STATE_PAUSED, pb.NODE_STATE_READY


def pause(h, node, paused: bool, detail: str = ""):
    return h.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=paused, detail=detail), metadata=node.md)


async def ready_node(h):
    p = await h.provider()
    node = await h.register(p, registration())
    await h.wait_state(node.node_id, READY)
    return p, node


async def test_a_paused_node_shows_why_is_not_routable_and_resumes(fast):
    _, node = await ready_node(fast)
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    r = await pause(fast, node, True, "the owner is using the GPU: process game.exe (pid 42)")
    assert r.node.state == PAUSED and r.node.state_reason == pb.STATE_REASON_PAUSED
    d = await next_delta(watch)
    assert d.node.state == PAUSED and "game.exe" in d.node.state_detail
    assert not NodeInfo(node=d.node, models={}).available(time.monotonic())  # the scheduler routes READY only
    listed = await fast.admin.ListNodes(pb.ListNodesRequest(states=[PAUSED]))
    assert [n.node_id for n in listed.nodes] == [node.node_id]
    await pause(fast, node, True, "the owner is using the GPU: process game.exe (pid 42)")  # idempotent
    r = await pause(fast, node, False)
    assert r.node.state == READY and r.node.state_reason == pb.STATE_REASON_RESUMED
    d = await next_delta(watch)
    assert d.node.state == READY and NodeInfo(node=d.node, models={}).available(time.monotonic())
    r = await pause(fast, node, False)  # resuming a ready node changes nothing
    assert r.node.state == READY and r.node.revision == d.node.revision
    watch.cancel()


async def test_a_new_reason_updates_the_detail_and_a_paused_node_drains(fast):
    _, node = await ready_node(fast)
    await pause(fast, node, True, "outside the serving schedule (22:00-07:00)")
    r = await pause(fast, node, True, "GPU temperature 90 °C is over the limit of 83 °C")
    assert r.node.state == PAUSED and "temperature" in r.node.state_detail
    d = await fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md)
    assert d.node.state == pb.NODE_STATE_DRAINING


async def test_only_a_ready_node_pauses_and_bad_input_changes_nothing(fast, make_registry):
    p, node = await ready_node(fast)
    await expect_status(pause(fast, node, True, "x" * 1025), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(pause(fast, node, True, "bad\ndetail"), grpc.StatusCode.INVALID_ARGUMENT)
    other = await fast.register(await fast.provider(), registration())
    await expect_status(fast.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=True),
                                            metadata=other.md), grpc.StatusCode.PERMISSION_DENIED)
    await expect_status(fast.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=True)),
                        grpc.StatusCode.UNAUTHENTICATED)
    assert (await fast.node(node.node_id)).state == READY
    # The provider may pause its own node too.
    r = await fast.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=True), metadata=p.md)
    assert r.node.state == PAUSED and r.node.state_detail == "paused by its owner"
    # A node still joining (a linked node without its link) does not pause.
    joining = await fast.register(p, registration(endpoint=""))
    await expect_status(pause(fast, joining, True, "busy"), grpc.StatusCode.FAILED_PRECONDITION)
