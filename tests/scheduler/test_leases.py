"""Credit leases on the whole path (real services, a demo Triton): 40
concurrent jobs on credits for 4 overspend nothing; two scheduler replicas
leasing one partner's credits neither overspend nor refuse a job the
partner can afford; a job's usage is durable in metering before its answer
(and before InferStream's Final)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from idlegrid.common.channel import open_channel
from idlegrid.scheduler import service as scheduler_service
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import TOKEN
from tests.harness.books import usage_record
from tests.harness.stack import start_stack
from tests.scheduler.support import echo, reason_of

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

ECHO_PRICE = 10  # the demo node's price per echo request (micro-credits)


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    await s.add_node("a", models=("echo",))
    yield s
    await s.stop()


async def _outcome(scheduler, req) -> str:
    try:
        await scheduler.Infer(req)
        return "answered"
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(e) == "insufficient_funds", e
        return "402"


async def test_forty_concurrent_jobs_on_credits_for_four_spend_exactly_four(stack):
    consumer = await stack.consumer(4 * ECHO_PRICE)
    outcomes = await asyncio.gather(*(_outcome(stack.scheduler, echo(consumer)) for _ in range(40)))
    assert outcomes.count("answered") == 4 and outcomes.count("402") == 36
    await stack.settled()
    c = (await stack.balances([consumer]))[0]
    assert (c.debits_posted, c.debits_pending) == (4 * ECHO_PRICE, 0)
    await stack.check_books()


async def test_two_replicas_leasing_one_partner_neither_overspend_nor_refuse_what_it_can_afford(stack):
    other = await scheduler_service.start(
        stack.config, port=0, metering_addr=f"127.0.0.1:{stack.metering_srv.port}",
        registry_addr=f"127.0.0.1:{stack.registry_srv.port}")
    channel = open_channel(f"127.0.0.1:{other.port}", token=TOKEN)
    try:
        second = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        consumer = await stack.consumer(6 * ECHO_PRICE)
        replicas = [stack.scheduler, second]
        # One at a time, alternating: each job is affordable when it starts, so none may be refused,
        # although the other replica's lease may hold the credits when it asks.
        for i in range(6):
            assert await _outcome(replicas[i % 2], echo(consumer)) == "answered"
        # The seventh is not affordable, on either replica.
        assert await _outcome(second, echo(consumer)) == "402"
        assert await _outcome(stack.scheduler, echo(consumer)) == "402"
        # And concurrently on both: never more than the balance.
        more = await stack.consumer(5 * ECHO_PRICE)
        outcomes = await asyncio.gather(*(_outcome(replicas[i % 2], echo(more)) for i in range(20)))
        assert outcomes.count("answered") <= 5
        await other.stop(1)
        await stack.settled()
        c, m = await stack.balances([consumer, more])
        assert (c.debits_posted, c.debits_pending) == (6 * ECHO_PRICE, 0)
        assert (m.debits_posted, m.debits_pending) == (outcomes.count("answered") * ECHO_PRICE, 0)
        await stack.check_books()
    finally:
        await channel.close()
        await other.stop(1)


async def test_a_jobs_usage_is_durable_before_its_answer_and_before_the_streams_final(stack):
    consumer = await stack.consumer(10**6)
    req = echo(consumer)
    r = await stack.scheduler.Infer(req)
    rec = await usage_record(stack.metering, req.job_id)  # no drain: it is there already
    assert rec is not None and rec.cost_micros == r.usage.cost_micros and len(rec.lease_id) == 16
    assert rec.cost_picos == ECHO_PRICE * 10**6
    req = echo(consumer)
    async for chunk in stack.scheduler.InferStream(req):
        if chunk.HasField("final"):
            rec = await usage_record(stack.metering, req.job_id)
            assert rec is not None and rec.cost_micros == chunk.final.usage.cost_micros
    await stack.check_books()
