"""Operator controls: trusting a provider (its nodes say so to watchers),
rotating and revoking its token, banning an endpoint host, and the
append-only trail of who did what and why. Verification is skipped (the
registry's documented test setting)."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from idlegrid.common.auth import bearer
from idlegrid.common.errors import REASON_KEY
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness.registry import OPERATOR, Provider
from tests.registry.support import expect_status, next_delta, read_snapshot, registration

READY, OFFLINE = pb.NODE_STATE_READY, pb.NODE_STATE_OFFLINE


async def ready(h, provider, **kw):
    node = await h.register(provider, registration(**kw))
    await h.wait_state(node.node_id, READY)
    return node


async def actions(h, after_seq: int = 0, limit: int = 0) -> pb.ListOperatorActionsResponse:
    return await h.admin.ListOperatorActions(pb.ListOperatorActionsRequest(after_seq=after_seq, limit=limit))


async def test_a_trusted_providers_nodes_say_so_to_watchers(fast):
    p = await fast.provider()
    node = await ready(fast, p)
    assert not (await fast.node(node.node_id)).trusted
    watch = fast.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    r = await fast.admin.SetProviderTrusted(pb.SetProviderTrustedRequest(
        provider_id=p.provider.provider_id, trusted=True, actor=OPERATOR, reason="our own datacenter"))
    assert r.provider.trusted
    d = await next_delta(watch)
    assert d.node.node_id == node.node_id and d.node.trusted and d.node.state == READY
    watch.cancel()
    later = await ready(fast, p)
    assert (await fast.node(later.node_id)).trusted
    await fast.admin.SetProviderTrusted(pb.SetProviderTrustedRequest(
        provider_id=p.provider.provider_id, trusted=False, actor=OPERATOR, reason="moved out"))
    assert not any(n.trusted for n in (await fast.admin.ListNodes(pb.ListNodesRequest(
        provider_id=p.provider.provider_id))).nodes)


async def test_a_rotated_token_replaces_the_old_one_at_once(fast):
    p = await fast.provider()
    node = await ready(fast, p)
    r = await fast.admin.RotateProviderToken(pb.RotateProviderTokenRequest(
        provider_id=p.provider.provider_id, actor=OPERATOR, reason="leaked in a log"))
    assert r.provider_token and r.provider_token != p.token
    await expect_status(fast.anon.RegisterNode(registration(), metadata=p.md), grpc.StatusCode.UNAUTHENTICATED)
    rotated = Provider(p.provider, r.provider_token)
    await ready(fast, rotated)
    # The nodes' own tokens still work.
    await fast.anon.SetPaused(pb.SetPausedRequest(node_id=node.node_id, paused=True), metadata=node.md)


async def test_a_revoked_token_stops_the_provider_and_its_nodes(fast):
    p = await fast.provider()
    a, b = await ready(fast, p), await ready(fast, p)
    bystander = await ready(fast, await fast.provider())
    r = await fast.admin.RevokeProviderToken(pb.RevokeProviderTokenRequest(
        provider_id=p.provider.provider_id, actor=OPERATOR, reason="stolen"))
    assert set(r.node_ids) == {a.node_id, b.node_id}
    for node in (a, b):
        n = await fast.node(node.node_id)
        assert (n.state, n.state_reason) == (OFFLINE, pb.STATE_REASON_DEREGISTERED) and "stolen" in n.state_detail
        await expect_status(fast.anon.Drain(pb.DrainRequest(node_id=node.node_id), metadata=node.md),
                            grpc.StatusCode.UNAUTHENTICATED)
    await expect_status(fast.anon.RegisterNode(registration(), metadata=p.md), grpc.StatusCode.UNAUTHENTICATED)
    assert (await fast.node(bystander.node_id)).state == READY
    # Rotating issues a new one.
    r = await fast.admin.RotateProviderToken(pb.RotateProviderTokenRequest(
        provider_id=p.provider.provider_id, actor=OPERATOR, reason="a new one"))
    again = await fast.register(Provider(p.provider, r.provider_token), registration(node_id=a.node_id))
    await fast.wait_state(again.node_id, READY)


async def test_a_banned_host_refuses_registration_and_takes_its_nodes_offline(fast):
    p = await fast.provider()
    node = await ready(fast, p, endpoint="127.0.0.1:20999")
    r = await fast.admin.SetEndpointBanned(pb.SetEndpointBannedRequest(
        host="127.0.0.1", banned=True, actor=OPERATOR, reason="serves malware"))
    assert list(r.node_ids) == [node.node_id]
    n = await fast.node(node.node_id)
    assert n.state == OFFLINE and "127.0.0.1" in n.state_detail and "serves malware" in n.state_detail
    e = await expect_status(fast.anon.RegisterNode(registration(endpoint="127.0.0.1:21000"), metadata=p.md),
                            grpc.StatusCode.PERMISSION_DENIED)
    assert dict(e.trailing_metadata())[REASON_KEY] == "endpoint_banned"
    # The name a node registers with is banned too, before it is resolved.
    await fast.admin.SetEndpointBanned(pb.SetEndpointBannedRequest(
        host="Evil.Example.COM.", banned=True, actor=OPERATOR, reason="same owner"))
    await expect_status(fast.anon.RegisterNode(registration(endpoint="evil.example.com:8001"), metadata=p.md),
                        grpc.StatusCode.PERMISSION_DENIED)
    linked = await fast.register(p, registration(endpoint=""))  # a linked node has no endpoint to ban
    assert (await fast.node(linked.node_id)).state == pb.NODE_STATE_JOINING  # it waits for its link
    r = await fast.admin.SetEndpointBanned(pb.SetEndpointBannedRequest(
        host="127.0.0.1", banned=False, actor=OPERATOR, reason="cleaned up"))
    assert not r.node_ids
    await ready(fast, p, endpoint="127.0.0.1:21001")


@pytest.mark.parametrize("host", ["", "a b", "x" * 256, "-bad-.com", "1.2.3.999"])
async def test_a_host_that_is_no_host_is_refused(fast, host):
    await expect_status(fast.admin.SetEndpointBanned(pb.SetEndpointBannedRequest(
        host=host, banned=True, actor=OPERATOR, reason="x")), grpc.StatusCode.INVALID_ARGUMENT)


async def test_every_operator_action_is_recorded_with_who_what_and_why_append_only(fast):
    p = await fast.provider()
    node = await ready(fast, p)
    pid = str(uuid.UUID(bytes=p.provider.provider_id))
    before = (await actions(fast)).actions
    a, pid_b = fast.admin, p.provider.provider_id
    steps = [  # one after the other (a gRPC call starts when it is made)
        lambda: a.SetSuspended(pb.SetSuspendedRequest(node_id=node.node_id, suspended=True, actor="alice",
                                                      reason="r1")),
        lambda: a.SetSuspended(pb.SetSuspendedRequest(node_id=node.node_id, suspended=False, actor="alice",
                                                      reason="r2")),
        lambda: a.SetProviderTrusted(pb.SetProviderTrustedRequest(provider_id=pid_b, trusted=True, actor="bob",
                                                                  reason="r3")),
        lambda: a.RotateProviderToken(pb.RotateProviderTokenRequest(provider_id=pid_b, actor="bob", reason="r4")),
        lambda: a.SetEndpointBanned(pb.SetEndpointBannedRequest(host="203.0.113.9", banned=True, actor="carol",
                                                                reason="r5")),
        lambda: a.RevokeProviderToken(pb.RevokeProviderTokenRequest(provider_id=pid_b, actor="carol", reason="r6")),
    ]
    for step in steps:
        await step()
    got = (await actions(fast, after_seq=before[-1].seq if before else 0)).actions
    assert [(a.actor, a.action, a.reason) for a in got] == [
        ("alice", "suspend_node", "r1"), ("alice", "unsuspend_node", "r2"), ("bob", "trust_provider", "r3"),
        ("bob", "rotate_provider_token", "r4"), ("carol", "ban_endpoint", "r5"),
        ("carol", "revoke_provider_token", "r6")]
    assert got[0].target == str(uuid.UUID(bytes=node.node_id)) and got[2].target == pid
    assert got[4].target == "203.0.113.9" and all(a.at.seconds > 0 for a in got)
    assert [a.seq for a in got] == sorted(a.seq for a in got)
    # Paged by seq.
    first = await actions(fast, limit=2)
    assert len(first.actions) == 2 and first.next_seq == first.actions[-1].seq
    rest = await actions(fast, after_seq=first.next_seq, limit=1000)
    assert rest.next_seq == 0 and len(first.actions) + len(rest.actions) == len(before) + len(steps)
    await expect_status(fast.admin.ListOperatorActions(pb.ListOperatorActionsRequest(limit=1001)),
                        grpc.StatusCode.INVALID_ARGUMENT)
    # Nobody rewrites history.
    conn = await asyncpg.connect(fast.db_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE registry.operator_actions SET reason = 'nothing happened'")
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM registry.operator_actions")
    finally:
        await conn.close()


async def test_operator_methods_take_no_provider_or_node_token(fast):
    p = await fast.provider()
    await expect_status(fast.anon.RotateProviderToken(pb.RotateProviderTokenRequest(
        provider_id=p.provider.provider_id, actor="me", reason="mine"), metadata=p.md), grpc.StatusCode.UNAUTHENTICATED)
    await expect_status(fast.anon.ReportCheck(pb.ReportCheckRequest(), metadata=bearer("x")),
                        grpc.StatusCode.UNAUTHENTICATED)
    await expect_status(fast.admin.SetProviderTrusted(pb.SetProviderTrustedRequest(
        provider_id=b"\x02" * 16, trusted=True, actor="a", reason="b")), grpc.StatusCode.NOT_FOUND)
    await expect_status(fast.admin.RotateProviderToken(pb.RotateProviderTokenRequest(
        provider_id=b"\x02" * 16, actor="a", reason="b")), grpc.StatusCode.NOT_FOUND)
