"""The usage-record backlog is bounded: while metering cannot take records,
the scheduler admits jobs only up to its bound, refuses the next one with
RESOURCE_EXHAUSTED before it reserves any credit, and admits jobs again once
the backlog is written. No job is lost or charged twice on the way."""

from __future__ import annotations

import grpc
import pytest

from idlegrid.bench.kit import free_port
from idlegrid.common.channel import open_channel
from idlegrid.metering import service as metering_service
from idlegrid.scheduler import service as scheduler_service
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import TOKEN
from tests.harness.stack import start_stack
from tests.scheduler.support import echo, reason_of

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton


@pytest.fixture(scope="module")
async def stack(config, db_url):
    s = await start_stack(config, db_url)
    await s.add_node("a", models=("echo",))
    yield s
    await s.stop()


async def test_at_the_backlog_bound_a_new_job_is_refused_before_it_reserves(stack):
    metering_port = free_port()  # nothing listens yet: no usage record can be written
    ledger_addr = f"127.0.0.1:{stack.ledger_srv.port}"
    sched = await scheduler_service.start(
        stack.config, port=0, ledger_addr=ledger_addr, metering_addr=f"127.0.0.1:{metering_port}",
        registry_addr=f"127.0.0.1:{stack.registry_srv.port}", records_in_flight_max=1)
    channel = open_channel(f"127.0.0.1:{sched.port}", token=TOKEN)
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    jobs = sched.parts["jobs"]
    metering = None
    try:
        consumer = await stack.consumer(10**6)
        first = await scheduler.Infer(echo(consumer))
        assert jobs.records_in_flight == 1  # its record waits for metering
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await scheduler.Infer(echo(consumer))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(e.value) == "usage_backlog"
        c = (await stack.balances([consumer]))[0]
        assert (c.debits_pending, c.debits_posted) == (first.usage.cost_micros, 0)  # only the first job's hold

        metering = await metering_service.start(stack.config, port=metering_port, database_url=stack.db_url,
                                                ledger_addr=ledger_addr, poll_s=0.1)
        await jobs.drain()
        assert jobs.records_in_flight == 0
        second = await scheduler.Infer(echo(consumer))
        await jobs.drain()
        await stack.settled()
        c = (await stack.balances([consumer]))[0]
        assert (c.debits_pending, c.debits_posted) == (0, first.usage.cost_micros + second.usage.cost_micros)
        await stack.check_books()
    finally:
        await channel.close()
        await sched.stop(1)
        if metering is not None:
            await metering.stop(1)
