"""Metering killed between recording usage and settling it: after a restart
every job is settled exactly once."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from idlegrid.bench.kit import free_port, spawn, wait_healthy
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from tests.harness import TOKEN
from tests.harness.stack import start_stack, stop_stack
from tests.scheduler.support import echo

pytestmark = pytest.mark.slow  # a scenario: real services and a demo Triton


def _metering(db_url: str, port: int, ledger_addr: str, log_path):
    return spawn(["metering", "serve"], env={
        "IDLEGRID_DATABASE_URL": db_url, "IDLEGRID_METERING_PORT": str(port), "IDLEGRID_LEDGER_ADDR": ledger_addr,
        "IDLEGRID_SERVICE_TOKEN": TOKEN, "IDLEGRID_LOG_FORMAT": "json"}, log_path=log_path)


@pytest.fixture(scope="module")
async def stack(config, db_url, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("metering") / "metering.log"
    dead_ledger = f"127.0.0.1:{free_port()}"  # nothing listens: settlement cannot happen yet
    proc = _metering(db_url, port, dead_ledger, log)
    await wait_healthy(f"127.0.0.1:{port}", proc=proc)
    s = await start_stack(config, db_url, metering_addr=f"127.0.0.1:{port}")
    s.extra = {"port": port, "proc": proc, "log": log}
    await s.add_node("a", models=("echo",))
    yield s
    s.extra["proc"].kill()
    s.extra["proc"].wait()
    await stop_stack(s)


async def test_usage_recorded_before_a_metering_crash_is_settled_once_after_restart(stack):
    consumer = await stack.consumer(10**6)
    jobs = [await stack.scheduler.Infer(echo(consumer)) for _ in range(5)]
    await stack.scheduler_srv.parts["jobs"].drain()  # usage is recorded off the response path
    conn = await asyncpg.connect(stack.db_url)
    try:
        pending = await conn.fetchval("SELECT count(*) FROM metering.usage WHERE settlement = 1")
        assert pending == 5
        c = (await stack.balances([consumer]))[0]
        assert c.debits_posted == 0 and c.debits_pending > 0  # reserved, not yet settled
        proc = stack.extra["proc"]
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        ledger_addr = f"127.0.0.1:{stack.ledger_srv.port}"
        proc = _metering(stack.db_url, stack.extra["port"], ledger_addr, stack.extra["log"])
        stack.extra["proc"] = proc
        await wait_healthy(f"127.0.0.1:{stack.extra['port']}", proc=proc)
        await stack.settled()
        cost = sum(j.usage.cost_micros for j in jobs)
        c = (await stack.balances([consumer]))[0]
        assert (c.debits_posted, c.debits_pending) == (cost, 0)
        earnings = await conn.fetch(
            "SELECT user_data, count(*) AS n FROM ledger.transfers WHERE code = $1 GROUP BY user_data", lpb.TRANSFER_CODE_EARNING)
        mine = {r["user_data"].bytes: r["n"] for r in earnings}
        assert all(mine.get(j.job_id) == 1 for j in jobs)  # exactly once each
        await stack.check_books()
    finally:
        await conn.close()
