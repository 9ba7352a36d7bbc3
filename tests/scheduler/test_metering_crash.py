"""Metering killed between recording usage and clearing it: the jobs were
answered once their records were durable, their lease is still open; after
a restart the lease is closed and cleared exactly once, for the exact sum of
its records, and the books verify."""

from __future__ import annotations

import asyncio
import signal
import uuid

import asyncpg
import pytest

from idlegrid.bench.kit import free_port, spawn, wait_healthy
from idlegrid.common.channel import open_channel
from idlegrid.common.clearing import micros_ceil
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.scheduler import service as scheduler_service
from idlegrid.scheduler.v1 import scheduler_pb2_grpc
from tests.harness import TOKEN
from tests.harness.stack import start_stack, stop_stack
from tests.scheduler.support import echo

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton

LONG_WINDOW_S = 600.0  # the replica's lease stays open until the replica stops


def _metering(db_url: str, port: int, ledger_addr: str, log_path):
    return spawn(["metering", "serve"], env={
        "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_METERING_PORT": str(port), "IDLEGRID_LEDGER_ADDR": ledger_addr,
        "IDLEGRID_SERVICE_TOKEN": TOKEN, "IDLEGRID_LOG_FORMAT": "json"}, log_path=log_path)


@pytest.fixture(scope="module")
async def stack(config, db_url, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("metering") / "metering.log"
    s = await start_stack(config, db_url, metering_addr=f"127.0.0.1:{port}")
    proc = _metering(db_url, port, f"127.0.0.1:{s.ledger_srv.port}", log)
    s.extra = {"port": port, "proc": proc, "log": log}
    try:
        await wait_healthy(f"127.0.0.1:{port}", proc=proc)
        await s.add_node("a", models=("echo",))
        yield s
    finally:
        s.extra["proc"].kill()
        s.extra["proc"].wait()
        await stop_stack(s)


async def test_usage_recorded_before_a_metering_crash_is_cleared_once_after_restart(stack):
    sched = await scheduler_service.start(
        stack.config, port=0, metering_addr=f"127.0.0.1:{stack.extra['port']}",
        registry_addr=f"127.0.0.1:{stack.registry_srv.port}", lease_window_s=LONG_WINDOW_S)
    channel = open_channel(f"127.0.0.1:{sched.port}", token=TOKEN)
    conn = await asyncpg.connect(stack.db_url)
    stopped = False
    try:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        consumer = await stack.consumer(10**6)
        jobs = [await scheduler.Infer(echo(consumer)) for _ in range(5)]
        # Every answered job's record is durable already (no drain), on one lease not yet cleared.
        rows = await conn.fetch("SELECT job_id, lease_id, cost_picos, window_id FROM metering.usage_lines"
                                " WHERE consumer_account_id = $1", uuid.UUID(bytes=consumer))
        assert {r["job_id"].bytes for r in rows} == {j.job_id for j in jobs}
        [lease_id] = {r["lease_id"] for r in rows}
        assert all(r["window_id"] is None for r in rows)
        c = (await stack.balances([consumer]))[0]
        assert c.debits_posted == 0 and c.debits_pending > 0  # the lease's hold, not yet cleared

        proc = stack.extra["proc"]
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        proc = _metering(stack.db_url, stack.extra["port"], f"127.0.0.1:{stack.ledger_srv.port}",
                         stack.extra["log"])
        stack.extra["proc"] = proc
        await wait_healthy(f"127.0.0.1:{stack.extra['port']}", proc=proc)

        await sched.stop(5)  # drains, then closes the lease (CloseLease with its 5 jobs)
        stopped = True
        await stack.settled()
        cost = micros_ceil(sum(r["cost_picos"] for r in rows))
        assert cost == sum(j.usage.cost_micros for j in jobs)  # whole micro-credits each, here
        c = (await stack.balances([consumer]))[0]
        assert (c.debits_posted, c.debits_pending) == (cost, 0)
        # Exactly once: the lease cleared in one window, its hold posted once for its records' total.
        lease = await conn.fetchrow("SELECT state, jobs, amount FROM metering.leases WHERE lease_id = $1",
                                    lease_id)
        assert (lease["state"], lease["jobs"]) == (4, 5)  # CLEARED, with the 5 jobs it was closed with
        assert await conn.fetchval("SELECT count(*) FROM metering.clearing_leases WHERE lease_id = $1",
                                   lease_id) == 1
        assert await conn.fetchval("SELECT count(DISTINCT window_id) FROM metering.usage_lines WHERE lease_id = $1"
                                   " AND window_id IS NOT NULL", lease_id) == 1
        posts = await conn.fetch("SELECT amount FROM ledger.transfers WHERE pending_id = $1 AND code = $2",
                                 lease_id, lpb.TRANSFER_CODE_LEASE)
        assert [p["amount"] for p in posts] == [cost]
        await stack.check_books()
    finally:
        await conn.close()
        await channel.close()
        if not stopped:
            await sched.stop(1)
