"""The node agent against a real registry and a real Triton: it reads the
models from Triton, registers, is verified, heartbeats its load, drains,
and registers again when the registry lost it."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from idlegrid.models.weights import gguf_path
from idlegrid.node.agent import NodeAgent, VerificationFailed
from idlegrid.registry.v1 import registry_pb2 as pb
from tests.harness import WAIT_S, eventually
from tests.node.support import ScriptedProbe, options, pricing, running
from tests.registry.conftest import LOOPBACK
from tests.registry.support import ECHO, LLM

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

READY, DRAINING, OFFLINE = pb.NODE_STATE_READY, pb.NODE_STATE_DRAINING, pb.NODE_STATE_OFFLINE


async def test_the_agent_offers_what_triton_serves_and_becomes_ready(reg, triton):
    p = await reg.provider()
    agent = NodeAgent(options(reg, p, triton, node_config=pricing(weights_file=gguf_path())))
    async with running(agent):
        assert await agent.wait_for(READY, timeout_s=WAIT_S) == READY
        n = await reg.node(agent.node_id)
    assert n.state == READY and n.endpoint == triton.grpc_url
    models = {m.offer.name: m for m in n.models}
    assert models[LLM].offer.kind == pb.MODEL_KIND_LLM and models[LLM].offer.max_batch_size == 0
    assert models[LLM].offer.context_length == 2048
    assert models[LLM].offer.price.per_million_output_tokens == 22
    digest = hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert models[LLM].offer.weights_digest == f"sha256:{digest}"
    assert models[ECHO].offer.kind == pb.MODEL_KIND_TENSOR and models[ECHO].offer.max_batch_size == 64
    assert all(m.verified and m.canary_latency_us > 0 for m in n.models)
    assert n.hardware.cpu_cores == len(os.sched_getaffinity(0)) and n.hardware.memory_bytes > 0
    assert n.region == "test" and n.labels["suite"] == "node"


async def test_heartbeats_carry_the_load_from_triton(reg, triton):
    p = await reg.provider()
    agent = NodeAgent(options(reg, p, triton, metrics_url=triton.metrics_url))
    async with running(agent):
        await agent.wait_for(READY, timeout_s=WAIT_S)
        sent = agent.heartbeats_sent

        async def loaded() -> bool:
            return agent.heartbeats_sent >= sent + 2 and (await reg.node(agent.node_id)).HasField("load")

        await eventually(loaded)
        n = await reg.node(agent.node_id)
    assert n.load.node_id == agent.node_id and n.load.reported_at.seconds > 0
    assert not n.load.HasField("gpu_utilization_pct")  # no GPU here: unknown, not 0


async def test_drain_waits_for_in_flight_work_then_deregisters(reg, triton):
    p = await reg.provider()
    probe = ScriptedProbe()
    agent = NodeAgent(options(reg, p, triton, drain_quiet_s=0.2, drain_poll_s=0.02, drain_timeout_s=WAIT_S),
                      probe=probe)
    async with running(agent):
        await agent.wait_for(READY, timeout_s=WAIT_S)
        probe.in_flight = 2
        drain = asyncio.create_task(agent.drain())
        await reg.wait_state(agent.node_id, DRAINING)
        polled = probe.samples
        await eventually(lambda: probe.samples >= polled + 5)  # it keeps looking while work is in flight
        assert not drain.done()
        assert (await reg.node(agent.node_id)).state == DRAINING
        probe.in_flight = 0
        await asyncio.wait_for(drain, WAIT_S)
    n = await reg.node(agent.node_id)
    assert (n.state, n.state_reason) == (OFFLINE, pb.STATE_REASON_DEREGISTERED)
    assert agent.state == OFFLINE


async def test_drain_with_the_real_triton_probe_ends_offline(reg, triton):
    p = await reg.provider()
    agent = NodeAgent(options(reg, p, triton, drain_quiet_s=0.1, drain_poll_s=0.02))
    async with running(agent):
        await agent.wait_for(READY, timeout_s=WAIT_S)
        await agent.drain()
    assert (await reg.node(agent.node_id)).state_reason == pb.STATE_REASON_DEREGISTERED


async def test_a_failed_verification_is_reported_to_the_provider(reg, triton):
    p = await reg.provider()
    sold = await reg.catalog_entry(ECHO)
    sold.name = "ghost"
    await reg.sell(sold)  # the catalog sells it; the node's Triton does not serve it
    ghost = pb.ModelOffer(name="ghost", kind=pb.MODEL_KIND_TENSOR, price=pb.Price(per_request=1))
    agent = NodeAgent(options(reg, p, triton), offers=[ghost])
    async with running(agent):
        with pytest.raises(VerificationFailed, match="ghost"):
            await agent.wait_for(READY, timeout_s=WAIT_S)
    assert agent.reason == pb.STATE_REASON_VERIFICATION_FAILED


async def test_the_agent_registers_again_after_its_lease_ran_out(make_registry, triton):
    from idlegrid.registry.settings import RegistrySettings

    reg = await make_registry(RegistrySettings(**LOOPBACK, heartbeat_interval_ms=100, lease_intervals=2,
                                               sweep_interval_ms=20))
    p = await reg.provider()
    probe = ScriptedProbe()
    agent = NodeAgent(options(reg, p, triton), probe=probe)
    async with running(agent):
        await agent.wait_for(READY, timeout_s=WAIT_S)
        first_id = agent.node_id
        probe.gate.clear()  # the agent hangs: no heartbeats
        expired = await reg.wait_state(first_id, OFFLINE)
        assert expired.state_reason == pb.STATE_REASON_LEASE_EXPIRED
        probe.gate.set()
        await eventually(lambda: agent.registrations >= 2)
        await reg.wait_state(first_id, READY)
    assert agent.node_id == first_id


async def test_the_agent_joins_as_a_new_node_when_the_registry_lost_it(make_registry, triton):
    first = await make_registry()
    p = await first.provider()
    agent = NodeAgent(options(first, p, triton))
    async with running(agent):
        await agent.wait_for(READY, timeout_s=WAIT_S)
        old_id = agent.node_id
        port = first.running.port
        await first.running.stop(grace_s=0.1)
        # The registry comes back at the same address on a database that lost
        # its nodes; its providers were restored.
        empty = await make_registry()
        await empty.running.stop(grace_s=0.1)
        await _copy_providers(first.db_url, empty.db_url)
        second = await make_registry(db_url=empty.db_url, port=port)
        await eventually(lambda: agent.registrations >= 2)
        assert agent.node_id != old_id
        await agent.wait_for(READY, timeout_s=WAIT_S)
        n = await second.node(agent.node_id)
    assert n.state == READY and n.provider_id == p.provider.provider_id


async def _copy_providers(src: str, dst: str) -> None:
    import asyncpg

    a, b = await asyncpg.connect(src), await asyncpg.connect(dst)
    try:
        rows = await a.fetch("SELECT id, name, ledger_account_id, token_sha256, created_at FROM registry.providers")
        await b.executemany("INSERT INTO registry.providers VALUES ($1, $2, $3, $4, $5)", [tuple(r) for r in rows])
    finally:
        await a.close()
        await b.close()
