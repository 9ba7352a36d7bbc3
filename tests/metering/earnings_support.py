"""Shared by the held-earnings tests of metering: a ledger and metering stack
with a release window, jobs reserved and recorded as the scheduler does, and
reads of the records and balances."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from idlegrid.common.money import split_fee
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.harness import eventually
from tests.harness.servers import metering_settings
from tests.harness.stack import start_stack

FEE_BPS = 1000  # the test config's platform fee (IDLEGRID_PLATFORM_FEE_BPS default)
DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS


async def stack_with_window(config, db_url, hold_s: int, parts=("ledger", "metering")):
    return await start_stack(config, db_url, parts=parts,
                             metering_settings=metering_settings(earnings_hold_s=hold_s))


@dataclass
class Parties:
    consumer: bytes
    provider: bytes


async def parties(ledger, credits: int = 10**7) -> Parties:
    consumer, provider = os.urandom(16), os.urandom(16)
    await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=consumer, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC),
        lpb.Account(id=provider, ledger=1, kind=lpb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    await ledger.TopUp(lpb.TopUpRequest(account_id=consumer, amount=credits, idempotency_key=consumer.hex()))
    return Parties(consumer, provider)


def share(cost: int) -> int:
    return split_fee(cost, FEE_BPS)[0]


async def job(stack, p: Parties, cost: int, node_id: str) -> bytes:
    """A job reserved, and its usage recorded (as the scheduler does); returns its id
    once it is settled."""
    job_id = os.urandom(16)
    r = await stack.ledger.Reserve(lpb.ReserveRequest(job_id=job_id, consumer_account_id=p.consumer,
                                                      amount=2 * cost + 1, timeout_s=600))
    assert r.status == lpb.OPERATION_STATUS_OK
    now = Timestamp()
    now.GetCurrentTime()
    await stack.metering.RecordUsage(pb.RecordUsageRequest(record=pb.UsageRecord(
        job_id=job_id, consumer_account_id=p.consumer, provider_account_id=p.provider, provider_id="p",
        node_id=node_id, model="m", prompt_tokens=10, completion_tokens=5, node_prompt_tokens=10,
        node_completion_tokens=5, duration_ms=3, price_input_per_mtok=1, price_output_per_mtok=1,
        cost_micros=cost, outcome=pb.OUTCOME_COMPLETED, started_at=now, finished_at=now)))
    async def settled() -> bool:
        return (await record(stack, job_id)).settlement != pb.SETTLEMENT_STATE_PENDING

    await eventually(settled, what="the job's settlement")
    return job_id


async def record(stack, job_id: bytes) -> pb.UsageRecord:
    return await stack.metering.GetJob(pb.GetJobRequest(job_id=job_id))


async def in_state(stack, job_id: bytes, *, settlement: int | None = None, earning: int | None = None,
                   what: str = "") -> pb.UsageRecord:
    async def reached() -> pb.UsageRecord | None:
        r = await record(stack, job_id)
        ok = (settlement is None or r.settlement == settlement) and (earning is None or r.earning == earning)
        return r if ok else None

    return await eventually(reached, what=what or f"job {job_id.hex()} in settlement {settlement} / "
                                                  f"earning {earning}")


async def account(stack, account_id: bytes) -> lpb.Account:
    return (await stack.balances([account_id]))[0]


async def end_window_now(stack, job_id: bytes) -> None:
    """The job's release window ends now, as if it had passed (the window of
    this stack is long, so that other jobs stay held meanwhile). A job
    cleared on a lease is held with its clearing aggregate: the aggregate's
    window ends (and so every job of that node and clearing window)."""
    conn = await asyncpg.connect(stack.db_url)
    try:
        job = uuid.UUID(bytes=job_id)
        await conn.execute("UPDATE metering.usage SET earning_release_at = clock_timestamp() "
                           "WHERE job_id = $1 AND earning = 1 AND lease_id IS NULL", job)
        await conn.execute("UPDATE metering.clearing_aggregates SET release_at = clock_timestamp() WHERE earning = 1"
                           " AND aggregate_id = (SELECT aggregate_id FROM metering.usage_cleared WHERE job_id = $1)", job)
    finally:
        await conn.close()
