"""Earnings are held for the release window, then released by metering's
earnings worker: a real ledger and metering on Postgres with a window of one
second; the provider's share is pending on the ledger (not payable) until
then, the platform fee posted at once, and the books agree at every step."""

from __future__ import annotations

import grpc
import pytest

from idlegrid.ledger.v1 import ledger_pb2 as lpb
from idlegrid.metering.v1 import metering_pb2 as pb
from tests.metering.earnings_support import (
    FEE_BPS,
    account,
    in_state,
    job,
    parties,
    share,
    stack_with_window,
)

HOLD_S = 1


@pytest.fixture(scope="module")
async def stack(config, db_url):
    assert config.platform_fee_bps == FEE_BPS
    s = await stack_with_window(config, db_url, HOLD_S)
    yield s
    await s.stop()


async def test_a_share_is_held_for_the_window_then_released(stack):
    p = await parties(stack.ledger)
    platform = (await stack.ledger.ResolveAccount(lpb.ResolveAccountRequest(name="platform:revenue"))).account
    job_id = await job(stack, p, 1_234, node_id="n1")
    r = await in_state(stack, job_id, settlement=pb.SETTLEMENT_STATE_SETTLED)
    assert r.earnings_hold_s == HOLD_S and r.provider_micros == share(1_234)
    assert r.fee_micros + r.provider_micros == 1_234
    if r.earning == pb.EARNING_STATE_HELD:  # (on a slow machine the window may be over already)
        assert r.earning_release_at.ToDatetime() > r.settled_at.ToDatetime()
    consumer = await account(stack, p.consumer)
    assert (consumer.debits_posted, consumer.debits_pending) == (1_234, 0)  # the partner paid at once
    after = await stack.ledger.ResolveAccount(lpb.ResolveAccountRequest(name="platform:revenue"))
    assert after.account.credits_posted - platform.credits_posted == r.fee_micros  # the fee at once

    done = await in_state(stack, job_id, earning=pb.EARNING_STATE_RELEASED, what="the release")
    assert done.earning_resolved_at.ToDatetime() >= done.earning_release_at.ToDatetime()
    assert done.earning_note == ""
    prov = await account(stack, p.provider)
    assert (prov.credits_pending, prov.credits_posted) == (0, share(1_234))
    await stack.check_books()


async def test_held_earnings_are_pending_on_the_ledger_and_in_the_summary(stack):
    """Seen before the window ends: the window is one second, so this reads
    the ledger and the summary in the same instant as the record."""
    p = await parties(stack.ledger)
    jobs = [await job(stack, p, c, node_id=n) for c, n in ((1_000, "n1"), (2_000, "n2"), (3_000, "n2"))]
    for j in jobs:
        await in_state(stack, j, earning=pb.EARNING_STATE_RELEASED)
    s = await stack.metering.GetEarnings(pb.GetEarningsRequest(provider_account_id=p.provider))
    total = share(1_000) + share(2_000) + share(3_000)
    assert (s.total.released_micros, s.total.released_jobs, s.total.held_micros) == (total, 3, 0)
    assert s.total.available_micros == total and not s.total.HasField("next_release_at")
    by_node = {n.node_id: n.totals for n in s.by_node}
    assert by_node["n1"].released_micros == share(1_000)
    assert by_node["n2"].released_micros == share(2_000) + share(3_000)
    prov = await account(stack, p.provider)
    assert prov.credits_posted == total and prov.credits_pending == 0
    listed = await stack.metering.ListUsage(pb.ListUsageRequest(filter=pb.UsageFilter(
        provider_account_id=p.provider, earning=pb.EARNING_STATE_RELEASED)))
    assert sorted(r.job_id for r in listed.records) == sorted(jobs)
    await stack.check_books()


async def test_a_job_that_costs_nothing_earns_nothing(stack):
    p = await parties(stack.ledger)
    job_id = await job(stack, p, 0, node_id="n1")
    r = await in_state(stack, job_id, settlement=pb.SETTLEMENT_STATE_RELEASED)
    assert r.earning == pb.EARNING_STATE_UNSPECIFIED and not r.HasField("earning_release_at")


async def test_bad_earnings_queries_are_refused(stack):
    for req in (pb.GetEarningsRequest(), pb.GetEarningsRequest(provider_account_id=b"short")):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stack.metering.GetEarnings(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.metering.ListUsage(pb.ListUsageRequest(filter=pb.UsageFilter(earning=9)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
