"""Spot checks end to end, with real services and real demo nodes: a
scheduler told to check every job (an operator's drill: rate floor 1,
budget 1) and a node of a trusted provider that runs the checks. An honest
node is checked job after job and never suspended; a node serving another
model's output (``--cheat wrong-model``, honest for the registry's canary)
fails its checks and is SUSPENDED by the registry, with the verdict on its
jobs in metering; a node inflating its token counts earns exactly what an
honest node earns for the same jobs. The books verify."""

from __future__ import annotations

import os

import grpc
import pytest

from idlegrid.common.channel import open_channel
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.registry.v1 import registry_pb2 as rpb
from idlegrid.scheduler import service as scheduler_service
from idlegrid.scheduler.checks_sampling import SpotCheckSettings
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import TOKEN, eventually, servers
from tests.harness.stack import start_stack

pytestmark = pytest.mark.slow  # real services and demo Tritons

LLM = "smollm2-135m-instruct"
QUESTIONS = ("Tell me about the moon.", "Write two sentences about coffee.", "What is a glacier?",
             "Explain prime numbers to a child.", "Describe a bicycle.", "Why do cats purr?",
             "Write a haiku about rain.", "What is jazz?", "Tell me about honeybees.")
DRILL = SpotCheckSettings(budget_share=1.0, rate_min=1.0)


async def new_provider(stack, name: str, *, trusted: bool = False) -> str:
    """A provider of its own (ledger account and registry entry); its token."""
    account = os.urandom(16)
    await stack.ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[lpb.Account(
        id=account, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER,
        flags=lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)]))
    r = await stack.registry.CreateProvider(rpb.CreateProviderRequest(name=name, ledger_account_id=account))
    if trusted:
        await stack.registry.SetProviderTrusted(rpb.SetProviderTrustedRequest(
            provider_id=r.provider.provider_id, trusted=True, actor="test", reason="runs the spot checks"))
    return r.provider_token


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url, parts=("ledger", "registry", "metering", "relay"))
    try:
        srv = await scheduler_service.start(config, port=0, spot_checks=DRILL,
                                            **servers.options("scheduler", s.addrs, db_url))
        s.servers["scheduler"] = srv
        s.addrs["scheduler"] = f"{servers.dial_host(config)}:{srv.port}"
        ch = open_channel(s.addrs["scheduler"], token=TOKEN)
        s.channels.append(ch)
        s.stubs["scheduler"] = scheduler_pb2_grpc.SchedulerServiceStub(ch)
        await s.add_node("checker", provider_token=await new_provider(s, "trusted", trusted=True))
        yield s
    finally:
        await s.stop()


@pytest.fixture(scope="module")
def checks(stack):
    return stack.scheduler_srv.parts["spot_checks"]


def job(consumer: bytes, question: str, node: str, *, temperature: float, seed: int = 1) -> spb.InferRequest:
    return spb.InferRequest(
        job_id=os.urandom(16), consumer_account_id=consumer, model=LLM,
        text=spb.TextGeneration(messages=[spb.ChatMessage(role="user", content=question)], max_tokens=24,
                                temperature=temperature, seed=seed),
        constraints=spb.Constraints(labels={"node": node}))


async def get_node(stack, node) -> rpb.Node:
    return (await stack.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id))).node


async def checked(stack, checks, node, n: int) -> None:
    """Waits until ``n`` checks of ``node`` reached the registry."""
    async def done() -> bool:
        r = (await get_node(stack, node)).reputation
        return r.checks_passed + r.checks_failed >= n

    await eventually(done, what=f"{n} spot checks of {node.name} to be reported ({checks.snapshot()})")


async def test_an_honest_node_is_checked_job_after_job_and_never_suspended(stack, checks):
    honest = await stack.add_node("honest")
    consumer = await stack.consumer(10**10)
    jobs = []
    for i, q in enumerate(QUESTIONS):
        r = await stack.scheduler.Infer(job(consumer, q, "honest", temperature=(0.0, 0.7, 1.0)[i % 3], seed=i))
        assert r.routing.node_id == honest.node_id
        jobs.append(r.job_id)
    await checked(stack, checks, honest, len(jobs))
    n = await get_node(stack, honest)
    assert n.state == rpb.NODE_STATE_READY
    assert (n.reputation.checks_passed, n.reputation.checks_failed) == (len(jobs), 0), list(n.reputation.reasons)
    for job_id in jobs:
        rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=job_id))
        assert rec.check_result == mpb.CHECK_RESULT_PASSED, rec.check_detail
    assert checks.counters.failed == 0 and checks.counters.no_checker == 0
    await stack.settled()
    await stack.check_books()


async def test_a_node_serving_another_models_output_is_caught_and_suspended(stack, checks):
    # cheat_after=1: it answers the registry's one canary honestly, then cheats on every job.
    liar = await stack.add_node("liar", models=(LLM,), cheat="wrong-model", cheat_after=1,
                                provider_token=await new_provider(stack, "liar"))
    consumer = await stack.consumer(10**10)
    r = await stack.scheduler.Infer(job(consumer, QUESTIONS[0], "liar", temperature=0.7))
    assert r.routing.node_id == liar.node_id

    async def suspended() -> bool:
        return (await get_node(stack, liar)).state == rpb.NODE_STATE_SUSPENDED

    await eventually(suspended, what=f"the registry to suspend the liar ({checks.snapshot()})")
    n = await get_node(stack, liar)
    assert n.state_reason == rpb.STATE_REASON_CHECK_FAILED and r.job_id.hex() in n.state_detail
    assert n.reputation.checks_failed == 1

    async def recorded() -> mpb.UsageRecord | None:  # reported to the registry first, then to metering
        rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=r.job_id))
        return rec if rec.check_result != mpb.CHECK_RESULT_UNSPECIFIED else None

    rec = await eventually(recorded, what="metering to record the job's check result")
    assert rec.check_result == mpb.CHECK_RESULT_FAILED and "unlikely" in rec.check_detail
    await eventually(lambda: stack.table.nodes[liar.node_id].node.state == rpb.NODE_STATE_SUSPENDED,
                     what="the scheduler to see the liar suspended")
    with pytest.raises(grpc.aio.AioRpcError) as e:  # no job goes to a suspended node
        await stack.scheduler.Infer(job(consumer, QUESTIONS[1], "liar", temperature=0.7))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    await stack.settled()
    await stack.check_books()


async def test_a_node_inflating_its_token_counts_earns_what_an_honest_node_earns(stack, checks):
    honest = stack.nodes.get("honest") or await stack.add_node("honest")
    inflater = await stack.add_node("inflater", models=(LLM,), cheat="inflate-tokens")
    consumer = await stack.consumer(10**10)
    for q in QUESTIONS[:3]:
        a = await stack.scheduler.Infer(job(consumer, q, "honest", temperature=0.0))
        b = await stack.scheduler.Infer(job(consumer, q, "inflater", temperature=0.0))
        assert (a.routing.node_id, b.routing.node_id) == (honest.node_id, inflater.node_id)
        assert b.text == a.text and b.usage == a.usage  # same tokens billed, same cost
        await stack.settled()
        rec_a, rec_b = [await stack.metering.GetJob(mpb.GetJobRequest(job_id=x.job_id)) for x in (a, b)]
        assert rec_b.node_completion_tokens > rec_a.node_completion_tokens  # it did claim more
        assert rec_b.cost_micros == rec_a.cost_micros
    await checked(stack, checks, inflater, 3)
    n = await get_node(stack, inflater)
    assert n.state == rpb.NODE_STATE_READY and n.reputation.checks_failed == 0  # its answers are honest
    await stack.check_books()
