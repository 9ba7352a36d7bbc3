"""Metering down, with a credit lease already open: a job still reserves on
the lease and runs, but gets no answer until its usage is durable; a job
whose deadline passes first gets none at all and is not billed (its record
is voided once metering is back); no new lease can open; and the scheduler
admits jobs only up to its usage-record bound, refusing the next one with
RESOURCE_EXHAUSTED before it reserves anything. Once metering is back the
waiting answer comes, and the books balance."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from idlegrid.bench.kit import free_port
from idlegrid.common.channel import open_channel
from idlegrid.metering import service as metering_service
from idlegrid.metering.v1 import metering_pb2 as mpb
from idlegrid.scheduler import service as scheduler_service
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import TOKEN, eventually, servers
from tests.harness.books import usage_record
from tests.harness.stack import start_stack
from tests.scheduler.support import echo, reason_of

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

LONG_WINDOW_S = 600.0  # the first job's lease stays open through the outage
PRICE = 10  # the demo echo's price per request (micro-credits)


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    await s.add_node("a", models=("echo",))
    yield s
    await s.stop()


async def _metering(stack, port: int):
    return await metering_service.start(
        stack.config, port=port, database_url=stack.db_url, ledger_addr=f"127.0.0.1:{stack.ledger_srv.port}",
        poll_s=0.1, watch_registry=False, settings=servers.metering_settings())


def _job(consumer: bytes, timeout_ms: int):
    req = echo(consumer)
    req.timeout_ms = timeout_ms
    return req


async def _refused(scheduler, req) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await scheduler.Infer(req)
    return e.value


async def test_with_metering_down_no_answer_comes_before_its_usage_is_durable(stack):
    port = free_port()
    metering = await _metering(stack, port)
    sched = await scheduler_service.start(
        stack.config, port=0, metering_addr=f"127.0.0.1:{port}",
        registry_addr=f"127.0.0.1:{stack.registry_srv.port}", records_in_flight_max=2,
        lease_window_s=LONG_WINDOW_S)
    channel = open_channel(f"127.0.0.1:{sched.port}", token=TOKEN)
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    jobs, leases = sched.parts["jobs"], sched.parts["leases"]
    waiting = None
    try:
        consumer = await stack.consumer(10**6)
        first = await scheduler.Infer(echo(consumer))  # opens the lease (room for more jobs)
        assert leases.unreserved(consumer) >= 3 * PRICE
        await metering.stop(1)
        metering = None

        # A job on the open lease runs, but its answer waits for its record.
        slow = _job(consumer, 120_000)
        waiting = asyncio.ensure_future(scheduler.Infer(slow))
        await eventually(lambda: jobs.records_in_flight == 1, what="the job's record to wait for metering")
        assert not waiting.done() and leases.reserved(consumer) == PRICE

        # No new lease can open: a partner without one is refused, nothing reserved.
        other = await stack.consumer(10**6)
        e = await _refused(scheduler, echo(other))
        assert e.code() == grpc.StatusCode.UNAVAILABLE and reason_of(e) == "leases_unavailable", e.details()

        # A job whose deadline passes before its record is durable gets no answer.
        lost = _job(consumer, 1_500)
        e = await _refused(scheduler, lost)
        assert e.code() == grpc.StatusCode.UNAVAILABLE and reason_of(e) == "usage_not_recorded", e.details()
        assert not waiting.done()

        # Both record slots are taken (the waiting job's, the lost job's void): the next job is
        # refused before it reserves anything.
        assert jobs.records_in_flight == 2
        e = await _refused(scheduler, echo(consumer))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(e) == "usage_backlog"
        assert leases.reserved(consumer) == 2 * PRICE  # the waiting job's, and the lost job's until its void

        metering = await _metering(stack, port)
        answered = await waiting
        rec = await usage_record(stack.metering, slow.job_id)  # durable before the answer came
        assert rec is not None and rec.cost_micros == answered.usage.cost_micros == PRICE
        await jobs.drain()
        assert jobs.records_in_flight == 0
        void = await usage_record(stack.metering, lost.job_id)
        assert void is not None and void.outcome == mpb.OUTCOME_FAILED and void.cost_picos == 0
        assert void.lease_id == rec.lease_id == (await usage_record(stack.metering, first.job_id)).lease_id

        last = await scheduler.Infer(echo(consumer))  # admitted again
        await sched.stop(5)  # closes the lease: its 4 jobs, 4 records
        sched = None
        await stack.settled()
        c, o = await stack.balances([consumer, other])
        paid = first.usage.cost_micros + answered.usage.cost_micros + last.usage.cost_micros
        assert (c.debits_pending, c.debits_posted) == (0, paid) and paid == 3 * PRICE  # the lost job: nothing
        assert (o.debits_pending, o.debits_posted) == (0, 0)
        await stack.check_books()
    finally:
        if waiting is not None and not waiting.done():
            waiting.cancel()
        await channel.close()
        if sched is not None:
            await sched.stop(1)
        if metering is not None:
            await metering.stop(1)
