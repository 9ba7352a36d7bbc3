"""SUSPENDED: an operator suspends a node or a whole provider; nothing but an
operator lifts it (not heartbeats, links, pauses, leases, drains or
registering again); unsuspending verifies the node again. Verification is
skipped here (the registry's documented test setting): no Triton is dialled."""

from __future__ import annotations

import os

import grpc
import pytest

from idlegrid.common.node_link import NODE_TOKEN_HEADER
from idlegrid.registry.settings import RegistrySettings
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness.registry import OPERATOR
from tests.registry.conftest import LOOPBACK
from tests.registry.support import KeepAlive, expect_status, next_delta, read_snapshot, registration

READY, SUSPENDED, OFFLINE = pb.NODE_STATE_READY, pb.NODE_STATE_SUSPENDED, pb.NODE_STATE_OFFLINE


def suspend(h, *, node=None, provider=None, suspended=True, reason="abuse report 17", actor=OPERATOR):
    target = {"node_id": node.node_id} if node is not None else {"provider_id": provider.provider.provider_id}
    return h.admin.SetSuspended(pb.SetSuspendedRequest(suspended=suspended, actor=actor, reason=reason, **target))


async def ready_node(h, provider=None, **kw):
    provider = provider or await h.provider()
    node = await h.register(provider, registration(**kw))
    await h.wait_state(node.node_id, READY)
    return provider, node


async def test_a_suspended_node_says_why_and_an_unsuspended_one_is_verified_again(fast):
    _, node = await ready_node(fast)
    r = await suspend(fast, node=node)
    assert [n.node_id for n in r.nodes] == [node.node_id]
    n = await fast.node(node.node_id)
    assert (n.state, n.state_reason) == (SUSPENDED, pb.STATE_REASON_SUSPENDED)
    assert "abuse report 17" in n.state_detail
    again = await suspend(fast, node=node)
    assert not again.nodes  # already suspended: nothing changed
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    r = await suspend(fast, node=node, suspended=False, reason="cleared")
    assert [n.node_id for n in r.nodes] == [node.node_id]
    seen = [(await next_delta(watch)).node for _ in range(2)]
    watch.cancel()
    assert [(n.state, n.state_reason) for n in seen] == [
        (pb.NODE_STATE_VERIFYING, pb.STATE_REASON_UNSUSPENDED), (READY, pb.STATE_REASON_VERIFICATION_SKIPPED)]
    assert "cleared" in seen[0].state_detail


async def test_nothing_but_an_operator_lifts_a_suspension(fast):
    provider, node = await ready_node(fast)
    await suspend(fast, node=node)
    async with KeepAlive(fast, node, every_s=0.02) as alive:  # heartbeats: still suspended
        from tests.harness import eventually

        await eventually(lambda: len(alive.told) >= 1)
    assert alive.told[-1].state == SUSPENDED and "abuse report 17" in alive.told[-1].state_detail
    await expect_status(fast.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=True), metadata=node.md),
                        grpc.StatusCode.FAILED_PRECONDITION)
    await fast.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=False), metadata=node.md)
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md),
                        grpc.StatusCode.FAILED_PRECONDITION)
    # Registering again (a restarted agent): a new token, still suspended, and told so.
    r = await fast.anon.RegisterNode(registration(node_id=node.node_id), metadata=provider.md)
    assert r.state == SUSPENDED
    n = await fast.node(node.node_id)
    assert n.state == SUSPENDED and "abuse report 17" in n.state_detail
    # Deregistering revokes the token and leaves it suspended.
    await fast.anon.Deregister(pb.DeregisterRequest(node_id=node.node_id), metadata=provider.md)
    n = await fast.node(node.node_id)
    assert n.state == SUSPENDED
    await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=bearer_of(r.node_token)),
                        grpc.StatusCode.UNAUTHENTICATED)


def bearer_of(token: str):
    from idlegrid.common.auth import bearer

    return bearer(token)


async def test_a_lease_running_out_leaves_a_suspended_node_suspended(make_registry):
    h = await make_registry(RegistrySettings(heartbeat_interval_ms=100, lease_intervals=2, sweep_interval_ms=20,
                                             skip_verification=True, **LOOPBACK))
    provider = await h.provider()
    node = await h.register(provider, registration())
    async with KeepAlive(h, node, every_s=0.02):
        await h.wait_state(node.node_id, READY)
        await suspend(h, node=node)
    other = await h.register(provider, registration())  # its lease runs out beside the suspended one
    expired = await h.wait_state(other.node_id, OFFLINE)
    assert expired.state_reason == pb.STATE_REASON_LEASE_EXPIRED
    assert (await h.node(node.node_id)).state == SUSPENDED
    # Unsuspended without heartbeats, its lease is gone: it goes offline.
    await suspend(h, node=node, suspended=False, reason="cleared")
    n = await h.wait_state(node.node_id, OFFLINE)
    assert n.state_reason == pb.STATE_REASON_LEASE_EXPIRED


async def test_links_coming_and_going_leave_a_suspended_linked_node_suspended(fast):
    provider = await fast.provider()
    node = await fast.register(provider, registration(endpoint=""))
    link = os.urandom(16)

    def attach(link_id):
        return fast.admin.AttachLink(pb.AttachLinkRequest(node_id=node.node_id, relay_id="relay-a",
                                                          relay_addr="127.0.0.1:50055", link_id=link_id),
                                     metadata=((NODE_TOKEN_HEADER, node.token),))

    await attach(link)
    await fast.wait_state(node.node_id, READY)
    await suspend(fast, node=node)
    assert (await fast.admin.DetachLink(pb.DetachLinkRequest(node_id=node.node_id, link_id=link))).detached
    n = await fast.node(node.node_id)
    assert n.state == SUSPENDED and not n.HasField("link")
    await attach(os.urandom(16))
    n = await fast.node(node.node_id)
    assert n.state == SUSPENDED and n.HasField("link")
    # Unsuspended while linked: verified through its link, READY again.
    await suspend(fast, node=node, suspended=False, reason="cleared")
    assert (await fast.wait_state(node.node_id, READY)).HasField("link")


async def test_an_unsuspended_linked_node_without_a_link_waits_offline_for_one(fast):
    provider = await fast.provider()
    node = await fast.register(provider, registration(endpoint=""))
    await suspend(fast, node=node)
    await suspend(fast, node=node, suspended=False, reason="cleared")
    n = await fast.wait_state(node.node_id, OFFLINE)
    assert n.state_reason == pb.STATE_REASON_LINK_LOST


async def test_suspending_a_provider_suspends_its_nodes_and_those_it_registers_later(fast):
    provider, a = await ready_node(fast)
    _, b = await ready_node(fast, provider)
    bystander_provider, bystander = await ready_node(fast)
    r = await suspend(fast, provider=provider, reason="fraud")
    assert {n.node_id for n in r.nodes} == {a.node_id, b.node_id}
    for n in (a, b):
        got = await fast.node(n.node_id)
        assert got.state == SUSPENDED and "its provider is suspended" in got.state_detail and "fraud" in got.state_detail
    assert (await fast.node(bystander.node_id)).state == READY
    later = await fast.anon.RegisterNode(registration(), metadata=provider.md)
    assert later.state == SUSPENDED
    assert (await fast.node(later.node_id)).state == SUSPENDED
    # A node of a suspended provider is not unsuspended alone.
    await expect_status(suspend(fast, node=a, suspended=False), grpc.StatusCode.FAILED_PRECONDITION)
    r = await suspend(fast, provider=provider, suspended=False, reason="cleared")
    assert {n.node_id for n in r.nodes} == {a.node_id, b.node_id, later.node_id}
    for n in (a, b):
        await fast.wait_state(n.node_id, READY)
    fresh = await fast.register(provider, registration())
    await fast.wait_state(fresh.node_id, READY)


async def test_a_suspension_survives_a_registry_restart(make_registry, pg_admin_url):
    from tests.harness import new_database
    from tests.registry.conftest import DEFAULT

    settings = RegistrySettings(heartbeat_interval_ms=10_000, skip_verification=True, **LOOPBACK)
    db = await new_database(pg_admin_url)
    first = await make_registry(settings, db_url=db)
    provider, node = await ready_node(first)
    await suspend(first, node=node)
    await suspend(first, provider=provider, reason="fraud")
    await first.stop()
    second = await make_registry(settings, db_url=db)
    n = await second.node(node.node_id)
    assert n.state == SUSPENDED and "abuse report 17" in n.state_detail
    r = await second.anon.RegisterNode(registration(), metadata=provider.md)
    assert r.state == SUSPENDED  # the provider is still suspended
    assert DEFAULT.direct_endpoints


@pytest.mark.parametrize("request_", [
    pb.SetSuspendedRequest(suspended=True, actor=OPERATOR, reason="no target"),
    pb.SetSuspendedRequest(node_id=b"\x01" * 16, suspended=True, actor="", reason="no actor"),
    pb.SetSuspendedRequest(node_id=b"\x01" * 16, suspended=True, actor=OPERATOR, reason=""),
    pb.SetSuspendedRequest(node_id=b"\x01" * 15, suspended=True, actor=OPERATOR, reason="short id"),
])
async def test_a_suspension_without_target_actor_or_reason_is_refused(fast, request_):
    await expect_status(fast.admin.SetSuspended(request_), grpc.StatusCode.INVALID_ARGUMENT)


async def test_suspending_an_unknown_node_or_provider_is_not_found(fast):
    await expect_status(fast.admin.SetSuspended(pb.SetSuspendedRequest(
        node_id=b"\x01" * 16, suspended=True, actor=OPERATOR, reason="x")), grpc.StatusCode.NOT_FOUND)
    await expect_status(fast.admin.SetSuspended(pb.SetSuspendedRequest(
        provider_id=b"\x01" * 16, suspended=True, actor=OPERATOR, reason="x")), grpc.StatusCode.NOT_FOUND)
