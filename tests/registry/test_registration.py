"""Registration and verification against a real Triton: a node becomes
routable only when the registry itself has checked every advertised model."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest

from idlegrid.registry.v1 import registry_pb2 as pb
from tests.registry.support import (
    ECHO,
    LLM,
    echo_offer,
    expect_status,
    free_port,
    llm_offer,
    next_delta,
    read_snapshot,
    registration,
)


@pytest.mark.slow  # a real demo Triton
async def test_a_node_is_verified_then_ready_with_canary_latencies_and_prices(reg, triton):
    p = await reg.provider()
    watch = reg.admin.WatchNodes(pb.WatchNodesRequest(omit_load=True))
    await read_snapshot(watch)
    node = await reg.register(p, registration(triton.grpc_url, models=[llm_offer(input=7, output=9), echo_offer(3)]))
    seen = [await next_delta(watch) for _ in range(3)]
    assert [d.node.state for d in seen] == [pb.NODE_STATE_JOINING, pb.NODE_STATE_VERIFYING, pb.NODE_STATE_READY]
    ready = seen[-1].node
    assert ready.node_id == node.node_id
    assert ready.state_reason == pb.STATE_REASON_VERIFIED
    assert ready.provider_id == p.provider.provider_id
    assert ready.provider_account_id == p.provider.ledger_account_id
    assert ready.endpoint == triton.grpc_url
    by_name = {m.offer.name: m for m in ready.models}
    assert by_name[LLM].verified and by_name[LLM].canary_latency_us > 0
    assert by_name[ECHO].verified and by_name[ECHO].canary_latency_us > 0
    assert by_name[LLM].offer.price.per_million_input_tokens == 7
    assert by_name[LLM].offer.price.per_million_output_tokens == 9
    assert by_name[ECHO].offer.price.per_request == 3
    assert ready.hardware.gpus[0].count == 2 and ready.labels["tier"] == "test"
    watch.cancel()


@pytest.mark.slow  # a real demo Triton
async def test_the_database_holds_the_node_its_models_and_every_state_change(reg, triton):
    p = await reg.provider()
    node = await reg.register(p, registration(triton.grpc_url, models=[echo_offer()]))
    await reg.wait_state(node.node_id, pb.NODE_STATE_READY)
    await reg.registry._writer.flush()
    conn = await asyncpg.connect(reg.db_url)
    try:
        row = await conn.fetchrow("SELECT * FROM registry.nodes WHERE id = $1", uuid.UUID(bytes=node.node_id))
        events = await conn.fetch("SELECT state, reason FROM registry.node_events WHERE node_id = $1 ORDER BY seq",
                                  row["id"])
        model = await conn.fetchrow("SELECT * FROM registry.node_models WHERE node_id = $1", row["id"])
    finally:
        await conn.close()
    assert row["state"] == "ready" and row["token_sha256"] is not None and len(row["token_sha256"]) == 32
    assert node.token.encode() not in row["token_sha256"]  # only the digest is kept
    assert [(e["state"], e["reason"]) for e in events] == [
        ("joining", "registered"), ("verifying", "verification_started"), ("ready", "verified")]
    assert model["name"] == ECHO and model["verified"] and model["canary_latency_us"] > 0


@pytest.mark.slow  # a real demo Triton
async def test_a_model_advertised_but_not_served_fails_verification(reg, triton):
    p = await reg.provider()
    sold = await reg.catalog_entry(ECHO)
    sold.name = "not-served"
    await reg.sell(sold)  # in the catalog, but the node's Triton does not serve it
    ghost = pb.ModelOffer(name="not-served", kind=pb.MODEL_KIND_TENSOR, price=pb.Price(per_request=1))
    node = await reg.register(p, registration(triton.grpc_url, models=[echo_offer(), ghost]))
    n = await reg.wait_state(node.node_id, pb.NODE_STATE_OFFLINE, pb.NODE_STATE_READY)
    assert n.state == pb.NODE_STATE_OFFLINE
    assert n.state_reason == pb.STATE_REASON_VERIFICATION_FAILED
    assert "not-served" in n.state_detail and "not ready" in n.state_detail
    assert not any(m.verified for m in n.models)


async def test_a_triton_that_is_down_fails_verification(reg):
    p = await reg.provider()
    node = await reg.register(p, registration(f"127.0.0.1:{free_port()}", models=[echo_offer()]))
    n = await reg.wait_state(node.node_id, pb.NODE_STATE_OFFLINE, pb.NODE_STATE_READY)
    assert n.state_reason == pb.STATE_REASON_VERIFICATION_FAILED
    assert "not reachable" in n.state_detail


@pytest.mark.slow  # a real demo Triton
async def test_a_tensor_model_advertised_as_a_language_model_fails_verification(reg, triton):
    p = await reg.provider()
    llm = await reg.catalog_entry(LLM)
    llm.name, llm.context_length, llm.weights_digest = ECHO, 4096, ""
    await reg.sell(llm)  # a catalog that (wrongly) sells echo as a language model
    fake_llm = pb.ModelOffer(name=ECHO, kind=pb.MODEL_KIND_LLM, max_batch_size=64, context_length=4096,
                             price=pb.Price(per_million_input_tokens=1))
    node = await reg.register(p, registration(triton.grpc_url, models=[fake_llm]))
    n = await reg.wait_state(node.node_id, pb.NODE_STATE_OFFLINE, pb.NODE_STATE_READY)
    assert n.state_reason == pb.STATE_REASON_VERIFICATION_FAILED
    assert "text_input" in n.state_detail


@pytest.mark.slow  # a real demo Triton
async def test_a_wrong_max_batch_size_fails_verification(reg, triton):
    p = await reg.provider()
    wrong = echo_offer()
    wrong.max_batch_size = 8
    node = await reg.register(p, registration(triton.grpc_url, models=[wrong]))
    n = await reg.wait_state(node.node_id, pb.NODE_STATE_OFFLINE, pb.NODE_STATE_READY)
    assert "max_batch_size 8" in n.state_detail


@pytest.mark.slow  # a real demo Triton
async def test_a_failing_model_fails_its_canary(reg, failing_triton):
    p = await reg.provider()
    node = await reg.register(p, registration(failing_triton.grpc_url, models=[echo_offer()]))
    n = await reg.wait_state(node.node_id, pb.NODE_STATE_OFFLINE, pb.NODE_STATE_READY)
    assert n.state_reason == pb.STATE_REASON_VERIFICATION_FAILED
    assert "canary" in n.state_detail


@pytest.mark.slow  # a real demo Triton
async def test_registering_again_replaces_the_token_and_verifies_again(reg, triton):
    p = await reg.provider()
    first = await reg.register(p, registration(triton.grpc_url, models=[echo_offer()]))
    await reg.wait_state(first.node_id, pb.NODE_STATE_READY)
    again = await reg.register(p, registration(triton.grpc_url, models=[echo_offer(99)], node_id=first.node_id))
    assert again.node_id == first.node_id and again.token != first.token
    n = await reg.wait_state(first.node_id, pb.NODE_STATE_READY)
    assert n.models[0].offer.price.per_request == 99
    await expect_status(reg.anon.Drain(pb.DrainRequest(node_id=first.node_id), metadata=first.md),
                        grpc.StatusCode.UNAUTHENTICATED)
    r = await reg.anon.Drain(pb.DrainRequest(node_id=first.node_id), metadata=again.md)
    assert r.node.state == pb.NODE_STATE_DRAINING


async def test_re_registering_an_unknown_node_id_is_not_found(reg):
    p = await reg.provider()
    await expect_status(reg.anon.RegisterNode(registration(node_id=b"\x01" * 16), metadata=p.md),
                        grpc.StatusCode.NOT_FOUND)
