"""SettleBatch: many jobs settled in one call, each chain on its own."""

from __future__ import annotations

import os

import grpc
import pytest

from idlegrid.ledger.v1 import ledger_pb2 as pb
from tests.ledger.support import run_verify

DMNEC = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS


async def _setup(ledger):
    consumer, provider = os.urandom(16), os.urandom(16)
    await ledger.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=consumer, ledger=1, kind=pb.ACCOUNT_KIND_CONSUMER, flags=DMNEC),
        pb.Account(id=provider, ledger=1, kind=pb.ACCOUNT_KIND_PROVIDER, flags=DMNEC)]))
    await ledger.TopUp(pb.TopUpRequest(account_id=consumer, amount=100_000, idempotency_key=consumer.hex()))
    jobs = [os.urandom(16) for _ in range(4)]
    for j in jobs:
        r = await ledger.Reserve(pb.ReserveRequest(job_id=j, consumer_account_id=consumer, amount=1_000, timeout_s=60))
        assert r.status == pb.OPERATION_STATUS_OK
    return consumer, provider, jobs


async def test_each_job_in_a_batch_settles_or_fails_alone(ledger, db_url):
    consumer, provider, (a, b, c, d) = await _setup(ledger)
    first = await ledger.Settle(pb.SettleRequest(job_id=d, provider_account_id=provider, cost=100, fee_bps=1000))
    assert first.status == pb.OPERATION_STATUS_OK
    r = await ledger.SettleBatch(pb.SettleBatchRequest(settles=[
        pb.SettleRequest(job_id=a, provider_account_id=provider, cost=999, fee_bps=1000),
        pb.SettleRequest(job_id=b, cost=0),  # a release: no provider needed
        pb.SettleRequest(job_id=c, provider_account_id=provider, cost=5_000, fee_bps=1000),  # > reserved
        pb.SettleRequest(job_id=d, provider_account_id=provider, cost=100, fee_bps=1000),  # applied before
    ]))
    assert [x.status for x in r.results] == [
        pb.OPERATION_STATUS_OK, pb.OPERATION_STATUS_OK, pb.OPERATION_STATUS_EXCEEDS_RESERVATION,
        pb.OPERATION_STATUS_ALREADY_APPLIED]
    assert (r.results[0].fee, r.results[0].provider_amount) == (99, 900)
    acct = (await ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[consumer]))).accounts[0]
    assert acct.debits_posted == 999 + 100 and acct.debits_pending == 1_000  # c still held
    rep = await run_verify(db_url)
    assert rep.ok, rep.problems


@pytest.mark.parametrize("make", [
    lambda j: [],
    lambda j: [pb.SettleRequest(job_id=j, cost=0), pb.SettleRequest(job_id=j, cost=0)],
    lambda j: [pb.SettleRequest(job_id=j, cost=5)],  # a cost needs a provider
    lambda j: [pb.SettleRequest(job_id=b"short", cost=0)],
    lambda j: [pb.SettleRequest(job_id=os.urandom(16), cost=0) for _ in range(1001)],
], ids=["empty", "job twice", "no provider", "bad job id", "too many"])
async def test_a_malformed_batch_is_refused_whole(ledger, make):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ledger.SettleBatch(pb.SettleBatchRequest(settles=make(os.urandom(16))))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
