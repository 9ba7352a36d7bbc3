"""Failures on the money path: failing nodes, a node killed mid-stream, a slow
node, and after each the books still balance."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from idlegrid.metering.v1 import metering_pb2 as mpb
from tests.harness.stack import start_stack, stop_stack
from tests.scheduler.support import chat, echo

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    yield s
    await stop_stack(s)


async def test_a_node_that_only_errors_is_never_charged_for_and_leaves_rotation(stack):
    bad = await stack.add_node("bad", models=("echo",), fail_after=1)  # passes the canary, then fails
    consumer = await stack.consumer(10**6)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stack.scheduler.Infer(echo(consumer, node="bad"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    info = stack.table.nodes[bad.node_id]
    assert info.failed == 3 and info.quarantined_until > 0
    with pytest.raises(grpc.aio.AioRpcError) as e:  # out of rotation now: not even tried
        await stack.scheduler.Infer(echo(consumer, node="bad"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "no ready node" in e.value.details()
    assert info.failed == 3
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (0, 0)
    await stack.check_books()


async def test_a_job_that_fails_on_one_node_is_retried_on_another_and_charged_once(stack):
    good = await stack.add_node("good", models=("echo",))
    flaky = await stack.add_node("flaky", models=("echo",), fail_after=1)
    table = stack.table
    # Make the flaky node the first choice (the good one looks busy): the job
    # must fail there, then go to the good node.
    table.nodes[good.node_id].in_flight += 1000
    try:
        consumer = await stack.consumer(10**6)
        req = echo(consumer)
        req.constraints.labels.clear()
        r = await stack.scheduler.Infer(req)
    finally:
        table.nodes[good.node_id].in_flight -= 1000
    assert r.routing.node_id == good.node_id and r.routing.attempt == 2
    assert table.nodes[flaky.node_id].failed == 1
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == r.usage.cost_micros and c.debits_pending == 0
    await stack.check_books()


async def test_a_node_killed_mid_stream_bills_only_the_delivered_tokens(stack):
    node = await stack.add_node("doomed", models=("smollm2-135m-instruct",), llm_delay_ms=150, own_triton=True)
    consumer = await stack.consumer(10**9)
    req = chat(consumer, "Tell me a long story.", max_tokens=100, node="doomed")
    texts, final = [], None
    async for c in stack.scheduler.InferStream(req):
        kind = c.WhichOneof("chunk")
        if kind == "text":
            texts.append(c.text)
            if len(texts) == 3:
                await asyncio.to_thread(node.triton.kill)
        elif kind == "final":
            final = c.final
    assert final is not None and 3 <= len(texts) < 100
    assert 0 < final.usage.completion_tokens < 100
    await stack.settled()
    rec = await stack.metering.GetJob(mpb.GetJobRequest(job_id=req.job_id))
    assert rec.outcome == mpb.OUTCOME_PARTIAL and rec.cost_micros == final.usage.cost_micros
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == final.usage.cost_micros and c.debits_pending == 0
    await stack.check_books()


async def test_a_slow_node_past_the_deadline_charges_only_what_was_streamed(stack):
    # Two slow nodes: the demo model finishes a unary generation even after
    # its caller left, so the streamed job gets a node of its own.
    await stack.add_node("slow", models=("smollm2-135m-instruct",), llm_delay_ms=400, own_triton=True)
    await stack.add_node("slow-stream", models=("smollm2-135m-instruct",), llm_delay_ms=400, own_triton=True)
    consumer = await stack.consumer(10**9)
    unary = chat(consumer, "Tell me a long story.", max_tokens=100, node="slow", timeout_ms=1500)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.scheduler.Infer(unary)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Long enough for the first tokens to arrive on a busy machine, through
    # the relay; far shorter than 100 tokens at 400 ms each.
    streamed = chat(consumer, "Tell me a long story.", max_tokens=100, node="slow-stream", timeout_ms=8000)
    texts = []
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for c in stack.scheduler.InferStream(streamed):
            if c.WhichOneof("chunk") == "text":
                texts.append(c.text)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and texts
    await stack.settled()
    r1 = await stack.metering.GetJob(mpb.GetJobRequest(job_id=unary.job_id))
    r2 = await stack.metering.GetJob(mpb.GetJobRequest(job_id=streamed.job_id))
    assert r1.outcome == mpb.OUTCOME_FAILED and r1.cost_micros == 0  # nothing reached the caller
    assert r2.outcome == mpb.OUTCOME_PARTIAL and 0 < r2.completion_tokens < 100
    c = (await stack.balances([consumer]))[0]
    assert c.debits_posted == r2.cost_micros and c.debits_pending == 0
    await stack.check_books()
