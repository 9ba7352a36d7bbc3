"""Batched clearing on a real ledger and metering (Postgres): one rounding per
aggregate (fees never lost to per-job flooring), exactly once across a crash
between storing a window and the ledger call, held aggregates released after
the release window, a suspended node's aggregates voided with exact refunds;
and `ledger verify` passes on all of it."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from idlegrid.common.clearing import micros_ceil, provider_micros
from idlegrid.ledger.audit import verify
from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering import clearing
from idlegrid.metering.clearing import ClearingWorker
from idlegrid.metering.clearing_rules import distribute, refunds
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.harness import eventually
from tests.harness.servers import metering_settings
from tests.harness.stack import start_stack
from tests.metering.earnings_support import FEE_BPS, account, parties
from tests.metering.test_clearing_support import cleared, open_lease, record, run_lease

HOLD_S = 3600
HALF_MICRO = 500_000  # 0.5 µcr in pico-credits


@pytest.fixture(scope="module")
async def stack(config, db_url):
    assert config.platform_fee_bps == FEE_BPS
    s = await start_stack(config, db_url, parts=("ledger", "metering"),
                          metering_settings=metering_settings(earnings_hold_s=HOLD_S))
    yield s
    await s.stop()


async def _verify_ok(stack) -> None:
    conn = await asyncpg.connect(stack.db_url)
    try:
        rep = await verify(conn)
    finally:
        await conn.close()
    assert rep.ok, rep.problems


def test_distribution_sums_exactly_and_is_deterministic():
    parts = distribute(7, [10, 25, 35, 5], 10)  # floors 1, 2, 3, 0 = 6; one left: the first of the 0.5s
    assert parts == [1, 3, 3, 0] and sum(parts) == 7
    r = refunds({b"b" * 16: 3 * HALF_MICRO, b"a" * 16: HALF_MICRO}, FEE_BPS, provider_micros(4 * HALF_MICRO, FEE_BPS))
    assert sum(x for _, x in r) == provider_micros(4 * HALF_MICRO, FEE_BPS) == 1


async def test_a_thousand_half_micro_jobs_charge_once_and_keep_the_fee(stack):
    p = await parties(stack.ledger)
    lease = await open_lease(stack.metering, p.consumer, 10_000)
    other = await open_lease(stack.metering, p.consumer, 10_000)
    recs = [record(lease, p.consumer, p.provider, "n1", HALF_MICRO) for _ in range(1000)]
    odd = [record(other, p.consumer, p.provider, "n2", c) for c in (1, 999_999, 1_500_001)]
    c0 = await account(stack, p.consumer)
    await run_lease(stack.metering, lease, recs)
    await run_lease(stack.metering, other, odd)
    await cleared(stack.db_url, [lease, other])
    # Σ charged = ⌈Σ exact⌉ per lease; per-job ceilings would have charged 1,000 + 4.
    exact_one, exact_two = 1000 * HALF_MICRO, 1 + 999_999 + 1_500_001
    charged = micros_ceil(exact_one) + micros_ceil(exact_two)
    assert (micros_ceil(exact_one), micros_ceil(exact_two)) == (500, 3)
    c1, pr = await account(stack, p.consumer), await account(stack, p.provider)
    assert c1.debits_posted - c0.debits_posted == charged
    assert c1.debits_pending == 0  # both leases ended: nothing held any more
    earned = provider_micros(exact_one, FEE_BPS) + provider_micros(exact_two, FEE_BPS)
    assert earned == 450 + 2
    assert pr.credits_pending == earned  # held for the release window
    conn = await asyncpg.connect(stack.db_url)
    try:
        fee = await conn.fetchval(
            """SELECT sum(w.fee_micros) FROM metering.clearing_windows w
                WHERE w.window_id IN (SELECT window_id FROM metering.clearing_leases
                                       WHERE lease_id = ANY($1::uuid[]))""",
            [uuid.UUID(bytes=lease), uuid.UUID(bytes=other)])
        assert fee == charged - earned  # the platform keeps every fraction the providers' floors leave
        shares = await conn.fetchval("SELECT sum(provider_micros) FROM metering.usage_lines WHERE lease_id = $1",
                                     uuid.UUID(bytes=lease))
        assert shares == 450  # the per-job views sum exactly to the aggregate
    finally:
        await conn.close()
    j = await stack.metering.GetJob(pb.GetJobRequest(job_id=recs[0].job_id))
    assert (j.settlement, j.earning, len(j.aggregate_id), len(j.window_id)) == (
        pb.SETTLEMENT_STATE_SETTLED, pb.EARNING_STATE_HELD, 16, 16)
    s = await stack.metering.GetEarnings(pb.GetEarningsRequest(provider_account_id=p.provider))
    assert (s.total.held_micros, s.total.held_jobs) == (earned, 1003)
    await _verify_ok(stack)


async def test_a_crash_between_storing_a_window_and_the_ledger_clears_it_once(stack):
    p = await parties(stack.ledger)
    lease = await open_lease(stack.metering, p.consumer, 10_000)
    worker = ClearingWorker(None, stack.ledger, hold_s=HOLD_S)  # its steps, on our connection
    conn = await asyncpg.connect(stack.db_url)
    try:
        # Hold the clearing lock: the service's own worker waits (another replica).
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", clearing.LOCK_KEY)
        await run_lease(stack.metering, lease, [record(lease, p.consumer, p.provider, "n3", 3_000_000)])
        plan = None

        async def stored():
            nonlocal plan
            plan = await worker.store_next(conn)
            return plan

        await eventually(stored, what="the closed lease ready to clear")
        # "Crash" here: stored, never sent. The ledger still holds the lease.
        found = await stack.ledger.LookupTransfers(lpb.LookupTransfersRequest(ids=[plan.window_id]))
        assert not found.transfers
        assert await worker.store_next(conn) is None  # the lease is taken: never planned twice
        assert await worker.send(conn, plan.window_id)  # the retry after the restart
        res = await stack.ledger.ClearWindow((await clearing.window_request(conn, plan.window_id))[0])
        assert res.status == lpb.OPERATION_STATUS_ALREADY_APPLIED  # a second send changes nothing
        assert await worker.send(conn, plan.window_id)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", clearing.LOCK_KEY)
        await conn.close()
    c = await account(stack, p.consumer)
    assert (c.debits_posted, c.debits_pending) == (3, 0)
    await _verify_ok(stack)


async def test_held_aggregates_are_released_after_the_window(stack):
    p = await parties(stack.ledger)
    lease = await open_lease(stack.metering, p.consumer, 10_000)
    recs = [record(lease, p.consumer, p.provider, "n4", 2_000_000) for _ in range(3)]
    await run_lease(stack.metering, lease, recs)
    await cleared(stack.db_url, [lease])
    assert (await account(stack, p.provider)).credits_pending == provider_micros(6_000_000, FEE_BPS)
    conn = await asyncpg.connect(stack.db_url)
    try:
        await conn.execute("UPDATE metering.clearing_aggregates SET release_at = clock_timestamp() "
                           "WHERE node_id = 'n4' AND earning = 1")
    finally:
        await conn.close()

    async def released():
        j = await stack.metering.GetJob(pb.GetJobRequest(job_id=recs[0].job_id))
        return j.earning == pb.EARNING_STATE_RELEASED

    await eventually(released, what="the aggregate's release")
    pr = await account(stack, p.provider)
    assert (pr.credits_pending, pr.credits_posted) == (0, provider_micros(6_000_000, FEE_BPS))
    await _verify_ok(stack)


async def test_a_suspended_nodes_aggregates_are_voided_with_exact_refunds(stack):
    a, b = await parties(stack.ledger), await parties(stack.ledger)
    la, lb = await open_lease(stack.metering, a.consumer, 10_000), await open_lease(stack.metering, b.consumer, 10_000)
    # Both partners' jobs on one node of a.provider, 2 × 0.5 µcr each: the aggregate is
    # floor(1.8) = 1 µcr; each partner's exact share 0.9 floors to 0, so the remainder decides.
    await run_lease(stack.metering, la, [record(la, a.consumer, a.provider, "bad", HALF_MICRO) for _ in range(2)])
    await run_lease(stack.metering, lb, [record(lb, b.consumer, a.provider, "bad", HALF_MICRO) for _ in range(2)])
    await cleared(stack.db_url, [la, lb])
    ca0, cb0 = await account(stack, a.consumer), await account(stack, b.consumer)
    agg = provider_micros(4 * HALF_MICRO, FEE_BPS)
    assert (await account(stack, a.provider)).credits_pending == agg
    r = await stack.metering.VoidNodeEarnings(pb.VoidNodeEarningsRequest(node_id="bad", reason="cheating"))
    # Voided by this call, or by the earnings worker's pass that saw the mark first (it skips locked rows).
    assert (r.jobs_voided, r.refunded_micros, r.jobs_pending) in ((4, agg, 0), (0, 0, 0))

    async def voided():
        return (await account(stack, a.provider)).credits_pending == 0

    await eventually(voided, what="the aggregate's void")
    ca1, cb1 = await account(stack, a.consumer), await account(stack, b.consumer)
    back = (ca1.credits_posted - ca0.credits_posted, cb1.credits_posted - cb0.credits_posted)
    assert sum(back) == agg and back == tuple(
        dict(refunds({a.consumer: 2 * HALF_MICRO, b.consumer: 2 * HALF_MICRO}, FEE_BPS, agg)).get(c, 0)
        for c in (a.consumer, b.consumer))
    assert (await account(stack, a.provider)).credits_pending == 0
    s = await stack.metering.GetEarnings(pb.GetEarningsRequest(provider_account_id=a.provider))
    assert s.total.voided_micros == agg
    await _verify_ok(stack)


def test_clearing_settings_from_the_environment():
    from idlegrid.common.errors import ConfigError
    from idlegrid.metering.clearing import ClearingSettings

    assert ClearingSettings.from_env({}) == ClearingSettings(window_ms=1_000, lease_slack_s=30, opening_s=60)
    got = ClearingSettings.from_env({"IDLEGRID_CLEARING_WINDOW_MS": "200", "IDLEGRID_CLEARING_LEASE_SLACK_S": "3",
                                     "IDLEGRID_CLEARING_OPENING_S": "15"})
    assert (got.window_ms, got.lease_slack_s, got.opening_s) == (200, 3, 15)
    for name, value in (("IDLEGRID_CLEARING_OPENING_S", "14"), ("IDLEGRID_CLEARING_LEASE_SLACK_S", "0")):
        with pytest.raises(ConfigError):  # an opening lease is never settled under its ledger call
            ClearingSettings.from_env({name: value})
