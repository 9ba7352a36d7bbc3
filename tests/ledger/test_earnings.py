"""Held earnings on the ledger: a settlement with ``hold_earning`` credits the
provider's share as pending; ReleaseEarnings posts it, VoidEarnings voids it
and refunds the partner who paid, exactly; each ends once, under retries and
races; ``verify`` proves the books at every step."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from idlegrid.common.money import split_fee
from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import balances, run_verify

DMNEC = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
S = pb.OperationStatus
COST, FEE_BPS = 1_234, 1000
SHARE, FEE = split_fee(COST, FEE_BPS)


async def _escrow(ledger) -> bytes:
    return (await ledger.ResolveAccount(pb.ResolveAccountRequest(name="escrow:jobs"))).account.id


async def _settled(ledger, n: int, *, hold: bool = True, consumer: bytes | None = None):
    """(consumer, provider, jobs): ``n`` jobs reserved and settled for COST each."""
    provider = os.urandom(16)
    accounts = [pb.Account(id=provider, ledger=1, kind=pb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]
    if consumer is None:
        consumer = os.urandom(16)
        accounts.append(pb.Account(id=consumer, ledger=1, kind=pb.ACCOUNT_KIND_CONSUMER, flags=DMNEC))
    await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts))
    await ledger.TopUp(pb.TopUpRequest(account_id=consumer, amount=10 * COST * n, idempotency_key=os.urandom(8).hex()))
    jobs = [os.urandom(16) for _ in range(n)]
    for j in jobs:
        r = await ledger.Reserve(pb.ReserveRequest(job_id=j, consumer_account_id=consumer, amount=2 * COST,
                                                   timeout_s=60))
        assert r.status == S.OPERATION_STATUS_OK
    r = await ledger.SettleBatch(pb.SettleBatchRequest(settles=[
        pb.SettleRequest(job_id=j, provider_account_id=provider, cost=COST, fee_bps=FEE_BPS, hold_earning=hold)
        for j in jobs]))
    assert [x.status for x in r.results] == [S.OPERATION_STATUS_OK] * n
    assert all((x.fee, x.provider_amount) == (FEE, SHARE) for x in r.results)
    return consumer, provider, jobs


async def _ok(db_url) -> None:
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems


async def test_a_held_earning_is_pending_for_the_provider_while_the_fee_is_posted(ledger, db_url):
    escrow = await _escrow(ledger)
    (esc_before,) = await balances(ledger, escrow)
    consumer, provider, _ = await _settled(ledger, 2)
    (c, p, e) = await balances(ledger, consumer, provider, escrow)
    assert c[:2] == (0, 2 * COST)  # the partner paid in full
    assert p == (0, 0, 2 * SHARE, 0)  # held: not available to a payout
    assert e[0] - esc_before[0] == 2 * SHARE  # escrow keeps the provider's share as a pending debit
    assert (e[3] - e[1]) - (esc_before[3] - esc_before[1]) == 2 * SHARE
    await _ok(db_url)


async def test_release_posts_each_held_earning_once_in_one_call(ledger, db_url):
    _, provider, jobs = await _settled(ledger, 3)
    r = await ledger.ReleaseEarnings(pb.EarningsRequest(job_ids=jobs))
    assert [x.status for x in r.results] == [S.OPERATION_STATUS_OK] * 3
    assert all(x.amount == SHARE for x in r.results)
    assert await balances(ledger, provider) == [(0, 0, 0, 3 * SHARE)]
    again = await ledger.ReleaseEarnings(pb.EarningsRequest(job_ids=jobs))  # a retry changes nothing
    assert [x.status for x in again.results] == [S.OPERATION_STATUS_ALREADY_APPLIED] * 3
    void = await ledger.VoidEarnings(pb.EarningsRequest(job_ids=jobs[:1]))  # too late to void
    assert void.results[0].status == S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED
    assert void.results[0].results[0] == pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_POSTED
    assert await balances(ledger, provider) == [(0, 0, 0, 3 * SHARE)]
    await _ok(db_url)


async def test_void_refunds_the_share_to_the_partner_who_paid_exactly(ledger, db_url):
    consumer, provider, jobs = await _settled(ledger, 3)
    escrow = await _escrow(ledger)
    (c0, e0) = await balances(ledger, consumer, escrow)
    await ledger.ReleaseEarnings(pb.EarningsRequest(job_ids=jobs[:1]))  # released before the void: stays
    r = await ledger.VoidEarnings(pb.EarningsRequest(job_ids=jobs))
    assert [x.status for x in r.results] == [S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED,
                                             S.OPERATION_STATUS_OK, S.OPERATION_STATUS_OK]
    (c1, p1, e1) = await balances(ledger, consumer, provider, escrow)
    assert c1[3] - c0[3] == 2 * SHARE and c1[1] == c0[1]  # refunded exactly the two held shares
    assert p1 == (0, 0, 0, SHARE)  # the released one stays the provider's
    assert e1[0] == e0[0] - 3 * SHARE and (e1[3] - e1[1]) == (e0[3] - e0[1]) - 3 * SHARE
    for _ in range(2):  # retries: nothing moves again
        again = await ledger.VoidEarnings(pb.EarningsRequest(job_ids=jobs[1:]))
        assert [x.status for x in again.results] == [S.OPERATION_STATUS_ALREADY_APPLIED] * 2
    rel = await ledger.ReleaseEarnings(pb.EarningsRequest(job_ids=jobs[1:2]))
    assert rel.results[0].status == S.OPERATION_STATUS_HOLD_ALREADY_RESOLVED
    assert rel.results[0].results[0] == pb.CREATE_TRANSFER_RESULT_PENDING_TRANSFER_ALREADY_VOIDED
    assert await balances(ledger, consumer, provider) == [c1, p1]
    await _ok(db_url)


async def test_release_and_void_racing_for_the_same_jobs_end_each_exactly_once(ledger, db_url):
    consumer, provider, jobs = await _settled(ledger, 20)
    (c0,) = await balances(ledger, consumer)
    calls = [ledger.ReleaseEarnings(pb.EarningsRequest(job_ids=jobs)) if i % 2 else
             ledger.VoidEarnings(pb.EarningsRequest(job_ids=list(reversed(jobs)))) for i in range(6)]
    await asyncio.gather(*calls)
    (c1, p1) = await balances(ledger, consumer, provider)
    refunded, released = c1[3] - c0[3], p1[3]
    assert p1[2] == 0 and refunded + released == 20 * SHARE
    assert refunded % SHARE == 0 and released % SHARE == 0
    await _ok(db_url)


async def test_jobs_without_a_held_earning_are_not_found_and_change_nothing(ledger, db_url):
    consumer, provider, posted = await _settled(ledger, 1, hold=False)
    assert await balances(ledger, provider) == [(0, 0, 0, SHARE)]
    _, _, held = await _settled(ledger, 1, consumer=consumer)
    unknown = os.urandom(16)
    for call in (ledger.ReleaseEarnings, ledger.VoidEarnings):
        r = await call(pb.EarningsRequest(job_ids=[posted[0], unknown]))
        assert [x.status for x in r.results] == [S.OPERATION_STATUS_HOLD_NOT_FOUND] * 2
    assert await balances(ledger, provider) == [(0, 0, 0, SHARE)]
    r = await ledger.ReleaseEarnings(pb.EarningsRequest(job_ids=[unknown, held[0]]))
    assert [x.status for x in r.results] == [S.OPERATION_STATUS_HOLD_NOT_FOUND, S.OPERATION_STATUS_OK]
    await _ok(db_url)


async def test_settling_again_with_the_other_hold_choice_is_a_conflict(ledger):
    _, provider, jobs = await _settled(ledger, 1)
    r = await ledger.Settle(pb.SettleRequest(job_id=jobs[0], provider_account_id=provider, cost=COST,
                                             fee_bps=FEE_BPS, hold_earning=False))
    assert r.status == S.OPERATION_STATUS_CONFLICT
    r = await ledger.Settle(pb.SettleRequest(job_id=jobs[0], provider_account_id=provider, cost=COST,
                                             fee_bps=FEE_BPS, hold_earning=True))
    assert r.status == S.OPERATION_STATUS_ALREADY_APPLIED


@pytest.mark.parametrize("job_ids", [
    [], [b"short"], [bytes(16)], [b"x" * 16, b"x" * 16], [os.urandom(16) for _ in range(1001)],
], ids=["empty", "short id", "zero id", "job twice", "too many"])
async def test_a_malformed_earnings_request_is_refused_whole(ledger, job_ids):
    for call in (ledger.ReleaseEarnings, ledger.VoidEarnings):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(pb.EarningsRequest(job_ids=job_ids))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
