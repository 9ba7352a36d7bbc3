"""Money checks for scenarios on the whole path: consumers with credits,
waiting until every job is settled, and the books' invariants read from the
database (the architecture's "Σ consumer charges = Σ provider earnings +
Σ platform fees; every usage record settled exactly once", with held
earnings: Σ charges = Σ earnings (posted, released and held) + Σ fees +
Σ refunds of voided earnings, and metering's earning states agree with the
ledger to the micro-credit)."""

from __future__ import annotations

import os
import uuid

import asyncpg
import grpc

from idlegrid.ledger.audit import verify
from idlegrid.ledger.ids import well_known_account
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as mpb
from tests.harness.polling import eventually

DMNEC = lpb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
SETTLE_WAIT_S = 60.0  # a bound on the wait, never a threshold
PENDING, SETTLED, RELEASED = (mpb.SETTLEMENT_STATE_PENDING, mpb.SETTLEMENT_STATE_SETTLED,
                              mpb.SETTLEMENT_STATE_RELEASED)
HELD, VOIDED = mpb.EARNING_STATE_HELD, mpb.EARNING_STATE_VOIDED


async def consumer(ledger, credits: int) -> bytes:
    """A new consumer account (no overdraft) topped up with ``credits``."""
    acct = os.urandom(16)
    r = await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=acct, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC)]))
    assert list(r.results) == [0]
    if credits:
        t = await ledger.TopUp(lpb.TopUpRequest(account_id=acct, amount=credits, idempotency_key=acct.hex()))
        assert t.status == lpb.OPERATION_STATUS_OK
    return acct


async def usage_record(metering, job_id: bytes) -> mpb.UsageRecord | None:
    """The job's usage record, or None while metering has none."""
    try:
        return await metering.GetJob(mpb.GetJobRequest(job_id=job_id))
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def settled(stack, *, timeout_s: float = SETTLE_WAIT_S) -> None:
    """Waits until the scheduler recorded every job's usage and metering has
    no settlement pending."""
    if stack.scheduler_srv is not None:  # a stack of ledger and metering: usage is recorded by the test
        await stack.scheduler_srv.parts["jobs"].drain(timeout_s)
    conn = await asyncpg.connect(stack.db_url)
    try:
        async def none_pending() -> bool:
            return not await conn.fetchval("SELECT count(*) FROM metering.usage WHERE settlement = $1", PENDING)

        await eventually(none_pending, what="every settlement", timeout_s=timeout_s)
    finally:
        await conn.close()


async def check_books(stack) -> None:
    """Σ consumer charges = Σ provider earnings (posted and held) + Σ platform
    fees + Σ refunds; metering's earnings by state equal the ledger's (posted
    and released = the providers' posted credits, held = their pending
    credits, voided = the refunds); Σ metered = Σ settled; ledger verify passes."""
    await settled(stack)
    conn = await asyncpg.connect(stack.db_url)
    try:
        rep = await verify(conn)
        assert rep.ok, rep.problems
        async with conn.transaction():
            # The earnings worker ends an earning only on a row it holds locked
            # across its ledger call: with every earning row locked here, the
            # ledger and metering are read at one instant of their agreement.
            rows = await conn.fetch(
                "SELECT earning, provider_micros FROM metering.usage WHERE earning <> 0 FOR SHARE")
            by_state: dict[int, int] = {}
            for r in rows:
                by_state[r["earning"]] = by_state.get(r["earning"], 0) + r["provider_micros"]
            await _check_money(conn, by_state)
    finally:
        await conn.close()


async def _check_money(conn, by_state: dict[int, int]) -> None:
    consumer_kind, provider_kind = lpb.ACCOUNT_KIND_CONSUMER, lpb.ACCOUNT_KIND_PROVIDER
    charges = await conn.fetchval(
        "SELECT coalesce(sum(debits_posted), 0) FROM ledger.accounts WHERE kind = $1", consumer_kind)
    earned, held, payouts = await conn.fetchrow(
        "SELECT coalesce(sum(credits_posted), 0), coalesce(sum(credits_pending), 0),"
        " coalesce(sum(debits_posted), 0) FROM ledger.accounts WHERE kind = $1", provider_kind)
    fees = await conn.fetchval("SELECT credits_posted FROM ledger.accounts WHERE id = $1",
                               uuid.UUID(bytes=well_known_account("platform:revenue", 1)))
    refunds = await conn.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger.transfers WHERE code = $1",
                                  lpb.TRANSFER_CODE_REFUND)
    assert payouts == 0
    assert charges == earned + held + fees + refunds, (charges, earned, held, fees, refunds)
    assert by_state.get(HELD, 0) == held, (by_state, held)
    assert by_state.get(VOIDED, 0) == refunds, (by_state, refunds)
    assert sum(v for k, v in by_state.items() if k not in (HELD, VOIDED)) == earned, (by_state, earned)
    metered = await conn.fetchval(
        "SELECT coalesce(sum(cost_micros), 0) FROM metering.usage WHERE settlement = $1", SETTLED)
    unsettled = await conn.fetchval(
        "SELECT count(*) FROM metering.usage WHERE settlement NOT IN ($1, $2)", SETTLED, RELEASED)
    assert unsettled == 0
    assert metered == charges, (metered, charges)
