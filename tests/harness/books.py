"""Money checks for scenarios on the whole path: consumers with credits,
waiting until every job is settled, and the books' invariants read from the
database (the architecture's "Σ consumer charges = Σ provider earnings +
Σ platform fees; every usage record settled exactly once", with held
earnings: Σ charges = Σ earnings (posted, released and held) + Σ fees +
Σ refunds of voided earnings, and metering's earning states agree with the
ledger to the micro-credit).

With credit leases (issue 12) a job's record is cleared with its lease, not
settled on its own: a lease is charged ceil(Σ its records' exact costs), and
its node's earnings are per clearing aggregate. ``leases_cleared`` waits until
every lease is cleared; the books count both kinds of record."""

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
READY_TIMEOUT_S = 60.0  # a bound on a ledger that does not come back, never a threshold
PENDING, SETTLED, RELEASED = (mpb.SETTLEMENT_STATE_PENDING, mpb.SETTLEMENT_STATE_SETTLED,
                              mpb.SETTLEMENT_STATE_RELEASED)
HELD, VOIDED = mpb.EARNING_STATE_HELD, mpb.EARNING_STATE_VOIDED


async def consumer(ledger, credits: int) -> bytes:
    """A new consumer account (no overdraft) topped up with ``credits``. The
    calls wait for the ledger to be reachable (a test may just have restarted
    it, and the channel may be waiting out its reconnect backoff)."""
    acct = os.urandom(16)
    ready = {"wait_for_ready": True, "timeout": READY_TIMEOUT_S}
    r = await ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=acct, ledger=1, kind=lpb.ACCOUNT_KIND_CONSUMER, flags=DMNEC)]), **ready)
    assert list(r.results) == [0]
    if credits:
        t = await ledger.TopUp(lpb.TopUpRequest(account_id=acct, amount=credits, idempotency_key=acct.hex()), **ready)
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


LEASES_UNCLEARED = (1, 2, 3)  # metering.leases.state: OPENING, OPEN, CLOSED


async def leases_cleared(db_url: str, *, timeout_s: float = SETTLE_WAIT_S) -> None:
    """Waits until metering cleared every credit lease (each closes at the end
    of its window, or when its scheduler stops) and every record on one is in
    a clearing window."""
    conn = await asyncpg.connect(db_url)
    try:
        async def all_cleared() -> bool:
            if not await conn.fetchval("SELECT to_regclass('metering.leases') IS NOT NULL"):
                return True
            return not await conn.fetchval(
                "SELECT count(*) FROM metering.leases WHERE state = ANY($1::smallint[])", list(LEASES_UNCLEARED)) \
                and not await conn.fetchval(
                    "SELECT count(*) FROM metering.usage_lines WHERE lease_id IS NOT NULL AND window_id IS NULL") \
                and not await conn.fetchval(  # stored (leases and records marked) but not yet on the ledger
                    "SELECT count(*) FROM metering.clearing_windows WHERE state = 1")

        await eventually(all_cleared, what="every lease cleared", timeout_s=timeout_s)
    finally:
        await conn.close()


async def settled(stack, *, timeout_s: float = SETTLE_WAIT_S) -> None:
    """Waits until the scheduler recorded every job's usage, metering has no
    settlement pending and every lease is cleared."""
    if stack.scheduler_srv is not None:  # a stack of ledger and metering: usage is recorded by the test
        await stack.scheduler_srv.parts["jobs"].drain(timeout_s)
    conn = await asyncpg.connect(stack.db_url)
    try:
        leased = await _has_leases(conn)

        async def none_pending() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM metering.usage_lines WHERE settlement = $1" + (" AND lease_id IS NULL" if leased
                                                                              else ""), PENDING)

        await eventually(none_pending, what="every settlement", timeout_s=timeout_s)
    finally:
        await conn.close()
    await leases_cleared(stack.db_url, timeout_s=timeout_s)


async def _has_leases(conn) -> bool:
    return await conn.fetchval("SELECT to_regclass('metering.leases') IS NOT NULL")


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
            leased = await _has_leases(conn)
            rows = await conn.fetch(
                "SELECT earning, provider_micros FROM metering.usage WHERE earning <> 0"
                + (" AND lease_id IS NULL" if leased else "") + " FOR SHARE")
            if leased and await conn.fetchval("SELECT to_regclass('metering.clearing_aggregates') IS NOT NULL"):
                rows += await conn.fetch("SELECT earning, amount_micros AS provider_micros"
                                         " FROM metering.clearing_aggregates FOR SHARE")
            by_state: dict[int, int] = {}
            for r in rows:
                by_state[r["earning"]] = by_state.get(r["earning"], 0) + r["provider_micros"]
            await _check_money(conn, by_state, leased=leased)
    finally:
        await conn.close()


async def _check_money(conn, by_state: dict[int, int], *, leased: bool) -> None:
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
    per_job = " AND lease_id IS NULL" if leased else ""
    metered = await conn.fetchval(
        "SELECT coalesce(sum(cost_micros), 0) FROM metering.usage_lines WHERE settlement = $1" + per_job, SETTLED)
    unsettled = await conn.fetchval(
        "SELECT count(*) FROM metering.usage_lines WHERE settlement NOT IN ($1, $2)" + per_job, SETTLED, RELEASED)
    assert unsettled == 0
    if leased:  # a lease is charged once: ceil(Σ its records' exact costs / 10^6)
        metered += await conn.fetchval(
            "SELECT coalesce(sum(ceil(p / 1000000)), 0)::bigint FROM (SELECT sum(cost_picos) AS p"
            " FROM metering.usage_lines WHERE lease_id IS NOT NULL GROUP BY lease_id) l")
        assert not await conn.fetchval(
            "SELECT count(*) FROM metering.usage_lines WHERE lease_id IS NOT NULL AND window_id IS NULL")
    assert metered == charges, (metered, charges)
